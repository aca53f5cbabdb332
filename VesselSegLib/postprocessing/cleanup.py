"""From per-class probabilities to a clean class map: thresholds, small-component removal, overlaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import cc3d
import numpy as np

from VesselSegLib.vessel_classes import BACKGROUND_LABEL, vessel_class

DEFAULT_THRESHOLD = 0.5


def remove_small_components(
    mask: np.ndarray, spacing_zyx: Sequence[float], min_component_mm3: float, *, connectivity: int = 26
) -> np.ndarray:
    """Drop connected components smaller than ``min_component_mm3``.

    Parameters
    ----------
    mask : ndarray of bool, shape (Z, Y, X)
    spacing_zyx : 3 floats, mm
    min_component_mm3 : float
        Components with a volume below this (in mm^3) are removed; 0 keeps everything.
    connectivity : {6, 18, 26}
        26 keeps thin diagonal vessels in one piece.

    Returns
    -------
    ndarray of bool, shape (Z, Y, X)
    """
    if min_component_mm3 < 0:
        raise ValueError(f"Minimum component size must be >= 0 mm^3, got {min_component_mm3}.")
    mask = np.asarray(mask, dtype=bool)
    voxel_mm3 = float(np.prod(spacing_zyx))
    min_voxels = int(np.ceil(min_component_mm3 / voxel_mm3)) if min_component_mm3 > 0 else 0
    if min_voxels <= 1 or not mask.any():
        return mask.copy()
    return cc3d.dust(mask, threshold=min_voxels, connectivity=connectivity, in_place=False).astype(bool)


def build_class_map(
    probabilities: Mapping[str, np.ndarray],
    *,
    spacing_zyx: Sequence[float],
    thresholds: Mapping[str, float] | None = None,
    min_component_mm3: float = 0.0,
) -> np.ndarray:
    """Class map (0 background, 1 artery, 2 vein, 3 micro) from per-class probabilities.

    Each class is thresholded (default 0.5) and cleaned of components smaller than ``min_component_mm3``.
    Where two classes both pass their threshold, the voxel goes to the class with the higher probability.

    Parameters
    ----------
    probabilities : mapping class name -> ndarray of float, shape (Z, Y, X)
    spacing_zyx : 3 floats, mm
    thresholds : mapping class name -> float in [0, 1], optional
    min_component_mm3 : float

    Returns
    -------
    ndarray of uint8, shape (Z, Y, X)
    """
    thresholds = dict(thresholds or {})
    names = list(probabilities)
    if not names:
        raise ValueError("No vessel class to build a class map from; select at least one class.")
    for name, value in thresholds.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"Threshold for {name!r} must be within [0, 1], got {value}.")
    shape = next(iter(probabilities.values())).shape
    best_probability = np.zeros(shape, dtype=np.float32)
    class_map = np.full(shape, BACKGROUND_LABEL, dtype=np.uint8)
    for name in names:
        probability = probabilities[name]
        mask = probability >= thresholds.get(name, DEFAULT_THRESHOLD)
        mask = remove_small_components(mask, spacing_zyx, min_component_mm3)
        wins = mask & (probability > best_probability)
        class_map[wins] = vessel_class(name).label_value
        best_probability[wins] = probability[wins]
    return class_map
