"""Checks on input volumes, so bad input fails early with a message that says how to fix it."""

from __future__ import annotations

import numpy as np

#: Voxels converted to float32 at a time by :func:`check_image` (64 MiB), so checking needs no full copy.
_CHECK_SLAB_VOXELS = 16 * 2**20


def _scalar_3d(image: np.ndarray, name: str) -> np.ndarray:
    """``image`` as a 3D real array (a view; singleton 4th axes squeezed), or ValueError saying why not."""
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    elif array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(
            f"The {name} must be a 3D scalar volume, but it has {array.ndim} dimensions (shape {array.shape}). "
            "Give a single 3D volume: extract one frame or component of a 4D/vector image, or stack 2D slices."
        )
    if array.size == 0:
        raise ValueError(f"The {name} is empty (shape {array.shape}); load a volume with voxels in it.")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise ValueError(f"The {name} has data type {array.dtype}; give a real-valued scalar volume.")
    return array


def _check_values(name: str, n_bad: int, low: float, high: float) -> None:
    """Refuse NaN/Inf voxels (counted after the float32 conversion) and a constant volume."""
    if n_bad:
        raise ValueError(
            f"The {name} has {n_bad} NaN or infinite voxels; replace them first (e.g. with the minimum "
            "intensity, numpy.nan_to_num) or crop them away."
        )
    if high == low:
        raise ValueError(
            f"The {name} is constant (every voxel is {low}); there is nothing to segment. "
            "Check that the right volume is selected."
        )


def check_image(image: np.ndarray, *, name: str = "input volume") -> None:
    """The checks of :func:`validate_image` without its float32 copy: slab by slab, for checking up front.

    Raises
    ------
    ValueError
        As :func:`validate_image`.
    """
    array = _scalar_3d(image, name)
    slices = max(1, _CHECK_SLAB_VOXELS // max(1, array[0].size))
    n_bad, low, high = 0, np.inf, -np.inf
    for z0 in range(0, array.shape[0], slices):
        slab = array[z0 : z0 + slices].astype(np.float32)
        finite = np.isfinite(slab)
        n_bad += int(slab.size - np.count_nonzero(finite))
        if not n_bad:
            low, high = min(low, float(slab.min())), max(high, float(slab.max()))
    _check_values(name, n_bad, low, high)


def validate_image(image: np.ndarray, *, name: str = "input volume") -> np.ndarray:
    """Check that ``image`` is a finite, non-constant 3D scalar volume; return it as float32.

    Integer, boolean and float16 volumes are converted to float32 (a copy; the input is never modified).
    A trailing or leading singleton axis (e.g. ``(Z, Y, X, 1)``) is squeezed.

    Raises
    ------
    ValueError
        Not 3D (2D slices, 4D time series or vector volumes), empty, non-numeric, NaN or Inf voxels, or a
        constant volume.
    """
    data = _scalar_3d(image, name).astype(np.float32, copy=True)
    n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    _check_values(name, n_bad, *((float(data.min()), float(data.max())) if not n_bad else (0.0, 0.0)))
    return data


def validate_mask(mask: np.ndarray, image_shape: tuple[int, ...], *, name: str = "brain mask") -> np.ndarray:
    """Check that ``mask`` has the image's shape and is not empty; return it as bool."""
    array = np.asarray(mask)
    if array.shape != tuple(image_shape):
        raise ValueError(
            f"The {name} has shape {array.shape} but the image has shape {tuple(image_shape)}; "
            "resample the mask onto the image's grid (e.g. Slicer's Resample Scalar/Vector/DWI Volume)."
        )
    boolean = array > 0
    if not boolean.any():
        raise ValueError(f"The {name} is empty; give a mask that covers the region to segment, or none.")
    return boolean
