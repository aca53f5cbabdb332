"""The ROSE phantom benchmark end to end on tiny inputs: every row per seed, sane scores, a rerun trains nothing."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ROSE_TOF = REPO / "trainer" / "configs" / "rose_tof.toml"
TINY = {
    "arguments = { in_channels = 1, base_channels = 4, levels = 3, sr_channels = 16 }": (
        "arguments = { in_channels = 1, base_channels = 2, levels = 3, sr_channels = 4, residual_blocks = 1 }"
    ),
    "count = 16, shape_zyx = [64, 128, 128]": "count = 2, shape_zyx = [32, 48, 48]",
    "count = 2, shape_zyx = [64, 128, 128]": "count = 1, shape_zyx = [32, 48, 48]",
    "epochs = 40": "epochs = 1",
    "patches_per_epoch = 400": "patches_per_epoch = 4",
    "patch_size_zyx = [16, 64, 64]": "patch_size_zyx = [8, 16, 16]",
}


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("rose_benchmark", REPO / "benchmarks" / "rose_phantoms.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def _tiny_config(tmp_path: Path) -> Path:
    text = ROSE_TOF.read_text()
    for old, new in TINY.items():
        assert old in text, f"rose_tof.toml changed: {old!r} is gone; update the test"
        text = text.replace(old, new)
    path = tmp_path / "rose_tiny.toml"
    path.write_text(text)
    return path


@pytest.mark.slow
def test_benchmark_scores_every_method_per_seed_and_a_rerun_trains_nothing(tmp_path, capsys):
    benchmark = _load_benchmark()
    config = _tiny_config(tmp_path)
    run = tmp_path / "run"
    arguments = [
        "--methods", f"rose={config}", f"rose-nosr={config},model.arguments.sr_stream=false",
        "--seeds", "0", "1", "--run-dir", str(run), "--test-shape", "32", "48", "48",
        "--timing-shape", "8", "16", "16", "--threads", "1", "--train-threads", "1",
        "--baseline-network", "{ in_channels = 1, base_channels = 2, levels = 3 }",
    ]  # fmt: skip
    assert benchmark.main(arguments) == 0
    table = capsys.readouterr().out
    rows = list(csv.DictReader((run / "scores.csv").open()))
    phantoms = sorted(str(s) for s in benchmark.TEST_SEEDS)
    trained = ("rose", "rose-nosr", "b-lrseg", "b-lrseg-nearest", "b-preint", "ceiling-hr")
    for method in trained:
        for seed in ("0", "1"):
            scored = sorted(r["phantom"] for r in rows if r["method"] == method and r["seed"] == seed)
            assert scored == phantoms, (method, seed)
        assert f"| {method} | 2 |" in table  # mean +- sd over the two seeds
    for method in ("frangi-preint", "trilinear", "cubic"):
        assert sorted(r["phantom"] for r in rows if r["method"] == method) == phantoms
    for row in rows:
        if row["kind"] != "interpolation":
            assert 0.0 <= float(row["dice"]) <= 1.0, row
    # PSNR: of ROSE's SR image and of both interpolations; none for the network without an SR stream.
    for method in ("rose", "trilinear", "cubic"):
        assert all(math.isfinite(float(r["psnr_db"])) for r in rows if r["method"] == method), method
    assert all(math.isnan(float(r["psnr_db"])) for r in rows if r["method"] == "rose-nosr")
    assert "delta Dice" in table and (run / "summary.md").is_file()
    # The baselines trained on files written in the run folder, not in the repository.
    assert len(list((run / "data").glob("*/preint/training/images/*.nrrd"))) == 2
    assert len(list((run / "data").glob("*/lrseg/validation/labels/*.nrrd"))) == 1

    weights = [run / name / "seed-1" / "train" / "best.safetensors" for name in ("rose", "b-preint")]
    mtimes = [path.stat().st_mtime_ns for path in weights]
    before = (run / "scores.csv").read_text()
    card = tmp_path / "rose.card.json"
    card.write_text('{"name": "rose"}')
    assert benchmark.main([*arguments, "--update-card", str(card)]) == 0
    assert [path.stat().st_mtime_ns for path in weights] == mtimes  # nothing trained again
    assert (run / "scores.csv").read_text() == before
    # The card gets the first method's held-out scores, first, with the run's other rows beside them.
    held_out = json.loads(card.read_text())["held_out_phantoms"]
    assert held_out["method"] == "rose" and list(held_out["scores"])[0] == "rose"
    assert held_out["scores"]["rose"]["seeds"] == 2 and "frangi-preint" in held_out["scores"]
    per_seed = [
        np.mean([float(r["dice"]) for r in rows if r["method"] == "rose" and r["seed"] == seed])
        for seed in ("0", "1")
    ]
    assert held_out["scores"]["rose"]["mean"]["dice"] == pytest.approx(np.mean(per_seed), abs=1e-4)
    assert held_out["test_set"]["test_seeds"] == list(benchmark.TEST_SEEDS)
