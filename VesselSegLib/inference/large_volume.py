"""Segment a stack larger than memory from a file into a folder: probabilities and a class map, tile by tile.

This is ``vesselseg stream``. It chains :mod:`VesselSegLib.inference.streaming` (tiles read from disk, the
network run on each, the tile cores written to a ``.npy`` on disk) with a second pass that thresholds the
probabilities slab by slab into a class map written as a raw NRRD, which 3D Slicer, SimpleITK and Fiji open
directly. Neither the input, the probabilities nor the class map is ever whole in memory.

What it leaves out, compared with ``vesselseg segment``: the MRML scene, 3D models, the preview and the
removal of small components (each needs the whole class map in memory). Run ``segment`` on a crop or on
the class map when you need them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.sliding_window import CancelCheck, ProgressCallback, resolve_device
from VesselSegLib.inference.streaming import (
    DEFAULT_TILE_SIZE_ZYX,
    SliceMedianSubtracted,
    estimate_normalisation,
    open_volume_lazily,
    peak_memory_bound_bytes,
    plan_stream_tiles,
    stream_segment_probabilities,
)
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.postprocessing import build_class_map
from VesselSegLib.preprocessing import get_preset
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME, VESSEL_CLASSES

#: Z slices thresholded at a time when writing the class map (C x 16 x Y x X float16 in memory).
CLASS_MAP_SLAB_SLICES = 16
#: Patch for registry entries that name none (the 2PM V-Net's training patch is thinner; see its card).
DEFAULT_STREAM_PATCH_ZYX = (64, 128, 128)


def write_raw_nrrd_header(path: Path, shape_zyx: Sequence[int], dtype: np.dtype, spacing_zyx) -> int:
    """Write a raw (uncompressed) NRRD header for a (Z, Y, X) volume; returns its length in bytes.

    The voxels follow the header directly, in C order (X fastest), so the caller can memory-map them at the
    returned offset. Axes are LPS-aligned with the given spacing in mm and origin 0, as Slicer expects.
    """
    type_names = {"uint8": "uint8", "uint16": "uint16", "float32": "float", "float16": None}
    name = type_names.get(np.dtype(dtype).name)
    if name is None:
        raise ValueError(f"Raw NRRD output supports uint8, uint16 and float32, not {np.dtype(dtype)}.")
    sx, sy, sz = (float(s) for s in reversed(spacing_zyx))
    header = (
        "NRRD0004\n"
        "# Written by VesselSeg (vesselseg stream)\n"
        f"type: {name}\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {shape_zyx[2]} {shape_zyx[1]} {shape_zyx[0]}\n"
        f"space directions: ({sx!r},0,0) (0,{sy!r},0) (0,0,{sz!r})\n"
        "kinds: domain domain domain\n"
        "endian: little\n"
        "encoding: raw\n"
        "space origin: (0,0,0)\n"
        "\n"
    ).encode("ascii")
    with open(path, "wb") as handle:
        handle.write(header)
    return len(header)


def _write_class_map(
    probabilities_path: Path,
    labels_path: Path,
    class_names: Sequence[str],
    *,
    spacing_zyx: Sequence[float],
    thresholds: Mapping[str, float] | None,
    cancel: CancelCheck | None,
) -> dict[str, int]:
    """Threshold the streamed probabilities slab by slab into a raw uint8 NRRD; voxels per class."""
    probabilities = np.load(probabilities_path, mmap_mode="r")
    shape = probabilities.shape[1:]
    offset = write_raw_nrrd_header(labels_path, shape, np.uint8, spacing_zyx)
    with open(labels_path, "r+b") as handle:  # grow the file to its full size before mapping it
        handle.truncate(offset + math.prod(shape))
    counts = dict.fromkeys(class_names, 0)
    channel = {name: index for index, name in enumerate(class_names)}
    for z0 in range(0, shape[0], CLASS_MAP_SLAB_SLICES):
        if cancel is not None and cancel():
            raise SegmentationCancelled("Segmentation cancelled by the user.")
        z1 = min(z0 + CLASS_MAP_SLAB_SLICES, shape[0])
        slab = {
            name: np.asarray(probabilities[channel[name], z0:z1], dtype=np.float32) for name in class_names
        }
        class_map = build_class_map(slab, spacing_zyx=spacing_zyx, thresholds=thresholds)
        labels = np.memmap(labels_path, dtype=np.uint8, mode="r+", offset=offset, shape=tuple(shape))
        labels[z0:z1] = class_map
        labels.flush()
        del labels  # unmapped: written pages belong to the file cache, not to this process
        per_label = np.bincount(class_map.ravel(), minlength=len(VESSEL_CLASSES) + 1)
        for name in class_names:
            counts[name] += int(per_label[VESSEL_CLASS_BY_NAME[name].label_value])
    del probabilities
    return counts


def segment_large_volume(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    *,
    modality: str = "2PM",
    method: str | None = None,
    spacing_zyx: Sequence[float] | None = None,
    tile_size_zyx: Sequence[int] = DEFAULT_TILE_SIZE_ZYX,
    patch_size_zyx: Sequence[int] | None = None,
    overlap: float | None = None,
    batch_size: int = 2,
    device: str = "auto",
    thresholds: Mapping[str, float] | None = None,
    output_dtype: str = "float16",
    subtract_slice_median: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> dict:
    """Segment the volume in ``input_path`` tile by tile into ``output_dir``, with bounded memory.

    Writes ``probabilities.npy`` (``(C, Z, Y, X)`` of ``output_dtype``, classes in the model's order) and
    ``labels.nrrd`` (raw uint8 class map: 1 artery, 2 vein, 3 micro; thresholds per class, overlaps to the
    higher probability). The folder must exist; the caller makes it atomic (the CLI stages it).

    Parameters
    ----------
    input_path : path
        TIFF stack, raw NRRD or ``.npy`` (see :func:`~VesselSegLib.inference.streaming.open_volume_lazily`).
    output_dir : path
        Existing folder.
    modality : str
        Preset: its percentile normalisation is estimated once over the whole stack.
    method : str, optional
        A registry network; default: the preset's default model. Ensembles and Frangi need the whole volume
        and are refused.
    spacing_zyx : 3 float, optional
        Voxel size in mm, overriding the file's (required when the file has none: 2PM stacks are in um).
    tile_size_zyx, patch_size_zyx, overlap, batch_size, device, output_dtype
        As for :func:`~VesselSegLib.inference.streaming.stream_segment_probabilities`; patch and overlap
        default to the model's.
    thresholds : mapping class -> float, optional
        Default 0.5, or the model's.
    subtract_slice_median : bool
        Level each Z slice by its median first (the 2PM paper's step for stacks from another microscope),
        lazily: :class:`~VesselSegLib.inference.streaming.SliceMedianSubtracted`. The 3D median filter and
        the intensity factor are not offered here (the factor does not change the result; see
        ``segment_image``).

    Returns
    -------
    dict
        Shape, spacing, method and SHA256, tiles, the stated memory bound in bytes, class voxel counts and
        volumes in mm3, and stage times in seconds.
    """
    output_dir = Path(output_dir)
    preset = get_preset(modality)
    registry = ModelRegistry.default()
    entry = registry.default_for(preset.name) if method is None else registry.get(method)
    if entry.kind != "network":
        raise ValueError(
            f"Method {entry.name!r} is a {entry.kind}, which needs the whole volume in memory; stream with a "
            "single network (vesselseg methods lists them), or use 'vesselseg segment'."
        )
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    with open_volume_lazily(input_path) as stack:
        spacing = tuple(float(s) for s in (spacing_zyx or stack.spacing_zyx or ()))
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(
                f"{Path(input_path).name} does not say its voxel size; give it (e.g. --spacing X Y Z in mm)."
            )
        source = SliceMedianSubtracted(stack) if subtract_slice_median else stack
        normalisation = estimate_normalisation(source, preset)
        timings["normalisation"] = time.perf_counter() - tick

        tick = time.perf_counter()
        network = entry.load_network()
        patch = tuple(patch_size_zyx or entry.patch_size_zyx or DEFAULT_STREAM_PATCH_ZYX)
        window_overlap = entry.overlap if overlap is None else overlap
        resolved_device = resolve_device(device)
        tiles = plan_stream_tiles(
            source.shape,
            tile_size_zyx=tile_size_zyx,
            patch_size_zyx=patch,
            overlap=window_overlap,
            size_divisor_zyx=getattr(network, "size_divisor_zyx", (1, 1, 1)),
        )
        bound = peak_memory_bound_bytes(
            tile_size_zyx=tile_size_zyx,
            patch_size_zyx=patch,
            overlap=window_overlap,
            channels=len(entry.vessel_classes),
            batch_size=batch_size,
            source_dtype=source.dtype,
            output_dtype=output_dtype,
            volume_shape_zyx=source.shape,
            size_divisor_zyx=getattr(network, "size_divisor_zyx", (1, 1, 1)),
        )
        stream_segment_probabilities(
            network,
            source,
            output_dir / "probabilities.npy",
            patch_size_zyx=patch,
            normalisation=normalisation,
            tile_size_zyx=tile_size_zyx,
            overlap=window_overlap,
            batch_size=batch_size,
            device=str(resolved_device),
            output_dtype=output_dtype,
            progress=progress,
            cancel=cancel,
        )
        timings["inference"] = time.perf_counter() - tick
        shape = source.shape
    tick = time.perf_counter()
    chosen = {**entry.thresholds, **dict(thresholds or {})}
    counts = _write_class_map(
        output_dir / "probabilities.npy",
        output_dir / "labels.nrrd",
        entry.vessel_classes,
        spacing_zyx=spacing,
        thresholds=chosen,
        cancel=cancel,
    )
    timings["class_map"] = time.perf_counter() - tick
    voxel_mm3 = math.prod(spacing)
    return {
        "shape_zyx": list(shape),
        "spacing_zyx_mm": list(spacing),
        "modality": preset.name,
        "method": entry.name,
        "model_sha256": entry.sha256,
        "device": str(resolved_device),
        "vessel_classes": list(entry.vessel_classes),
        "normalisation": {
            "low": normalisation.low,
            "high": normalisation.high,
            "sample_stride": normalisation.stride,
        },
        "preprocessing": {"steps": ["subtract_slice_median"] if subtract_slice_median else []},
        "tiles": len(tiles),
        "tile_size_zyx": list(tile_size_zyx),
        "patch_size_zyx": list(patch),
        "overlap": window_overlap,
        "memory_bound_bytes_without_network": bound,
        "voxel_count": counts,
        "volume_mm3": {name: count * voxel_mm3 for name, count in counts.items()},
        "thresholds": {name: chosen.get(name, 0.5) for name in entry.vessel_classes},
        "run_time_s": {key: round(value, 3) for key, value in timings.items()},
        "files": {"probabilities": "probabilities.npy", "labels": "labels.nrrd"},
    }


__all__ = ["CLASS_MAP_SLAB_SLICES", "segment_large_volume", "write_raw_nrrd_header"]
