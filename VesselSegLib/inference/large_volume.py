"""Segment a stack larger than memory from a file into a folder: probabilities and a class map, tile by tile.

This is ``vesselseg stream``. It chains :mod:`VesselSegLib.inference.streaming` (tiles read from disk, the
network run on each, the tile cores written to a ``.npy`` on disk) and thresholds each tile core's float32
probabilities into a class map written as a raw NRRD on the input's grid (origin and direction kept), which
3D Slicer, SimpleITK and Fiji open directly. Neither the input, the probabilities nor the class map is ever
whole in memory. With ``min_component_mm3=0`` the class map is voxel for voxel that of ``vesselseg segment``.

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

from VesselSegLib.inference.onnx_backend import BackendChoice, choose_backend
from VesselSegLib.inference.runtime import choose_runtime
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
from VesselSegLib.io.grid import Grid
from VesselSegLib.postprocessing import build_class_map
from VesselSegLib.preprocessing import get_preset
from VesselSegLib.request import SegmentationPlan
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME, VESSEL_CLASSES


def write_raw_nrrd_header(
    path: Path,
    shape_zyx: Sequence[int],
    dtype: np.dtype,
    spacing_zyx,
    *,
    origin_xyz: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | Sequence[float] | None = None,
) -> int:
    """Write a raw (uncompressed) NRRD header for a (Z, Y, X) volume; returns its length in bytes.

    The voxels follow the header directly, in C order (X fastest), so the caller can memory-map them at the
    returned offset.

    Parameters
    ----------
    path : Path
        Created or overwritten; holds only the header when this returns.
    shape_zyx : 3 int
    dtype : numpy.dtype
        uint8, uint16 or float32 (written little-endian).
    spacing_zyx : 3 float
        Voxel size in mm, array-axis order.
    origin_xyz : 3 float
        World position (mm, LPS) of voxel (0, 0, 0), e.g. the input's ``origin_xyz``.
    direction : (3, 3) array or 9 floats, optional
        Columns are the I, J, K axis directions in LPS (ITK convention, e.g. the input's ``direction``);
        identity if omitted. ``space directions`` are these columns times the spacing.
    """
    import nrrd  # pynrrd's formatters: the same number format (17 significant digits) as its writer

    type_names = {"uint8": "uint8", "uint16": "uint16", "float32": "float", "float16": None}
    name = type_names.get(np.dtype(dtype).name)
    if name is None:
        raise ValueError(f"Raw NRRD output supports uint8, uint16 and float32, not {np.dtype(dtype)}.")
    axes = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    spacing_xyz = np.array([float(s) for s in reversed(spacing_zyx)])
    origin = np.asarray(origin_xyz, dtype=float).reshape(3)
    if not (np.isfinite(axes).all() and np.isfinite(origin).all() and np.all(spacing_xyz > 0)):
        raise ValueError(f"Cannot write {Path(path).name}: its origin, direction or spacing is not finite.")
    # pynrrd's own writer (nrrd.write) needs the whole array in memory (it calls tobytes): the class map of
    # a stack larger than memory is written slab by slab through a memory map instead, after this header.
    header = (
        "NRRD0004\n"
        "# Written by VesselSeg (vesselseg stream)\n"
        f"type: {name}\n"
        "dimension: 3\n"
        "space: left-posterior-superior\n"
        f"sizes: {nrrd.format_number_list(np.array([shape_zyx[2], shape_zyx[1], shape_zyx[0]]))}\n"
        f"space directions: {nrrd.format_matrix((axes * spacing_xyz).T)}\n"  # one row per axis I, J, K
        "kinds: domain domain domain\n"
        "endian: little\n"
        "encoding: raw\n"
        f"space origin: {nrrd.format_vector(origin)}\n"
        "\n"
    ).encode("ascii")
    with open(path, "wb") as handle:
        handle.write(header)
    return len(header)


class _ClassMapWriter:
    """The class map on the input's grid, filled tile core by tile core: a raw uint8 NRRD (memory-mapped
    while one core is written), or an OME-Zarr image (:mod:`VesselSegLib.io.ome_zarr`).

    Each core is thresholded from the network's float32 probabilities (``on_tile_core`` of
    :func:`~VesselSegLib.inference.streaming.stream_segment_probabilities`), exactly as ``vesselseg segment``
    thresholds the whole volume, whatever type the probabilities are stored in. Small components are not
    removed (that needs the whole map).
    """

    def __init__(self, path: Path, grid: Grid, class_names: Sequence[str], thresholds: Mapping[str, float]):
        self.path, self.class_names, self.thresholds = path, tuple(class_names), dict(thresholds)
        self.spacing_zyx = tuple(reversed(grid.spacing_xyz))
        self.shape = tuple(grid.shape_zyx)
        self.zarr_array = None
        if path.suffix.lower() == ".zarr":
            from VesselSegLib.io.ome_zarr import create_ome_zarr_image

            self.zarr_array = create_ome_zarr_image(
                path,
                self.shape,
                np.uint8,
                spacing_zyx=self.spacing_zyx,
                origin_xyz=grid.origin_xyz,
                direction=grid.direction,
                name="labels",
            )
        else:
            self.offset = write_raw_nrrd_header(
                path,
                self.shape,
                np.uint8,
                self.spacing_zyx,
                origin_xyz=grid.origin_xyz,
                direction=grid.direction,
            )
            with open(path, "r+b") as handle:  # grow the file to its full size before mapping it
                handle.truncate(self.offset + math.prod(self.shape))
        self.counts = dict.fromkeys(self.class_names, 0)

    def __call__(self, core: tuple[slice, slice, slice], probabilities: np.ndarray) -> None:
        maps = {name: probabilities[index] for index, name in enumerate(self.class_names)}
        class_map = build_class_map(maps, spacing_zyx=self.spacing_zyx, thresholds=self.thresholds)
        if self.zarr_array is not None:
            self.zarr_array[core] = class_map
        else:
            labels = np.memmap(self.path, dtype=np.uint8, mode="r+", offset=self.offset, shape=self.shape)
            labels[core] = class_map
            labels.flush()
            del labels  # unmapped: written pages belong to the file cache, not to this process
        per_label = np.bincount(class_map.ravel(), minlength=len(VESSEL_CLASSES) + 1)
        for name in self.class_names:
            self.counts[name] += int(per_label[VESSEL_CLASS_BY_NAME[name].label_value])


#: ``vesselseg stream``'s output formats: the file names of the class map and of the probabilities.
OUTPUT_FILES = {
    "nrrd": {"labels": "labels.nrrd", "probabilities": "probabilities.npy"},
    "ome-zarr": {"labels": "labels.ome.zarr", "probabilities": "probabilities.ome.zarr"},
}


def _check_streamable(plan: SegmentationPlan) -> None:
    """Refuse what needs the whole volume in memory, saying what to use instead."""
    request, entry = plan.request, plan.entry
    if not plan.method.supports_streaming:
        raise ValueError(
            f"Method {entry.name!r} is a {entry.kind}, which needs the whole volume in memory; stream with a "
            "single network (vesselseg methods lists them), or use 'vesselseg segment'."
        )
    if entry.needs_brain_mask:
        raise ValueError(
            f"Method {entry.name!r} was trained on skull-stripped volumes and needs a brain mask, which "
            "streaming does not take; use 'vesselseg segment --mask'."
        )
    if plan.min_component_mm3 > 0:
        raise ValueError(
            "Streaming cannot remove small components (it needs the whole class map); ask for 0."
        )
    unsupported = request.microscopy.intensity_scale is not None or request.microscopy.median_size is not None
    if unsupported:
        raise ValueError(
            "Streaming offers only the slice-median subtraction; use 'vesselseg segment' for the rest."
        )


def _dask_tiles(client, input_path, plan: SegmentationPlan, normalisation, precision: str):
    from VesselSegLib.inference.distributed import DaskTiles, TileJob

    request = plan.request
    job = TileJob(
        input_path=str(Path(input_path).absolute()),
        subtract_slice_median=request.microscopy.subtract_slice_median,
        entry=plan.entry,
        normalisation=normalisation,
        patch_size_zyx=tuple(plan.patch_size_for(plan.entry)),  # replaced by the fitted patch per run
        overlap=plan.overlap_for(plan.entry),
        batch_size=request.batch_size,
        blend_mode="gaussian",
        precision=precision,
        test_time_augmentation=request.test_time_augmentation,
    )
    return DaskTiles(client, job)


def segment_large_volume(
    input_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    plan: SegmentationPlan,
    *,
    spacing_xyz: Sequence[float] | None = None,
    tile_size_zyx: Sequence[int] = DEFAULT_TILE_SIZE_ZYX,
    output_dtype: str = "float16",
    output_format: str = "nrrd",
    dask_client=None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> dict:
    """Segment the volume in ``input_path`` tile by tile into ``output_dir``, with bounded memory.

    Writes the probabilities (``(C, Z, Y, X)`` of ``output_dtype``, classes in the model's order) and the
    class map (uint8: 1 artery, 2 vein, 3 micro; thresholds per class, overlaps to the higher probability) on
    the input's grid (spacing, origin and direction kept): ``probabilities.npy`` and a raw ``labels.nrrd``, or
    ``probabilities.ome.zarr`` and ``labels.ome.zarr`` (:data:`OUTPUT_FILES`). The folder must exist; the
    caller makes it atomic (the CLI stages it).

    Parameters
    ----------
    input_path : path
        TIFF stack, raw NRRD or ``.npy`` (see :func:`VesselSegLib.io.open_volume_lazily`).
    output_dir : path
        Existing folder.
    plan : SegmentationPlan
        The resolved request: a single network (ensembles and filters need the whole volume and are
        refused), its window, thresholds, batch, device. Small-component removal and resampling need the
        whole volume too: the request must ask for neither (``min_component_mm3=0``; a model spacing within
        tolerance, or resampling off). Of the 2PM preprocessing only the slice median is offered, applied
        lazily (:class:`~VesselSegLib.inference.streaming.SliceMedianSubtracted`).
    spacing_xyz : 3 float, optional
        Voxel size in mm, overriding the file's (required when the file has none: 2PM stacks are in um).
    tile_size_zyx, output_dtype
        As for :func:`~VesselSegLib.inference.streaming.stream_segment_probabilities`.
    output_format : {"nrrd", "ome-zarr"}
        The files written (:data:`OUTPUT_FILES`); OME-Zarr is chunked and compressed, for viewers and
        object stores (:mod:`VesselSegLib.io.ome_zarr`).
    dask_client : distributed.Client, optional
        Compute the tiles on this Dask cluster (:mod:`VesselSegLib.inference.distributed`; its workers run
        PyTorch on their CPUs and read ``input_path`` themselves); the outputs are those of one process.

    Returns
    -------
    dict
        Keyword arguments of ``VesselSegLib.cli.summary.build_summary`` (grids, method, classes, counts, the
        streaming record with tiles and the memory bound) and ``run_time_s``.
    """
    from VesselSegLib.methods.networks import check_patch_fits
    from VesselSegLib.preprocessing.resampling import check_spacing_units, plan_resampling

    output_dir = Path(output_dir)
    request, entry = plan.request, plan.entry
    _check_streamable(plan)
    if output_format not in OUTPUT_FILES:
        raise ValueError(f"Output format must be one of {', '.join(OUTPUT_FILES)}, got {output_format!r}.")
    files = OUTPUT_FILES[output_format]
    timings: dict[str, float] = {}
    tick = time.perf_counter()
    with open_volume_lazily(input_path) as stack:
        file_spacing = stack.spacing_zyx if spacing_xyz is None else tuple(reversed(tuple(spacing_xyz)))
        if file_spacing is None:
            raise ValueError(
                f"{Path(input_path).name} does not say its voxel size; give it (e.g. --spacing X Y Z in mm)."
            )
        spacing = check_spacing_units(file_spacing, request.modality, spacing_given=spacing_xyz is not None)
        resampling = plan_resampling(
            spacing.spacing_zyx, plan.method.training_spacing_zyx(request.modality), request.resampling
        )
        if resampling.resample:
            raise ValueError(
                f"The model was trained at {resampling.target_spacing_zyx} mm (Z, Y, X) and this stack is at "
                f"{spacing.spacing_zyx}: streaming cannot resample; use 'vesselseg segment', or --no-resample."
            )
        grid = Grid(
            stack.shape, tuple(reversed(file_spacing)), stack.origin_xyz, tuple(stack.direction.ravel())
        )
        preset = get_preset(request.modality)
        source = SliceMedianSubtracted(stack) if request.microscopy.subtract_slice_median else stack
        normalisation = estimate_normalisation(source, preset)
        timings["normalisation"] = time.perf_counter() - tick

        tick = time.perf_counter()
        network = entry.load_network()
        patch = plan.patch_size_for(entry)
        check_patch_fits(patch, network, entry.name)
        window_overlap = plan.overlap_for(entry)
        resolved_device = resolve_device(request.device)
        runtime = choose_runtime(resolved_device, request.precision)
        precision = runtime.for_model(entry.reduced_precision).precision
        if dask_client is not None:
            backend = BackendChoice("pytorch", "Dask workers run PyTorch on their CPUs")
        else:
            window = tuple(min(p, s) for p, s in zip(patch, source.shape, strict=True))
            network, backend = choose_backend(
                network, window, request.backend, precision=precision, device=resolved_device
            )
        divisor = getattr(network, "size_divisor_zyx", (1, 1, 1))
        tiles = plan_stream_tiles(
            source.shape,
            tile_size_zyx=tile_size_zyx,
            patch_size_zyx=patch,
            overlap=window_overlap,
            size_divisor_zyx=divisor,
        )
        bound = peak_memory_bound_bytes(
            tile_size_zyx=tile_size_zyx,
            patch_size_zyx=patch,
            overlap=window_overlap,
            channels=len(entry.vessel_classes),
            batch_size=request.batch_size,
            source_dtype=source.dtype,
            output_dtype=output_dtype,
            volume_shape_zyx=source.shape,
            size_divisor_zyx=divisor,
        )
        thresholds = plan.thresholds_for(entry)
        class_map = _ClassMapWriter(output_dir / files["labels"], grid, entry.vessel_classes, thresholds)
        stream_segment_probabilities(
            network,
            source,
            output_dir / files["probabilities"],
            patch_size_zyx=patch,
            normalisation=normalisation,
            tile_size_zyx=tile_size_zyx,
            overlap=window_overlap,
            batch_size=request.batch_size,
            device=str(resolved_device),
            output_dtype=output_dtype,
            precision=precision,
            test_time_augmentation=request.test_time_augmentation,
            on_tile_core=class_map,
            grid=grid,
            channel_names=entry.vessel_classes,
            tile_cores=None
            if dask_client is None
            else _dask_tiles(dask_client, input_path, plan, normalisation, precision),
            progress=progress,
            cancel=cancel,
        )
        timings["inference"] = time.perf_counter() - tick
    counts = class_map.counts
    kept = tuple(name for name in entry.vessel_classes if name in plan.vessel_classes)
    return {
        "grid": grid,
        "output_grid": grid,
        "method": entry.name,
        "method_display_name": entry.display_name,
        "model_sha256": entry.sha256,
        "device": str(resolved_device),
        "runtime": {
            **runtime.as_record(),
            "precision_by_model": {entry.name: precision},
            "backend_by_model": {entry.name: backend.as_record()},
        },
        "vessel_classes": kept,
        "thresholds": {name: thresholds.get(name, 0.5) for name in kept},
        "voxel_count": {name: counts[name] for name in kept},
        "measure_spacing_zyx": spacing.spacing_zyx,
        "files": dict(files),
        "spacing_check": spacing.as_record(),
        "resampling": resampling.as_record(),
        "preprocessing": {"steps": ["subtract_slice_median"]}
        if request.microscopy.subtract_slice_median
        else None,
        "streaming": {
            "tiles": len(tiles),
            "tile_size_zyx": list(tile_size_zyx),
            "patch_size_zyx": list(patch),
            "overlap": window_overlap,
            "memory_bound_bytes_without_network": bound,
            "normalisation": {
                "low": normalisation.low,
                "high": normalisation.high,
                "sample_stride": normalisation.stride,
            },
            "output_dtype": output_dtype,
            "dask_workers": None
            if dask_client is None
            else len(dask_client.scheduler_info().get("workers", {})),
        },
        "run_time_s": timings,
    }


__all__ = ["OUTPUT_FILES", "segment_large_volume", "write_raw_nrrd_header"]
