"""The benchmark's shifted renderings: deterministic, on the phantom's grid, each shift in its direction."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from rendering_shifts import AS_RENDERED, RENDERINGS, SHIFTS, shift_rendering  # noqa: E402

from VesselSegLib.phantoms import make_phantom_case  # noqa: E402


@pytest.fixture(scope="module")
def phantom():
    return make_phantom_case("TOF-MRA", (32, 48, 48), spacing_zyx=(0.8, 0.5, 0.5), seed=5001)


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_each_rendering_keeps_the_grid_is_deterministic_and_leaves_the_input_alone(phantom, rendering):
    before = phantom.image.copy()
    first = shift_rendering(phantom.image, phantom.brain_mask, rendering, seed=5001)
    again = shift_rendering(phantom.image, phantom.brain_mask, rendering, seed=5001)
    assert first.shape == phantom.image.shape and first.dtype == np.float32
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(phantom.image, before)
    assert np.isfinite(first).all()
    changed = not np.array_equal(first, phantom.image)
    assert changed == (rendering != AS_RENDERED)


def test_the_shifts_move_the_image_in_their_direction(phantom):
    image, brain, vessels = phantom.image, phantom.brain_mask, phantom.class_map > 0
    tissue = brain & ~vessels
    shifted = {name: shift_rendering(image, brain, name, seed=5001) for name in SHIFTS}

    assert shifted["noisy"][tissue].std() > 1.2 * image[tissue].std()

    ratio = shifted["strong-bias"] / np.maximum(image, 1e-6)
    assert ratio[0, 0, 0] == pytest.approx(0.6, abs=1e-4) and ratio[-1, 0, -1] == pytest.approx(1.4, abs=1e-4)

    level = np.median(image[brain])
    lift = np.median(image[vessels]) - level
    assert np.median(shifted["low-contrast"][vessels]) - level == pytest.approx(lift / 2, rel=0.1)
    np.testing.assert_allclose(shifted["low-contrast"][image <= level], image[image <= level])

    thick = shifted["thick-slices"]
    assert np.abs(np.diff(thick, axis=0)).mean() < np.abs(np.diff(image, axis=0)).mean()
    assert thick.mean() == pytest.approx(image.mean(), rel=0.02)


def test_an_unknown_rendering_is_refused_with_the_known_ones(phantom):
    with pytest.raises(ValueError, match="noisy"):
        shift_rendering(phantom.image, phantom.brain_mask, "foggy", seed=1)


def test_low_contrast_on_swi_halves_how_much_darker_the_veins_are():
    phantom = make_phantom_case("SWI", (32, 48, 48), spacing_zyx=(0.8, 0.5, 0.5), seed=5001)
    image, brain, veins = phantom.image, phantom.brain_mask, (phantom.class_map > 0) & phantom.brain_mask
    shifted = shift_rendering(image, brain, "low-contrast", seed=5001, modality="SWI")
    level = np.median(image[brain])
    depth = level - np.median(image[veins])
    assert depth > 0  # SWI veins are dark
    assert level - np.median(shifted[veins]) == pytest.approx(depth / 2, rel=0.1)
    np.testing.assert_allclose(shifted[image >= level], image[image >= level])  # brighter voxels untouched
    with pytest.raises(ValueError, match="TOF-MRA or SWI"):
        shift_rendering(image, brain, "low-contrast", seed=5001, modality="2PM")
