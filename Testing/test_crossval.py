"""Cross-validation by whole stacks, score-map metrics and the decision threshold a model card carries.

The fold rules (``trainer.crossval``) are checked on names and on real configuration files over real TIFF
stacks; the threshold chosen on validation is checked end to end: a tiny real training run chooses it, the
export writes it into the registry entry and card, and ``segment_image`` applies exactly it.
"""

from __future__ import annotations

import csv
import json
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors.torch import load_file

from trainer.config import FileSource, parse_config
from trainer.crossval import fold_training_document, make_folds
from trainer.export import export_run
from trainer.loop import Trainer
from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.metrics import average_precision, best_threshold, dice, dice_by_threshold
from VesselSegLib.models.registry import ModelRegistry

REPO = Path(__file__).resolve().parents[1]
VNET_2PM_CONFIG = REPO / "trainer" / "configs" / "vnet_2pm.toml"
NAMES = [f"stack{k}" for k in range(8)]


# ------------------------------------------------------------------------------------------------- folds


@pytest.mark.parametrize("folds", [2, 3, 4, 7])
def test_folds_never_share_a_stack_and_validation_comes_from_training_folds(folds):
    split = make_folds(NAMES, folds, seed=3)
    tested = [name for fold in split for name in fold.test]
    assert sorted(tested) == sorted(NAMES)  # every stack is tested exactly once
    for fold in split:
        assert not set(fold.test) & set(fold.training)
        assert not set(fold.test) & set(fold.validation)
        assert not set(fold.validation) & set(fold.training)
        assert set(fold.test) | set(fold.validation) | set(fold.training) == set(NAMES)
        assert fold.validation and fold.training
        # The validation stack is another fold's test stack, i.e. it lies in this fold's training folds.
        owner = [other for other in split if fold.validation[0] in other.test]
        assert len(owner) == 1 and owner[0].index != fold.index
    sizes = [len(fold.test) for fold in split]
    assert max(sizes) - min(sizes) <= 1


def test_folds_depend_only_on_names_and_seed():
    assert make_folds(NAMES, 4, seed=0) == make_folds(list(reversed(NAMES)), 4, seed=0)
    assert make_folds(NAMES, 4, seed=0) != make_folds(NAMES, 4, seed=1)


@pytest.mark.parametrize("folds", [1, 8, 9])
def test_impossible_fold_counts_are_refused(folds):
    with pytest.raises(ValueError, match="--folds must be between 2 and 7"):
        make_folds(NAMES, folds)


def _write_stacks(root: Path, names, shape=(4, 32, 32)) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k, name in enumerate(names):
        rng = np.random.default_rng(k)
        labels = np.zeros(shape, dtype=np.uint8)
        labels[:, 14:18, 4:28] = 255
        image = (rng.normal(30, 4, shape) + labels * 0.5).clip(0, 255).astype(np.uint8)
        tifffile.imwrite(root / "images" / f"{name}.tif", image, photometric="minisblack")
        tifffile.imwrite(root / "labels" / f"{name}.tif", labels, photometric="minisblack")


def _stems(sources) -> set[str]:
    """The stack names a configuration's file sources read."""
    return {path.stem for source in sources if isinstance(source, FileSource) for path in source.images}


def test_fold_configuration_trains_only_on_the_training_stacks(tmp_path):
    _write_stacks(tmp_path / "data", NAMES)
    raw = tomllib.loads(VNET_2PM_CONFIG.read_text())
    for fold in make_folds(NAMES, 4):
        document = fold_training_document(raw, fold, run_dir=str(tmp_path / f"fold{fold.index}"))
        config = parse_config(document, base_dir=VNET_2PM_CONFIG.parent, data_root=tmp_path / "data")
        trained, validated = _stems(config.data.training), _stems(config.data.validation)
        assert trained == set(fold.training)
        assert validated == set(fold.validation)
        assert config.output.run_dir == tmp_path / f"fold{fold.index}"
    assert raw == tomllib.loads(VNET_2PM_CONFIG.read_text())  # the shipped document is not modified


def test_training_on_the_validation_stack_still_never_trains_on_a_test_stack(tmp_path):
    _write_stacks(tmp_path / "data", NAMES)
    raw = tomllib.loads(VNET_2PM_CONFIG.read_text())
    for fold in make_folds(NAMES, 4):
        document = fold_training_document(
            raw, fold, run_dir=str(tmp_path / f"fold{fold.index}"), train_on_validation=True
        )
        config = parse_config(document, base_dir=VNET_2PM_CONFIG.parent, data_root=tmp_path / "data")
        trained = _stems(config.data.training)
        assert trained == {*fold.training, *fold.validation}
        assert trained.isdisjoint(fold.test)


# ---------------------------------------------------------------------------------------- score metrics


def _exact_average_precision(scores: np.ndarray, reference: np.ndarray) -> float:
    """scikit-learn's definition by a full sort (distinct scores: no ties)."""
    order = np.argsort(-scores.ravel(), kind="stable")
    hits = reference.ravel()[order].astype(float)
    precision = np.cumsum(hits) / np.arange(1, hits.size + 1)
    return float(np.sum(precision * hits) / hits.sum())


def test_average_precision_matches_the_sorted_definition():
    rng = np.random.default_rng(0)
    reference = rng.random((6, 40, 40)) < 0.2
    # Distinct scores on a 1e-5 grid, so the histogram is exact and ties cannot differ.
    scores = (rng.permutation(reference.size).reshape(reference.shape) / reference.size).astype(np.float64)
    scores = np.clip(scores * 0.5 + reference * 0.35, 0, 0.99999)
    assert average_precision(scores, reference) == pytest.approx(
        _exact_average_precision(scores, reference), abs=2e-3
    )
    assert average_precision(reference.astype(np.float32), reference) == pytest.approx(1.0)
    assert 0.15 < average_precision(rng.random(reference.shape), reference) < 0.25  # chance: the prevalence
    assert np.isnan(average_precision(scores, np.zeros_like(reference)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        average_precision(scores * 3, reference)


def test_dice_by_threshold_equals_thresholding_and_best_threshold_finds_the_planted_one():
    rng = np.random.default_rng(1)
    reference = rng.random((5, 30, 30)) < 0.3
    # Vessel scores around 0.7, background around 0.45: the best cut lies between, near 0.6.
    scores = np.clip(np.where(reference, 0.7, 0.45) + rng.normal(0, 0.06, reference.shape), 0, 1)
    thresholds = [0.3, 0.5, 0.55, 0.6, 0.7]
    expected = [dice(scores > t, reference) for t in thresholds]
    np.testing.assert_allclose(dice_by_threshold(scores, reference, thresholds), expected, atol=2e-3)
    chosen, sweep = best_threshold([scores], [reference])
    assert chosen in (0.55, 0.6, 0.65) and sweep[chosen] > sweep[0.5] + 0.02


# ------------------------------------------------------------------- threshold chosen -> card -> applied


@pytest.mark.slow
def test_threshold_chosen_on_validation_is_stored_in_the_card_and_applied_at_inference(tmp_path):
    raw = tomllib.loads((REPO / "trainer" / "configs" / "tiny_test.toml").read_text())
    raw["training"]["epochs"] = 1
    raw["training"]["patches_per_epoch"] = 48
    config = parse_config(raw, base_dir=REPO / "trainer" / "configs").with_overrides(run_dir=tmp_path / "run")
    trainer = Trainer(config, command=["pytest"])
    trainer.fit()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    chosen = record["decision_thresholds"]
    assert chosen["selection"] == "validation"
    # Each class's threshold is the best of its own sweep on the validation case.
    for name, sweep in chosen["dice_by_threshold"].items():
        best = max(sweep.values())
        assert sweep[f"{chosen['thresholds'][name]:.2f}"] == best
    entry = export_run(tmp_path / "run", name="tiny", out_dir=tmp_path / "models")
    card = json.loads((tmp_path / "models" / "tiny.card.json").read_text())
    assert entry["thresholds"] == chosen["thresholds"] == card["decision_thresholds"]["thresholds"]
    (tmp_path / "models" / "models.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    registry = ModelRegistry.from_file(tmp_path / "models" / "models.json")

    validation = trainer.validation_cases[0]
    result = segment_image(
        validation.image,
        validation.spacing_zyx,
        modality="TOF-MRA",
        method="tiny",
        registry=registry,
        keep_probabilities=True,
        min_component_mm3=0.0,
    )
    assert result.thresholds == pytest.approx(chosen["thresholds"])
    for name in result.vessel_classes:
        label = {"artery": 1, "vein": 2, "micro": 3}[name]
        predicted = result.class_map == label
        above = result.probabilities[name] > chosen["thresholds"][name]
        # Where classes compete the highest probability wins; everywhere else the class map is the cut.
        alone = sum(result.probabilities[n] > chosen["thresholds"][n] for n in result.vessel_classes) == 1
        np.testing.assert_array_equal(predicted[alone], above[alone])


# --------------------------------------------------------------------------------- the harness end to end


def _load_harness():
    import importlib.util

    spec = importlib.util.spec_from_file_location("crossval_harness", REPO / "benchmarks" / "crossval.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def _write_2pm_stacks(root: Path, count: int) -> None:
    from VesselSegLib.phantoms import make_phantom_case

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for k in range(count):
        case = make_phantom_case("2PM", (16, 48, 48), spacing_zyx=(0.002, 0.001, 0.001), seed=40 + k)
        image = np.clip(case.image / case.image.max() * 255, 0, 255).astype(np.uint8)
        labels = ((case.class_map > 0) * 255).astype(np.uint8)
        tifffile.imwrite(root / "images" / f"s{k}.tif", image, photometric="minisblack")
        tifffile.imwrite(root / "labels" / f"s{k}.tif", labels, photometric="minisblack")


def test_method_overrides_may_hold_lists_and_apply_to_the_parsed_configuration():
    harness = _load_harness()
    text = (
        f"ablation={VNET_2PM_CONFIG},training.sld.stage_epochs=[4, 11, 0],"
        'model.arguments.base_channels=8,training.loss="dice_bce"'
    )
    spec = harness.MethodSpec.parse(text)
    assert spec.name == "ablation" and spec.config == VNET_2PM_CONFIG
    assert spec.overrides == (
        ("training.sld.stage_epochs", [4, 11, 0]),
        ("model.arguments.base_channels", 8),
        ("training.loss", "dice_bce"),
    )
    document = spec.document()
    assert document["training"]["sld"]["stage_epochs"] == [4, 11, 0]
    assert document["model"]["arguments"]["base_channels"] == 8
    with pytest.raises(SystemExit, match="bad override"):
        harness.MethodSpec.parse(f"broken={VNET_2PM_CONFIG},training.epochs=")
    # A key under an array of tables (the data sources) is set in every one of its tables.
    sources = harness.MethodSpec.parse(f"weighted={VNET_2PM_CONFIG},data.training.weight=0.5").document()
    assert len(sources["data"]["training"]) > 1
    assert all(source["weight"] == 0.5 for source in sources["data"]["training"])
    assert all("weight" not in source for source in sources["data"]["validation"])


def _vnet_2pm_variant(path: Path, *replacements: tuple[str, str]) -> Path:
    """The shipped 2PM recipe with text replacements, written to ``path``."""
    text = VNET_2PM_CONFIG.read_text()
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return path


#: "best" epoch: the harness then also scores the last epoch ("@last"), another model.
BEST_EPOCH = ('model_selection = "last"', 'model_selection = "best"')


def test_training_on_the_validation_stack_is_refused_for_a_recipe_that_chooses_on_it(tmp_path):
    harness = _load_harness()
    _write_2pm_stacks(tmp_path / "data", 4)
    config = _vnet_2pm_variant(tmp_path / "best_epoch.toml", BEST_EPOCH)
    arguments = [
        "--methods", f"best={config}", "--folds", "2", "--data-root", str(tmp_path / "data"),
        "--run-dir", str(tmp_path / "run"), "--threads", "1", "--train-on-validation",
    ]  # fmt: skip
    with pytest.raises(SystemExit, match="chooses its epoch or threshold on the validation stack"):
        harness.main(arguments)
    assert not (tmp_path / "run" / "best-trainval" / "fold-0" / "train").exists()  # nothing was trained


@pytest.mark.slow
def test_harness_scores_every_stack_once_and_trains_on_training_stacks_only(tmp_path, capsys):
    harness = _load_harness()
    _write_2pm_stacks(tmp_path / "data", 4)
    config = _vnet_2pm_variant(
        tmp_path / "tiny_2pm.toml",
        ("epochs = 10", "epochs = 2"),
        BEST_EPOCH,
        ("patches_per_epoch = 160", "patches_per_epoch = 8"),
        ("patch_size_zyx = [16, 128, 128]", "patch_size_zyx = [16, 32, 32]"),
        ("count = 8", "count = 1"),
    )
    arguments = [
        "--methods", "frangi", f"tiny={config}", "--folds", "2", "--data-root", str(tmp_path / "data"),
        "--run-dir", str(tmp_path / "run"), "--threads", "1", "--train-threads", "1",
    ]  # fmt: skip
    assert harness.main(arguments) == 0
    table = capsys.readouterr().out
    rows = list(csv.DictReader((tmp_path / "run" / "scores.csv").open()))
    folds = json.loads((tmp_path / "run" / "folds.json").read_text())["folds"]
    for method in ("frangi", "frangi+tuned", "tiny", "tiny@0.5", "tiny@last"):
        tested = sorted(r["stack"] for r in rows if r["method"] == method)
        assert tested == ["s0", "s1", "s2", "s3"], method  # every stack scored exactly once
        assert f"| {method} | 4 |" in table
    for fold in folds:
        record = json.loads(
            (tmp_path / "run" / "tiny" / f"fold-{fold['index']}" / "train" / "run.json").read_text()
        )
        trained = " ".join(record["training_data"])
        assert all(name not in trained for name in fold["test"] + fold["validation"])
        assert all(name in trained for name in fold["training"])
        assert fold["validation"][0] in " ".join(record["validation_data"])
        card = json.loads(
            (tmp_path / "run" / "tiny" / f"fold-{fold['index']}" / "models" / "tiny.card.json").read_text()
        )
        used = {float(r["threshold"]) for r in rows if r["method"] == "tiny" and r["stack"] in fold["test"]}
        assert used == {card["decision_thresholds"]["thresholds"]["micro"]}
        # "@last" is the same training's last epoch (not the selected one), cut at 0.5.
        fold_dir = tmp_path / "run" / "tiny" / f"fold-{fold['index']}"
        shipped_last = load_file(fold_dir / "models-last" / "tiny-last.safetensors")
        trained_last = load_file(fold_dir / "train" / "last.safetensors")
        assert all(torch.equal(shipped_last[k], trained_last[k]) for k in trained_last)
        assert {float(r["threshold"]) for r in rows if r["method"] == "tiny@last"} == {0.5}
        assert json.loads((fold_dir / "models-last" / "tiny-last.card.json").read_text())["best_epoch"] == 2
    # A rerun reuses every fold: nothing is trained again.
    mtime = (tmp_path / "run" / "tiny" / "fold-0" / "train" / "best.safetensors").stat().st_mtime
    assert harness.main(arguments) == 0
    assert (tmp_path / "run" / "tiny" / "fold-0" / "train" / "best.safetensors").stat().st_mtime == mtime
    # Averaging a method with itself changes nothing: each stack scores as the method cut at 0.5.
    sys.path.insert(0, str(REPO / "benchmarks"))
    import crossval_ensemble

    folds_, members = crossval_ensemble.fold_members([tmp_path / "run" / "tiny"] * 2)
    stacks = harness.load_stacks(tmp_path / "data")
    averaged = crossval_ensemble.ensemble_rows(folds_, members, stacks, 0.5)
    at_half = {r["stack"]: float(r["dice"]) for r in rows if r["method"] == "tiny@0.5"}
    assert sorted(r["stack"] for r in averaged) == ["s0", "s1", "s2", "s3"]
    for row in averaged:
        assert row["averaged"]["dice"] == pytest.approx(at_half[row["stack"]], abs=1e-6)


@pytest.mark.slow
def test_harness_trains_a_label_free_method_per_fold_and_scores_its_adaptation(tmp_path, capsys):
    harness = _load_harness()
    _write_2pm_stacks(tmp_path / "data", 4)
    config = tmp_path / "tiny_umis.toml"
    config.write_text(
        (REPO / "trainer" / "configs" / "umis_2pm.toml")
        .read_text()
        .replace("epochs = 12", "epochs = 1")
        .replace("patches_per_epoch = 160", "patches_per_epoch = 8")
        .replace("patch_size_zyx = [16, 128, 128]", "patch_size_zyx = [16, 32, 32]")
        .replace("count = 8", "count = 1")
        .replace("widths = [16, 32, 64, 128]", "widths = [4, 8, 8, 8]")
        .replace("blocks = [2, 2, 2, 2]", "blocks = [1, 1, 1, 1]")
        .replace("decoder_widths = [32, 16, 8]", "decoder_widths = [8, 4, 4]")
    )
    arguments = [
        "--methods", f"umisx={config}", "--folds", "2", "--data-root", str(tmp_path / "data"),
        "--run-dir", str(tmp_path / "run"), "--threads", "1", "--train-threads", "1",
    ]  # fmt: skip
    assert harness.main(arguments) == 0
    folds = json.loads((tmp_path / "run" / "folds.json").read_text())["folds"]
    for fold in folds:
        record = json.loads(
            (tmp_path / "run" / "umisx" / f"fold-{fold['index']}" / "train" / "run.json").read_text()
        )
        trained = " ".join(record["training_data"])
        assert "no labels" in trained and all(name not in trained for name in fold["test"])
        assert record["decision_thresholds"]["selection"] == "fixed"
    capsys.readouterr()
    weights = tmp_path / "run" / "umisx" / "fold-0" / "models" / "umisx.safetensors"
    before = weights.read_bytes()
    assert harness.main([*arguments, "--adapt-seconds", "1"]) == 0
    table = capsys.readouterr().out
    assert "| umisx+adapt1 | 4 |" in table
    rows = list(csv.DictReader((tmp_path / "run" / "scores.csv").open()))
    adapted = [r for r in rows if r["method"] == "umisx+adapt1"]
    assert sorted(r["stack"] for r in adapted) == ["s0", "s1", "s2", "s3"]
    for row in adapted:
        # The adaptation ran (at least one step), its time is inside the request's, and it kept to its budget
        # unless its collapse guard stopped it early (a tiny network on random stacks may collapse).
        adapt_s, steps = float(row["adapt_s"]), int(row["adapt_steps"])
        assert steps >= 1 and 0.0 < adapt_s <= float(row["segment_s"]) + 0.05
        assert row["adapt_collapsed"] == "True" or adapt_s <= 1.0 + adapt_s / steps + 0.5
    assert weights.read_bytes() == before  # the fold's model file is never changed by adapting
