"""Segmentation quality metrics: voxel overlap, surface distance (mm) and topology (clDice).

``evaluate_binary`` scores one binary mask against a reference; ``evaluate_class_maps`` scores an
artery / vein / micro-vessel class map (label values from ``VesselSegLib.vessel_classes``) class by
class, plus "vessel" (any label > 0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np

from VesselSegLib.metrics.distance import (
    hausdorff_distance_mm,
    hausdorff_distances_mm,
    hd95_mm,
    surface_distances_mm,
)
from VesselSegLib.metrics.graph_metrics import (
    length_correlation,
    modified_hausdorff_per_slice_mm,
    modified_hausdorff_slicewise_mm,
)
from VesselSegLib.metrics.overlap import (
    ConfusionCounts,
    as_binary_mask,
    check_same_shape,
    confusion_counts,
    dice,
    dice_from_counts,
    false_positive_rate,
    false_positive_rate_from_counts,
    jaccard,
    jaccard_from_counts,
    matthews_correlation,
    matthews_correlation_from_counts,
    precision,
    precision_from_counts,
    sensitivity,
    sensitivity_from_counts,
    specificity,
    specificity_from_counts,
)
from VesselSegLib.metrics.ranking import average_precision, best_threshold, dice_by_threshold
from VesselSegLib.metrics.topology import cldice
from VesselSegLib.vessel_classes import vessel_class

logger = logging.getLogger(__name__)

__all__ = [
    "METRIC_KEYS",
    "ConfusionCounts",
    "average_precision",
    "best_threshold",
    "cldice",
    "confusion_counts",
    "dice",
    "dice_by_threshold",
    "evaluate_against_reference",
    "evaluate_binary",
    "evaluate_class_maps",
    "is_binary_reference",
    "false_positive_rate",
    "hausdorff_distance_mm",
    "hausdorff_distances_mm",
    "hd95_mm",
    "jaccard",
    "length_correlation",
    "matthews_correlation",
    "modified_hausdorff_per_slice_mm",
    "modified_hausdorff_slicewise_mm",
    "precision",
    "sensitivity",
    "specificity",
    "surface_distances_mm",
]

#: Keys of the dictionary returned by :func:`evaluate_binary`, in table order.
METRIC_KEYS: tuple[str, ...] = (
    "dice",
    "jaccard",
    "precision",
    "sensitivity",
    "specificity",
    "fpr",
    "mcc",
    "hausdorff_mm",
    "hd95_mm",
    "cldice",
)


def evaluate_binary(
    prediction: np.ndarray,
    reference: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    distances: bool = True,
) -> dict[str, float]:
    """All metrics of a binary prediction against a binary reference.

    Parameters
    ----------
    prediction, reference : ndarray, same shape (Z, Y, X), bool or 0/1
        Binary masks.
    spacing_zyx : sequence of float
        Voxel size in mm along (Z, Y, X).
    distances : bool
        Compute the surface distances (the slowest part). When False, "hausdorff_mm" and "hd95_mm" are
        NaN, so that the keys stay the same for tables.

    Returns
    -------
    dict[str, float]
        Keys :data:`METRIC_KEYS`: dice, jaccard, precision, sensitivity, specificity, fpr, mcc,
        hausdorff_mm, hd95_mm, cldice. Empty-mask conventions are those of the single metrics.
    """
    check_same_shape(prediction, reference)
    pred = as_binary_mask(prediction, "prediction")
    ref = as_binary_mask(reference, "reference")
    if len(tuple(spacing_zyx)) != pred.ndim:
        raise ValueError(f"spacing_zyx needs {pred.ndim} values (one per array axis), got {spacing_zyx!r}.")
    counts = confusion_counts(pred, ref)
    result = {
        "dice": dice_from_counts(counts),
        "jaccard": jaccard_from_counts(counts),
        "precision": precision_from_counts(counts),
        "sensitivity": sensitivity_from_counts(counts),
        "specificity": specificity_from_counts(counts),
        "fpr": false_positive_rate_from_counts(counts),
        "mcc": matthews_correlation_from_counts(counts),
        "hausdorff_mm": math.nan,
        "hd95_mm": math.nan,
    }
    if distances:
        # One surface-distance pass serves both percentiles.
        result["hausdorff_mm"], result["hd95_mm"] = hausdorff_distances_mm(
            pred, ref, spacing_zyx, percentiles=(100.0, 95.0)
        )
    result["cldice"] = cldice(pred, ref)
    return result


def evaluate_class_maps(
    prediction_map: np.ndarray,
    reference_map: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    class_names: Sequence[str] = ("artery", "vein", "micro"),
    distances: bool = True,
) -> dict[str, dict[str, float]]:
    """Per-class metrics of a vessel class map against a reference class map.

    Parameters
    ----------
    prediction_map, reference_map : ndarray of int, same shape (Z, Y, X)
        Class maps: 0 background, other values the ``label_value`` of a vessel class
        (artery = 1, vein = 2, micro = 3; see ``VesselSegLib.vessel_classes``).
    spacing_zyx : sequence of float
        Voxel size in mm along (Z, Y, X).
    class_names : sequence of str
        Vessel classes to score; unknown names raise ValueError listing the known ones.
    distances : bool
        Passed to :func:`evaluate_binary`.

    Returns
    -------
    dict[str, dict[str, float]]
        ``{class_name: evaluate_binary(...)}`` for every requested class, plus "vessel": all vessel
        labels (> 0) merged, which scores detection regardless of the artery/vein call.
    """
    check_same_shape(prediction_map, reference_map)
    prediction_map = np.asarray(prediction_map)
    reference_map = np.asarray(reference_map)
    for name, array in (("prediction_map", prediction_map), ("reference_map", reference_map)):
        if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
            raise ValueError(
                f"{name} must be an integer class map (dtype {array.dtype} given); round or cast it."
            )
    classes = [vessel_class(name) for name in class_names]  # raises ValueError on unknown names
    results: dict[str, dict[str, float]] = {}
    for vc in classes:
        label = vc.label_value
        results[vc.name] = evaluate_binary(
            prediction_map == label, reference_map == label, spacing_zyx, distances=distances
        )
    results["vessel"] = evaluate_binary(
        prediction_map > 0, reference_map > 0, spacing_zyx, distances=distances
    )
    return results


def is_binary_reference(reference_map: np.ndarray, class_names: Sequence[str]) -> bool:
    """Whether a reference is a plain vessel mask rather than a class map of ``class_names``.

    It is when it holds values other than the class labels 1-3 (a 0/255 mask, a float probability map), or
    one vessel value that is none of the classes scored (a 0/1 mask, 1 = artery, against a micro-vessel
    model): its per-class scores would then be meaningless zeros.
    """
    values = set(np.unique(np.asarray(reference_map)).tolist()) - {0}
    labels = {vessel_class(name).label_value for name in class_names}
    return not values <= {1, 2, 3} or (len(values) == 1 and not values <= labels)


def evaluate_against_reference(
    prediction_map: np.ndarray,
    reference_map: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    class_names: Sequence[str] = ("artery", "vein", "micro"),
    distances: bool = True,
) -> tuple[dict[str, dict[str, float]], bool]:
    """Metrics of a predicted class map against a user's reference, which may be a class map or a mask.

    Returns
    -------
    metrics : dict[str, dict[str, float]]
        :func:`evaluate_class_maps` for a class-map reference; only ``{"vessel": ...}`` (any vessel against
        any vessel) for a binary one (:func:`is_binary_reference`).
    binary : bool
        True when the reference was scored as a binary vessel mask (callers say so to the user).
    """
    check_same_shape(prediction_map, reference_map)
    if is_binary_reference(reference_map, class_names):
        prediction = np.asarray(prediction_map) > 0
        vessel = evaluate_binary(prediction, np.asarray(reference_map) > 0, spacing_zyx, distances=distances)
        return {"vessel": vessel}, True
    reference = np.asarray(reference_map)
    if not np.issubdtype(reference.dtype, np.integer):
        reference = reference.astype(np.uint8)  # values checked above: 0-3 only
    metrics = evaluate_class_maps(
        prediction_map, reference, spacing_zyx, class_names=class_names, distances=distances
    )
    return metrics, False
