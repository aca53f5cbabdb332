"""PyTorch against ONNX Runtime (and OpenVINO, when installed) for the shipped networks, one window each.

    pip install onnx onnxruntime [openvino]       # optional: VesselSeg does not need them
    python benchmarks/benchmark_backends.py [--models unet3d-baseline vnet-2pm] [--threads 2] [--repeats 5]

Each network of the registry is exported once (``VesselSegLib.inference.onnx_backend.export_network``, the
export VesselSeg runs: opset 17, dynamic axes) to a temporary folder and run on one window of its registry patch size (``--patch Z Y X`` overrides; a random
normalised image, batch 1) by:

- PyTorch, float32, channels_last_3d (what ``predict_probabilities`` does on a CPU);
- PyTorch, float32, contiguous (the layout without oneDNN's blocked kernels);
- with ``--compile``, PyTorch after ``torch.compile`` (the Inductor backend; its one-off compile time is printed
  apart, not in the row);
- OpenVINO CPU and ONNX Runtime CPU, each as ``onnx_backend.load_runner`` loads it (``--threads`` threads,
  OpenVINO held to float32), where installed.

Printed: the best of ``--repeats`` runs after one warm-up, Mvoxel/s of the window, the speed ratio to the
first row, the largest absolute difference of the logits from PyTorch's (equal output means < 1e-3), and the
share of the machine's peak each row reaches: the network's operations per window (PyTorch's
``FlopCounterMode``, a multiply-add counted as 2) over its time, against the float32 rate of a large matrix
product measured in the same run (``VesselSegLib.inference.runtime.matmul_peak_gflops``, what the runtime probe
records). A backend is worth adopting only where it is faster at equal output on the machine that runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from VesselSegLib.inference.onnx_backend import LOADABLE_BACKENDS, best_seconds, export_network, load_runner
from VesselSegLib.inference.runtime import machine_key, matmul_peak_gflops
from VesselSegLib.models.memory_format import set_3d_memory_format
from VesselSegLib.models.registry import ModelRegistry

DEFAULT_MODELS = ("unet3d-baseline", "vnet-2pm", "umis")


def window_gflop(network: torch.nn.Module, x: torch.Tensor) -> float:
    """Operations of one forward pass on ``x`` in GFLOP (convolutions, matrix products; a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        network(x)
    return counter.get_total_flops() / 1e9


def bench_model(
    entry, patch, threads: int, repeats: int, folder: Path, compile_network: bool = False
) -> list[dict]:
    network = entry.load_network().eval()
    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, *patch), dtype=np.float32))
    voxels = float(np.prod(patch))
    gflop = window_gflop(network, x)
    rows = []

    def add(backend: str, seconds: float, output: np.ndarray, reference: np.ndarray | None) -> None:
        diff = float(np.abs(output - reference).max()) if reference is not None else 0.0
        rows.append(
            {
                "model": entry.name,
                "backend": backend,
                "s": seconds,
                "mvox_s": voxels / seconds / 1e6,
                "max_diff": diff,
                "gflop": gflop,
                "gflops": gflop / seconds,
            }
        )

    # no_grad, not inference_mode: parameters converted to another memory format inside inference_mode
    # become inference tensors, which the ONNX exporter cannot trace.
    x_last = x.contiguous(memory_format=torch.channels_last_3d)
    set_3d_memory_format(network, torch.channels_last_3d)
    with torch.no_grad():
        seconds = best_seconds(lambda: network(x_last), repeats)
        reference = network(x_last).float().numpy()
    add("pytorch channels_last_3d", seconds, reference, None)
    if compile_network:
        compiled = torch.compile(network)
        with torch.no_grad():
            started = time.perf_counter()
            compiled(x_last)  # compiles
            print(
                f"{entry.name}: torch.compile took {time.perf_counter() - started:.1f} s on the first window"
            )
            seconds = best_seconds(lambda: compiled(x_last), repeats)
            add(
                "pytorch compiled (inductor) channels_last_3d",
                seconds,
                compiled(x_last).float().numpy(),
                reference,
            )
    set_3d_memory_format(network, torch.contiguous_format)
    with torch.no_grad():
        seconds = best_seconds(lambda: network(x), repeats)
        add("pytorch contiguous", seconds, network(x).numpy(), reference)

    onnx_path = folder / f"{entry.name}.onnx"
    try:
        export_network(network, patch, onnx_path)  # what the backends run: VesselSeg's own export
    except Exception as error:  # an operator the exporter cannot write: say so, keep the PyTorch rows
        print(f"{entry.name}: ONNX export failed ({type(error).__name__}: {str(error).splitlines()[0]})")
        return rows
    for backend in LOADABLE_BACKENDS:
        try:
            run = load_runner(backend, onnx_path)
        except ImportError:
            print(f"{backend} is not installed: pip install {backend}")
            continue
        seconds = best_seconds(lambda run=run: run(x.numpy()), repeats)
        add(f"{backend} cpu", seconds, run(x.numpy()), reference)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--patch", nargs=3, type=int, metavar=("Z", "Y", "X"), help="default: the registry's")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="add a torch.compile (Inductor) row")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    registry = ModelRegistry.default()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            entry = registry.get(name)
            patch = tuple(args.patch or entry.patch_size_zyx)
            rows += bench_model(entry, patch, args.threads, args.repeats, Path(folder), args.compile)
    peak = matmul_peak_gflops(torch.float32)
    print(f"Machine: {json.dumps(machine_key())}; {args.threads} thread(s); best of {args.repeats}")
    print(
        f"Peak: a float32 matrix product runs at {peak:.1f} GFLOP/s on this machine ({args.threads} thread(s))."
    )
    print()
    print(
        "| model | window | GFLOP per window (kFLOP/voxel) | backend | s | Mvoxel/s | speed vs first row |"
        " GFLOP/s | share of float32 peak | max abs logit difference |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    first: dict[str, float] = {}
    for row in rows:
        first.setdefault(row["model"], row["s"])
        patch = " x ".join(map(str, args.patch or registry.get(row["model"]).patch_size_zyx))
        per_voxel = (
            row["gflop"] * 1e6 / float(np.prod(args.patch or registry.get(row["model"]).patch_size_zyx))
        )
        print(
            f"| {row['model']} | {patch} | {row['gflop']:.1f} ({per_voxel:.1f}) | {row['backend']} | "
            f"{row['s']:.3f} | {row['mvox_s']:.2f} | {first[row['model']] / row['s']:.2f}x | "
            f"{row['gflops']:.1f} | {row['gflops'] / peak:.0%} | {row['max_diff']:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
