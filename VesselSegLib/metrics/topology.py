"""Topology-aware overlap: centerline Dice (clDice).

Reference: Shit, S. et al., "clDice - a novel topology-preserving loss function for tubular structure
segmentation", CVPR 2021. Eqs. (1)-(2): Tprec(S_P, V_L) = |S_P ∩ V_L| / |S_P|,
Tsens(S_L, V_P) = |S_L ∩ V_P| / |S_L|, clDice = 2 Tprec Tsens / (Tprec + Tsens).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize

from VesselSegLib.metrics.overlap import as_binary_mask, check_same_shape

logger = logging.getLogger(__name__)


def _skeleton(mask: np.ndarray) -> np.ndarray:
    """Skeleton of a bool mask (skimage's Lee 1994 thinning in 3D), computed on its bounding box."""
    boxes = ndimage.find_objects(mask.astype(np.uint8))
    out = np.zeros_like(mask)
    if not boxes:
        return out
    # Pad by one voxel so that objects touching the crop border thin as they would in the full volume.
    box = tuple(
        slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(boxes[0], mask.shape, strict=True)
    )
    out[box] = skeletonize(mask[box])
    return out


def cldice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Centerline Dice between two binary masks, in [0, 1].

    Parameters
    ----------
    prediction, reference : ndarray, same shape (Z, Y, X) (or (Y, X)), bool or 0/1
        Binary masks.

    Returns
    -------
    float
        clDice (Shit et al. 2021, eq. (2)). 1.0 when both masks are empty, 0.0 when exactly one is.
        Unlike Dice, it does not drop when a vessel is segmented thicker or thinner than the reference,
        but it does when a vessel is broken or missed.
    """
    check_same_shape(prediction, reference)
    pred = as_binary_mask(prediction, "prediction")
    ref = as_binary_mask(reference, "reference")
    pred_empty, ref_empty = not pred.any(), not ref.any()
    if pred_empty and ref_empty:
        return 1.0
    if pred_empty or ref_empty:
        return 0.0
    skel_pred = _skeleton(pred)
    skel_ref = _skeleton(ref)
    # Eq. (1): topology precision and sensitivity. Skeletons of non-empty masks are non-empty.
    t_prec = np.count_nonzero(skel_pred & ref) / max(np.count_nonzero(skel_pred), 1)
    t_sens = np.count_nonzero(skel_ref & pred) / max(np.count_nonzero(skel_ref), 1)
    if t_prec + t_sens == 0:
        return 0.0
    return float(2.0 * t_prec * t_sens / (t_prec + t_sens))  # eq. (2)
