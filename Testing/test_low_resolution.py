"""Simulated low resolution for ROSE (VesselSegLib.preprocessing.low_resolution): k-space band, block mean, grids."""

from __future__ import annotations

import numpy as np
import pytest

from VesselSegLib.methods.base import refined_index_to_world
from VesselSegLib.preprocessing import simulate_low_resolution as exported
from VesselSegLib.preprocessing.low_resolution import (
    block_mean,
    high_resolution_slices,
    kept_half_width,
    low_resolution_index_to_world,
    low_resolution_shape,
    simulate_low_resolution,
    truncate_k_space,
)


def _random(shape, seed=0, offset=0.0):
    return (np.random.default_rng(seed).random(shape) + offset).astype(np.float32)


def _band(size, half_width):
    """Oracle for the kept frequencies, written independently of the module: |k| <= h in FFT order."""
    k = np.arange(size)
    k = np.where(k > size // 2, k - size, k)
    return np.abs(k) <= half_width


@pytest.mark.parametrize(
    ("shape", "downsample", "expected"),
    [
        ((16, 64, 64), 2, (8, 32, 32)),
        ((17, 33, 65), 2, (8, 16, 32)),
        ((9, 10, 11), 3, (3, 3, 3)),
        ((9, 10, 11), (1, 2, 2), (9, 5, 5)),
    ],
)
def test_output_shape_is_floor_of_n_over_r(shape, downsample, expected):
    low = simulate_low_resolution(_random(shape), downsample=downsample)
    assert low.shape == expected == low_resolution_shape(shape, downsample)
    assert low.dtype == np.float32


def test_no_truncation_and_no_downsampling_is_the_identity():
    volume = _random((7, 12, 13))
    same = simulate_low_resolution(volume, truncation_zyx=1, downsample=1)
    np.testing.assert_array_equal(same, volume)
    assert same is not volume


def test_a_constant_volume_stays_constant():
    low = simulate_low_resolution(np.full((12, 30, 31), 0.7, np.float32), truncation_zyx=(3, 3, 3))
    np.testing.assert_allclose(low, 0.7, rtol=1e-6)
    assert low.shape == (6, 15, 15)


def test_the_slice_axis_is_untouched_when_c_z_is_one():
    z_profile = np.sin(np.linspace(0, 9 * np.pi, 20)) ** 2 + 0.1  # sharp along Z, constant in-plane
    volume = np.broadcast_to(z_profile[:, None, None], (20, 24, 24)).astype(np.float64)
    truncated = simulate_low_resolution(volume, truncation_zyx=(1, 3, 3), downsample=1)
    np.testing.assert_allclose(truncated, volume, atol=1e-12)
    # A volume that varies in every axis: Z still not filtered, so each in-plane-constant part is kept.
    varying = _random((10, 24, 24)).astype(np.float64)
    low = truncate_k_space(varying, truncation_zyx=(1, 3, 3), magnitude=False)
    np.testing.assert_allclose(low.mean(axis=(1, 2)), varying.mean(axis=(1, 2)), atol=1e-12)


@pytest.mark.parametrize(
    ("size", "kept_fraction"), [(48, "1/c"), (47, "1/c"), (48, "(c-1)/c"), (31, "(c-1)/c")]
)
def test_truncation_zeroes_the_spectrum_outside_the_kept_band(size, kept_fraction):
    volume = _random((6, size, size + 3), seed=1).astype(np.float64)
    truncated = truncate_k_space(
        volume, truncation_zyx=(1, 3, 3), kept_fraction=kept_fraction, magnitude=False
    )
    spectrum = np.abs(np.fft.fftn(truncated))
    h_y = kept_half_width(size, 3, kept_fraction)
    h_x = kept_half_width(size + 3, 3, kept_fraction)
    kept = _band(size, h_y)[None, :, None] & _band(size + 3, h_x)[None, None, :]
    kept = np.broadcast_to(kept, spectrum.shape)
    assert spectrum[~kept].max() < 1e-9 * spectrum.max()
    # Inside the band nothing changed.
    original = np.abs(np.fft.fftn(volume))
    np.testing.assert_allclose(spectrum[kept], original[kept], rtol=1e-9, atol=1e-9)
    # About N / c (or N (c - 1) / c) frequencies, an odd count.
    target = size / 3 if kept_fraction == "1/c" else size * 2 / 3
    assert abs(2 * h_y + 1 - target) <= 1


def test_magnitude_output_keeps_the_band_for_a_positive_volume():
    volume = _random((4, 30, 30), seed=2, offset=2.0)  # ringing never crosses zero
    truncated = truncate_k_space(volume, truncation_zyx=(1, 3, 3))
    signed = truncate_k_space(volume, truncation_zyx=(1, 3, 3), magnitude=False)
    np.testing.assert_allclose(truncated, signed, rtol=1e-6)
    assert not np.allclose(truncated, volume, atol=1e-3)  # high frequencies are gone


@pytest.mark.parametrize("kept_fraction", ["1/c", "(c-1)/c"])
def test_the_mean_intensity_is_preserved(kept_fraction):
    volume = _random((16, 32, 48), seed=3, offset=1.5)
    low = simulate_low_resolution(volume, kept_fraction=kept_fraction)
    assert low.mean(dtype=np.float64) == pytest.approx(volume.mean(dtype=np.float64), rel=1e-6)
    # Signed output on a volume with zeros: still exact (DC is kept, the block mean averages).
    zero_mean = _random((16, 32, 48), seed=4) - 0.5
    signed = simulate_low_resolution(zero_mean, kept_fraction=kept_fraction, magnitude=False)
    assert signed.mean(dtype=np.float64) == pytest.approx(zero_mean.mean(dtype=np.float64), abs=1e-7)


def test_complement_reading_keeps_more_of_k_space():
    assert kept_half_width(128, 3, "1/c") == 21  # 43 of 128 frequencies
    assert kept_half_width(128, 3, "(c-1)/c") == 42  # 85 of 128
    assert kept_half_width(64, 1) == 32
    assert kept_half_width(5, 100) == 0  # DC alone


def test_block_mean_pairs_lr_voxels_with_hr_blocks():
    hr = _random((9, 10, 11), seed=5)
    lr = block_mean(hr, 2)
    assert lr.shape == (4, 5, 5)
    assert lr[1, 2, 3] == pytest.approx(hr[2:4, 4:6, 6:8].mean(), rel=1e-6)
    region = high_resolution_slices((1, 2, 3), (2, 2, 1), 2)
    assert region == (slice(2, 6), slice(4, 8), slice(6, 8))
    np.testing.assert_allclose(block_mean(hr[region], 2), lr[1:3, 2:4, 3:4], rtol=1e-6)


def test_lr_grid_is_the_inverse_of_the_refined_grid():
    direction = np.linalg.qr(np.random.default_rng(6).normal(size=(3, 3)))[0]
    hr = np.eye(4)
    hr[:3, :3] = direction @ np.diag([0.5, 0.6, 0.8])  # I, J, K = X, Y, Z spacings
    hr[:3, 3] = [10.0, -20.0, 5.0]
    lr = low_resolution_index_to_world(hr, (2, 2, 2))
    np.testing.assert_allclose(refined_index_to_world(lr, (2, 2, 2)), hr, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(lr[:3, :3], axis=0), [1.0, 1.2, 1.6])
    # LR voxel 0 is the centre of HR voxels 0 and 1 along every axis.
    np.testing.assert_allclose(lr[:3, 3], hr[:3, :3] @ [0.5, 0.5, 0.5] + hr[:3, 3])


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"truncation_zyx": (1, 0.5, 3)}, ">= 1"),
        ({"truncation_zyx": (1, 3)}, "three"),
        ({"downsample": 0}, "whole numbers >= 1"),
        ({"downsample": 1.5}, "whole numbers >= 1"),
        ({"kept_fraction": "half"}, "kept_fraction must be one of"),
    ],
)
def test_bad_arguments_are_refused(arguments, message):
    with pytest.raises(ValueError, match=message):
        simulate_low_resolution(_random((4, 8, 8)), **arguments)


def test_bad_volumes_are_refused():
    with pytest.raises(ValueError, match=r"\(Z, Y, X\)"):
        simulate_low_resolution(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="NaN"):
        simulate_low_resolution(np.full((4, 4, 4), np.nan))
    with pytest.raises(ValueError, match="at least as many voxels"):
        simulate_low_resolution(np.zeros((1, 8, 8)))


def test_exported_from_the_package():
    assert exported is simulate_low_resolution
