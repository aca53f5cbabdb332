"""``vesselseg``: segment vessels from the command line, with the Slicer module's Logic on a real MRML scene.

    vesselseg segment INPUT --modality TOF-MRA --out DIR [--method NAME] [--mask MASK] [--probabilities] ...
    vesselseg demo [--out DIR]          # the bundled sample volume
    vesselseg stream STACK --out DIR [--tile Z Y X]   # stacks larger than memory, tile by tile
    vesselseg methods                    # the model registry

The output folder is written whole or not at all: everything goes to a hidden temporary folder beside it
that is renamed into place at the end, and removed on failure or Ctrl+C.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from VesselSegLib import __version__
from VesselSegLib.errors import CommandError, SegmentationCancelled, TerminatedBySignal

logger = logging.getLogger("vesselseg")
SAMPLE_VOLUME_NAME = "sample_tof_mra.nrrd"
SAMPLE_LABELS_NAME = "sample_tof_mra_labels.nrrd"
SAMPLE_MASK_NAME = "sample_brain_mask.nrrd"
SAMPLE_SWI_NAME = "sample_swi.nrrd"
SAMPLE_MODALITY = "TOF-MRA"


def _is_ensemble(method: str | None, modality: str) -> bool:
    from VesselSegLib.request import SegmentationRequest

    return SegmentationRequest(modality=modality, method=method).resolve().entry.kind == "ensemble"


def _add_segment_options(parser: argparse.ArgumentParser) -> None:
    from VesselSegLib.cli.options import add_in_memory_options, add_request_options

    add_request_options(parser, default_modality="TOF-MRA")
    add_in_memory_options(parser)
    parser.add_argument("--mask", type=Path, default=None, help="Brain/region mask on the input's grid.")
    parser.add_argument(
        "--companion",
        action="append",
        metavar="MODALITY=PATH",
        help="Co-registered image of another contrast on the input's grid, for methods that read several "
        "(VC-Net: vein and micro from SWI), e.g. SWI=swi.nii.gz (repeatable).",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="Reference class map (0 bg, 1 artery, 2 vein, 3 micro) or binary vessel mask on the input's grid: "
        "adds quality metrics to summary.json.",
    )
    parser.add_argument(
        "--model-format", choices=("vtk", "ply"), default="vtk", help="3D model file format (default vtk)."
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="Replace DIR if it holds a previous VesselSeg output (and only then).",
    )
    parser.add_argument("--quiet", action="store_true", help="No progress bar.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vesselseg", description="Blood-vessel segmentation of 3D images.")
    parser.add_argument("--version", action="version", version=f"vesselseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    segment = commands.add_parser("segment", help="Segment one volume and write the outputs to a folder.")
    segment.add_argument("input", type=Path, help="Volume: .nii(.gz), .nrrd, .mha, or multi-page .tif stack.")
    segment.add_argument(
        "--out", type=Path, required=True, help="Output folder (created; its parent must exist)."
    )
    _add_segment_options(segment)
    demo = commands.add_parser("demo", help="Segment the bundled sample TOF-MRA volume.")
    demo.add_argument(
        "--out", type=Path, default=Path("vesselseg-demo"), help="Output folder (default ./vesselseg-demo)."
    )
    _add_segment_options(demo)
    commands.add_parser("methods", help="List the methods of the model registry.")
    info = commands.add_parser(
        "info",
        help="Show this machine's devices and the precision networks run in (a one-time measured probe).",
    )
    info.add_argument(
        "--probe-again", action="store_true", help="Measure again instead of reading the cached probe."
    )
    info.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto).")
    _add_stream_command(commands)
    return parser


def _add_stream_command(commands) -> None:
    stream = commands.add_parser(
        "stream",
        help="Segment a stack larger than memory tile by tile (probabilities and class map, NRRD/npy or OME-Zarr).",
        description="Reads tiles from a TIFF stack, raw NRRD, .npy file or (OME-)Zarr store and writes the probabilities and "
        "the class map tile by tile, so memory stays bounded whatever the stack size. No MRML scene, "
        "models, preview or small-component removal: use 'segment' for volumes that fit in memory.",
    )
    stream.add_argument(
        "input", type=Path, help="Stack: .tif/.tiff, raw .nrrd/.nhdr, .npy, or a .zarr store (OME-Zarr)."
    )
    stream.add_argument(
        "--out", type=Path, required=True, help="Output folder (created; its parent must exist)."
    )
    from VesselSegLib.cli.options import add_request_options

    add_request_options(stream, default_modality="2PM")
    stream.add_argument(
        "--tile", nargs=3, type=int, metavar=("Z", "Y", "X"), help="Tile core size (default 128 512 512)."
    )
    stream.add_argument(
        "--output-dtype",
        default="float16",
        choices=("float16", "uint8", "float32"),
        help="Type of the stored probabilities (default float16).",
    )
    stream.add_argument(
        "--output-format",
        default="nrrd",
        choices=("nrrd", "ome-zarr"),
        help="nrrd: labels.nrrd and probabilities.npy (default); ome-zarr: labels.ome.zarr and "
        "probabilities.ome.zarr, chunked and compressed, for napari, Fiji/BigDataViewer, neuroglancer.",
    )
    stream.add_argument(
        "--force",
        action="store_true",
        help="Replace DIR if it holds a previous VesselSeg output (and only then).",
    )
    stream.add_argument("--quiet", action="store_true", help="No progress bar.")
    cluster = stream.add_mutually_exclusive_group()
    cluster.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="Compute the tiles on a local Dask cluster of N one-thread processes (pip install 'dask[distributed]').",
    )
    cluster.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="Compute the tiles on the Dask scheduler at ADDRESS (e.g. tcp://10.0.0.5:8786); its workers must "
        "see the input path.",
    )


def run_stream(args: argparse.Namespace) -> dict:
    """``vesselseg stream``: bounded-memory segmentation of ``args.input`` into ``args.out``."""
    from VesselSegLib.cli.options import request_from_args
    from VesselSegLib.cli.summary import build_summary
    from VesselSegLib.inference.large_volume import segment_large_volume
    from VesselSegLib.inference.streaming import DEFAULT_TILE_SIZE_ZYX

    # Streaming thresholds slab by slab: no small-component removal (it needs the whole class map).
    plan = request_from_args(args).replace(min_component_mm3=0.0).resolve()
    if not Path(args.input).exists():
        raise CommandError(f"The input file {args.input} does not exist; check the path.")
    started = time.perf_counter()
    output = _prepare_output(args.out, args.force, inputs=(args.input,))
    staging = output.path
    progress, close_bar = _progress_bar(args.quiet)
    client = None
    try:
        if args.workers is not None or args.dask is not None:
            from VesselSegLib.inference.distributed import connect

            client = connect(address=args.dask, workers=args.workers)
        streamed = segment_large_volume(
            args.input,
            staging,
            plan,
            spacing_xyz=None if args.spacing is None else tuple(args.spacing),
            tile_size_zyx=tuple(args.tile) if args.tile else DEFAULT_TILE_SIZE_ZYX,
            output_dtype=args.output_dtype,
            output_format=args.output_format,
            dask_client=client,
            progress=progress,
        )
        run_time_s = {**streamed.pop("run_time_s"), "total": time.perf_counter() - started}
        summary = build_summary(
            command="stream", input_path=args.input, request=plan.request, run_time_s=run_time_s, **streamed
        )
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        output.commit()  # renamed into place, never over a folder that appeared meanwhile
        return summary
    except BaseException:
        output.discard()
        raise
    finally:
        close_bar()
        if client is not None:
            from VesselSegLib.inference.distributed import close

            close(client)


def _progress_bar(quiet: bool):
    """A progress callback drawing a tqdm bar on stderr; returns (callback, close)."""
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(
        total=100,
        unit="%",
        desc="VesselSeg",
        file=sys.stderr,
        bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}] {postfix}",
    )
    lock = threading.Lock()
    broken = []  # set once the terminal went away: the run goes on without a bar

    def callback(fraction: float, message: str) -> None:
        if broken:
            return
        with lock:
            try:
                bar.n = round(100 * fraction, 1)
                bar.set_postfix_str(message, refresh=False)
                bar.refresh()
            except (OSError, ValueError):  # stderr closed or a broken pipe: progress is not worth the run
                broken.append(True)

    def close() -> None:
        with contextlib.suppress(OSError, ValueError):
            bar.close()

    return callback, close


def _prepare_output(out: Path, force: bool, inputs: Sequence[Path | None] = ()):
    """Stage ``out`` (``VesselSegLib.io.output_folder``): checked against the inputs and --force's rule, then
    written in a hidden locked folder beside it; ``.commit()`` renames that into place, ``.discard()`` (also
    run on SIGINT/SIGTERM/SIGHUP) removes it. Raises ``OutputFolderError`` (a ValueError) with one line."""
    from VesselSegLib.io.output_folder import StagedOutputFolder

    output = StagedOutputFolder(out, inputs=inputs, force=force)
    output.stage()
    return output


def _read_inputs(args: argparse.Namespace, companions: dict[str, Path]):
    """Read every file of the run up front (input, mask, companions, reference), with ``--spacing`` applied
    to all of them, and check them together, so that a bad one is refused before any long work."""
    from VesselSegLib.inference.inputs import SegmentationInputs
    from VesselSegLib.io import read_volume

    spacing = None if args.spacing is None else tuple(args.spacing)
    files = {"image": args.input, "mask": args.mask, "reference": args.reference}
    files.update({f"{modality} companion": path for modality, path in companions.items()})
    for role, path in files.items():
        if path is not None and not Path(path).exists():
            raise CommandError(f"The {role} file {path} does not exist; check the path.")
    read = lambda path: None if path is None else read_volume(path, spacing_xyz=spacing)  # noqa: E731
    inputs = SegmentationInputs(
        image=read(args.input),
        mask=read(args.mask),
        companions={modality: read(path) for modality, path in companions.items()},
        reference=read(args.reference),
        spacing_given=spacing is not None,
        names={role: f"{role} {Path(path).name}" for role, path in files.items() if path is not None},
    )
    inputs.check(tuple(companions))
    return inputs


def _node_name(path: Path) -> str:
    return path.name.split(".")[0] or "input"


def _write_segment_outputs(args, staging: Path, inputs, outputs) -> dict:
    """Write the segmentation, labels, models, graph, probabilities, the method's auxiliary images (ROSE's
    ``super_resolved.nrrd``) and the preview into ``staging``."""
    from VesselSegLib.io import write_volume
    from VesselSegLib.io.output_folder import signals_deferred

    with signals_deferred():  # VTK's extension modules must not be interrupted half-loaded
        from VesselSegLib.mrml.export import write_model_files, write_segmentation
    from VesselSegLib.preprocessing import normalize_intensity
    from VesselSegLib.visualization import write_preview

    result = outputs.result
    write_segmentation(outputs.segmentationNode, staging / "segmentation.seg.nrrd")
    write_volume(result.output_volume(inputs.image), staging / "labels.nii.gz")
    files: dict = {"segmentation": "segmentation.seg.nrrd", "labels": "labels.nii.gz", "models": {}}
    if outputs.modelNodes:
        paths = write_model_files(outputs.modelNodes, staging / "models", file_format=args.model_format)
        files["models"] = {name: str(Path(p).relative_to(staging)) for name, p in paths.items()}
    files["graph"] = {}
    if outputs.graph is not None:
        outputs.graph.write_graphml(staging / "graph.graphml")
        outputs.graph.write_json(staging / "graph.json")
        centrelines = write_model_files(
            {"centrelines": outputs.graphModelNode}, staging / "models", file_format=args.model_format
        )["centrelines"]
        files["graph"] = {
            "graphml": "graph.graphml",
            "json": "graph.json",
            "centrelines": str(centrelines.relative_to(staging)),
        }
    files["probabilities"] = {}
    for name, probability in result.probabilities.items():
        path = write_volume(
            result.output_volume(inputs.image, probability), staging / f"probability_{name}.nii.gz"
        )
        files["probabilities"][name] = path.name
    files["images"] = {}
    for name, array in result.images.items():  # e.g. ROSE's super_resolved.nrrd, on the output grid
        path = write_volume(result.output_volume(inputs.image, array), staging / f"{name}.nrrd")
        files["images"][name] = path.name
    mask = None if inputs.mask is None else inputs.mask.array > 0
    normalized = normalize_intensity(inputs.image.array, outputs.result.modality, mask)
    for axis, factor in enumerate(result.output_scale_zyx):  # the preview shows the class map's grid
        normalized = normalized.repeat(factor, axis) if factor != 1 else normalized
    write_preview(
        staging / "preview.png",
        normalized,
        result.class_map,
        result.spacing_zyx,
        title=f"{args.input.name} - {result.method_display_name}",
    )
    files["preview"] = "preview.png"
    return files


def run_segment(args: argparse.Namespace) -> dict:
    """Segment ``args.input`` into ``args.out``; returns the summary written to summary.json."""
    from VesselSegLib.cli.options import parse_companions, request_from_args
    from VesselSegLib.cli.summary import build_summary

    companions = parse_companions(args.companion)
    request = request_from_args(args, companion_modalities=tuple(companions))
    request.resolve()  # an unknown method or class is refused before reading anything
    started = time.perf_counter()
    inputs = _read_inputs(args, companions)
    read_seconds = time.perf_counter() - started
    output = _prepare_output(
        args.out, args.force, inputs=(args.input, args.mask, args.reference, *companions.values())
    )
    staging = output.path
    progress, close_bar = _progress_bar(args.quiet)
    try:
        from VesselSegLib.io.output_folder import signals_deferred

        tick = time.perf_counter()
        with signals_deferred():  # a signal raised inside VTK's or MRML's module set-up ends in a segfault
            from VesselSegLib.mrml.logic import VesselSegLogic
            from VesselSegLib.mrml.scene import create_headless_scene, volume_node_from_volume
        # Loaded here rather than inside the Logic so that the profile says what they cost (about 5 s on a
        # 2-core CPU: PyTorch, and MONAI, which loads all its submodules) instead of adding it to the scene's time.
        import VesselSegLib.inference.sliding_window  # noqa: F401  (PyTorch and MONAI)

        import_seconds = time.perf_counter() - tick
        tick = time.perf_counter()
        scene = create_headless_scene()
        node = lambda volume, name: None if volume is None else volume_node_from_volume(scene, volume, name)  # noqa: E731
        outputs = VesselSegLogic().process(
            node(inputs.image, _node_name(args.input)),
            request,
            maskVolume=node(inputs.mask, "mask"),
            companionVolumes={m: node(v, f"companion_{m}") for m, v in inputs.companions.items()} or None,
            referenceVolume=node(inputs.reference, "reference"),
            createProbabilityVolumes=False,  # written as files from the result's arrays
            createImageVolumes=False,  # likewise (super_resolved.nrrd)
            spacingGiven=inputs.spacing_given,
            progressCallback=progress,
        )
        process_seconds = time.perf_counter() - tick
        result = outputs.result
        tick = time.perf_counter()
        files = _write_segment_outputs(args, staging, inputs, outputs)
        write_seconds = time.perf_counter() - tick
        if outputs.referenceScoredAsBinary:
            logger.warning(
                "Reference %s is not a class map of %s: scored as a binary vessel mask.",
                args.reference.name,
                ", ".join(result.vessel_classes),
            )
        summary = build_summary(
            command="segment",
            input_path=args.input,
            grid=inputs.image.grid,
            output_grid=result.output_volume(inputs.image).grid,
            request=request,
            method=result.method,
            method_display_name=result.method_display_name,
            model_sha256=result.model_sha256,
            device=result.device,
            runtime=result.runtime,
            vessel_classes=result.vessel_classes,
            thresholds=result.thresholds,
            voxel_count={name: int(result.binary_mask(name).sum()) for name in result.vessel_classes},
            measure_spacing_zyx=result.spacing_zyx,
            run_time_s={
                "read": read_seconds,
                "imports": import_seconds,  # VTK, MRML, PyTorch and MONAI, loaded on first use
                "segment": result.seconds,
                **result.timings,
                # The MRML scene with the input's volume node, the segmentation node, closed surfaces, model
                # and graph nodes.
                "scene_and_models": process_seconds - result.seconds,
                "write": write_seconds,
                "total": time.perf_counter() - started,
            },
            files=files,
            spacing_check=result.spacing_check,
            resampling=result.resampling,
            preprocessing=result.preprocessing,
            adaptation=result.adaptation,
            metrics=outputs.metrics,
            graph=None if outputs.graph is None else outputs.graph.summary(),
        )
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        output.commit()  # renamed into place, never over a folder that appeared meanwhile
        return summary
    except BaseException:
        output.discard()
        raise
    finally:
        close_bar()


def run_info(args) -> dict:
    """Print and return the machine facts and the runtime choice for ``args.device``."""
    import torch

    from VesselSegLib.inference import runtime
    from VesselSegLib.inference.onnx_backend import available_backends
    from VesselSegLib.inference.sliding_window import resolve_device

    if args.probe_again:
        with contextlib.suppress(FileNotFoundError):
            runtime.cache_path().unlink()  # VesselSeg's own cache file
        runtime.forget_choices()
    device = resolve_device(args.device)
    choice = runtime.choose_runtime(device, "auto")
    facts = {
        "vesselseg": __version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        **{k: v for k, v in runtime.machine_key().items() if k in ("cpu", "native_bfloat16")},
        "runtime": choice.as_record(),
        # measured per model and window at first use (VesselSegLib/inference/onnx_backend.py)
        "exported_backends": list(available_backends()),
        "probe_cache": str(runtime.cache_path()),
    }
    for key, value in facts.items():
        print(f"{key:<16} {json.dumps(value)}")
    return facts


def run_methods() -> None:
    from VesselSegLib.models.registry import ModelRegistry

    registry = ModelRegistry.default()
    for entry in registry.entries():
        defaults = f" (default for {', '.join(entry.default_for)})" if entry.default_for else ""
        needs_mask = "; needs --mask (trained skull-stripped)" if entry.needs_brain_mask else ""
        print(
            f"{entry.name:<24} {entry.display_name}; modalities: {', '.join(entry.modalities)}; "
            f"classes: {', '.join(entry.vessel_classes)}{defaults}{needs_mask}"
        )


def _standard_streams() -> None:
    """Give closed standard descriptors /dev/null (``vesselseg ... 2>&-``): nothing VesselSeg opens then gets
    descriptor 0-2, and a progress bar or message with nowhere to go is dropped instead of failing."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            try:
                null = os.open(os.devnull, os.O_RDWR)
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
            except OSError:
                continue
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "r" if fd == 0 else "w"))  # noqa: SIM115


def _silence(stream) -> None:
    """Point a broken standard stream at /dev/null, so that Python's final flush does not fail again."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, stream.fileno())
        os.close(null)
    except (AttributeError, OSError, ValueError):
        pass


def _say(line: str) -> None:
    """Print one line on stderr; if stderr is closed, drop it quietly."""
    try:
        sys.stderr.write(line.replace("\n", " ") + "\n")
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        _silence(sys.stderr)


def _finish(signals, exiting: bool) -> None:
    """Remove any staging folder still pending (an exception between staging and its discard), then restore
    the signal handlers (``exiting``, after a signal: ignore more of them until the process ends)."""
    staging = sys.modules.get("VesselSegLib.io.output_folder")
    if hasattr(staging, "discard_uncommitted"):
        staging.discard_uncommitted()
    if signals is not None:
        signals.exit(ignore_late_signals=exiting)


def _report(error: BaseException) -> int | None:
    """Print the one line for ``error`` and return the exit code, or None for what Python should report."""
    staging = sys.modules.get("VesselSegLib.io.output_folder")  # absent if Ctrl+C stopped its import
    signum = staging.raised_signal() if hasattr(staging, "raised_signal") else None
    if isinstance(error, TerminatedBySignal):  # SIGTERM 143, SIGHUP 129
        _say(f"vesselseg: {error}; no output written.")
        return error.code
    if isinstance(error, KeyboardInterrupt | SegmentationCancelled):
        _say("vesselseg: cancelled; no output written.")
        return 130
    if isinstance(error, SystemExit):
        return None
    if signum is not None:  # a library turned the signal into another exception (an ImportError...)
        return _report(KeyboardInterrupt() if signum == signal.SIGINT else TerminatedBySignal(signum))
    if isinstance(error, CommandError | ValueError | FileNotFoundError):
        _say(f"vesselseg: error: {error}")
        return 1
    if isinstance(error, OSError):  # disk full, permission denied, read-only disk, a closed pipe
        if isinstance(error, BrokenPipeError):
            _silence(sys.stdout)
        describe = getattr(staging, "describe_os_error", str)
        _say(f"vesselseg: error: {describe(error)}")
        return 1
    return None


def main(argv: Sequence[str] | None = None) -> int:
    _standard_streams()
    signals = None
    try:
        # For the whole run Ctrl+C, SIGTERM and SIGHUP become exceptions (the first one; later ones are
        # ignored while cleaning up), so that every path below, lazy imports included, ends in one line
        # and leaves no partial output.
        from VesselSegLib.io.output_folder import SignalsAsExceptions

        signals = SignalsAsExceptions()
        signals.enter()
        logging.basicConfig(level=logging.WARNING, format="vesselseg: %(levelname)s: %(message)s")
        args = build_parser().parse_args(argv)

        if args.command == "methods":
            run_methods()
            return 0
        if args.command == "info":
            run_info(args)
            return 0
        if args.command == "stream":
            summary = run_stream(args)
            volumes = ", ".join(f"{k} {v:.4g} mm3" for k, v in summary["volume_mm3"].items())
            print(
                f"Wrote {args.out.expanduser().absolute()} ({summary['method']}, "
                f"{summary['run_time_s']['total']:.1f} s, {summary['streaming']['tiles']} tiles): {volumes}"
            )
            return 0
        if args.command == "demo":
            from VesselSegLib.resources import sample_data_dir

            args.input = sample_data_dir() / SAMPLE_VOLUME_NAME
            from VesselSegLib.request import canonical_modality

            if canonical_modality(args.modality) != SAMPLE_MODALITY:
                raise CommandError(
                    f"The sample volume is {SAMPLE_MODALITY}; drop --modality or pass {SAMPLE_MODALITY}."
                )
            if args.reference is None:
                # The sample is a phantom with known labels: score against them, so the demo shows metrics.
                args.reference = sample_data_dir() / SAMPLE_LABELS_NAME
            if _is_ensemble(args.method, args.modality) and not args.companion:
                # The same phantom rendered as SWI with its brain mask, for methods whose vein and micro
                # models read SWI (VC-Net); SWI is inverted inside the mask.
                args.companion = [f"SWI={sample_data_dir() / SAMPLE_SWI_NAME}"]
                args.mask = args.mask or sample_data_dir() / SAMPLE_MASK_NAME
        summary = run_segment(args)
        out = args.out.expanduser().absolute()
        volumes = ", ".join(f"{k} {v:.4g} mm3" for k, v in summary["volume_mm3"].items())
        print(f"Wrote {out} ({summary['method']}, {summary['run_time_s']['total']:.1f} s): {volumes}")
        return 0
    except BaseException as error:
        code = _report(error)
        if code is None:  # a usage error or --help (SystemExit), or a bug: Python reports it
            raise
        return code
    finally:
        _finish(signals, exiting=argv is None)  # argv None: the command itself, not a caller in-process


if __name__ == "__main__":
    sys.exit(main())
