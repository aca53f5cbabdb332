"""Vessel-specific metrics of the 2PM paper: slice-wise modified Hausdorff distance and length correlation.

Tahir et al. [1]_ (Sec. 2.2 and 4.5, Figure 4) score two-photon microscopy vessel segmentations with, besides
the overlap metrics of ``overlap.py``:

- the slice-wise modified Hausdorff distance (MHD): the modified Hausdorff distance of Dubuisson and
  Jain [2]_ between the vessels of each axial (x-y) slice, reported as mean and standard deviation over the
  slices (Figure 4(b)); "a variant of HD [...] more robust to the outliers and noise". The paper gives no
  formula for it; :func:`modified_hausdorff_slicewise_mm` implements Dubuisson and Jain's definition.
- the length correlation (LC), a graph-based metric derived from the "length" factor of the CAL metric of
  Gegundez-Arias et al. [3]_ (Sec. 4.5, unnumbered; the paper's numbered equations (1)-(3) are the loss)::

      LC(S, S_G) = #((g(S) ∩ S_G) ∪ (S ∩ g(S_G))) / #(g(S) ∪ g(S_G))

  with S the prediction, S_G the reference, g(.) the 3D vessel skeleton and #(.) a number of voxels.

References
----------
.. [1] Tahir W, et al. Anatomical modeling of brain vasculature in two-photon microscopy by generalizable
       deep learning. BME Frontiers, 2021. Sec. 2.2 and 4.5, Figure 4.
.. [2] Dubuisson M-P, Jain AK. A modified Hausdorff distance for object matching. Proc. 12th ICPR, 1994,
       pp. 566-568: measure d22 = max(d6(A, B), d6(B, A)), d6(A, B) = mean over a in A of min over b in B
       of ||a - b||.
.. [3] Gegundez-Arias ME, et al. A function for quality evaluation of retinal vessel segmentations. IEEE
       Transactions on Medical Imaging 31(2), 2012 (the length factor l of CAL).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from VesselSegLib.graph.extraction import skeletonize_keeping_components
from VesselSegLib.metrics.distance import _check_spacing, _directed_distances, _surface
from VesselSegLib.metrics.overlap import as_binary_mask, check_same_shape

logger = logging.getLogger(__name__)


def _volume_pair(
    prediction: np.ndarray, reference: np.ndarray, spacing_zyx: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    check_same_shape(prediction, reference)
    pred = as_binary_mask(prediction, "prediction")
    ref = as_binary_mask(reference, "reference")
    if pred.ndim != 3:
        raise ValueError(
            f"the slice-wise distance needs 3D (Z, Y, X) masks, got shape {pred.shape}; "
            "add a Z axis to a single slice (mask[np.newaxis])."
        )
    return pred, ref, _check_spacing(spacing_zyx, 3)


def _check_one_sided_distance(value: float) -> float:
    distance = float(value)
    if math.isnan(distance) or distance < 0:
        raise ValueError(f"one_sided_slice_mm must be a distance >= 0 in mm (inf allowed), got {value!r}.")
    return distance


def modified_hausdorff_per_slice_mm(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    one_sided_slice_mm: float = math.inf,
) -> np.ndarray:
    """Modified Hausdorff distance (Dubuisson & Jain) between the vessels of each Z slice, in mm.

    In slice z, with A and B the in-slice contour pixels of the prediction and the reference,

        MHD_z = max(d(A, B), d(B, A)),   d(A, B) = (1 / |A|) * sum over a in A of min over b in B ||a - b||

    (measure d22 of Dubuisson & Jain 1994). Contour pixels are the foreground pixels with a background
    edge neighbour in the slice, as the surface voxels of :func:`hausdorff_distance_mm` are in 3D; distances
    are in mm using the (Y, X) spacing.

    Parameters
    ----------
    prediction, reference : ndarray, same shape (Z, Y, X), bool or 0/1
        Binary masks.
    spacing_zyx : sequence of 3 float
        Voxel size in mm along (Z, Y, X); the Z size is checked but not used (each slice is 2D).
    one_sided_slice_mm : float
        Value of a slice where exactly one mask has foreground. Default ``inf``: the distance to an empty
        set is unbounded (the convention of :func:`hausdorff_distance_mm`). A finite value, e.g. the
        slice diagonal in mm, makes a missed or invented slice a bounded penalty.

    Returns
    -------
    ndarray of float64, shape (Z,)
        MHD of each slice: NaN where both masks are empty in the slice (nothing to score),
        ``one_sided_slice_mm`` where exactly one is.
    """
    pred, ref, spacing = _volume_pair(prediction, reference, spacing_zyx)
    one_sided = _check_one_sided_distance(one_sided_slice_mm)
    in_plane_spacing = np.asarray(spacing[1:])
    per_slice = np.full(pred.shape[0], math.nan)
    pred_present = pred.any(axis=(1, 2))
    ref_present = ref.any(axis=(1, 2))
    per_slice[pred_present ^ ref_present] = one_sided
    for z in np.flatnonzero(pred_present & ref_present):
        pred_points = np.argwhere(_surface(pred[z])) * in_plane_spacing
        ref_points = np.argwhere(_surface(ref[z])) * in_plane_spacing
        per_slice[z] = max(
            _directed_distances(pred_points, ref_points).mean(),
            _directed_distances(ref_points, pred_points).mean(),
        )
    return per_slice


def modified_hausdorff_slicewise_mm(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    one_sided_slice_mm: float = math.inf,
) -> float:
    """Slice-wise modified Hausdorff distance of Tahir et al. (Sec. 2.2, Figure 4(b)), in mm.

    The mean of :func:`modified_hausdorff_per_slice_mm` over the Z slices where either mask has
    foreground. The paper reports the mean and standard deviation of the per-slice values; take the
    standard deviation from :func:`modified_hausdorff_per_slice_mm` with ``np.nanstd``.

    Parameters
    ----------
    prediction, reference : ndarray, same shape (Z, Y, X), bool or 0/1
        Binary masks.
    spacing_zyx : sequence of 3 float
        Voxel size in mm along (Z, Y, X).
    one_sided_slice_mm : float
        Value of a slice where exactly one mask has foreground; see
        :func:`modified_hausdorff_per_slice_mm`.

    Returns
    -------
    float
        Mean slice MHD in mm. 0.0 when both masks are empty. With the default ``one_sided_slice_mm``,
        ``inf`` when any slice has foreground in exactly one mask (a vessel missed or invented in a whole
        slice is an unbounded error, as for :func:`hausdorff_distance_mm`). Even a one-voxel dilation of
        the reference along Z does that, at the first and last vessel slices; to score such cases use a
        finite ``one_sided_slice_mm`` or the per-slice values.
    """
    per_slice = modified_hausdorff_per_slice_mm(
        prediction, reference, spacing_zyx, one_sided_slice_mm=one_sided_slice_mm
    )
    scored = per_slice[~np.isnan(per_slice)]
    if scored.size == 0:
        return 0.0
    return float(scored.mean())


def length_correlation(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    tolerance_mm: float = 0.0,
) -> float:
    """Length correlation LC of Tahir et al. (Sec. 4.5), in [0, 1].

    LC(S, S_G) = #((g(S) ∩ S_G) ∪ (S ∩ g(S_G))) / #(g(S) ∪ g(S_G)): the skeleton voxels of either mask
    that lie inside the other mask, over all skeleton voxels. It scores how much of the vessel length
    (centreline voxels) the two segmentations share, whatever the vessel thickness. It is a voxel count,
    not a correlation coefficient, despite the name.

    Parameters
    ----------
    prediction, reference : ndarray, same shape (Z, Y, X) (or (Y, X)), bool or 0/1
        Binary masks S and S_G.
    spacing_zyx : sequence of float
        Voxel size in mm along each axis. Used only by ``tolerance_mm``: the paper's LC counts voxels.
    tolerance_mm : float
        0 (default) gives the paper's LC. A positive value counts a skeleton voxel as matched when it lies
        within this distance (mm) of the other mask, i.e. the other mask is dilated by a ball of this
        radius, as in the length factor of the CAL metric (Gegundez-Arias et al. 2012).

    Returns
    -------
    float
        LC in [0, 1]. 1.0 when both masks are empty, 0.0 when exactly one is (the convention of
        :func:`cldice`). Skeletons are skimage's thinning (Lee et al. 1994) with one voxel kept in every
        component (:func:`VesselSegLib.graph.skeletonize_keeping_components`, the centreline of
        :func:`VesselSegLib.graph.extract_vessel_graph`); the paper uses the graph extraction of Damseh et
        al., so values differ slightly from the paper's.
    """
    check_same_shape(prediction, reference)
    pred = as_binary_mask(prediction, "prediction")
    ref = as_binary_mask(reference, "reference")
    if pred.ndim not in (2, 3):
        raise ValueError(f"length_correlation needs 2D or 3D masks, got shape {pred.shape}.")
    spacing = _check_spacing(spacing_zyx, pred.ndim)
    tolerance = float(tolerance_mm)
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise ValueError(f"tolerance_mm must be a finite distance >= 0 in mm, got {tolerance_mm!r}.")
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty and ref_empty:
        return 1.0
    if pred_empty or ref_empty:
        return 0.0
    skeleton_pred = skeletonize_keeping_components(pred)
    skeleton_ref = skeletonize_keeping_components(ref)
    if tolerance > 0:
        near_ref = ndimage.distance_transform_edt(~ref, sampling=spacing) <= tolerance
        near_pred = ndimage.distance_transform_edt(~pred, sampling=spacing) <= tolerance
    else:
        near_ref, near_pred = ref, pred
    matched = np.count_nonzero((skeleton_pred & near_ref) | (near_pred & skeleton_ref))
    # Not zero: skeletonize_keeping_components keeps a voxel of every component of a non-empty mask.
    return float(matched / np.count_nonzero(skeleton_pred | skeleton_ref))
