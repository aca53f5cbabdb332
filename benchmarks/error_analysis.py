"""Where a 2PM model's errors lie on a VesselNN stack: far from the labelled vessels, or at their borders.

    python benchmarks/error_analysis.py --registry runs/cv-E4/vnet-2pm-1um-cos-dicebce-last/fold-1/models/models.json \\
        --method vnet-2pm-1um-cos-dicebce-last --stacks burgess2014_bbbDisruption poon2015_BBB_Leakage [--png DIR]

Segments each stack with the model by ``benchmarks/crossval.py``'s own reader and ``segment`` (the stack's
voxel size, the model's threshold), then measures, for the false-positive voxels, their in-plane distance to the nearest labelled
voxel of the same slice: false positives within 1-2 um are border disagreements (thickness), those beyond
8 um are structures the annotator did not call vessel (e.g. leaked dye, dura). Also printed: predicted over
labelled volume, the share of the label missed, and Dice at thresholds 0.5, 0.7, 0.9 (a diagnostic: the
harness never chooses a threshold on a test stack). ``--png DIR`` writes the middle slice with true positives
green, false positives red and false negatives blue. Reads the labels; for analysis only.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch
from crossval import load_stacks, segment
from scipy import ndimage

from VesselSegLib.metrics import dice
from VesselSegLib.models.registry import ModelRegistry

DISTANCES_UM = (1, 2, 4, 8)
THRESHOLDS = (0.5, 0.7, 0.9)


def _overlay(image: np.ndarray, predicted: np.ndarray, label: np.ndarray, path: Path) -> None:
    from PIL import Image

    z = image.shape[0] // 2
    plane = image[z].astype(np.float32)
    plane = np.clip((plane - plane.min()) / max(np.percentile(plane, 99.5) - plane.min(), 1e-6), 0, 1)
    p, r = predicted[z], label[z]
    rgb = np.stack(
        [plane * 0.5 + 0.5 * (p & ~r), plane * 0.5 + 0.5 * (p & r), plane * 0.5 + 0.5 * (r & ~p)], -1
    )
    Image.fromarray((rgb * 255).astype(np.uint8)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", type=Path, default=None, help="models.json (default: the shipped one)")
    parser.add_argument("--method", default="vnet-2pm")
    parser.add_argument("--stacks", nargs="+", required=True)
    parser.add_argument(
        "--data-root",
        type=Path,
        default=Path(os.environ.get("VESSELSEG_VESSELNN", "../shared/data/vesselnn")),
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--png", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = ModelRegistry.from_file(args.registry) if args.registry else ModelRegistry.default()
    print(
        "| stack | Dice | predicted / labelled volume | label missed | false positives within "
        + " / ".join(f"{d}" for d in DISTANCES_UM)
        + " um of a label | "
        + " | ".join(f"Dice @{t}" for t in THRESHOLDS)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(THRESHOLDS))
    stacks = load_stacks(args.data_root)  # the harness's reader: voxel sizes from the metadata side-cars
    for name in args.stacks:
        stack = stacks[name]
        image, label, spacing_zyx = stack.image, stack.reference, stack.spacing_zyx
        predicted, probability, *_ = segment(stack, args.method, registry)
        false_positive = predicted & ~label
        pixel_um = spacing_zyx[2] * 1000.0
        distance_um = np.stack([ndimage.distance_transform_edt(~plane) for plane in label]) * pixel_um
        near = [float((distance_um[false_positive] <= d).mean()) for d in DISTANCES_UM]
        at = [dice(probability >= t, label) for t in THRESHOLDS]
        print(
            f"| {name} | {dice(predicted, label):.3f} | {predicted.sum() / label.sum():.2f} | "
            f"{(label & ~predicted).sum() / label.sum():.2f} | "
            + " / ".join(f"{v:.2f}" for v in near)
            + " | "
            + " | ".join(f"{v:.3f}" for v in at)
            + " |"
        )
        if args.png is not None:
            args.png.mkdir(parents=True, exist_ok=True)
            _overlay(image, predicted, label, args.png / f"{name}.png")


if __name__ == "__main__":
    main()
