"""The command line's options and the one function that turns them into a :class:`SegmentationRequest`.

``vesselseg segment``/``demo`` and ``vesselseg stream`` share these options; their values are checked by
the request itself (``VesselSegLib.request``), so a bad value gets the same message from the command line,
the Slicer module and the library.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from VesselSegLib.errors import CommandError
from VesselSegLib.preprocessing.presets import MODALITY_PRESETS
from VesselSegLib.preprocessing.resampling import ResamplingPolicy
from VesselSegLib.request import (
    BACKENDS,
    DEVICES,
    PRECISIONS,
    MicroscopyOptions,
    SegmentationRequest,
    canonical_modality,
)
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME


def add_request_options(parser: argparse.ArgumentParser, *, default_modality: str) -> None:
    """Options that become fields of the request (shared by ``segment``, ``demo`` and ``stream``)."""
    parser.add_argument(
        "--modality",
        default=default_modality,
        help=f"Preset: {', '.join(MODALITY_PRESETS)}, any case (default {default_modality}).",
    )
    parser.add_argument(
        "--method",
        default=None,
        help="Registry method name (default: the modality's; see `vesselseg methods`).",
    )
    parser.add_argument(
        "--classes",
        nargs="+",
        default=None,
        metavar="CLASS",
        help=f"Classes to keep: {', '.join(VESSEL_CLASS_BY_NAME)}.",
    )
    parser.add_argument("--device", default="auto", help=f"{', '.join(DEVICES)} (default auto).")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto (default): float16 on CUDA; on a CPU bfloat16 where a one-time probe measures it faster "
        "(see `vesselseg info`), else float32. Only models verified for it run in reduced precision.",
    )
    parser.add_argument(
        "--backend",
        default="pytorch",
        choices=BACKENDS,
        help="pytorch (default); auto: OpenVINO where installed (pip install openvino onnx) and measured "
        "faster at equal output for the model on this machine (once, cached), else PyTorch; openvino: forced.",
    )
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
        "--tta",
        action="store_true",
        help="Test-time augmentation: average the network's probabilities over in-plane flips (Y, X, YX); "
        "about 4x the inference time. Networks only.",
    )
    parser.add_argument(
        "--adapt-seconds",
        type=float,
        default=None,
        metavar="S",
        help="Adapt the model to this stack first: keep training a copy of it on the stack with the label-free "
        "UMIS loss for S seconds (0-600; 0 = off; default: the model's, off for the shipped ones). Only "
        "methods that can adapt (e.g. umis); most useful on stacks unlike the training data.",
    )
    parser.add_argument(
        "--threshold",
        action="append",
        metavar="CLASS=VALUE",
        help="Probability threshold, e.g. micro=0.4 (repeatable).",
    )
    parser.add_argument(
        "--spacing",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        default=None,
        help="Voxel size in mm overriding the files' (input, mask, companions and reference alike).",
    )
    parser.add_argument(
        "--no-resample",
        action="store_true",
        help="Run the model at the input's voxel size even when it differs from its training spacing.",
    )
    parser.add_argument(
        "--resample-tolerance",
        type=float,
        default=ResamplingPolicy().tolerance,
        metavar="FRACTION",
        help="Resample when the input's voxel size differs from the model's by more than this fraction "
        f"on any axis (default {ResamplingPolicy().tolerance}).",
    )
    parser.add_argument(
        "--subtract-slice-median", action="store_true", help="2PM: subtract each slice's median first."
    )


def add_in_memory_options(parser: argparse.ArgumentParser) -> None:
    """Request options only ``segment``/``demo`` offer (they need the whole volume in memory)."""
    parser.add_argument(
        "--min-component-mm3",
        type=float,
        default=None,
        help="Remove components smaller than this (mm^3); 0 keeps all.",
    )
    parser.add_argument("--probabilities", action="store_true", help="Also write per-class probability maps.")
    parser.add_argument("--no-models", action="store_true", help="Skip 3D surface models.")
    parser.add_argument(
        "--graph",
        action="store_true",
        help="Also write the vessel graph (graph.graphml, graph.json, centrelines model coloured by radius).",
    )
    parser.add_argument(
        "--intensity-scale",
        default=None,
        metavar="FACTOR|auto",
        help="2PM: multiply intensities by FACTOR first (the paper's manual matching), or 'auto' to estimate it "
        "against the model card's training percentiles; recorded in summary.json. Percentile normalisation "
        "already absorbs any linear scale.",
    )
    parser.add_argument(
        "--median-filter", type=int, default=None, metavar="SIZE", help="2PM: 3D median filter first."
    )


def parse_thresholds(items: Sequence[str] | None) -> dict[str, str]:
    """``--threshold CLASS=VALUE`` items as a mapping; the request checks names and values."""
    thresholds: dict[str, str] = {}
    for item in items or ():
        name, separator, value = item.partition("=")
        if not separator or not name or not value:
            raise CommandError(f"--threshold takes CLASS=VALUE (e.g. micro=0.4); got {item!r}.")
        thresholds[name] = value
    return thresholds


def parse_companions(items: Sequence[str] | None) -> dict[str, Path]:
    """``--companion MODALITY=PATH`` items as modality -> path (modality case-insensitive)."""
    companions: dict[str, Path] = {}
    for item in items or ():
        modality, separator, path = item.partition("=")
        if not separator or not path:
            raise CommandError(f"--companion takes MODALITY=PATH (e.g. SWI=swi.nii.gz); got {item!r}.")
        companions[canonical_modality(modality)] = Path(path)
    return companions


def request_from_args(
    args: argparse.Namespace, *, companion_modalities: Sequence[str] = ()
) -> SegmentationRequest:
    """The :class:`SegmentationRequest` the options describe (ValueError with the rule when one is bad)."""
    microscopy = MicroscopyOptions(
        intensity_scale=getattr(args, "intensity_scale", None),
        subtract_slice_median=args.subtract_slice_median,
        median_size=getattr(args, "median_filter", None),
    )
    return SegmentationRequest(
        modality=args.modality,
        method=args.method,
        vessel_classes=None if args.classes is None else tuple(args.classes),
        thresholds=parse_thresholds(args.threshold),
        patch_size_zyx=None if args.patch_size is None else tuple(args.patch_size),
        overlap=args.overlap,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        test_time_augmentation=getattr(args, "tta", False),
        min_component_mm3=getattr(args, "min_component_mm3", None),
        microscopy=microscopy,
        resampling=ResamplingPolicy(enabled=not args.no_resample, tolerance=args.resample_tolerance),
        companion_modalities=tuple(companion_modalities),
        keep_probabilities=getattr(args, "probabilities", False),
        create_models=not getattr(args, "no_models", True),
        create_graph=getattr(args, "graph", False),
        adaptation_budget_s=getattr(args, "adapt_seconds", None),
    )


__all__ = [
    "CommandError",
    "add_in_memory_options",
    "add_request_options",
    "parse_companions",
    "parse_thresholds",
    "request_from_args",
]
