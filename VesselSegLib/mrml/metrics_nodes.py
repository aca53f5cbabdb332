"""Quality metrics against a reference as a Slicer table node (one row per scored class)."""

from __future__ import annotations

import vtk

from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

#: (column title, key of ``VesselSegLib.metrics.evaluate_binary``), in the order a reader compares them.
METRICS_TABLE_COLUMNS = (
    ("Dice", "dice"),
    ("clDice", "cldice"),
    ("Jaccard", "jaccard"),
    ("Precision", "precision"),
    ("Sensitivity", "sensitivity"),
    ("Specificity", "specificity"),
    ("MCC", "mcc"),
    ("HD95 (mm)", "hd95_mm"),
    ("Hausdorff (mm)", "hausdorff_mm"),
)


def add_metrics_table(scene, metrics: dict[str, dict[str, float]], name: str):
    """Add a ``vtkMRMLTableNode`` with a "Vessels" column (class display name, or "All vessels") and one
    column per metric; return it. Nothing else in ``scene`` is changed."""
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
    vtk_table = table.GetTable()
    labels = vtk.vtkStringArray()
    labels.SetName("Vessels")
    vtk_table.AddColumn(labels)
    columns = []
    for title, key in METRICS_TABLE_COLUMNS:
        array = vtk.vtkDoubleArray()
        array.SetName(title)
        vtk_table.AddColumn(array)
        columns.append((array, key))
    for class_name, scores in metrics.items():
        vessel = VESSEL_CLASS_BY_NAME.get(class_name)
        labels.InsertNextValue(vessel.display_name if vessel else "All vessels")
        for array, key in columns:
            array.InsertNextValue(float(scores.get(key, float("nan"))))
    table.Modified()
    return table


__all__ = ["METRICS_TABLE_COLUMNS", "add_metrics_table"]
