"""Segment volumes larger than memory: read tiles from disk, predict, write each tile's core to disk.

Two-photon stacks reach 1024 x 1024 x 700 uint16 (1.5 GB on disk); in-memory inference holds the stack, its
float32 copy, MONAI's per-class float32 accumulator and count map, about 14 bytes per voxel per class, 10 GB
and more. Here the volume is processed in tiles:

1. :func:`~VesselSegLib.io.lazy.open_volume_lazily` (in :mod:`VesselSegLib.io.lazy`, importable from
   here too) opens a TIFF stack, a raw NRRD or a ``.npy`` file without reading its voxels;
   ``source[z0:z1, y0:y1, x0:x1]`` then reads that region only (memory map, or the TIFF pages of the Z
   range).
2. :func:`estimate_normalisation` computes the modality's percentile normalisation once, from a strided
   subsample of the whole volume, so every tile gets the same intensity mapping.
3. :func:`stream_segment_probabilities` cuts the volume into tiles; for each it reads the tile plus a halo,
   normalises it, runs :func:`~VesselSegLib.inference.sliding_window.predict_probabilities` on it and writes
   only the tile's core into a ``.npy`` file that is written in place on disk (``numpy.lib.format.open_memmap``),
   under a temporary name renamed into place at the end.

Exactness: the halo is not a fixed margin. Each tile is read over exactly the sliding windows of the
whole-volume scan that touch its core (the same start positions, the same patch size), so MONAI's scan of
the tile visits those same windows and blends them with the same weights in the same order. Every voxel of
the core is then the same weighted average of the same network outputs as in whole-volume inference, for
any network (a U-Net whose receptive field is larger than any margin included). See
:func:`plan_stream_tiles`.

Reading (memory maps, TIFF page by page, geometry, NaN checks) is :mod:`VesselSegLib.io.lazy`'s.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.sliding_window import (
    CancelCheck,
    ProgressCallback,
    _as_overlap,
    count_windows,
    fit_patch_to_volume,
    predict_probabilities,
)
from VesselSegLib.io.atomic import atomic_write_directory, atomic_write_path
from VesselSegLib.io.grid import Grid

# The readers live in VesselSegLib.io.lazy; these names stay importable from here for existing callers.
from VesselSegLib.io.lazy import (  # noqa: F401
    STREAMING_SUFFIXES,
    LazyVolume,
    _MemmapVolume,
    _TiffPagesVolume,
    open_volume_lazily,
)
from VesselSegLib.preprocessing.microscopy import level_slices, slice_medians
from VesselSegLib.preprocessing.presets import ModalityPreset, get_preset

logger = logging.getLogger(__name__)

OUTPUT_DTYPES = ("float16", "uint8", "float32")
DEFAULT_TILE_SIZE_ZYX = (128, 512, 512)
#: Voxels sampled by :func:`estimate_normalisation` (64 MB as float32).
DEFAULT_NORMALISATION_VOXELS = 2**24


class VolumeSource(Protocol):
    """What the streaming functions read from: a :class:`LazyVolume`, or any 3D ``numpy`` array."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __getitem__(self, key: Any) -> np.ndarray: ...


# ----------------------------------------------------------------------------------- preprocessing


class SliceMedianSubtracted:
    """A volume source with each Z slice's median subtracted (negatives set to 0), read region by region.

    The 2PM paper's slice-median step (:func:`~VesselSegLib.preprocessing.subtract_slice_median`, Sec. 4.2)
    for stacks larger than memory: the medians are computed once, one Z plane at a time (Z floats kept),
    and every region read is levelled with them, so each tile holds exactly what the in-memory step gives
    for those voxels. Regions come back as float32 (the in-memory step works in float32 too).

    Parameters
    ----------
    source : LazyVolume or ndarray, shape (Z, Y, X)
        Not modified.
    clip_negative : bool
        As :func:`~VesselSegLib.preprocessing.subtract_slice_median`.
    """

    def __init__(self, source: VolumeSource, *, clip_negative: bool = True) -> None:
        self.shape = _check_source(source)
        self.source = source
        self.dtype = np.dtype(np.float32)
        self.ndim = 3
        self.spacing_zyx = getattr(source, "spacing_zyx", None)
        self.clip_negative = clip_negative
        self.slice_medians = np.concatenate(
            [slice_medians(source[z : z + 1, :, :]) for z in range(self.shape[0])]
        )

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 3 or not all(isinstance(item, slice) for item in key):
            raise IndexError("Index a levelled volume with up to 3 slices, e.g. volume[z0:z1, y0:y1, x0:x1].")
        z_start, z_stop, z_step = key[0].indices(self.shape[0]) if key else (0, self.shape[0], 1)
        medians = self.slice_medians[z_start:z_stop:z_step]
        return level_slices(self.source[key], medians, clip_negative=self.clip_negative)


# ------------------------------------------------------------------------------------- normalisation


@dataclass(frozen=True)
class IntensityNormalisation:
    """A fixed intensity mapping, the one :func:`~VesselSegLib.preprocessing.normalize_intensity` applies.

    ``low`` and ``high`` map to 0 and 1 (vessels bright); values are clipped to [-0.5, 1.5]. Given the same
    ``low`` and ``high``, :meth:`apply` gives bit for bit what ``normalize_intensity`` gives without a mask.

    Attributes
    ----------
    modality : str
        Preset name.
    low, high : float
        Intensities at the preset's percentiles (or the min and max for a near-constant volume).
    vessels_bright : bool
        False inverts (SWI). Streaming has no brain mask: SWI is then inverted everywhere.
    stride : int
        Subsampling step along each axis used for the estimate (1: every voxel).
    sample_voxels : int
        Number of voxels the percentiles were computed from.
    """

    modality: str
    low: float
    high: float
    vessels_bright: bool = True
    stride: int = 1
    sample_voxels: int = 0

    def apply(self, region: np.ndarray) -> np.ndarray:
        """``region`` mapped to float32, a new array; the arithmetic of ``normalize_intensity`` step by step."""
        data = np.array(region, dtype=np.float32)  # always a copy: modified in place below
        scale = np.float32(1.0 / max(self.high - self.low, np.finfo(np.float32).eps))
        data -= np.float32(self.low)
        data *= scale
        if not self.vessels_bright:
            np.subtract(np.float32(1.0), data, out=data)
        np.clip(data, -0.5, 1.5, out=data)
        return data


def _sample_stride(shape: Sequence[int], max_voxels: int) -> int:
    stride = 1
    while math.prod(-(-s // stride) for s in shape) > max_voxels:
        stride += 1
    return stride


def estimate_normalisation(
    source: VolumeSource,
    modality: ModalityPreset | str,
    *,
    max_voxels: int = DEFAULT_NORMALISATION_VOXELS,
) -> IntensityNormalisation:
    """The modality's percentile normalisation of the whole volume, from a strided subsample.

    Every ``s``-th voxel along each axis, the smallest ``s`` that keeps at most ``max_voxels`` voxels, read one
    Z plane at a time. For ``max_voxels`` >= the volume size (``s = 1``) the result equals what
    ``normalize_intensity`` computes on the whole volume, exactly.

    Parameters
    ----------
    source : LazyVolume or ndarray, shape (Z, Y, X)
    modality : ModalityPreset or str
        The preset whose percentiles and polarity to use ("2PM" for two-photon stacks).
    max_voxels : int
        Sample size bound. Memory: ``4 * max_voxels`` bytes for the sample plus one Z plane
        (``Y * X * (itemsize + 4)``); 2**24 voxels (64 MB) estimate the 0.5 and 99.5 percentiles of a
        1024 x 1024 x 700 stack from every 4th voxel along each axis.

    Returns
    -------
    IntensityNormalisation
    """
    preset = get_preset(modality) if isinstance(modality, str) else modality
    if isinstance(max_voxels, bool) or not isinstance(max_voxels, (int, np.integer)) or max_voxels < 1:
        raise ValueError(f"max_voxels must be a positive integer, got {max_voxels!r}.")
    shape = _check_source(source)
    stride = _sample_stride(shape, int(max_voxels))
    plane_samples = -(-shape[1] // stride) * -(-shape[2] // stride)
    sample = np.empty(-(-shape[0] // stride) * plane_samples, dtype=np.float32)
    for k, z in enumerate(range(0, shape[0], stride)):
        plane = np.asarray(source[z : z + 1, :, :])[0]
        sample[k * plane_samples : (k + 1) * plane_samples] = plane[::stride, ::stride].ravel()
    del plane
    # overwrite_input: the sample is ours; partitioning it in place picks the same order statistics.
    low, high = (float(v) for v in np.percentile(sample, preset.percentiles, overwrite_input=True))
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError("The volume has NaN or infinite voxels; replace them before segmenting.")
    if high <= low:  # a mostly-constant image: the full range, as normalize_intensity does
        low, high = float(sample.min()), float(sample.max())
    return IntensityNormalisation(preset.name, low, high, preset.vessels_bright, stride, int(sample.size))


# ----------------------------------------------------------------------------------------- tiling


@dataclass(frozen=True)
class StreamTile:
    """One tile: the region read (core plus halo) and the core written, in volume coordinates.

    Attributes
    ----------
    read : tuple of 3 slice
        Region read and predicted: the union of the whole-volume scan's windows that touch the core.
    core : tuple of 3 slice
        Region written to the output.
    windows : int
        Sliding windows the network runs on for this tile.
    """

    read: tuple[slice, slice, slice]
    core: tuple[slice, slice, slice]
    windows: int

    @property
    def core_in_read(self) -> tuple[slice, slice, slice]:
        """The core in the coordinates of the read region."""
        return tuple(
            slice(c.start - r.start, c.stop - r.start) for c, r in zip(self.core, self.read, strict=True)
        )


def _window_starts(size: int, patch: int, overlap: float) -> tuple[list[int], int]:
    """Start positions of MONAI's scan along one axis (``_get_scan_interval``, ``dense_patch_slices``), in
    the coordinates of the volume padded to at least ``patch``, and the interval between them."""
    padded = max(size, patch)
    interval = patch if patch == padded else max(int(patch * (1 - overlap)), 1)
    count = next(d for d in range(math.ceil(padded / interval)) if d * interval + patch >= padded) + 1
    starts = [d * interval - max(d * interval + patch - padded, 0) for d in range(count)]
    return starts, interval


def _axis_tiles(size: int, tile: int, patch: int, overlap: float) -> list[tuple[int, int, int, int, int]]:
    """(read start, read stop, core start, core stop, windows) along one axis."""
    starts, interval = _window_starts(size, patch, overlap)
    if size <= patch:  # one window over the (padded) axis
        return [(0, size, 0, size, 1)]
    core = max(
        interval, tile // interval * interval
    )  # on the scan grid: fewest windows shared with neighbours
    tiles = []
    for core_start in range(0, size, core):
        core_stop = min(core_start + core, size)
        touching = [s for s in starts if s < core_stop and s + patch > core_start]
        tiles.append((min(touching), max(touching) + patch, core_start, core_stop, len(touching)))
    return tiles


def plan_stream_tiles(
    shape_zyx: Sequence[int],
    *,
    tile_size_zyx: Sequence[int] = DEFAULT_TILE_SIZE_ZYX,
    patch_size_zyx: Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    size_divisor_zyx: Sequence[int] = (1, 1, 1),
) -> list[StreamTile]:
    """Tiles that reproduce whole-volume sliding-window inference exactly.

    Along each axis, MONAI's scan puts windows of the patch size ``P`` at multiples of the interval
    ``i = int(P * (1 - overlap))`` (the last one moved back to end at the volume's edge). The tile cores are
    runs of ``T' = max(i, floor(T / i) * i)`` voxels (``tile_size_zyx`` rounded down to the scan grid), and
    each tile is read over the union of the windows that touch its core. A scan of that region by MONAI visits
    exactly those windows again (same starts, same patch), so the core comes out as in the whole-volume scan.

    The halo (voxels read beyond the core, both sides together) is ``i * floor((P - 1) / i) + P - i`` along an
    axis (= ``P`` when ``i`` divides ``P``), at most ``i * floor((P - 1) / i) + P - 1`` next to the scan's
    last, edge-aligned window. Windows touching two cores are computed twice: the work is about
    ``prod(1 + i * floor((P - 1) / i) / T')`` times that of the whole-volume scan.

    Parameters
    ----------
    shape_zyx : 3 int
        Volume shape.
    tile_size_zyx : 3 int
        Largest core size; rounded down to a multiple of the scan interval (at least one interval).
    patch_size_zyx : 3 int
        Sliding-window patch, before :func:`fit_patch_to_volume` (applied here as in ``predict_probabilities``).
    overlap : float or 3 floats
    size_divisor_zyx : 3 int
        The network's ``size_divisor_zyx`` (what the patch is rounded to for small volumes).

    Returns
    -------
    list of StreamTile
        Z-major order; the cores partition the volume.
    """
    shape = tuple(int(s) for s in shape_zyx)
    tile = tuple(int(t) for t in tile_size_zyx)
    patch_in = tuple(int(p) for p in patch_size_zyx)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"The volume shape must be 3 positive integers (Z, Y, X), got {shape_zyx}.")
    if len(tile) != 3 or min(tile) < 1:
        raise ValueError(f"tile_size_zyx must be 3 positive integers (Z, Y, X), got {tile_size_zyx}.")
    if len(patch_in) != 3 or min(patch_in) < 1:
        raise ValueError(f"Patch size must be 3 positive integers (Z, Y, X), got {patch_size_zyx}.")
    patch = fit_patch_to_volume(patch_in, shape, size_divisor_zyx)
    overlaps = _as_overlap(overlap)
    per_axis = [_axis_tiles(*args) for args in zip(shape, tile, patch, overlaps, strict=True)]
    tiles = []
    for tz in per_axis[0]:
        for ty in per_axis[1]:
            for tx in per_axis[2]:
                axes = (tz, ty, tx)
                tiles.append(
                    StreamTile(
                        read=tuple(slice(a[0], a[1]) for a in axes),
                        core=tuple(slice(a[2], a[3]) for a in axes),
                        windows=math.prod(a[4] for a in axes),
                    )
                )
    return tiles


# ----------------------------------------------------------------------------------------- memory


def peak_memory_bound_bytes(
    *,
    tile_size_zyx: Sequence[int] = DEFAULT_TILE_SIZE_ZYX,
    patch_size_zyx: Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    channels: int = 1,
    batch_size: int = 2,
    source_dtype: np.dtype | str = "uint16",
    output_dtype: str = "float16",
    volume_shape_zyx: Sequence[int] | None = None,
    size_divisor_zyx: Sequence[int] = (1, 1, 1),
    network_bytes: int = 0,
) -> int:
    """Upper bound on the memory :func:`stream_segment_probabilities` allocates, in bytes.

    ``M = R (b + 4 (C + 3)) + 4 V (1 + B (1 + 2 C)) + C T (o + 4) + 2 b Y X + N``

    with ``R`` the voxels of the largest tile read (core plus halo, each axis at least the patch: MONAI pads),
    ``T`` the voxels of the largest core, ``V`` the patch voxels, ``C`` the output channels, ``B`` the batch
    size, ``b`` and ``o`` the bytes per voxel of the source and the output, ``Y X`` one Z plane and ``N``
    the network's own working memory for ``B`` windows (activations: architecture-dependent, hence a
    parameter). Terms: the raw tile, its float32 normalised copy, MONAI's padded copy, per-class accumulator
    and count map (``R``); the importance map, the window batch, its logits and probabilities (``V``); the
    core cast to the output type (``T``); one decoded TIFF page and its crop, or the plane read by
    :func:`estimate_normalisation` (``Y X``). Not every term is alive at the same time, so the bound is loose
    by up to about ``R (b + 4)``. The output is written into a file mapping opened per tile; its pages are
    the operating system's file cache, not process memory. Python, PyTorch and the libraries add a constant
    (a few hundred MB) that is not counted.

    Without ``volume_shape_zyx``, ``R`` uses the largest halo :func:`plan_stream_tiles` can give,
    ``i floor((P - 1) / i) + P - 1`` per axis, and ``Y X`` is left out (add it for page-wise TIFF); with it,
    the exact largest tile and plane. Either way ``M`` does not grow with the volume (except the plane term).

    Example: 2PM patch (64, 128, 128), overlap 0.25, tile (128, 512, 512), uint16 in, 1 class,
    float16 out, batch 2, a 1024 x 1024 x 700 stack: 1.43 GB (2.0 GB without the shape) plus the network's
    working memory, whereas in-memory inference holds more than 14 bytes per voxel of that stack (over 10 GB).

    Parameters
    ----------
    tile_size_zyx, patch_size_zyx, overlap, batch_size, output_dtype
        As given to :func:`stream_segment_probabilities` (the tile is rounded down to the scan grid here too).
    channels : int
        Output classes ``C`` of the network.
    source_dtype : dtype
        Voxel type of the source (``b`` bytes).
    volume_shape_zyx : 3 int, optional
        The volume's shape: gives the exact largest tile and the plane term.
    size_divisor_zyx : 3 int
        The network's ``size_divisor_zyx`` (patch rounding for volumes smaller than the patch).
    network_bytes : int
        The network's working memory for ``batch_size`` windows, if known (measure it once per model).

    Returns
    -------
    int
        Bytes.
    """
    overlaps = _as_overlap(overlap)
    patch = tuple(int(p) for p in patch_size_zyx)
    tile = tuple(int(t) for t in tile_size_zyx)
    if output_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"output_dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {output_dtype!r}.")
    if channels < 1 or batch_size < 1 or network_bytes < 0:
        raise ValueError("channels and batch_size must be >= 1 and network_bytes >= 0.")
    plane = 0
    if volume_shape_zyx is not None:
        shape = tuple(int(s) for s in volume_shape_zyx)
        tiles = plan_stream_tiles(
            shape,
            tile_size_zyx=tile,
            patch_size_zyx=patch,
            overlap=overlaps,
            size_divisor_zyx=size_divisor_zyx,
        )
        patch = fit_patch_to_volume(patch, shape, size_divisor_zyx)
        read = [max(max(t.read[a].stop - t.read[a].start for t in tiles), patch[a]) for a in range(3)]
        core = [max(t.core[a].stop - t.core[a].start for t in tiles) for a in range(3)]
        plane = shape[1] * shape[2]
    else:
        read, core = [], []
        for t, p, o in zip(tile, patch, overlaps, strict=True):
            interval = max(int(p * (1 - o)), 1)
            core_size = max(interval, t // interval * interval)
            core.append(core_size)
            read.append(max(core_size + interval * ((p - 1) // interval) + p - 1, p))
    r, v, c = math.prod(read), math.prod(patch), math.prod(core)
    b, o = np.dtype(source_dtype).itemsize, np.dtype(output_dtype).itemsize
    return int(
        r * (b + 4 * (channels + 3))
        + 4 * v * (1 + batch_size * (1 + 2 * channels))
        + channels * c * (o + 4)
        + 2 * b * plane
        + network_bytes
    )


# ------------------------------------------------------------------------------------------ streaming


def _check_source(source: VolumeSource) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in getattr(source, "shape", ()))
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"Expected a (Z, Y, X) volume, got shape {shape}.")
    dtype = np.dtype(source.dtype)
    if dtype.kind not in "biuf":  # bool, signed, unsigned, float
        raise ValueError(f"The volume has data type {dtype}; give a real-valued scalar volume.")
    return shape


def _to_output(probabilities: np.ndarray, output_dtype: str) -> np.ndarray:
    if output_dtype == "uint8":
        return np.rint(probabilities * np.float32(255)).astype(np.uint8)
    return probabilities.astype(output_dtype)


class _NpyCores:
    """Tile cores into a ``(C, Z, Y, X)`` ``.npy`` on disk, mapped only while one core is written (written
    pages then belong to the file cache, not to this process)."""

    def __init__(self, path: Path, shape_zyx: tuple[int, int, int], output_dtype: str) -> None:
        self.path, self.shape, self.output_dtype = path, shape_zyx, output_dtype
        self.channels: int | None = None

    def write(self, core: tuple[slice, slice, slice], values: np.ndarray) -> None:
        mode = "w+" if self.channels is None else "r+"
        self.channels = values.shape[0]
        output = np.lib.format.open_memmap(
            self.path, mode=mode, dtype=self.output_dtype, shape=(self.channels, *self.shape)
        )
        output[(slice(None), *core)] = values
        output.flush()
        del output


class _OmeZarrCores:
    """Tile cores into an OME-Zarr image (:mod:`VesselSegLib.io.ome_zarr`), created at the first core, on
    ``grid`` (None: 1 mm voxels at the origin, axis-aligned)."""

    def __init__(
        self,
        path: Path,
        shape_zyx: tuple[int, int, int],
        output_dtype: str,
        grid: Grid | None,
        channel_names: Sequence[str] | None,
    ) -> None:
        self.path, self.shape, self.output_dtype = path, shape_zyx, output_dtype
        self.grid = Grid(shape_zyx, (1.0, 1.0, 1.0)) if grid is None else grid
        self.channel_names = channel_names
        self.array = None
        self.channels: int | None = None

    def write(self, core: tuple[slice, slice, slice], values: np.ndarray) -> None:
        from VesselSegLib.io.ome_zarr import create_ome_zarr_image

        if self.array is None:
            self.channels = values.shape[0]
            names = self.channel_names or [f"class {i}" for i in range(self.channels)]
            self.array = create_ome_zarr_image(
                self.path,
                self.shape,
                self.output_dtype,
                spacing_zyx=tuple(reversed(self.grid.spacing_xyz)),
                origin_xyz=self.grid.origin_xyz,
                direction=self.grid.direction,
                channels=list(names)[: self.channels],
                name="probabilities",
            )
        self.array[(slice(None), *core)] = values


def _write_cores(sink, cores, tiles, output_dtype, on_tile_core, progress, cancel) -> None:
    """Write ``(tile index, float32 core probabilities)`` pairs, in any order, into ``sink``.

    The one writer of both ways of computing the tiles (here, one after another, or on a Dask cluster): each
    core goes to ``on_tile_core`` at full precision, then into the output in ``output_dtype``.
    """
    total = sum(tile.windows for tile in tiles)
    done = 0
    written = set()
    for index, core in cores:
        if cancel is not None and cancel():
            raise SegmentationCancelled("Segmentation cancelled by the user.")
        if index in written:  # a retried task that finished twice: the first result stands
            continue
        if sink.channels is not None and core.shape[0] != sink.channels:
            raise ValueError(
                f"The network gave {core.shape[0]} channels on tile {index + 1} but {sink.channels} "
                "before; it must give the same number on every tile."
            )
        tile = tiles[index]
        if on_tile_core is not None:
            on_tile_core(tile.core, core)
        sink.write(tile.core, _to_output(core, output_dtype))
        written.add(index)
        done += tile.windows
        if progress is not None:
            progress(min(done / total, 1.0), f"Tile {len(written)}/{len(tiles)} done")
    if len(written) != len(tiles):
        raise RuntimeError(f"Only {len(written)} of {len(tiles)} tiles came back from the workers.")


def _tile_cores_here(network, source, tiles, patch, normalisation, options, progress, cancel):
    """``(tile index, float32 core probabilities)`` of each tile, computed in this process one after another;
    progress counts windows across all tiles."""
    total_windows = sum(tile.windows for tile in tiles)
    windows_done = 0
    for index, tile in enumerate(tiles):
        if cancel is not None and cancel():
            raise SegmentationCancelled("Segmentation cancelled by the user.")
        raw = np.asarray(source[tile.read])
        image = normalisation.apply(raw) if normalisation is not None else raw.astype(np.float32)
        del raw

        def tile_progress(
            fraction: float, message: str, _done: int = windows_done, _tile: StreamTile = tile, _index=index
        ) -> None:
            if progress is not None:
                overall = (_done + fraction * _tile.windows) / total_windows
                progress(min(overall, 1.0), f"Tile {_index + 1}/{len(tiles)}: {message}")

        probabilities = predict_probabilities(
            network, image, patch_size_zyx=patch, progress=tile_progress, cancel=cancel, **options
        )
        del image
        yield index, probabilities[(slice(None), *tile.core_in_read)]
        windows_done += tile.windows


def stream_segment_probabilities(
    network: nn.Module,
    source: VolumeSource,
    output_path: str | os.PathLike,
    *,
    patch_size_zyx: Sequence[int],
    normalisation: IntensityNormalisation | None,
    tile_size_zyx: Sequence[int] = DEFAULT_TILE_SIZE_ZYX,
    overlap: float | Sequence[float] = 0.25,
    batch_size: int = 2,
    device: str = "cpu",
    blend_mode: str = "gaussian",
    precision: str = "auto",
    test_time_augmentation: bool = False,
    output_dtype: str = "float16",
    on_tile_core: Callable[[tuple[slice, slice, slice], np.ndarray], None] | None = None,
    tile_cores: Callable[[Sequence[StreamTile], tuple[int, int, int]], Iterable[tuple[int, np.ndarray]]]
    | None = None,
    grid: Grid | None = None,
    channel_names: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> Path:
    """Per-class probabilities of a volume too large for memory, tile by tile, into a ``.npy`` file or an
    OME-Zarr image.

    Each tile of :func:`plan_stream_tiles` is read (core plus halo) from ``source``, mapped with the global
    ``normalisation``, run through :func:`~VesselSegLib.inference.sliding_window.predict_probabilities`, and
    its core written into the output. The output is written under a temporary name beside ``output_path``
    and renamed into place at the end; on an error or a cancel nothing is left.

    Exactness: the result equals ``predict_probabilities(network, normalisation.apply(whole_volume), ...)``
    with the same patch, overlap, blend mode and device, for any network: each core voxel is blended from the
    same windows with the same weights in the same order. What may differ is floating-point rounding inside
    the network when windows are grouped into other batches (some kernels choose their algorithm by batch
    size: on the CPU a batch of one window rounds differently from a batch of several, by about 1e-7); with
    ``batch_size=1`` and float32 output the tests find bit-identical results.
    With ``estimate_normalisation`` subsampling (large volumes) the mapping differs slightly from
    ``normalize_intensity`` on the whole volume, whose percentiles use every voxel; it is the same for every
    tile, so there are no seams.

    Memory: bounded by :func:`peak_memory_bound_bytes` whatever the volume size, with ``R`` the largest
    tile read and ``T`` its core: ``R (b + 4 (C + 3)) + 4 V (1 + B (1 + 2 C)) + C T (o + 4) + 2 b Y X`` bytes
    plus the network's working memory for ``B`` windows.

    Cost: windows that touch two tile cores run once for each, about ``prod(1 + i floor((P - 1) / i) / T')``
    times the whole-volume work (:func:`plan_stream_tiles`); 2.5x for a 1024 x 1024 x 700 stack with the 2PM
    patch and the default tile. Larger tiles cost less time and more memory.

    Parameters
    ----------
    network : nn.Module
        Maps ``(B, 1, z, y, x)`` to logits ``(B, C, z, y, x)``.
    source : LazyVolume or ndarray, shape (Z, Y, X)
        From :func:`open_volume_lazily`; an in-memory array also works.
    output_path : path
        A ``.npy`` file, or an ``.ome.zarr`` folder that does not exist yet (:mod:`VesselSegLib.io.ome_zarr`);
        it will hold ``(C, Z, Y, X)`` probabilities of ``output_dtype``.
    patch_size_zyx : 3 int
        Sliding-window patch (the model's).
    normalisation : IntensityNormalisation or None
        From :func:`estimate_normalisation`; None when ``source`` is already normalised (cast to float32).
    tile_size_zyx : 3 int
        Largest tile core, rounded down to the scan grid. Bigger tiles share fewer windows with their
        neighbours (less repeated work) and cost more memory.
    overlap, batch_size, device, blend_mode, precision, test_time_augmentation
        As for ``predict_probabilities``. Test-time augmentation flips each window, so exactness holds with it
        too; it costs 4x the time and, per window, a few window-sized maps on top of the network's memory.
    output_dtype : {"float16", "uint8", "float32"}
        float16 (default): 2 bytes per voxel and class, relative error below 2**-11 (0.0005), readable by any
        NumPy. uint8: 1 byte, ``round(255 p)``, absolute error up to 1/510, enough for thresholding at 0.5.
        float32: 4 bytes, bit for bit what ``predict_probabilities`` returns.
    tile_cores : callable(tiles, patch) -> iterable of (tile index, float32 core probabilities), optional
        Computes the tiles elsewhere (:class:`~VesselSegLib.inference.distributed.DaskTiles`); each core is
        written as it arrives. None computes them here, one after another.
    on_tile_core : callable(core slices (Z, Y, X), probabilities (C, z, y, x) float32), optional
        Called with each tile core's full-precision probabilities before they are cast to ``output_dtype``
        (``vesselseg stream`` thresholds them into the class map there, so that a float16 file does not
        change any voxel of the class map).
    grid : Grid, optional
        For an OME-Zarr output: the volume's grid (voxel size, origin, direction), written into its
        metadata; None writes 1 mm voxels at the origin.
    channel_names : sequence of str, optional
        For an OME-Zarr output: the name of each channel (the vessel classes).
    progress : callable(fraction, message), optional
        Fraction of all windows done.
    cancel : callable() -> bool, optional
        Polled before each tile and each batch; True raises :class:`SegmentationCancelled`.

    Returns
    -------
    Path
        ``output_path``; load a ``.npy`` with ``numpy.load(path, mmap_mode="r")``, an OME-Zarr image with
        :func:`VesselSegLib.io.open_volume_lazily` (one class) or ``zarr.open(path)["0"]``.
    """
    output_path = Path(output_path)
    if output_path.suffix.lower() not in (".npy", ".zarr"):
        raise ValueError(
            f"The streamed output is a .npy file or an OME-Zarr folder; got {output_path.name}. Use a name "
            "ending in .npy or .ome.zarr."
        )
    if output_dtype not in OUTPUT_DTYPES:
        raise ValueError(f"output_dtype must be one of {', '.join(OUTPUT_DTYPES)}, got {output_dtype!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    shape = _check_source(source)
    divisor = getattr(network, "size_divisor_zyx", (1, 1, 1))
    patch = fit_patch_to_volume(tuple(int(p) for p in patch_size_zyx), shape, divisor)
    tiles = plan_stream_tiles(
        shape, tile_size_zyx=tile_size_zyx, patch_size_zyx=patch, overlap=overlap, size_divisor_zyx=divisor
    )
    total_windows = sum(tile.windows for tile in tiles)
    logger.info(
        "Streaming %s in %d tiles: %d windows (%.2fx the whole-volume scan); memory bound for one class "
        "%.2f GB plus the network's.",
        shape,
        len(tiles),
        total_windows,
        total_windows / count_windows(shape, patch, _as_overlap(overlap)),
        peak_memory_bound_bytes(
            tile_size_zyx=tile_size_zyx,
            patch_size_zyx=patch,
            overlap=overlap,
            batch_size=batch_size,
            source_dtype=source.dtype,
            output_dtype=output_dtype,
            volume_shape_zyx=shape,
            size_divisor_zyx=divisor,
        )
        / 1e9,
    )
    options = dict(
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        blend_mode=blend_mode,
        precision=precision,
        test_time_augmentation=test_time_augmentation,
    )
    zarr_output = output_path.suffix.lower() == ".zarr"
    atomic = (
        atomic_write_directory(output_path) if zarr_output else atomic_write_path(output_path, suffix=".npy")
    )
    with atomic as temporary:  # an empty folder for OME-Zarr, a file name for .npy
        sink = (
            _OmeZarrCores(temporary, shape, output_dtype, grid, channel_names)
            if zarr_output
            else _NpyCores(temporary, shape, output_dtype)
        )
        if tile_cores is not None:  # computed elsewhere (a Dask cluster): written as they arrive
            cores, tile_progress = tile_cores(tiles, patch), progress
        else:  # here, one tile after another; the tiles report their windows' progress themselves
            cores = _tile_cores_here(network, source, tiles, patch, normalisation, options, progress, cancel)
            tile_progress = None
        _write_cores(sink, cores, tiles, output_dtype, on_tile_core, tile_progress, cancel)
    if progress is not None:
        progress(1.0, "Streaming inference done")
    return output_path


__all__ = [
    "DEFAULT_NORMALISATION_VOXELS",
    "DEFAULT_TILE_SIZE_ZYX",
    "OUTPUT_DTYPES",
    "STREAMING_SUFFIXES",
    "IntensityNormalisation",
    "LazyVolume",
    "SliceMedianSubtracted",
    "StreamTile",
    "VolumeSource",
    "estimate_normalisation",
    "open_volume_lazily",
    "peak_memory_bound_bytes",
    "plan_stream_tiles",
    "stream_segment_probabilities",
]
