"""VC-Net against the plain 3D U-Net trained with the same budget, per vessel class, on one phantom test set.

    python benchmarks/compare_vcnet.py [--classes artery vein micro] [--no-timing | --no-scores] [--json out.json]

For each class, the VC-Net member model and its same-budget 3D U-Net twin (``trainer/configs/vcnet_*.toml``
and ``unet3d_*.toml``: same phantoms, patches, epochs, optimiser) segment the same test phantoms, which were
never used in training or validation: 4 phantoms of 64 x 160 x 160 voxels (seeds 5001-5004), rendered as
TOF-MRA for arteries and as SWI (brain mask given, intensities inverted inside it) for veins and
micro-vessels. Scores are the paper's (Dice, precision, FPR) plus clDice, averaged over the phantoms.

VC-Net is also scored with non-overlapping tiles, as the paper evaluates, beside the registry's overlapping
Gaussian-blended windows, to pick the better default. Timing: seconds to segment one 128 x 448 x 448
phantom of the class's modality (the TubeTK volume size), whole ``segment_image`` call, on this machine;
and the whole VC-Net method (three networks: artery from TOF-MRA, vein and micro from SWI) on the same phantom.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.metrics import evaluate_binary
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.models.unet3d import count_parameters
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.request import SegmentationRequest
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

TEST_SEEDS = (5001, 5002, 5003, 5004)  # disjoint from training (1000+, 2000+) and validation (9000+) seeds
TEST_SHAPE_ZYX = (64, 160, 160)
SPACING_ZYX = (0.8, 0.5, 0.5)
TIMING_SHAPE_ZYX = (128, 448, 448)
# class -> (input modality, VC-Net model, same-budget 3D U-Net model)
PAIRS = {
    "artery": ("TOF-MRA", "vcnet-artery", "unet3d-artery"),
    "vein": ("SWI", "vcnet-vein", "unet3d-vein"),
    "micro": ("SWI", "vcnet-micro", "unet3d-micro"),
}
METRICS = ("dice", "precision", "fpr", "cldice")


def score(method: str, modality: str, class_name: str, registry: ModelRegistry, overlap=None) -> dict:
    label = VESSEL_CLASS_BY_NAME[class_name].label_value
    per_case = []
    for seed in TEST_SEEDS:
        case = make_phantom_case(modality, TEST_SHAPE_ZYX, spacing_zyx=SPACING_ZYX, seed=seed)
        result = segment_image(
            case.image,
            case.spacing_zyx,
            SegmentationRequest(modality=modality, method=method, overlap=overlap, device="cpu"),
            brain_mask=case.brain_mask,
            registry=registry,
        )
        scores = evaluate_binary(result.class_map == label, case.class_map == label, case.spacing_zyx)
        per_case.append({m: scores[m] for m in METRICS})
    return {m: float(np.mean([c[m] for c in per_case])) for m in METRICS}


def seconds_per_volume(method: str, modality: str, registry: ModelRegistry, overlap=None) -> float:
    case = make_phantom_case(modality, TIMING_SHAPE_ZYX, spacing_zyx=SPACING_ZYX, seed=7)
    started = time.perf_counter()
    segment_image(
        case.image,
        case.spacing_zyx,
        SegmentationRequest(modality=modality, method=method, overlap=overlap, device="cpu"),
        brain_mask=case.brain_mask,
        registry=registry,
    )
    return time.perf_counter() - started


def seconds_for_vcnet_ensemble(registry: ModelRegistry) -> float:
    """Seconds of ``segment_image(method="vcnet")`` on one 448 x 448 x 128 phantom rendered as TOF-MRA and SWI."""
    tof = make_phantom_case("TOF-MRA", TIMING_SHAPE_ZYX, spacing_zyx=SPACING_ZYX, seed=7)
    swi = make_phantom_case("SWI", TIMING_SHAPE_ZYX, spacing_zyx=SPACING_ZYX, seed=7)
    started = time.perf_counter()
    segment_image(
        tof.image,
        tof.spacing_zyx,
        SegmentationRequest(modality="TOF-MRA", method="vcnet", companion_modalities=("SWI",), device="cpu"),
        brain_mask=swi.brain_mask,
        companion_images={"SWI": swi.image},
        registry=registry,
    )
    return time.perf_counter() - started


def _update_cards(rows: list[dict], registry: ModelRegistry) -> None:
    """Record each scored model's test-set figures (and its twin's) in its model card."""
    for row in rows:
        if row["method"] not in registry.names or "dice" not in row:
            continue
        entry = registry.get(row["method"])
        twins = [r for r in rows if r.get("class") == row["class"] and "dice" in r]
        card = json.loads(entry.card_path.read_text())
        card["evaluation"] = {
            "command": "python benchmarks/compare_vcnet.py --classes " + row["class"] + " --update-cards",
            "date": time.strftime("%Y-%m-%d"),
            "phantom_test_set": {
                "modality": row["modality"],
                "shape_zyx": list(TEST_SHAPE_ZYX),
                "spacing_zyx": list(SPACING_ZYX),
                "seeds": list(TEST_SEEDS),
            },
            "scores": {r["method"]: {m: r[m] for m in METRICS} for r in twins},
        }
        entry.card_path.write_text(json.dumps(card, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--no-timing", action="store_true", help="Skip the 448 x 448 x 128 timing.")
    parser.add_argument("--no-scores", action="store_true", help="Timing only (on a quiet machine).")
    parser.add_argument("--json", default=None, help="Also write the numbers here.")
    parser.add_argument(
        "--update-cards", action="store_true", help="Write each model's scores into its model card."
    )
    args = parser.parse_args()
    registry = ModelRegistry.default()

    rows = []
    for class_name in args.classes:
        modality, vcnet, unet = PAIRS[class_name]
        for method in (unet, vcnet):
            entry = registry.get(method)
            row = {
                "class": class_name,
                "modality": modality,
                "method": method,
                "overlap": entry.overlap,
                "parameters": count_parameters(entry.load_network()),
                **({} if args.no_scores else score(method, modality, class_name, registry)),
            }
            if not args.no_timing:
                row["seconds_448x448x128"] = seconds_per_volume(method, modality, registry)
            rows.append(row)
        # The paper tiles without overlap; measure that too for VC-Net.
        rows.append(
            {
                "class": class_name,
                "modality": modality,
                "method": f"{vcnet} (no overlap)",
                "overlap": 0.0,
                "parameters": rows[-1]["parameters"],
                **({} if args.no_scores else score(vcnet, modality, class_name, registry, overlap=0.0)),
            }
        )
        if not args.no_timing:
            rows[-1]["seconds_448x448x128"] = seconds_per_volume(vcnet, modality, registry, overlap=0.0)

    print(
        f"# Phantom test set: {len(TEST_SEEDS)} phantoms {TEST_SHAPE_ZYX} (seeds {TEST_SEEDS[0]}-{TEST_SEEDS[-1]}); "
        f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(
        "| class | input | method | overlap | parameters | Dice | precision | FPR | clDice | s / 448x448x128 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        seconds = row.get("seconds_448x448x128")
        print(
            f"| {row['class']} | {row['modality']} | {row['method']} | {row['overlap']:.2f} | {row['parameters']:,} | "
            + (
                "- | - | - | - | "
                if "dice" not in row
                else f"{row['dice']:.3f} | {row['precision']:.3f} | {row['fpr']:.5f} | {row['cldice']:.3f} | "
            )
            + ("- |" if seconds is None else f"{seconds:.1f} |")
        )
    if not args.no_timing and set(args.classes) == set(PAIRS):
        ensemble_seconds = seconds_for_vcnet_ensemble(registry)
        print(
            f"\nWhole VC-Net method (3 networks, TOF-MRA + SWI) on one 448 x 448 x 128 phantom: {ensemble_seconds:.1f} s"
        )
        rows.append({"method": "vcnet", "seconds_448x448x128": ensemble_seconds})
    if args.update_cards and not args.no_scores:
        _update_cards(rows, registry)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"seeds": TEST_SEEDS, "shape_zyx": TEST_SHAPE_ZYX, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
