"""Surface distance metrics (Hausdorff distance and its 95th percentile) in millimetres.

Surface voxels are the foreground voxels with a background face neighbour (MONAI's ``get_mask_edges``
definition). Distances between surface voxel centres are exact Euclidean distances in mm, scaled per
axis by ``spacing_zyx``, found by nearest-neighbour queries in a k-d tree (``scipy.spatial.cKDTree``).
MONAI's ``compute_hausdorff_distance(..., spacing=...)`` gives the same numbers (checked in
Testing/test_metrics.py), but it runs a distance transform over the whole volume: on a 128 x 448 x 448
vessel mask pair with 2 cores, one scipy ``distance_transform_edt`` takes about 6 s and MONAI's HD95
25 s, against about 1 s per direction for the k-d tree, whose cost grows with the number of surface
voxels only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

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


def _surface_points_mm(surface: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """(N, ndim) physical coordinates (mm) of the voxel centres of ``surface``."""
    return np.argwhere(surface) * np.asarray(spacing, dtype=np.float64)


def _directed_distances(from_points: np.ndarray, to_points: np.ndarray) -> np.ndarray:
    """Distance (mm) from each point of ``from_points`` to its nearest point of ``to_points``."""
    distances, _ = cKDTree(to_points).query(from_points, k=1, workers=-1)
    return distances


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
    # background around them; distances between points do not depend on the crop offset.
    union_box = ndimage.find_objects((pred | ref).astype(np.uint8))[0]
    box = tuple(
        slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(union_box, pred.shape, strict=True)
    )
    pred_points = _surface_points_mm(_surface(pred[box]), spacing)
    ref_points = _surface_points_mm(_surface(ref[box]), spacing)
    return _directed_distances(pred_points, ref_points), _directed_distances(ref_points, pred_points)


def hausdorff_distances_mm(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    percentiles: Sequence[float] = (100.0, 95.0),
) -> tuple[float, ...]:
    """Symmetric percentile Hausdorff distances (mm) for several percentiles from one distance pass.

    See :func:`hausdorff_distance_mm` for the definition and the empty-mask conventions.

    Returns
    -------
    tuple of float
        One distance per entry of ``percentiles``, in the same order.
    """
    percentiles = tuple(float(p) for p in percentiles)
    if not all(0.0 < p <= 100.0 for p in percentiles):
        raise ValueError(f"percentiles must be in (0, 100], got {percentiles!r}.")
    check_same_shape(prediction, reference)
    pred = as_binary_mask(prediction, "prediction")
    ref = as_binary_mask(reference, "reference")
    _check_spacing(spacing_zyx, pred.ndim)
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty and ref_empty:
        return tuple(0.0 for _ in percentiles)
    if pred_empty or ref_empty:
        return tuple(math.inf for _ in percentiles)
    pred_to_ref, ref_to_pred = surface_distances_mm(pred, ref, spacing_zyx)
    # Percentile of each directed distance set, then the larger of the two (MONAI's convention).
    return tuple(
        float(max(np.percentile(pred_to_ref, p), np.percentile(ref_to_pred, p))) for p in percentiles
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
    return hausdorff_distances_mm(prediction, reference, spacing_zyx, percentiles=(percentile,))[0]


def hd95_mm(prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float]) -> float:
    """95th-percentile Hausdorff distance (HD95) in mm; see :func:`hausdorff_distance_mm`."""
    return hausdorff_distance_mm(prediction, reference, spacing_zyx, percentile=95.0)
