"""Resampling to a model's spacing and back, the resampling plan, and the voxel-size units check."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.preprocessing.resampling import (
    ResamplingPolicy,
    check_spacing_units,
    plan_resampling,
    resample_mask_to_grid,
    resample_mask_to_spacing,
    resample_to_grid,
    resample_to_spacing,
    resampled_shape,
)

TOF_SPACING = (0.8, 0.5, 0.5)


def _sphere(shape, spacing, centre_vox, radius_mm):
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    dist2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre_vox, spacing, strict=True))
    return np.sqrt(dist2) <= radius_mm


def _centroid_mm(weights, spacing):
    """Centroid in mm from the centre of the grid's box (voxel i's centre at (i - (n - 1) / 2) * s).

    Resampled grids share their box centre with the input's (their extents differ by the rounding to whole
    voxels), so centroids measured from it compare directly.
    """
    weights = np.asarray(weights, dtype=float)
    grids = np.meshgrid(*[np.arange(n) for n in weights.shape], indexing="ij")
    return np.array(
        [
            ((g - (n - 1) / 2) * s * weights).sum() / weights.sum()
            for g, n, s in zip(grids, weights.shape, spacing, strict=True)
        ]
    )


def _blobs(shape, seed=0):
    """A label map of large smooth regions with values 0-3 (like a coarse class map)."""
    field = gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3.0)
    return np.digitize(field, np.quantile(field, [0.4, 0.6, 0.8])).astype(np.uint8)


# ----------------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("shape", "spacing", "target", "expected"),
    [
        ((32, 40, 40), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (64, 80, 80)),
        ((32, 40, 40), (0.25, 0.25, 0.25), (0.8, 0.5, 0.5), (10, 20, 20)),
        ((25, 31, 17), (1.0, 0.5, 0.3), (2.0, 0.7, 0.3), (13, 22, 17)),  # 12.5 rounds up, 22.14 down
        ((3, 3, 3), (1.0, 1.0, 1.0), (10.0, 10.0, 10.0), (1, 1, 1)),  # never an empty axis
    ],
)
def test_resample_to_spacing_keeps_the_physical_extent(shape, spacing, target, expected):
    image = np.random.default_rng(0).random(shape).astype(np.float64)
    out = resample_to_spacing(image, spacing, target)
    assert out.shape == expected == resampled_shape(shape, spacing, target)
    assert out.dtype == np.float32
    extent_in = np.multiply(shape, spacing)
    extent_out = np.multiply(out.shape, target)
    # Rounding to whole voxels: within half an output voxel (or up to one when clamped to a single voxel).
    assert np.all(np.abs(extent_out - extent_in) <= np.asarray(target) * (1.0 if min(expected) == 1 else 0.5))


def test_same_spacing_is_an_exact_copy_and_nearest_keeps_dtype():
    labels = _blobs((12, 16, 20))
    same = resample_to_spacing(labels, TOF_SPACING, TOF_SPACING, interpolation="nearest")
    assert same.dtype == np.uint8
    np.testing.assert_array_equal(same, labels)
    image = np.random.default_rng(1).random((12, 16, 20)).astype(np.float32)
    np.testing.assert_allclose(resample_to_spacing(image, TOF_SPACING, TOF_SPACING), image, atol=1e-5)
    mask = labels > 0
    out = resample_to_spacing(mask, TOF_SPACING, (0.4, 0.25, 0.25), interpolation="nearest")
    assert out.dtype == bool and out.shape == (24, 32, 40)


def test_constant_image_stays_constant_up_to_the_border():
    # The nearest-neighbour extrapolator repeats the edge: no dark rim where output centres fall just
    # outside the input's box.
    image = np.full((10, 13, 7), 3.0, dtype=np.float32)
    out = resample_to_spacing(image, (1.0, 1.0, 1.0), (0.3, 0.7, 0.45))
    np.testing.assert_allclose(out, 3.0, atol=1e-5)
    back = resample_to_grid(out, (0.3, 0.7, 0.45), image.shape, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(back, 3.0, atol=1e-5)


# ----------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("shape", [(20, 32, 30), (21, 33, 31)])
def test_label_map_round_trip_at_twice_the_resolution(shape):
    labels = _blobs(shape)
    half = tuple(s / 2 for s in TOF_SPACING)
    up = resample_to_spacing(labels, TOF_SPACING, half, interpolation="nearest")
    assert up.shape == tuple(2 * n for n in shape)
    back = resample_to_grid(up, half, shape, TOF_SPACING, interpolation="nearest")
    assert back.shape == shape and back.dtype == np.uint8
    assert (back == labels).mean() >= 0.99


def test_label_map_round_trip_at_a_non_integer_factor():
    labels = _blobs((24, 32, 32), seed=3)
    target = (0.5, 0.35, 0.35)
    back = resample_to_grid(
        resample_to_spacing(labels, TOF_SPACING, target, interpolation="nearest"),
        target,
        labels.shape,
        TOF_SPACING,
        interpolation="nearest",
    )
    assert (back == labels).mean() >= 0.97  # only voxels at region boundaries may flip


def test_linear_round_trip_of_a_smooth_field_has_small_error():
    shape = (24, 36, 36)
    field = gaussian_filter(np.random.default_rng(2).normal(size=shape), 4.0)
    field = ((field - field.min()) / np.ptp(field)).astype(np.float32)
    for target in [(0.4, 0.25, 0.25), (1.1, 0.65, 0.4)]:
        coarse_or_fine = resample_to_spacing(field, TOF_SPACING, target)
        back = resample_to_grid(coarse_or_fine, target, shape, TOF_SPACING)
        assert back.shape == shape and back.dtype == np.float32
        error = np.abs(back - field)
        assert float(error.mean()) < 0.01
        assert float(error[2:-2, 2:-2, 2:-2].max()) < 0.05


@pytest.mark.parametrize(
    ("shape", "target"),
    [((31, 40, 37), tuple(s / 2 for s in TOF_SPACING)), ((30, 41, 36), (0.55, 0.3, 0.45))],
)
def test_sphere_centroid_is_kept_on_the_resampled_grid_and_after_the_round_trip(shape, target):
    centre = (13.3, 17.6, 21.2)  # off the volume's centre, so a shifted grid would show
    sphere = _sphere(shape, TOF_SPACING, centre, radius_mm=3.0)
    reference = _centroid_mm(sphere, TOF_SPACING)
    tolerance_mm = 0.1 * np.asarray(TOF_SPACING)  # 0.1 input voxel per axis

    resampled = resample_to_spacing(sphere.astype(np.float32), TOF_SPACING, target)
    # Had the resampled grid kept voxel 0's centre at the input's origin (a plain zero origin for both),
    # its content would sit (s - t) / 2 off, half an input voxel when halving the spacing.
    assert np.all(np.abs(_centroid_mm(resampled, target) - reference) < tolerance_mm)
    labels = resample_to_spacing(sphere, TOF_SPACING, target, interpolation="nearest")
    assert np.all(np.abs(_centroid_mm(labels, target) - reference) < tolerance_mm)

    back = resample_to_grid(resampled, target, shape, TOF_SPACING)
    assert np.all(np.abs(_centroid_mm(back, TOF_SPACING) - reference) < tolerance_mm)
    back_mask = resample_mask_to_grid(labels, target, shape, TOF_SPACING)
    assert back_mask.dtype == bool
    assert np.all(np.abs(_centroid_mm(back_mask, TOF_SPACING) - reference) < tolerance_mm)


def test_mask_helpers_nearest_and_linear():
    sphere = _sphere((20, 30, 30), TOF_SPACING, (10, 15, 15), radius_mm=4.0)
    target = (0.4, 0.25, 0.25)
    nearest = resample_mask_to_spacing(sphere, TOF_SPACING, target)
    linear = resample_mask_to_spacing(sphere, TOF_SPACING, target, interpolation="linear")
    assert nearest.dtype == bool and linear.dtype == bool and nearest.shape == linear.shape == (40, 60, 60)
    # Same volume in mm^3 within a few percent (voxels are 8x smaller).
    volume = sphere.sum() * np.prod(TOF_SPACING)
    for up in (nearest, linear):
        assert abs(up.sum() * np.prod(target) / volume - 1.0) < 0.05
    back = resample_mask_to_grid(linear, target, sphere.shape, TOF_SPACING, interpolation="linear")
    assert (back == sphere).mean() > 0.99


def test_resample_to_grid_refuses_a_grid_of_another_extent():
    out = resample_to_spacing(np.ones((20, 20, 20), np.float32), (1.0, 1.0, 1.0), (0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="pass the shape and spacing of the volume"):
        resample_to_grid(out, (0.5, 0.5, 0.5), (30, 20, 20), (1.0, 1.0, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"array_zyx": np.ones((4, 4))}, "non-empty 3D array"),
        ({"spacing_zyx": (1.0, 0.0, 1.0)}, "spacing_zyx must be 3 positive"),
        ({"target_spacing_zyx": (1.0, 1.0)}, "target_spacing_zyx must be 3 positive"),
        ({"interpolation": "cubic"}, "interpolation must be one of"),
        ({"array_zyx": np.ones((4, 4, 4), dtype=complex)}, "real-valued volume"),
    ],
)
def test_resample_to_spacing_rejects_bad_arguments(kwargs, message):
    arguments = {
        "array_zyx": np.ones((4, 4, 4)),
        "spacing_zyx": (1.0, 1.0, 1.0),
        "target_spacing_zyx": (0.5,) * 3,
    }
    arguments.update(kwargs)
    interpolation = arguments.pop("interpolation", "linear")
    with pytest.raises(ValueError, match=message):
        resample_to_spacing(**arguments, interpolation=interpolation)


def test_tof_phantom_rendered_at_quarter_millimetre_resamples_to_the_model_grid():
    case = make_phantom_case("TOF-MRA", (48, 64, 64), spacing_zyx=(0.25, 0.25, 0.25), seed=0)
    image = resample_to_spacing(case.image, case.spacing_zyx, TOF_SPACING)
    assert image.shape == (15, 32, 32)  # 48 * 0.25 / 0.8 = 15, 64 * 0.25 / 0.5 = 32
    assert image.dtype == np.float32 and np.isfinite(image).all()
    classes = resample_to_spacing(case.class_map, case.spacing_zyx, TOF_SPACING, interpolation="nearest")
    assert classes.shape == image.shape and set(np.unique(classes)) <= set(np.unique(case.class_map))
    # Vessels stay brighter than the brain around them on the model's grid (TOF: bright arteries).
    brain = resample_mask_to_spacing(case.brain_mask, case.spacing_zyx, TOF_SPACING)
    artery = classes == 1
    assert artery.any()
    assert image[artery].mean() > image[brain & (classes == 0)].mean()


# ----------------------------------------------------------------------------------------- plan


@pytest.mark.parametrize(
    ("z_spacing", "resample"),
    [(0.8, False), (0.99, False), (1.0, False), (1.01, True), (0.61, False), (0.59, True)],
)
def test_plan_resampling_tolerance_boundary(z_spacing, resample):
    # Model Z = 0.8 mm, tolerance 25 %: 1.0 (ratio 1.25) is just inside, 1.01 just outside; 0.61 (0.7625)
    # inside, 0.59 (0.7375) outside.
    plan = plan_resampling((z_spacing, 0.5, 0.5), TOF_SPACING, ResamplingPolicy())
    assert plan.resample is resample
    assert plan.input_spacing_zyx == (z_spacing, 0.5, 0.5)
    if resample:
        assert plan.target_spacing_zyx == TOF_SPACING and plan.resampled_axes == ("Z",)
        assert "more than 25% on Z" in plan.reason
    else:
        assert plan.target_spacing_zyx == plan.input_spacing_zyx and "within 25%" in plan.reason
    assert plan.ratio_zyx[0] == pytest.approx(z_spacing / 0.8)
    json.dumps(plan.as_record())


def test_plan_only_changes_the_axes_beyond_tolerance():
    plan = plan_resampling((1.2, 0.45, 0.45), TOF_SPACING, ResamplingPolicy(tolerance=0.2))
    assert plan.resample and plan.target_spacing_zyx == (0.8, 0.45, 0.45) and plan.resampled_axes == ("Z",)
    strict = plan_resampling((1.2, 0.45, 0.45), TOF_SPACING, ResamplingPolicy(tolerance=0.0))
    assert strict.target_spacing_zyx == TOF_SPACING and strict.resampled_axes == ("Z", "Y", "X")


def test_plan_without_model_spacing_or_with_resampling_off():
    plan = plan_resampling((0.3, 0.3, 0.3), None, ResamplingPolicy())
    assert not plan.resample and plan.reason == "the model declares no training spacing"
    assert plan.target_spacing_zyx == (0.3, 0.3, 0.3) and plan.ratio_zyx is None

    off = plan_resampling((1.6, 0.5, 0.5), TOF_SPACING, ResamplingPolicy(enabled=False))
    assert not off.resample and off.target_spacing_zyx == off.input_spacing_zyx
    assert "resampling is off" in off.reason and off.ratio_zyx == pytest.approx((2.0, 1.0, 1.0))
    assert off.warning is not None and "more than 25% on Z" in off.warning
    record = json.loads(json.dumps(off.as_record()))
    assert record["enabled"] is False and record["ratio_zyx"] == [2.0, 1.0, 1.0] and record["warning"]

    off_close = plan_resampling((0.9, 0.5, 0.5), TOF_SPACING, ResamplingPolicy(enabled=False))
    assert off_close.warning is None


def test_plan_refuses_a_thousandfold_mismatch_instead_of_resampling():
    with pytest.raises(ValueError, match="looks like a units error"):
        plan_resampling((2.0, 0.994, 0.994), (0.002, 0.001, 0.001))


@pytest.mark.parametrize("tolerance", [-0.1, float("nan"), float("inf"), "0.25", True])
def test_policy_rejects_bad_tolerances(tolerance):
    with pytest.raises(ValueError, match="tolerance must be"):
        ResamplingPolicy(tolerance=tolerance)


def test_policy_is_frozen_and_keyword_only():
    policy = ResamplingPolicy(tolerance=0.1)
    with pytest.raises(AttributeError):
        policy.tolerance = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        ResamplingPolicy(True, 0.1)  # type: ignore[misc]


# ----------------------------------------------------------------------------------------- units


def test_minivess_like_micrometres_read_as_millimetres_are_corrected():
    decision = check_spacing_units((2.0, 0.994, 0.994), "2PM")
    assert decision.corrected and decision.factor == 1e-3
    assert decision.spacing_zyx == pytest.approx((0.002, 0.000994, 0.000994))
    assert (
        "micrometres" in decision.message
        and "--spacing X Y Z in mm, or fix the file's units" in decision.message
    )
    record = json.loads(json.dumps(decision.as_record()))
    assert record["corrected"] and record["original_spacing_zyx"] == [2.0, 0.994, 0.994]
    # Once corrected, the plan for a 2PM model trained at (2, 1, 1) um needs no resampling.
    assert not plan_resampling(decision.spacing_zyx, (0.002, 0.001, 0.001)).resample


@pytest.mark.parametrize("modality", ["TOF-MRA", "tof-mra", "SWI"])
def test_mra_in_metres_is_corrected(modality):
    decision = check_spacing_units((0.0005, 0.0005, 0.0005), modality)
    assert decision.corrected and decision.factor == 1e3
    assert decision.spacing_zyx == pytest.approx((0.5, 0.5, 0.5))
    assert "metres" in decision.message


@pytest.mark.parametrize(
    ("spacing", "modality"),
    [
        ((0.8, 0.5, 0.5), "TOF-MRA"),
        ((1.0, 0.5, 0.5), "swi"),
        ((0.002, 0.001, 0.001), "2pm"),
        ((5.0,) * 3, "SWI"),
    ],
)
def test_plausible_spacings_are_untouched(spacing, modality):
    decision = check_spacing_units(spacing, modality)
    assert not decision.corrected and decision.factor == 1.0 and decision.message == ""
    assert decision.spacing_zyx == spacing and decision.plausible


@pytest.mark.parametrize(
    ("spacing", "modality"),
    [((1e4, 1e4, 1e4), "TOF-MRA"), ((1e-9, 1e-9, 1e-9), "2PM"), ((0.002, 1.0, 1.0), "2PM")],
)
def test_implausible_in_every_reading_is_refused(spacing, modality):
    with pytest.raises(ValueError, match=rf"implausible for {modality}.*--spacing X Y Z in mm"):
        check_spacing_units(spacing, modality)


def test_a_given_spacing_is_never_corrected_only_warned_about():
    decision = check_spacing_units((2.0, 0.994, 0.994), "2PM", spacing_given=True)
    assert not decision.corrected and decision.spacing_zyx == (2.0, 0.994, 0.994)
    assert not decision.plausible and "used as given" in decision.message
    fine = check_spacing_units((0.002, 0.001, 0.001), "2PM", spacing_given=True)
    assert fine.message == "" and fine.plausible


@pytest.mark.parametrize(
    ("spacing", "modality", "message"),
    [
        ((1.0, 1.0), "TOF-MRA", "3 positive voxel sizes"),
        ((1.0, -1.0, 1.0), "2PM", "3 positive"),
        ((1.0,) * 3, "CT", "Unknown modality"),
    ],
)
def test_units_check_rejects_bad_arguments(spacing, modality, message):
    with pytest.raises(ValueError, match=message):
        check_spacing_units(spacing, modality)
