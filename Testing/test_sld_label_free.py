"""3D-SLD's label-free checks (trainer.sld.label_free): bright-voxel AP and the reference-density threshold.

Real arrays, real crops drawn by the trainer's own sampler; no label anywhere.
"""

from __future__ import annotations

import numpy as np
import pytest

from trainer.sld.label_free import assess, bright_voxel_ap, reference_density_threshold
from trainer.sld.sampling import CropSampler
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.preprocessing import normalize_intensity


@pytest.fixture(scope="module")
def stripped_phantom():
    """A skull-stripped TOF-MRA phantom as the trainer reads it: normalised inside the brain, zero outside."""
    phantom = make_phantom_case("TOF-MRA", (32, 64, 64), seed=11)
    image = normalize_intensity(phantom.image, "TOF-MRA", phantom.brain_mask) * phantom.brain_mask
    return image.astype(np.float32), phantom.brain_mask


def test_a_map_that_follows_the_bright_voxels_scores_high_and_one_that_does_not_scores_chance(
    stripped_phantom,
):
    image, brain = stripped_phantom
    quantile = 0.99
    assert bright_voxel_ap(image, image, brain, quantile=quantile) == pytest.approx(1.0)
    noise = np.random.default_rng(0).random(image.shape)
    chance = bright_voxel_ap(noise, image, brain, quantile=quantile)
    assert chance < 3 * (1 - quantile)  # about the share of bright voxels
    inverted = bright_voxel_ap(1 - image, image, brain, quantile=quantile)
    assert inverted < chance + 0.01  # a map that calls the dark voxels vessel is no better than noise


def test_the_mask_decides_where_the_bright_voxels_are_looked_for(stripped_phantom):
    image, brain = stripped_phantom
    decision = image.copy()
    decision[~brain] = (
        1.0  # calls everything outside the brain vessel: only the mask keeps this from counting
    )
    assert bright_voxel_ap(decision, image, brain) == pytest.approx(1.0)
    assert bright_voxel_ap(decision, image, None) < 0.5
    with pytest.raises(ValueError, match="mask has shape"):
        bright_voxel_ap(decision, image, brain[:-1])
    with pytest.raises(ValueError, match="must have one shape"):
        bright_voxel_ap(decision[:-1], image, brain)


@pytest.mark.parametrize("bright_fraction", [0.0, 1.0])
def test_the_threshold_makes_the_crops_mips_as_dense_as_the_references(stripped_phantom, bright_fraction):
    image, _ = stripped_phantom
    decision = np.random.default_rng(1).random(image.shape).astype(np.float32) ** 4
    sampler = CropSampler([image], [1.0], (16, 16, 16), bright_fraction=bright_fraction)
    cuts = {}
    for density in (0.1, 0.3):
        cut = reference_density_threshold([decision], sampler, density, crops=64)
        # The density the threshold was chosen for, measured the direct way: cut the map, then project.
        rng = np.random.default_rng(0)
        windows = [sampler.draw_window(rng) for _ in range(64)]
        measured = np.mean(
            [sampler.cut([decision > cut], w).max(axis=a).mean() for w in windows for a in range(3)]
        )
        assert measured == pytest.approx(density, abs=0.01)
        cuts[density] = cut
    assert cuts[0.3] < cuts[0.1]  # denser references, lower cut
    with pytest.raises(ValueError, match="reference_density must be in"):
        reference_density_threshold([decision], sampler, 1.0)
    with pytest.raises(ValueError, match="2 decision maps for 1 volumes"):
        reference_density_threshold([decision, decision], sampler, 0.2)


def test_assess_reports_the_share_called_vessel_at_both_cuts(stripped_phantom):
    image, brain = stripped_phantom
    decision = 0.3 + 0.7 * image  # follows the intensity (no ties), above 0.5 over part of the brain
    result = assess(
        [decision],
        [image],
        [brain],
        patch_zyx=(16, 16, 16),
        bright_fraction=1.0,
        bright_quantile=0.995,
        reference_density=0.2,
    )
    assert result.bright_voxel_ap == pytest.approx(1.0)
    assert result.foreground_at_half == pytest.approx(float((decision[brain] > 0.5).mean()))
    assert result.foreground_at_threshold == pytest.approx(
        float((decision[brain] > result.reference_density_threshold).mean())
    )
    assert set(result.to_dict()) == {
        "bright_voxel_ap",
        "bright_quantile",
        "reference_density",
        "reference_density_threshold",
        "foreground_at_threshold",
        "foreground_at_half",
    }
