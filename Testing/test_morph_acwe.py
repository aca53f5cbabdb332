"""Tests of the Morph-ACWE baseline (morphological active contours without edges) and its registry method."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from VesselSegLib.baselines import morph_acwe
from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.methods import BUILTIN_KINDS, method_class
from VesselSegLib.methods.active_contour import DEFAULT_SETTINGS, ActiveContour
from VesselSegLib.metrics import dice
from VesselSegLib.models.registry import METHOD_KINDS, ModelRegistry
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.request import SegmentationRequest
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

SHAPE = (16, 48, 48)
ITERATIONS = 30
SMOOTHING = 1  # the shipped entry's; smoothing 3 erodes a tube this thin (see the entry's note)


def _tube(radius: float = 4.5) -> np.ndarray:
    """A straight tube along X through the middle of SHAPE."""
    z, y, _ = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    return (z - SHAPE[0] // 2) ** 2 + (y - SHAPE[1] // 2) ** 2 <= radius**2


def _noisy(bright: np.ndarray, seed: int = 0) -> np.ndarray:
    """0.7 on ``bright``, 0.1 elsewhere, plus Gaussian noise of sd 0.1: about the preset's [0, 1] range."""
    rng = np.random.default_rng(seed)
    return (0.1 + 0.6 * bright + rng.normal(0.0, 0.1, bright.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def tube() -> np.ndarray:
    return _tube()


@pytest.fixture(scope="module")
def tube_result(tube):
    return morph_acwe(_noisy(tube), iterations=ITERATIONS, smoothing=SMOOTHING)


def test_bright_tube_is_segmented(tube, tube_result):
    mask, score = tube_result
    assert mask.dtype == bool and mask.shape == SHAPE
    assert dice(mask, tube) > 0.7


def test_score_is_in_unit_range_and_higher_inside_the_tube(tube, tube_result):
    mask, score = tube_result
    assert score.dtype == np.float32 and score.shape == SHAPE
    assert score.min() >= 0.0 and score.max() <= 1.0
    assert score[tube].mean() > score[~tube].mean() + 0.5
    # The score is the fraction of the last level sets inside: where the final contour is, it is high.
    assert score[mask].mean() > 0.8 and score[~mask].mean() < 0.2


def test_the_inside_is_the_bright_region_whichever_phase_the_contour_starts_on(caplog):
    # The bright region is the larger one here (a dark tube in a bright volume): the mask must still be the
    # bright region, also when the initial level set is drawn on the dark tube (scikit-image keeps it as
    # its u = 1 phase, so the level set has to be flipped).
    dark_tube = _tube()
    image = _noisy(~dark_tube, seed=1)
    for init in ("checkerboard", dark_tube.astype(np.int8), (~dark_tube).astype(np.int8)):
        with caplog.at_level(logging.INFO, logger="VesselSegLib.baselines.morph_acwe"):
            caplog.clear()
            mask, score = morph_acwe(image, iterations=ITERATIONS, smoothing=SMOOTHING, init=init)
        assert dice(mask, ~dark_tube) > 0.95
        assert image[mask].mean() > image[~mask].mean()
        assert score[~dark_tube].mean() > score[dark_tube].mean() + 0.5
        if not isinstance(init, str) and init[dark_tube].all():
            assert "flipped" in caplog.text  # the case the flip exists for was exercised


def test_smaller_bright_region_started_on_the_dark_side_is_still_the_mask(tube):
    image = _noisy(tube, seed=2)
    mask, _ = morph_acwe(image, iterations=ITERATIONS, smoothing=SMOOTHING, init=(~tube).astype(np.int8))
    assert dice(mask, tube) > 0.7


def test_downsampled_grid_keeps_the_shape_and_the_tube(tube):
    mask, score = morph_acwe(_noisy(tube), iterations=ITERATIONS, smoothing=SMOOTHING, downsample_yx=2)
    assert mask.shape == SHAPE and score.shape == SHAPE
    assert score.min() >= 0.0 and score.max() <= 1.0
    assert dice(mask, tube) > 0.7


def test_progress_is_monotone_from_zero_to_one(tube):
    fractions = []
    morph_acwe(_noisy(tube), iterations=6, smoothing=SMOOTHING, progress=lambda f, m: fractions.append(f))
    assert len(fractions) == 7  # the initial level set, then each iteration
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert all(a <= b for a, b in zip(fractions[:-1], fractions[1:], strict=True))


def test_cancel_raises_and_stops_the_evolution(tube):
    with pytest.raises(SegmentationCancelled):
        morph_acwe(_noisy(tube), iterations=5, cancel=lambda: True)
    polls = []

    def cancel_on_third_poll() -> bool:
        polls.append(1)
        return len(polls) >= 3

    fractions = []
    with pytest.raises(SegmentationCancelled):
        morph_acwe(
            _noisy(tube),
            iterations=50,
            smoothing=SMOOTHING,
            progress=lambda f, m: fractions.append(f),
            cancel=cancel_on_third_poll,
        )
    assert len(polls) == 3 and max(fractions) < 0.1  # stopped after two iterations, not at the end


def test_constant_image_gives_an_empty_mask():
    mask, score = morph_acwe(np.full(SHAPE, 0.3, np.float32), iterations=5, smoothing=SMOOTHING)
    assert not mask.any() and not score.any()  # no region differs from another


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iterations": 0}, "iterations must be a whole number >= 1"),
        ({"iterations": 2.5}, "iterations must be a whole number"),
        ({"iterations": 3, "smoothing": -1}, "smoothing must be"),
        ({"iterations": 3, "lambda2": 0.0}, "lambda2 must be a positive"),
        ({"iterations": 3, "init": "spiral"}, "init must be one of"),
        ({"iterations": 3, "init": np.zeros((4, 4, 4))}, "shape of the grid"),
        ({"iterations": 3, "downsample_yx": 0}, "downsample_yx must be"),
        ({"iterations": 3, "average_last": 0}, "average_last must be"),
    ],
)
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        morph_acwe(np.zeros(SHAPE, np.float32), **kwargs)


def test_bad_images_are_refused():
    with pytest.raises(ValueError, match="3D"):
        morph_acwe(np.zeros((8, 8), np.float32), iterations=1)
    image = np.zeros(SHAPE, np.float32)
    image[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        morph_acwe(image, iterations=1)


# ------------------------------------------------------------------------------------------ registry method


def test_registry_lists_morph_acwe_for_2pm_only():
    assert "active-contour" in METHOD_KINDS and "active-contour" in BUILTIN_KINDS
    registry = ModelRegistry.default()
    entry = registry.get("morph-acwe")
    assert (entry.kind, entry.modalities, entry.weights) == ("active-contour", ("2PM",), None)
    assert entry.display_name == "Morph-ACWE (classical, scikit-image)"
    assert entry.produced_classes is None  # a filter: it marks the preset's main class
    assert method_class(entry) is ActiveContour
    assert set(entry.settings) - {"note"} <= set(DEFAULT_SETTINGS)
    assert "morph-acwe" in [e.name for e in registry.entries("2PM")]
    assert "morph-acwe" not in [e.name for e in registry.entries("TOF-MRA")]
    names = registry.names
    assert names.index("morph-acwe") == names.index("frangi") + 1
    with pytest.raises(ValueError, match="not a network"):
        entry.load_network()
    with pytest.raises(ValueError, match="not made for TOF-MRA"):
        SegmentationRequest(modality="TOF-MRA", method="morph-acwe").resolve()
    plan = SegmentationRequest(modality="2PM", method="morph-acwe").resolve()
    assert plan.vessel_classes == ("micro",) and isinstance(plan.method, ActiveContour)
    assert plan.method.training_spacing_zyx("2PM") is None


def test_unknown_settings_are_refused(tmp_path):
    entry = {
        "name": "acwe",
        "kind": "active-contour",
        "modalities": ["2PM"],
        "vessel_classes": ["micro"],
        "settings": {"iteratons": 10},
    }
    (tmp_path / "models.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    registry = ModelRegistry.from_file(tmp_path / "models.json")
    with pytest.raises(ValueError, match="unknown settings \\['iteratons'\\]"):
        SegmentationRequest(modality="2PM", method="acwe").resolve(registry)


def _fast_registry(tmp_path, **settings) -> ModelRegistry:
    """The shipped entry with fewer iterations (the pipeline, not the default's length, is under test)."""
    entry = {
        "name": "morph-acwe",
        "kind": "active-contour",
        "modalities": ["2PM"],
        "vessel_classes": ["micro"],
        "settings": {**DEFAULT_SETTINGS, **settings},
    }
    (tmp_path / "models.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    return ModelRegistry.from_file(tmp_path / "models.json")


def test_segment_image_runs_morph_acwe_on_a_2pm_phantom():
    case = make_phantom_case("2PM", SHAPE, seed=0)
    progress = []
    result = segment_image(
        case.image,
        case.spacing_zyx,
        modality="2PM",
        method="morph-acwe",  # the shipped entry, as the benchmark runs it
        device="cpu",
        keep_probabilities=True,
        progress=lambda f, m: progress.append(f),
    )
    micro = VESSEL_CLASS_BY_NAME["micro"].label_value
    assert result.method == "morph-acwe" and result.vessel_classes == ("micro",)
    assert result.class_map.shape == SHAPE
    assert set(np.unique(result.class_map)) <= {0, micro}
    probabilities = result.probabilities["micro"]
    assert probabilities.shape == SHAPE and probabilities.min() >= 0.0 and probabilities.max() <= 1.0
    assert result.thresholds == {"micro": 0.5}
    assert all(a <= b for a, b in zip(progress[:-1], progress[1:], strict=True)) and progress[-1] == 1.0


def test_segment_image_segments_a_bright_tube_through_the_pipeline(tmp_path, tube):
    registry = _fast_registry(tmp_path, iterations=ITERATIONS)
    image = _noisy(tube) * 1000.0  # raw microscope counts: the 2PM preset normalises them
    result = segment_image(
        image,
        (0.005, 0.001, 0.001),
        modality="2PM",
        method="morph-acwe",
        registry=registry,
        device="cpu",
        keep_probabilities=True,
        min_component_mm3=0.0,
    )
    assert dice(result.class_map > 0, tube) > 0.7
    scores = result.probabilities["micro"]
    assert scores[tube].mean() > scores[~tube].mean() + 0.5
    # A threshold in the request cuts the score map instead of taking ACWE's own mask.
    cut = segment_image(
        image,
        (0.005, 0.001, 0.001),
        modality="2PM",
        method="morph-acwe",
        registry=registry,
        device="cpu",
        keep_probabilities=True,
        min_component_mm3=0.0,
        thresholds={"micro": 0.9},
    )
    assert cut.thresholds == {"micro": 0.9}
    np.testing.assert_array_equal(cut.class_map > 0, cut.probabilities["micro"] >= 0.9)


def test_segment_image_cancel_raises(tmp_path, tube):
    registry = _fast_registry(tmp_path, iterations=ITERATIONS)
    with pytest.raises(SegmentationCancelled):
        segment_image(
            _noisy(tube),
            (0.005, 0.001, 0.001),
            modality="2PM",
            method="morph-acwe",
            registry=registry,
            device="cpu",
            cancel=lambda: True,
        )
