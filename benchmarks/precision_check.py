"""Does bfloat16 keep each shipped network's segmentation? Dice in float32 and bfloat16 on held-out phantoms.

    python benchmarks/precision_check.py [--models vnet-2pm ...] [--seeds 5001 5002] [--shape 32 128 128]
    python benchmarks/precision_check.py --write-registry   # list bfloat16 for the models that pass

For every network of the registry and each modality it reads, phantoms of that modality (seeds 5001-5002,
never trained on; 2PM with physical vessel radii at 5 x 1 x 1 um, MRA at the model's voxel size, SWI with its
brain mask) are segmented through ``segment_image`` with ``precision="float32"`` and ``"bfloat16"`` (CPU
autocast, PyTorch backend in both). Per class the model gives: Dice against the phantom's truth in each precision (2PM truth: any
vessel) and the change. A model passes when no class changes by more than ``runtime.MAX_DICE_CHANGE``
(0.002) on any phantom; ``--write-registry`` then lists ``"bfloat16"`` in its ``reduced_precision`` (and
removes it from models that fail), which is what lets ``precision="auto"`` run it in bfloat16 on CPUs whose
probe finds bfloat16 faster. ``Testing/test_runtime.py`` re-checks every listed model on one smaller phantom.

On a CPU without native bfloat16 the bfloat16 rows are emulated (slow) but numerically the same; the
seconds column is only meaningful where ``vesselseg info`` says native_bfloat16 true.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.inference.runtime import MAX_DICE_CHANGE, machine_key
from VesselSegLib.metrics import dice
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.request import SegmentationRequest
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

REGISTRY_FILE = Path(__file__).resolve().parents[1] / "Resources" / "Models" / "models.json"
TEST_SEEDS = (5001, 5002)
SPACING_2PM_ZYX = (0.005, 0.001, 0.001)


def phantom_for(modality: str, entry, shape_zyx, seed: int):
    """A held-out phantom of ``modality`` at the model's voxel size (2PM: physical radii)."""
    if modality == "2PM":
        return make_phantom_case(
            "2PM", shape_zyx, spacing_zyx=SPACING_2PM_ZYX, seed=seed, radius_model="2pm-physical"
        )
    spacing = entry.training_spacing_for(modality)
    return make_phantom_case(modality, shape_zyx, spacing_zyx=spacing, seed=seed)


def class_dice(result, case, class_name: str, modality: str) -> float:
    label = VESSEL_CLASS_BY_NAME[class_name].label_value
    truth = case.class_map > 0 if modality == "2PM" else case.class_map == label
    for axis, (fine, coarse) in enumerate(zip(result.class_map.shape, truth.shape, strict=True)):
        truth = np.repeat(truth, fine // coarse, axis=axis)  # ROSE's 2x grid: the truth repeated onto it
    return float(dice(result.class_map == label, truth))


def check_model(entry, registry, modality: str, shape_zyx, seeds) -> list[dict]:
    rows = []
    for index, seed in enumerate(seeds):
        case = phantom_for(modality, entry, shape_zyx, seed)
        if index == 0:  # warm-up: load the weights and let oneDNN pick its kernels before anything is timed
            for precision in ("float32", "bfloat16"):
                request = SegmentationRequest(
                    modality=modality, method=entry.name, device="cpu", precision=precision, backend="pytorch"
                )
                segment_image(
                    case.image, case.spacing_zyx, request, brain_mask=case.brain_mask, registry=registry
                )
        results, seconds = {}, {}
        for precision in ("float32", "bfloat16"):
            request = SegmentationRequest(
                modality=modality, method=entry.name, device="cpu", precision=precision, backend="pytorch"
            )
            started = time.perf_counter()
            results[precision] = segment_image(
                case.image, case.spacing_zyx, request, brain_mask=case.brain_mask, registry=registry
            )
            seconds[precision] = time.perf_counter() - started
        for class_name in results["float32"].vessel_classes:
            dice = {p: class_dice(results[p], case, class_name, modality) for p in results}
            rows.append(
                {
                    "model": entry.name,
                    "modality": modality,
                    "seed": seed,
                    "class": class_name,
                    "dice_float32": dice["float32"],
                    "dice_bfloat16": dice["bfloat16"],
                    "change": dice["bfloat16"] - dice["float32"],
                    "s_float32": seconds["float32"],
                    "s_bfloat16": seconds["bfloat16"],
                }
            )
    return rows


def write_registry(passed: dict[str, bool]) -> None:
    """Set each checked model's ``reduced_precision`` in the shipped registry file (written whole)."""
    from VesselSegLib.io.atomic import atomic_write_path

    document = json.loads(REGISTRY_FILE.read_text())
    for raw in document["models"]:
        if raw["name"] not in passed:
            continue
        kept = [p for p in raw.get("reduced_precision", []) if p != "bfloat16"]
        raw["reduced_precision"] = [*kept, "bfloat16"] if passed[raw["name"]] else kept
        if not raw["reduced_precision"]:
            del raw["reduced_precision"]
    with atomic_write_path(REGISTRY_FILE) as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="registry names (default: every network)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(TEST_SEEDS))
    parser.add_argument("--shape", nargs=3, type=int, default=[32, 128, 128], metavar=("Z", "Y", "X"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--write-registry", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    registry = ModelRegistry.default()
    entries = [e for e in registry.entries() if e.kind == "network"]
    if args.models:
        entries = [e for e in entries if e.name in args.models]
    rows = []
    for entry in entries:
        for modality in entry.modalities:
            rows += check_model(entry, registry, modality, tuple(args.shape), args.seeds)
    print(
        f"Machine: {json.dumps(machine_key())}; {args.threads} thread(s); phantoms {args.shape}, seeds {args.seeds}"
    )
    print()
    print(
        "| model | modality | class | Dice float32 | Dice bfloat16 | largest change | s float32 | s bfloat16 |"
    )
    print("|---|---|---|---|---|---|---|---|")
    passed: dict[str, bool] = {}
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["modality"], row["class"]), []).append(row)
    for (model, modality, class_name), group in groups.items():
        worst = max((r["change"] for r in group), key=abs)
        passed[model] = passed.get(model, True) and abs(worst) <= MAX_DICE_CHANGE
        print(
            f"| {model} | {modality} | {class_name} | {np.mean([r['dice_float32'] for r in group]):.4f} | "
            f"{np.mean([r['dice_bfloat16'] for r in group]):.4f} | {worst:+.4f} | "
            f"{np.mean([r['s_float32'] for r in group]):.2f} | {np.mean([r['s_bfloat16'] for r in group]):.2f} |"
        )
    print()
    print(
        f"Within {MAX_DICE_CHANGE} Dice on every phantom and class: "
        + ", ".join(f"{m} {'yes' if ok else 'no'}" for m, ok in passed.items())
    )
    if args.write_registry:
        write_registry(passed)
        print(f"Wrote reduced_precision into {REGISTRY_FILE}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
