"""Tests of VesselSegLib.metrics against hand-computed values and MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from VesselSegLib.metrics import (
    METRIC_KEYS,
    ConfusionCounts,
    cldice,
    confusion_counts,
    dice,
    evaluate_binary,
    evaluate_class_maps,
    false_positive_rate,
    hausdorff_distance_mm,
    hd95_mm,
    jaccard,
    matthews_correlation,
    precision,
    sensitivity,
    specificity,
)
from VesselSegLib.metrics.overlap import matthews_correlation_from_counts

# Hand-counted case, shape (1, 2, 5) = 10 voxels:
#   prediction  1 1 1 0 0 | 1 0 0 0 0
#   reference   1 1 0 1 0 | 0 0 0 0 0
# TP = 2 (first two voxels), FP = 2 (voxel 3 and the first of row 2), FN = 1 (voxel 4), TN = 5.
PRED = np.array([[[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]], dtype=np.uint8)
REF = np.array([[[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]]], dtype=bool)


def test_confusion_counts_by_hand():
    c = confusion_counts(PRED, REF)
    assert (c.tp, c.fp, c.fn, c.tn) == (2, 2, 1, 5)


def test_overlap_metrics_by_hand():
    # Dice = 2*2 / (2*2 + 2 + 1) = 4/7; Jaccard = 2 / (2 + 2 + 1) = 2/5
    assert dice(PRED, REF) == pytest.approx(4 / 7)
    assert jaccard(PRED, REF) == pytest.approx(2 / 5)
    # precision = 2/(2+2) = 0.5; sensitivity = 2/(2+1) = 2/3; specificity = 5/(5+2) = 5/7; FPR = 2/7
    assert precision(PRED, REF) == pytest.approx(0.5)
    assert sensitivity(PRED, REF) == pytest.approx(2 / 3)
    assert specificity(PRED, REF) == pytest.approx(5 / 7)
    assert false_positive_rate(PRED, REF) == pytest.approx(2 / 7)
    # MCC = (2*5 - 2*1) / sqrt((2+2)(2+1)(5+2)(5+1)) = 8 / sqrt(504)
    assert matthews_correlation(PRED, REF) == pytest.approx(8 / math.sqrt(504))


def test_dice_equals_2j_over_1_plus_j_on_random_masks():
    rng = np.random.default_rng(3)
    p, r = rng.random((6, 7, 8)) > 0.6, rng.random((6, 7, 8)) > 0.5
    j = jaccard(p, r)
    assert dice(p, r) == pytest.approx(2 * j / (1 + j))


def test_mcc_large_counts_do_not_overflow():
    # Counts of a large volume: the denominator (4e9)^4 = 2.56e38 overflows int64 (9.2e18).
    # MCC = (3e9 * 3e9 - 1e9 * 1e9) / sqrt((4e9)^4) = 8e18 / 1.6e19 = 0.5
    counts = ConfusionCounts(tp=3 * 10**9, fp=10**9, fn=10**9, tn=3 * 10**9)
    assert matthews_correlation_from_counts(counts) == pytest.approx(0.5)
    # A real array of 2e6 voxels, where int64 products of the counts would already overflow (1e24).
    pred = np.zeros((20, 100, 1000), bool)
    pred[:10] = True
    assert matthews_correlation(pred, pred) == pytest.approx(1.0)
    assert matthews_correlation(pred, ~pred) == pytest.approx(-1.0)


def test_empty_mask_conventions():
    empty = np.zeros((3, 4, 5), bool)
    full = np.zeros((3, 4, 5), bool)
    full[1, 1, 1] = True
    assert dice(empty, empty) == 1.0
    assert jaccard(empty, empty) == 1.0
    assert dice(empty, full) == 0.0
    assert precision(empty, empty) == 1.0 and precision(empty, full) == 0.0
    assert sensitivity(empty, empty) == 1.0 and sensitivity(full, empty) == 0.0
    assert matthews_correlation(empty, empty) == 1.0
    assert matthews_correlation(full, empty) == 0.0
    assert hausdorff_distance_mm(empty, empty, (1, 1, 1)) == 0.0
    assert hausdorff_distance_mm(empty, full, (1, 1, 1)) == math.inf
    assert hd95_mm(full, empty, (1, 1, 1)) == math.inf
    assert cldice(empty, empty) == 1.0
    assert cldice(full, empty) == 0.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        dice(np.zeros((2, 3, 4)), np.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"\(2, 3, 4\).*\(2, 3, 5\)"):
        hausdorff_distance_mm(np.ones((2, 3, 4)), np.ones((2, 3, 5)), (1, 1, 1))


def test_unthresholded_probability_map_is_rejected():
    with pytest.raises(ValueError, match="threshold"):
        dice(np.full((2, 2, 2), 0.7), np.ones((2, 2, 2)))


def test_hausdorff_single_voxels_anisotropic_spacing():
    a = np.zeros((8, 6, 6), bool)
    b = np.zeros((8, 6, 6), bool)
    a[1, 2, 2] = True
    b[4, 2, 2] = True  # 3 voxels along Z at 2 mm -> 6 mm
    assert hausdorff_distance_mm(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95_mm(a, b, (2.0, 1.0, 1.0)) == pytest.approx(6.0)
    b2 = np.zeros_like(b)
    b2[4, 2, 5] = True  # offsets (3, 0, 3) voxels with spacing (2, 1, 0.5) -> sqrt(6^2 + 1.5^2)
    assert hausdorff_distance_mm(a, b2, (2.0, 1.0, 0.5)) == pytest.approx(math.hypot(6.0, 1.5))


def test_hausdorff_is_symmetric_and_zero_for_identical_masks():
    rng = np.random.default_rng(0)
    a = ndimage.binary_opening(rng.random((10, 12, 14)) > 0.5)
    b = ndimage.binary_opening(rng.random((10, 12, 14)) > 0.5)
    sp = (1.5, 0.7, 0.7)
    assert hausdorff_distance_mm(a, b, sp) == pytest.approx(hausdorff_distance_mm(b, a, sp))
    assert hausdorff_distance_mm(a, a, sp) == 0.0


def test_hd95_is_below_hd_with_one_outlier():
    ref = np.zeros((20, 20, 40), bool)
    ref[5:15, 5:15, 5:25] = True  # a 10 x 10 x 20 box
    pred = ref.copy()
    pred[10, 10, 38] = True  # one stray voxel 13 voxels beyond the box's end face
    sp = (1.0, 1.0, 1.0)
    assert hausdorff_distance_mm(pred, ref, sp) == pytest.approx(14.0)  # x = 38 to the face at x = 24
    hd95 = hd95_mm(pred, ref, sp)
    assert hd95 < 1.0  # the outlier is one of ~1000 surface voxels, far beyond the 95th percentile


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecation notice
def test_distances_match_monai_with_anisotropic_spacing():
    torch = pytest.importorskip("torch")
    monai_metrics = pytest.importorskip("monai.metrics")
    rng = np.random.default_rng(7)
    ref = ndimage.gaussian_filter(rng.random((16, 24, 20)), 2) > 0.5
    pred = ndimage.binary_dilation(ref, iterations=2) & (rng.random(ref.shape) > 0.05)
    sp = (2.5, 0.6, 0.9)
    for percentile in (100.0, 95.0):
        expected = monai_metrics.compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None],
            torch.from_numpy(ref)[None, None],
            percentile=None if percentile == 100.0 else percentile,
            spacing=sp,
        )
        assert hausdorff_distance_mm(pred, ref, sp, percentile=percentile) == pytest.approx(
            float(expected), rel=1e-5
        )


def _tube(shape, radius, axis_yz=(16, 16), x_range=(4, 60)):
    z, y, x = np.indices(shape)
    dist2 = (z - axis_yz[0]) ** 2 + (y - axis_yz[1]) ** 2
    return (dist2 <= radius**2) & (x >= x_range[0]) & (x < x_range[1])


def test_cldice_identical_tubes_is_one():
    tube = _tube((32, 32, 64), 3)
    assert cldice(tube, tube) == pytest.approx(1.0)


def test_cldice_thick_vs_thin_tube_keeps_topology_where_dice_drops():
    thin = _tube((32, 32, 64), 1)
    thick = _tube((32, 32, 64), 5)
    assert dice(thin, thick) < 0.2  # 5 voxels vs ~81 per cross-section
    assert cldice(thin, thick) == pytest.approx(1.0)  # each skeleton lies inside the other mask


def test_cldice_broken_tube_is_lower():
    tube = _tube((32, 32, 64), 3)
    broken = tube.copy()
    broken[:, :, 20:44] = False  # remove the middle 24 of 56 voxels of length
    score = cldice(broken, tube)
    assert score < 0.8
    # Tprec = 1 (broken skeleton inside tube); Tsens ~ 32/56 of the reference centreline is covered.
    assert score > 0.6


def test_evaluate_binary_keys_and_consistency():
    ref = _tube((24, 24, 40), 3, axis_yz=(12, 12), x_range=(4, 36))
    pred = ndimage.binary_dilation(ref)
    sp = (2.0, 0.5, 0.5)
    result = evaluate_binary(pred, ref, sp)
    assert tuple(result) == METRIC_KEYS
    assert result["dice"] == pytest.approx(dice(pred, ref))
    assert result["hausdorff_mm"] == pytest.approx(hausdorff_distance_mm(pred, ref, sp))
    assert result["hd95_mm"] == pytest.approx(hd95_mm(pred, ref, sp))
    assert result["hd95_mm"] <= result["hausdorff_mm"]
    assert result["sensitivity"] == 1.0 and result["precision"] < 1.0
    no_dist = evaluate_binary(pred, ref, sp, distances=False)
    assert math.isnan(no_dist["hausdorff_mm"]) and no_dist["dice"] == result["dice"]


def test_evaluate_class_maps_per_class_and_vessel():
    ref = np.zeros((4, 10, 10), np.uint8)
    ref[1:3, 1:4, 1:4] = 1  # artery
    ref[1:3, 6:9, 6:9] = 2  # vein
    pred = ref.copy()
    pred[pred == 2] = 1  # vein labelled as artery: class scores drop, "vessel" stays perfect
    result = evaluate_class_maps(pred, ref, (1.0, 0.5, 0.5), distances=False)
    assert set(result) == {"artery", "vein", "micro", "vessel"}
    assert result["vessel"]["dice"] == 1.0
    assert result["vein"]["dice"] == 0.0
    assert result["artery"]["dice"] == pytest.approx(2 * 18 / (36 + 18))
    assert result["micro"]["dice"] == 1.0  # absent in both
    with pytest.raises(ValueError, match="known classes"):
        evaluate_class_maps(pred, ref, (1, 1, 1), class_names=("capillary",))
    with pytest.raises(ValueError, match="integer class map"):
        evaluate_class_maps(pred.astype(float), ref, (1, 1, 1))


@pytest.mark.parametrize(
    ("values", "classes", "binary"),
    [
        ((0, 255), ("artery", "vein", "micro"), True),  # an 8-bit mask
        ((0, 1), ("micro",), True),  # 0/1 mask against a micro-vessel (2PM) model
        ((0, 1), ("artery", "vein", "micro"), False),  # arteries only: a class map
        ((0, 3), ("micro",), False),
        ((0, 1, 2), ("artery", "vein"), False),
        ((0, 1, 7), ("artery",), True),
    ],
)
def test_reference_kind_is_told_from_its_values(values, classes, binary):
    from VesselSegLib.metrics import evaluate_against_reference, is_binary_reference

    reference = np.zeros((4, 6, 6), dtype=np.uint16)
    for index, value in enumerate(values):
        reference[index, 1:4, 1:4] = value
    assert is_binary_reference(reference, classes) == binary
    metrics, scored_as_binary = evaluate_against_reference(
        reference, reference, (1.0, 1.0, 1.0), class_names=classes
    )
    assert scored_as_binary == binary
    assert metrics["vessel"]["dice"] == 1.0
    assert set(metrics) == ({"vessel"} if binary else {*classes, "vessel"})
