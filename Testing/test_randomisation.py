"""Domain randomisation of 2PM training patches: determinism, what each transform does to a synthetic
image, label alignment and padding through the patch sampler, and the checks of the settings table."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import numpy as np
import pytest

from trainer.datasets import PatchSampler, TrainingCase
from trainer.randomisation import (
    CLIP_RANGE,
    DomainRandomisation,
    RandomisationSpec,
    apply_randomisation,
)

PATCH = (16, 48, 48)
PROBABILITIES = [f.name for f in fields(DomainRandomisation) if f.name.endswith("probability")]
#: Every transform on every patch (half of the attenuated ones brightening with depth).
ALL_ON = DomainRandomisation(
    **{name: 1.0 for name in PROBABILITIES} | {"attenuation_brightening_probability": 0.5}
)


def _vessel_image(shape=PATCH, seed: int = 0) -> np.ndarray:
    """Bright tubes along X and Z on a dim, slightly noisy background, in [0, 1]: shape (Z, Y, X)."""
    rng = np.random.default_rng(seed)
    image = 0.05 + 0.02 * rng.random(shape, dtype=np.float32)
    z, y, x = (np.arange(n) for n in shape)
    image += 0.9 * np.exp(-((y[None, :, None] - shape[1] / 3) ** 2) / 8.0 - (z[:, None, None] - 5) ** 2 / 8.0)
    image += 0.7 * np.exp(-((x[None, None, :] - shape[2] / 2) ** 2 + (y[None, :, None] - 30) ** 2) / 6.0)
    return np.clip(image, 0, 1).astype(np.float32)


# ------------------------------------------------------------------------------------------ determinism


def test_same_seed_gives_the_same_spec_and_output():
    image = _vessel_image()
    first = ALL_ON.draw(np.random.default_rng(5), PATCH)
    second = ALL_ON.draw(np.random.default_rng(5), PATCH)
    assert first == second and not first.is_identity
    np.testing.assert_array_equal(apply_randomisation(image, first), apply_randomisation(image, second))


def test_different_seeds_give_different_outputs():
    image = _vessel_image()
    outputs = [apply_randomisation(image, ALL_ON.draw(np.random.default_rng(s), PATCH)) for s in (5, 6)]
    assert not np.allclose(outputs[0], outputs[1], atol=1e-3)


@pytest.mark.parametrize("leading", [(), (1,)])
def test_input_is_not_modified_and_shape_dtype_are_kept(leading):
    image = _vessel_image()[(None,) * len(leading)]
    before = image.copy()
    for seed in range(4):
        out = apply_randomisation(image, ALL_ON.draw(np.random.default_rng(seed), PATCH))
        assert out.shape == image.shape and out.dtype == np.float32
        assert not np.shares_memory(out, image)
        assert np.isfinite(out).all() and CLIP_RANGE[0] <= out.min() and out.max() <= CLIP_RANGE[1]
    np.testing.assert_array_equal(image, before)


def test_identity_spec_returns_an_equal_copy():
    image = _vessel_image() - 0.1  # also below 0: an identity spec does not even clip
    spec = DomainRandomisation(probability=0.0).draw(np.random.default_rng(0), PATCH)
    assert spec.is_identity and spec == RandomisationSpec()
    out = apply_randomisation(image, spec)
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)


def test_bad_image_shape_is_rejected():
    with pytest.raises(ValueError, match=r"\(Z, Y, X\)"):
        apply_randomisation(np.zeros((2, 4, 8, 8), np.float32), RandomisationSpec(gamma=2.0))


# ------------------------------------------------------------------------------------------ transforms


@pytest.mark.parametrize("brightening", [False, True])
def test_depth_attenuation_is_exponential_in_z(brightening):
    image = np.full((16, 8, 8), 0.5, np.float32)
    spec = RandomisationSpec(attenuation_length_voxels=8.0, attenuation_brightening=brightening)
    means = apply_randomisation(image, spec).mean(axis=(1, 2))
    steps = np.diff(means)
    if brightening:  # brighter with depth, the deepest slice as it was: never brighter than the input
        assert np.all(steps > 0)
        np.testing.assert_allclose([means[-1], means[0]], [0.5, 0.5 * np.exp(-15 / 8)], rtol=1e-5)
    else:  # deep slices darker
        assert np.all(steps < 0)
        np.testing.assert_allclose([means[0], means[-1]], [0.5, 0.5 * np.exp(-15 / 8)], rtol=1e-5)
    np.testing.assert_allclose(means[1:] / means[:-1], np.exp(np.sign(steps[0]) / 8.0), rtol=1e-5)


def test_blur_lowers_a_point_and_spreads_it_more_along_z():
    image = np.zeros((15, 15, 15), np.float32)
    image[7, 7, 7] = 1.0
    out = apply_randomisation(image, RandomisationSpec(blur_sigma_zyx=(2.0, 1.0, 1.0)))
    assert out.max() < 0.1 and out.argmax() == image.argmax()
    np.testing.assert_allclose(out.sum(), 1.0, rtol=2e-3)  # the PSF only redistributes the light
    assert out[9, 7, 7] > 3 * out[7, 7, 9]  # sigma_z > sigma_yx: the axial PSF is longer


def test_blur_lowers_a_line_but_keeps_it_in_place():
    image = _vessel_image()
    out = apply_randomisation(image, RandomisationSpec(blur_sigma_zyx=(1.5, 1.0, 1.0)))
    profile_in, profile_out = image[5, :, 3], out[5, :, 3]  # across the tube along X
    assert profile_out.max() < 0.9 * profile_in.max()
    assert profile_out.argmax() == profile_in.argmax()


@pytest.mark.parametrize(("gamma", "middle"), [(0.5, np.sqrt(0.5)), (2.0, 0.25)])
def test_gamma_fixes_0_and_1_and_keeps_the_order(gamma, middle):
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, 21, dtype=np.float32), (4, 3, 21))
    out = apply_randomisation(ramp, RandomisationSpec(gamma=gamma))
    assert out[..., 0].max() == 0.0
    np.testing.assert_allclose(out[..., -1], 1.0, rtol=1e-6)
    np.testing.assert_allclose(out[..., 10], middle, rtol=1e-5)
    assert np.all(np.diff(out, axis=-1) > 0)
    below = np.full((2, 2, 2), -0.2, np.float32)  # normalisation leaves some voxels below 0: kept, no NaN
    np.testing.assert_allclose(apply_randomisation(below, RandomisationSpec(gamma=gamma)), -0.2)


def test_contrast_keeps_the_mean_and_scales_deviations():
    image = _vessel_image()
    out = apply_randomisation(image, RandomisationSpec(contrast=1.3))
    np.testing.assert_allclose(out.mean(), image.mean(), rtol=1e-4)
    np.testing.assert_allclose(out - out.mean(), 1.3 * (image - image.mean()), atol=1e-5)


def test_background_adds_an_offset_and_a_smooth_field():
    image = np.zeros(PATCH, np.float32)
    out = apply_randomisation(image, RandomisationSpec(background_offset=0.1, background_field=0.2, seed=3))
    assert out.min() >= 0.1 - 1e-6 and out.max() <= 0.3 + 1e-6
    assert out.std() > 0.01  # not a constant: a field
    for axis in range(3):  # low frequency: neighbouring voxels barely differ
        assert np.abs(np.diff(out, axis=axis)).max() < 0.02
    other = apply_randomisation(image, RandomisationSpec(background_offset=0.1, background_field=0.2, seed=4))
    assert not np.allclose(out, other)


def test_resolution_change_keeps_shape_and_only_smooths_the_changed_axes():
    rng = np.random.default_rng(0)
    noise = rng.random(PATCH, dtype=np.float32)
    z_only = RandomisationSpec(resolution_factors_zyx=(2.5, 1.0, 1.0))
    out = apply_randomisation(noise, z_only)
    assert out.shape == noise.shape
    roughness = [np.square(np.diff(a, axis=0)).mean() for a in (noise, out)]
    assert roughness[1] < 0.5 * roughness[0]  # detail along Z lost
    # Linear along Z is reproduced exactly by linear interpolation; along X nothing is mixed.
    ramp = np.broadcast_to(np.linspace(0.2, 0.8, PATCH[0], dtype=np.float32)[:, None, None], PATCH)
    np.testing.assert_allclose(apply_randomisation(ramp, z_only), ramp, atol=1e-5)
    flat_z = np.broadcast_to(noise[:1], PATCH)
    np.testing.assert_allclose(apply_randomisation(flat_z, z_only), flat_z, atol=1e-5)
    in_plane = apply_randomisation(noise, RandomisationSpec(resolution_factors_zyx=(1.0, 3.0, 3.0)))
    assert in_plane.shape == noise.shape
    for axis in (1, 2):
        assert (
            np.square(np.diff(in_plane, axis=axis)).mean() < 0.5 * np.square(np.diff(noise, axis=axis)).mean()
        )
    # In-plane only: no slice mixed with another (one slice alone comes out the same).
    one_slice = apply_randomisation(noise[3:4], RandomisationSpec(resolution_factors_zyx=(1.0, 3.0, 3.0)))
    np.testing.assert_allclose(one_slice, in_plane[3:4], atol=1e-6)
    unchanged = apply_randomisation(noise, RandomisationSpec(resolution_factors_zyx=(1.0, 1.0, 1.0)))
    np.testing.assert_allclose(unchanged, noise, atol=1e-6)


def test_slice_jumps_scale_whole_slices_only():
    image = _vessel_image()
    spec = RandomisationSpec(slice_jumps=((0.5, 1.5), (0.0, 0.5)))  # slices 8 and 0 of 16
    out = apply_randomisation(image, spec)
    ratio = out / image
    expected = np.ones(PATCH[0])
    expected[8], expected[0] = 1.5, 0.5
    # In-slice structure unchanged: every voxel of a slice is multiplied by the same factor.
    np.testing.assert_allclose(ratio, np.broadcast_to(expected[:, None, None], PATCH), rtol=1e-5)
    means_in, means_out = image.mean(axis=(1, 2)), out.mean(axis=(1, 2))
    assert np.flatnonzero(~np.isclose(means_in, means_out)).tolist() == [0, 8]


def test_gaussian_read_noise_has_the_drawn_std():
    image = np.full(PATCH, 0.3, np.float32)
    out = apply_randomisation(image, RandomisationSpec(gaussian_noise_std=0.05, seed=1))
    residual = out - image
    assert abs(residual.mean()) < 0.002
    np.testing.assert_allclose(residual.std(), 0.05, rtol=0.03)


def test_poisson_noise_has_variance_mean_over_photons():
    image = np.full(PATCH, 0.5, np.float32)
    out = apply_randomisation(image, RandomisationSpec(poisson_photons=20.0, seed=1))
    np.testing.assert_allclose(out.mean(), 0.5, rtol=0.01)
    np.testing.assert_allclose(out.var(), 0.5 / 20.0, rtol=0.05)
    np.testing.assert_allclose(out * 20.0, np.round(out * 20.0), atol=1e-4)  # whole photon counts
    assert (
        apply_randomisation(np.zeros(PATCH, np.float32), RandomisationSpec(poisson_photons=20.0)).max() == 0
    )


def test_speckle_is_multiplicative():
    assert apply_randomisation(np.zeros(PATCH, np.float32), RandomisationSpec(speckle_std=0.2)).max() == 0
    out = apply_randomisation(np.full(PATCH, 0.5, np.float32), RandomisationSpec(speckle_std=0.2, seed=2))
    np.testing.assert_allclose((out / 0.5 - 1).std(), 0.2, rtol=0.03)
    both = apply_randomisation(
        np.full(PATCH, 0.5, np.float32), RandomisationSpec(speckle_std=0.2, gaussian_noise_std=0.05, seed=2)
    )
    np.testing.assert_allclose(both.std(), np.hypot(0.1, 0.05), rtol=0.03)  # variances add


def test_extreme_settings_stay_finite_and_in_range():
    extreme = DomainRandomisation(
        **{name: 1.0 for name in PROBABILITIES},
        gamma_range=(0.1, 10.0),
        contrast_range=(0.1, 10.0),
        background_offset_range=(-0.5, 1.0),
        background_field_range=(1.0, 1.0),
        attenuation_length_range=(0.05, 0.05),
        blur_sigma_yx_range=(5.0, 5.0),
        blur_axial_ratio_range=(10.0, 10.0),
        gaussian_noise_std_range=(1.0, 1.0),
        poisson_photons_range=(1.0, 1e6),
        speckle_std_range=(1.0, 1.0),
        resolution_z_range=(8.0, 8.0),
        resolution_yx_range=(8.0, 8.0),
        slice_jump_count_range=(64, 64),
        slice_jump_factor_range=(0.0, 10.0),
    )
    image = _vessel_image((8, 24, 24))
    image[0, 0, :4] = [1e6, -1e6, 50.0, np.float32(3e38)]
    for seed in range(6):
        out = apply_randomisation(image, extreme.draw(np.random.default_rng(seed), (8, 24, 24)))
        assert np.isfinite(out).all() and CLIP_RANGE[0] <= out.min() and out.max() <= CLIP_RANGE[1]


# ------------------------------------------------------------------------------------------ settings


def test_empty_table_gives_the_preset_and_the_record_round_trips():
    assert DomainRandomisation.from_table({}) == DomainRandomisation()
    record = json.loads(json.dumps(ALL_ON.as_record()))
    assert record["gamma_range"] == [0.6, 1.6] and record["probability"] == 1.0
    assert DomainRandomisation.from_table(record) == ALL_ON
    assert DomainRandomisation.from_table({"gamma_range": [1, 2]}).gamma_range == (1.0, 2.0)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"randomisation\.gama_range.*gamma_range") as error:
        DomainRandomisation.from_table({"gama_range": [0.5, 2.0]})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("gamma_range", [0.01, 2.0], "0.1 <= low <= high <= 10.0"),
        ("gamma_range", [2.0, 1.0], "0.1 <= low <= high <= 10.0"),  # low above high
        ("gamma_range", 1.5, "[low, high]"),
        ("gamma_probability", 1.5, "[0.0, 1.0]"),
        ("contrast_probability", True, "[0.0, 1.0]"),
        ("poisson_photons_range", "many", "1.0 <= low"),
        ("blur_sigma_yx_range", [0.5, float("nan")], "<= 5.0"),
        ("slice_jump_count_range", [1.5, 2], "two integers"),
        ("resolution_z_range", [0.5, 2.0], "1.0 <= low"),
    ],
)
def test_bad_value_names_the_key_and_the_allowed_range(key, value, allowed):
    with pytest.raises(ValueError) as error:
        DomainRandomisation.from_table({key: value}, where="training.randomisation")
    message = str(error.value)
    assert f"training.randomisation.{key}" in message and allowed in message and "\n" not in message


def test_constructor_checks_too_and_a_table_must_be_a_table():
    with pytest.raises(ValueError, match=r"DomainRandomisation\.probability"):
        DomainRandomisation(probability=-0.1)
    with pytest.raises(ValueError, match=r"randomisation must be a table"):
        DomainRandomisation.from_table([("gamma_range", [1, 2])])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ patch sampler


def _case(shape_zyx, seed: int = 0) -> TrainingCase:
    """A synthetic 2PM case whose image is >= 0.1 everywhere (so padding is told apart from the volume)."""
    rng = np.random.default_rng(seed)
    image = (0.1 + 0.9 * rng.random(shape_zyx)).astype(np.float32)
    target = (image > 0.8)[None].astype(np.uint8)
    return TrainingCase(
        name=f"case-{seed}",
        image=image,
        target=target,
        spacing_zyx=(5.0, 0.994, 0.994),
        modality="2PM",
        box=tuple((0, n) for n in shape_zyx),
        vessel_voxels=np.flatnonzero(target[0]),
    )


@pytest.mark.parametrize("case_shape", [(24, 64, 64), (6, 20, 30)])
def test_sampler_randomises_the_image_only_and_keeps_padding(case_shape):
    """Same seed, with and without randomisation: same patch location and target; image changed inside the
    volume only (the padding, also in Y/X and after flips and transposes, is the plain patch's)."""
    cases = [_case(case_shape)]
    plain = PatchSampler(cases, (16, 32, 32))
    randomised = PatchSampler(cases, (16, 32, 32), randomisation=ALL_ON)
    for seed in range(8):
        spec = randomised.draw(np.random.default_rng(seed))
        assert spec.randomisation is not None and not spec.randomisation.is_identity
        assert replace(spec, randomisation=None) == plain.draw(np.random.default_rng(seed))
        image, target = randomised.extract(spec)
        plain_image, plain_target = plain.extract(replace(spec, randomisation=None))
        np.testing.assert_array_equal(target, plain_target)
        assert image.shape == plain_image.shape and image.dtype == np.float32
        padding = plain_image == np.float32(spec.intensity_shift)  # the case image is >= 0.1
        np.testing.assert_array_equal(image[padding], plain_image[padding])
        assert not np.allclose(image[~padding], plain_image[~padding], atol=1e-3)
        assert padding.any() == (case_shape[0] < 16)


def test_sampler_without_randomisation_is_unchanged():
    """randomisation=None (or augment=False) gives the old patches: crop, flips, then scale and shift."""
    case = _case((24, 64, 64))
    plain = PatchSampler([case], (16, 32, 32))
    spec = plain.draw(np.random.default_rng(1))
    assert spec.randomisation is None
    expected = case.image[None, spec.start_zyx[0] : spec.start_zyx[0] + 16]
    expected = expected[
        :, :, spec.start_zyx[1] : spec.start_zyx[1] + 32, spec.start_zyx[2] : spec.start_zyx[2] + 32
    ]
    if spec.flip_y:
        expected = expected[:, :, ::-1]
    if spec.flip_x:
        expected = expected[..., ::-1]
    if spec.transpose_yx:
        expected = expected.swapaxes(-1, -2)
    expected = expected * np.float32(spec.intensity_scale) + np.float32(spec.intensity_shift)
    np.testing.assert_array_equal(plain.extract(spec)[0], expected)
    no_augment = PatchSampler([case], (16, 32, 32), augment=False, randomisation=ALL_ON)
    assert no_augment.draw(np.random.default_rng(1)).randomisation is None


def test_sampler_batches_are_seeded():
    sampler = PatchSampler([_case((6, 40, 48))], (16, 32, 32), randomisation=DomainRandomisation())
    images, targets = sampler.batch(np.random.default_rng(3), 6)
    again, again_targets = sampler.batch(np.random.default_rng(3), 6)
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(targets, again_targets)
    assert not np.array_equal(images, sampler.batch(np.random.default_rng(4), 6)[0])


def _vessel_band(size: int) -> tuple[np.ndarray, np.ndarray]:
    """An (8, size, size) patch, dark but for one bright vessel 4 voxels wide across its middle, and its mask."""
    image = np.zeros((8, size, size), dtype=np.float32)
    vessels = np.zeros(image.shape, dtype=bool)
    vessels[:, size // 2 - 2 : size // 2 + 2, :] = True
    image[vessels] = 1.0
    return image, vessels


def test_dye_leakage_brightens_the_tissue_near_vessels_but_not_the_lumen():
    from trainer.randomisation import RandomisationSpec, apply_randomisation

    image, vessels = _vessel_band(48)
    spec = RandomisationSpec(leakage_amplitude=0.5, leakage_sigma_yx=4.0, seed=3)
    out = apply_randomisation(image, spec, vessels)
    np.testing.assert_array_equal(out[vessels], image[vessels])  # the lumen keeps its brightness
    near, far = out[:, 27:30, :], out[:, 40:, :]
    assert near.mean() > 0.05 and near.mean() > 3 * far.mean()
    np.testing.assert_array_equal(apply_randomisation(image, spec, vessels), out)  # deterministic
    np.testing.assert_array_equal(apply_randomisation(image, spec), image)  # needs the mask
    assert DomainRandomisation().leakage_probability == 0.0  # off unless asked for


def test_sampler_passes_the_vessel_mask_and_keeps_the_target():
    rng = np.random.default_rng(0)
    image = rng.random((10, 40, 40)).astype(np.float32) * 0.1
    target = np.zeros((1, 10, 40, 40), dtype=np.uint8)
    target[0, :, 18:22, :] = 1
    image[target[0] > 0] = 1.0
    from trainer.datasets import PatchSampler, _make_case

    case = _make_case("c", image, target, (0.005, 0.001, 0.001), "2PM", None)
    settings = DomainRandomisation(probability=1.0, leakage_probability=1.0, **{
        name: 0.0 for name in (
            "gamma_probability", "contrast_probability", "background_probability", "attenuation_probability",
            "blur_probability", "gaussian_noise_probability", "poisson_noise_probability",
            "speckle_noise_probability", "resolution_probability", "slice_jump_probability",
        )
    })  # fmt: skip
    plain = PatchSampler([case], (10, 32, 32), foreground_fraction=1.0)
    leaky = PatchSampler([case], (10, 32, 32), foreground_fraction=1.0, randomisation=settings)
    spec = leaky.draw(np.random.default_rng(5))
    assert spec.randomisation.leakage_amplitude is not None
    image_leaky, target_leaky = leaky.extract(spec)
    image_plain, target_plain = plain.extract(replace(spec, randomisation=None))
    np.testing.assert_array_equal(target_leaky, target_plain)
    tissue = target_plain[0] == 0
    assert (image_leaky[0][tissue] >= image_plain[0][tissue] - 1e-6).all()
    assert image_leaky[0][tissue].mean() > image_plain[0][tissue].mean() + 0.01


def test_dye_pools_brighten_the_drawn_share_of_tissue_and_spare_the_lumen():
    from trainer.randomisation import RandomisationSpec, apply_randomisation

    image, vessels = _vessel_band(96)
    spec = RandomisationSpec(pool_amplitude=0.6, pool_coverage=0.2, seed=5)
    out = apply_randomisation(image, spec, vessels)
    np.testing.assert_array_equal(out[vessels], image[vessels])  # the lumen keeps its brightness
    brightened = (out > 0.3) & ~vessels  # inside a pool (past the soft edge, most of its area)
    assert 0.1 < brightened.mean() < 0.2 + 1e-6 and out[~vessels].max() == pytest.approx(0.6)
    assert (out >= image).all()  # pools only add light
    np.testing.assert_array_equal(apply_randomisation(image, spec, vessels), out)  # deterministic
    other = apply_randomisation(
        image, RandomisationSpec(pool_amplitude=0.6, pool_coverage=0.2, seed=6), vessels
    )
    assert not np.array_equal(other, out)  # another seed, other pools
    assert DomainRandomisation().pool_probability == 0.0  # off unless asked for
    settings = DomainRandomisation(probability=1.0, pool_probability=1.0)
    drawn = settings.draw(np.random.default_rng(0), (8, 96, 96))
    assert 0.2 <= drawn.pool_amplitude <= 1.0 and 0.05 <= drawn.pool_coverage <= 0.3
    # Turning pools on leaves every other decision of a seed as it was.
    plain = DomainRandomisation(probability=1.0).draw(np.random.default_rng(0), (8, 96, 96))
    assert replace(drawn, pool_amplitude=None, pool_coverage=None, seed=plain.seed) == plain
