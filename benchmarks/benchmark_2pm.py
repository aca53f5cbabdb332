"""Two-photon microscopy (2PM) pipeline: throughput, streaming peak memory, and the vessel graph against truth.

    python benchmarks/benchmark_2pm.py [--shape 256 512 512] [--methods vnet-2pm frangi]
                                       [--large-depths 700] [--device cpu] [--json out.json]

1. Throughput: ``vesselseg segment`` (read, preprocess, infer, build the scene, write; no 3D models) and
   ``vesselseg stream`` (tile by tile from disk) on a 2PM phantom of ``--shape``, each in its own process:
   wall time, voxels per second and peak resident memory (``os.wait4``), plus Dice and clDice against the
   phantom's labels, computed outside the timed run.
2. Vessel graph: seconds to extract the graph of the segmentation, and its figures beside the graph of the
   phantom's true labels (segments, bifurcations, total length, dangling, short and wrong bifurcations),
   with the length correlation LC and the slice-wise modified Hausdorff distance of the 2PM paper (Sec. 4.5).
3. Streaming memory: ``vesselseg stream`` on 1024 x 1024 x D uint16 stacks for each D of ``--large-depths``
   (the phantom tiled to that size and written to a ``.npy`` on disk), peak resident memory beside the
   bound that :func:`~VesselSegLib.inference.streaming.peak_memory_bound_bytes` states.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from measured_process import run_measured

from VesselSegLib.graph import extract_vessel_graph
from VesselSegLib.io import Volume, read_volume, write_volume
from VesselSegLib.metrics import cldice, dice
from VesselSegLib.metrics.graph_metrics import length_correlation, modified_hausdorff_per_slice_mm
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.phantoms import make_phantom_case

CLI = [sys.executable, "-m", "VesselSegLib.cli.main"]
GRAPH_FIGURES = (
    "segments",
    "bifurcations",
    "end_points",
    "total_length_mm",
    "dangling_segments",
    "short_segments",
    "wrong_bifurcations",
)


def _segment(input_path: Path, method: str, out: Path, device: str) -> dict:
    command = [*CLI, "segment", str(input_path), "--modality", "2PM", "--method", method, "--out", str(out)]
    run = run_measured([*command, "--device", device, "--no-models", "--quiet"], f"segment {method}")
    return {**run, "summary": json.loads((out / "summary.json").read_text())}


def _stream(input_path: Path, method: str, out: Path, device: str, spacing_xyz) -> dict:
    command = [*CLI, "stream", str(input_path), "--method", method, "--out", str(out), "--device", device]
    command += ["--spacing", *map(str, spacing_xyz), "--quiet"]
    run = run_measured(command, f"stream {method}")
    return {**run, "summary": json.loads((out / "summary.json").read_text())}


def _graph_row(mask: np.ndarray, spacing_zyx) -> tuple[dict, float]:
    tick = time.perf_counter()
    graph = extract_vessel_graph(mask, spacing_zyx)
    seconds = time.perf_counter() - tick
    return graph.summary(), seconds


def _tiled_stack(path: Path, image: np.ndarray, shape_zyx: tuple[int, int, int]) -> None:
    """Write ``image`` mirror-tiled to ``shape_zyx`` into a uint16 ``.npy`` on disk, one Z slab at a time."""
    stack = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=shape_zyx)
    source = np.clip(image, 0, 65535).astype(np.uint16)
    reps = [math.ceil(s / t) + 1 for s, t in zip(shape_zyx[1:], source.shape[1:], strict=True)]
    plane_tile = np.pad(
        source,
        [(0, 0)] + [(0, (r - 1) * t) for r, t in zip(reps, source.shape[1:], strict=True)],
        "symmetric",
    )
    plane_tile = plane_tile[:, : shape_zyx[1], : shape_zyx[2]]
    depth = source.shape[0]
    for z0 in range(0, shape_zyx[0], depth):
        z1 = min(z0 + depth, shape_zyx[0])
        block = plane_tile if (z0 // depth) % 2 == 0 else plane_tile[::-1]  # mirror along Z: no seams
        stack[z0:z1] = block[: z1 - z0]
    stack.flush()
    del stack


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(256, 512, 512), metavar=("Z", "Y", "X"))
    parser.add_argument(
        "--methods", nargs="+", default=None, help="Registry names (default: 2PM default + frangi)."
    )
    parser.add_argument(
        "--large-depths", nargs="*", type=int, default=[64, 700], help="Z of 1024x1024xZ stacks."
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--spacing-zyx",
        nargs=3,
        type=float,
        default=(0.005, 0.001, 0.001),
        help="phantom voxel size in mm (default: the 2PM default model's training spacing, 5 x 1 x 1 um, which "
        "streaming needs: it cannot resample; the README's table until 2026-12-06 used 0.002 0.001 0.001)",
    )
    parser.add_argument(
        "--radius-model",
        choices=("2pm-physical", "voxel"),
        default="2pm-physical",
        help="phantom vessel radii: micrometres of mouse cortex (default) or 1-2 voxels (the earlier table)",
    )
    parser.add_argument("--json", type=Path, help="Also write the measurements to this JSON file.")
    args = parser.parse_args()
    registry = ModelRegistry.default()
    default = registry.default_for("2PM").name
    methods = args.methods or list(dict.fromkeys([default, "frangi"]))
    results: dict = {"shape_zyx": list(args.shape), "device": args.device, "cpu_count": os.cpu_count()}
    voxels = math.prod(args.shape)

    with tempfile.TemporaryDirectory(dir=os.environ.get("VESSELSEG_BENCH_TMP")) as folder:
        folder = Path(folder)
        tick = time.perf_counter()
        case = make_phantom_case(
            "2PM",
            tuple(args.shape),
            seed=args.seed,
            spacing_zyx=tuple(args.spacing_zyx),
            radius_model=args.radius_model,
        )
        results["phantom_seconds"] = time.perf_counter() - tick
        spacing_xyz = tuple(reversed(case.spacing_zyx))
        image = np.clip(case.image, 0, 65535).astype(np.uint16)
        nrrd = write_volume(Volume(image, spacing_xyz), folder / "phantom.nrrd")
        npy = folder / "phantom.npy"
        np.save(npy, image)
        truth = case.class_map > 0

        rows = []
        for method in methods:
            out = folder / f"segment-{method}"
            run = _segment(nrrd, method, out, args.device)
            predicted = read_volume(out / "labels.nii.gz").array > 0
            rows.append(
                {
                    "command": "segment",
                    "method": method,
                    "wall_s": run["wall_s"],
                    "peak_rss_mib": run["peak_rss_mib"],
                    "dice": dice(predicted, truth),
                    "cldice": cldice(predicted, truth),
                    "run_time_s": run["summary"]["run_time_s"],
                }
            )
            if method == methods[0]:
                prediction_for_graph = predicted
        stream_method = methods[0] if registry.get(methods[0]).kind == "network" else default
        run = _stream(npy, stream_method, folder / "stream", args.device, spacing_xyz)
        streamed = np.load(folder / "stream" / "probabilities.npy", mmap_mode="r")
        streamed_mask = np.asarray(streamed).max(axis=0) >= 0.5
        rows.append(
            {
                "command": "stream",
                "method": stream_method,
                "wall_s": run["wall_s"],
                "peak_rss_mib": run["peak_rss_mib"],
                "dice": dice(streamed_mask, truth),
                "cldice": cldice(streamed_mask, truth),
                "run_time_s": run["summary"]["run_time_s"],
            }
        )
        del streamed
        results["throughput"] = rows

        _graph_row(truth[:16, :32, :32], case.spacing_zyx)  # skan compiles its numba kernels on first use
        true_graph, true_seconds = _graph_row(truth, case.spacing_zyx)
        per_slice = modified_hausdorff_per_slice_mm(prediction_for_graph, truth, case.spacing_zyx)
        predicted_graph, predicted_seconds = _graph_row(prediction_for_graph, case.spacing_zyx)
        results["graph"] = {
            "method": methods[0],
            "truth": true_graph,
            "prediction": predicted_graph,
            "seconds_truth": true_seconds,
            "seconds_prediction": predicted_seconds,
            "length_correlation": length_correlation(prediction_for_graph, truth, case.spacing_zyx),
            # Mean over the slices where both masks have vessels; slices with vessels in one mask only are
            # counted apart (their MHD is unbounded).
            "slicewise_mhd_mm": float(np.mean(per_slice[np.isfinite(per_slice)])),
            "one_sided_slices": int(np.count_nonzero(np.isinf(per_slice))),
        }

        large = []
        for depth in args.large_depths:
            shape = (depth, 1024, 1024)
            path = folder / f"stack-{depth}.npy"
            _tiled_stack(path, image, shape)
            run = _stream(path, stream_method, folder / f"stream-{depth}", args.device, spacing_xyz)
            summary = run["summary"]
            large.append(
                {
                    "shape_zyx": list(shape),
                    "wall_s": run["wall_s"],
                    "peak_rss_mib": run["peak_rss_mib"],
                    "bound_mib_without_network": summary["streaming"]["memory_bound_bytes_without_network"]
                    / 2**20,
                    "tiles": summary["streaming"]["tiles"],
                    "input_mib": path.stat().st_size / 2**20,
                }
            )
            for leftover in (path, folder / f"stream-{depth}"):
                if leftover.is_dir():
                    for item in leftover.iterdir():
                        item.unlink()
                    leftover.rmdir()
                else:
                    leftover.unlink()
        results["large"] = large

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, device {args.device}"
    print(
        f"# 2PM phantom {' x '.join(map(str, args.shape))} (seed {args.seed}), {voxels / 1e6:.1f} Mvoxels; {machine}"
    )
    print("| command | method | wall s | Mvoxel/s | peak RSS MiB | Dice | clDice |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['command']} | {row['method']} | {row['wall_s']:.1f} | {voxels / row['wall_s'] / 1e6:.2f} | "
            f"{row['peak_rss_mib']:.0f} | {row['dice']:.3f} | {row['cldice']:.3f} |"
        )
    graph = results["graph"]
    print(
        f"\n# Vessel graph of {graph['method']}'s segmentation vs the phantom's true labels "
        f"(extraction {graph['seconds_prediction']:.1f} s; truth {graph['seconds_truth']:.1f} s); "
        f"LC {graph['length_correlation']:.3f}, slice-wise MHD {graph['slicewise_mhd_mm'] * 1000:.2f} um "
        f"({graph['one_sided_slices']} slices with vessels in one mask only)"
    )
    print("| figure | truth | prediction |")
    print("|---|---|---|")
    for key in GRAPH_FIGURES:
        print(
            f"| {key} | {graph['truth'].get(key, float('nan')):.4g} | {graph['prediction'].get(key, float('nan')):.4g} |"
        )
    if large:
        print("\n# vesselseg stream on 1024 x 1024 x Z uint16 stacks (input on disk, never whole in memory)")
        print("| Z | input MiB | tiles | wall s | peak RSS MiB | stated bound MiB (+ network, + Python) |")
        print("|---|---|---|---|---|---|")
        for row in large:
            print(
                f"| {row['shape_zyx'][0]} | {row['input_mib']:.0f} | {row['tiles']} | {row['wall_s']:.0f} | "
                f"{row['peak_rss_mib']:.0f} | {row['bound_mib_without_network']:.0f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
