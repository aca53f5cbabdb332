"""Sliding-window inference speed of a registry network for several patch sizes, overlaps and memory layouts.

    python benchmarks/benchmark_inference_runtime.py [--method unet3d-baseline] [--shape 128 448 448]

Times only the network part (``predict_probabilities``) on random input of the given shape, once per setting
after a warm-up, on the CPU with the torch thread count given. The end-to-end command (read, infer, write)
is timed by ``benchmark_segment.py``. Used to pick the registry's default patch size and overlap.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from VesselSegLib.inference.sliding_window import count_windows, predict_probabilities
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.models.unet3d import count_parameters

SETTINGS = [  # (patch_size_zyx, overlap)
    ((32, 128, 128), 0.25),
    ((64, 128, 128), 0.25),
    ((64, 192, 192), 0.25),
    ((64, 192, 192), 0.1),
    ((128, 256, 256), 0.1),
    ((128, 256, 256), 0.0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default=None, help="Registry network (default: the TOF-MRA default).")
    parser.add_argument("--shape", nargs=3, type=int, default=(128, 448, 448), metavar=("Z", "Y", "X"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = ModelRegistry.default()
    entry = registry.get(args.method) if args.method else registry.default_for("TOF-MRA")
    network = entry.load_network()
    image = np.random.default_rng(0).random(args.shape, dtype=np.float32)
    voxels = image.size
    predict_probabilities(
        network, image[:32, :128, :128], patch_size_zyx=(32, 128, 128), device="cpu"
    )  # warm-up
    print(
        f"# {entry.name} ({count_parameters(network):,} parameters) on {' x '.join(map(str, args.shape))} voxels, "
        f"{platform.machine()} CPU, {args.threads} threads, torch {torch.__version__}"
    )
    print("| patch (Z, Y, X) | overlap | windows | seconds | Mvoxel/s |")
    print("|---|---|---|---|---|")
    for patch, overlap in SETTINGS:
        started = time.perf_counter()
        predict_probabilities(
            network, image, patch_size_zyx=patch, overlap=overlap, batch_size=1, device="cpu"
        )
        seconds = time.perf_counter() - started
        windows = count_windows(args.shape, patch, (overlap,) * 3)
        print(
            f"| {patch} | {overlap} | {windows} | {seconds:.1f} | {voxels / seconds / 1e6:.2f} |", flush=True
        )


if __name__ == "__main__":
    main()
