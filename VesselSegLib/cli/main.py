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
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from VesselSegLib import __version__
from VesselSegLib.io.atomic import default_file_mode
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

logger = logging.getLogger("vesselseg")
SAMPLE_VOLUME_NAME = "sample_tof_mra.nrrd"
SAMPLE_LABELS_NAME = "sample_tof_mra_labels.nrrd"
SAMPLE_MASK_NAME = "sample_brain_mask.nrrd"
SAMPLE_SWI_NAME = "sample_swi.nrrd"
SAMPLE_MODALITY = "TOF-MRA"


class CommandError(Exception):
    """A failure to report as one line and exit code 1."""


def _parse_thresholds(items: Sequence[str] | None) -> dict[str, float]:
    thresholds: dict[str, float] = {}
    for item in items or ():
        name, _, value = item.partition("=")
        if name not in VESSEL_CLASS_BY_NAME or not value:
            raise CommandError(
                f"--threshold takes CLASS=VALUE with CLASS in {', '.join(VESSEL_CLASS_BY_NAME)}; got {item!r}."
            )
        try:
            thresholds[name] = float(value)
        except ValueError:
            raise CommandError(f"--threshold {item!r}: {value!r} is not a number.") from None
    return thresholds


def _intensity_scale(text: str) -> float | str:
    """``--intensity-scale``: a positive number, or "auto"."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'auto'") from None
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"the factor must be a positive number, got {text!r}")
    return value


def _microscopy_options(args: argparse.Namespace) -> dict | None:
    scale = args.intensity_scale
    options = {
        "intensity_scale": scale,
        "subtract_slice_median": args.subtract_slice_median,
        "median_size": args.median_filter,
    }
    return options if any(value not in (None, False) for value in options.values()) else None


def _is_ensemble(method: str | None, modality: str) -> bool:
    from VesselSegLib.models.registry import ModelRegistry

    registry = ModelRegistry.default()
    entry = registry.default_for(modality) if method is None else registry.get(method)
    return entry.kind == "ensemble"


def _parse_companions(items: Sequence[str] | None) -> dict[str, Path]:
    from VesselSegLib.preprocessing.presets import MODALITY_PRESETS

    companions: dict[str, Path] = {}
    for item in items or ():
        modality, _, path = item.partition("=")
        if modality not in MODALITY_PRESETS or not path:
            raise CommandError(
                f"--companion takes MODALITY=PATH with MODALITY in {', '.join(MODALITY_PRESETS)}; got {item!r}."
            )
        if not Path(path).is_file():
            raise CommandError(f"--companion {item!r}: no such file {path!r}.")
        companions[modality] = Path(path)
    return companions


def _add_segment_options(parser: argparse.ArgumentParser) -> None:
    from VesselSegLib.preprocessing.presets import MODALITY_PRESETS

    parser.add_argument(
        "--modality", default="TOF-MRA", help=f"Preset: {', '.join(MODALITY_PRESETS)} (default TOF-MRA)."
    )
    parser.add_argument(
        "--method",
        default=None,
        help="Registry method name (default: best for the modality; see `vesselseg methods`).",
    )
    parser.add_argument("--mask", type=Path, default=None, help="Brain/region mask on the input's grid.")
    parser.add_argument(
        "--companion",
        action="append",
        metavar="MODALITY=PATH",
        help="Co-registered image of another contrast on the input's grid, for methods that read several "
        "(VC-Net: vein and micro from SWI), e.g. SWI=swi.nii.gz (repeatable).",
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        default=None,
        choices=list(VESSEL_CLASS_BY_NAME),
        help="Vessel classes to keep.",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto).")
    parser.add_argument(
        "--patch-size",
        nargs=3,
        type=int,
        metavar=("Z", "Y", "X"),
        default=None,
        help="Sliding-window patch in voxels.",
    )
    parser.add_argument("--overlap", type=float, default=None, help="Window overlap fraction in [0, 1).")
    parser.add_argument("--batch-size", type=int, default=2, help="Windows per forward pass (default 2).")
    parser.add_argument(
        "--threshold",
        action="append",
        metavar="CLASS=VALUE",
        help="Probability threshold, e.g. micro=0.4 (repeatable).",
    )
    parser.add_argument(
        "--min-component-mm3", type=float, default=None, help="Remove components smaller than this (mm^3)."
    )
    parser.add_argument(
        "--spacing",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        default=None,
        help="Voxel size in mm overriding the file's (TIFF stacks without metadata).",
    )
    parser.add_argument("--probabilities", action="store_true", help="Also write per-class probability maps.")
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        help="Reference class map (0 bg, 1 artery, 2 vein, 3 micro) on the input's grid: "
        "adds quality metrics to summary.json.",
    )
    parser.add_argument(
        "--model-format", choices=("vtk", "ply"), default="vtk", help="3D model file format (default vtk)."
    )
    parser.add_argument("--no-models", action="store_true", help="Skip 3D surface models.")
    parser.add_argument(
        "--intensity-scale",
        type=_intensity_scale,
        default=None,
        metavar="FACTOR|auto",
        help="2PM: multiply intensities by FACTOR first (the paper's manual matching), or 'auto' to estimate "
        "it against the model card's training-data percentiles; the factor goes to summary.json. The "
        "presets' percentile normalisation already absorbs any linear scale.",
    )
    parser.add_argument(
        "--subtract-slice-median", action="store_true", help="2PM: subtract each slice's median first."
    )
    parser.add_argument(
        "--median-filter",
        type=int,
        default=None,
        metavar="SIZE",
        help="2PM: 3D median filter (e.g. 3) first.",
    )
    parser.add_argument(
        "--graph",
        action="store_true",
        help="Also write the vessel graph (graph.graphml, graph.json, centrelines model coloured by radius) "
        "and its figures in summary.json.",
    )
    parser.add_argument("--force", action="store_true", help="Replace DIR if it exists.")
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
    _add_stream_command(commands)
    return parser


def _add_stream_command(commands) -> None:
    stream = commands.add_parser(
        "stream",
        help="Segment a stack larger than memory tile by tile (probabilities.npy, labels.nrrd).",
        description="Reads tiles from a TIFF stack, raw NRRD or .npy file and writes the probabilities and "
        "the class map tile by tile, so memory stays bounded whatever the stack size. No MRML scene, "
        "models, preview or small-component removal: use 'segment' for volumes that fit in memory.",
    )
    stream.add_argument("input", type=Path, help="Stack: .tif/.tiff, raw .nrrd/.nhdr, or .npy.")
    stream.add_argument(
        "--out", type=Path, required=True, help="Output folder (created; its parent must exist)."
    )
    stream.add_argument("--modality", default="2PM", help="Modality preset (default 2PM).")
    stream.add_argument("--method", default=None, help="A registry network (default: the preset's).")
    stream.add_argument(
        "--spacing",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        help="Voxel size in mm if the file has none.",
    )
    stream.add_argument(
        "--tile", nargs=3, type=int, metavar=("Z", "Y", "X"), help="Tile core size (default 128 512 512)."
    )
    stream.add_argument("--patch-size", nargs=3, type=int, metavar=("Z", "Y", "X"), help="Window size.")
    stream.add_argument("--overlap", type=float, default=None, help="Window overlap fraction in [0, 1).")
    stream.add_argument("--batch-size", type=int, default=2, help="Windows per forward pass (default 2).")
    stream.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default auto).")
    stream.add_argument(
        "--threshold", action="append", metavar="CLASS=VALUE", help="Probability threshold per class."
    )
    stream.add_argument(
        "--output-dtype",
        default="float16",
        choices=("float16", "uint8", "float32"),
        help="Type of probabilities.npy (default float16).",
    )
    stream.add_argument(
        "--subtract-slice-median",
        action="store_true",
        help="2PM: subtract each slice's median first (computed one plane at a time).",
    )
    stream.add_argument("--force", action="store_true", help="Replace DIR if it exists.")
    stream.add_argument("--quiet", action="store_true", help="No progress bar.")


def run_stream(args: argparse.Namespace) -> dict:
    """``vesselseg stream``: bounded-memory segmentation of ``args.input`` into ``args.out``."""
    from VesselSegLib.inference.large_volume import segment_large_volume
    from VesselSegLib.inference.streaming import DEFAULT_TILE_SIZE_ZYX

    thresholds = _parse_thresholds(args.threshold)
    started = time.perf_counter()
    staging = _prepare_output(args.out, args.force)
    progress, close_bar = _progress_bar(args.quiet)
    try:
        summary = segment_large_volume(
            args.input,
            staging,
            modality=args.modality,
            method=args.method,
            spacing_zyx=None if args.spacing is None else tuple(reversed(args.spacing)),
            tile_size_zyx=tuple(args.tile) if args.tile else DEFAULT_TILE_SIZE_ZYX,
            patch_size_zyx=tuple(args.patch_size) if args.patch_size else None,
            overlap=args.overlap,
            batch_size=args.batch_size,
            device=args.device,
            thresholds=thresholds or None,
            output_dtype=args.output_dtype,
            subtract_slice_median=args.subtract_slice_median,
            progress=progress,
        )
        summary = {"vesselseg_version": __version__, "input": str(args.input), **summary}
        summary["run_time_s"]["total"] = round(time.perf_counter() - started, 3)
        summary["machine"] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        out = args.out.expanduser().absolute()
        if out.exists():  # --force: swap the old folder out only once the new one is complete
            shutil.rmtree(out)
        os.replace(staging, out)
        return summary
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        close_bar()


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

    def callback(fraction: float, message: str) -> None:
        with lock:
            bar.n = round(100 * fraction, 1)
            bar.set_postfix_str(message, refresh=False)
            bar.refresh()

    return callback, bar.close


def _prepare_output(out: Path, force: bool) -> Path:
    out = out.expanduser().absolute()
    if not out.parent.is_dir():
        raise CommandError(f"The parent folder of --out ({out.parent}) does not exist; create it first.")
    if out.exists() and not force:
        raise CommandError(
            f"Output folder {out} already exists; choose another or pass --force to replace it."
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    os.chmod(staging, default_file_mode(directory=True))
    return staging


def run_segment(args: argparse.Namespace) -> dict:
    """Segment ``args.input`` into ``args.out``; returns the summary written to summary.json."""
    from VesselSegLib.io import read_volume, write_volume
    from VesselSegLib.preprocessing import get_preset, normalize_intensity

    get_preset(args.modality)  # fail fast on a bad preset, before any work
    thresholds = _parse_thresholds(args.threshold)
    companions = _parse_companions(args.companion)
    started = time.perf_counter()
    staging = _prepare_output(args.out, args.force)
    progress, close_bar = _progress_bar(args.quiet)
    try:
        from VesselSegLib.mrml.export import write_model_files, write_segmentation
        from VesselSegLib.mrml.logic import VesselSegLogic
        from VesselSegLib.mrml.scene import create_headless_scene, load_volume_node

        tick = time.perf_counter()
        volume = read_volume(args.input, spacing_xyz=args.spacing)
        scene = create_headless_scene()
        input_node = load_volume_node(
            scene, args.input, spacing_xyz=args.spacing, name=args.input.name.split(".")[0]
        )
        mask_node = None
        mask_array = None
        if args.mask is not None:
            mask_node = load_volume_node(scene, args.mask, name="mask")
            mask_array = read_volume(args.mask).array > 0
        companion_nodes = {
            modality: load_volume_node(scene, path, spacing_xyz=args.spacing, name=f"companion_{modality}")
            for modality, path in companions.items()
        }
        read_seconds = time.perf_counter() - tick

        logic = VesselSegLogic()
        tick = time.perf_counter()
        outputs = logic.process(
            input_node,
            maskVolume=mask_node,
            companionVolumes=companion_nodes or None,
            modality=args.modality,
            method=args.method,
            vesselClasses=tuple(args.classes) if args.classes else ("artery", "vein", "micro"),
            device=args.device,
            patchSizeZYX=tuple(args.patch_size) if args.patch_size else None,
            overlap=args.overlap,
            thresholds=thresholds or None,
            minimumComponentMm3=args.min_component_mm3,
            createProbabilityVolumes=False,
            keepProbabilities=args.probabilities,
            createModels=not args.no_models,
            createGraph=args.graph,
            microscopyPreprocessing=_microscopy_options(args),
            progressCallback=progress,
        )
        result = outputs.result
        process_seconds = time.perf_counter() - tick

        tick = time.perf_counter()
        write_segmentation(outputs.segmentationNode, staging / "segmentation.seg.nrrd")
        write_volume(volume.with_array(result.class_map), staging / "labels.nii.gz")
        model_files = {}
        if not args.no_models:
            model_files = write_model_files(
                outputs.modelNodes, staging / "models", file_format=args.model_format
            )
        graph_files = {}
        if outputs.graph is not None:
            outputs.graph.write_graphml(staging / "graph.graphml")
            outputs.graph.write_json(staging / "graph.json")
            graph_files = {"graphml": "graph.graphml", "json": "graph.json"}
            centrelines = write_model_files(
                {"centrelines": outputs.graphModelNode}, staging / "models", file_format=args.model_format
            )["centrelines"]
            graph_files["centrelines"] = str(centrelines.relative_to(staging))
        probability_files = {}
        if args.probabilities:
            for name, probability in result.probabilities.items():
                path = write_volume(volume.with_array(probability), staging / f"probability_{name}.nii.gz")
                probability_files[name] = path.name
        from VesselSegLib.visualization import write_preview

        normalized = normalize_intensity(volume.array, args.modality, mask_array)
        write_preview(
            staging / "preview.png",
            normalized,
            result.class_map,
            volume.spacing_zyx,
            title=f"{args.input.name} - {result.method_display_name}",
        )
        write_seconds = time.perf_counter() - tick
        metrics = None
        if args.reference is not None:
            metrics = _reference_metrics(args.reference, volume, result)

        summary = {
            "vesselseg_version": __version__,
            "input": str(args.input),
            "shape_zyx": list(volume.array.shape),
            "spacing_zyx_mm": [round(s, 9) for s in volume.spacing_zyx],
            "modality": args.modality,
            "method": result.method,
            "method_display_name": result.method_display_name,
            "model_sha256": result.model_sha256,
            "device": result.device,
            "vessel_classes": list(result.vessel_classes),
            "volume_mm3": result.volumes_mm3(volume.spacing_zyx),
            "metrics_against_reference": metrics,
            "graph": None if outputs.graph is None else outputs.graph.summary(),
            "preprocessing": result.preprocessing or None,
            "voxel_count": {name: int(result.binary_mask(name).sum()) for name in result.vessel_classes},
            "run_time_s": {
                "read": round(read_seconds, 3),
                "segment": round(result.seconds, 3),
                **{key: round(value, 3) for key, value in result.timings.items()},
                # Segmentation node, closed surfaces and model nodes in the MRML scene.
                "scene_and_models": round(process_seconds - result.seconds, 3),
                "write": round(write_seconds, 3),
                "total": round(time.perf_counter() - started, 3),
            },
            "files": {
                "segmentation": "segmentation.seg.nrrd",
                "labels": "labels.nii.gz",
                "models": {name: str(Path(p).relative_to(staging)) for name, p in model_files.items()},
                "probabilities": probability_files,
                "preview": "preview.png",
                "graph": graph_files,
            },
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        }
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        out = args.out.expanduser().absolute()
        if out.exists():  # --force: swap the old folder out only once the new one is complete
            shutil.rmtree(out)
        os.replace(staging, out)
        return summary
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        close_bar()


def _reference_metrics(path: Path, volume, result) -> dict:
    """Per-class and all-vessel metrics of ``result`` against the labels in ``path`` (a class map, or a binary
    mask scored as vessel against vessel: ``VesselSegLib.metrics.evaluate_against_reference``)."""
    from VesselSegLib.io import read_volume
    from VesselSegLib.metrics import evaluate_against_reference

    # Only the array is compared, on the input's grid: the input's spacing also spares a TIFF its warning.
    reference = read_volume(path, spacing_xyz=volume.spacing_xyz)
    if reference.array.shape != volume.array.shape:
        raise CommandError(
            f"Reference {path.name} has shape {reference.array.shape} but the input has {volume.array.shape}; "
            "give labels on the input's grid."
        )
    metrics, binary = evaluate_against_reference(
        result.class_map, reference.array, volume.spacing_zyx, class_names=result.vessel_classes
    )
    if binary:
        logger.warning(
            "Reference %s is not a class map of %s: scored as a binary vessel mask.",
            path.name,
            ", ".join(result.vessel_classes),
        )
    return metrics


def run_methods() -> None:
    from VesselSegLib.models.registry import ModelRegistry

    registry = ModelRegistry.default()
    for entry in registry.entries():
        defaults = f" (default for {', '.join(entry.default_for)})" if entry.default_for else ""
        print(
            f"{entry.name:<24} {entry.display_name}; modalities: {', '.join(entry.modalities)}; "
            f"classes: {', '.join(entry.vessel_classes)}{defaults}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="vesselseg: %(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    from VesselSegLib.errors import SegmentationCancelled

    try:
        if args.command == "methods":
            run_methods()
            return 0
        if args.command == "stream":
            summary = run_stream(args)
            volumes = ", ".join(f"{k} {v:.4g} mm3" for k, v in summary["volume_mm3"].items())
            print(
                f"Wrote {args.out.expanduser().absolute()} ({summary['method']}, "
                f"{summary['run_time_s']['total']:.1f} s, {summary['tiles']} tiles): {volumes}"
            )
            return 0
        if args.command == "demo":
            from VesselSegLib.resources import sample_data_dir

            args.input = sample_data_dir() / SAMPLE_VOLUME_NAME
            if args.modality != SAMPLE_MODALITY:
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
        volumes = ", ".join(f"{k} {v:.1f} mm3" for k, v in summary["volume_mm3"].items())
        print(f"Wrote {out} ({summary['method']}, {summary['run_time_s']['total']:.1f} s): {volumes}")
        return 0
    except KeyboardInterrupt:
        print("vesselseg: cancelled; no output written.", file=sys.stderr)
        return 130
    except SegmentationCancelled:
        print("vesselseg: cancelled; no output written.", file=sys.stderr)
        return 130
    except (CommandError, ValueError, FileNotFoundError) as error:
        print(f"vesselseg: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
