"""Metrics of a voxel score map (probability, vesselness) before it is thresholded.

:func:`average_precision` ranks voxels by score; :func:`dice_by_threshold` gives the Dice of every candidate
threshold in one pass, which is how a decision threshold is chosen on validation data
(:func:`best_threshold`).

Both work on a histogram of the scores (``bins`` equal bins of [0, 1], 100,000 by default) instead of a full
sort: a 25 x 512 x 512 stack is 6.5 M voxels, and the histogram is exact up to the bin width (1e-5), below
any difference between two thresholds worth choosing between, even for vesselness maps whose useful
thresholds lie around 1e-3.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from VesselSegLib.metrics.overlap import as_binary_mask, check_same_shape


def _score_histograms(scores: np.ndarray, reference: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts of reference-positive and reference-negative voxels per score bin, bins ordered low to high."""
    check_same_shape(scores, reference)
    values = np.asarray(scores, dtype=np.float32)
    if not np.isfinite(values).all():
        raise ValueError("The score map holds NaN or infinite values; score maps must be finite.")
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise ValueError(
            f"Scores must lie in [0, 1] (probabilities or normalised vesselness); got "
            f"[{values.min():.4g}, {values.max():.4g}]."
        )
    positive = as_binary_mask(reference, "reference")
    index = np.minimum((values * bins).astype(np.int64), bins - 1)
    positives = np.bincount(index[positive], minlength=bins)
    negatives = np.bincount(index[~positive], minlength=bins)
    return positives, negatives


def average_precision(scores: np.ndarray, reference: np.ndarray, *, bins: int = 100_000) -> float:
    """Area under the precision-recall curve, as the step sum of scikit-learn's ``average_precision_score``.

    ``AP = sum_n (R_n - R_{n-1}) P_n`` over thresholds from high to low score, with precision ``P_n`` and
    recall ``R_n`` of the voxels scoring at least the n-th threshold.

    Parameters
    ----------
    scores : ndarray of float, shape (Z, Y, X)
        Score per voxel in [0, 1]; higher is more likely vessel.
    reference : ndarray of bool or 0/1, same shape
        The true vessel mask.
    bins : int
        Score resolution (thresholds are the bin edges).

    Returns
    -------
    float
        In [0, 1]; NaN when the reference is empty (recall undefined).
    """
    positives, negatives = _score_histograms(scores, reference, bins)
    total_positive = int(positives.sum())
    if total_positive == 0:
        return float("nan")
    true_positive = np.cumsum(positives[::-1])
    predicted = true_positive + np.cumsum(negatives[::-1])
    occupied = (positives[::-1] + negatives[::-1]) > 0
    precision = true_positive[occupied] / predicted[occupied]
    recall_gain = positives[::-1][occupied] / total_positive
    return float(np.sum(recall_gain * precision))


def dice_by_threshold(
    scores: np.ndarray, reference: np.ndarray, thresholds: Sequence[float], *, bins: int = 100_000
) -> np.ndarray:
    """Dice of ``scores > t`` against ``reference`` for every ``t`` in ``thresholds``.

    Returns
    -------
    ndarray of float64, shape (len(thresholds),)
        1.0 where prediction and reference are both empty (the project's empty-mask convention).
    """
    positives, negatives = _score_histograms(scores, reference, bins)
    # Voxels scoring above t: those of the bins whose lower edge is >= t, i.e. index >= ceil(t * bins);
    # exact only up to the bin width, which is what the histogram trades for speed.
    above_positive = np.concatenate([np.cumsum(positives[::-1])[::-1], [0]])
    above_negative = np.concatenate([np.cumsum(negatives[::-1])[::-1], [0]])
    total_positive = int(positives.sum())
    result = np.empty(len(thresholds), dtype=np.float64)
    for k, threshold in enumerate(thresholds):
        if not 0.0 < float(threshold) < 1.0:
            raise ValueError(f"Thresholds must lie in (0, 1), got {threshold!r}.")
        start = min(int(np.ceil(float(threshold) * bins - 1e-9)), bins)
        tp = int(above_positive[start])
        fp = int(above_negative[start])
        denominator = 2 * tp + fp + (total_positive - tp)
        result[k] = 1.0 if denominator == 0 else 2.0 * tp / denominator
    return result


#: Thresholds tried when one is chosen on validation data: 0.05 to 0.95 in steps of 0.05.
CANDIDATE_THRESHOLDS: tuple[float, ...] = tuple(round(0.05 * k, 2) for k in range(1, 20))


def best_threshold(
    score_maps: Sequence[np.ndarray],
    references: Sequence[np.ndarray],
    *,
    candidates: Sequence[float] = CANDIDATE_THRESHOLDS,
) -> tuple[float, dict[float, float]]:
    """The candidate threshold with the highest mean Dice over the cases (ties: the one nearest 0.5).

    Parameters
    ----------
    score_maps, references : sequences of ndarray
        One score map and its reference per validation case.
    candidates : sequence of float
        Thresholds to try.

    Returns
    -------
    threshold : float
    mean_dice : dict threshold -> mean Dice over the cases
    """
    if not score_maps or len(score_maps) != len(references):
        raise ValueError("best_threshold needs one reference per score map, and at least one of each.")
    per_case = np.stack(
        [dice_by_threshold(s, r, candidates) for s, r in zip(score_maps, references, strict=True)]
    )
    mean = per_case.mean(axis=0)
    order = sorted(range(len(candidates)), key=lambda k: (-mean[k], abs(candidates[k] - 0.5)))
    return float(candidates[order[0]]), {float(t): float(d) for t, d in zip(candidates, mean, strict=True)}


__all__ = ["CANDIDATE_THRESHOLDS", "average_precision", "best_threshold", "dice_by_threshold"]
