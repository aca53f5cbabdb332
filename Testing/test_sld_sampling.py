"""3D-SLD's training crops: uniform as the paper, or partly around bright voxels (trainer/sld/sampling.py)."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.sld.references import foreground_fraction_of_intensity_mips, foreground_fraction_of_mips
from trainer.sld.sampling import CropSampler
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.preprocessing import get_preset, normalize_intensity
from VesselSegLib.unsupervised.adaptation import random_crops

PATCH = (16, 16, 16)


@pytest.fixture(scope="module")
def phantom():
    case = make_phantom_case("TOF-MRA", (32, 64, 64), spacing_zyx=(0.8, 0.5, 0.5), seed=1600)
    return normalize_intensity(case.image, get_preset("TOF-MRA")), case.class_map > 0


def test_no_bright_share_draws_the_uniform_crops_and_random_numbers(phantom):
    image, _ = phantom
    sampler = CropSampler([image, image[::-1]], [0.5, 0.5], PATCH, bright_fraction=0.0)
    drawn, expected = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(5):
        index = int(expected.choice(2, p=[0.5, 0.5]))
        want = random_crops([image, image[::-1]][index], PATCH, 1, expected)[0, 0]
        np.testing.assert_array_equal(sampler.draw(drawn), want)
    assert drawn.random() == expected.random()  # same stream: the paper's runs are unchanged


def test_bright_crops_hold_a_bright_voxel_anywhere_and_more_vessel_than_uniform(phantom):
    image, vessels = phantom
    bright = CropSampler([image], [1.0], PATCH, bright_fraction=1.0, bright_quantile=0.995)
    rng = np.random.default_rng(0)
    crops = [bright.draw(rng) for _ in range(60)]
    assert all(c.shape == PATCH and c.dtype == np.float32 for c in crops)
    assert all(c.max() >= np.quantile(image, 0.995) for c in crops)
    # The bright voxel is not pinned to the centre: the brightest voxel's position varies across crops.
    assert len({np.unravel_index(int(np.argmax(c)), PATCH) for c in crops}) > 20

    # The labels are cut at the same windows only to check the sampler's point: more vessel per crop.
    def vessel_share(sampler):
        rng = np.random.default_rng(1)
        return np.mean([sampler.cut([vessels], sampler.draw_window(rng)).mean() for _ in range(200)])

    uniform = CropSampler([image], [1.0], PATCH)
    assert vessel_share(bright) > 1.25 * vessel_share(uniform) > 0  # 0.038 against 0.027 here


def test_a_volume_thinner_than_the_patch_is_mirror_padded_like_random_crops(phantom):
    image, _ = phantom
    thin = image[:6]
    sampler = CropSampler([thin], [1.0], PATCH, bright_fraction=1.0)
    crop = sampler.draw(np.random.default_rng(0))
    assert crop.shape == PATCH and crop.max() >= np.quantile(thin, 0.995) - 1e-6


def test_bad_settings_are_refused(phantom):
    image, _ = phantom
    with pytest.raises(ValueError, match="bright_fraction must be in"):
        CropSampler([image], [1.0], PATCH, bright_fraction=1.5)
    with pytest.raises(ValueError, match="bright_quantile must be in"):
        CropSampler([image], [1.0], PATCH, bright_fraction=0.5, bright_quantile=1.0)


def test_the_density_of_given_crops_matches_the_intensity_mip_measure(phantom):
    image, _ = phantom
    crops = random_crops(image, PATCH, 8, np.random.default_rng(5))[:, 0]
    fraction = foreground_fraction_of_mips(list(crops))
    assert 0.0 < fraction < 1.0
    # The volume-drawing measure equals this one on the same crops (no flips there, so compare unflipped).
    blocks = [image[0:16, 0:16, 0:16], image[8:24, 10:26, 20:36]]
    assert foreground_fraction_of_mips(blocks) == pytest.approx(
        np.mean([foreground_fraction_of_mips([b]) for b in blocks])
    )
    assert foreground_fraction_of_intensity_mips(
        [image[:16, :16, :16]], PATCH, 3, np.random.default_rng(0)
    ) == (pytest.approx(foreground_fraction_of_mips([image[:16, :16, :16]])))
    with pytest.raises(ValueError, match="crops is empty"):
        foreground_fraction_of_mips([])
