"""Vessel Dice of the shipped TOF-MRA model on one phantom imaged at several voxel sizes, with and without
resampling to the model's training spacing (the driver's ``ResamplingPolicy``).

The same physical vessel tree (``VesselSegLib.phantoms.tree_on_grid``) is rasterised at the model's
0.8 x 0.5 x 0.5 mm times each factor, rendered as TOF-MRA and segmented; each run is scored against the
truth on its own grid. Test seeds, disjoint from training.

    python benchmarks/resampling_phantoms.py [--factors 0.5 0.6 0.8 1.25 1.5] [--seeds 5001 5002]
"""

from __future__ import annotations

import argparse

import numpy as np

from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.metrics import dice
from VesselSegLib.phantoms import make_vessel_tree, render_tof_mra, tree_on_grid
from VesselSegLib.preprocessing.resampling import ResamplingPolicy
from VesselSegLib.request import SegmentationRequest

MODEL_SPACING_ZYX = (0.8, 0.5, 0.5)
SHAPE_ZYX = (32, 96, 96)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factors", nargs="+", type=float, default=[0.5, 0.6, 0.8, 1.0, 1.25, 1.5])
    parser.add_argument("--seeds", nargs="+", type=int, default=[5001, 5002])
    args = parser.parse_args()
    print("| voxel size (mm, Z Y X) | Dice, resampled to the model's | Dice, as given | resampled? |")
    print("|---|---|---|---|")
    for factor in args.factors:
        spacing = tuple(round(s * factor, 6) for s in MODEL_SPACING_ZYX)
        scores = {True: [], False: []}
        resampled = None
        for seed in args.seeds:
            tree = tree_on_grid(
                make_vessel_tree(SHAPE_ZYX, spacing_zyx=MODEL_SPACING_ZYX, seed=seed), spacing
            )
            image = render_tof_mra(tree, seed=seed)
            for enabled in (True, False):
                request = SegmentationRequest(device="cpu", resampling=ResamplingPolicy(enabled=enabled))
                result = segment_image(image, tree.spacing_zyx, request)
                scores[enabled].append(dice(result.class_map > 0, tree.class_map > 0))
                if enabled:
                    resampled = result.resampling["resample"]
        print(
            f"| {' x '.join(map(str, spacing))} | {np.mean(scores[True]):.3f} | {np.mean(scores[False]):.3f} "
            f"| {'yes' if resampled else 'no'} |"
        )


if __name__ == "__main__":
    main()
