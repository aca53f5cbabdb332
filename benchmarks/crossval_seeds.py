"""Mean +- sd over seeds for cross-validation runs that were trained one seed per run directory.

    python benchmarks/crossval_seeds.py \\
        --arm "3d-sld=runs/cv-SLD/a:3d-sld,runs/cv-SLD/d:3d-sld-seed1,runs/cv-SLD/e:3d-sld-seed2" \\
        --arm "no-ori=runs/cv-SLD/a:3d-sld-no-ori,runs/cv-SLD/g:3d-sld-no-ori-seed1"

``benchmarks/crossval.py`` writes one ``scores.csv`` per ``--run-dir``, one row per method and held-out
stack. Seeds of one configuration are separate trainings, often run side by side in separate run
directories under separate method names, so no single file holds an arm's spread. An ``--arm
LABEL=RUN_DIR:METHOD[,RUN_DIR:METHOD...]`` names the trainings (one seed each) that make up one arm; this
script takes each training's mean over its held-out stacks (every fold it was scored on), then the mean
and sd over the trainings, and prints two tables: one row per training, and one per arm with its
differences to the first arm and which of them exceed the seed spread (|delta| > sd(arm) + sd(first), the
rule of the phantom benchmarks' tables, ``seed_tables.py``). Only the rows at each method's own decision
are read (``crossval.py`` also writes ``METHOD@0.5`` rows at a fixed threshold). A training must have been
scored on the same stacks as every other in its arm, or the arm is refused: a mean over other stacks is
not the same seed of the same experiment.

A member may also be a model card that ``crossval.py --update-card`` filled (``CARD.json:METHOD``): its
per-stack scores are read from the card's ``cross_validation`` (it records no training time).

A training whose folds were run in separate run directories (``--fold K`` runs side by side) is one member
written ``RUN_DIR:METHOD+RUN_DIR:METHOD+...``: its mean is over the held-out stacks of all its parts, so
an arm of whole cross-validations gives the spread of the cross-validated figure over seeds:

    python benchmarks/crossval_seeds.py --arm \
        "3d-sld=runs/cv-SLD/d:3d-sld-seed1+runs/cv-SLD/i:3d-sld-seed1+runs/cv-SLD/k:3d-sld-seed1+runs/cv-SLD/j:3d-sld-seed1,..."
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is no package
from seed_tables import aggregate_over_seeds, seed_comparison_cells, seed_table_header  # noqa: E402

SCORE_KEYS = ("dice", "cldice", "precision", "sensitivity", "ap")
HEADERS = {
    "dice": "Dice",
    "cldice": "clDice",
    "precision": "precision",
    "sensitivity": "sensitivity",
    "ap": "AP",
}
DELTA_KEYS = ("dice", "cldice")


#: One training (seed) of an arm: the (run directory, method) pairs whose rows it is made of.
Training = tuple[tuple[Path, str], ...]


def parse_arm(text: str) -> tuple[str, list[Training]]:
    """``LABEL=RUN_DIR:METHOD[+RUN_DIR:METHOD...],...`` -> ``(label, [((run_dir, method), ...), ...])``."""
    label, separator, members = text.partition("=")
    trainings = []
    for member in members.split(",") if separator else []:
        parts = []
        for part in member.split("+"):
            run_dir, colon, method = part.strip().rpartition(":")
            if not colon or not run_dir or not method:
                raise SystemExit(
                    f"bad --arm member {member!r} in {text!r}: write RUN_DIR:METHOD, e.g. runs/cv-SLD/a:3d-sld"
                )
            parts.append((Path(run_dir), method))
        trainings.append(tuple(parts))
    if not label.strip() or not trainings:
        raise SystemExit(f"bad --arm {text!r}: write LABEL=RUN_DIR:METHOD[,RUN_DIR:METHOD...]")
    return label.strip(), trainings


def training_name(training: Training) -> str:
    return " + ".join(f"{run_dir}:{method}" for run_dir, method in training)


def training_rows(run_dir: Path, method: str) -> list[dict]:
    """The per-stack rows of one training (``method`` in ``run_dir/scores.csv``, or in a model card's
    ``cross_validation`` when ``run_dir`` is a ``.json`` card), scores as floats."""
    if run_dir.suffix == ".json":
        return card_rows(run_dir, method)
    path = run_dir / "scores.csv"
    if not path.is_file():
        raise SystemExit(
            f"{path} does not exist: pass a --run-dir of benchmarks/crossval.py that has finished"
        )
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["method"] == method]
    if not rows:
        raise SystemExit(
            f"{path} has no rows of method {method!r}: check the name (rows ending in @0.5 are not read)"
        )
    for row in rows:
        for key in (*SCORE_KEYS, "train_s"):
            value = row.get(key, "")
            row[key] = float(value) if value not in ("", None) else math.nan
    return rows


def card_rows(card_path: Path, method: str) -> list[dict]:
    """The per-stack rows that ``crossval.py --update-card`` wrote into a model card (no training time)."""
    if not card_path.is_file():
        raise SystemExit(
            f"{card_path} does not exist: give a model card written by crossval.py --update-card"
        )
    scores = json.loads(card_path.read_text()).get("cross_validation", {}).get("scores", {})
    if method not in scores:
        raise SystemExit(
            f"{card_path} has no cross-validation scores of method {method!r} (it has: {', '.join(scores) or 'none'})"
        )
    return [
        {
            "method": method,
            "fold": str(values["fold"]),
            "stack": stack,
            **{key: float(values.get(key, math.nan)) for key in SCORE_KEYS},
            "train_s": math.nan,
        }
        for stack, values in scores[method]["per_stack"].items()
    ]


def arm_rows(label: str, trainings: list[Training]) -> list[dict]:
    """Rows in ``seed_tables.aggregate_over_seeds``'s form: method = the arm, seed = the training's index."""
    rows, stacks = [], None
    if len(set(trainings)) != len(trainings):
        raise SystemExit(f"arm {label!r} lists one training twice: each member must be another seed")
    for index, training in enumerate(trainings):
        scored = [row for run_dir, method in training for row in training_rows(run_dir, method)]
        these = sorted((row["fold"], row["stack"]) for row in scored)
        if len(set(these)) != len(these):
            raise SystemExit(
                f"arm {label!r}: {training_name(training)} scores a stack twice; join the run directories "
                "of different folds with +, not two trainings of one fold"
            )
        if stacks is not None and these != stacks:
            raise SystemExit(
                f"arm {label!r}: {training_name(training)} was scored on {these}, the arm's first training on "
                f"{stacks}; an arm's trainings must share their held-out stacks"
            )
        stacks = these
        for row in scored:
            rows.append({**row, "method": label, "kind": "trained", "seed": index})
    return rows


def _seconds(value: float) -> str:
    """Training seconds, or "-" where a member (a model card) recorded none."""
    return "-" if math.isnan(value) else f"{value:.0f}"


def summarise(arms: list[tuple[str, list[Training]]]) -> str:
    """The two Markdown tables (per training, per arm) as one string."""
    rows = [row for label, trainings in arms for row in arm_rows(label, trainings)]
    summaries = aggregate_over_seeds(rows, SCORE_KEYS, untrained_kinds=(), keep_infinite=False)
    titles = [HEADERS[k] for k in SCORE_KEYS]
    lines = [
        "Per training (mean over its held-out stacks):",
        "",
        "| arm | training | stacks | " + " | ".join(titles) + " | training s |",
        "| --- | --- | --- | " + " | ".join("---" for _ in titles) + " | --- |",
    ]
    for label, trainings in arms:
        per_seed = summaries[label]["per_seed"]  # its "phantoms" counts rows: here the held-out stacks
        for index, training in enumerate(trainings):
            cells = [f"{per_seed[index][k]:.3f}" for k in SCORE_KEYS]
            lines.append(
                f"| {label} | {training_name(training)} | {per_seed[index]['phantoms']} | "
                + " | ".join(cells)
                + f" | {_seconds(per_seed[index]['train_s'])} |"
            )
    first = arms[0][0]
    lines += seed_table_header(first, SCORE_KEYS, DELTA_KEYS, HEADERS, ["training s"])
    for label, _ in arms:
        summary = summaries[label]
        cells, deltas, verdict = seed_comparison_cells(
            summary,
            None if label == first else summaries[first],
            SCORE_KEYS,
            DELTA_KEYS,
            HEADERS,
            lambda value, key: f"{value:.3f}",
            two_decimal_keys=(),
            min_seeds=2,
        )
        lines.append(
            f"| {label} | {summary['seeds']} | "
            + " | ".join([*cells, *deltas, verdict])
            + f" | {_seconds(summary['mean']['train_s'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--arm",
        action="append",
        required=True,
        help="LABEL=RUN_DIR:METHOD[,RUN_DIR:METHOD...], one training (seed) per member, a member's folds "
        "from several run directories joined by + (RUN_DIR:METHOD+RUN_DIR:METHOD); the first arm is the reference",
    )
    args = parser.parse_args(argv)
    arms = [parse_arm(text) for text in args.arm]
    labels = [label for label, _ in arms]
    if len(set(labels)) != len(labels):
        raise SystemExit(f"arm labels repeat ({', '.join(labels)}): give each --arm its own label")
    print(summarise(arms), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
