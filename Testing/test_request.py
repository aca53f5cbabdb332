"""The segmentation request: every option checked once, with a message that states the rule."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from VesselSegLib.preprocessing.resampling import ResamplingPolicy
from VesselSegLib.request import MicroscopyOptions, SegmentationRequest, canonical_modality


@pytest.mark.parametrize(("given", "canonical"), [("tof-mra", "TOF-MRA"), (" swi ", "SWI"), ("2pm", "2PM")])
def test_modality_presets_match_case_insensitively(given, canonical):
    assert SegmentationRequest(modality=given).modality == canonical
    assert canonical_modality(given) == canonical


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"modality": "CT"}, "choose one of: TOF-MRA, SWI, 2PM"),
        ({"batch_size": 0}, "batch size must be a whole number >= 1"),
        ({"batch_size": -3}, "batch size must be a whole number >= 1"),
        ({"batch_size": 1.5}, "batch size"),
        ({"min_component_mm3": math.nan}, "minimum component volume must be a finite number"),
        ({"min_component_mm3": -1}, "must be >= 0"),
        ({"thresholds": {"artery": 1.5}}, "within [0, 1]"),
        ({"thresholds": {"artery": math.nan}}, "finite"),
        ({"thresholds": {"aorta": 0.5}}, "unknown class 'aorta'"),
        ({"overlap": 1.0}, "overlap must be in [0, 1)"),
        ({"patch_size_zyx": (7, 7)}, "3 positive whole numbers"),
        ({"patch_size_zyx": (0, 32, 32)}, "3 positive whole numbers"),
        ({"device": "gpu"}, "Unknown device 'gpu'"),
        ({"precision": "bf16"}, "Unknown precision"),
        ({"vessel_classes": ()}, "No vessel class selected"),
        ({"vessel_classes": ("capillary",)}, "Unknown vessel classes"),
        ({"companion_modalities": ("TOF-MRA",)}, "cannot have the input's own modality"),
        ({"adaptation_budget_s": -1}, "adaptation budget must be between 0 s"),
        ({"adaptation_budget_s": 601}, "adaptation budget must be between 0 s"),
    ],
)
def test_bad_fields_are_refused_with_the_rule(fields, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        SegmentationRequest(**fields)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"intensity_scale": "bright"}, "must be a number"),
        ({"intensity_scale": -2}, "positive factor"),
        ({"median_size": 1}, "median filter size must be a whole number >= 2"),
    ],
)
def test_bad_microscopy_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        MicroscopyOptions(**options)


def test_request_is_frozen_keyword_only_and_recorded_whole():
    request = SegmentationRequest(
        modality="2pm",
        thresholds={"Micro": "0.4"},
        patch_size_zyx=[16, 64, 64],
        microscopy=MicroscopyOptions(intensity_scale="AUTO", subtract_slice_median=True),
        resampling=ResamplingPolicy(enabled=False),
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.modality = "SWI"
    with pytest.raises(TypeError):
        SegmentationRequest("TOF-MRA")  # keyword-only
    assert request.thresholds == {"micro": 0.4} and request.patch_size_zyx == (16, 64, 64)
    assert request.microscopy.intensity_scale == "auto"
    record = json.loads(json.dumps(request.as_record()))
    assert record["modality"] == "2PM" and record["resampling"]["enabled"] is False
    assert record["microscopy"]["subtract_slice_median"] is True
    assert request.replace(batch_size=4).batch_size == 4
    with pytest.raises(ValueError, match="batch size"):
        request.replace(batch_size=0)


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {
            "modality": "2pm",
            "method": "vnet-2pm",
            "vessel_classes": ["micro"],
            "thresholds": {"micro": 0.3},
            "patch_size_zyx": [16, 64, 64],
            "overlap": 0.5,
            "batch_size": 3,
            "device": "cpu",
            "precision": "float32",
            "min_component_mm3": 0.0,
            "microscopy": MicroscopyOptions(intensity_scale=2.5, subtract_slice_median=True, median_size=3),
            "resampling": ResamplingPolicy(enabled=False, tolerance=0.1),
            "keep_probabilities": True,
            "create_models": False,
            "create_graph": True,
            "adaptation_budget_s": 12.0,
        },
        {
            "modality": "TOF-MRA",
            "companion_modalities": ["swi"],
            "microscopy": MicroscopyOptions(intensity_scale="auto"),
        },
    ],
)
def test_from_record_rebuilds_the_request_as_record_wrote(fields):
    request = SegmentationRequest(**fields)
    record = json.loads(json.dumps(request.as_record()))  # as a job file holds it
    rebuilt = SegmentationRequest.from_record(record)
    assert rebuilt == request
    assert isinstance(rebuilt.microscopy, MicroscopyOptions) and isinstance(
        rebuilt.resampling, ResamplingPolicy
    )
    for name in ("vessel_classes", "patch_size_zyx", "companion_modalities"):
        value = getattr(rebuilt, name)
        assert value is None or isinstance(value, tuple)
    assert rebuilt.as_record() == request.as_record()


def test_from_record_takes_defaults_and_refuses_unknown_or_bad_fields():
    assert SegmentationRequest.from_record({"modality": "swi"}) == SegmentationRequest(modality="SWI")
    with pytest.raises(ValueError, match="Unknown segmentation request fields \\['colour'\\]"):
        SegmentationRequest.from_record({"colour": "red"})
    with pytest.raises(ValueError, match="Unknown microscopy options"):
        SegmentationRequest.from_record({"microscopy": {"gamma": 2}})
    with pytest.raises(ValueError, match="batch size"):
        SegmentationRequest.from_record({"batch_size": 0})
    with pytest.raises(ValueError, match="mapping"):
        SegmentationRequest.from_record(["modality", "SWI"])


def test_resolve_checks_against_the_registry_and_decides_the_defaults():
    plan = SegmentationRequest(modality="tof-mra").resolve()
    assert plan.entry.name == "unet3d-baseline" and plan.vessel_classes == ("artery", "vein", "micro")
    assert plan.min_component_mm3 == 2.0  # the TOF-MRA preset's
    assert plan.patch_size_for(plan.entry) == tuple(plan.entry.patch_size_zyx)
    assert plan.thresholds_for(plan.entry) == plan.entry.thresholds
    plan = SegmentationRequest(method="frangi", vessel_classes=("artery", "vein")).resolve()
    assert plan.vessel_classes == ("artery",)  # Frangi marks the preset's main class
    with pytest.raises(ValueError, match="known methods are"):
        SegmentationRequest(method="no-such").resolve()
    with pytest.raises(ValueError, match="not made for 2PM"):
        SegmentationRequest(modality="2PM", method="vcnet").resolve()
    with pytest.raises(ValueError, match="choose another method or class"):
        SegmentationRequest(method="frangi", vessel_classes=("vein",)).resolve()
