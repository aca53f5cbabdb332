"""benchmarks/crossval_seeds.py: an arm's spread over trainings kept in separate cross-validation run directories."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
COLUMNS = (
    "method",
    "fold",
    "stack",
    "dice",
    "cldice",
    "precision",
    "sensitivity",
    "hd95_um",
    "ap",
    "train_s",
)


def _load_script():
    spec = importlib.util.spec_from_file_location("crossval_seeds", REPO / "benchmarks" / "crossval_seeds.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _write_scores(run_dir: Path, rows: list[tuple[str, str, float]], fold: int = 0) -> None:
    """``rows`` of (method, stack, dice); the other scores derive from Dice so each column is checkable."""
    run_dir.mkdir(parents=True)
    with (run_dir / "scores.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for method, stack, dice in rows:
            writer.writerow(
                {
                    "method": method,
                    "fold": fold,
                    "stack": stack,
                    "dice": dice,
                    "cldice": dice / 2,
                    "precision": 0.5,
                    "sensitivity": dice,
                    "hd95_um": 10.0,
                    "ap": dice,
                    "train_s": 100.0,
                }
            )


def test_an_arms_spread_is_the_sd_of_its_trainings_means_and_fixed_threshold_rows_are_not_read(
    tmp_path, capsys
):
    script = _load_script()
    _write_scores(
        tmp_path / "a",
        [
            ("full", "s1", 0.2),
            ("full", "s2", 0.4),
            ("full@0.5", "s1", 0.99),
            ("abl", "s1", 0.8),
            ("abl", "s2", 0.8),
        ],
    )
    _write_scores(
        tmp_path / "b",
        [
            ("full-seed1", "s1", 0.5),
            ("full-seed1", "s2", 0.7),
            ("abl-seed1", "s1", 0.9),
            ("abl-seed1", "s2", 0.9),
        ],
    )
    assert (
        script.main(
            [
                "--arm",
                f"full={tmp_path / 'a'}:full,{tmp_path / 'b'}:full-seed1",
                "--arm",
                f"abl={tmp_path / 'a'}:abl,{tmp_path / 'b'}:abl-seed1",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    # Per-training means 0.3 and 0.6 (the @0.5 row's 0.99 would have moved the first): mean 0.45, sd 0.212.
    spread = np.std([0.3, 0.6], ddof=1)
    assert f"| full | 2 | 0.450 +- {spread:.3f} | 0.225 +- {spread / 2:.3f} |" in table
    # The ablation's mean 0.85 lies 0.40 above, beyond sd 0.212 + 0.071: the verdict names Dice.
    abl_row = next(line for line in table.splitlines() if line.startswith("| abl | 2 |"))
    assert "+0.400" in abl_row and abl_row.split(" | ")[-2] == "Dice, clDice"


def test_an_arm_whose_trainings_saw_other_stacks_is_refused(tmp_path):
    script = _load_script()
    _write_scores(tmp_path / "a", [("full", "s1", 0.2), ("full", "s2", 0.4)])
    _write_scores(tmp_path / "b", [("full", "s1", 0.5), ("full", "s3", 0.7)])
    with pytest.raises(SystemExit, match="must share their held-out stacks"):
        script.main(["--arm", f"full={tmp_path / 'a'}:full,{tmp_path / 'b'}:full"])
    with pytest.raises(SystemExit, match="no rows of method 'missing'"):
        script.main(["--arm", f"full={tmp_path / 'a'}:missing"])
    with pytest.raises(SystemExit, match="write RUN_DIR:METHOD"):
        script.main(["--arm", "full=no-colon"])


def test_a_training_whose_folds_sit_in_several_run_directories_is_one_member(tmp_path, capsys):
    script = _load_script()
    for seed, (first, second) in enumerate([(0.2, 0.6), (0.4, 0.8)]):
        _write_scores(tmp_path / f"fold0-seed{seed}", [("m", "s1", first)], fold=0)
        _write_scores(tmp_path / f"fold1-seed{seed}", [("m", "s2", second)], fold=1)
    member = "{0}/fold0-seed{1}:m+{0}/fold1-seed{1}:m"
    arm = "whole=" + ",".join(member.format(tmp_path, seed) for seed in (0, 1))
    assert script.main(["--arm", arm]) == 0
    table = capsys.readouterr().out
    # Seeds' means over both folds' stacks: 0.4 and 0.6; mean 0.5, sd 0.141; two stacks per training.
    assert f"| whole | 2 | 0.500 +- {np.std([0.4, 0.6], ddof=1):.3f} |" in table
    assert f"| whole | {tmp_path}/fold0-seed0:m + {tmp_path}/fold1-seed0:m | 2 | 0.400 |" in table
    # Two trainings of one fold joined by mistake score a stack twice: refused.
    twice = f"bad={tmp_path}/fold0-seed0:m+{tmp_path}/fold0-seed1:m"
    with pytest.raises(SystemExit, match="scores a stack twice"):
        script.main(["--arm", twice])


def test_a_model_cards_cross_validation_is_a_member_and_a_repeated_member_is_refused(tmp_path, capsys):
    import json

    script = _load_script()
    card = tmp_path / "model.card.json"
    per_stack = {
        "s1": {"fold": 0, "dice": 0.2, "cldice": 0.1, "precision": 0.5, "sensitivity": 0.2, "ap": 0.2}
    }
    card.write_text(json.dumps({"cross_validation": {"scores": {"m": {"per_stack": per_stack}}}}))
    _write_scores(tmp_path / "run", [("m-seed1", "s1", 0.6)])
    assert script.main(["--arm", f"m={card}:m,{tmp_path / 'run'}:m-seed1"]) == 0
    table = capsys.readouterr().out
    assert f"| m | {card}:m | 1 | 0.200 | 0.100 | 0.500 | 0.200 | 0.200 | - |" in table
    assert f"| m | 2 | 0.400 +- {np.std([0.2, 0.6], ddof=1):.3f} |" in table
    with pytest.raises(SystemExit, match="no cross-validation scores of method 'other'"):
        script.main(["--arm", f"m={card}:other"])
    with pytest.raises(SystemExit, match="lists one training twice"):
        script.main(["--arm", f"m={card}:m,{card}:m"])
