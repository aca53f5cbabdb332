"""A vessel graph in the MRML scene: centrelines as a model coloured by radius, and a table of segments.

``VesselSegLib.graph`` computes the graph on voxel indices; here each segment's voxel path becomes a polyline
in RAS through the input volume's IJK-to-RAS matrix (so it lies on the vessels whatever the volume's
direction and spacing), with a per-point "Radius" array (mm) that the model's display colours by.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from VesselSegLib.graph import VesselGraph

RADIUS_ARRAY_NAME = "Radius"
#: Per-segment columns of the table node, in order: (column name, edge attribute).
TABLE_COLUMNS = (
    ("Segment", None),
    ("Kind", "kind"),
    ("Length (mm)", "length_mm"),
    ("Mean radius (mm)", "mean_radius_mm"),
    ("Tortuosity", "tortuosity"),
)


def centreline_polydata(graph: VesselGraph, ijk_to_ras: np.ndarray) -> vtk.vtkPolyData:
    """One polyline per graph edge, points in RAS (mm), point array ``Radius`` = the segment's mean radius."""
    points_ras: list[np.ndarray] = []
    radii: list[np.ndarray] = []
    lines = vtk.vtkCellArray()
    start = 0
    for _, _, attributes in graph.graph.edges(data=True):
        path_zyx = np.asarray(attributes["path_voxels_zyx"], dtype=float).reshape(-1, 3)
        if len(path_zyx) < 2:
            continue
        ijk = np.column_stack([path_zyx[:, ::-1], np.ones(len(path_zyx))])  # (i, j, k, 1) = (x, y, z, 1)
        points_ras.append((ijk @ np.asarray(ijk_to_ras, dtype=float).T)[:, :3])
        radius = attributes.get("mean_radius_mm", float("nan"))
        radii.append(np.full(len(path_zyx), radius if np.isfinite(radius) else 0.0))
        lines.InsertNextCell(len(path_zyx))
        for index in range(start, start + len(path_zyx)):
            lines.InsertCellPoint(index)
        start += len(path_zyx)
    polydata = vtk.vtkPolyData()
    points = vtk.vtkPoints()
    if points_ras:
        points.SetData(numpy_support.numpy_to_vtk(np.concatenate(points_ras), deep=True))
        radius_array = numpy_support.numpy_to_vtk(np.concatenate(radii), deep=True)
        radius_array.SetName(RADIUS_ARRAY_NAME)
        polydata.GetPointData().AddArray(radius_array)
        polydata.GetPointData().SetActiveScalars(RADIUS_ARRAY_NAME)
    polydata.SetPoints(points)
    polydata.SetLines(lines)
    return polydata


def add_vessel_graph_to_scene(scene, graph: VesselGraph, ijk_to_ras: np.ndarray, name: str):
    """Add the centreline model (coloured by radius) and the per-segment table; return (model, table).

    Nodes are created in ``scene`` only; nothing else in the scene is changed.
    """
    model = scene.AddNewNodeByClass("vtkMRMLModelNode", f"{name} centrelines")
    model.SetAndObservePolyData(centreline_polydata(graph, ijk_to_ras))
    model.CreateDefaultDisplayNodes()
    display = model.GetDisplayNode()
    display.SetActiveScalarName(RADIUS_ARRAY_NAME)
    display.SetScalarVisibility(True)
    display.SetLineWidth(3.0)
    colour_table = scene.GetFirstNodeByName("Viridis")
    if colour_table is not None:  # a bare scene may lack Slicer's colour tables
        display.SetAndObserveColorNodeID(colour_table.GetID())
    radii = [a.get("mean_radius_mm", 0.0) for _, _, a in graph.graph.edges(data=True)]
    finite = [r for r in radii if np.isfinite(r)]
    if finite:
        display.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
        display.SetScalarRange(min(finite), max(finite))

    table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{name} segments")
    vtk_table = table.GetTable()
    columns = []
    for column_name, attribute in TABLE_COLUMNS:
        array = vtk.vtkStringArray() if attribute in (None, "kind") else vtk.vtkDoubleArray()
        array.SetName(column_name)
        vtk_table.AddColumn(array)
        columns.append((array, attribute))
    for index, (_, _, attributes) in enumerate(graph.graph.edges(data=True)):
        for array, attribute in columns:
            if attribute is None:
                array.InsertNextValue(str(index + 1))
            elif attribute == "kind":
                array.InsertNextValue(str(attributes.get("kind", "")))
            else:
                array.InsertNextValue(float(attributes.get(attribute, float("nan"))))
    table.Modified()
    return model, table


__all__ = ["RADIUS_ARRAY_NAME", "TABLE_COLUMNS", "add_vessel_graph_to_scene", "centreline_polydata"]
