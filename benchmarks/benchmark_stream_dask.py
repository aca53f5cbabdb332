"""Throughput of ``vesselseg stream`` in one process and on local Dask clusters of 1 and 2 workers.

    python benchmarks/benchmark_stream_dask.py [--shape 48 512 512] [--workers 1 2] [--tile 16 256 256]

A 2PM phantom stack (physical vessel radii, 5 x 1 x 1 um, uint16 ``.npy``) is streamed with the 2PM default
by the command line in a fresh process per row: once without Dask (one process, two torch threads), then
with ``--workers N`` for each N (N one-thread worker processes; the cluster's start-up is in the wall time).
Printed per row: wall seconds of the whole command, Mvoxel/s, tiles, and the largest difference of the
probabilities from the single-process run (the outputs must agree). The overhead of Dask on this machine is
the 1-worker row against the single-process row run with one thread (``--single-threads 1``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from VesselSegLib.phantoms import make_phantom_case


def stream(stack: Path, out: Path, tile, extra: list[str], threads: int | None = None) -> tuple[float, dict]:
    import subprocess

    command = [sys.executable, "-m", "VesselSegLib.cli.main", "stream", str(stack), "--out", str(out),
               "--spacing", "0.001", "0.001", "0.005", "--tile", *map(str, tile), "--output-dtype", "float32",
               "--device", "cpu", "--backend", "pytorch", "--quiet", *extra]  # fmt: skip
    environment = dict(os.environ)
    if threads is not None:
        environment.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    started = time.perf_counter()
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started, json.loads((out / "summary.json").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", nargs=3, type=int, default=[48, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--tile", nargs=3, type=int, default=[16, 256, 256], metavar=("Z", "Y", "X"))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument(
        "--single-threads", type=int, default=None, help="torch threads of the one-process row"
    )
    args = parser.parse_args(argv)
    case = make_phantom_case(
        "2PM", tuple(args.shape), spacing_zyx=(0.005, 0.001, 0.001), seed=7, radius_model="2pm-physical"
    )
    voxels = int(np.prod(args.shape))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        stack = folder / "stack.npy"
        np.save(stack, np.clip(case.image, 0, 65535).astype(np.uint16))
        seconds, summary = stream(stack, folder / "single", args.tile, [], args.single_threads)
        reference = np.load(folder / "single" / "probabilities.npy")
        rows.append(("one process", seconds, summary, 0.0))
        for workers in args.workers:
            out = folder / f"workers-{workers}"
            seconds, summary = stream(stack, out, args.tile, ["--workers", str(workers)])
            difference = float(np.abs(np.load(out / "probabilities.npy") - reference).max())
            rows.append((f"--workers {workers}", seconds, summary, difference))
    print(
        f"vesselseg stream, vnet-2pm, {' x '.join(map(str, args.shape))} 2PM phantom ({voxels / 1e6:.1f} Mvoxels), "
        f"tile {' x '.join(map(str, args.tile))}, {os.cpu_count()} CPUs"
    )
    print()
    print("| run | wall s | Mvoxel/s | tiles | max abs difference from one process |")
    print("|---|---|---|---|---|")
    for name, seconds, summary, difference in rows:
        print(
            f"| {name} | {seconds:.1f} | {voxels / seconds / 1e6:.2f} | {summary['streaming']['tiles']} | "
            f"{difference:.1e} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
