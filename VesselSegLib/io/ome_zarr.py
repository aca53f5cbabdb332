"""OME-Zarr images written region by region: the output of ``vesselseg stream --output-format ome-zarr``.

An OME-Zarr image (NGFF 0.5, Zarr v3) is a folder: a group whose ``ome.multiscales`` metadata names the axes,
their units and the voxel size, and one array per resolution level, stored in compressed chunks. It is what
napari, Fiji (MoBIE, BigDataViewer), neuroglancer and webKnossos open directly, locally or from object
storage, and it can be written one region at a time: a whole-brain class map never has to be in memory.

What is written here: the full-resolution level only (``"0"``; viewers that want a pyramid can build it with
``ome-zarr``'s tools), axes ``z, y, x`` (and a leading ``c`` for per-class probabilities) in millimetres, the
voxel size as the level's ``scale`` and the position of voxel (0, 0, 0) as its ``translation``. OME-Zarr has
no axis directions; a volume whose direction is not the identity keeps it in the group's ``vesselseg``
attributes, where :func:`VesselSegLib.io.open_volume_lazily` reads it back (other tools show the volume
unrotated). The metadata comes from the ``ome-zarr`` package (its NGFF writer), the arrays from ``zarr``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Chunk of each written array along (Z, Y, X): 16 MiB of uint8, 32 MiB of float16 per class; regions that
#: cover whole chunks are written without reading anything back.
DEFAULT_CHUNKS_ZYX = (64, 256, 256)
UNIT = "millimeter"


def _zarr_modules():
    try:
        import zarr

        with warnings.catch_warnings():  # ome-zarr 0.18's writer module warns about its own default Scaler
            warnings.simplefilter("ignore", DeprecationWarning)
            from ome_zarr.writer import write_multiscales_metadata
    except ImportError:
        raise ValueError(
            "Writing OME-Zarr needs the 'zarr' and 'ome-zarr' packages: pip install zarr ome-zarr "
            '(or pip install -e ".[scale]").'
        ) from None
    return zarr, write_multiscales_metadata


def create_ome_zarr_image(
    path: str | os.PathLike,
    shape_zyx: Sequence[int],
    dtype: np.dtype | str,
    *,
    spacing_zyx: Sequence[float],
    origin_xyz: Sequence[float] = (0.0, 0.0, 0.0),
    direction: np.ndarray | Sequence[float] | None = None,
    channels: Sequence[str] | None = None,
    name: str = "image",
    chunks_zyx: Sequence[int] = DEFAULT_CHUNKS_ZYX,
) -> Any:
    """Create an empty OME-Zarr image at ``path`` and return its full-resolution array, to be filled.

    Parameters
    ----------
    path : path
        The ``.ome.zarr`` folder to create; it must not exist, or be empty (nothing is ever written over).
    shape_zyx : 3 int
        Voxels along (Z, Y, X).
    dtype : numpy dtype
    spacing_zyx : 3 float
        Voxel size in mm (Z, Y, X): the level's ``scale``.
    origin_xyz : 3 float
        Position in mm of the centre of voxel (0, 0, 0), (X, Y, Z): the level's ``translation``.
    direction : 3x3 or 9 floats, optional
        Axis directions (columns I, J, K, as :class:`VesselSegLib.io.Grid`); kept in the ``vesselseg``
        attributes when it is not the identity.
    channels : sequence of str, optional
        Names of a leading channel axis (e.g. the vessel classes of a probability map); its array is then
        ``(C, Z, Y, X)`` with one class per chunk.
    name : str
        The image's name in the metadata.
    chunks_zyx : 3 int
        Chunk size, clipped to the shape.

    Returns
    -------
    zarr.Array
        Shape ``(Z, Y, X)`` or ``(C, Z, Y, X)``; assign regions to it (``array[core] = values``).

    Raises
    ------
    ValueError
        The folder exists and is not empty, or zarr / ome-zarr is not installed.
    """
    zarr, write_multiscales_metadata = _zarr_modules()
    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ValueError(f"{path} already exists; VesselSeg writes OME-Zarr only into a new folder.")
    shape = tuple(int(s) for s in shape_zyx)
    spacing = [float(s) for s in spacing_zyx]
    translation = [float(o) for o in reversed(tuple(origin_xyz))]
    chunks = tuple(min(int(c), s) for c, s in zip(chunks_zyx, shape, strict=True))
    axes = [{"name": axis, "type": "space", "unit": UNIT} for axis in "zyx"]
    if channels is not None:
        shape, chunks = (len(channels), *shape), (1, *chunks)
        spacing, translation = [1.0, *spacing], [0.0, *translation]
        axes = [{"name": "c", "type": "channel"}, *axes]
    group = zarr.open_group(str(path), mode="w-")
    array = group.create_array("0", shape=shape, dtype=np.dtype(dtype), chunks=chunks, fill_value=0)
    write_multiscales_metadata(
        group,
        datasets=[
            {
                "path": "0",
                "coordinateTransformations": [
                    {"type": "scale", "scale": spacing},
                    {"type": "translation", "translation": translation},
                ],
            }
        ],
        axes=axes,
        name=name,
    )
    extra: dict[str, Any] = {}
    if channels is not None:
        extra["channels"] = list(channels)
    if direction is not None and not np.allclose(np.asarray(direction, dtype=float).reshape(3, 3), np.eye(3)):
        extra["direction"] = [float(v) for v in np.asarray(direction, dtype=float).ravel()]
    if extra:
        group.attrs["vesselseg"] = extra
    return array


__all__ = ["DEFAULT_CHUNKS_ZYX", "create_ome_zarr_image"]
