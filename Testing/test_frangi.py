"""Tests of the Frangi vesselness baseline on synthetic tubes, plates and blobs."""

from __future__ import annotations

import numpy as np
import pytest

from VesselSegLib.baselines.frangi import default_sigmas_mm, hessian_vesselness, segment_frangi
from VesselSegLib.metrics import dice

SHAPE = (32, 32, 40)
SIGMAS = (1.0, 1.5, 2.0)  # mm; a radius-2 tube responds most near sigma = r / sqrt(2)


def _noisy(mask: np.ndarray, seed: int = 0, noise: float = 0.1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return mask.astype(np.float32) + rng.normal(0.0, noise, mask.shape).astype(np.float32)


def _tube_along_x(shape=SHAPE, radius_mm=2.0, spacing_zyx=(1.0, 1.0, 1.0)) -> np.ndarray:
    z, y, _ = np.indices(shape)
    dz = (z - shape[0] // 2) * spacing_zyx[0]
    dy = (y - shape[1] // 2) * spacing_zyx[1]
    return dz**2 + dy**2 <= radius_mm**2


@pytest.fixture(scope="module")
def tube() -> np.ndarray:
    return _tube_along_x()


@pytest.fixture(scope="module")
def tube_vesselness(tube) -> np.ndarray:
    return hessian_vesselness(_noisy(tube), (1.0, 1.0, 1.0), sigmas_mm=SIGMAS)


def test_output_dtype_shape_and_range(tube_vesselness):
    assert tube_vesselness.dtype == np.float32
    assert tube_vesselness.shape == SHAPE
    assert np.isfinite(tube_vesselness).all()
    assert tube_vesselness.min() >= 0.0 and tube_vesselness.max() <= 1.0


def test_tube_axis_scores_above_background(tube, tube_vesselness):
    axis = tube_vesselness[16, 16, 5:35]  # the centreline, away from the array's ends
    background = tube_vesselness[~tube]
    assert axis.mean() > 0.5
    assert axis.min() > 10 * np.percentile(background, 99)


def test_tube_scores_above_plate_and_blob(tube_vesselness):
    z, y, x = np.indices(SHAPE)
    plate = np.abs(z - 16) <= 2  # a 5-voxel-thick slab: line-like in no direction
    blob = (z - 16) ** 2 + (y - 16) ** 2 + (x - 20) ** 2 <= 9  # a ball of radius 3
    v_plate = hessian_vesselness(_noisy(plate, seed=1), (1.0, 1.0, 1.0), sigmas_mm=SIGMAS)
    v_blob = hessian_vesselness(_noisy(blob, seed=2), (1.0, 1.0, 1.0), sigmas_mm=SIGMAS)
    tube_axis = tube_vesselness[16, 16, 5:35].mean()
    assert v_plate[16, 8:24, 8:32].mean() < 0.25 * tube_axis
    assert v_blob[16, 16, 20] < 0.5 * tube_axis


def test_dark_tube_needs_bright_vessels_false(tube, tube_vesselness):
    dark = -_noisy(tube)
    v_dark = hessian_vesselness(dark, (1.0, 1.0, 1.0), sigmas_mm=SIGMAS, bright_vessels=False)
    np.testing.assert_allclose(v_dark, tube_vesselness, atol=1e-5)  # the exact mirror image
    v_wrong = hessian_vesselness(dark, (1.0, 1.0, 1.0), sigmas_mm=SIGMAS, bright_vessels=True)
    assert v_wrong[16, 16, 5:35].max() < 0.05


def test_constant_image_gives_zeros():
    v = hessian_vesselness(np.full((12, 12, 12), 7.0), (1.0, 1.0, 1.0))
    assert v.dtype == np.float32 and not np.isnan(v).any() and v.max() == 0.0


def test_physical_scale_invariance(tube):
    # The same array with twice the voxel size and twice the sigmas is the same image in other units.
    image = _noisy(tube)
    v1 = hessian_vesselness(image, (1.0, 1.0, 1.0), sigmas_mm=SIGMAS)
    v2 = hessian_vesselness(image, (2.0, 2.0, 2.0), sigmas_mm=[2 * s for s in SIGMAS])
    np.testing.assert_allclose(v1, v2, atol=1e-5)


def test_anisotropic_spacing_is_used():
    # A radius-2 mm tube sampled at 2 mm along Z and 1 mm in-plane.
    spacing = (2.0, 1.0, 1.0)
    tube = _tube_along_x(shape=(16, 32, 40), radius_mm=2.1, spacing_zyx=spacing)
    image = _noisy(tube)
    v_right = hessian_vesselness(image, spacing, sigmas_mm=SIGMAS)[8, 16, 5:35].mean()
    v_ignored = hessian_vesselness(image, (1.0, 1.0, 1.0), sigmas_mm=SIGMAS)[8, 16, 5:35].mean()
    assert v_right > 0.5
    assert v_right > v_ignored + 0.1  # treating the flattened tube as isotropic makes it plate-like


def test_progress_called_per_scale(tube):
    calls = []
    hessian_vesselness(_noisy(tube), (1.0, 1.0, 1.0), sigmas_mm=SIGMAS, progress=lambda f, m: calls.append(f))
    assert len(calls) >= len(SIGMAS)
    assert calls == sorted(calls) and calls[-1] == 1.0


def test_segment_frangi_matches_tube(tube):
    vesselness, segmentation = segment_frangi(_noisy(tube), (1.0, 1.0, 1.0), sigmas_mm=SIGMAS)
    assert segmentation.dtype == bool and segmentation.shape == SHAPE
    assert vesselness.dtype == np.float32
    assert dice(segmentation, tube) > 0.6


def test_segment_frangi_mask_and_fixed_threshold(tube):
    mask = np.zeros(SHAPE, bool)
    mask[:, :, :20] = True
    vesselness, segmentation = segment_frangi(_noisy(tube), (1.0, 1.0, 1.0), sigmas_mm=SIGMAS, mask=mask)
    assert vesselness[~mask].max() == 0.0 and not segmentation[~mask].any()
    assert segmentation[16, 16, 5:20].all()
    _, none = segment_frangi(_noisy(tube), (1.0, 1.0, 1.0), sigmas_mm=SIGMAS, threshold=1.0)
    assert not none.any()


def test_default_sigmas_follow_finest_spacing():
    assert default_sigmas_mm((2.0, 0.5, 0.5)) == (0.5, 1.0, 1.5, 2.0)


@pytest.mark.parametrize(
    ("image", "spacing", "kwargs", "match"),
    [
        (np.zeros((8, 8)), (1.0, 1.0, 1.0), {}, "3D"),
        (np.zeros((2, 8, 8, 8)), (1.0, 1.0, 1.0), {}, "3D"),
        (np.zeros((8, 8, 8)), (1.0, 1.0), {}, "spacing_zyx"),
        (np.zeros((8, 8, 8)), (1.0, 0.0, 1.0), {}, "spacing_zyx"),
        (np.zeros((8, 8, 8)), (1.0, 1.0, 1.0), {"sigmas_mm": [1.0, -1.0]}, "sigmas_mm"),
        (np.full((8, 8, 8), np.nan), (1.0, 1.0, 1.0), {}, "NaN"),
    ],
)
def test_bad_input_raises(image, spacing, kwargs, match):
    with pytest.raises(ValueError, match=match):
        hessian_vesselness(image, spacing, **kwargs)


def test_segment_frangi_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        segment_frangi(np.zeros((8, 8, 8)), (1, 1, 1), threshold=2.0)
    with pytest.raises(ValueError, match="mask shape"):
        segment_frangi(np.zeros((8, 8, 8)), (1, 1, 1), mask=np.ones((8, 8, 7), bool))
