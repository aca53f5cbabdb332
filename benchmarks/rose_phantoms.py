"""ROSE (2x super-resolution segmentation) against its baselines on held-out phantoms degraded the paper's way.

    python benchmarks/rose_phantoms.py                                  # TOF-MRA: rose, rose-nosr, every baseline
    python benchmarks/rose_phantoms.py --modality SWI --run-dir runs/rose-swi   # SWI, rose_swi.toml
    python benchmarks/rose_phantoms.py --methods rose=trainer/configs/rose_tof.toml \\
        rose-lambda0=trainer/configs/rose_tof.toml,training.super_resolution.image_loss_weight=0.0
    python benchmarks/rose_phantoms.py --seeds 0 --baselines preint lrseg            # one seed, two baselines
    python benchmarks/rose_phantoms.py --epochs 2 --seeds 0 --run-dir runs/rose-quick  # harness check only

Test data: the phantoms ``VesselSegLib.phantoms.make_phantom_case(modality, --test-shape, seed=s)`` for seeds
5001-5004 (never trained on: every configuration's phantom seeds are checked), at the training phantoms'
voxel size. Each one's high-resolution (HR) image is normalised as the trainer does
(``normalize_intensity``; SWI inside the brain mask), degraded whole by ``simulate_low_resolution`` with the
first method's ``[training.super_resolution]`` (k-space truncation, then r x r x r block means; r = 2) and
cropped to r x the LR shape, as ``trainer.super_resolution.make_paired_case`` does. The LR volume's voxel
size is r x the HR one. Every segmentation is scored on the HR grid against the HR "any vessel" label (the
configurations' class remap: every phantom class -> the one class), over the whole cropped volume. LR inputs
are handed to the pipeline in the modality's own contrast (SWI: dark veins, ``1 - image``), so that its
normalisation (which inverts SWI) sees what a scanner gives it; SWI inputs come with their brain mask (the
LR one: block mean >= 0.5), as the pipeline asks of SWI users.

Rows (a method trained per seed has one row per seed and test phantom in ``scores.csv``):

- ``NAME`` (each ``--methods NAME=CONFIG.toml[,section.key=VALUE...]``, TOML values; the first one is the
  reference of the differences): trained by the trainer (``trainer.loop.run_training``) on the
  configuration's phantoms, seed ``training.seed`` = each of ``--seeds``, exported (``trainer.export``) to a
  registry of its own, and run on the LR test volume through ``segment_image``, the 2x-grid path users run;
  its class map (threshold and small-component removal of the pipeline) is scored. PSNR: its
  ``super_resolved`` image (none without an SR stream) against the normalised HR image, eq. (6).
- ``b-lrseg``: "segment at low resolution, then upsample": a UNet3D trained on (LR image, LR label = block mean
  of the HR label >= 0.5) at the LR patch size (the ROSE input patch); tested through ``segment_image`` on
  the LR volume, its probabilities upsampled x2 trilinearly (voxel-box grid, = ``align_corners=False``),
  then the model's threshold (0.5) and the pipeline's small-component removal on the HR grid.
- ``b-lrseg-nearest``: the same model's LR class map, every voxel repeated 2 x 2 x 2.
- ``b-preint`` (the paper's Table 2 protocol): LR -> trilinear x2; a UNet3D trained, validated and tested on
  the interpolated volumes against the HR labels at the HR patch size.
- ``ceiling-hr``: a UNet3D trained and tested on the true HR images: what the phantoms allow, not a
  competitor.
- ``frangi-preint``: the registry's ``frangi`` through ``segment_image`` on the trilinear x2 image (its own
  automatic threshold; nothing trained, one row).
- ``trilinear``, ``cubic``: PSNR only, of the trilinear / cubic-spline (``scipy.ndimage.zoom`` order 3,
  ``grid_mode=True``) x2 interpolation of the LR image: the references for the SR images' PSNR.

The baselines' data are NRRD files written under ``--run-dir``/data from the first method's phantoms and
degradation (the same cases, the same LR volumes), read back through ``files`` sources; their configurations
are built here from the first method's ``[training]`` table: the same epochs, patches per epoch, batch,
optimiser, learning-rate schedule, foreground fraction and fixed 0.5 threshold, ``--baseline-network``
(default the project's UNet3D, base 8, 3 levels). One difference remains: a file case draws its uniform
(background) patch centres from the whole volume, a phantom case from the brain and vessels' box.

Normalisation: the pipeline normalises every input itself (percentiles of the LR volume; SWI inverted
inside the LR brain mask), and the ROSE trainer normalises its simulated LR inputs the same way
(``trainer.super_resolution.make_paired_case``), so training and test see the same scale. The file-trained
baselines are normalised the same way in training and in use for TOF-MRA; for SWI nearly so (a file source
has no mask: their training volumes are normalised over the whole volume, their test inputs inside the
brain mask). ROSE's SR image is on the HR training scale, the scale PSNR is computed on.

Budget (the ROSE configurations, notes section 6): 40 epochs x 400 patches, batch 4, i.e. 4,000 steps per
model and seed, the same for every trained row. Measured training steps (one thread, late 2026): slim ROSE
0.39 s, ROSE without SR stream 0.10 s, the UNet3D at 16 x 64 x 64 (B-preint, ceiling) 0.20 s, at 8 x 32 x 32
(B-LRseg) 0.025 s: ~26, ~7, ~13 and ~2 min per model, plus ~1 min of validation and a few seconds of scoring.
The defaults (rose, rose-nosr and the three trained baselines, 3 seeds: 15 models) take about 3 hours per
modality on 2 cores; the timing rows add about a minute.

Printed and written to ``--run-dir`` (default ``runs/rose``): per method and seed the means over the test
phantoms, then per method mean +- sd over the seeds (of those per-seed means; the figure of record), the
difference to the first method and whether it exceeds the seed spread (|delta| > sd(method) + sd(first)),
and the seconds ``segment_image`` takes (with the method's interpolation or upsampling) for one
224 x 224 x 64 LR volume of random values, once, after a warm-up (``--timing-shape``). Files:
``summary.md``, ``scores.csv`` (one row per method, seed and phantom), ``benchmark.json`` (the test set; a run
folder holds one), and per method ``NAME/seed-S/`` (``recipe.json``, the training run ``train/``, the registry
``models/models.json``, ``scores.json``). A rerun reuses everything it finds (nothing is trained twice), an
interrupted training resumes, and a changed recipe under an old name is refused; ``--epochs`` (quick checks)
trains into ``NAME-epochsN/`` instead.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.config import PHANTOM_LABELS, PhantomSource, SuperResolutionSpec, TrainConfig, parse_config
from trainer.datasets import load_cases
from trainer.export import export_run
from trainer.loop import RUN_RECORD
from trainer.super_resolution import make_paired_case
from VesselSegLib.inference.pipeline import SegmentationResult, segment_image
from VesselSegLib.io import Volume, write_volume
from VesselSegLib.methods.super_resolution import SUPER_RESOLVED_IMAGE
from VesselSegLib.metrics import evaluate_binary, sensitivity
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.phantoms.cases import MODALITY_DEFAULT_SPACING_ZYX
from VesselSegLib.postprocessing import build_class_map
from VesselSegLib.preprocessing import get_preset, normalize_intensity
from VesselSegLib.preprocessing.low_resolution import block_mean, simulate_low_resolution
from VesselSegLib.request import SegmentationRequest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is no package
from crossval import MethodSpec, train_or_resume, write_rows  # noqa: E402
from seed_tables import aggregate_over_seeds, seed_comparison_cells, seed_table_header  # noqa: E402

logger = logging.getLogger("rose_phantoms")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = {
    "TOF-MRA": REPO / "trainer" / "configs" / "rose_tof.toml",
    "SWI": REPO / "trainer" / "configs" / "rose_swi.toml",
}
#: Held-out test phantoms (the README's four); no configuration may train or validate on them.
TEST_SEEDS = (5001, 5002, 5003, 5004)
BASELINES = ("lrseg", "preint", "ceiling", "frangi")
#: Row names of the baselines (and of their cache folders).
BASELINE_NAMES = {
    "lrseg": "b-lrseg",
    "preint": "b-preint",
    "ceiling": "ceiling-hr",
    "frangi": "frangi-preint",
}
RESERVED_NAMES = {*BASELINE_NAMES.values(), "b-lrseg-nearest", "trilinear", "cubic", "data"}
#: The project's UNet3D (notes, section 6: 85,035 parameters, 0.78 GMAC at 16 x 64 x 64).
DEFAULT_BASELINE_NETWORK = {"in_channels": 1, "base_channels": 8, "levels": 3, "pool_z": True}
SCORE_KEYS = ("dice", "cldice", "precision", "sensitivity", "jaccard", "micro_recall", "psnr_db")
HEADERS = {
    "dice": "Dice",
    "cldice": "clDice",
    "precision": "precision",
    "sensitivity": "sensitivity",
    "jaccard": "Jaccard",
    "micro_recall": "micro recall",
    "psnr_db": "PSNR dB",
}
DELTA_KEYS = ("dice", "cldice", "psnr_db")
_NAME = re.compile(r"^[A-Za-z0-9._-]+$")  # registry names (trainer.export)


# ------------------------------------------------------------------------------------------ test phantoms


@dataclass(frozen=True)
class TestPhantom:
    """One held-out phantom: the HR truth and its simulated LR input, all arrays (Z, Y, X).

    ``hr_image`` (normalised, the PSNR ground truth), ``raw_image`` (as rendered, the ceiling's input),
    ``reference`` (any vessel), ``micro`` and ``brain_mask`` are on the HR grid cropped to ``r`` x the LR
    shape; ``low_image`` (normalised, bright vessels) and ``low_brain_mask`` on the LR grid.
    """

    seed: int
    hr_image: np.ndarray
    raw_image: np.ndarray
    low_image: np.ndarray
    reference: np.ndarray
    micro: np.ndarray
    brain_mask: np.ndarray
    low_brain_mask: np.ndarray
    spacing_zyx: tuple[float, float, float]
    downsample: int

    @property
    def low_spacing_zyx(self) -> tuple[float, float, float]:
        return tuple(self.downsample * s for s in self.spacing_zyx)


def upsample(volume: np.ndarray, factor: int, order: int) -> np.ndarray:
    """``factor`` x finer on every axis, on the voxel-box grid (fine voxel ``i`` at coarse ``(i + 0.5) / r - 0.5``,
    the grid of ``low_resolution_index_to_world``): order 1 is trilinear with ``align_corners=False``, order 3
    the cubic spline; the edges are extended by their last value."""
    from scipy import ndimage

    return ndimage.zoom(
        np.asarray(volume, dtype=np.float32), factor, order=order, grid_mode=True, mode="nearest"
    ).astype(np.float32, copy=False)


def as_acquired(image: np.ndarray, modality: str) -> np.ndarray:
    """A normalised (bright-vessel) image in the modality's own contrast: SWI veins dark again (``1 - image``),
    so that the pipeline's normalisation, which inverts SWI, gives back the image up to its percentile scaling."""
    return image if get_preset(modality).vessels_bright else (np.float32(1.0) - image).astype(np.float32)


def make_test_phantom(
    seed: int,
    modality: str,
    shape_zyx: tuple[int, int, int],
    spacing_zyx: tuple[float, float, float],
    spec: SuperResolutionSpec,
    class_remap: dict[str, str],
    vessel_class: str,
) -> TestPhantom:
    """The phantom of ``seed``, normalised as the trainer does and degraded as ``make_paired_case`` does."""
    phantom = make_phantom_case(modality, shape_zyx, spacing_zyx=spacing_zyx, seed=seed)
    mask = None if get_preset(modality).vessels_bright else phantom.brain_mask
    high = normalize_intensity(phantom.image, modality, mask)
    r = spec.downsample
    low = simulate_low_resolution(
        high, truncation_zyx=spec.truncation_zyx, downsample=r, kept_fraction=spec.kept_fraction
    ).astype(np.float32)
    crop = tuple(slice(0, r * n) for n in low.shape)
    class_map = phantom.class_map[crop]
    labels = [v for name, v in PHANTOM_LABELS.items() if class_remap.get(name, name) == vessel_class]
    brain = phantom.brain_mask[crop]
    return TestPhantom(
        seed=seed,
        hr_image=np.ascontiguousarray(high[crop]),
        raw_image=np.ascontiguousarray(phantom.image[crop]),
        low_image=low,
        reference=np.isin(class_map, labels),
        micro=class_map == PHANTOM_LABELS["micro"],
        brain_mask=brain,
        low_brain_mask=block_mean(brain.astype(np.float32), r) >= 0.5,
        spacing_zyx=tuple(float(s) for s in phantom.spacing_zyx),
        downsample=r,
    )


def timing_phantom(low_shape_zyx, spacing_zyx, downsample: int) -> TestPhantom:
    """Random values of the LR shape (and of the HR shape, for the ceiling): what timing needs, no truth."""
    rng = np.random.default_rng(0)
    high_shape = tuple(downsample * n for n in low_shape_zyx)
    high_mask = np.ones(high_shape, dtype=bool)
    return TestPhantom(
        seed=-1,
        hr_image=np.zeros(0, dtype=np.float32),
        raw_image=rng.random(high_shape, dtype=np.float32),
        low_image=rng.random(tuple(low_shape_zyx), dtype=np.float32),
        reference=high_mask,
        micro=high_mask,
        brain_mask=high_mask,
        low_brain_mask=np.ones(tuple(low_shape_zyx), dtype=bool),
        spacing_zyx=tuple(spacing_zyx),
        downsample=downsample,
    )


# ---------------------------------------------------------------------------------------------- scoring


def psnr_db(image: np.ndarray, truth: np.ndarray) -> float:
    """Eq. (6): ``10 log10(max(GT)^2 / MSE)``, GT the normalised HR image."""
    mse = float(np.mean((np.asarray(image, dtype=np.float64) - truth) ** 2))
    peak = float(np.max(truth))
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def score(decision: np.ndarray | None, phantom: TestPhantom, sr_image: np.ndarray | None) -> dict:
    """The scores of one HR decision (None: an interpolation row, PSNR only) and SR image (None: none)."""
    result = dict.fromkeys(SCORE_KEYS, math.nan)
    if decision is not None:
        metrics = evaluate_binary(decision, phantom.reference, phantom.spacing_zyx, distances=False)
        result.update(
            {k: float(metrics[k]) for k in ("dice", "cldice", "precision", "sensitivity", "jaccard")}
        )
        if phantom.micro.any():
            result["micro_recall"] = float(sensitivity(decision, phantom.micro))
    if sr_image is not None:
        result["psnr_db"] = psnr_db(sr_image, phantom.hr_image)
    return result


def _segment(image, spacing_zyx, mask, method: str, registry: ModelRegistry, modality: str):
    request = SegmentationRequest(modality=modality, method=method, device="cpu", keep_probabilities=True)
    mask = None if get_preset(modality).vessels_bright else mask
    return segment_image(image, spacing_zyx, request, brain_mask=mask, registry=registry)


def _lrseg_decisions(result: SegmentationResult, phantom: TestPhantom, modality: str):
    """B-LRseg: the LR probabilities upsampled x2 trilinearly, then threshold and clean-up on the HR grid; and
    the LR class map repeated (nearest)."""
    name = result.vessel_classes[0]
    r = phantom.downsample
    fine = np.clip(upsample(result.probabilities[name], r, order=1), 0.0, 1.0)
    class_map = build_class_map(
        {name: fine},
        spacing_zyx=phantom.spacing_zyx,
        thresholds=result.thresholds,
        min_component_mm3=get_preset(modality).default_min_component_mm3,
    )
    nearest = result.class_map
    for axis in range(3):
        nearest = nearest.repeat(r, axis)
    return class_map > 0, nearest > 0


def predict(kind: str, name: str, registry: ModelRegistry, phantom: TestPhantom, modality: str) -> list:
    """``[(row name, HR decision, SR image or None), ...]`` of one method on one phantom, as a user runs it."""
    r = phantom.downsample
    low = as_acquired(phantom.low_image, modality)
    if kind == "sr":
        result = _segment(low, phantom.low_spacing_zyx, phantom.low_brain_mask, name, registry, modality)
        return [(name, result.class_map > 0, result.images.get(SUPER_RESOLVED_IMAGE))]
    if kind == "lrseg":
        result = _segment(low, phantom.low_spacing_zyx, phantom.low_brain_mask, name, registry, modality)
        upsampled, nearest = _lrseg_decisions(result, phantom, modality)
        return [(name, upsampled, None), (f"{name}-nearest", nearest, None)]
    if kind in ("preint", "frangi"):
        method = "frangi" if kind == "frangi" else name
        image = as_acquired(upsample(phantom.low_image, r, order=1), modality)
        result = _segment(image, phantom.spacing_zyx, phantom.brain_mask, method, registry, modality)
        return [(name, result.class_map > 0, None)]
    if kind == "ceiling":
        result = _segment(
            phantom.raw_image, phantom.spacing_zyx, phantom.brain_mask, name, registry, modality
        )
        return [(name, result.class_map > 0, None)]
    raise ValueError(f"Unknown method kind {kind!r}.")


def score_method(kind, name, registry, phantoms, modality, extra: dict) -> list[dict]:
    rows = []
    for phantom in phantoms:
        started = time.monotonic()
        outputs = predict(kind, name, registry, phantom, modality)
        seconds = round(time.monotonic() - started, 2)
        for label, decision, sr_image in outputs:
            rows.append(
                {
                    "method": label,
                    "kind": kind,
                    **extra,
                    "phantom": phantom.seed,
                    **score(decision, phantom, sr_image),
                    "segment_s": seconds,
                }
            )
        first = rows[-len(outputs)]
        logger.info("%s seed %s phantom %d: Dice %.3f", name, extra.get("seed"), phantom.seed, first["dice"])
    return rows


def interpolation_rows(phantoms: list[TestPhantom]) -> list[dict]:
    """PSNR of plain x2 interpolation of the LR image: the reference rows of the SR images."""
    rows = []
    for phantom in phantoms:
        for label, order in (("trilinear", 1), ("cubic", 3)):
            image = upsample(phantom.low_image, phantom.downsample, order=order)
            rows.append(
                {
                    "method": label,
                    "kind": "interpolation",
                    "seed": None,
                    "train_s": 0.0,
                    "best_epoch": None,
                    "phantom": phantom.seed,
                    **score(None, phantom, image),
                    "segment_s": math.nan,
                }
            )
    return rows


# --------------------------------------------------------------------------------------- trained methods


@dataclass(frozen=True)
class TrainedMethod:
    """A method trained per seed: its row name, how it is run (``predict``), its recipe and its folder."""

    name: str
    kind: str  # "sr", "lrseg", "preint", "ceiling"
    document: dict  # the configuration, without the seed
    base_dir: Path  # what relative paths of the document resolve against

    def seeded(self, seed: int) -> dict:
        document = copy.deepcopy(self.document)
        document["training"]["seed"] = int(seed)
        return document


def method_dir(name: str, args) -> Path:
    """Where a trained method's seeds live; an --epochs override gets its own folder (never mixed)."""
    return args.run_dir / (name if args.epochs is None else f"{name}-epochs{args.epochs}")


def _check_recipe(seed_dir: Path, document: dict) -> None:
    """Remember what a seed folder was trained with; refuse to reuse it for another recipe."""
    recipe = json.loads(json.dumps({k: v for k, v in document.items() if k != "output"}, sort_keys=True))
    path = seed_dir / "recipe.json"
    if path.is_file():
        if json.loads(path.read_text()) != recipe:
            raise SystemExit(
                f"error: {seed_dir} was trained with another configuration than the one given now; give the "
                "method another NAME, another --run-dir, or delete that folder to retrain."
            )
        return
    seed_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recipe, indent=1, sort_keys=True) + "\n")


def train_seed(method: TrainedMethod, seed: int, args) -> Path:
    """Train (or resume, or reuse) one seed's model; returns its registry file (``models/models.json``)."""
    import torch

    seed_dir = method_dir(method.name, args) / f"seed-{seed}"
    document = method.seeded(seed)
    _check_recipe(seed_dir, document)
    models_dir = seed_dir / "models"
    registry_path = models_dir / "models.json"
    if registry_path.is_file():
        return registry_path
    train_dir = seed_dir / "train"
    config = parse_config(document, base_dir=method.base_dir, source_path=None)
    config = config.with_overrides(run_dir=train_dir, epochs=args.epochs)
    description = f"{method.name} seed {seed}: training"
    if train_or_resume(config, train_dir, train_threads=args.train_threads, description=description):
        torch.set_num_threads(args.threads)  # the trainer set its own
    entry = export_run(train_dir, name=method.name, out_dir=models_dir, modalities=[args.modality])
    registry_path.write_text(json.dumps({"schema_version": 1, "models": [entry]}, indent=2) + "\n")
    return registry_path


def run_trained(method: TrainedMethod, seed: int, phantoms: list[TestPhantom], args) -> list[dict]:
    seed_dir = method_dir(method.name, args) / f"seed-{seed}"
    registry_path = train_seed(method, seed, args)
    scores_path = seed_dir / "scores.json"
    if scores_path.is_file():
        return json.loads(scores_path.read_text())
    record = json.loads((seed_dir / "train" / RUN_RECORD).read_text())
    extra = {
        "seed": seed,
        "train_s": round(float(record.get("elapsed_seconds", math.nan)), 1),
        "best_epoch": record.get("best_epoch"),
    }
    registry = ModelRegistry.from_file(registry_path)
    rows = score_method(method.kind, method.name, registry, phantoms, args.modality, extra)
    scores_path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def run_frangi(phantoms: list[TestPhantom], args) -> list[dict]:
    path = args.run_dir / BASELINE_NAMES["frangi"] / "scores.json"
    if path.is_file():
        return json.loads(path.read_text())
    extra = {"seed": None, "train_s": 0.0, "best_epoch": None}
    rows = score_method(
        "frangi", BASELINE_NAMES["frangi"], ModelRegistry.default(), phantoms, args.modality, extra
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n")
    return rows


def time_method(method: TrainedMethod, registry_path: Path, spacing_zyx, downsample: int, args) -> float:
    """Seconds of one LR volume of ``--timing-shape`` through the method's whole user path, after a warm-up."""
    shape = tuple(args.timing_shape)
    path = method_dir(method.name, args) / f"timing-{'x'.join(map(str, shape))}-threads{args.threads}.json"
    if path.is_file():
        return float(json.loads(path.read_text())["seconds"])
    registry = ModelRegistry.from_file(registry_path)
    r = downsample
    warm_up = tuple(min(n, m) for n, m in zip(shape, (16, 64, 64), strict=True))
    predict(method.kind, method.name, registry, timing_phantom(warm_up, spacing_zyx, r), args.modality)
    volume = timing_phantom(shape, spacing_zyx, r)
    started = time.monotonic()
    predict(method.kind, method.name, registry, volume, args.modality)
    seconds = time.monotonic() - started
    path.write_text(
        json.dumps({"seconds": seconds, "lr_shape_zyx": list(shape), "threads": args.threads}) + "\n"
    )
    return seconds


# ------------------------------------------------------------------------------------------- baselines


def _source_modalities(config: TrainConfig) -> set[str]:
    return {source.modality for source in (*config.data.training, *config.data.validation)}


def baseline_data(reference: TrainMethodSpec, kind: str, args) -> str:
    """Write the B-LRseg / B-preint training and validation volumes (NRRD) from the reference's phantoms and
    degradation, once; returns their folder relative to the run folder."""
    document = reference.document
    tag = hashlib.sha1(
        json.dumps(
            {"data": document["data"], "degradation": document["training"]["super_resolution"]},
            sort_keys=True,
        ).encode()
    ).hexdigest()[:10]
    relative = f"data/{tag}/{kind}"
    root = args.run_dir / relative
    done = root / "complete.json"
    if done.is_file():
        return relative
    if root.exists():  # an interrupted write of this run's own files: start again
        shutil.rmtree(root)
    config = reference.config
    spec = config.training.super_resolution
    r = spec.downsample
    classes = config.data.vessel_classes
    counts = {}
    for split, sources in (("training", config.data.training), ("validation", config.data.validation)):
        for folder in ("images", "labels"):
            (root / split / folder).mkdir(parents=True)
        counts[split] = 0
        for source in sources:
            for case in load_cases(source, classes):
                pair = make_paired_case(case, spec)
                label = pair.high.target[0]
                spacing_zyx = pair.high.spacing_zyx
                if kind == "lrseg":
                    image = pair.low_image
                    label = block_mean(label.astype(np.float32), r) >= 0.5
                    spacing_zyx = tuple(r * s for s in spacing_zyx)
                else:  # preint: the LR volume interpolated back onto the HR grid
                    image = upsample(pair.low_image, r, order=1)
                spacing_xyz = tuple(float(s) for s in reversed(spacing_zyx))
                image = as_acquired(image, args.modality)
                write_volume(Volume(image, spacing_xyz), root / split / "images" / f"{case.name}.nrrd")
                write_volume(
                    Volume(label.astype(np.uint8), spacing_xyz), root / split / "labels" / f"{case.name}.nrrd"
                )
                counts[split] += 1
    done.write_text(
        json.dumps({"kind": kind, "cases": counts, "degradation": dataclasses.asdict(spec)}) + "\n"
    )
    logger.info("Wrote %s volumes of %s under %s", kind, counts, root)
    return relative


def baseline_method(kind: str, reference: TrainMethodSpec, args) -> TrainedMethod:
    """The UNet3D baseline's configuration: the reference's data and [training] budget, its own network."""
    document = reference.document
    training = copy.deepcopy(document["training"])
    r = int(training.pop("super_resolution").get("downsample", 2))
    training.pop("seed", None)
    vessel_class = document["data"]["vessel_classes"][0]
    if kind == "lrseg":  # the LR patch under the HR patch: the window ROSE reads
        training["patch_size_zyx"] = [int(p) // r for p in training["patch_size_zyx"]]
    if kind == "ceiling":
        data = copy.deepcopy(document["data"])
        base_dir = reference.base_dir
    else:
        folder = baseline_data(reference, kind, args)

        def files(split: str) -> dict:
            return {
                "kind": "files",
                "modality": args.modality,
                "root": f"{folder}/{split}",
                "images": "images/*.nrrd",
                "labels": "labels",
                "binary_class": vessel_class,
            }

        data = {
            "vessel_classes": [vessel_class],
            "training": [files("training")],
            "validation": [files("validation")],
        }
        base_dir = args.run_dir.resolve()
    document = {
        "model": {"architecture": "UNet3D", "arguments": dict(args.baseline_network)},
        "data": data,
        "training": training,
        "output": {"run_dir": "train"},
    }
    return TrainedMethod(BASELINE_NAMES[kind], kind, document, base_dir)


# ---------------------------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class TrainMethodSpec:
    """A ``--methods`` entry read and checked: its document (overrides applied, no seed) and configuration."""

    name: str
    document: dict
    base_dir: Path
    config: TrainConfig

    @property
    def method(self) -> TrainedMethod:
        document = copy.deepcopy(self.document)
        document["training"].pop("seed", None)
        return TrainedMethod(self.name, "sr", document, self.base_dir)


def read_methods(texts: list[str], args) -> list[TrainMethodSpec]:
    specs = []
    for text in texts:
        spec = MethodSpec.parse(text)
        if spec.config is None:
            raise SystemExit(f"error: --methods {text!r} names no configuration; write NAME=CONFIG.toml.")
        if not _NAME.match(spec.name) or spec.name in RESERVED_NAMES:
            raise SystemExit(
                f"error: method name {spec.name!r} must hold only letters, digits, '.', '_' and '-' and not be "
                f"one of {sorted(RESERVED_NAMES)}."
            )
        try:
            document = spec.document()
            base_dir = spec.config.resolve().parent
            config = parse_config(copy.deepcopy(document), base_dir=base_dir)
        except (ValueError, tomllib.TOMLDecodeError) as error:
            raise SystemExit(f"error: method {spec.name}: {error}") from None
        where = f"method {spec.name} ({spec.config})"
        if config.training.super_resolution is None:
            raise SystemExit(f"error: {where} has no [training.super_resolution]: not a 2x method.")
        if _source_modalities(config) != {args.modality}:
            raise SystemExit(
                f"error: {where} trains on {sorted(_source_modalities(config))} data; this run tests "
                f"{args.modality} (--modality)."
            )
        if len(config.data.vessel_classes) != 1:
            raise SystemExit(
                f"error: {where} predicts {config.data.vessel_classes}; the benchmark needs one class."
            )
        for source in (*config.data.training, *config.data.validation):
            if not isinstance(source, PhantomSource):
                raise SystemExit(
                    f"error: {where} reads files; the benchmark's baselines need phantom sources."
                )
            overlap = set(range(source.seed, source.seed + source.count)) & set(TEST_SEEDS)
            if overlap:
                raise SystemExit(f"error: {where} uses the test phantoms' seeds {sorted(overlap)}.")
        specs.append(TrainMethodSpec(spec.name, document, base_dir, config))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise SystemExit(f"error: --methods names must be distinct, got {names}.")
    first = specs[0].config
    for spec in specs[1:]:
        if spec.config.training.super_resolution.downsample != first.training.super_resolution.downsample:
            raise SystemExit(
                f"error: method {spec.name} has another super-resolution factor than {specs[0].name}."
            )
        if (
            spec.config.data != first.data
            or spec.config.training.super_resolution != first.training.super_resolution
        ):
            logger.warning(
                "%s trains on other phantoms or another degradation than %s; the test set and the baselines "
                "follow %s.",
                spec.name,
                specs[0].name,
                specs[0].name,
            )
    return specs


def test_spacing(config: TrainConfig, modality: str) -> tuple[float, float, float]:
    """The training phantoms' voxel size (the test phantoms are made at it)."""
    spacing = config.data.training[0].spacing_zyx
    return tuple(spacing) if spacing is not None else MODALITY_DEFAULT_SPACING_ZYX[modality]


# ---------------------------------------------------------------------------------------------- report


def aggregate(rows: list[dict]) -> dict[str, dict]:
    """Per method: per-seed means over the phantoms (finite values only), then mean and sd over the seeds."""
    return aggregate_over_seeds(
        rows,
        SCORE_KEYS,
        untrained_kinds=("frangi", "interpolation"),
        keep_infinite=False,
        per_seed_fields=("best_epoch",),
    )


def _fmt(value: float, key: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    return f"{value:.2f}" if key in ("psnr_db", "train_s") else f"{value:.3f}"


def summarise(rows: list[dict], timings: dict[str, float], first: str, args) -> str:
    methods = aggregate(rows)
    keys = SCORE_KEYS
    lines = [
        f"ROSE benchmark, {args.modality}: {len(TEST_SEEDS)} held-out phantoms {' x '.join(map(str, args.test_shape))} "
        f"(seeds {TEST_SEEDS[0]}-{TEST_SEEDS[-1]}), scored on the HR grid against the HR any-vessel label.",
        "",
        "Per method and seed, means over the test phantoms:",
        "",
        "| method | seed | " + " | ".join(HEADERS[k] for k in keys) + " | train s | best epoch |",
        "| --- | --- | " + " | ".join("---" for _ in keys) + " | --- | --- |",
    ]
    for method, summary in methods.items():
        for seed, means in summary["per_seed"].items():
            cells = " | ".join(_fmt(means[k], k) for k in keys)
            epoch = "" if means["best_epoch"] is None else str(means["best_epoch"])
            lines.append(
                f"| {method} | {'' if seed is None else seed} | {cells} | {_fmt(means['train_s'], 'train_s')} | "
                f"{epoch} |"
            )
    timing_label = f"s per {' x '.join(map(str, reversed(args.timing_shape)))} LR volume (X Y Z)"
    lines += seed_table_header(first, keys, DELTA_KEYS, HEADERS, ("train s/seed", timing_label))
    for method, summary in methods.items():
        reference = None if method == first else methods.get(first)
        # "+- sd" from one seed on (untrained rows, seeds 0: one deterministic value); PSNR with two decimals
        cells, deltas, verdict = seed_comparison_cells(
            summary, reference, keys, DELTA_KEYS, HEADERS, _fmt, two_decimal_keys=("psnr_db",), min_seeds=1
        )
        timing = timings.get(method)
        lines.append(
            f"| {method} | {summary['seeds'] or ''} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(deltas)
            + f" | {verdict} | {_fmt(summary['mean']['train_s'], 'train_s')} | "
            + ("" if timing is None else f"{timing:.1f}")
            + " |"
        )
    lines += [
        "",
        "beyond seed spread: the metrics whose |delta| exceeds sd(method) + sd(first method) over seeds (rows "
        "without training have sd 0). PSNR: of the method's super-resolved image (eq. 6); trilinear / cubic: "
        "x2 interpolation of the LR image. Timing: segment_image on random values, after a warm-up, "
        f"{args.threads} thread(s), with the method's interpolation or upsampling.",
    ]
    return "\n".join(lines)


def update_card(card_path: Path, label: str, rows: list[dict], record: dict, command: str) -> None:
    """Write this run's held-out phantom scores into a model card (key ``held_out_phantoms``): the card's
    method first, every other row of the run beside it for comparison; NaN (no seed spread) written as null."""
    import platform

    import torch

    def finite(values: dict) -> dict:
        return {k: (round(v, 4) if math.isfinite(v) else None) for k, v in values.items()}

    scores = aggregate(rows)
    if label not in scores:
        raise SystemExit(f"error: --update-card names {label!r}, which this run did not score.")
    card = json.loads(card_path.read_text())
    card["held_out_phantoms"] = {
        "what": "mean (+- sd over training seeds) over phantoms never used for training, epoch or threshold "
        "choice, degraded the paper's way and scored on the HR grid (test figure for synthetic data)",
        "method": label,
        "command": command,
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
        "test_set": record,
        "scores": {
            name: {"seeds": summary["seeds"], "mean": finite(summary["mean"]), "sd": finite(summary["sd"])}
            for name, summary in sorted(scores.items(), key=lambda item: item[0] != label)
        },
    }
    card_path.write_text(json.dumps(card, indent=2, allow_nan=False) + "\n")


def _network_arguments(text: str) -> dict:
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError as error:
        raise argparse.ArgumentTypeError(f"not a TOML inline table: {error}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            "write a TOML inline table, e.g. '{ in_channels = 1, base_channels = 8 }'"
        )
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--methods",
        nargs="+",
        help="NAME=CONFIG.toml[,section.key=VALUE...] (default: rose and rose-nosr of the modality's config)",
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0, 1, 2], help="training.seed of every model"
    )
    parser.add_argument("--modality", choices=sorted(DEFAULT_CONFIGS), default="TOF-MRA")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/rose"))
    parser.add_argument(
        "--epochs", type=int, help="override every configuration's epochs (quick checks only)"
    )
    parser.add_argument("--baselines", nargs="*", choices=BASELINES, default=list(BASELINES))
    parser.add_argument(
        "--baseline-network",
        type=_network_arguments,
        default=DEFAULT_BASELINE_NETWORK,
        help="UNet3D arguments of the baselines, a TOML inline table (default: base 8, 3 levels)",
    )
    parser.add_argument("--test-shape", nargs=3, type=int, default=[64, 160, 160], metavar=("Z", "Y", "X"))
    parser.add_argument(
        "--timing-shape", nargs=3, type=int, default=[64, 224, 224], metavar=("Z", "Y", "X"), help="LR volume"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads for inference")
    parser.add_argument("--train-threads", type=int, help="override the configurations' num_threads")
    parser.add_argument(
        "--update-card",
        metavar="CARD.json[=METHOD]",
        help="write METHOD's (default: the first method's) held-out scores into that model card",
    )
    parser.add_argument("--csv", type=Path, help="also write the per-phantom rows here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(args.threads)
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit(f"error: --epochs must be >= 1, got {args.epochs}.")
    if not args.methods:
        config = DEFAULT_CONFIGS[args.modality]
        args.methods = [f"rose={config}", f"rose-nosr={config},model.arguments.sr_stream=false"]
    specs = read_methods(args.methods, args)
    reference = specs[0]
    spec = reference.config.training.super_resolution
    source = reference.config.data.training[0]
    spacing = test_spacing(reference.config, args.modality)
    args.run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "modality": args.modality,
        "test_seeds": list(TEST_SEEDS),
        "test_shape_zyx": list(args.test_shape),
        "spacing_zyx": list(spacing),
        "degradation": {
            "truncation_zyx": list(spec.truncation_zyx),
            "downsample": spec.downsample,
            "kept_fraction": spec.kept_fraction,
        },
    }
    record_path = args.run_dir / "benchmark.json"
    if record_path.is_file() and json.loads(record_path.read_text()) != record:
        raise SystemExit(
            f"error: {args.run_dir} holds another test set ({record_path}); use another --run-dir."
        )
    record_path.write_text(json.dumps(record, indent=1) + "\n")
    phantoms = [
        make_test_phantom(
            seed,
            args.modality,
            tuple(args.test_shape),
            spacing,
            spec,
            source.class_remap,
            reference.config.data.vessel_classes[0],
        )  # fmt: skip
        for seed in TEST_SEEDS
    ]
    methods = [s.method for s in specs]
    methods += [
        baseline_method(kind, reference, args)
        for kind in ("lrseg", "preint", "ceiling")
        if kind in args.baselines
    ]
    rows: list[dict] = []
    registries: dict[str, Path] = {}
    for method in methods:
        for seed in args.seeds:
            rows += run_trained(method, seed, phantoms, args)
        registries[method.name] = train_seed(method, args.seeds[0], args)
    if "frangi" in args.baselines:
        rows += run_frangi(phantoms, args)
    rows += interpolation_rows(phantoms)
    timings = {m.name: time_method(m, registries[m.name], spacing, spec.downsample, args) for m in methods}
    table = summarise(rows, timings, reference.name, args)
    print(table)
    command = shlex.join(
        ["python", "benchmarks/rose_phantoms.py", *(argv if argv is not None else sys.argv[1:])]
    )
    (args.run_dir / "summary.md").write_text(f"<!-- {command} -->\n{table}\n")
    write_rows(rows, [args.run_dir / "scores.csv", *([args.csv] if args.csv else [])])
    if args.update_card:
        card_path, _, label = args.update_card.partition("=")
        update_card(Path(card_path), label or reference.name, rows, record, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
