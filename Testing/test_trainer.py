"""The headless trainer: configuration checks, patch sampling, a real tiny training run, resume, export,
the command line, and two-process data-parallel training through torchrun (gloo on the CPU)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file

from trainer.__main__ import main as trainer_main
from trainer.config import FileSource, load_config, parse_config
from trainer.datasets import PatchSampler, load_cases
from trainer.export import export_run
from trainer.loop import (
    BEST_WEIGHTS,
    CURVES_PNG,
    LAST_WEIGHTS,
    LOG_CSV,
    Trainer,
    optimizer_state_from_files,
    optimizer_state_to_files,
)
from VesselSegLib.models.checkpoint import card_path_for, load_checkpoint, sha256_of_file
from VesselSegLib.models.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "trainer" / "configs" / "tiny_test.toml"
DEFAULT = REPO / "trainer" / "configs" / "unet3d_default.toml"


def _tiny_raw() -> dict:
    return tomllib.loads(TINY.read_text())


def _read_log(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / LOG_CSV).open(newline="") as stream:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(stream)]


# ------------------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("training", "bach_size", 4, "training.bach_size"),
        ("training", "loss", "l2", "training.loss"),
        ("training", "batch_size", 0, "training.batch_size"),
        ("training", "learning_rate", -1.0, "training.learning_rate"),
        ("training", "patch_size_zyx", [16, 32], "training.patch_size_zyx"),
        ("model", "architecture", "ResNet", "model.architecture"),
        ("output", "folder", "x", "output.folder"),
    ],
)
def test_config_error_names_the_bad_key(section, key, value, named):
    raw = _tiny_raw()
    raw[section][key] = value
    with pytest.raises(ValueError, match=named.replace(".", r"\.")):
        parse_config(raw)


def test_config_source_errors_name_the_source():
    raw = _tiny_raw()
    raw["data"]["training"][0]["modality"] = "CT"
    with pytest.raises(ValueError, match=r"data\.training\[0\]\.modality"):
        parse_config(raw)
    raw = _tiny_raw()
    raw["data"]["vessel_classes"] = ["micro"]  # phantom arteries/veins now need a class_remap
    with pytest.raises(ValueError, match=r"data\.training\[0\]\.class_remap"):
        parse_config(raw)
    raw = _tiny_raw()
    raw["data"]["validation"] = [
        {
            "kind": "files",
            "modality": "2PM",
            "root": "/nonexistent/vesselnn",
            "images": "images/*.tif",
            "labels": "labels",
            "binary_class": "micro",
        }
    ]
    with pytest.raises(ValueError, match="--data-root"):
        parse_config(raw)


def test_tiny_config_reads_with_paper_defaults():
    config = load_config(TINY)
    assert config.model.arguments["out_channels"] == 3
    assert config.data.vessel_classes == ("artery", "vein", "micro")
    assert config.training.batch_size == 4 and config.training.lr_decay_factor == 0.5
    assert config.training.lr_patience == 10


def _files_source(root: Path, **extra) -> dict:
    """A ``files`` training source of the 2PM stacks :func:`_write_stack_pair` wrote under ``root``."""
    source = {"kind": "files", "modality": "2PM", "root": str(root), "images": "images/*.tif"}
    return {**source, "labels": "labels", "binary_class": "micro", **extra}


def _write_stack_pair(root: Path, name: str, shape=(6, 40, 48), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[:, 18:22, 10:40] = 255  # a vessel running along X
    image = (rng.normal(40, 5, shape) + labels * 0.6).clip(0, 255).astype(np.uint8)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(root / "images" / f"{name}.tif", image)
    tifffile.imwrite(root / "labels" / f"{name}.tif", labels)
    return labels


def test_file_source_root_from_environment_and_data_root_flag(tmp_path, monkeypatch):
    labels = _write_stack_pair(tmp_path / "env_data", "a")
    _write_stack_pair(tmp_path / "env_data", "held_out", seed=1)
    _write_stack_pair(tmp_path / "flag_data", "b")
    raw = _tiny_raw()
    raw["data"]["training"].append(
        {
            "kind": "files",
            "modality": "2PM",
            "root": "${VESSELSEG_TEST_DATA:-/nonexistent}",
            "images": "images/*.tif",
            "labels": "labels",
            "exclude": ["held_out"],
            "binary_class": "micro",
        }
    )
    monkeypatch.setenv("VESSELSEG_TEST_DATA", str(tmp_path / "env_data"))
    source = parse_config(raw).data.training[1]
    assert isinstance(source, FileSource)
    assert [p.name for p in source.images] == ["a.tif"]  # held_out excluded
    flagged = parse_config(raw, data_root=tmp_path / "flag_data").data.training[1]
    assert [p.name for p in flagged.images] == ["b.tif"]
    # Binary labels fill only the "micro" channel; artery and vein stay empty.
    (case,) = load_cases(source, ("artery", "vein", "micro"))
    assert case.target.shape == (3, *labels.shape)
    assert not case.target[:2].any()
    np.testing.assert_array_equal(case.target[2], labels > 0)
    assert case.image.dtype == np.float32 and case.image.max() <= 1.5


def test_training_spacing_resamples_cases_as_inference_would_and_stacks_without_metadata_get_the_assumed_one(
    tmp_path,
):
    _write_stack_pair(tmp_path, "coarse", shape=(6, 40, 48))  # no side-car metadata: the assumed spacing
    raw = _tiny_raw()
    raw["data"]["training_spacing_mm_zyx"] = [0.005, 0.001, 0.001]
    # 2 um in-plane: twice the training spacing
    raw["data"]["training"] = [
        _files_source(tmp_path, metadata="metadata", assumed_spacing_xyz=[0.002, 0.002, 0.005])
    ]
    config = parse_config(raw)
    assert config.data.training_spacing_zyx == (0.005, 0.001, 0.001)
    source = config.data.training[0]
    assert source.spacing_for(0) == (0.002, 0.002, 0.005)
    (native,) = load_cases(source, config.data.vessel_classes)
    assert native.spacing_zyx == (0.005, 0.002, 0.002) and native.image.shape == (6, 40, 48)
    (case,) = load_cases(source, config.data.vessel_classes, spacing_zyx=config.data.training_spacing_zyx)
    # Y and X are 100 % off and are resampled to 1 um (twice the voxels); Z is the training spacing already.
    assert case.spacing_zyx == (0.005, 0.001, 0.001) and case.image.shape == (6, 80, 96)
    assert case.target.shape == (3, 6, 80, 96) and set(np.unique(case.target)) == {0, 1}
    # The vessel keeps its physical place and size: rows 18-21 at 2 um are rows 36-43 at 1 um.
    rows = np.flatnonzero(case.target[2].any(axis=(0, 2)))
    assert (rows.min(), rows.max()) == (36, 43)
    assert case.vessel_voxels.size == int(case.target[2].sum()) == 4 * native.vessel_voxels.size
    # A case already within the tolerance is left as it is; a bad spacing in the table is refused.
    (same,) = load_cases(source, config.data.vessel_classes, spacing_zyx=(0.005, 0.0018, 0.0018))
    assert same.image.shape == (6, 40, 48)
    raw["data"]["training_spacing_mm_zyx"] = [0.005, 0.001]
    with pytest.raises(ValueError, match="data.training_spacing_mm_zyx"):
        parse_config(raw)


def test_cosine_schedule_falls_from_the_learning_rate_to_one_percent_at_the_last_epoch():
    import math

    raw = _tiny_raw()
    raw["training"].update(epochs=5, learning_rate=1e-3, lr_schedule="cosine")
    trainer = Trainer(parse_config(raw))
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = trainer.build_scheduler(optimizer)
    rates = []
    for _ in range(5):  # the LR each epoch trains with; the loop steps the schedule after every epoch
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(5)]
    np.testing.assert_allclose(rates, expected, rtol=1e-6)
    assert rates[-1] == pytest.approx(1e-5)
    raw["training"]["lr_schedule"] = "plateau"
    assert isinstance(
        Trainer(parse_config(raw)).build_scheduler(optimizer), torch.optim.lr_scheduler.ReduceLROnPlateau
    )
    raw["training"]["lr_schedule"] = "linear"
    with pytest.raises(ValueError, match="training.lr_schedule"):
        parse_config(raw)


def test_last_epoch_selection_ships_the_last_epoch_whatever_the_validation_says(tmp_path):
    raw = _tiny_raw()
    raw["training"].update(epochs=3, patches_per_epoch=8, model_selection="last", early_stop_patience=1)
    raw["training"]["cldice_every"] = 0
    config = parse_config(raw).with_overrides(run_dir=tmp_path / "run")
    summary = Trainer(config).fit()
    # early_stop_patience = 1 would stop after any epoch that does not improve: "last" never stops early.
    assert summary.epochs_completed == 3 and not summary.stopped_early
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["best_epoch"] == 3
    best_card = json.loads(card_path_for(tmp_path / "run" / BEST_WEIGHTS).read_text())
    assert best_card["epoch"] == 3
    best, last = load_file(tmp_path / "run" / BEST_WEIGHTS), load_file(tmp_path / "run" / LAST_WEIGHTS)
    assert all(torch.equal(best[k], last[k]) for k in last)
    raw["training"]["model_selection"] = "first"
    with pytest.raises(ValueError, match="training.model_selection"):
        parse_config(raw)


# ------------------------------------------------------------------------------------------ patch sampling


def test_patch_sampler_pads_thin_volumes_and_is_deterministic(tmp_path):
    _write_stack_pair(tmp_path, "thin", shape=(6, 40, 48))
    raw = _tiny_raw()
    raw["data"]["training"] = [_files_source(tmp_path)]
    config = parse_config(raw)
    cases = load_cases(config.data.training[0], config.data.vessel_classes)
    sampler = PatchSampler(cases, (16, 32, 32), foreground_fraction=1.0)
    images, targets = sampler.batch(np.random.default_rng(3), 8)
    assert images.shape == (8, 1, 16, 32, 32) and targets.shape == (8, 3, 16, 32, 32)
    # Only 6 of 16 slices hold data: the other 10 are zero padding (before the intensity shift).
    slices_with_vessel = targets[:, 2].any(axis=(2, 3)).sum(axis=1)
    assert np.all(slices_with_vessel == 6)
    assert np.all(targets[:, 2].any(axis=(1, 2, 3)))  # foreground_fraction=1: every patch holds vessel
    again, _ = sampler.batch(np.random.default_rng(3), 8)
    np.testing.assert_array_equal(images, again)
    other, _ = sampler.batch(np.random.default_rng(4), 8)
    assert not np.array_equal(images, other)


def test_optimizer_state_round_trips_without_pickle():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    tensors, meta = optimizer_state_to_files(optimizer.state_dict())
    meta = json.loads(json.dumps(meta))
    restored = optimizer_state_from_files(tensors, meta)
    fresh = torch.optim.Adam(torch.nn.Linear(3, 2).parameters(), lr=1.0)
    fresh.load_state_dict(restored)
    assert fresh.param_groups[0]["lr"] == 1e-3
    torch.testing.assert_close(
        fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )


# ------------------------------------------------------------------------------------------ real training


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Three epochs of the tiny configuration (fixed seed), as `python -m trainer train` runs them."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    config = load_config(TINY).with_overrides(run_dir=run_dir)
    summary = Trainer(config, command=["python", "-m", "trainer", "train", str(TINY)]).fit()
    assert summary.epochs_completed == 3 and not summary.interrupted
    return run_dir


@pytest.mark.slow
def test_tiny_run_learns_and_writes_logs(tiny_run):
    rows = _read_log(tiny_run)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_mean_dice"] > rows[0]["val_mean_dice"] + 0.05
    assert all(0 <= row["val_vessel_cldice"] <= 1 for row in rows)
    assert (tiny_run / CURVES_PNG).stat().st_size > 10_000
    assert (tiny_run / CURVES_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in (BEST_WEIGHTS, LAST_WEIGHTS, "last_optimizer.safetensors", "last_state.json", "run.json"):
        assert (tiny_run / name).is_file(), name
    best_card = json.loads(card_path_for(tiny_run / BEST_WEIGHTS).read_text())
    best_row = max(rows, key=lambda row: row["val_mean_dice"])
    assert best_card["epoch"] == best_row["epoch"]


@pytest.mark.slow
def test_resume_continues_exactly(tiny_run, tmp_path):
    run_dir = tmp_path / "resumed"
    config = load_config(TINY).with_overrides(run_dir=run_dir)
    Trainer(config.with_overrides(epochs=2)).fit()
    with pytest.raises(ValueError, match="--resume"):  # never overwrite a run silently
        Trainer(config).fit()
    summary = Trainer(config, resume=True).fit()
    assert [row["epoch"] for row in summary.history] == [1, 2, 3]
    full, resumed = _read_log(tiny_run), _read_log(run_dir)
    for key in ("train_loss", "val_loss", "val_mean_dice", "lr"):
        assert resumed[2][key] == pytest.approx(full[2][key], rel=1e-4, abs=1e-6), key
    weights_full, weights_resumed = load_file(tiny_run / LAST_WEIGHTS), load_file(run_dir / LAST_WEIGHTS)
    for name, tensor in weights_full.items():
        torch.testing.assert_close(weights_resumed[name], tensor, rtol=1e-4, atol=1e-6)
    record = json.loads((run_dir / "run.json").read_text())
    assert len(record["resumed_with"]) == 1


def test_resume_without_a_run_is_a_one_line_error(tmp_path, capsys):
    code = trainer_main(["train", str(TINY), "--run-dir", str(tmp_path / "empty"), "--resume", "--quiet"])
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("error: Nothing to resume") and "\n" not in error


def test_cli_seed_overrides_the_configuration(tmp_path, capsys):
    run_dir = tmp_path / "seeded"
    code = trainer_main(
        ["train", str(TINY), "--run-dir", str(run_dir), "--seed", "7", "--epochs", "1", "--quiet"]
    )
    assert code == 0
    record = json.loads((run_dir / "run.json").read_text())
    assert record["config"]["training"]["seed"] == 7  # what the card and a rerun read
    assert (
        trainer_main(["train", str(TINY), "--run-dir", str(tmp_path / "x"), "--seed", "-1", "--quiet"]) == 2
    )
    assert "--seed must be >= 0" in capsys.readouterr().err


def test_cli_bad_config_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY.read_text().replace("batch_size = 4", "batch_size = 4\nbatchsize = 4"))
    assert trainer_main(["train", str(bad), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "training.batchsize" in error and "\n" not in error
    assert trainer_main(["train", str(tmp_path / "missing.toml"), "--quiet"]) == 2


@pytest.mark.slow
def test_export_writes_weights_card_and_registry_entry(tiny_run, tmp_path, capsys):
    out = tmp_path / "Models"
    assert trainer_main(["export", str(tiny_run), "--name", "unet3d-tiny", "--out", str(out)]) == 0
    entry = json.loads(capsys.readouterr().out)
    weights, card_path = out / "unet3d-tiny.safetensors", out / "unet3d-tiny.card.json"
    assert weights.is_file() and card_path.is_file()
    card = json.loads(card_path.read_text())
    assert card["sha256"] == sha256_of_file(weights) == entry["sha256"]
    assert card["architecture"] == entry["architecture"] == "UNet3D"
    assert card["vessel_classes"] == ["artery", "vein", "micro"]
    assert card["epochs_completed"] == 3 and card["best_validation"]["mean_dice"] > 0
    assert "trainer train" in card["command"] and card["machine"]["torch"] == torch.__version__
    assert card["training_data"] and card["config"]["training"]["loss"] == "dice"
    # The card carries the configuration's header.
    assert card["recipe_notes"].startswith("A seconds-long run on tiny TOF-MRA phantoms")
    for field in (
        "name",
        "display_name",
        "kind",
        "arguments",
        "weights",
        "modalities",
        "spacing_mm_zyx",
        "patch_size_zyx",
        "overlap",
        "thresholds",
        "card",
    ):
        assert field in entry, field
    # The exported weights equal the run's best ones and load through the registry's checked path.
    network = load_checkpoint(weights, expected_sha256=entry["sha256"])
    best = load_file(tiny_run / BEST_WEIGHTS)
    for name, tensor in network.state_dict().items():
        torch.testing.assert_close(tensor, best[name])
    (out / "models.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    loaded = ModelRegistry.from_file(out / "models.json").get("unet3d-tiny").load_network()
    with torch.no_grad():
        assert loaded(torch.zeros(1, 1, 16, 32, 32)).shape == (1, 3, 16, 32, 32)
    with pytest.raises(ValueError, match="letters, digits"):
        export_run(tiny_run, name="bad name", out_dir=out)


# ------------------------------------------------------------------------------------------ distributed


@pytest.mark.slow
def test_two_process_gloo_training_through_torchrun(tmp_path):
    run_dir = tmp_path / "ddp"
    environment = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "trainer",
        "train",
        str(TINY),
        "--run-dir",
        str(run_dir),
        "--epochs",
        "2",
    ]
    result = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _read_log(run_dir)
    assert [row["epoch"] for row in rows] == [1, 2]  # one log, written by rank 0 only
    record = json.loads((run_dir / "run.json").read_text())
    assert record["world_size"] == 2
    # Both ranks trained: each drew its share of the patches (ceil(160 / (4 x 2)) = 20 steps x 4 x 2 epochs).
    assert record["patches_per_rank_this_session"] == [160, 160]
    assert record["command"].startswith("torchrun --nproc_per_node=2")
    assert not list(run_dir.glob("*.tmp"))
    load_checkpoint(run_dir / BEST_WEIGHTS)


def test_default_config_is_valid_and_holds_out_the_validation_stack():
    data_root = Path(os.environ.get("VESSELSEG_VESSELNN", REPO.parent / "shared" / "data" / "vesselnn"))
    if not (data_root / "images").is_dir():
        pytest.skip("VesselNN data not available; set VESSELSEG_VESSELNN")
    config = load_config(DEFAULT, data_root=data_root)
    files = [s for s in config.data.training if isinstance(s, FileSource)]
    held_out = [s for s in config.data.validation if isinstance(s, FileSource)]
    assert files and held_out
    train_names = {p.stem for s in files for p in s.images}
    assert "burgess2014_tgMouse" not in train_names and len(train_names) == 7
    assert [p.stem for p in held_out[0].images] == ["burgess2014_tgMouse"]
    # VC-Net's batch size and plateau schedule (the learning rate is the lead's choice for the CPU budget).
    assert config.training.batch_size == 4
    assert (config.training.lr_decay_factor, config.training.lr_patience) == (0.5, 10)


# ------------------------------------------------------------------- randomisation and physical phantoms


def test_randomisation_table_reaches_the_patch_sampler(tmp_path):
    raw = _tiny_raw()
    raw["training"]["randomisation"] = {"gamma_probability": 1.0, "gamma_range": [0.5, 0.6]}
    config = parse_config(raw, base_dir=TINY.parent).with_overrides(run_dir=tmp_path / "run")
    assert config.training.randomisation.gamma_probability == 1.0
    trainer = Trainer(config)
    trainer.setup()
    assert trainer.sampler.randomisation == config.training.randomisation
    spec = trainer.sampler.draw(np.random.default_rng(0))
    assert spec.randomisation is not None and 0.5 <= spec.randomisation.gamma <= 0.6
    raw["training"]["randomisation"] = {"gamma_range": [0.5, 99.0]}
    with pytest.raises(ValueError, match="training.randomisation.gamma_range"):
        parse_config(raw, base_dir=TINY.parent)
    assert parse_config(_tiny_raw(), base_dir=TINY.parent).training.randomisation is None


def test_phantom_source_radius_model_makes_physical_2pm_phantoms():
    from VesselSegLib.phantoms import make_phantom_case

    raw = _tiny_raw()
    raw["data"]["vessel_classes"] = ["micro"]
    raw["model"]["arguments"]["out_channels"] = 1
    source = {
        "kind": "phantom",
        "modality": "2PM",
        "count": 1,
        "shape_zyx": [16, 96, 96],
        "spacing_zyx": [0.005, 0.002, 0.002],
        "seed": 7,
        "radius_model": "2pm-physical",
        "class_remap": {"artery": "micro", "vein": "micro"},
    }
    raw["data"]["training"] = [source]
    raw["data"]["validation"] = [{**source, "seed": 8, "radius_model": "voxel"}]
    config = parse_config(raw, base_dir=TINY.parent)
    assert config.data.training[0].radius_model == "2pm-physical"
    assert "2pm-physical radii" in config.data.training[0].describe()
    (case,) = load_cases(config.data.training[0], ["micro"])
    expected = make_phantom_case(
        "2PM", (16, 96, 96), spacing_zyx=(0.005, 0.002, 0.002), seed=7, radius_model="2pm-physical"
    )
    np.testing.assert_array_equal(case.target[0] > 0, expected.class_map > 0)
    raw["data"]["training"] = [{**source, "radius_model": "physical"}]
    with pytest.raises(ValueError, match=r"data.training\[0\].radius_model"):
        parse_config(raw, base_dir=TINY.parent)
