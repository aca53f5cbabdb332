"""Cross-validated scores on whole VesselNN stacks, one harness for every method.

    python benchmarks/crossval.py --methods frangi vnet-2pm=trainer/configs/vnet_2pm.toml --folds 4
    python benchmarks/crossval.py --methods vnet-2pm=trainer/configs/vnet_2pm.toml --fold 2   # one fold
    python benchmarks/crossval.py --methods vnet-2pm=trainer/configs/vnet_2pm.toml --tta     # + flips
    python benchmarks/crossval.py --methods umis=trainer/configs/umis_2pm.toml --adapt-seconds 60  # + adaptation

The 8 VesselNN stacks (``--data-root``, default ``$VESSELSEG_VESSELNN`` or ``../shared/data/vesselnn``) are
split into folds by stack (:func:`trainer.crossval.make_folds`). A method is either

- ``NAME=CONFIG.toml``: trained per fold with the trainer on the fold's training stacks (plus whatever
  phantoms the configuration adds); the best epoch and the decision threshold are chosen on the fold's
  inner validation stack (from the training folds); the fold's model is exported to a fold registry and the
  held-out stacks are segmented through it, with the threshold its card stores (a label-free configuration,
  ``training.loss = "umis"``, reads the training stacks' images only and keeps its last epoch and a fixed
  threshold: nothing is chosen with labels); or
- ``NAME``: a registry method that learns nothing from labels (classical filters, unsupervised methods).
  It is scored twice: as shipped (``NAME``: its own automatic threshold) and as ``NAME+tuned`` (the threshold
  with the best mean Dice on the fold's training and validation stacks, applied to its test stacks).

Every held-out stack is segmented with :func:`VesselSegLib.inference.pipeline.segment_image`, the code path
users run, and scored with the project's metrics: Dice, clDice, precision, sensitivity, average precision
(AP, from the probabilities) and HD95 (um). Printed: one row per stack, then mean +- sd over the stacks per
method (the figure of record). Written under ``--run-dir`` (default ``runs/crossval``): ``folds.json``, each
fold's training run and model, ``scores.csv`` and ``summary.md``. Finished folds are cached: a rerun
(or a run with ``--fold K``) only does what is missing, and an interrupted training resumes.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import re
import shlex
import sys
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from trainer.config import UMIS_LOSSES, parse_config
from trainer.crossval import Fold, fold_training_document, make_folds
from trainer.export import export_run
from trainer.loop import LAST_STATE, LAST_WEIGHTS, RUN_RECORD, run_training
from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.io import read_volume
from VesselSegLib.metrics import average_precision, best_threshold, evaluate_binary
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.request import SegmentationRequest
from VesselSegLib.resources import vesselnn_dir

logger = logging.getLogger("crossval")

#: Voxel size (X, Y, Z) in mm for stacks without acquisition metadata, as the VesselNN README advises.
ASSUMED_SPACING_XYZ_MM = (0.000994, 0.000994, 0.005)
SCORE_KEYS = ("dice", "cldice", "precision", "sensitivity", "ap", "hd95_um")
#: Thresholds tried for methods whose scores are not probabilities (vesselness is mostly tiny numbers).
TUNING_CANDIDATES = tuple(float(t) for t in np.round(np.geomspace(1e-4, 0.9, 48), 4))


#: A comma that starts the next ``section.key=`` assignment (not one inside a TOML list such as ``[4, 11, 0]``).
_ASSIGNMENT_COMMA = re.compile(r",(?=\s*[A-Za-z_][\w-]*(?:\.[A-Za-z_][\w-]*)+=)")


def parse_override(assignment: str, text: str) -> tuple[str, object]:
    """One ``section.key=VALUE`` of the ``--methods`` entry ``text`` as ``(key, value)``, the value parsed as TOML
    (a bare word: a string); blanks around the key and value are dropped (an error shows them as given)."""
    key, _, value = assignment.strip().partition("=")
    key, value = key.strip(), value.strip()
    if "." not in key or not value:
        raise SystemExit(f"error: bad override {assignment!r} in {text!r}; write section.key=VALUE.")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare word: a string
    return key, parsed


@dataclass(frozen=True)
class MethodSpec:
    """``NAME``, ``NAME=CONFIG.toml`` or ``NAME=CONFIG.toml,section.key=VALUE,...`` (TOML values), the
    overrides making a variant of a recipe without another configuration file."""

    name: str
    config: Path | None  # None: nothing to train
    overrides: tuple[tuple[str, object], ...] = ()

    @classmethod
    def parse(cls, text: str) -> MethodSpec:
        name, _, rest = text.partition("=")
        config, *assignments = _ASSIGNMENT_COMMA.split(rest) if rest else [""]
        if not name:
            raise SystemExit(f"error: bad --methods entry {text!r}; write NAME or NAME=CONFIG.toml.")
        if config and not Path(config).is_file():
            raise SystemExit(f"error: configuration {config} of method {name} does not exist.")
        overrides = tuple(parse_override(assignment, text) for assignment in assignments)
        return cls(name=name, config=Path(config) if config else None, overrides=overrides)

    def document(self) -> dict:
        """The configuration as parsed TOML, overrides applied. A key under an array of tables is set in each
        of its tables: ``data.training.skull_strip=true`` changes every training source."""
        raw = tomllib.loads(self.config.read_text())
        for key, value in self.overrides:
            *sections, leaf = key.split(".")
            tables = [raw]
            for section in sections:
                found = [table.setdefault(section, {}) for table in tables]
                tables = [t for item in found for t in (item if isinstance(item, list) else [item])]
            for table in tables:
                table[leaf] = value
        return raw


@dataclass(frozen=True)
class Stack:
    name: str
    image: np.ndarray
    reference: np.ndarray
    spacing_zyx: tuple[float, float, float]


def load_stacks(root: Path) -> dict[str, Stack]:
    if not (root / "images").is_dir():
        raise SystemExit(f"error: no VesselNN data at {root}; pass --data-root or set VESSELSEG_VESSELNN.")
    stacks = {}
    for image_path in sorted((root / "images").glob("*.tif")):
        name = image_path.stem
        metadata = root / "metadata" / f"{name}.xml.txt"
        if metadata.is_file():
            volume = read_volume(image_path, metadata_path=metadata)
        else:  # the two santos2015 stacks: the data set's README says to assume the Burgess voxel size
            volume = read_volume(image_path, spacing_xyz=ASSUMED_SPACING_XYZ_MM)
        labels = read_volume(root / "labels" / image_path.name, spacing_xyz=volume.spacing_xyz).array
        stacks[name] = Stack(name, np.asarray(volume.array), np.asarray(labels) > 0, volume.spacing_zyx)
    return stacks


def score(stack: Stack, decision: np.ndarray, probabilities: np.ndarray | None) -> dict[str, float]:
    metrics = evaluate_binary(decision, stack.reference, stack.spacing_zyx)
    result = {k: float(metrics[k]) for k in ("dice", "cldice", "precision", "sensitivity")}
    result["hd95_um"] = float(metrics["hd95_mm"]) * 1000.0  # 2PM spacing is in mm: report micrometres
    result["ap"] = (
        float(average_precision(np.clip(probabilities, 0.0, 1.0), stack.reference))
        if probabilities is not None
        else math.nan
    )
    return result


def score_row(
    method: str,
    fold: Fold,
    stack: Stack,
    decision: np.ndarray,
    probabilities: np.ndarray | None,
    threshold: float,
    timing: dict,
) -> dict:
    """One row of the results table: who, where, the scores and what it cost."""
    return {
        "method": method,
        "fold": fold.index,
        "stack": stack.name,
        **score(stack, decision, probabilities),
        "threshold": threshold,
        **timing,
    }


def variant_suffix(args) -> str:
    """What is added to a method's name in the table for the inference options: "+tta", "+adapt60"."""
    suffix = "+tta" if args.tta else ""
    if args.adapt_seconds is not None:
        suffix += f"+adapt{args.adapt_seconds:g}"
    return suffix


def variant_tag(args) -> str:
    """The same for cache file names ("-tta-adapt60")."""
    return variant_suffix(args).replace("+", "-")


class Segmented(NamedTuple):
    """What :func:`segment` returns for one held-out stack."""

    decision: np.ndarray
    probabilities: np.ndarray
    threshold: float | None
    seconds: float
    """Wall clock of the whole request, the adaptation included."""
    adaptation: dict
    """The adaptation's record (``seconds``, ``steps``, ``collapsed``...); empty when nothing adapted."""

    def timing(self, train_s: float, best_epoch) -> dict:
        """The cost columns of this stack's rows (:func:`cost_columns`)."""
        return cost_columns(self.seconds, train_s, best_epoch, self.adaptation)


def cost_columns(segment_s: float, train_s: float, best_epoch, adaptation: dict | None = None) -> dict:
    """The cost columns of a row; adapted rows also say how long the adaptation ran and whether its
    collapse guard stopped it (then the original weights segmented the stack)."""
    columns = {"segment_s": round(segment_s, 1), "train_s": round(train_s, 1), "best_epoch": best_epoch}
    if adaptation:
        columns["adapt_s"] = round(float(adaptation.get("seconds", 0.0)), 2)
        columns["adapt_steps"] = int(adaptation.get("steps", 0))
        columns["adapt_collapsed"] = bool(adaptation.get("collapsed", False))
    return columns


def segment(
    stack: Stack,
    method: str,
    registry: ModelRegistry,
    *,
    tta: bool = False,
    adapt_seconds: float | None = None,
) -> Segmented:
    """The held-out stack through the code path users run; ``tta`` and ``adapt_seconds`` are the
    harness's ``--tta`` and ``--adapt-seconds``."""
    fields = {"test_time_augmentation": True} if tta else {}
    if adapt_seconds is not None:
        fields["adaptation_budget_s"] = adapt_seconds
    started = time.monotonic()
    result = segment_image(
        stack.image,
        stack.spacing_zyx,
        SegmentationRequest(modality="2PM", method=method, device="cpu", keep_probabilities=True, **fields),
        registry=registry,
    )
    seconds = time.monotonic() - started
    class_name = result.vessel_classes[0]
    return Segmented(
        decision=result.class_map > 0,
        probabilities=result.probabilities.get(class_name),
        threshold=result.thresholds.get(class_name),
        seconds=seconds,
        adaptation=dict(result.adaptation),
    )


# --------------------------------------------------------------------------------------- trained methods


def method_dir(spec: MethodSpec, args) -> Path:
    """Where a trained method's folds live; --epochs and --train-on-validation get folders of their own
    (models trained otherwise are never mixed into a table)."""
    name = spec.name if args.epochs is None else f"{spec.name}-epochs{args.epochs}"
    return args.run_dir / (f"{name}-trainval" if args.train_on_validation else name)


def chooses_on_validation(config) -> bool:
    """Whether a recipe picks its epoch or its threshold on the inner validation stack (label-free
    recipes, ``training.loss = "umis"`` or a ``[training.sld]`` table, choose nothing with labels)."""
    training = config.training
    if training.loss in UMIS_LOSSES or training.sld is not None:
        return False
    return training.model_selection != "last" or training.threshold_selection != "fixed"


def train_or_resume(config, train_dir: Path, *, train_threads: int | None, description: str) -> bool:
    """Train ``config`` into ``train_dir`` unless its run record says it finished; resume an interrupted one.

    ``train_threads`` overrides ``training.num_threads`` (machine-dependent, not part of the recipe). Returns
    whether anything was trained; ``description`` starts the log line.
    """
    if train_threads is not None:
        config = replace(config, training=replace(config.training, num_threads=train_threads))
    record_path = train_dir / RUN_RECORD
    if record_path.is_file() and json.loads(record_path.read_text()).get("finished"):
        return False
    resume = (train_dir / LAST_STATE).is_file()
    logger.info("%s%s", description, " (resuming)" if resume else "")
    run_training(config, resume=resume, command=[sys.executable, *sys.argv])
    return True


def train_fold(spec: MethodSpec, fold: Fold, fold_dir: Path, args) -> ModelRegistry:
    """Train (or resume, or reuse) the fold's model and return a registry holding only it."""
    models_dir = fold_dir / "models"
    registry_path = models_dir / "models.json"
    if registry_path.is_file():
        return ModelRegistry.from_file(registry_path)
    train_dir = fold_dir / "train"
    document = fold_training_document(
        spec.document(), fold, run_dir=str(train_dir), train_on_validation=args.train_on_validation
    )
    config = parse_config(
        document, base_dir=spec.config.resolve().parent, data_root=args.data_root, source_path=None
    )
    if args.train_on_validation and chooses_on_validation(config):
        raise SystemExit(
            f"error: {spec.name} chooses its epoch or threshold on the validation stack, which "
            '--train-on-validation would train on; set training.model_selection="last" and '
            'training.threshold_selection="fixed", or drop the flag.'
        )
    if args.epochs is not None:
        config = config.with_overrides(epochs=args.epochs)
    trained = [*fold.training, *(fold.validation if args.train_on_validation else ())]
    description = (
        f"{spec.name} fold {fold.index}: training on {', '.join(trained)} "
        f"(validation {', '.join(fold.validation)}"
        f"{', trained on as well' if args.train_on_validation else ''})"
    )
    train_or_resume(config, train_dir, train_threads=args.train_threads, description=description)
    return export_fold_registry(train_dir, spec.name, models_dir)


def export_fold_registry(train_dir: Path, name: str, models_dir: Path, **export_options) -> ModelRegistry:
    """Export a fold's training run as ``name`` (the 2PM default) into a registry of its own in ``models_dir``;
    ``export_options`` go to :func:`trainer.export.export_run` (e.g. ``checkpoint="last"``)."""
    entry = export_run(train_dir, name=name, out_dir=models_dir, modalities=["2PM"], **export_options)
    entry["default_for"] = ["2PM"]
    registry_path = models_dir / "models.json"
    registry_path.write_text(json.dumps({"schema_version": 1, "models": [entry]}, indent=2) + "\n")
    return ModelRegistry.from_file(registry_path)


def run_trained(spec: MethodSpec, fold: Fold, stacks: dict[str, Stack], args) -> list[dict]:
    suffix = variant_suffix(args)
    label = spec.name + suffix
    fold_dir = method_dir(spec, args) / f"fold-{fold.index}"
    scores_path = fold_dir / f"scores{variant_tag(args)}.json"
    if scores_path.is_file():
        return json.loads(scores_path.read_text()) + last_epoch_rows(spec, fold, fold_dir, stacks, args)
    registry = train_fold(spec, fold, fold_dir, args)
    record = json.loads((fold_dir / "train" / RUN_RECORD).read_text())
    rows = []
    for name in fold.test:
        out = segment(stacks[name], spec.name, registry, tta=args.tta, adapt_seconds=args.adapt_seconds)
        timing = out.timing(float(record.get("elapsed_seconds", math.nan)), record.get("best_epoch"))
        stack = stacks[name]
        # The same probabilities cut at 0.5: what the chosen threshold gains (or loses) on unseen stacks.
        rows.append(
            score_row(
                f"{spec.name}@0.5{suffix}",
                fold,
                stack,
                out.probabilities > 0.5,
                out.probabilities,
                0.5,
                timing,
            )
        )
        rows.append(score_row(label, fold, stack, out.decision, out.probabilities, out.threshold, timing))
        logger.info("%s fold %d %s: Dice %.3f", label, fold.index, name, rows[-1]["dice"])
    scores_path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows + last_epoch_rows(spec, fold, fold_dir, stacks, args)


def last_epoch_rows(
    spec: MethodSpec, fold: Fold, fold_dir: Path, stacks: dict[str, Stack], args
) -> list[dict]:
    """``NAME@last``: the same fold training's last epoch, cut at 0.5, i.e. what the recipe scores with
    ``training.model_selection = "last"`` and ``threshold_selection = "fixed"`` (nothing chosen on the inner
    validation stack), without training again. Cached beside the fold's scores."""
    suffix = variant_suffix(args)
    scores_path = fold_dir / f"scores-last{variant_tag(args)}.json"
    if scores_path.is_file():
        return json.loads(scores_path.read_text())
    train_dir = fold_dir / "train"
    if not (train_dir / LAST_WEIGHTS).is_file():
        return []
    record = json.loads((train_dir / RUN_RECORD).read_text())
    training = record["config"].get("training", {})
    if training.get("model_selection") == "last" or training.get("loss") in UMIS_LOSSES or "sld" in training:
        return []  # the fold's model is its last epoch already (label-free trainers keep the last one too)
    name = f"{spec.name}-last"
    registry = export_fold_registry(
        train_dir, name, fold_dir / "models-last", threshold=0.5, checkpoint="last"
    )
    rows = []
    for stack_name in fold.test:
        out = segment(stacks[stack_name], name, registry, tta=args.tta, adapt_seconds=args.adapt_seconds)
        timing = out.timing(float(record.get("elapsed_seconds", math.nan)), record.get("epochs_completed"))
        row = score_row(
            f"{spec.name}@last{suffix}",
            fold,
            stacks[stack_name],
            out.decision,
            out.probabilities,
            out.threshold,
            timing,
        )
        rows.append(row)
        logger.info("%s fold %d %s: Dice %.3f", row["method"], fold.index, stack_name, row["dice"])
    scores_path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


# ------------------------------------------------------------------------------------- untrained methods


def stack_maps(spec: MethodSpec, stack: Stack, args) -> tuple[np.ndarray, np.ndarray, float, float]:
    """The method's own decision and score map of one stack (cached: they do not depend on the fold)."""
    cache = args.run_dir / spec.name / "stacks" / f"{stack.name}{variant_tag(args)}.npz"
    if cache.is_file():
        stored = np.load(cache)
        return (
            stored["decision"],
            stored["scores"].astype(np.float32),
            float(stored["threshold"]),
            float(stored["seconds"]),
        )
    registry = ModelRegistry.default()
    if args.registry:  # its names first, the shipped methods (frangi, ...) beside them
        extra = ModelRegistry.from_file(args.registry)
        if spec.name in {entry.name for entry in extra.entries()}:
            registry = extra
    decision, probabilities, threshold, seconds, _ = segment(
        stack, spec.name, registry, tta=args.tta, adapt_seconds=args.adapt_seconds
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    threshold = math.nan if threshold is None else float(threshold)
    np.savez_compressed(
        cache,
        decision=decision,
        scores=probabilities.astype(np.float16),
        threshold=threshold,
        seconds=seconds,
    )
    return decision, probabilities.astype(np.float16).astype(np.float32), threshold, seconds


def run_untrained(
    spec: MethodSpec, fold: Fold, stacks: dict[str, Stack], args, maps: dict[str, tuple]
) -> list[dict]:
    """``maps``: :func:`stack_maps` of every stack, read once for all folds."""
    suffix = variant_suffix(args)
    tuning = [*fold.training, *fold.validation]
    tuned, _ = best_threshold(
        [maps[n][1] for n in tuning], [stacks[n].reference for n in tuning], candidates=TUNING_CANDIDATES
    )
    rows = []
    for name in fold.test:
        decision, scores, _, seconds = maps[name]
        for label, mask, threshold in (
            (spec.name + suffix, decision, math.nan),  # the method's own (automatic) decision
            (f"{spec.name}+tuned{suffix}", scores > tuned, tuned),
        ):
            timing = cost_columns(seconds, 0.0, None)
            rows.append(score_row(label, fold, stacks[name], mask, scores, threshold, timing))
    return rows


# ---------------------------------------------------------------------------------------------- report


def summarise(rows: list[dict]) -> str:
    lines = [
        "| method | stack | fold | " + " | ".join(SCORE_KEYS) + " | threshold |",
        "| --- | --- | --- | " + " | ".join("---" for _ in SCORE_KEYS) + " | --- |",
    ]
    for row in sorted(rows, key=lambda r: (r["method"], r["fold"], r["stack"])):
        values = " | ".join(f"{row[k]:.3f}" if k != "hd95_um" else f"{row[k]:.1f}" for k in SCORE_KEYS)
        lines.append(
            f"| {row['method']} | {row['stack']} | {row['fold']} | {values} | {row['threshold']:.3g} |"
        )
    lines += [
        "",
        "threshold nan: the method's own automatic decision. HD95 in micrometres.",
        "",
        "Mean +- sd over held-out stacks (cross-validated):",
        "",
        "| method | stacks | " + " | ".join(SCORE_KEYS) + " | min Dice | train s/fold | segment s/stack |",
        "| --- | --- | " + " | ".join("---" for _ in SCORE_KEYS) + " | --- | --- | --- |",
    ]
    for method in sorted({r["method"] for r in rows}):
        chosen = [r for r in rows if r["method"] == method]
        cells = []
        for key in SCORE_KEYS:
            values = np.array([r[key] for r in chosen], dtype=float)
            values = values[np.isfinite(values)]
            fmt = "{:.1f} +- {:.1f}" if key == "hd95_um" else "{:.3f} +- {:.3f}"
            cells.append(
                fmt.format(values.mean(), values.std(ddof=1) if len(values) > 1 else 0.0)
                if len(values)
                else "n/a"
            )
        train = np.mean([r["train_s"] for r in chosen])
        seg = np.mean([r["segment_s"] for r in chosen])
        min_dice = min(r["dice"] for r in chosen)
        lines.append(
            f"| {method} | {len(chosen)} | "
            + " | ".join(cells)
            + f" | {min_dice:.3f} | {train:.0f} | {seg:.1f} |"
        )
    return "\n".join(lines)


def aggregate(rows: list[dict]) -> dict[str, dict]:
    """Per method: mean, sd and per-stack scores (the model card's ``cross_validation.scores``)."""
    result = {}
    for method in sorted({r["method"] for r in rows}):
        chosen = sorted((r for r in rows if r["method"] == method), key=lambda r: r["stack"])
        summary: dict = {"stacks": len(chosen), "mean": {}, "sd": {}}
        for key in SCORE_KEYS:
            values = np.array([r[key] for r in chosen], dtype=float)
            values = values[np.isfinite(values)]
            summary["mean"][key] = round(float(values.mean()), 4) if len(values) else None
            summary["sd"][key] = round(float(values.std(ddof=1)), 4) if len(values) > 1 else None
        summary["min_dice"] = round(min(r["dice"] for r in chosen), 4)
        summary["per_stack"] = {
            r["stack"]: {
                **{k: (round(r[k], 4) if math.isfinite(r[k]) else None) for k in SCORE_KEYS},
                "fold": r["fold"],
                "threshold": r["threshold"] if math.isfinite(r["threshold"]) else None,
            }
            for r in chosen
        }
        summary["train_seconds_per_fold"] = round(float(np.mean([r["train_s"] for r in chosen])), 1)
        result[method] = summary
    return result


def update_card(
    card_path: Path,
    label: str,
    rows: list[dict],
    folds: list[Fold],
    command: str,
    key: str = "cross_validation",
) -> None:
    """Write this run's cross-validated scores into a model card (``key``: ``cross_validation``, or e.g.
    ``cross_validation+adapt60`` for a run with inference options), the card's method first and every other
    method of the run beside it for comparison."""
    import platform

    import torch

    card = json.loads(card_path.read_text())
    scores = aggregate(rows)
    if label not in scores:
        raise SystemExit(f"error: --update-card names {label!r}, which this run did not score.")
    card[key] = {
        "what": "mean +- sd over whole VesselNN stacks held out of training, model selection and threshold "
        "choice (figure of record)",
        "method": label,
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "folds": [f.as_record() for f in folds],
        "scores": {label: scores[label], **{k: v for k, v in scores.items() if k != label}},
    }
    card_path.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")


def write_rows(rows: list[dict], paths: list[Path]) -> None:
    """The per-stack rows as CSV, one file per path (the run folder's, and --csv's)."""
    for path in paths:
        with path.open("w", newline="") as stream:
            # The union of the rows' columns (adapted rows have three more; cached rows may predate one).
            columns = list(dict.fromkeys(key for row in rows for key in row))
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", required=True, help="NAME (untrained) or NAME=CONFIG.toml")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--fold", type=int, action="append", help="run only this fold (repeatable)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold split")
    parser.add_argument("--data-root", type=Path, default=None, help="VesselNN folder")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/crossval"))
    parser.add_argument("--epochs", type=int, help="override the configurations' epochs (quick checks only)")
    parser.add_argument("--tta", action="store_true", help="score with test-time flips (models are reused)")
    parser.add_argument(
        "--train-on-validation",
        action="store_true",
        help="train each fold on its inner validation stack too (only watched, as the shipped 2PM model "
        "trains on every stack); refused for recipes that choose their epoch or threshold on it",
    )
    parser.add_argument(
        "--registry",
        type=Path,
        help="models.json to look bare NAME methods up in before the shipped registry, e.g. a model trained "
        "on phantoms only, for the cross-domain figure",
    )
    parser.add_argument(
        "--adapt-seconds",
        type=float,
        help="adapt each model to each held-out stack for this many seconds first (adaptive methods, e.g. UMIS; "
        "models are reused)",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads for inference")
    parser.add_argument("--train-threads", type=int, help="override the configurations' num_threads")
    parser.add_argument(
        "--update-card",
        metavar="CARD=METHOD",
        help="write the scores into a model card, e.g. Resources/Models/vnet-2pm.card.json=vnet-2pm",
    )
    parser.add_argument("--csv", type=Path, help="also write the per-stack rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    root = args.data_root or vesselnn_dir()
    args.data_root = root
    stacks = load_stacks(root)
    folds = make_folds(sorted(stacks), args.folds, seed=args.seed)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    folds_path = args.run_dir / "folds.json"
    folds_record = {"seed": args.seed, "folds": [f.as_record() for f in folds]}
    if folds_path.is_file() and json.loads(folds_path.read_text()) != folds_record:
        raise SystemExit(f"error: {args.run_dir} holds another split; use another --run-dir.")
    folds_path.write_text(json.dumps(folds_record, indent=1) + "\n")
    wanted = args.fold if args.fold else range(args.folds)
    specs = [MethodSpec.parse(text) for text in args.methods]
    rows: list[dict] = []
    untrained_maps: dict[str, dict[str, tuple]] = {}
    for spec in specs:
        for fold in folds:
            if fold.index in wanted:
                if spec.config is not None:
                    rows += run_trained(spec, fold, stacks, args)
                else:
                    if spec.name not in untrained_maps:
                        untrained_maps[spec.name] = {n: stack_maps(spec, stacks[n], args) for n in stacks}
                    rows += run_untrained(spec, fold, stacks, args, untrained_maps[spec.name])
            elif spec.config is not None:  # other folds' cached scores still belong in the table
                cached = method_dir(spec, args) / f"fold-{fold.index}" / f"scores{variant_tag(args)}.json"
                if cached.is_file():
                    rows += json.loads(cached.read_text())
    table = summarise(rows)
    print(table)
    command = shlex.join(["python", "benchmarks/crossval.py", *(argv or sys.argv[1:])])
    (args.run_dir / "summary.md").write_text(f"<!-- {command} -->\n{table}\n")
    if args.update_card:
        card_path, _, label = args.update_card.partition("=")
        update_card(
            Path(card_path), label, rows, folds, command, key="cross_validation" + variant_suffix(args)
        )
    write_rows(rows, [args.run_dir / "scores.csv", *([args.csv] if args.csv else [])])
    return 0


if __name__ == "__main__":
    sys.exit(main())
