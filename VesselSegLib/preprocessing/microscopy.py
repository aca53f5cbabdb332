"""Bring a two-photon stack from another microscope onto the training data's footing (2PM V-Net, Sec. 4.2).

The 2PM V-Net generalises to a second microscope after two preprocessing steps on the new stack [1]_:

1. Linear intensity scaling: multiply by a non-negative factor so that the stack's intensity histogram
   has the scale of the training microscope's (different detector bit depths: 12 vs 16 bits). The paper
   chose the factor by eye (16, i.e. 2^4); :func:`estimate_intensity_scale` estimates it from percentiles.
2. Noise removal: subtract from each 2D slice (each Z) its median, which takes away the depth-dependent
   background that grows with laser power, then apply a 3D median filter of 3 voxels.

The paper notes that step 2 weakens the signal in the shadow under large pial vessels; a locally adaptive
alternative is future work there and here.

Arrays are ``(Z, Y, X)``; Z is the optical axis (depth), so "slice" means an X-Y image at one depth.

References
----------
.. [1] Tahir W, et al. Anatomical modeling of brain vasculature in two-photon microscopy by generalizable
       deep learning. BME Frontiers, 2021. Sec. 4.2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from VesselSegLib.preprocessing.validation import validate_image

#: Percentiles compared by :func:`estimate_intensity_scale`: the background level and the bright vessels.
DEFAULT_SCALE_PERCENTILES = (50.0, 99.5)


def _volume(image: np.ndarray, name: str = "microscopy stack") -> np.ndarray:
    """``image`` as a float32 (Z, Y, X) array (no copy when it already is one: callers never write to it)."""
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(
            f"The {name} must be a 3D (Z, Y, X) volume, but it has {array.ndim} dimensions (shape {array.shape})."
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise ValueError(f"The {name} has data type {array.dtype}; give a real-valued scalar volume.")
    return array.astype(np.float32, copy=False)


def _check_filter_size(size: Any, what: str) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1 or size % 2 == 0:
        raise ValueError(f"{what} must be an odd number of voxels >= 1, got {size!r}.")


def estimate_intensity_scale(
    image: np.ndarray,
    reference_percentiles: Sequence[float],
    percentiles: Sequence[float] = DEFAULT_SCALE_PERCENTILES,
) -> float:
    """The factor ``s`` that puts ``s * image`` on the intensity scale of a reference (training) stack.

    The paper multiplies a stack from a new microscope by a factor chosen by hand so that its histogram
    matches the training data's in scale (Sec. 4.2). Here the factor is the least-squares fit through the
    origin of the stack's intensities at ``percentiles``, ``q``, to the reference's, ``r``:
    ``s = sum(q r) / sum(q^2)``. A line through the origin, because the paper's step is a pure
    multiplication (histograms of the same shape, different scale); the higher percentile weighs most.

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        The stack to scale, raw intensities. Not modified.
    reference_percentiles : sequence of float
        The reference stack's intensities at ``percentiles``, e.g. ``numpy.percentile(training_stack,
        percentiles)``.
    percentiles : sequence of float
        Percentiles in [0, 100], one per reference value. The default (50, 99.5) compares the background
        level with the brightest vessels.

    Returns
    -------
    float
        ``s > 0``. 2.5 for a stack whose reference is the same data multiplied by 2.5.

    Raises
    ------
    ValueError
        Mismatched lengths, percentiles outside [0, 100], non-finite or negative reference values, a stack
        whose percentiles are all 0, or a fit that is not positive (no non-negative factor matches).
    """
    data = _volume(image)
    levels = np.asarray(percentiles, dtype=np.float64)
    reference = np.asarray(reference_percentiles, dtype=np.float64)
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(f"percentiles must be a non-empty sequence of numbers, got {percentiles!r}.")
    if reference.shape != levels.shape:
        raise ValueError(
            f"reference_percentiles has {reference.size} values but percentiles names {levels.size} "
            f"({list(levels)}); give the reference's intensity at each percentile."
        )
    if not np.all((levels >= 0) & (levels <= 100)):
        raise ValueError(f"percentiles must lie in [0, 100], got {list(levels)}.")
    if not np.all(np.isfinite(reference)) or np.any(reference < 0):
        raise ValueError(
            f"reference_percentiles must be finite, non-negative intensities, got {list(reference)}."
        )
    measured = np.percentile(data.astype(np.float64), levels)  # float64: no rounding in the sums below
    if not np.all(np.isfinite(measured)):
        raise ValueError("The microscopy stack has NaN or infinite voxels; replace them first.")
    power = float(np.sum(measured * measured))
    if power == 0.0:
        raise ValueError(
            f"The stack's intensities at percentiles {list(levels)} are all 0; no factor scales them. Use "
            "higher percentiles (e.g. (90, 99.5)) for a mostly-zero stack."
        )
    factor = float(np.sum(measured * reference)) / power
    if not factor > 0.0:
        raise ValueError(
            f"The fitted intensity scale is {factor:g} (stack percentiles {list(measured)}, reference "
            f"{list(reference)}); only a positive factor makes sense. Check that both are raw intensities."
        )
    return factor


def scale_intensity(image: np.ndarray, factor: float) -> np.ndarray:
    """``factor * image`` as float32 (step 1 of Sec. 4.2; the paper's factor for its 12-bit stack: 16).

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Not modified.
    factor : float
        Non-negative, finite.

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)
    """
    if isinstance(factor, bool) or not np.isscalar(factor) or not np.isfinite(factor) or factor < 0:
        raise ValueError(f"The intensity scale factor must be a finite number >= 0, got {factor!r}.")
    return _volume(image) * np.float32(factor)  # a new array; float32 scalar keeps float32


def subtract_slice_median(image: np.ndarray, *, clip_negative: bool = True) -> np.ndarray:
    """Subtract from each Z slice its own median (step 2 of Sec. 4.2): removes depth-dependent background.

    Two-photon background grows with depth (more laser power, more out-of-focus fluorescence); the median of
    a slice is mostly background because vessels fill a few percent of it, so subtracting it levels the
    background across depths.

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Not modified.
    clip_negative : bool
        Set values below 0 to 0 (default). Fluorescence is non-negative and the network was trained on
        non-negative stacks; below-median voxels are background noise. Then at least half of each slice is
        0 and its median is 0 (for an even voxel count: at most half the gap between the two middle values).
        With False, each slice's median is exactly 0 and the background noise stays centred on it.

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)
    """
    data = _volume(image)
    return level_slices(data, slice_medians(data), clip_negative=clip_negative)


def slice_medians(image: np.ndarray) -> np.ndarray:
    """The median of each Z slice, float32, shape (Z,): the background level :func:`level_slices` removes."""
    return np.median(_volume(image), axis=(1, 2)).astype(np.float32, copy=False)


def level_slices(image: np.ndarray, medians: np.ndarray, *, clip_negative: bool = True) -> np.ndarray:
    """``image`` minus ``medians[z]`` in each Z slice, as float32; negatives set to 0 with ``clip_negative``.

    The arithmetic of :func:`subtract_slice_median` with the medians given, so that a region of a stack too
    large for memory (``VesselSegLib.inference.streaming.SliceMedianSubtracted``) is levelled exactly as the
    whole stack would be, with medians computed beforehand a plane at a time.

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X), any real dtype
        Not modified.
    medians : ndarray, shape (Z,)
        One level per Z slice of ``image``.

    Returns
    -------
    ndarray of float32, shape (Z, Y, X), a new array
    """
    data = np.asarray(image)
    medians = np.asarray(medians, dtype=np.float32)
    if data.ndim != 3 or medians.shape != data.shape[:1]:
        raise ValueError(
            f"Give a (Z, Y, X) volume and one median per Z slice; got shapes {data.shape} and {medians.shape}."
        )
    # One new float32 array whatever the input dtype (the cast of each voxel to float32 comes first).
    leveled = np.subtract(data, medians[:, None, None], dtype=np.float32)
    if clip_negative:
        np.maximum(leveled, 0.0, out=leveled)
    return leveled


def median_filter_3d(image: np.ndarray, size: int = 3) -> np.ndarray:
    """3D median filter over a cube of ``size`` voxels (step 2 of Sec. 4.2, size 3).

    Removes isolated bright or dark voxels (shot noise) while keeping edges. Borders are mirrored
    (``scipy.ndimage.median_filter``'s default "reflect", MATLAB ``medfilt3``'s "symmetric").

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Not modified.
    size : int
        Edge of the cube in voxels (not um: the paper filters 3 voxels of 1.58 x 1.58 x 2 um); odd, >= 1.
        1 returns a float32 copy.

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)
    """
    _check_filter_size(size, "The median filter size")
    data = _volume(image)
    if size == 1:
        return data.copy()
    # Imported here, not with the module: the Slicer module imports VesselSegLib.preprocessing before the
    # optional packages are installed.
    from scipy import ndimage

    return ndimage.median_filter(data, size=int(size), mode="reflect")


def preprocess_microscopy_stack(
    image: np.ndarray,
    *,
    reference_percentiles: Sequence[float] | None = None,
    percentiles: Sequence[float] = DEFAULT_SCALE_PERCENTILES,
    scale_factor: float | None = None,
    subtract_median: bool = True,
    clip_negative: bool = True,
    median_size: int | None = 3,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The 2PM V-Net's preprocessing of a stack from another microscope (Sec. 4.2), in the paper's order.

    Scale the intensities (estimated from ``reference_percentiles``, or a given ``scale_factor``, or not at
    all), subtract each slice's median, then 3D median-filter.

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Raw two-photon stack, any real dtype. Not modified.
    reference_percentiles : sequence of float, optional
        The training stack's intensities at ``percentiles``; the factor is then estimated with
        :func:`estimate_intensity_scale`.
    percentiles : sequence of float
        Percentiles that ``reference_percentiles`` belong to.
    scale_factor : float, optional
        A known factor instead (the paper's 16 for its 12-bit stack against 16-bit training data). Give at
        most one of ``reference_percentiles`` and ``scale_factor``; with neither, the scale stays 1.
    subtract_median : bool
        Subtract each Z slice's median (:func:`subtract_slice_median`).
    clip_negative : bool
        With ``subtract_median``: set the then negative background to 0.
    median_size : int or None
        Median filter cube edge in voxels (odd); None skips the filter.

    Returns
    -------
    processed : ndarray of float32, shape (Z, Y, X)
    record : dict
        What was done, JSON-ready, for a run record or a model card: ``steps`` (names in order),
        ``intensity_scale`` (the factor used), ``intensity_scale_source`` ("estimated", "given" or
        "none"), with an estimate also ``percentiles``, ``stack_percentiles`` and ``reference_percentiles``;
        ``slice_medians`` (one per Z, after scaling) when subtracted, ``clip_negative``, ``median_size``.

    Raises
    ------
    ValueError
        A stack that is not a finite, non-constant 3D volume, both a reference and a factor, or bad
        arguments for a step (the message says which).
    """
    if reference_percentiles is not None and scale_factor is not None:
        raise ValueError(
            "Give either reference_percentiles (to estimate the intensity scale) or scale_factor, not both."
        )
    data = validate_image(image, name="microscopy stack")  # a float32 copy; the input is never touched
    if median_size is not None:  # checked before the slow steps, so a typo fails at once
        _check_filter_size(median_size, "median_size")
    record: dict[str, Any] = {"steps": []}

    if reference_percentiles is not None:
        factor = estimate_intensity_scale(data, reference_percentiles, percentiles)
        record["intensity_scale_source"] = "estimated"
        record["percentiles"] = [float(p) for p in percentiles]
        record["stack_percentiles"] = [float(v) for v in np.percentile(data, percentiles)]
        record["reference_percentiles"] = [float(v) for v in reference_percentiles]
    elif scale_factor is not None:
        factor = float(scale_factor)
        record["intensity_scale_source"] = "given"
    else:
        factor = 1.0
        record["intensity_scale_source"] = "none"
    record["intensity_scale"] = factor
    if factor != 1.0:
        data = scale_intensity(data, factor)
        record["steps"].append("scale_intensity")

    if subtract_median:
        medians = slice_medians(data)
        record["slice_medians"] = [float(m) for m in medians]
        data = level_slices(data, medians, clip_negative=clip_negative)
        record["steps"].append("subtract_slice_median")
        record["clip_negative"] = bool(clip_negative)

    record["median_size"] = None if median_size is None else int(median_size)
    if median_size is not None and median_size > 1:
        data = median_filter_3d(data, median_size)
        record["steps"].append("median_filter_3d")
    return data.astype(np.float32, copy=False), record


__all__ = [
    "DEFAULT_SCALE_PERCENTILES",
    "estimate_intensity_scale",
    "level_slices",
    "median_filter_3d",
    "preprocess_microscopy_stack",
    "scale_intensity",
    "slice_medians",
    "subtract_slice_median",
]
