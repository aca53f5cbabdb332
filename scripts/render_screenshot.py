"""Render the extension's screenshot (Resources/Screenshots/VesselSeg.png) offscreen with VTK from the demo.

    vesselseg demo --out /tmp/demo
    python scripts/render_screenshot.py [--demo /tmp/demo] [--out Resources/Screenshots/VesselSeg.png]

Without ``--demo`` the demo is run into a temporary folder first. The picture shows the demo's 3D models
(``models/*.vtk``: one closed surface per vessel class, in its class colour from
``VesselSegLib/vessel_classes.py``) above an axial slice of the input, the bundled sample TOF-MRA, placed
where it lies in space (the sample is acquired tilted by 10 degrees; the models are in the same LPS
coordinates). No display is needed (``SetOffScreenRendering``); the result is deterministic for a given demo.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk  # noqa: N813 (SimpleITK's own convention)
import vtk
from vtk.util.numpy_support import numpy_to_vtk

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from VesselSegLib.vessel_classes import VESSEL_CLASSES  # noqa: E402

DEFAULT_OUT = REPO_ROOT / "Resources" / "Screenshots" / "VesselSeg.png"
WINDOW_SIZE = (960, 600)
SLAB_SLICES = 5
BACKGROUND = (0.16, 0.17, 0.23)


def run_demo(out: Path) -> None:
    """``vesselseg demo --out OUT`` with the Python running this script."""
    subprocess.run(
        [sys.executable, "-m", "VesselSegLib.cli.main", "demo", "--out", str(out), "--quiet"],
        check=True,
        cwd=REPO_ROOT,
    )


def read_models(models_dir: Path) -> list[tuple[vtk.vtkPolyData, tuple[float, float, float]]]:
    """(surface, colour) of each class model the demo wrote, in class order; files named by display name."""
    found = []
    for vessel_class in VESSEL_CLASSES:
        path = models_dir / f"{vessel_class.display_name}.vtk"
        if not path.is_file():
            continue
        reader = vtk.vtkPolyDataReader()
        reader.SetFileName(str(path))
        reader.Update()
        surface = vtk.vtkPolyData()
        surface.DeepCopy(reader.GetOutput())
        if surface.GetNumberOfPoints():
            found.append((surface, vessel_class.color_rgb))
    if not found:
        raise SystemExit(f"no class models (Artery.vtk, Vein.vtk, Micro-vessel.vtk) in {models_dir}")
    return found


def slice_actor(image_path: Path, slice_index: int | None) -> tuple[vtk.vtkImageActor, int]:
    """An axial slice of the volume as a grey image actor in LPS world coordinates (as the models are)."""
    image = sitk.ReadImage(str(image_path))
    voxels = sitk.GetArrayFromImage(image).astype(np.float32)  # (Z, Y, X)
    k = voxels.shape[0] // 3 if slice_index is None else int(slice_index)
    # A thin slab (mean of SLAB_SLICES slices around k) rather than one slice: the phantom's voxel noise
    # would otherwise dominate both the picture and the PNG's size.
    half = SLAB_SLICES // 2
    plane = voxels[max(k - half, 0) : k + half + 1].mean(axis=0)
    low, high = np.percentile(plane, (1.0, 99.7))
    grey = np.clip((plane - low) / max(high - low, 1e-6) * 255.0, 0, 255).astype(np.uint8)

    data = vtk.vtkImageData()
    data.SetDimensions(plane.shape[1], plane.shape[0], 1)
    sx, sy, sz = image.GetSpacing()
    data.SetSpacing(sx, sy, sz)
    data.SetOrigin(0.0, 0.0, k * sz)
    scalars = numpy_to_vtk(grey.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    data.GetPointData().SetScalars(scalars)

    # world = origin + direction @ (spacing * index): the image's own grid, direction and origin (LPS).
    matrix = vtk.vtkMatrix4x4()
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = image.GetOrigin()
    for row in range(3):
        for column in range(3):
            matrix.SetElement(row, column, direction[row, column])
        matrix.SetElement(row, 3, origin[row])

    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputData(data)
    actor.SetUserMatrix(matrix)
    actor.InterpolateOn()
    return actor, k


def render(demo_dir: Path, out: Path, slice_index: int | None = None) -> Path:
    summary = json.loads((demo_dir / "summary.json").read_text())
    input_path = Path(summary["input"])
    models = read_models(demo_dir / "models")

    renderer = vtk.vtkRenderer()
    renderer.SetBackground(*BACKGROUND)  # plain: a gradient doubles the PNG's size
    for surface, colour in models:
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(surface)
        normals.SetFeatureAngle(80.0)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*colour)
        actor.GetProperty().SetSpecular(0.3)
        actor.GetProperty().SetSpecularPower(20.0)
        renderer.AddActor(actor)
    image_actor, _ = slice_actor(input_path, slice_index)
    renderer.AddActor(image_actor)

    # LPS world: look from the front (anterior, -P) and above (superior, +S) at the vessel tree.
    camera = renderer.GetActiveCamera()
    bounds = [0.0] * 6
    renderer.ComputeVisiblePropBounds(bounds)
    center = [(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2]
    camera.SetFocalPoint(*center)
    camera.SetPosition(center[0], center[1] - 300.0, center[2] + 170.0)
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCamera()
    camera.Zoom(1.5)

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(8)
    window.SetSize(*WINDOW_SIZE)
    window.AddRenderer(renderer)
    window.Render()

    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = vtk.vtkPNGWriter()
    writer.SetCompressionLevel(9)
    writer.SetFileName(str(out))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()
    window.Finalize()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, help="folder written by `vesselseg demo` (default: run it now)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--slice", type=int, help="axial slice index of the input (default: a third of the way up)"
    )
    args = parser.parse_args()
    if args.demo is not None:
        out = render(args.demo, args.out, args.slice)
    else:
        with tempfile.TemporaryDirectory() as scratch:
            demo = Path(scratch) / "demo"
            run_demo(demo)
            out = render(demo, args.out, args.slice)
    print(f"Wrote {out} ({out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
