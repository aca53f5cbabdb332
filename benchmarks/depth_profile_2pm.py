"""Where the 2PM default model finds the vessels of a deep two-photon phantom: recall per vessel kind, Dice per Z slab.

    python benchmarks/depth_profile_2pm.py [--shape 256 512 512] [--seed 7] [--slab 32]

Two-photon signal falls with depth (the phantoms render the attenuation, ``VesselSegLib.phantoms``), and the
shipped model was trained on stacks of 10-32 slices. This prints, with and without the paper's slice-median
subtraction, the share of each kind of true vessel (the phantom's arteries, veins and 1-2-voxel micro-vessels;
the 2PM model marks them all as one class) that the model finds, then the Dice of each slab of ``--slab``
slices and the fraction of voxels that are vessels in the truth and in the prediction, beside the slab's
median and 99.5th-percentile intensity.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.metrics import dice
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.request import MicroscopyOptions, SegmentationRequest
from VesselSegLib.vessel_classes import VESSEL_CLASSES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(256, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--slab", type=int, default=32)
    parser.add_argument("--method", default=None, help="Registry name (default: the 2PM default).")
    args = parser.parse_args()
    case = make_phantom_case("2PM", tuple(args.shape), seed=args.seed)
    image = np.clip(case.image, 0, 65535).astype(np.uint16)  # as benchmark_2pm.py writes it
    truth = case.class_map > 0
    for options in (None, {"subtract_slice_median": True}):
        tick = time.perf_counter()
        result = segment_image(
            image,
            case.spacing_zyx,
            SegmentationRequest(
                modality="2PM",
                method=args.method,
                device="cpu",
                microscopy=MicroscopyOptions(**(options or {})),
            ),
        )
        predicted = result.class_map > 0
        seconds = time.perf_counter() - tick
        name = "slice-median subtraction" if options else "no preprocessing"
        print(f"\n# {result.method}, {name}: Dice {dice(predicted, truth):.3f} ({seconds:.0f} s)")
        print("| true vessels | share of the vessel voxels | found (recall) |")
        print("|---|---|---|")
        for vessel in VESSEL_CLASSES:
            kind = case.class_map == vessel.label_value
            if kind.any():
                share = np.count_nonzero(kind) / np.count_nonzero(truth)
                print(f"| {vessel.name} | {share:.2f} | {predicted[kind].mean():.2f} |")
        print()
        print("| slices | Dice | vessel fraction, truth | vessel fraction, prediction | median | p99.5 |")
        print("|---|---|---|---|---|---|")
        for z0 in range(0, args.shape[0], args.slab):
            slab = slice(z0, z0 + args.slab)
            low, high = np.percentile(image[slab], (50, 99.5))
            print(
                f"| {z0}-{min(z0 + args.slab, args.shape[0]) - 1} | {dice(predicted[slab], truth[slab]):.3f} | "
                f"{truth[slab].mean():.4f} | {predicted[slab].mean():.4f} | {low:.0f} | {high:.0f} |"
            )


if __name__ == "__main__":
    main()
