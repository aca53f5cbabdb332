"""UMIS speed on this machine: whole-stack inference, adaptation steps, and the two network configurations.

    python benchmarks/benchmark_umis.py [--stack PATH.tif] [--threads 2] [--adapt-seconds 30]

Prints one table:

- ``segment``: seconds for one stack through :func:`VesselSegLib.inference.pipeline.segment_image` with
  the shipped ``umis`` entry (read from the registry; default stack: VesselNN ``burgess2014_tgMouse``,
  512 x 512 x 25 voxels, or a random 25 x 512 x 512 volume when the data folder is absent);
- ``adapt``: adaptation steps per second on that stack (:func:`VesselSegLib.unsupervised.adaptation.adapt_network`
  with the entry's settings, for ``--adapt-seconds``);
- ``train step``: one forward + backward + Adam step of the UMIS loss for the slim (shipped) and the
  paper's ResNet-34 configuration, batch 2 of 16 x 128 x 128 and batch 1 of 32 x 128 x 128 (best of 3, after
  a warm-up), random weights.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.models.umis import UMISNet
from VesselSegLib.request import SegmentationRequest
from VesselSegLib.unsupervised.adaptation import adapt_network, unsupervised_step
from VesselSegLib.unsupervised.loss import UMISLoss

FAITHFUL = {
    "blocks": (3, 4, 6, 3),
    "widths": (64, 128, 256, 512),
    "stem_kernel": 7,
    "decoder_widths": (64, 32, 8),
}


def _default_stack() -> Path:
    root = Path(
        os.environ.get("VESSELSEG_VESSELNN", Path(__file__).resolve().parents[2] / "shared/data/vesselnn")
    )
    return root / "images" / "burgess2014_tgMouse.tif"


def _train_step_seconds(arguments: dict, shape: tuple[int, ...]) -> float:
    torch.manual_seed(0)
    network = UMISNet(**arguments)
    network.train()
    loss = UMISLoss()
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-4)
    images = torch.rand(shape)
    unsupervised_step(network, loss, optimizer, images)  # warm-up
    times = []
    for _ in range(3):
        tick = time.perf_counter()
        unsupervised_step(network, loss, optimizer, images)
        times.append(time.perf_counter() - tick)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", type=Path, default=None, help="2PM TIFF (default: VesselNN tgMouse)")
    parser.add_argument("--method", default="umis")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--adapt-seconds", type=float, default=30.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    registry = ModelRegistry.default()
    entry = registry.get(args.method)
    stack = args.stack or _default_stack()
    if stack.is_file():
        from VesselSegLib.io import read_volume

        # VesselNN keeps the voxel size in a side-car file.
        metadata = stack.parent.parent / "metadata" / f"{stack.stem}.xml.txt"
        volume = read_volume(stack, metadata_path=metadata if metadata.is_file() else None)
        image, spacing, name = volume.array.astype(np.float32), volume.spacing_zyx, stack.name
    else:
        image = np.random.default_rng(0).random((25, 512, 512), dtype=np.float32)
        spacing, name = (0.005, 0.001, 0.001), "random 25 x 512 x 512"
    print(
        f"# {platform.processor() or platform.machine()}, {args.threads} torch thread(s), torch {torch.__version__}"
    )
    print(f"# stack: {name}, {image.shape} voxels (Z, Y, X), spacing {spacing} mm\n")
    rows = []
    request = SegmentationRequest(modality="2PM", method=args.method, device="cpu", create_models=False)
    segment_image(image[:16, :128, :128], spacing, request, registry=registry)  # warm-up
    tick = time.perf_counter()
    segment_image(image, spacing, request, registry=registry)
    rows.append(("segment (whole stack)", f"{time.perf_counter() - tick:.1f} s"))
    from VesselSegLib.methods.adaptive import AdaptiveNetwork
    from VesselSegLib.preprocessing import normalize_intensity

    settings = AdaptiveNetwork(entry, registry).adaptation_settings()
    _, record = adapt_network(
        entry.load_network(),
        normalize_intensity(image, "2PM"),
        budget_s=args.adapt_seconds,
        settings=settings,
    )
    rows.append(
        (
            f"adapt ({args.adapt_seconds:g} s, batch {settings.batch_size} x {settings.patch_size_zyx})",
            f"{record['steps'] / record['seconds']:.2f} steps/s ({record['steps']} steps in {record['seconds']:.1f} s)",
        )
    )
    slim = {k: tuple(v) if isinstance(v, list) else v for k, v in entry.arguments.items()}
    for label, arguments in (("slim", slim), ("ResNet-34 (paper)", FAITHFUL)):
        for shape in ((2, 1, 16, 128, 128), (1, 1, 32, 128, 128)):
            seconds = _train_step_seconds(arguments, shape)
            rows.append((f"train step, {label}, batch {shape[0]} x {shape[2:]}", f"{seconds:.2f} s"))
    width = max(len(r[0]) for r in rows)
    print(f"| {'what'.ljust(width)} | time |")
    print(f"|{'-' * (width + 2)}|------|")
    for what, value in rows:
        print(f"| {what.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()
