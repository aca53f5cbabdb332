"""Input checks, modality presets and post-processing on small hand-made volumes."""

from __future__ import annotations

import numpy as np
import pytest

from VesselSegLib.postprocessing import build_class_map, remove_small_components
from VesselSegLib.preprocessing import (
    MODALITY_PRESETS,
    get_preset,
    normalize_intensity,
    validate_image,
    validate_mask,
)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float16, np.float64, bool])
def test_integer_and_half_precision_volumes_become_float32_copies(dtype):
    image = (np.arange(60).reshape(3, 4, 5) % 7).astype(dtype)
    checked = validate_image(image)
    assert checked.dtype == np.float32 and checked.shape == (3, 4, 5)
    np.testing.assert_array_equal(checked, image.astype(np.float32))
    assert checked is not image


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4)), "3D scalar volume, but it has 2 dimensions"),
        (np.zeros((2, 4, 4, 3)), "4 dimensions"),
        (np.zeros((0, 4, 4)), "empty"),
        (np.full((4, 4, 4), 7.0), "constant"),
        (np.where(np.eye(4)[None] > 0, np.nan, 1.0), "NaN or infinite"),
        (np.where(np.eye(4)[None] > 0, np.inf, 1.0), "NaN or infinite"),
        (np.array([["a"]], dtype=object).reshape(1, 1, 1), "data type"),
    ],
)
def test_bad_volumes_raise_a_message_that_names_the_problem(image, message):
    with pytest.raises(ValueError, match=message):
        validate_image(image)


def test_singleton_fourth_axis_is_squeezed():
    assert validate_image(np.arange(8.0).reshape(2, 2, 2, 1)).shape == (2, 2, 2)


def test_mask_must_match_the_image_grid():
    with pytest.raises(ValueError, match="resample the mask"):
        validate_mask(np.ones((3, 4, 4)), (3, 4, 5))
    with pytest.raises(ValueError, match="empty"):
        validate_mask(np.zeros((3, 4, 5)), (3, 4, 5))
    assert validate_mask(np.full((3, 4, 5), 2), (3, 4, 5)).dtype == bool


def test_presets_normalise_to_bright_vessels():
    rng = np.random.default_rng(0)
    tissue = rng.normal(500, 20, size=(8, 16, 16)).astype(np.float32)
    vessel = np.zeros(tissue.shape, bool)
    vessel[:, 8, 4:12] = True
    bright = np.where(vessel, 900, tissue)
    dark = np.where(vessel, 100, tissue)
    for image, preset in ((bright, "TOF-MRA"), (dark, "SWI"), (bright, "2PM")):
        normalized = normalize_intensity(image, preset)
        assert normalized.dtype == np.float32
        assert normalized[vessel].mean() > normalized[~vessel].mean() + 0.3
        assert normalized.min() >= -0.5 and normalized.max() <= 1.5
    # Scaling the raw intensities changes nothing (percentile normalisation is scale-invariant).
    np.testing.assert_allclose(
        normalize_intensity(bright * 3.5, "TOF-MRA"), normalize_intensity(bright, "TOF-MRA"), atol=1e-5
    )


def test_swi_inverts_inside_the_mask_and_zeroes_outside():
    image = np.random.default_rng(1).random((4, 8, 8)).astype(np.float32)
    mask = np.zeros(image.shape, bool)
    mask[:, 2:6, 2:6] = True
    normalized = normalize_intensity(image, "SWI", mask)
    assert (normalized[~mask] == 0).all()
    inside = image[mask]
    assert np.corrcoef(inside, normalized[mask])[0, 1] < -0.99


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="TOF-MRA, SWI, 2PM"):
        get_preset("CTA")
    assert set(MODALITY_PRESETS) == {"TOF-MRA", "SWI", "2PM"}


def test_small_components_are_removed_by_physical_volume():
    mask = np.zeros((10, 10, 10), bool)
    mask[1, 1, 1:3] = True  # 2 voxels
    mask[5:8, 5:8, 5:8] = True  # 27 voxels
    spacing = (2.0, 1.0, 0.5)  # 1 mm^3 per voxel
    kept = remove_small_components(mask, spacing, min_component_mm3=5.0)
    assert kept.sum() == 27 and not kept[1, 1, 1]
    assert remove_small_components(mask, spacing, 0.0).sum() == 29
    assert remove_small_components(mask, spacing, 2.0).sum() == 29  # exactly 2 mm^3 is kept
    with pytest.raises(ValueError, match=">= 0"):
        remove_small_components(mask, spacing, -1)


def test_class_map_labels_and_overlap_goes_to_the_higher_probability():
    shape = (1, 1, 4)
    probabilities = {
        "artery": np.array([0.9, 0.6, 0.2, 0.1], np.float32).reshape(shape),
        "vein": np.array([0.1, 0.8, 0.3, 0.1], np.float32).reshape(shape),
        "micro": np.array([0.0, 0.0, 0.45, 0.1], np.float32).reshape(shape),
    }
    class_map = build_class_map(probabilities, spacing_zyx=(1, 1, 1), thresholds={"micro": 0.4})
    np.testing.assert_array_equal(class_map.ravel(), [1, 2, 3, 0])
    assert class_map.dtype == np.uint8
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        build_class_map(probabilities, spacing_zyx=(1, 1, 1), thresholds={"vein": 1.5})
