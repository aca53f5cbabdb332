"""3D-SLD (3D vessels from 2D masks, no 3D label) against its ablations, a supervised 3D U-Net and Frangi on
held-out TOF-MRA phantoms.

    python benchmarks/sld_phantoms.py                                   # the default rows, seed 0
    python benchmarks/sld_phantoms.py --seeds 0 1 2                     # mean +- sd over three seeds
    python benchmarks/sld_phantoms.py --methods 3d-sld=trainer/configs/sld_tof.toml \\
        3d-sld-k16=trainer/configs/sld_tof.toml,model.arguments.clusters=16 --baselines frangi
    python benchmarks/sld_phantoms.py --quick                           # harness check (< 90 s, one thread)

Compared (one row per method; a trained method is trained once per ``--seeds`` entry, ``training.seed``):

- ``3d-sld``: ``trainer/configs/sld_tof.toml`` as shipped (notes ``3D-SLD.md`` 6.4-6.5): SLDNet widths
  8-16-32-64-64, 32^3 crops, 4 / 8 / 3 epochs of 25 iterations (375 iterations of one item), guided by the
  bundled 2D masks. The first method is the reference of every difference.
- ``3d-sld-no-ori``: the same with ``model.arguments.orientation_group = "none"`` (no orientation-equivariant
  blocks).
- ``3d-sld-no-consistency``: ``training.sld.consistency = false`` (no EMA-teacher consistency, eq. 10-12).
- ``3d-sld-no-refinement``: ``training.sld.stage_epochs = [4, 11, 0]``: no Reliability-Refinement (eq. 13-14),
  the same 15 epochs (stage 3's three moved into stage 2).
- ``unet3d`` (``--baselines``): the project's supervised trainer on the same training and validation
  phantoms *with their 3D labels* (any vessel class), UNet3D ``{in_channels = 1, base_channels = 8,
  levels = 3}``, soft Dice loss, 32^3 patches, batch 2, foreground fraction 0.5, the same number of optimiser
  steps as 3D-SLD (epochs x iterations per epoch of the first method: 15 x 25 = 375, i.e. 50 patches per
  epoch), best epoch and decision threshold chosen on the validation phantom. Its generated configuration is
  written to ``unet3d/seed-S/config.toml``.
- ``frangi`` (``--baselines``): the registry's Hessian vesselness with its own automatic threshold; nothing
  trained, one row per phantom.

Other ``--methods NAME=CONFIG.toml[,section.key=VALUE...]`` (TOML values; lists may hold commas) replace the
default four; every configuration must train and validate on TOF-MRA phantoms of one vessel class.

3D-SLD never reads a 3D label of any phantom: its trainer (``trainer.sld.trainer.SLDTrainer``) loads the
training and validation phantoms' images only, selects nothing with labels (the shipped model is the last
epoch, threshold fixed at 0.5) and is guided by the bundled 2D masks. The supervised ``unet3d`` reads the
training and validation phantoms' labels, by design: it is the "what labels buy" row (paper: 3D-SLD about
4 Dice points below a supervised 3D U-Net).

Test set: ``VesselSegLib.phantoms.make_phantom_case("TOF-MRA", (64, 128, 128), spacing_zyx=S, seed=s)`` for
seeds 5001-5004, S the first method's training voxel size (0.8, 0.5, 0.5 mm); no configuration may train or
validate on these seeds (checked). Truth: any vessel (class map > 0). Every model is exported
(``trainer.export.export_run``) to a one-entry registry of its own and run through
``VesselSegLib.inference.pipeline.segment_image`` (device cpu, modality TOF-MRA, the path users run); its
class map (the pipeline's threshold and small-component removal) is scored with ``VesselSegLib.metrics``:
Dice, clDice, precision, sensitivity (recall), Jaccard, HD95 (mm; inf for an empty prediction), and the
average precision (AP) of the probabilities, which does not depend on the decision threshold.

Reading the tables (printed, and written to ``summary.md``): the first gives, per method and seed, the means
over the test phantoms; the second the mean +- sd over seeds of those per-seed means (the figure of record;
"+- sd" needs two seeds or more, untrained rows have none), the differences to the first method, and which
of them exceed the seed spread (|delta| > sd(method) + sd(first); "n/a (one seed)" with one seed: then a
difference says nothing about seed noise). The third gives each 3D-SLD run's training time per stage and
per iteration (from ``train/training_log.csv``: epoch seconds, the label-free validation included), the
training threads and the machine.

Budget and runtime: 375 iterations per 3D-SLD model and seed (4 models) and 375 steps for the U-Net. On this
2-core CPU, one training thread, a 3D-SLD training is expected to take ~10-15 min (an estimate from the notes'
0.75 s per 32^3 iteration under load, not yet measured for this configuration: see the timing table of a
finished run), the U-Net ~2-5 min, scoring ~1 min per model: about 1 h per seed for the default rows.

Files under ``--run-dir`` (default ``runs/sld-tof-bench``; ``--quick``: ``runs/sld-tof-bench-quick``):
``summary.md`` (first line: the command), ``scores.csv`` (one row per method, seed and phantom),
``timing.csv``, ``benchmark.json`` (the test set; a run folder holds one), and per trained method
``NAME/seed-S/`` (``recipe.json``: the resolved configuration; ``config.toml``; the training run ``train/``;
the registry ``models/models.json``; ``scores.json``). Everything is cached: a rerun trains nothing whose
``train/run.json`` says finished, an interrupted training resumes from ``last_state.json``, and a changed
recipe under an old name is refused.

``--rendering noisy|strong-bias|low-contrast|thick-slices`` scores the same trained models on the test
phantoms shifted to another protocol (``benchmarks/rendering_shifts.py``: more noise, a stronger bias field,
weaker inflow contrast, thicker slices, each outside what the training renderer draws); its files are
``summary-NAME.md``, ``scores-NAME.csv`` and ``scores-NAME.json``. The domain-randomisation measurement of
issue #11 for TOF-MRA: ``--methods unet3d-artery=trainer/configs/unet3d_artery.toml
"unet3d-artery-randomised=trainer/configs/unet3d_artery.toml,training.randomisation={}" --baselines frangi``
once per rendering.

``--quick``: tiny everything, a smoke test of the harness (its scores mean nothing): 2 test phantoms of
32 x 48 x 48, 2 training phantoms of 32 x 48 x 48, SLDNet widths [4, 8, 8] (8 embedding channels,
4 clusters), 1 + 1 + 1 epochs of 1 iteration (a method without stage 3: 1 + 2 + 0), 4 references, 2
pseudo-label views, the U-Net 1 epoch of one batch.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
import os
import platform
import re
import shlex
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.config import PhantomSource, TrainConfig, parse_config
from trainer.loop import LOG_CSV, RUN_RECORD
from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.metrics import average_precision, evaluate_binary
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.request import SegmentationRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is no package
from crossval import MethodSpec, write_rows  # noqa: E402
from rendering_shifts import AS_RENDERED, RENDERINGS, shift_rendering  # noqa: E402
from rose_phantoms import (  # noqa: E402
    TrainedMethod,
    _check_recipe,
    method_dir,
    test_spacing,
    train_seed,
)
from seed_tables import aggregate_over_seeds, seed_comparison_cells, seed_table_header  # noqa: E402

logger = logging.getLogger("sld_phantoms")

REPO = Path(__file__).resolve().parents[1]
SLD_TOF = REPO / "trainer" / "configs" / "sld_tof.toml"
MODALITY = "TOF-MRA"
#: Held-out test phantoms; no configuration may train or validate on them.
TEST_SEEDS = (5001, 5002, 5003, 5004)
TEST_SHAPE_ZYX = (64, 128, 128)
BASELINES = ("unet3d", "frangi")
RESERVED_NAMES = {*BASELINES, "data"}
DEFAULT_METHODS = (
    f"3d-sld={SLD_TOF}",
    f'3d-sld-no-ori={SLD_TOF},model.arguments.orientation_group="none"',
    f"3d-sld-no-consistency={SLD_TOF},training.sld.consistency=false",
    f"3d-sld-no-refinement={SLD_TOF},training.sld.stage_epochs=[4, 11, 0]",
)
#: The supervised baseline's network (notes 6.4: the project's UNet3D, base 8, 3 levels).
UNET3D_ARGUMENTS = {"in_channels": 1, "base_channels": 8, "levels": 3}
UNET3D_BATCH = 2
SCORE_KEYS = ("dice", "cldice", "precision", "sensitivity", "jaccard", "hd95_mm", "ap")
HEADERS = {
    "dice": "Dice",
    "cldice": "clDice",
    "precision": "precision",
    "sensitivity": "sensitivity",
    "jaccard": "Jaccard",
    "hd95_mm": "HD95 mm",
    "ap": "AP",
}
DELTA_KEYS = ("dice", "cldice", "hd95_mm")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # registry names (trainer.export)

# Quick mode (a smoke test of the harness, --quick).
QUICK_TEST_SEEDS = TEST_SEEDS[:2]
QUICK_SHAPE_ZYX = (32, 48, 48)
QUICK_SLD_NETWORK = {"widths": [4, 8, 8], "embedding_channels": 8, "clusters": 4}


# ------------------------------------------------------------------------------------------ test phantoms


@dataclass(frozen=True)
class TestPhantom:
    """One held-out phantom: its raw image and the any-vessel truth, both (Z, Y, X), its voxel size (mm), and
    the brain mask every method is given (None: none given)."""

    seed: int
    image: np.ndarray
    reference: np.ndarray
    spacing_zyx: tuple[float, float, float]
    brain_mask: np.ndarray | None = None


def make_test_phantoms(
    seeds, shape_zyx, spacing_zyx, rendering: str = AS_RENDERED, brain_mask: bool = False
) -> list[TestPhantom]:
    """The held-out phantoms, as rendered or with one of ``rendering_shifts.SHIFTS`` (another protocol).

    With ``brain_mask`` every method gets the phantom's brain mask (as a user with a skull stripper would
    give it) and is scored inside it: the truth is the vessels inside the brain (the phantoms' trees reach
    a little beyond it).
    """
    phantoms = []
    for seed in seeds:
        case = make_phantom_case(MODALITY, tuple(shape_zyx), spacing_zyx=tuple(spacing_zyx), seed=seed)
        spacing = tuple(float(s) for s in case.spacing_zyx)
        image = shift_rendering(case.image, case.brain_mask, rendering, seed)
        mask = case.brain_mask if brain_mask else None
        reference = case.class_map > 0 if mask is None else (case.class_map > 0) & mask
        phantoms.append(TestPhantom(seed, image, reference, spacing, mask))
    return phantoms


def _output_name(stem: str, suffix: str, args) -> str:
    """``scores.json`` for the phantoms as rendered, ``scores-noisy.json`` for a shifted rendering."""
    return f"{stem}{suffix}" if args.rendering == AS_RENDERED else f"{stem}-{args.rendering}{suffix}"


# ---------------------------------------------------------------------------------------------- scoring


def score(result, phantom: TestPhantom) -> dict:
    """The scores of one ``segment_image`` result: its class map (any class) and its probabilities (AP)."""
    decision = result.class_map > 0
    metrics = evaluate_binary(decision, phantom.reference, phantom.spacing_zyx)
    scores = {k: float(metrics[k]) for k in SCORE_KEYS if k != "ap"}
    maps = [np.asarray(p, dtype=np.float32) for p in result.probabilities.values()]
    scores["ap"] = (
        float(average_precision(np.clip(np.max(maps, axis=0), 0.0, 1.0), phantom.reference))
        if maps
        else math.nan
    )
    return scores


def score_method(
    name: str, kind: str, registry: ModelRegistry, phantoms, extra: dict, thresholds: dict | None = None
) -> list[dict]:
    """Segment every test phantom as a user would, and score it; one row per phantom. ``thresholds``
    (class -> cut) overrides the model's, as ``SegmentationRequest.thresholds`` does for a user."""
    request = SegmentationRequest(
        modality=MODALITY, method=name, device="cpu", keep_probabilities=True, thresholds=thresholds or {}
    )
    rows = []
    for phantom in phantoms:
        started = time.monotonic()
        result = segment_image(
            phantom.image, phantom.spacing_zyx, request, brain_mask=phantom.brain_mask, registry=registry
        )
        seconds = round(time.monotonic() - started, 2)
        threshold = result.thresholds.get(result.vessel_classes[0]) if result.vessel_classes else None
        row = {"method": name, "kind": kind, **extra, "phantom": phantom.seed, **score(result, phantom)}
        row.update(threshold=threshold, segment_s=seconds)
        rows.append(row)
        logger.info("%s seed %s phantom %d: Dice %.3f", name, extra.get("seed"), phantom.seed, row["dice"])
    return rows


# --------------------------------------------------------------------------------------- trained methods


def toml_text(document: dict) -> str:
    """A TOML document of ``document`` (tables of scalars, lists and inline tables), checked by reading it back."""

    def key(name: str) -> str:
        return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)

    def value(item) -> str:
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | float):
            if not math.isfinite(item):
                raise ValueError(f"TOML of a configuration: {item!r} is not a finite number.")
            return repr(item)
        if isinstance(item, str):
            return json.dumps(item)
        if isinstance(item, list | tuple):
            return "[" + ", ".join(value(v) for v in item) + "]"
        if isinstance(item, dict):
            return (
                "{ " + ", ".join(f"{key(k)} = {value(v)}" for k, v in item.items()) + " }" if item else "{}"
            )
        raise ValueError(f"TOML of a configuration: cannot write {item!r}.")

    lines: list[str] = []

    def table(name: str, content: dict) -> None:
        lines.append(f"[{name}]")
        lines.extend(f"{key(k)} = {value(v)}" for k, v in content.items() if not isinstance(v, dict))
        lines.append("")
        for k, v in content.items():
            if isinstance(v, dict):
                table(f"{name}.{key(k)}", v)

    for name, content in document.items():
        table(key(name), content)
    text = "\n".join(lines)
    if tomllib.loads(text) != document:
        raise ValueError("TOML of a configuration does not read back the same; this is a bug.")
    return text


def is_sld(method: TrainedMethod) -> bool:
    return "sld" in method.document["training"]


def run_trained(method: TrainedMethod, seed: int, phantoms, args) -> list[dict]:
    """Train (or reuse) one seed's model and score it on the test phantoms (cached in ``scores.json``)."""
    seed_dir = method_dir(method.name, args) / f"seed-{seed}"
    document = method.seeded(seed)
    _check_recipe(seed_dir, document)  # refuse a changed recipe before writing anything
    config_path = seed_dir / "config.toml"
    if not config_path.is_file():  # the record of what was trained; recipe.json is what reruns compare
        record = {**document, "output": {"run_dir": str(seed_dir / "train")}}
        config_path.write_text(
            f"# {method.name}, seed {seed}: written by benchmarks/sld_phantoms.py.\n\n{toml_text(record)}"
        )
    registry_path = train_seed(method, seed, args)
    scores_path = seed_dir / _output_name("scores", ".json", args)
    if scores_path.is_file():
        return json.loads(scores_path.read_text())
    run = json.loads((seed_dir / "train" / RUN_RECORD).read_text())
    extra = {
        "seed": seed,
        "train_s": round(float(run.get("elapsed_seconds", math.nan)), 1),
        "best_epoch": run.get("best_epoch"),
    }
    registry = ModelRegistry.from_file(registry_path)
    rows = score_method(method.name, method.kind, registry, phantoms, extra)
    scores_path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def run_frangi(phantoms, args) -> list[dict]:
    path = args.run_dir / "frangi" / _output_name("scores", ".json", args)
    if path.is_file():
        return json.loads(path.read_text())
    extra = {"seed": None, "train_s": 0.0, "best_epoch": None}
    rows = score_method("frangi", "untrained", ModelRegistry.default(), phantoms, extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def unet3d_method(reference: TrainedMethod, quick: bool) -> TrainedMethod:
    """The supervised baseline: the reference's phantoms (labels read), UNet3D, the reference's optimiser
    steps (``quick``: one epoch of one step)."""
    training = reference.document["training"]
    steps = math.ceil(int(training["patches_per_epoch"]) / int(training.get("batch_size", 4)))
    epochs = int(training["epochs"])
    if quick:
        epochs, steps = 1, 1
    document = {
        "model": {"architecture": "UNet3D", "arguments": dict(UNET3D_ARGUMENTS)},
        "data": copy.deepcopy(reference.document["data"]),
        "training": {
            "epochs": epochs,
            "patches_per_epoch": steps * UNET3D_BATCH,
            "batch_size": UNET3D_BATCH,
            "patch_size_zyx": [32, 32, 32],
            "learning_rate": float(training.get("learning_rate", 1e-3)),
            "loss": "dice",
            "foreground_fraction": 0.5,
            "threshold_selection": "validation",
            "num_threads": int(training.get("num_threads", 2)),
            "device": training.get("device", "auto"),
            "cldice_every": 0,
        },
        "output": {"run_dir": "train"},
    }
    return TrainedMethod("unet3d", "supervised", document, reference.base_dir)


def quick_document(document: dict) -> dict:
    """``--quick``: the same recipe, tiny (module text)."""
    document = copy.deepcopy(document)
    for split, count in (("training", 2), ("validation", 1)):
        for source in document["data"][split]:
            source.update(count=count, shape_zyx=list(QUICK_SHAPE_ZYX))
    training = document["training"]
    training.update(patches_per_epoch=int(training.get("batch_size", 4)), num_threads=1)
    sld = training.get("sld")
    if sld is None:
        training["epochs"] = 1
    else:
        document["model"]["arguments"].update(copy.deepcopy(QUICK_SLD_NETWORK))
        stages = [1 if e > 0 else 0 for e in sld.get("stage_epochs", [1, 1, 1])]
        last = max(i for i, e in enumerate(stages) if e)  # a dropped stage's share goes to the last one run
        stages[last] += 3 - sum(stages)
        sld.update(stage_epochs=stages, reference_count=4, pseudo_label_views=2)
        training["epochs"] = sum(stages)
    return document


def parse_method(text: str) -> MethodSpec:
    """``NAME=CONFIG.toml[,section.key=VALUE...]`` as :class:`crossval.MethodSpec` (every method here trains)."""
    spec = MethodSpec.parse(text)
    if spec.config is None:
        raise SystemExit(
            f"error: bad --methods entry {text!r}; write NAME=CONFIG.toml[,section.key=VALUE...]."
        )
    return spec


def check_configuration(name: str, config: TrainConfig, test_seeds) -> None:
    """TOF-MRA phantoms of one vessel class, none of the test seeds."""
    if len(config.data.vessel_classes) != 1:
        raise SystemExit(
            f"error: method {name} predicts {config.data.vessel_classes}; the benchmark needs one."
        )
    for source in (*config.data.training, *config.data.validation):
        if not isinstance(source, PhantomSource) or source.modality != MODALITY:
            raise SystemExit(
                f"error: method {name} reads {source.describe()}; the benchmark needs TOF-MRA phantoms."
            )
        overlap = set(range(source.seed, source.seed + source.count)) & set(test_seeds)
        if overlap:
            raise SystemExit(f"error: method {name} uses the test phantoms' seeds {sorted(overlap)}.")


def read_methods(texts, quick: bool) -> list[TrainedMethod]:
    methods = []
    for text in texts:
        spec = parse_method(text)
        if not _NAME.match(spec.name) or spec.name in RESERVED_NAMES:
            raise SystemExit(
                f"error: method name {spec.name!r} must hold only letters, digits, '.', '_' and '-' and not be "
                f"one of {sorted(RESERVED_NAMES)}."
            )
        base_dir = spec.config.resolve().parent
        try:
            document = spec.document()
            if quick:
                document = quick_document(document)
            config = parse_config(copy.deepcopy(document), base_dir=base_dir)
        except (ValueError, tomllib.TOMLDecodeError) as error:
            raise SystemExit(f"error: method {spec.name}: {error}") from None
        check_configuration(spec.name, config, TEST_SEEDS)
        document["training"].pop("seed", None)
        kind = "3d-sld" if config.training.sld is not None else "supervised"
        methods.append(TrainedMethod(spec.name, kind, document, base_dir))
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise SystemExit(f"error: --methods names must be distinct, got {names}.")
    return methods


# ---------------------------------------------------------------------------------------------- timing


def stage_timing(method: TrainedMethod, seed: int, args) -> dict:
    """Seconds per stage and per iteration of one 3D-SLD run, from its training log and run record."""
    train_dir = method_dir(method.name, args) / f"seed-{seed}" / "train"
    run = json.loads((train_dir / RUN_RECORD).read_text())
    iterations = int(run.get("sld", {}).get("iterations_per_epoch", 0)) or math.nan
    with (train_dir / LOG_CSV).open(newline="") as stream:
        log = list(csv.DictReader(stream))
    row = {"method": method.name, "seed": seed}
    for stage in (1, 2, 3):
        chosen = [r for r in log if int(float(r["stage"])) == stage]
        seconds = sum(float(r["seconds"]) for r in chosen)
        row[f"stage{stage}_epochs"] = len(chosen)
        row[f"stage{stage}_s"] = round(seconds, 1)
        row[f"stage{stage}_s_per_iteration"] = (
            round(seconds / (len(chosen) * iterations), 3) if chosen else math.nan
        )
    total = sum(float(r["seconds"]) for r in log)
    row["iterations"] = len(log) * iterations
    row["s_per_iteration"] = round(total / row["iterations"], 3) if log else math.nan
    row["train_s"] = round(float(run.get("elapsed_seconds", math.nan)), 1)
    row["train_threads"] = run.get("machine", {}).get("torch_threads")
    row["device"] = run.get("machine", {}).get("device")
    return row


def machine_line(args) -> str:
    import torch

    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), flags=re.MULTILINE)
        model = f", {names[0].strip()}" if names else ""
    return (
        f"Machine: {platform.processor() or platform.machine()}{model}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}, inference threads {args.threads}, load average "
        f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} when the table was written."
    )


# ---------------------------------------------------------------------------------------------- report


def aggregate(rows: list[dict]) -> dict[str, dict]:
    """Per method: per-seed means over the phantoms, then mean and sd over the seeds; inf (an empty
    prediction's HD95) stays in the means."""
    return aggregate_over_seeds(rows, SCORE_KEYS, untrained_kinds=("untrained",), keep_infinite=True)


def _fmt(value: float, key: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.1f}" if key == "train_s" else f"{value:.2f}" if key == "hd95_mm" else f"{value:.3f}"


def summarise(rows: list[dict], timing: list[dict], first: str, test_set: dict, recipes: dict, args) -> str:
    methods = aggregate(rows)
    keys = SCORE_KEYS
    shape = " x ".join(map(str, test_set["shape_zyx"]))
    seeds = test_set["seeds"]
    lines = [
        f"3D-SLD benchmark{' (--quick: scores mean nothing)' if args.quick else ''}: {len(seeds)} held-out "
        f"TOF-MRA phantoms {shape} at {test_set['spacing_zyx']} mm (seeds {seeds[0]}-{seeds[-1]}), "
        f"{'as rendered' if args.rendering == AS_RENDERED else f'rendering shifted: {args.rendering}'}, "
        "scored against any vessel (class map > 0) through segment_image"
        + (
            ", every method given the brain mask and scored inside it." if test_set.get("brain_mask") else "."
        ),
        "",
        "Per method and seed, means over the test phantoms:",
        "",
        "| method | seed | " + " | ".join(HEADERS[k] for k in keys) + " | train s |",
        "| --- | --- | " + " | ".join("---" for _ in keys) + " | --- |",
    ]
    for method, summary in methods.items():
        for seed, means in summary["per_seed"].items():
            cells = " | ".join(_fmt(means[k], k) for k in keys)
            lines.append(
                f"| {method} | {'' if seed is None else seed} | {cells} | {_fmt(means['train_s'], 'train_s')} |"
            )
    lines += seed_table_header(first, keys, DELTA_KEYS, HEADERS, ("train s/seed",))
    for method, summary in methods.items():
        reference = None if method == first else methods.get(first)
        # "+- sd" needs two seeds (one seed has no sd); HD95 mm is shown with two decimals
        cells, deltas, verdict = seed_comparison_cells(
            summary, reference, keys, DELTA_KEYS, HEADERS, _fmt, two_decimal_keys=("hd95_mm",), min_seeds=2
        )
        lines.append(
            f"| {method} | {summary['seeds'] or ''} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(deltas)
            + f" | {verdict} | {_fmt(summary['mean']['train_s'], 'train_s')} |"
        )
    lines += [
        "",
        "3D-SLD training time per stage (epoch seconds of train/training_log.csv, label-free validation "
        "included; s/it: per iteration):",
        "",
        "| method | seed | stage 1 s | s/it | stage 2 s | s/it | stage 3 s | s/it | iterations | s/it overall "
        "| train s | train threads | device |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in timing:
        stages = " | ".join(
            f"{row[f'stage{s}_s']:.1f} | {_fmt(row[f'stage{s}_s_per_iteration'], 's')}" for s in (1, 2, 3)
        )
        lines.append(
            f"| {row['method']} | {row['seed']} | {stages} | {row['iterations']} | "
            f"{_fmt(row['s_per_iteration'], 's')} | {_fmt(row['train_s'], 'train_s')} | "
            f"{row['train_threads']} | {row['device']} |"
        )
    lines += [
        "",
        machine_line(args),
        "",
        "Recipes (3D-SLD rows read no 3D label; unet3d reads the training phantoms' labels, by design):",
        "",
        *(f"- {name}: `{text}`" for name, text in recipes.items()),
        "",
        "beyond seed spread: the metrics whose |delta| exceeds sd(method) + sd(first method) over seeds (frangi "
        "has sd 0). AP: of the probabilities (threshold-free); the other scores: of the class map.",
    ]
    return "\n".join(lines)


def _recipe_label(text: str) -> str:
    """A --methods entry with the repository's path shortened, for the summary."""
    return text.replace(str(REPO) + os.sep, "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        nargs="+",
        help="NAME=CONFIG.toml[,section.key=VALUE...] (default: 3d-sld and its three ablations)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training.seed of every model")
    parser.add_argument("--run-dir", type=Path, help="default runs/sld-tof-bench (--quick: ...-quick)")
    parser.add_argument("--baselines", nargs="*", choices=BASELINES, default=list(BASELINES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads for inference")
    parser.add_argument(
        "--train-threads", type=int, default=1, help="torch threads for training (not part of the recipe)"
    )
    parser.add_argument(
        "--rendering",
        choices=RENDERINGS,
        default=AS_RENDERED,
        help="score on the test phantoms as rendered (default) or shifted to another protocol "
        "(benchmarks/rendering_shifts.py); the trained models are shared",
    )
    parser.add_argument(
        "--brain-mask",
        action="store_true",
        help="give every method the test phantoms' brain masks and score inside them (needed by models "
        "trained on skull-stripped phantoms, skull_strip = true)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny everything: a smoke test of the harness")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    if args.run_dir is None:
        args.run_dir = Path("runs/sld-tof-bench-quick" if args.quick else "runs/sld-tof-bench")
    args.epochs, args.modality = None, MODALITY  # what rose_phantoms' train_seed reads
    texts = args.methods or list(DEFAULT_METHODS)
    methods = read_methods(texts, args.quick)
    recipes = {m.name: _recipe_label(t) for m, t in zip(methods, texts, strict=True)}
    reference = methods[0]
    baseline = unet3d_method(reference, args.quick) if "unet3d" in args.baselines else None
    if baseline is not None:
        config = parse_config(copy.deepcopy(baseline.document), base_dir=baseline.base_dir)
        check_configuration(baseline.name, config, TEST_SEEDS)
        training = baseline.document["training"]
        recipes[baseline.name] = (
            f"UNet3D {json.dumps(UNET3D_ARGUMENTS)} on {methods[0].name}'s phantoms with their labels, "
            f"{training['epochs']} epoch(s) x {training['patches_per_epoch'] // UNET3D_BATCH} step(s) of batch "
            f"{UNET3D_BATCH}, Dice loss, threshold chosen on validation; unet3d/seed-S/config.toml"
        )
        methods.append(baseline)
    reference_config = parse_config(copy.deepcopy(reference.document), base_dir=reference.base_dir)
    test_set = {
        "seeds": list(QUICK_TEST_SEEDS if args.quick else TEST_SEEDS),
        "shape_zyx": list(QUICK_SHAPE_ZYX if args.quick else TEST_SHAPE_ZYX),
        "spacing_zyx": list(test_spacing(reference_config, MODALITY)),
    }
    if args.brain_mask:  # scored inside the brain: not comparable with a run folder scored on whole volumes
        test_set["brain_mask"] = True
    args.run_dir.mkdir(parents=True, exist_ok=True)
    record_path = args.run_dir / "benchmark.json"
    if record_path.is_file() and json.loads(record_path.read_text()) != test_set:
        raise SystemExit(
            f"error: {args.run_dir} holds another test set ({record_path}); use another --run-dir."
        )
    record_path.write_text(json.dumps(test_set, indent=1) + "\n")
    phantoms = make_test_phantoms(
        test_set["seeds"], test_set["shape_zyx"], test_set["spacing_zyx"], args.rendering, args.brain_mask
    )
    rows: list[dict] = []
    timing: list[dict] = []
    for method in methods:
        for seed in args.seeds:
            rows += run_trained(method, seed, phantoms, args)
            if is_sld(method):
                timing.append(stage_timing(method, seed, args))
    if "frangi" in args.baselines:
        rows += run_frangi(phantoms, args)
    table = summarise(rows, timing, reference.name, test_set, recipes, args)
    print(table)
    command = shlex.join(
        ["python", "benchmarks/sld_phantoms.py", *(argv if argv is not None else sys.argv[1:])]
    )
    (args.run_dir / _output_name("summary", ".md", args)).write_text(f"<!-- {command} -->\n{table}\n")
    write_rows(rows, [args.run_dir / _output_name("scores", ".csv", args)])
    if timing:
        write_rows(timing, [args.run_dir / "timing.csv"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
