"""Does a label-free pick among 3D-SLD restarts, cut at the reference density, give a working TOF-MRA model?

    python benchmarks/sld_label_free_pick.py --run-dir runs/sld-tof-ss \\
        --method 3d-sld-skullstripped-bright-crops --seeds 0 1 2 3 4 5 6 7 8 --group 3

3D-SLD's adversarial training finds the vessels with some seeds and collapses with others (README "3D-SLD").
A user has no 3D label to tell them apart; ``trainer.sld.label_free`` gives two label-free measurements of a
finished run on its validation volumes: the bright-voxel AP (``python -m trainer pick-sld`` ranks restarts by
it) and the reference-density threshold (``[training.sld] threshold = "reference-density"``). This script
scores what a user would get on the held-out phantoms of ``benchmarks/sld_phantoms.py``, whose seed folders it
reads (train them there first; nothing is trained here):

1. per seed: the label-free measurements, and the test scores at the card's fixed threshold (the
   ``scores.json`` of sld_phantoms.py) and at the reference-density threshold (``segment_image`` with the
   request's threshold, cached as ``scores-reference-density.json``; ``--rendering`` scores the phantoms
   shifted to another protocol, the threshold still the one chosen on the validation volume as rendered);
2. per procedure: one training (mean +- sd over the seeds), and the pick of the run with the highest
   bright-voxel AP among ``--group`` restarts, on disjoint groups of consecutive seeds (mean +- sd over the
   groups: each group is one user's independent try) and as the mean over every subset of that size (the
   subsets overlap: a smoother estimate of the same thing, not an independent one). A pick by the test Dice
   (reads labels) is printed as the ceiling, not as a result.

The test labels are read only to score. The table is printed and written to
``RUN_DIR/label-free-pick-METHOD.md``. ``--update-card CARD`` writes the scores into a shipped model's card
(key ``held_out_phantoms``), after checking that its weights are those of one of the scored seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from scipy.stats import spearmanr

from trainer.sld.label_free import recorded_or_measured
from VesselSegLib.models.registry import ModelRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is no package
from rendering_shifts import AS_RENDERED, RENDERINGS  # noqa: E402
from sld_phantoms import _output_name, make_test_phantoms, score_method  # noqa: E402

logger = logging.getLogger("sld_label_free_pick")

SCORE_KEYS = ("dice", "precision", "sensitivity", "ap")


def seed_row(method: str, seed: int, seed_dir: Path, phantoms, args) -> dict:
    """One seed: label-free measurements and mean test scores at the fixed and the reference-density cut."""
    fixed_path = seed_dir / _output_name("scores", ".json", args)
    if not fixed_path.is_file():
        raise SystemExit(
            f"error: {fixed_path} is missing; train and score seed {seed} first with benchmarks/sld_phantoms.py "
            "(same --run-dir, method and --rendering)."
        )
    assessment, _ = recorded_or_measured(seed_dir / "train")
    cut = round(assessment.reference_density_threshold, 4)
    calibrated_path = seed_dir / _output_name("scores-reference-density", ".json", args)
    calibrated = json.loads(calibrated_path.read_text()) if calibrated_path.is_file() else []
    if not calibrated or any(row["threshold"] != cut for row in calibrated):
        registry = ModelRegistry.from_file(seed_dir / "models" / "models.json")
        classes = registry.get(method).vessel_classes
        calibrated = score_method(
            method, "3d-sld", registry, phantoms, {"seed": seed}, dict.fromkeys(classes, cut)
        )
        calibrated_path.write_text(json.dumps(calibrated, indent=1) + "\n")
    fixed = json.loads(fixed_path.read_text())
    row = {"seed": seed, "bright_voxel_ap": assessment.bright_voxel_ap, "threshold": cut}
    row.update({f"fixed_{k}": float(np.mean([r[k] for r in fixed])) for k in SCORE_KEYS})
    row.update({f"calibrated_{k}": float(np.mean([r[k] for r in calibrated])) for k in SCORE_KEYS})
    return row


def summary(values) -> dict:
    values = np.asarray(list(values), dtype=float)
    return {
        "n": int(values.size),
        "mean": round(float(values.mean()), 4),
        "sd": round(float(values.std(ddof=1)), 4) if values.size > 1 else None,
    }


def same_weights(first: Path, second: Path) -> bool:
    """Whether two safetensors files hold the same tensors, bit for bit (their metadata may differ)."""
    a, b = load_file(first), load_file(second)
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def update_card(card_path: Path, rows: list[dict], args, test_set: dict, command: str) -> None:
    """Write the held-out scores into a shipped 3D-SLD card: its own seed's row, the procedures, every seed."""
    card = json.loads(card_path.read_text())
    weights = card_path.parent / card["weights_file"]
    mine = [
        r
        for r in rows
        if same_weights(
            weights,
            args.run_dir / args.method / f"seed-{r['seed']}" / "models" / f"{args.method}.safetensors",
        )
    ]
    if not mine:
        raise SystemExit(
            f"error: {weights} holds none of the scored seeds' weights; export one of them first."
        )
    groups = disjoint_groups(rows, args.group)
    picks = [picked(g, "bright_voxel_ap") for g in groups]
    keys = (
        "bright_voxel_ap",
        "threshold",
        *(f"{c}_{k}" for c in ("calibrated", "fixed") for k in SCORE_KEYS),
    )
    shifted = args.rendering != AS_RENDERED  # a shifted protocol gets its own key beside the as-rendered one
    card["held_out_phantoms" + (f"_{args.rendering}" if shifted else "")] = {
        "what": "mean over held-out TOF-MRA phantoms never used for training, seed pick or threshold choice, "
        "scored inside the brain; the seed pick (bright-voxel AP) and the threshold (reference density) read "
        "no label. calibrated_*: at the reference-density threshold the card ships; fixed_*: at 0.5"
        + (f"; phantoms rendered {args.rendering} (benchmarks/rendering_shifts.py)" if shifted else ""),
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "test_set": test_set,
        "this_model": {"seed": mine[0]["seed"], **{k: round(mine[0][k], 4) for k in keys}},
        "procedures": {
            "one_training": {
                "calibrated_dice": summary(r["calibrated_dice"] for r in rows),
                "fixed_dice": summary(r["fixed_dice"] for r in rows),
            },
            f"pick_of_{args.group}_by_bright_voxel_ap": {
                "groups": [[r["seed"] for r in g] for g in groups],
                "picked": [p["seed"] for p in picks],
                "calibrated_dice": summary(p["calibrated_dice"] for p in picks),
                "fixed_dice": summary(p["fixed_dice"] for p in picks),
            },
        },
        "seeds": [{"seed": r["seed"], **{k: round(r[k], 4) for k in keys}} for r in rows],
    }
    card_path.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")


def disjoint_groups(rows: list[dict], group: int) -> list[list[dict]]:
    """Consecutive, non-overlapping groups of ``group`` rows (each one user's independent restarts); a
    remainder shorter than ``group`` is left out."""
    return [rows[i : i + group] for i in range(0, len(rows) - group + 1, group)]


def picked(rows: list[dict], key: str) -> dict:
    """The row with the highest ``key`` (ties: the lower seed)."""
    return max(rows, key=lambda row: (row[key], -row["seed"]))


def mean_sd(values) -> str:
    values = np.asarray(list(values), dtype=float)
    return f"{values.mean():.3f} +- {values.std(ddof=1):.3f}" if values.size > 1 else f"{values.mean():.3f}"


def procedures_table(rows: list[dict], group: int) -> list[str]:
    """The procedures of the module text, at the fixed and the reference-density cut."""
    groups = disjoint_groups(rows, group)
    subsets = [list(s) for s in itertools.combinations(rows, group)]
    lines = [
        "| procedure | tries | Dice, fixed threshold | Dice, reference-density threshold | picked seeds |",
        "|---|---|---|---|---|",
        f"| one training | {len(rows)} seeds | {mean_sd(r['fixed_dice'] for r in rows)} "
        f"| {mean_sd(r['calibrated_dice'] for r in rows)} | |",
    ]
    if groups:
        picks = [picked(g, "bright_voxel_ap") for g in groups]
        lines.append(
            f"| **pick of {group} by bright-voxel AP** (label-free) | {len(groups)} disjoint groups "
            f"| {mean_sd(p['fixed_dice'] for p in picks)} | **{mean_sd(p['calibrated_dice'] for p in picks)}** "
            f"| {', '.join(str(p['seed']) for p in picks)} |"
        )
        every = [picked(s, "bright_voxel_ap") for s in subsets]
        lines.append(
            f"| pick of {group} by bright-voxel AP, every subset (overlapping) | {len(subsets)} subsets "
            f"| {np.mean([p['fixed_dice'] for p in every]):.3f} | {np.mean([p['calibrated_dice'] for p in every]):.3f} | |"
        )
        ceiling_fixed = [picked(g, "fixed_dice")["fixed_dice"] for g in groups]
        ceiling_calibrated = [picked(g, "calibrated_dice")["calibrated_dice"] for g in groups]
        lines.append(
            f"| pick of {group} by test Dice (reads labels: a ceiling, not a result) | {len(groups)} disjoint "
            f"groups | {mean_sd(ceiling_fixed)} | {mean_sd(ceiling_calibrated)} | |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="an sld_phantoms.py run folder")
    parser.add_argument("--method", required=True, help="the 3D-SLD method name in that folder")
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--group", type=int, default=3, help="restarts a user trains and picks among")
    parser.add_argument("--update-card", type=Path, help="a shipped model card to write the scores into")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 beside a training)")
    parser.add_argument(
        "--rendering",
        choices=RENDERINGS,
        default=AS_RENDERED,
        help="score the test phantoms shifted to another protocol (benchmarks/rendering_shifts.py); the "
        "threshold stays the one chosen on the validation volume as rendered, as a user would ship it",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(max(1, args.threads))
    if args.group < 1 or args.group > len(args.seeds):
        raise SystemExit(f"error: --group must be between 1 and the number of seeds ({len(args.seeds)}).")
    test_set = json.loads((args.run_dir / "benchmark.json").read_text())
    phantoms = make_test_phantoms(
        test_set["seeds"],
        test_set["shape_zyx"],
        test_set["spacing_zyx"],
        args.rendering,
        test_set.get("brain_mask", False),
    )
    rows = [
        seed_row(args.method, seed, args.run_dir / args.method / f"seed-{seed}", phantoms, args)
        for seed in args.seeds
    ]
    where = "inside the brain" if test_set.get("brain_mask") else "whole volumes"
    if args.rendering != AS_RENDERED:
        where += f", rendering shifted: {args.rendering}"
    lines = [
        f"{args.method}: {len(test_set['seeds'])} held-out TOF-MRA phantoms (seeds {test_set['seeds'][0]}-"
        f"{test_set['seeds'][-1]}), scored {where} through segment_image; label-free measurements on each run's "
        "validation volume (trainer.sld.label_free). Means over the test phantoms.",
        "",
        "| seed | bright-voxel AP (label-free) | reference-density threshold | Dice at 0.5 | AP | Dice at the "
        "reference-density threshold | precision | sensitivity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['seed']} | {row['bright_voxel_ap']:.3f} | {row['threshold']:.3f} | {row['fixed_dice']:.3f} "
            f"| {row['fixed_ap']:.3f} | {row['calibrated_dice']:.3f} | {row['calibrated_precision']:.3f} "
            f"| {row['calibrated_sensitivity']:.3f} |"
        )
    if len(rows) > 2:
        rho = spearmanr([r["bright_voxel_ap"] for r in rows], [r["fixed_ap"] for r in rows]).statistic
        lines += ["", f"Spearman correlation over the seeds, bright-voxel AP vs test AP: {rho:.2f}."]
    lines += ["", *procedures_table(rows, args.group)]
    table = "\n".join(lines)
    print(table)
    command = shlex.join(
        ["python", "benchmarks/sld_label_free_pick.py", *(argv if argv is not None else sys.argv[1:])]
    )
    summary_path = args.run_dir / _output_name(f"label-free-pick-{args.method}", ".md", args)
    summary_path.write_text(f"<!-- {command} -->\n{table}\n")
    if args.update_card:
        update_card(args.update_card, rows, args, test_set, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
