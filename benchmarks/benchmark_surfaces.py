"""3D models from a class map: Slicer's flying-edges conversion against SurfaceNets, time and geometry.

    python benchmarks/benchmark_surfaces.py [--repeats 2]

For each phantom (the 128 x 448 x 448 TOF-MRA phantom of ``benchmark_segment.py`` and a 64 x 256 x 256 2PM
phantom with physical capillary radii, 15 % vessel), its ground-truth class map is imported into a
segmentation node as the Logic does, and the closed-surface representation (what the 3D models are made
from) is created with each variant of Slicer's labelmap-to-surface rule in :data:`METHODS`: flying edges
(Slicer's default), SurfaceNets smoothed afterwards by the windowed-sinc filter, and SurfaceNets smoothed
inside the filter (what VesselSeg uses, ``VesselSegLib/mrml/logic.py``). Printed: the best of
``--repeats`` conversions, the surfaces' points and cells, and the volume they enclose (after triangulation,
``vtkMassProperties``) against the voxels' volume.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from VesselSegLib.phantoms import make_phantom_case

CASES = {"TOF-MRA": ((128, 448, 448), 7, "voxel"), "2PM": ((64, 256, 256), 7, "2pm-physical")}
#: Conversion parameters of Slicer's labelmap-to-surface rule for each variant (the rest at their defaults,
#: smoothing factor 0.5): method 0 flying edges, 1 SurfaceNets; "SurfaceNets smoothing" 1 smooths inside
#: vtkSurfaceNets3D (constrained smoothing) instead of the windowed-sinc filter run after it.
METHODS = {
    "flying edges (Slicer default)": {"Conversion method": "0"},
    "SurfaceNets, windowed-sinc smoothing": {"Conversion method": "1"},
    "SurfaceNets, its own smoothing (VesselSeg)": {"Conversion method": "1", "SurfaceNets smoothing": "1"},
}


def convert(class_map: np.ndarray, spacing_zyx, parameters: dict[str, str]) -> tuple[float, int, int, float]:
    """Seconds to create the closed surfaces, their points, cells and enclosed volume (mm^3)."""
    import slicer
    import slicer.util
    import vtk

    from VesselSegLib.mrml.scene import create_headless_scene

    scene = create_headless_scene()
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(labels, class_map)
    labels.SetSpacing(*reversed(spacing_zyx))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "vessels")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    for name, value in parameters.items():
        segmentation.GetSegmentation().SetConversionParameter(name, value)
    started = time.perf_counter()
    segmentation.CreateClosedSurfaceRepresentation()
    seconds = time.perf_counter() - started
    points = cells = 0
    volume = 0.0
    for index in range(segmentation.GetSegmentation().GetNumberOfSegments()):
        surface = vtk.vtkPolyData()
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(index)
        segmentation.GetClosedSurfaceRepresentation(segment_id, surface)
        points += surface.GetNumberOfPoints()
        cells += surface.GetNumberOfCells()
        triangles = vtk.vtkTriangleFilter()
        triangles.SetInputData(surface)
        mass = vtk.vtkMassProperties()
        mass.SetInputConnection(triangles.GetOutputPort())
        mass.Update()
        volume += mass.GetVolume()
    return seconds, points, cells, volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; best of {args.repeats}")
    print(
        "| phantom | class-map voxels | vessel voxels | method | s | speed-up | points | cells | enclosed / voxel volume |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for modality, (shape, seed, radius_model) in CASES.items():
        case = make_phantom_case(modality, shape, seed=seed, radius_model=radius_model)
        class_map = case.class_map.astype(np.uint8)
        voxel_volume = float(np.count_nonzero(class_map)) * float(np.prod(case.spacing_zyx))
        first = None
        for name, parameters in METHODS.items():
            runs = [convert(class_map, case.spacing_zyx, parameters) for _ in range(args.repeats)]
            seconds = min(run[0] for run in runs)
            _, points, cells, volume = runs[0]
            first = first or seconds
            print(
                f"| {modality} {' x '.join(map(str, shape))} | {class_map.size / 1e6:.1f} M | "
                f"{np.count_nonzero(class_map) / 1e6:.2f} M | {name} | {seconds:.2f} | {first / seconds:.2f}x | "
                f"{points} | {cells} | {volume / voxel_volume:.3f} |"
            )


if __name__ == "__main__":
    main()
