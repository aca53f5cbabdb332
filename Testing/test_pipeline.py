"""``segment_image`` end to end: Frangi baseline and a network from a registry, on phantoms."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.metrics import dice
from VesselSegLib.models import ModelRegistry, UNet3D, save_checkpoint
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.request import MicroscopyOptions

NET_ARGS = {"in_channels": 1, "out_channels": 3, "base_channels": 2, "levels": 2}


@pytest.fixture(scope="module")
def tof_case():
    return make_phantom_case("TOF-MRA", (32, 64, 64), seed=11)


@pytest.fixture(scope="module")
def tiny_registry(tmp_path_factory):
    """A registry with the Frangi filter and an untrained 3-class U-Net (weights made here, SHA checked)."""
    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    sha = save_checkpoint(
        UNet3D(**NET_ARGS), folder / "tiny.safetensors", architecture="UNet3D", arguments=NET_ARGS
    )
    (folder / "models.json").write_text(
        json.dumps(
            {
                "models": [
                    {
                        "name": "frangi",
                        "kind": "vesselness",
                        "modalities": ["TOF-MRA", "SWI", "2PM"],
                        "vessel_classes": ["artery", "vein", "micro"],
                    },
                    {
                        "name": "tiny",
                        "kind": "network",
                        "architecture": "UNet3D",
                        "arguments": NET_ARGS,
                        "weights": "tiny.safetensors",
                        "sha256": sha,
                        "modalities": ["TOF-MRA"],
                        "default_for": ["TOF-MRA"],
                        "vessel_classes": ["artery", "vein", "micro"],
                        "patch_size_zyx": [16, 32, 32],
                        "overlap": 0.25,
                        "thresholds": {"artery": 0.5, "vein": 0.5, "micro": 0.5},
                    },
                ]
            }
        )
    )
    return ModelRegistry.from_file(folder / "models.json")


def test_frangi_segments_phantom_vessels_as_the_modality_primary_class(tof_case, tiny_registry):
    result = segment_image(
        tof_case.image,
        tof_case.spacing_zyx,
        modality="TOF-MRA",
        method="frangi",
        registry=tiny_registry,
        min_component_mm3=0,
        keep_probabilities=True,
    )
    assert result.class_map.shape == tof_case.image.shape and result.class_map.dtype == np.uint8
    assert result.vessel_classes == ("artery",)
    assert set(np.unique(result.class_map)) <= {0, 1}
    assert dice(result.class_map > 0, tof_case.class_map > 0) > 0.4
    assert result.probabilities["artery"].min() >= 0 and result.probabilities["artery"].max() <= 1


def test_network_method_gives_three_classes_and_keeps_input_untouched(tof_case, tiny_registry):
    image = (tof_case.image * 10).astype(np.int16)
    before = image.copy()
    fractions = []
    result = segment_image(
        image,
        tof_case.spacing_zyx,
        registry=tiny_registry,
        device="cpu",
        thresholds={"artery": 0.0, "vein": 0.0, "micro": 0.0},
        min_component_mm3=0,
        keep_probabilities=True,
        progress=lambda f, m: fractions.append(f),
    )
    np.testing.assert_array_equal(image, before)
    assert result.method == "tiny" and result.vessel_classes == ("artery", "vein", "micro")
    assert set(result.probabilities) == {"artery", "vein", "micro"}
    # With every threshold at 0 each voxel goes to its most probable class: all three appear somewhere
    # unless the untrained network is degenerate; at least the map is fully labelled.
    assert (result.class_map > 0).all()
    assert fractions[0] == 0.0 and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert result.volumes_mm3(tof_case.spacing_zyx)["artery"] == pytest.approx(
        (result.class_map == 1).sum() * np.prod(tof_case.spacing_zyx)
    )


def test_class_selection_and_probability_dropping(tof_case, tiny_registry):
    result = segment_image(
        tof_case.image,
        tof_case.spacing_zyx,
        registry=tiny_registry,
        vessel_classes=["vein"],
        keep_probabilities=False,
        device="cpu",
    )
    assert result.vessel_classes == ("vein",) and result.probabilities == {}
    assert set(np.unique(result.class_map)) <= {0, 2}


def test_volume_smaller_than_the_patch_is_padded(tiny_registry):
    image = np.random.default_rng(0).random((5, 9, 7)).astype(np.float32)
    result = segment_image(image, (1, 1, 1), registry=tiny_registry, device="cpu")
    assert result.class_map.shape == (5, 9, 7)


def test_brain_mask_limits_the_segmentation(tof_case, tiny_registry):
    mask = np.zeros(tof_case.image.shape, bool)
    mask[:, :32] = True
    result = segment_image(
        tof_case.image,
        tof_case.spacing_zyx,
        registry=tiny_registry,
        brain_mask=mask,
        thresholds={"artery": 0.0, "vein": 0.0, "micro": 0.0},
        min_component_mm3=0,
        device="cpu",
    )
    assert (result.class_map[~mask] == 0).all() and (result.class_map[mask] > 0).all()


def test_cancel_raises_and_returns_nothing(tof_case, tiny_registry):
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(SegmentationCancelled):
        segment_image(
            tof_case.image, tof_case.spacing_zyx, registry=tiny_registry, cancel=cancel, device="cpu"
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "vcnet"}, "known methods are: frangi, tiny"),
        ({"modality": "CT"}, "choose one of: TOF-MRA, SWI, 2PM"),
        ({"modality": "2PM", "method": "tiny"}, "not made for 2PM"),
        ({"vessel_classes": []}, "No vessel class selected"),
        ({"vessel_classes": ["capillary"]}, "Unknown vessel class"),
        ({"thresholds": {"aorta": 0.5}}, "unknown class"),
        ({"brain_mask": np.ones((2, 2, 2), bool)}, "not on the input volume's grid"),
        ({"patch_size_zyx": (15, 32, 32)}, "multiple of"),
        ({"batch_size": 0}, "batch size must be a whole number >= 1"),
    ],
)
def test_bad_requests_raise_clear_errors(tof_case, tiny_registry, kwargs, message):
    with pytest.raises(ValueError, match=message):
        segment_image(tof_case.image, tof_case.spacing_zyx, registry=tiny_registry, device="cpu", **kwargs)


@pytest.mark.parametrize("spacing", [(0, 1, 1), (1, 1), (1, float("nan"), 1)])
def test_bad_spacing_is_rejected(tof_case, tiny_registry, spacing):
    with pytest.raises(ValueError, match="spacing"):
        segment_image(tof_case.image, spacing, registry=tiny_registry)


def test_microscopy_preprocessing_is_applied_recorded_and_leaves_the_input_alone():
    case = make_phantom_case("2PM", (16, 48, 48), seed=3)
    image = case.image * 4
    before = image.copy()
    options = {"intensity_scale": 0.25, "subtract_slice_median": True, "median_size": 3}
    result = segment_image(
        image, case.spacing_zyx, modality="2PM", method="frangi", microscopy=MicroscopyOptions(**options)
    )
    np.testing.assert_array_equal(image, before)
    assert result.preprocessing["steps"] == ["scale_intensity", "subtract_slice_median", "median_filter_3d"]
    assert result.preprocessing["intensity_scale"] == 0.25
    # The presets' percentile normalisation matches a microscope's linear intensity scale automatically:
    # a stack 2.5x brighter gives the very same segmentation (the paper chose this factor by hand).
    brighter = segment_image(case.image * 2.5, case.spacing_zyx, modality="2PM", method="frangi")
    plain = segment_image(case.image, case.spacing_zyx, modality="2PM", method="frangi")
    np.testing.assert_array_equal(brighter.class_map, plain.class_map)
    with pytest.raises(ValueError, match="median filter size"):
        segment_image(image, case.spacing_zyx, modality="2PM", microscopy=MicroscopyOptions(median_size=1))
