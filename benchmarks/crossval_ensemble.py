"""Do several trainings of a recipe, averaged, score higher on unseen stacks than each one alone?

    python benchmarks/crossval_ensemble.py runs/cv-E4/vnet-2pm-1um-cos-dicebce-last runs/cv-E5/vnet-2pm-cos-dicebce-last

Each argument is a trained method's folder from ``benchmarks/crossval.py`` (``fold-K/models/models.json``
for every fold), all on the same split (their run folders' ``folds.json`` must agree). For every fold, each
held-out stack is segmented by each fold model through the harness's own :func:`crossval.segment` (the
code path users run, each model with its own preprocessing), the probabilities are averaged, cut at
``--threshold`` (0.5: nothing is chosen on the test stacks) and scored with the harness's metrics. Printed:
per stack, each member's Dice and the average's, then mean +- sd over the held-out stacks. Nothing is
trained; the members' own folders are only read.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from crossval import SCORE_KEYS, load_stacks, score, segment

from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.resources import vesselnn_dir


def fold_members(method_dirs: list[Path]) -> tuple[list[dict], list[list[tuple[str, ModelRegistry]]]]:
    """The shared split, and per fold each member's (name, registry). SystemExit if the splits differ."""
    splits = [json.loads((d.parent / "folds.json").read_text()) for d in method_dirs]
    if any(split != splits[0] for split in splits[1:]):
        raise SystemExit(
            "error: the methods were cross-validated on different splits; use runs of one split."
        )
    members = []
    for fold in splits[0]["folds"]:
        registries = []
        for method_dir in method_dirs:
            path = method_dir / f"fold-{fold['index']}" / "models" / "models.json"
            if not path.is_file():
                raise SystemExit(
                    f"error: {path} is missing; finish that fold with benchmarks/crossval.py first."
                )
            registry = ModelRegistry.from_file(path)
            registries.append((registry.names[0], registry))
        members.append(registries)
    return splits[0]["folds"], members


def ensemble_rows(folds, members, stacks, threshold: float) -> list[dict]:
    """Per held-out stack: ``{"fold", "stack", "alone": [each member's scores], "averaged": scores}``."""
    rows = []
    for fold, registries in zip(folds, members, strict=True):
        for name in fold["test"]:
            stack = stacks[name]
            probabilities, alone = [], []
            for method, registry in registries:
                decision, member_probabilities, *_ = segment(stack, method, registry)  # as trained
                probabilities.append(member_probabilities)
                alone.append(score(stack, decision, member_probabilities))
            mean = np.mean(probabilities, axis=0)
            averaged = score(stack, mean > threshold, mean)
            rows.append({"fold": fold["index"], "stack": name, "alone": alone, "averaged": averaged})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("methods", nargs="+", type=Path, help="trained method folders (RUN_DIR/NAME)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--data-root", type=Path, default=None, help="VesselNN folder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    stacks = load_stacks(args.data_root or vesselnn_dir())
    folds, members = fold_members(args.methods)
    labels = [f"member {k + 1}" for k in range(len(args.methods))]
    print("| fold | stack | " + " | ".join(f"{label} Dice" for label in labels) + " | average Dice |")
    print("|---|---|" + "---|" * (len(labels) + 1))
    rows = ensemble_rows(folds, members, stacks, args.threshold)
    for row in rows:
        print(
            f"| {row['fold']} | {row['stack']} | "
            + " | ".join(f"{s['dice']:.3f}" for s in row["alone"])
            + f" | {row['averaged']['dice']:.3f} |"
        )
    print("\nMean +- sd over the held-out stacks:\n")
    print("| model | " + " | ".join(SCORE_KEYS) + " | min Dice |")
    print("|---|" + "---|" * (len(SCORE_KEYS) + 1))
    for label, pick in [
        *((f"{label} ({args.methods[k]})", lambda r, k=k: r["alone"][k]) for k, label in enumerate(labels)),
        (f"average of the {len(labels)}, cut at {args.threshold:g}", lambda r: r["averaged"]),
    ]:
        chosen = [pick(r) for r in rows]
        cells = []
        for key in SCORE_KEYS:
            values = np.array([c[key] for c in chosen], dtype=float)
            cells.append(f"{values.mean():.3f} +- {values.std(ddof=1):.3f}")
        print(f"| {label} | " + " | ".join(cells) + f" | {min(c['dice'] for c in chosen):.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
