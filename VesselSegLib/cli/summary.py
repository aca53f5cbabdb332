"""``summary.json``: one builder for ``vesselseg segment`` and ``vesselseg stream``, so both have the same keys.

A key that does not apply to a command is present with the value None (``stream`` makes no graph; ``segment``
has no tiles), so scripts can read either folder the same way. The file also marks the folder as a VesselSeg
output: ``--force`` replaces only folders whose summary.json has ``vesselseg_version``
(``VesselSegLib.io.output_folder``).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import numpy as np

from VesselSegLib import __version__
from VesselSegLib.io.grid import Grid
from VesselSegLib.request import SegmentationRequest

SUMMARY_KEYS = (
    "vesselseg_version",
    "command",
    "input",
    "shape_zyx",
    "spacing_zyx_mm",
    "origin_xyz_mm",
    "direction",
    "output_shape_zyx",
    "output_spacing_zyx_mm",
    "modality",
    "method",
    "method_display_name",
    "model_sha256",
    "device",
    "runtime",
    "vessel_classes",
    "thresholds",
    "request",
    "spacing_check",
    "resampling",
    "preprocessing",
    "adaptation",
    "voxel_count",
    "volume_mm3",
    "metrics_against_reference",
    "graph",
    "streaming",
    "run_time_s",
    "files",
    "machine",
)


def build_summary(
    *,
    command: str,
    input_path: os.PathLike | str,
    grid: Grid,
    output_grid: Grid,
    request: SegmentationRequest,
    method: str,
    method_display_name: str,
    model_sha256: str | None,
    device: str,
    vessel_classes: tuple[str, ...],
    runtime: dict | None = None,
    thresholds: dict[str, float],
    voxel_count: dict[str, int],
    measure_spacing_zyx: tuple[float, float, float],
    run_time_s: dict[str, float],
    files: dict[str, Any],
    spacing_check: dict | None = None,
    resampling: dict | None = None,
    preprocessing: dict | None = None,
    adaptation: dict | None = None,
    metrics: dict | None = None,
    graph: dict | None = None,
    streaming: dict | None = None,
) -> dict[str, Any]:
    """The summary dictionary, keys in :data:`SUMMARY_KEYS` order.

    ``grid`` is the input's, ``output_grid`` the class map's (the same, or finer for super-resolution); ``measure_spacing_zyx`` the voxel size (mm) volumes are measured
    with, after any unit correction.
    """
    voxel_mm3 = float(np.prod(measure_spacing_zyx))
    summary = {
        "vesselseg_version": __version__,
        "command": command,
        "input": str(input_path),
        "shape_zyx": list(grid.shape_zyx),
        "spacing_zyx_mm": [round(float(s), 9) for s in reversed(grid.spacing_xyz)],
        "origin_xyz_mm": [round(float(o), 9) for o in grid.origin_xyz],
        "direction": [[round(float(v), 9) for v in row] for row in grid.direction_matrix],
        "output_shape_zyx": list(output_grid.shape_zyx),
        "output_spacing_zyx_mm": [round(float(s), 9) for s in reversed(output_grid.spacing_xyz)],
        "modality": request.modality,
        "method": method,
        "method_display_name": method_display_name,
        "model_sha256": model_sha256,
        "device": device,
        "runtime": runtime or None,
        "vessel_classes": list(vessel_classes),
        "thresholds": {name: float(thresholds.get(name, 0.5)) for name in vessel_classes},
        "request": request.as_record(),
        "spacing_check": spacing_check or None,
        "resampling": resampling or None,
        "preprocessing": preprocessing or None,
        "adaptation": adaptation or None,
        "voxel_count": {name: int(voxel_count[name]) for name in vessel_classes},
        "volume_mm3": {name: int(voxel_count[name]) * voxel_mm3 for name in vessel_classes},
        "metrics_against_reference": metrics,
        "graph": graph,
        "streaming": streaming,
        "run_time_s": {key: round(float(value), 3) for key, value in run_time_s.items()},
        "files": files,
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
    }
    assert tuple(summary) == SUMMARY_KEYS  # one list of keys for both commands
    return summary


__all__ = ["SUMMARY_KEYS", "build_summary"]
