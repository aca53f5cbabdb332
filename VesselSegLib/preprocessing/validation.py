"""Checks on input volumes, so bad input fails early with a message that says how to fix it."""

from __future__ import annotations

import numpy as np


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
    data = array.astype(np.float32, copy=True)
    finite = np.isfinite(data)
    if not finite.all():
        n_bad = int(data.size - finite.sum())
        raise ValueError(
            f"The {name} has {n_bad} NaN or infinite voxels; replace them first (e.g. with the minimum "
            "intensity, numpy.nan_to_num) or crop them away."
        )
    if float(data.max()) == float(data.min()):
        raise ValueError(
            f"The {name} is constant (every voxel is {float(data.min())}); there is nothing to segment. "
            "Check that the right volume is selected."
        )
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
