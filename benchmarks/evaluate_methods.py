"""Score registry methods on the phantom test set and on held-out VesselNN cases, with the same code.

    python benchmarks/evaluate_methods.py [--methods unet3d-baseline frangi] [--json scores.json]
        [--renderings as-rendered noisy strong-bias low-contrast thick-slices] [--modality SWI]
        [--registry runs/X/models/models.json]

Phantom test set: TOF-MRA phantoms with seeds never used in training (``TEST_SEEDS``), scored per class
(artery, vein, micro) and for all vessels. VesselNN: the held-out two-photon case(s), binary labels, scored
as "vessel" (any class) with the 2PM preset. Prints a Markdown table; ``--json`` also writes the numbers
for the model card. ``--renderings`` adds the same phantoms shifted to protocols the training renderer never
draws (``benchmarks/rendering_shifts.py``), reported as ``phantom_tof_mra_<shift>``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
from rendering_shifts import AS_RENDERED, RENDERINGS, shift_rendering

from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.io import read_volume
from VesselSegLib.metrics import evaluate_class_maps
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.request import SegmentationRequest
from VesselSegLib.resources import vesselnn_dir

# Disjoint from the training (1000+, 2000+, 3000+) and validation (9000+) seeds of trainer/configs.
TEST_SEEDS = (5001, 5002, 5003, 5004)
TEST_SHAPE_ZYX = (64, 160, 160)
VESSELNN_HELD_OUT = ("burgess2014_tgMouse",)
METRICS = ("dice", "cldice", "precision", "sensitivity", "mcc", "hd95_mm")


def _mean(values):
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate_phantoms(
    method: str, registry: ModelRegistry, rendering: str = AS_RENDERED, modality: str = "TOF-MRA"
) -> dict[str, dict[str, float]]:
    per_case = []
    for seed in TEST_SEEDS:
        case = make_phantom_case(modality, TEST_SHAPE_ZYX, seed=seed)
        result = segment_image(
            shift_rendering(case.image, case.brain_mask, rendering, seed, modality=modality),
            case.spacing_zyx,
            SegmentationRequest(modality=modality, method=method, device="cpu"),
            # SWI is inverted inside the brain (its dark veins made bright), so it needs the mask, as users
            # give it; the TOF-MRA figures have always been taken without one.
            brain_mask=case.brain_mask if modality == "SWI" else None,
            registry=registry,
        )
        per_case.append(
            evaluate_class_maps(
                result.class_map, case.class_map, case.spacing_zyx, class_names=result.vessel_classes
            )
        )
    keys = per_case[0].keys()
    return {key: {m: _mean([c[key][m] for c in per_case]) for m in METRICS} for key in keys}


def evaluate_vesselnn(method: str, registry: ModelRegistry, root: Path) -> dict[str, dict[str, float]]:
    scores = {}
    for name in VESSELNN_HELD_OUT:
        image = read_volume(
            root / "images" / f"{name}.tif", metadata_path=root / "metadata" / f"{name}.xml.txt"
        )
        labels = (
            read_volume(
                root / "labels" / f"{name}.tif", metadata_path=root / "metadata" / f"{name}.xml.txt"
            ).array
            > 0
        )
        result = segment_image(
            image.array,
            image.spacing_zyx,
            SegmentationRequest(modality="2PM", method=method, device="cpu"),
            registry=registry,
        )
        scores[name] = evaluate_class_maps(
            result.class_map, labels.astype(np.uint8), image.spacing_zyx, class_names=()
        )["vessel"]
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument(
        "--vesselnn", type=Path, default=None, help="VesselNN folder (default $VESSELSEG_VESSELNN)."
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--renderings", nargs="+", choices=RENDERINGS, default=[AS_RENDERED])
    parser.add_argument(
        "--modality",
        choices=("TOF-MRA", "SWI"),
        default="TOF-MRA",
        help="the phantom test set's contrast (the same vessel trees; SWI: dark veins)",
    )
    parser.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="models.json whose names are looked up before the shipped registry's (e.g. retrained weights)",
    )
    parser.add_argument(
        "--update-cards",
        action="store_true",
        help="Write each network's scores, with the Frangi baseline's, into its model card (evaluation).",
    )
    args = parser.parse_args()
    registry = ModelRegistry.default()
    if args.registry is not None:
        if args.update_cards:
            raise SystemExit("error: --update-cards writes the shipped cards; drop --registry.")
        extra = ModelRegistry.from_file(args.registry)
        shipped = [e for e in registry.entries() if e.name not in set(extra.names)]
        registry = ModelRegistry([*extra.entries(), *shipped])
    if args.modality != "TOF-MRA" and args.update_cards:
        raise SystemExit("error: --update-cards records the TOF-MRA phantom test set; drop --modality.")
    phantom_key = "phantom_" + args.modality.lower().replace("-", "_")  # phantom_tof_mra, phantom_swi
    methods = args.methods or [e.name for e in registry.entries()]
    root = args.vesselnn or vesselnn_dir()
    report = {}
    for method in methods:
        started = time.perf_counter()
        report[method] = {}
        if args.modality in registry.get(method).modalities:  # 2PM-only models skip the MRI phantoms
            for rendering in args.renderings:
                key = phantom_key if rendering == AS_RENDERED else f"{phantom_key}_{rendering}"
                report[method][key] = evaluate_phantoms(method, registry, rendering, args.modality)
        if root.is_dir() and "2PM" in registry.get(method).modalities:
            report[method]["vesselnn"] = evaluate_vesselnn(method, registry, root)
        report[method]["seconds"] = time.perf_counter() - started

    print(
        f"# Phantom test set: {len(TEST_SEEDS)} {args.modality} phantoms {TEST_SHAPE_ZYX}, seeds {TEST_SEEDS}"
    )
    print("| method | class | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for method, scores in report.items():
        for test_set, classes in scores.items():
            if not test_set.startswith(phantom_key):
                continue
            shift = test_set.removeprefix(phantom_key).lstrip("_")
            for key, values in classes.items():
                label = f"{key} ({shift})" if shift else key
                print(f"| {method} | {label} | " + " | ".join(f"{values[m]:.3f}" for m in METRICS) + " |")
    if any("vesselnn" in s for s in report.values()):
        print(f"\n# VesselNN held-out case(s) {VESSELNN_HELD_OUT}, 2PM preset, all vessels")
        print("| method | case | " + " | ".join(METRICS) + " |")
        print("|---|---|" + "---|" * len(METRICS))
        for method, scores in report.items():
            for name, values in scores.get("vesselnn", {}).items():
                print(f"| {method} | {name} | " + " | ".join(f"{values[m]:.3f}" for m in METRICS) + " |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.update_cards:
        _update_cards(report, registry)


def _update_cards(report: dict, registry: ModelRegistry) -> None:
    """Add the test-set scores of each network, and of every other method evaluated, to its card."""
    renderings = sorted(
        {
            k.removeprefix("phantom_tof_mra_")
            for s in report.values()
            for k in s
            if k.startswith("phantom_tof_mra_")
        }
    )
    command = "python benchmarks/evaluate_methods.py " + " ".join(
        [
            "--methods",
            *report,
            *(["--renderings", AS_RENDERED, *renderings] if renderings else []),
            "--update-cards",
        ]
    )
    for method in report:
        entry = registry.get(method)
        if entry.kind != "network" or entry.card_path is None:
            continue
        card = json.loads(entry.card_path.read_text())
        card["evaluation"] = {
            "command": command,
            "date": time.strftime("%Y-%m-%d"),
            "phantom_test_set": {
                "modality": "TOF-MRA",
                "shape_zyx": list(TEST_SHAPE_ZYX),
                "seeds": list(TEST_SEEDS),
            },
            "vesselnn_held_out": list(VESSELNN_HELD_OUT),
            # The 2PM models' validation stack: it chose their epoch and threshold, so for them this is a
            # validation score; the figure of record is the card's cross_validation (benchmarks/crossval.py).
            "vesselnn_held_out_role": "validation (chose the best epoch and the decision threshold of the 2PM "
            "models); cross-validated scores: cross_validation",
            "scores": {name: {k: v for k, v in s.items() if k != "seconds"} for name, s in report.items()},
        }
        entry.card_path.write_text(json.dumps(_finite_or_null(card), indent=2, allow_nan=False) + "\n")


def _finite_or_null(value):
    """JSON has no NaN/Infinity: write them as null (e.g. HD95 when a class is absent)."""
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    main()
