"""End-to-end speed and peak memory of ``vesselseg segment`` (read, infer, write) on a phantom.

    python benchmarks/benchmark_segment.py [--shape 128 448 448] [--methods unet3d-baseline frangi] [--device cpu]
        [--backends pytorch openvino onnxruntime] [--profile FOLDER]
    python benchmarks/benchmark_segment.py --modality 2PM --shape 256 512 512   # vnet-2pm and frangi

Each method runs in its own ``vesselseg segment`` process, so the peak resident memory measured is that of
the whole command (``os.wait4`` gives each child's own rusage). Scores against the phantom's labels are
computed afterwards from the written ``labels.nii.gz``, outside the timed run. 448 x 448 x 128 is
the size of the TubeTK MRA volumes the VC-Net paper uses.

Every stage of the run is a column (``summary.json``'s ``run_time_s``): start-up (the interpreter and the
command's own imports), read, library imports (VTK, MRML, PyTorch, MONAI), normalise, infer, post-process,
scene and models, write; then the command's user and system CPU seconds (system time is mostly page
faults). ``--profile FOLDER`` runs each command under ``cProfile`` as well (``FOLDER/<run>.prof``,
open with ``python -m pstats`` or snakeviz) and prints the functions with the most own time; the profiler
slows pure-Python code, so the timed table comes from runs without it.

``--backends``: each network method runs once per backend (``--backend`` of the command; filters once), and
"Dice vs first" compares its vessel map with the first backend's, so a faster backend shows it keeps the
output. Each run starts with a fresh backend cache (a first use measures and exports; its time is in the
row), then runs again with that cache: both rows are printed ("first use" and "cached"). The per-machine
precision probe is run once beforehand, outside every row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from measured_process import run_measured

from VesselSegLib.io import Volume, read_volume, write_volume
from VesselSegLib.metrics import cldice, dice
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME


def _run_method(
    input_path: Path,
    method: str,
    out: Path,
    device: str,
    backend: str,
    cache: Path,
    profile: Path | None = None,
    modality: str = "TOF-MRA",
) -> dict:
    profiler = [] if profile is None else ["-m", "cProfile", "-o", str(profile)]
    command = [
        sys.executable,
        *profiler,
        "-m",
        "VesselSegLib.cli.main",
        "segment",
        str(input_path),
        "--modality",
        modality,
        "--method",
        method,
        "--out",
        str(out),
        "--device",
        device,
        "--backend",
        backend,
        "--quiet",
    ]
    os.environ["VESSELSEG_CACHE_DIR"] = str(cache)  # the child's runtime and backend caches
    run = run_measured(command, method)
    summary = json.loads((out / "summary.json").read_text())
    return {**{k: run[k] for k in ("wall_s", "peak_rss_mib", "user_s", "sys_s")}, "summary": summary}


def _probe_precision(cache: Path) -> None:
    """Run the per-machine precision probe into ``cache`` before any timed run, so that no row pays it (a
    user's first run does, once per machine). The backend choice (``--backends``) stays unmeasured."""
    if not (cache / "runtime_probe.json").is_file():
        code = "from VesselSegLib.inference.runtime import choose_runtime; choose_runtime('cpu')"
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "VESSELSEG_CACHE_DIR": str(cache)}, check=True
        )


def _print_hot_spots(profile: Path, count: int = 15) -> None:
    """The ``count`` functions with the most own time in ``profile``, a markdown table."""
    import pstats

    stats = pstats.Stats(
        str(profile)
    ).stats  # (file, line, name) -> (calls, primitive, own s, cumulative s, callers)
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:count]
    print(f"\n# {profile.name}: functions with the most own time (under cProfile)")
    print("| own s | cumulative s | calls | function |")
    print("|---|---|---|---|")
    for (filename, line, name), (_, calls, own, cumulative, _) in rows:
        where = name if filename == "~" else f"{Path(filename).name}:{line} {name}"
        print(f"| {own:.2f} | {cumulative:.2f} | {calls} | `{where}` |")


def _score(out: Path, reference: np.ndarray, class_names: list[str]) -> dict:
    """Dice and clDice of the written class map, computed here so that scoring is not in the timed run."""
    predicted = read_volume(out / "labels.nii.gz").array
    scores = {}
    for name in class_names:
        label = VESSEL_CLASS_BY_NAME[name].label_value
        scores[name] = {"dice": dice(predicted == label, reference == label)}
    scores["vessel"] = {
        "dice": dice(predicted > 0, reference > 0),
        "cldice": cldice(predicted > 0, reference > 0),
    }
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(128, 448, 448), metavar=("Z", "Y", "X"))
    parser.add_argument(
        "--methods", nargs="+", default=None, help="Registry names (default: TOF default + frangi)."
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modality", default="TOF-MRA", choices=("TOF-MRA", "2PM"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--backends", nargs="+", default=["pytorch"], help="pytorch, openvino, onnxruntime, auto"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, metavar="FOLDER", help="also run each command under cProfile"
    )
    args = parser.parse_args()
    registry = ModelRegistry.default()
    methods = args.methods or list(dict.fromkeys([registry.default_for(args.modality).name, "frangi"]))

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        # 2PM: capillaries 2-4 um in radius, as the 2PM models are trained for (the default "voxel" radii,
        # 1-2 voxels across, vanish when vnet-2pm resamples 2 um slices to its 5 um).
        radius_model = "2pm-physical" if args.modality == "2PM" else "voxel"
        case = make_phantom_case(args.modality, tuple(args.shape), seed=args.seed, radius_model=radius_model)
        spacing_xyz = tuple(reversed(case.spacing_zyx))
        image = np.clip(np.round(case.image / np.percentile(case.image, 99.9) * 1500), 0, 4095).astype(
            np.int16
        )
        input_path = write_volume(Volume(image, spacing_xyz), folder / "phantom.nrrd")
        voxels = int(np.prod(args.shape))
        rows = []
        profiles: list[Path] = []
        for method in methods:
            is_network = registry.get(method).kind in ("network", "ensemble")
            first_map = None
            for backend in args.backends if is_network else args.backends[:1]:
                cache = folder / f"cache-{method}-{backend}"
                _probe_precision(cache)
                for run_name in ("first use", "cached") if backend != "pytorch" and is_network else ("",):
                    out = folder / f"out-{method}-{backend}-{run_name.replace(' ', '-')}"
                    run = _run_method(
                        input_path,
                        method,
                        out,
                        args.device,
                        backend,
                        cache,
                        modality=args.modality,
                    )
                    summary = run["summary"]
                    metrics = _score(out, case.class_map, summary["vessel_classes"])
                    vessel_map = read_volume(out / "labels.nii.gz").array > 0
                    first_map = vessel_map if first_map is None else first_map
                    metrics["agreement"] = dice(vessel_map, first_map)
                    ran = (summary.get("runtime") or {}).get("backend_by_model", {})
                    label = (
                        method
                        if not is_network
                        else f"{method} [{'/'.join(sorted({c['backend'] for c in ran.values()}) or [backend])}]"
                    )
                    label += f" {run_name}" if run_name else ""
                    rows.append((label, run, summary["run_time_s"], metrics))
                    if args.profile is not None:
                        args.profile.mkdir(parents=True, exist_ok=True)
                        name = "-".join(
                            part for part in (method, backend, run_name.replace(" ", "-")) if part
                        )
                        profiled = args.profile / f"{name}.prof"
                        _run_method(
                            input_path,
                            method,
                            out.with_name(out.name + "-profiled"),
                            args.device,
                            backend,
                            cache,
                            profile=profiled,
                            modality=args.modality,
                        )
                        profiles.append(profiled)

    print(
        f"# vesselseg segment on a {' x '.join(map(str, args.shape))} {args.modality} phantom (seed {args.seed}), "
        f"{voxels / 1e6:.1f} Mvoxels; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"device {args.device}"
    )
    print(
        "| method | wall s (process) | start-up s | read s | imports s | normalise s | infer s | post-process s |"
        " scene + models s | write s | user CPU s | system CPU s | Mvoxel/s (wall) | peak RSS MiB | Dice vessel |"
        " clDice vessel | Dice artery | Dice vein | Dice micro | Dice vs first |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for method, run, times, metrics in rows:
        wall = run["wall_s"]
        vessel = metrics.get("vessel", {})
        per_class = [
            f"{metrics[name]['dice']:.3f}" if name in metrics else "-" for name in ("artery", "vein", "micro")
        ]
        # "infer" is the network (or filter) and, for adaptive methods, the adaptation before it; resampling
        # to the model's voxel size, when there is any, counts with normalising.
        stages = (
            times["read"],
            times.get("imports", float("nan")),
            times.get("normalise_s", 0.0) + times.get("resample_s", 0.0),
            times.get("predict_s", 0.0) + times.get("adapt_s", 0.0),
            times.get("postprocess_s", 0.0),
            times["scene_and_models"],
            times["write"],
        )
        print(
            f"| {method} | {wall:.1f} | {wall - times['total']:.1f} | "
            + " | ".join(f"{value:.1f}" for value in stages)
            + f" | {run['user_s']:.1f} | {run['sys_s']:.1f} | {voxels / wall / 1e6:.2f} | {run['peak_rss_mib']:.0f} | "
            f"{vessel.get('dice', float('nan')):.3f} | {vessel.get('cldice', float('nan')):.3f} | "
            + " | ".join(per_class)
            + f" | {metrics['agreement']:.4f} |"
        )
    for profile in profiles:
        _print_hot_spots(profile)


if __name__ == "__main__":
    main()
