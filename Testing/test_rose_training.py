"""ROSE training: paired low/high-resolution patches, the loss of eq. (5), configuration and export."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.config import parse_config
from trainer.datasets import clear_case_cache, load_source_list
from trainer.super_resolution import PairedPatchSampler, ROSELoss, make_paired_case
from VesselSegLib.models.rose import ROSEOutput
from VesselSegLib.preprocessing import normalize_intensity
from VesselSegLib.preprocessing.low_resolution import block_mean

REPO = Path(__file__).resolve().parents[1]
ROSE_TOF = REPO / "trainer" / "configs" / "rose_tof.toml"
TINY_ROSE = {"in_channels": 1, "base_channels": 2, "levels": 3, "sr_channels": 4, "residual_blocks": 1}


def _document(tmp_path: Path, **super_resolution) -> dict:
    document = tomllib.loads(ROSE_TOF.read_text())
    document["model"]["arguments"] = dict(TINY_ROSE)
    for key in ("training", "validation"):
        source = document["data"][key][0]
        source.update(count=1 if key == "validation" else 2, shape_zyx=[18, 40, 44])
    document["training"].update(epochs=2, patches_per_epoch=4, batch_size=2, patch_size_zyx=[8, 16, 16])
    document["training"]["super_resolution"].update(super_resolution)
    document["output"] = {"run_dir": str(tmp_path / "run")}
    return document


def _pairs(config):
    clear_case_cache()
    cases, probabilities = load_source_list(config.data.training, config.data.vessel_classes)
    spec = config.training.super_resolution
    return [make_paired_case(c, spec) for c in cases], probabilities


def test_the_lr_patch_is_the_block_mean_of_its_hr_patch_through_every_flip(tmp_path):
    # Without k-space truncation the LR volume is the preset-normalised 2x2x2 block mean of the HR one.
    from trainer.super_resolution import PairedCase

    config = parse_config(_document(tmp_path, truncation_zyx=[1, 1, 1]))
    pairs, probabilities = _pairs(config)
    for pair in pairs:
        assert pair.high.image.shape == tuple(2 * n for n in pair.low_image.shape) == (18, 40, 44)
        expected = normalize_intensity(block_mean(pair.high.image, 2), "TOF-MRA")  # as inference normalises
        np.testing.assert_allclose(pair.low_image, expected, atol=1e-5)
    # With the LR volume set to the plain block mean, every sampled pair must satisfy it exactly: this pins
    # the start alignment, the flips and the transpose together.
    plain = [PairedCase(p.high, block_mean(p.high.image, 2).astype(np.float32)) for p in pairs]
    sampler = PairedPatchSampler(plain, (8, 16, 16), 2, case_probabilities=probabilities)
    low, targets = sampler.batch(np.random.default_rng(1), 24)
    assert low.shape == (24, 1, 4, 8, 8) and targets.shape == (24, 2, 8, 16, 16)
    for k in range(24):
        np.testing.assert_allclose(low[k, 0], block_mean(targets[k, -1], 2), atol=1e-5)
    assert set(np.unique(targets[:, 0])) <= {0.0, 1.0} and targets[:, 0].any()


def test_k_space_truncation_blurs_the_lr_input_but_not_the_hr_target(tmp_path):
    config = parse_config(_document(tmp_path))
    assert config.training.super_resolution.truncation_zyx == (1.0, 3.0, 3.0)
    pairs, _ = _pairs(config)
    pair = pairs[0]
    plain = normalize_intensity(block_mean(pair.high.image, 2), "TOF-MRA")  # as the trainer re-normalises
    assert not np.allclose(pair.low_image, plain, atol=1e-3)  # band-limited in Y and X
    # Along Z nothing was truncated: the per-slice means follow those of the plain block mean.
    assert np.corrcoef(pair.low_image.mean(axis=(1, 2)), plain.mean(axis=(1, 2)))[0, 1] > 0.99


def test_rose_loss_is_dice_plus_lambda_l1():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 4, 8, 8)
    sr_image = torch.rand(2, 1, 4, 8, 8)
    labels = (torch.rand(2, 1, 4, 8, 8) > 0.7).float()
    high = torch.rand(2, 1, 4, 8, 8)
    targets = torch.cat([labels, high], dim=1)
    probabilities = torch.sigmoid(logits)
    dice = 1 - (2 * (probabilities * labels).sum() + 1) / (probabilities.sum() + labels.sum() + 1)
    expected = dice + 0.1 * (sr_image - high).abs().mean()
    torch.testing.assert_close(ROSELoss(0.1)(ROSEOutput(logits, sr_image), targets), expected)
    torch.testing.assert_close(ROSELoss(0.0)(ROSEOutput(logits, sr_image), targets), dice)
    torch.testing.assert_close(ROSELoss(0.1)(ROSEOutput(logits, None), targets), dice)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"truncation_zyx": [0.5, 3, 3]}, "must be >= 1"),
        ({"kept_fraction": "half"}, "kept_fraction"),
        ({"lambda": 0.1}, "lambda"),
    ],
)
def test_bad_super_resolution_tables_are_refused(tmp_path, table, message):
    with pytest.raises(ValueError, match=message):
        parse_config(_document(tmp_path, **table))


def test_the_hr_patch_must_be_a_multiple_of_the_factor(tmp_path):
    config = parse_config(_document(tmp_path))
    pairs, _ = _pairs(config)
    with pytest.raises(ValueError, match="multiple of the super-resolution factor 2"):
        PairedPatchSampler(pairs, (7, 16, 16), 2)


def test_super_resolution_training_needs_a_2x_network(tmp_path):
    from trainer.loop import run_training

    document = _document(tmp_path)
    document["model"] = {
        "architecture": "UNet3D",
        "arguments": {"in_channels": 1, "base_channels": 2, "levels": 2},
    }
    with pytest.raises(ValueError, match="whose output is 2x its input"):
        run_training(parse_config(document), command=["test"])


def test_a_tiny_rose_run_trains_validates_on_the_2x_grid_and_exports_a_2x_entry(tmp_path):
    import json

    from trainer.export import export_run
    from trainer.loop import RUN_RECORD, run_training
    from VesselSegLib.inference.pipeline import segment_image
    from VesselSegLib.models.registry import ModelRegistry
    from VesselSegLib.phantoms import make_phantom_case

    config = parse_config(_document(tmp_path))
    clear_case_cache()
    summary = run_training(config, command=["test"])
    assert summary.epochs_completed == 2
    assert np.isfinite(summary.history[-1]["val_loss"])  # validated through the 2x sliding window
    record = json.loads((tmp_path / "run" / RUN_RECORD).read_text())
    entry = export_run(
        tmp_path / "run", name="rose-test", out_dir=tmp_path / "models", modalities=["TOF-MRA"]
    )
    assert entry["implementation"] == "VesselSegLib.methods.super_resolution:SuperResolutionNetwork"
    assert entry["patch_size_zyx"] == [4, 8, 8]  # the LR window under the 8 x 16 x 16 HR patch
    np.testing.assert_allclose(entry["spacing_mm_zyx"], 2 * np.asarray(record["training_spacing_zyx"]))
    (tmp_path / "models" / "models.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    registry = ModelRegistry.from_file(tmp_path / "models" / "models.json")
    phantom = make_phantom_case("TOF-MRA", (16, 24, 28), spacing_zyx=(1.6, 1.0, 1.0), seed=3)
    result = segment_image(
        phantom.image, phantom.spacing_zyx, method="rose-test", device="cpu", registry=registry
    )
    assert result.class_map.shape == (32, 48, 56) and result.images["super_resolved"].shape == (32, 48, 56)


def test_swi_lr_inputs_are_normalised_as_the_pipeline_normalises_a_dark_vein_lr_scan(tmp_path):
    # The pipeline gets an SWI scan in its own contrast (dark veins) with its LR brain mask, inverts it and
    # stretches the preset's percentiles inside the mask; training must show the network the same values.
    document = tomllib.loads((REPO / "trainer" / "configs" / "rose_swi.toml").read_text())
    document["model"]["arguments"] = dict(TINY_ROSE)
    for key in ("training", "validation"):
        document["data"][key][0].update(count=1, shape_zyx=[18, 40, 44])
    document["training"].update(epochs=1, patches_per_epoch=2, batch_size=2, patch_size_zyx=[8, 16, 16])
    document["training"]["super_resolution"].update(truncation_zyx=[1, 1, 1])
    document["output"] = {"run_dir": str(tmp_path / "run")}
    config = parse_config(document)
    (pair,), _ = _pairs(config)
    brain = pair.high.image != 0
    assert 0.2 < brain.mean() < 0.95  # the phantom's head does not fill the box: the mask matters
    low_brain = block_mean(brain.astype(np.float32), 2) >= 0.5
    scanner_lr = 1.0 - block_mean(pair.high.image, 2)  # dark veins, as a scanner gives them
    expected = normalize_intensity(scanner_lr, "SWI", low_brain)
    np.testing.assert_allclose(pair.low_image, expected, atol=1e-5)
    assert np.all(pair.low_image[~low_brain] == 0)
    # Bright veins inside the brain, as the network expects (the mean vein voxel brighter than the brain).
    veins = block_mean(pair.high.target[0].astype(np.float32), 2) >= 0.5
    assert pair.low_image[veins & low_brain].mean() > pair.low_image[low_brain].mean() + 0.1
