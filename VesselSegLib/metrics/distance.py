"""Surface distance metrics (Hausdorff distance and its 95th percentile) in millimetres.

Implementation: scipy's exact Euclidean distance transform with ``sampling=spacing_zyx`` (anisotropic
voxels) computed on the complement of each mask's surface, restricted to the bounding box of both
masks. MONAI's ``compute_hausdorff_distance`` gives the same numbers (checked in
Testing/test_metrics.py) but works on the whole volume; cropping first keeps a 128 x 448 x 448 mask
pair within a few seconds on two cores.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from VesselSegLib.metrics.overlap import as_binary_mask, check_same_shape

logger = logging.getLogger(__name__)


def _check_spacing(spacing_zyx: Sequence[float], ndim: int) -> tuple[float, ...]:
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing_zyx must hold {ndim} positive voxel sizes in mm (one per array axis), "
            f"got {spacing_zyx!r}."
        )
    return spacing


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one face neighbour in the background (or outside the array)."""
    # border_value=0: voxels on the array border count as surface, as in MONAI's get_mask_edges.
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _directed_surface_distances(from_surface: np.ndarray, to_surface: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from every voxel of ``from_surface`` to the nearest voxel of ``to_surface``."""
    distance_to = ndimage.distance_transform_edt(~to_surface, sampling=spacing)
    return distance_to[from_surface]


def surface_distances_mm(
    prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from prediction surface voxels to the reference surface, and back.

    Parameters
    ----------
    prediction, reference : ndarray, same shape (Z, Y, X), bool or 0/1
        Binary masks; both must be non-empty.
    spacing_zyx : sequence of float
        Voxel size in mm along each array axis.

    Returns
    -------
    (pred_to_ref, ref_to_pred) : tuple of 1-D float64 arrays
    """
    check_same_shape(prediction, reference)
    pred = as_binary_mask(prediction, "prediction")
    ref = as_binary_mask(reference, "reference")
    spacing = _check_spacing(spacing_zyx, pred.ndim)
    if not pred.any() or not ref.any():
        raise ValueError("surface_distances_mm needs two non-empty masks; check for empty masks first.")
    # Crop to the bounding box of both masks, padded by one voxel so that the erosion sees the
    # background around them. Every surface voxel lies inside the box, so the distance transform of
    # the crop is exact for the distances we read.
    union_box = ndimage.find_objects((pred | ref).astype(np.uint8))[0]
    box = tuple(
        slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(union_box, pred.shape, strict=True)
    )
    pred_surface = _surface(pred[box])
    ref_surface = _surface(ref[box])
    return (
        _directed_surface_distances(pred_surface, ref_surface, spacing),
        _directed_surface_distances(ref_surface, pred_surface, spacing),
    )


def hausdorff_distance_mm(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    percentile: float = 100.0,
) -> float:
    """Symmetric (percentile) Hausdorff distance between the surfaces of two masks, in mm.

    With ``percentile=100`` this is the Hausdorff distance max(h(P, R), h(R, P)), where h(A, B) is the
    largest distance from a surface voxel of A to the surface of B. With a smaller percentile, each
    directed distance is that percentile of the surface distances instead of their maximum, and the
    larger of the two is returned (MONAI's ``compute_hausdorff_distance`` convention).

    Parameters
    ----------
    prediction, reference : ndarray, same shape (Z, Y, X), bool or 0/1
        Binary masks.
    spacing_zyx : sequence of float
        Voxel size in mm along each array axis (anisotropic spacing is handled exactly).
    percentile : float
        In (0, 100].

    Returns
    -------
    float
        Distance in mm. 0.0 when both masks are empty, ``inf`` when exactly one is empty (the
        distance to an empty set is unbounded).
    """
    if not 0.0 < float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile!r}.")
    check_same_shape(prediction, reference)
    pred = as_binary_mask(prediction, "prediction")
    ref = as_binary_mask(reference, "reference")
    _check_spacing(spacing_zyx, pred.ndim)
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty and ref_empty:
        return 0.0
    if pred_empty or ref_empty:
        return math.inf
    pred_to_ref, ref_to_pred = surface_distances_mm(pred, ref, spacing_zyx)
    if percentile == 100.0:
        return float(max(pred_to_ref.max(), ref_to_pred.max()))
    return float(max(np.percentile(pred_to_ref, percentile), np.percentile(ref_to_pred, percentile)))


def hd95_mm(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance (HD95) in mm; see :func:`hausdorff_distance_mm`."""
    return hausdorff_distance_mm(prediction, reference, spacing_zyx, percentile=95.0)
