"""The 3D-SLD phantom benchmark end to end in its --quick mode: every row scored, sane Dice, a rerun trains nothing."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("sld_benchmark", REPO / "benchmarks" / "sld_phantoms.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_benchmark_scores_every_method_and_a_rerun_trains_nothing(tmp_path, capsys):
    benchmark = _load_benchmark()
    arguments = ["--quick", "--run-dir", str(tmp_path)]
    assert benchmark.main(arguments) == 0
    table = capsys.readouterr().out
    assert (tmp_path / "summary.md").read_text().startswith("<!-- python benchmarks/sld_phantoms.py --quick")
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    phantoms = sorted(str(s) for s in benchmark.QUICK_TEST_SEEDS)
    trained = ("3d-sld", "3d-sld-no-ori", "3d-sld-no-consistency", "3d-sld-no-refinement", "unet3d")
    for method in (*trained, "frangi"):
        scored = [r for r in rows if r["method"] == method]
        assert sorted(r["phantom"] for r in scored) == phantoms, method
        assert all(0.0 <= float(r["dice"]) <= 1.0 for r in scored), method
        assert f"| {method} |" in table
    assert "delta Dice" in table and "stage 1 s" in table
    # The ablation without stage 3 keeps the budget: its quick run is 1 + 2 + 0 epochs.
    timing = {r["method"]: r for r in csv.DictReader((tmp_path / "timing.csv").open())}
    assert timing["3d-sld-no-refinement"]["stage3_epochs"] == "0"
    assert timing["3d-sld-no-refinement"]["stage2_epochs"] == "2"
    assert (tmp_path / "unet3d" / "seed-0" / "config.toml").is_file()

    records = sorted(tmp_path.glob("*/seed-0/train/run.json"))
    assert len(records) == len(trained)
    mtimes = [path.stat().st_mtime_ns for path in records]
    before = (tmp_path / "scores.csv").read_text()
    assert benchmark.main(arguments) == 0
    assert [path.stat().st_mtime_ns for path in records] == mtimes  # nothing trained again
    assert (tmp_path / "scores.csv").read_text() == before

    # The same models on the phantoms shifted to a noisier protocol: nothing trained, other images scored.
    assert benchmark.main([*arguments, "--rendering", "noisy"]) == 0
    assert [path.stat().st_mtime_ns for path in records] == mtimes
    shifted = list(csv.DictReader((tmp_path / "scores-noisy.csv").open()))
    assert len(shifted) == len(rows)
    assert [r["ap"] for r in shifted] != [r["ap"] for r in rows]
    assert "rendering shifted: noisy" in (tmp_path / "summary-noisy.md").read_text()
    assert (tmp_path / "scores.csv").read_text() == before

    # The label-free pick on the same folder: scores at the reference-density cut beside the fixed ones.
    spec = importlib.util.spec_from_file_location("sld_pick", REPO / "benchmarks" / "sld_label_free_pick.py")
    pick = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pick)
    capsys.readouterr()
    assert pick.main(["--run-dir", str(tmp_path), "--method", "3d-sld", "--seeds", "0", "--group", "1"]) == 0
    printed = capsys.readouterr().out
    calibrated = (tmp_path / "3d-sld" / "seed-0" / "scores-reference-density.json").read_text()
    cut = json.loads((tmp_path / "3d-sld" / "seed-0" / "train" / "run.json").read_text())
    cut = round(cut["decision_thresholds"]["label_free"]["reference_density_threshold"], 4)
    assert sorted(r["phantom"] for r in json.loads(calibrated)) == [int(p) for p in phantoms]
    assert all(r["threshold"] == cut for r in json.loads(calibrated))
    assert "| 0 | " in printed and "pick of 1 by bright-voxel AP" in printed
    assert (
        (tmp_path / "label-free-pick-3d-sld.md")
        .read_text()
        .startswith("<!-- python benchmarks/sld_label_free")
    )

    # --update-card writes the scores into a shipped card, only when its weights are one of the scored seeds'.
    from trainer.export import export_run

    export_run(tmp_path / "3d-sld" / "seed-0" / "train", name="shipped", out_dir=tmp_path / "out")
    export_run(tmp_path / "3d-sld-no-ori" / "seed-0" / "train", name="other", out_dir=tmp_path / "out")
    arguments = ["--run-dir", str(tmp_path), "--method", "3d-sld", "--seeds", "0", "--group", "1"]
    assert pick.main([*arguments, "--update-card", str(tmp_path / "out" / "shipped.card.json")]) == 0
    held_out = json.loads((tmp_path / "out" / "shipped.card.json").read_text())["held_out_phantoms"]
    assert held_out["this_model"]["seed"] == 0 and held_out["this_model"]["threshold"] == cut
    assert held_out["procedures"]["pick_of_1_by_bright_voxel_ap"]["picked"] == [0]
    with pytest.raises(SystemExit, match="holds none of the scored seeds' weights"):
        pick.main([*arguments, "--update-card", str(tmp_path / "out" / "other.card.json")])


def test_with_brain_masks_every_method_gets_the_mask_and_the_truth_is_the_brain_vessels():
    from VesselSegLib.phantoms import make_phantom_case

    benchmark = _load_benchmark()
    shape, spacing = benchmark.QUICK_SHAPE_ZYX, (0.8, 0.5, 0.5)
    (whole,) = benchmark.make_test_phantoms([5001], shape, spacing)
    (masked,) = benchmark.make_test_phantoms([5001], shape, spacing, brain_mask=True)
    case = make_phantom_case("TOF-MRA", shape, spacing_zyx=spacing, seed=5001)
    assert whole.brain_mask is None
    assert (masked.brain_mask == case.brain_mask).all()
    assert (masked.reference == (whole.reference & case.brain_mask)).all()
    assert masked.reference.sum() < whole.reference.sum()  # the trees reach beyond the brain
