"""Voxel-overlap metrics of a binary segmentation against a reference.

Every function takes two binary masks of the same shape (any number of dimensions, usually (Z, Y, X)),
as bool or 0/1 arrays, and compares them voxel by voxel. Ratios whose denominator is zero (an empty
mask) follow one rule, stated in each docstring: agreement scores 1.0, disagreement scores 0.0.
This makes an empty prediction of an absent class (for example no vein in a micro-vessel image)
a perfect score instead of NaN, the convention of the Metrics Reloaded recommendations for
empty references (Maier-Hein et al., Nature Methods 2024).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ConfusionCounts:
    """Voxel counts of a binary comparison: true/false positives and negatives."""

    tp: int
    fp: int
    fn: int
    tn: int


def as_binary_mask(mask: np.ndarray, name: str) -> np.ndarray:
    """Return ``mask`` as a bool array; nonzero voxels are foreground.

    Raises
    ------
    ValueError
        If a floating-point ``mask`` holds values other than 0 and 1 (a probability or vesselness map
        that was not thresholded).
    """
    array = np.asarray(mask)
    if array.dtype == bool:
        return array
    if np.issubdtype(array.dtype, np.floating) and np.any((array != 0) & (array != 1)):
        raise ValueError(
            f"{name} is a floating-point array with values other than 0 and 1; threshold it into a "
            "binary mask first (e.g. probability > 0.5)."
        )
    return array != 0


def check_same_shape(prediction: np.ndarray, reference: np.ndarray) -> None:
    """Raise ValueError naming both shapes when ``prediction`` and ``reference`` differ in shape."""
    if np.shape(prediction) != np.shape(reference):
        raise ValueError(
            f"prediction shape {np.shape(prediction)} differs from reference shape {np.shape(reference)}; "
            "resample one onto the other's grid before comparing."
        )


def _masks(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    check_same_shape(prediction, reference)
    return as_binary_mask(prediction, "prediction"), as_binary_mask(reference, "reference")


def confusion_counts(prediction: np.ndarray, reference: np.ndarray) -> ConfusionCounts:
    """Count true/false positives/negatives of ``prediction`` against ``reference``.

    Parameters
    ----------
    prediction, reference : ndarray, same shape (e.g. (Z, Y, X)), bool or 0/1
        Binary masks; nonzero is foreground.

    Returns
    -------
    ConfusionCounts
        Python ints (no overflow for any volume size).
    """
    pred, ref = _masks(prediction, reference)
    # count_nonzero on bool arrays is fast and returns Python ints; tn follows from the total.
    tp = int(np.count_nonzero(pred & ref))
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    fp = n_pred - tp
    fn = n_ref - tp
    tn = int(pred.size) - tp - fp - fn
    return ConfusionCounts(tp=tp, fp=fp, fn=fn, tn=tn)


def _ratio(numerator: int, denominator: int, value_if_undefined: float) -> float:
    return float(numerator) / float(denominator) if denominator else value_if_undefined


def dice_from_counts(c: ConfusionCounts) -> float:
    """Dice = 2 TP / (2 TP + FP + FN); 1.0 when both masks are empty."""
    return _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn, 1.0)


def jaccard_from_counts(c: ConfusionCounts) -> float:
    """Jaccard = TP / (TP + FP + FN); 1.0 when both masks are empty."""
    return _ratio(c.tp, c.tp + c.fp + c.fn, 1.0)


def precision_from_counts(c: ConfusionCounts) -> float:
    """Precision = TP / (TP + FP); for an empty prediction 1.0 if the reference is empty, else 0.0."""
    return _ratio(c.tp, c.tp + c.fp, 1.0 if c.fn == 0 else 0.0)


def sensitivity_from_counts(c: ConfusionCounts) -> float:
    """Sensitivity = TP / (TP + FN); for an empty reference 1.0 if the prediction is empty, else 0.0."""
    return _ratio(c.tp, c.tp + c.fn, 1.0 if c.fp == 0 else 0.0)


def specificity_from_counts(c: ConfusionCounts) -> float:
    """Specificity = TN / (TN + FP); 1.0 when the reference has no background voxel (no FP possible)."""
    return _ratio(c.tn, c.tn + c.fp, 1.0)


def false_positive_rate_from_counts(c: ConfusionCounts) -> float:
    """False positive rate = FP / (FP + TN) = 1 - specificity; 0.0 when the reference has no background."""
    return _ratio(c.fp, c.fp + c.tn, 0.0)


def matthews_correlation_from_counts(c: ConfusionCounts) -> float:
    """Matthews correlation coefficient (MCC) in [-1, 1].

    MCC = (TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN)). When a factor of the
    denominator is zero (a mask is empty or full), returns 1.0 if the masks are identical, else 0.0.
    """
    # Python ints do not overflow; the product of four volume-sized counts (~1e30) exceeds int64.
    numerator = c.tp * c.tn - c.fp * c.fn
    denominator = (c.tp + c.fp) * (c.tp + c.fn) * (c.tn + c.fp) * (c.tn + c.fn)
    if denominator == 0:
        return 1.0 if c.fp == 0 and c.fn == 0 else 0.0
    return float(numerator) / math.sqrt(float(denominator))


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice similarity coefficient 2|P ∩ R| / (|P| + |R|) in [0, 1].

    Both masks empty -> 1.0 (perfect agreement on an absent structure).
    """
    return dice_from_counts(confusion_counts(prediction, reference))


def jaccard(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Jaccard index (IoU) |P ∩ R| / |P ∪ R| in [0, 1]; both masks empty -> 1.0."""
    return jaccard_from_counts(confusion_counts(prediction, reference))


def precision(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Precision (positive predictive value) TP / (TP + FP).

    Empty prediction -> 1.0 if the reference is empty too, else 0.0.
    """
    return precision_from_counts(confusion_counts(prediction, reference))


def sensitivity(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Sensitivity (recall, true positive rate) TP / (TP + FN).

    Empty reference -> 1.0 if the prediction is empty too, else 0.0.
    """
    return sensitivity_from_counts(confusion_counts(prediction, reference))


def specificity(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Specificity (true negative rate) TN / (TN + FP); reference without background -> 1.0."""
    return specificity_from_counts(confusion_counts(prediction, reference))


def false_positive_rate(prediction: np.ndarray, reference: np.ndarray) -> float:
    """False positive rate FP / (FP + TN) = 1 - specificity; reference without background -> 0.0."""
    return false_positive_rate_from_counts(confusion_counts(prediction, reference))


def matthews_correlation(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Matthews correlation coefficient; see :func:`matthews_correlation_from_counts` for the formula."""
    return matthews_correlation_from_counts(confusion_counts(prediction, reference))
