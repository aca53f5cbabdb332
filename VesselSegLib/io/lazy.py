"""Volumes read region by region from disk, for stacks larger than memory.

:func:`open_volume_lazily` opens a TIFF stack, a raw NRRD or a ``.npy`` file without reading its voxels;
``volume[z0:z1, y0:y1, x0:x1]`` then reads that region only: a memory map (mapped afresh for each read and
unmapped after it, so the process keeps no mapped pages between reads) for ``.npy``, raw NRRD and
uncompressed contiguous TIFF, or page by page with ``tifffile`` for compressed or scattered TIFF (one page
decoded at a time). The ``zarr`` package (which tifffile's ``aszarr`` needs to index a store) is not a
dependency of VesselSeg, so it is not used.

Geometry comes from the same places as :func:`~VesselSegLib.io.volume.read_volume`'s, so a file read
either way lies on the same grid: NRRD through SimpleITK's header reader (plus ``space units``, which ITK
ignores) and pynrrd for the data offset, TIFF through :func:`~VesselSegLib.io.metadata.tiff_spacing_xyz_mm`.
Every region read is checked for NaN/Inf voxels.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from VesselSegLib.io.grid import Grid
from VesselSegLib.io.layout import check_voxel_data, damaged, read_nrrd_layout, refuse_non_finite
from VesselSegLib.io.metadata import nrrd_unit_in_mm, refuse_sheared, tiff_spacing_xyz_mm
from VesselSegLib.io.volume import require_volume_file

logger = logging.getLogger(__name__)

STREAMING_SUFFIXES = (".tif", ".tiff", ".nrrd", ".nhdr", ".npy", ".zarr")

_CONVERT_HINT = (
    "Streaming needs an uncompressed or page-wise format it can read region by region: a TIFF stack, a raw "
    "(uncompressed) NRRD or a .npy file. Convert it once, e.g. with SimpleITK: "
    "sitk.WriteImage(sitk.ReadImage(src), 'stack.nrrd', useCompression=False), or with "
    "tifffile.imwrite('stack.tif', array) (VesselSegLib.io.write_volume(volume, 'stack.tif') also works)."
)


class LazyVolume:
    """A (Z, Y, X) scalar volume on disk, read region by region.

    ``volume[z0:z1, y0:y1, x0:x1]`` returns a new in-memory array of that region only (slices with step 1,
    or integers, which drop their axis). Use as a context manager, or call :meth:`close`.

    Attributes
    ----------
    path : Path
    shape : tuple of 3 int
        (Z, Y, X).
    dtype : numpy.dtype
        Voxel type in native byte order.
    spacing_zyx : tuple of 3 float or None
        Voxel size in mm in array-axis order, when the file says it.
    origin_xyz : tuple of 3 float
        World position (mm, LPS) of the centre of voxel (0, 0, 0); (0, 0, 0) for files without one
        (``.npy``, TIFF).
    direction : ndarray, shape (3, 3)
        Columns are the I, J, K (X, Y, Z) axis directions in LPS; identity for files without one.
    """

    def __init__(
        self,
        path: Path,
        shape: tuple[int, int, int],
        dtype: np.dtype,
        spacing_zyx: tuple[float, float, float] | None,
        *,
        origin_xyz: Sequence[float] = (0.0, 0.0, 0.0),
        direction: np.ndarray | None = None,
    ) -> None:
        self.path = path
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype).newbyteorder("=")
        self.spacing_zyx = spacing_zyx
        self.origin_xyz = tuple(float(o) for o in origin_xyz)
        self.direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
        self.ndim = 3

    @property
    def spacing_xyz(self) -> tuple[float, float, float] | None:
        """Voxel size in mm in ITK order (X, Y, Z), or None when the file does not say it."""
        return None if self.spacing_zyx is None else tuple(reversed(self.spacing_zyx))

    @property
    def grid(self) -> Grid | None:
        """The volume's :class:`~VesselSegLib.io.grid.Grid`, or None when the file gives no voxel size."""
        if self.spacing_xyz is None:
            return None
        return Grid(self.shape, self.spacing_xyz, self.origin_xyz, self.direction.ravel())

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 3:
            raise IndexError(f"A (Z, Y, X) volume takes at most 3 indices, got {len(key)}.")
        key = key + (slice(None),) * (3 - len(key))
        ranges, dropped = [], []
        for axis, (item, size) in enumerate(zip(key, self.shape, strict=True)):
            if isinstance(item, (int, np.integer)):
                index = int(item) + size if item < 0 else int(item)
                if not 0 <= index < size:
                    raise IndexError(f"Index {item} is out of range for axis {axis} of size {size}.")
                ranges.append((index, index + 1))
                dropped.append(axis)
            elif isinstance(item, slice):
                start, stop, step = item.indices(size)
                if step != 1:
                    raise IndexError("Lazy volumes read contiguous regions only; slice with step 1.")
                ranges.append((start, max(start, stop)))
            else:
                raise IndexError(f"Index lazy volumes with slices or integers, got {item!r}.")
        region = self._read(*ranges)
        # Checked as read: the whole volume is never in memory to check at once.
        refuse_non_finite(self.path.name, region, where=f" in slices {ranges[0][0]} to {ranges[0][1] - 1}")
        return region.squeeze(axis=tuple(dropped)) if dropped else region

    def _read(self, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release the open file, if any."""

    def __enter__(self) -> LazyVolume:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.name!r}, shape={self.shape}, dtype={self.dtype})"


class _MemmapVolume(LazyVolume):
    """Raw voxels at a byte offset of a file (npy, raw NRRD, contiguous uncompressed TIFF).

    The file is mapped for each read and unmapped after it: the pages read stay in the operating system's
    file cache (reclaimable), not in this process's resident memory.
    """

    def __init__(
        self,
        path: Path,
        *,
        offset: int,
        file_dtype: np.dtype,
        file_shape: tuple[int, ...],
        fortran_order: bool = False,
        spacing_zyx: tuple[float, float, float] | None = None,
        **geometry: Any,
    ) -> None:
        self._offset = int(offset)
        self._file_dtype = np.dtype(file_dtype)
        self._file_shape = tuple(int(s) for s in file_shape)
        self._order = "F" if fortran_order else "C"
        self._squeeze = tuple(axis for axis, size in enumerate(self._file_shape) if size == 1)
        nbytes = math.prod(self._file_shape) * self._file_dtype.itemsize
        present = path.stat().st_size - self._offset
        if present < nbytes:  # a memory map would fail on the first read, with NumPy's message
            raise damaged(path.name, f"{max(present, 0)} of the {nbytes} voxel bytes its header promises")
        shape = tuple(size for size in self._file_shape if size != 1)
        super().__init__(path, shape, self._file_dtype, spacing_zyx, **geometry)

    def _read(self, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
        mapped = np.memmap(
            self.path,
            dtype=self._file_dtype,
            mode="r",
            offset=self._offset,
            shape=self._file_shape,
            order=self._order,
        )
        view = np.squeeze(mapped, axis=self._squeeze) if self._squeeze else mapped
        region = np.array(view[z[0] : z[1], y[0] : y[1], x[0] : x[1]], dtype=self.dtype, order="C")
        del view, mapped  # the last references: the file is unmapped here
        return region


class _TiffPagesVolume(LazyVolume):
    """A compressed, tiled or scattered TIFF stack: one 2D page per Z, decoded one page at a time."""

    def __init__(self, path: Path, tiff: Any, pages: Sequence[Any], shape, dtype, spacing_zyx) -> None:
        super().__init__(path, shape, dtype, spacing_zyx)
        self._tiff = tiff
        self._pages = pages

    def _read(self, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
        if self._tiff is None:
            raise ValueError(f"TIFF {self.path.name} was closed; open it again with open_volume_lazily.")
        region = np.empty((z[1] - z[0], y[1] - y[0], x[1] - x[0]), dtype=self.dtype)
        for k, index in enumerate(range(*z)):
            try:
                page = self._pages[index].asarray()
            except Exception as error:  # tifffile/imagecodecs raise many types for damaged data
                raise ValueError(
                    f"Cannot decode page {index} of TIFF {self.path.name}: {error}. The file is damaged, or its "
                    "compression needs the 'imagecodecs' package (pip install imagecodecs)."
                ) from None
            page = np.squeeze(page)
            if page.shape != self.shape[1:]:
                raise ValueError(
                    f"Page {index} of TIFF {self.path.name} has shape {page.shape}, the stack {self.shape[1:]}; "
                    "a stack needs all pages the same size (crop or pad them, e.g. in Fiji)."
                )
            region[k] = page[y[0] : y[1], x[0] : x[1]]
        return region

    def close(self) -> None:
        if self._tiff is not None:
            self._tiff.close()
            self._tiff = None


def open_volume_lazily(
    path: str | os.PathLike, *, metadata_path: str | os.PathLike | None = None
) -> LazyVolume:
    """Open a (Z, Y, X) volume for region-by-region reading, without reading its voxels.

    Parameters
    ----------
    path : path
        A TIFF stack (.tif, .tiff; uncompressed contiguous stacks are memory-mapped, compressed or tiled ones
        read page by page), a raw NRRD (.nrrd, or .nhdr with a raw data file), a ``.npy`` file, or a Zarr
        store (a ``.zarr`` folder: an OME-Zarr image, whose full-resolution level and voxel size are read
        from its ``multiscales`` metadata, or a plain 3D Zarr array; read chunk by chunk, any compression).
        Singleton axes are dropped; three axes must remain.
    metadata_path : path, optional
        A side-car OME-XML file giving a TIFF stack's PhysicalSizeX/Y/Z (as for ``read_volume``).

    Returns
    -------
    LazyVolume
        With ``shape``, ``dtype``, ``spacing_zyx`` (mm, or None), ``origin_xyz`` and ``direction`` (LPS, as
        ``read_volume`` gives them), ``grid``, and region reads by slicing (a region with NaN/Inf voxels
        raises ValueError). Close it (or use ``with``) when done; only page-wise TIFF keeps the file open.

    Raises
    ------
    ValueError
        Missing or unreadable file, a folder, an unsupported or compressed format (the message says how to
        convert it), a file shorter than its header says, fewer or more than 3 non-singleton axes
        (multichannel or time series), TIFF pages of different shapes, or a sheared NRRD grid.
    """
    path = Path(path)
    if path.name.lower().endswith(".zarr") and path.is_dir():
        return _open_zarr(path)
    require_volume_file(path)
    name = path.name.lower()
    if name.endswith((".tif", ".tiff")):
        return _open_tiff(path, metadata_path)
    if name.endswith((".nrrd", ".nhdr")):
        return _open_nrrd(path)
    if name.endswith(".npy"):
        return _open_npy(path)
    if name.endswith((".nii", ".nii.gz", ".mha", ".mhd", ".npz")):
        raise ValueError(f"Cannot stream {path.name}. {_CONVERT_HINT}")
    raise ValueError(
        f"Unsupported file type for streaming: {path.name}; use one of {', '.join(STREAMING_SUFFIXES)}."
    )


_ZARR_UNITS_MM = {"millimeter": 1.0, "micrometer": 1e-3, "nanometer": 1e-6, "meter": 1e3, "centimeter": 10.0}


class _ZarrVolume(LazyVolume):
    """A 3D Zarr array (plain, or the full-resolution level of an OME-Zarr image), read region by region:
    Zarr decodes only the chunks a region touches."""

    def __init__(
        self, path: Path, array: Any, spacing_zyx, squeeze: tuple[int, ...], **geometry: Any
    ) -> None:
        self._array = array
        self._squeeze = squeeze
        shape = tuple(size for axis, size in enumerate(array.shape) if axis not in squeeze)
        super().__init__(path, shape, np.dtype(array.dtype), spacing_zyx, **geometry)

    def _read(self, z: tuple[int, int], y: tuple[int, int], x: tuple[int, int]) -> np.ndarray:
        ranges = iter((z, y, x))
        key = tuple(
            0 if axis in self._squeeze else slice(*next(ranges)) for axis in range(len(self._array.shape))
        )
        try:
            region = self._array[key]
        except Exception as error:  # zarr and numcodecs raise many types for missing or damaged chunks
            raise damaged(
                self.path.name, f"a chunk that cannot be decoded ({type(error).__name__}: {error})"
            ) from None
        return np.asarray(region, dtype=self.dtype)


def _open_zarr(path: Path) -> LazyVolume:
    """An OME-Zarr image (``multiscales``: dataset 0, its scale transform, the axes' units) or a plain array."""
    try:
        import zarr
    except ImportError:
        raise ValueError(f"Reading {path.name} needs the 'zarr' package: pip install zarr.") from None
    try:
        node = zarr.open(str(path), mode="r")
    except Exception as error:  # not a Zarr store, or a damaged one
        raise ValueError(
            f"{path.name} is not a readable Zarr store ({type(error).__name__}: {error})."
        ) from None
    spacing_zyx, axes, geometry = None, None, {}
    if isinstance(node, zarr.Group):
        attributes = dict(node.attrs)
        multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
        if not multiscales:
            raise ValueError(
                f"{path.name} is a Zarr group without OME-Zarr 'multiscales' metadata; give the array inside it "
                "(e.g. stack.zarr/0) or an OME-Zarr image."
            )
        image = multiscales[0]
        dataset = image["datasets"][0]
        array = node[dataset["path"]]
        axes = image.get("axes")
        transforms = {t.get("type"): t for t in dataset.get("coordinateTransformations", [])}
        scale = transforms.get("scale", {}).get("scale")
        translation = transforms.get("translation", {}).get("translation")
        if scale is not None and axes and len(scale) == len(axes):
            spatial = [
                (index, a) for index, a in enumerate(axes) if isinstance(a, dict) and a.get("type") == "space"
            ]
            factors = [_ZARR_UNITS_MM.get(a.get("unit", "")) for _, a in spatial]
            if len(spatial) == 3 and None not in factors:
                spacing_zyx = tuple(float(scale[i]) * f for (i, _), f in zip(spatial, factors, strict=True))
                if translation is not None and len(translation) == len(axes):
                    origin_zyx = [
                        float(translation[i]) * f for (i, _), f in zip(spatial, factors, strict=True)
                    ]
                    geometry["origin_xyz"] = tuple(reversed(origin_zyx))
        direction = (attributes.get("vesselseg") or {}).get("direction")  # written by VesselSeg (.ome_zarr)
        if direction is not None and len(direction) == 9:
            geometry["direction"] = np.asarray(direction, dtype=float).reshape(3, 3)
    else:
        array = node
    squeeze = tuple(axis for axis, size in enumerate(array.shape) if size == 1)
    if len(array.shape) - len(squeeze) != 3:
        raise ValueError(
            f"{path.name} holds an array of shape {tuple(array.shape)}; streaming needs three axes (Z, Y, X) "
            "besides singleton ones (one channel, one time point)."
        )
    return _ZarrVolume(path, array, spacing_zyx, squeeze, **geometry)


def _three_axes(path: Path, shape: Sequence[int], what: str, fix: str) -> tuple[int, int, int]:
    squeezed = tuple(int(s) for s in shape if s != 1)
    if len(squeezed) < 3:
        raise ValueError(
            f"{what} {path.name} has shape {tuple(shape)}: fewer than 3 axes, not a (Z, Y, X) stack. "
            "VesselSeg segments 3D volumes; give a multi-slice stack."
        )
    if len(squeezed) > 3:
        raise ValueError(
            f"{what} {path.name} has shape {tuple(shape)}: more than 3 axes (several channels or time "
            f"points). VesselSeg needs one 3D (Z, Y, X) channel; {fix}"
        )
    return squeezed


def _open_npy(path: Path) -> LazyVolume:
    try:
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise ValueError(f"Cannot read {path.name} as a NumPy .npy file: {error}.") from None
    if not isinstance(mapped, np.memmap):  # an empty array, which NumPy does not map
        raise ValueError(f"{path.name} holds an empty array of shape {mapped.shape}; give a 3D volume.")
    shape, dtype, offset = mapped.shape, mapped.dtype, mapped.offset
    fortran_order = bool(mapped.flags.f_contiguous and not mapped.flags.c_contiguous)
    del mapped
    if dtype.kind not in "biuf":  # bool, signed, unsigned, float
        raise ValueError(f"{path.name} holds data type {dtype}; give a real-valued scalar volume.")
    _three_axes(path, shape, "Array file", "save one channel, e.g. numpy.save(path, array[:, 0]).")
    return _MemmapVolume(path, offset=offset, file_dtype=dtype, file_shape=shape, fortran_order=fortran_order)


def _open_nrrd(path: Path) -> LazyVolume:
    layout = read_nrrd_layout(path)
    if layout.encoding != "raw":
        raise ValueError(
            f"NRRD {path.name} has '{layout.encoding or 'no'}' encoding, not raw. {_CONVERT_HINT}"
        )
    if layout.data_path is None:
        raise ValueError(f"NRRD {path.name} splits its data over several files. {_CONVERT_HINT}")
    if layout.line_skip:
        raise ValueError(
            f"NRRD {path.name} uses 'line skip', which streaming does not support. {_CONVERT_HINT}"
        )
    shape = tuple(reversed(layout.sizes))  # NRRD lists the fastest axis first
    _three_axes(path, shape, "NRRD", "extract one channel first (e.g. in 3D Slicer or with SimpleITK).")
    data = layout.voxel_data()
    check_voxel_data(data, path.name)  # raw data: compares the file size with the header's promise
    return _MemmapVolume(
        data.path,
        offset=data.start,
        file_dtype=layout.dtype,
        file_shape=shape,
        **_nrrd_geometry(path, layout),
    )


def _nrrd_geometry(path: Path, layout: Any) -> dict[str, Any]:
    """spacing_zyx, origin_xyz and direction as ``read_volume`` gives them: from ITK's header reader."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ValueError(
            f"Cannot read the geometry of NRRD {path.name}: {str(error).strip().splitlines()[-1]}."
        ) from None
    shape = tuple(s for s in reversed(layout.sizes) if s != 1)
    if reader.GetDimension() != 3 or tuple(reversed(reader.GetSize())) != shape:
        logger.warning("NRRD %s: its geometry is not that of a 3D volume; spacing, origin and direction "
                       "are not read (give --spacing).", path.name)  # fmt: skip
        return {}
    direction = np.array(reader.GetDirection(), dtype=float).reshape(3, 3)
    refuse_sheared(direction, path.name)
    scale = nrrd_unit_in_mm(layout.header, path.name)
    # ITK says 1 mm when the header gives no voxel size: streaming must not take that for the file's word.
    stated = "space directions" in layout.header or "spacings" in layout.header
    spacing = tuple(float(s) * scale for s in reversed(reader.GetSpacing())) if stated else None
    origin = tuple(float(o) * scale for o in reader.GetOrigin())
    return {"spacing_zyx": spacing, "origin_xyz": origin, "direction": direction}


def _open_tiff(path: Path, metadata_path: str | os.PathLike | None) -> LazyVolume:
    import tifffile  # imported here: only microscopy users need it

    try:
        tiff = tifffile.TiffFile(str(path))
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as error:
        raise ValueError(f"Cannot read TIFF {path}: {error}. The file is damaged or not a TIFF.") from None
    try:
        volume = _tiff_volume(path, tiff, metadata_path)
    except BaseException:
        tiff.close()
        raise
    if not isinstance(volume, _TiffPagesVolume):
        tiff.close()
    return volume


def _tiff_volume(path: Path, tiff: Any, metadata_path: str | os.PathLike | None) -> LazyVolume:
    series = tiff.series[0]
    spacing_xyz, problem = tiff_spacing_xyz_mm(tiff, metadata_path)
    if spacing_xyz is None:
        logger.info("TIFF %s gives no voxel size: %s.", path.name, problem)
    spacing = None if spacing_xyz is None else tuple(reversed(spacing_xyz))
    if len(tiff.series) > 1 and not tiff.is_ome:
        # Pages of one shape form one series; several series mean pages of several shapes, or a stack
        # written page by page (each write its own series): the latter is a stack of all pages.
        pages = list(tiff.pages)
        shapes = [tuple(int(s) for s in page.shape) for page in pages]
        dtypes = {np.dtype(page.dtype) for page in pages}
        distinct = sorted(set(shapes), key=shapes.index)
        if len(distinct) > 1 or len(dtypes) > 1:
            listed = ", ".join(f"{shape} (first at page {shapes.index(shape)})" for shape in distinct[:4])
            raise ValueError(
                f"TIFF {path.name} has pages of different shapes: {listed}. A stack needs all slices the same "
                "size and type; crop or pad them to one size (e.g. in Fiji), or save each image separately."
            )
        shape = _three_axes(path, (len(pages), *shapes[0]), "TIFF", "split channels first (e.g. in Fiji).")
        return _TiffPagesVolume(path, tiff, pages, shape, pages[0].dtype, spacing)
    if len(tiff.series) > 1:
        logger.warning("OME-TIFF %s holds %d images; streaming the first.", path.name, len(tiff.series))
    shape = _three_axes(path, series.shape, "TIFF", "split channels or time points first (e.g. in Fiji).")
    if series.dataoffset is not None:  # uncompressed and contiguous: one memory map
        dtype = np.dtype(series.dtype).newbyteorder(tiff.byteorder)
        return _MemmapVolume(
            path, offset=series.dataoffset, file_dtype=dtype, file_shape=series.shape, spacing_zyx=spacing
        )
    pages = list(series.pages)
    if len(pages) != shape[0] or any(
        page is None or tuple(s for s in page.shape if s != 1) != shape[1:] for page in pages
    ):
        raise ValueError(
            f"TIFF {path.name} does not store one 2D page per slice (shape {series.shape}, {len(pages)} pages), "
            f"so it cannot be read slab by slab. {_CONVERT_HINT}"
        )
    return _TiffPagesVolume(path, tiff, pages, shape, series.dtype, spacing)


__all__ = ["STREAMING_SUFFIXES", "LazyVolume", "open_volume_lazily"]
