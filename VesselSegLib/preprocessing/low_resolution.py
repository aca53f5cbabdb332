"""Simulated low-resolution MR volumes for super-resolution training (ROSE, Wang et al. 2024, section 4.2).

ROSE [1]_ learns to segment vessels on a grid twice as fine as its input. Its training pairs are made from
high-resolution (HR) volumes: the low-resolution (LR) input is the HR volume degraded "in space and
frequency" with k-space factors ``c_x = c_y = 3``, ``c_z = 1`` ("k-space downsampling happens in the MR
phase-encoding plane") and a spatial factor ``r = 2`` on all three axes (LR patch 64x64x8 <-> HR patch
128x128x16). The paper's Supplementary Material, which defines ``c``, is not available; this module follows
the project's implementation notes (``docs/methods/ROSE.md``, section 1):

1. FFT of the whole HR volume (never of patches, so that no patch border enters the spectrum), along the
   axes with ``c > 1`` only;
2. along each of these axes keep a central band of frequencies around DC and zero the rest (a hard
   truncation, no window): about ``N / c`` of the ``N`` frequencies (``kept_fraction="1/c"``, the default,
   a ``c`` times coarser resolution) or about ``N (c - 1) / c`` (``kept_fraction="(c-1)/c"``, the other
   reading of ``c``);
3. inverse FFT, magnitude (as an MR magnitude image; truncation ringing below zero folds up);
4. crop each axis to a multiple of ``r`` (at the far end) and average ``r x r x r`` blocks.

The kept band is symmetric, frequencies ``|k| <= h``, so that it has Hermitian symmetry and a real volume
stays real before the magnitude; its ``2 h + 1`` frequencies are the odd count nearest the target
(``N / c`` or ``N (c - 1) / c``; for the paper's 448, 128, 1024 and 832 voxels with ``c = 3`` that is the
same as rounding). Keeping every ``c``-th k-space line instead would alias (that is acceleration, not lost
resolution) and is not offered.

Grids: LR voxel ``k`` covers HR voxels ``r k .. r k + r - 1`` along every axis, so the LR voxel's centre
is the HR continuous index ``r k + (r - 1) / 2``, the LR spacing is ``r`` times the HR spacing, and an LR
patch starting at ``(z, y, x)`` pairs with the HR patch starting at ``(r z, r y, r x)``
(:func:`high_resolution_slices`). Going back, fine voxel ``i'`` sits at coarse continuous index
``(i' + 0.5) / r - 0.5`` (``VesselSegLib.methods.base.refined_index_to_world``), the exact inverse.

References
----------
.. [1] Y. Wang, H. Zhu, H. Li, G. Yan, S. Buch, Y. Wang, E. M. Haacke, J. Hua, Z. Zhong. "ROSE: Multi-level
   super-resolution-oriented semantic embedding for 3D microvasculature segmentation from low-resolution
   images." Neurocomputing, 2024. doi:10.1016/j.neucom.2024.128038
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

KeptFraction = Literal["1/c", "(c-1)/c"]
KEPT_FRACTIONS: tuple[str, ...] = ("1/c", "(c-1)/c")

#: The paper's factors (section 4.2), in the project's (Z, Y, X) order: in-plane k-space truncation only.
PAPER_TRUNCATION_ZYX = (1.0, 3.0, 3.0)
PAPER_DOWNSAMPLE = 2


def _factors3(value: float | Sequence[float], name: str, *, integer: bool) -> tuple:
    values = (value,) * 3 if np.isscalar(value) else tuple(value)
    if len(values) != 3:
        raise ValueError(f"{name} must be one number or three (Z, Y, X), got {value!r}.")
    if integer:
        if any(float(v) != int(v) or int(v) < 1 for v in values):
            raise ValueError(f"{name} must be whole numbers >= 1 (Z, Y, X), got {value!r}.")
        return tuple(int(v) for v in values)
    if any(not np.isfinite(float(v)) or float(v) < 1 for v in values):
        raise ValueError(f"{name} must be finite numbers >= 1 (1 leaves an axis alone), got {value!r}.")
    return tuple(float(v) for v in values)


def _check_volume(volume: np.ndarray) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"Expected a (Z, Y, X) volume, got an array of shape {volume.shape}.")
    if not (np.issubdtype(volume.dtype, np.floating) or np.issubdtype(volume.dtype, np.integer)):
        raise ValueError(f"Expected a real-valued volume, got dtype {volume.dtype}.")
    if not np.all(np.isfinite(volume)):
        raise ValueError("The volume holds NaN or infinite values; fill or mask them before degrading it.")
    return volume


def kept_half_width(size: int, factor: float, kept_fraction: KeptFraction = "1/c") -> int:
    """Half-width ``h`` of the band of frequencies ``|k| <= h`` kept along an axis of ``size`` voxels.

    Parameters
    ----------
    size : int
        Voxels ``N`` along the axis.
    factor : float
        The k-space factor ``c`` (>= 1); ``c = 1`` keeps everything.
    kept_fraction : {"1/c", "(c-1)/c"}
        Reading of ``c``: keep about ``N / c`` frequencies (default) or about ``N (c - 1) / c``.

    Returns
    -------
    int
        ``h`` such that ``2 h + 1`` is the odd count nearest the target (at least 1, DC alone), or
        ``size // 2`` (every frequency) for ``c = 1`` or a target of ``N`` or more.
    """
    if kept_fraction not in KEPT_FRACTIONS:
        raise ValueError(f"kept_fraction must be one of {KEPT_FRACTIONS}, got {kept_fraction!r}.")
    size, factor = int(size), float(factor)
    if factor < 1:
        raise ValueError(f"The k-space factor c must be >= 1, got {factor}.")
    if factor == 1:
        return size // 2
    target = size / factor if kept_fraction == "1/c" else size * (factor - 1) / factor
    if target >= size:
        return size // 2
    # 2h + 1 nearest the target; floor(x + 0.5) rounds halves up, the same on every platform.
    return max(0, int(np.floor((target - 1) / 2 + 0.5)))


def _band_mask(size: int, half_width: int, *, half_spectrum: bool) -> np.ndarray:
    """True at the kept frequencies of an FFT axis (``rfft`` layout when ``half_spectrum``)."""
    frequencies = np.fft.rfftfreq(size) if half_spectrum else np.fft.fftfreq(size)
    return np.abs(np.rint(frequencies * size)) <= half_width


def truncate_k_space(
    volume: np.ndarray,
    *,
    truncation_zyx: float | Sequence[float] = PAPER_TRUNCATION_ZYX,
    kept_fraction: KeptFraction = "1/c",
    magnitude: bool = True,
) -> np.ndarray:
    """Keep a central band of k-space along each axis with ``c > 1`` (steps 1-3 of the module text).

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
        The whole HR volume, real-valued (e.g. normalised to [0, 1]).
    truncation_zyx : float or 3 floats
        The k-space factors ``(c_z, c_y, c_x)`` >= 1; the paper's ``(1, 3, 3)`` truncates in the
        phase-encoding plane (Y, X) only. Axes with ``c = 1`` are not transformed at all.
    kept_fraction : {"1/c", "(c-1)/c"}
        How ``c`` is read (:func:`kept_half_width`).
    magnitude : bool
        Return the magnitude of the inverse FFT (default, like an MR magnitude image), or its real part
        (signed; what :func:`numpy.fft.fftn` of the result shows as zero outside the band).

    Returns
    -------
    ndarray, shape (Z, Y, X)
        Same shape; float32 for float32 input, float64 otherwise. The DC term is kept, so the mean is
        unchanged (exactly for the real part; for the magnitude wherever the real part is not negative).
    """
    volume = _check_volume(volume)
    factors = _factors3(truncation_zyx, "truncation_zyx", integer=False)
    dtype = np.float32 if volume.dtype == np.float32 else np.float64
    axes = tuple(axis for axis in range(3) if factors[axis] > 1)
    half_widths = {axis: kept_half_width(volume.shape[axis], factors[axis], kept_fraction) for axis in axes}
    axes = tuple(axis for axis in axes if 2 * half_widths[axis] + 1 < volume.shape[axis])
    if not axes:
        return volume.astype(dtype, copy=True)
    # Real FFT: the band is symmetric, so the half spectrum along the last axis holds everything and the
    # inverse is real by construction. float64 keeps the zeroed band at ~1e-16, not ~1e-7.
    import scipy.fft  # here, not at import: the Slicer module lists methods before SciPy is installed

    spectrum = scipy.fft.rfftn(volume.astype(np.float64), axes=axes)
    for position, axis in enumerate(axes):
        mask = _band_mask(volume.shape[axis], half_widths[axis], half_spectrum=position == len(axes) - 1)
        shape = [1] * 3
        shape[axis] = mask.size
        spectrum *= mask.reshape(shape)
    truncated = scipy.fft.irfftn(spectrum, s=[volume.shape[axis] for axis in axes], axes=axes)
    if magnitude:
        truncated = np.abs(truncated)
    return truncated.astype(dtype, copy=False)


def block_mean(volume: np.ndarray, factor_zyx: int | Sequence[int] = PAPER_DOWNSAMPLE) -> np.ndarray:
    """Average ``r_z x r_y x r_x`` blocks (step 4): shape ``(Z, Y, X) -> floor((Z, Y, X) / r)``.

    Voxels beyond the last whole block along an axis (the last ``N mod r``) are dropped, so LR voxel ``k``
    is the mean of HR voxels ``r k .. r k + r - 1`` and the two grids share their first corner. Also gives
    LR labels from HR ones (block mean of the mask, then a threshold).

    Raises
    ------
    ValueError
        A factor below 1, or an axis shorter than its factor (no whole block).
    """
    volume = _check_volume(volume)
    factors = _factors3(factor_zyx, "downsample", integer=True)
    if any(n < r for n, r in zip(volume.shape, factors, strict=True)):
        raise ValueError(
            f"A volume of shape {volume.shape} (Z, Y, X) has no whole {factors} block along some axis; "
            "every axis needs at least as many voxels as its downsampling factor."
        )
    shape = low_resolution_shape(volume.shape, factors)
    dtype = np.float32 if volume.dtype == np.float32 else np.float64
    cropped = volume[tuple(slice(0, n * r) for n, r in zip(shape, factors, strict=True))]
    blocks = cropped.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    # Accumulate in float64: a float32 sum over 8 values is fine, but this keeps means exact for tests.
    return blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(dtype, copy=False)


def simulate_low_resolution(
    volume: np.ndarray,
    *,
    truncation_zyx: float | Sequence[float] = PAPER_TRUNCATION_ZYX,
    downsample: int | Sequence[int] = PAPER_DOWNSAMPLE,
    kept_fraction: KeptFraction = "1/c",
    magnitude: bool = True,
) -> np.ndarray:
    """The LR volume ROSE is trained on, from a whole HR volume (module text, steps 1-4).

    Parameters
    ----------
    volume : ndarray, shape (Z, Y, X)
        Whole HR volume, already normalised (the notes degrade after normalising, so that the HR target
        and the LR input share one intensity scale). Unitless intensities.
    truncation_zyx : float or 3 floats
        k-space factors ``(c_z, c_y, c_x)``, default the paper's ``(1, 3, 3)``.
    downsample : int or 3 ints
        Spatial factor ``r`` per axis, default the paper's 2 on all axes; 1 skips the block mean.
    kept_fraction : {"1/c", "(c-1)/c"}
        How ``c`` is read: keep about ``N / c`` central frequencies (default) or ``N (c - 1) / c``.
    magnitude : bool
        Magnitude (default) or real part of the inverse FFT, see :func:`truncate_k_space`.

    Returns
    -------
    ndarray, shape (floor(Z / r_z), floor(Y / r_y), floor(X / r_x))
        float32 for float32 input, float64 otherwise. ``c = 1`` and ``r = 1`` return a copy of the input.
        Spacing is ``r`` times the HR spacing; see :func:`low_resolution_index_to_world`.

    Examples
    --------
    >>> hr = np.random.default_rng(0).random((16, 64, 64)).astype(np.float32)
    >>> simulate_low_resolution(hr).shape
    (8, 32, 32)
    """
    truncated = truncate_k_space(
        volume, truncation_zyx=truncation_zyx, kept_fraction=kept_fraction, magnitude=magnitude
    )
    return block_mean(truncated, downsample)


def low_resolution_shape(shape_zyx: Sequence[int], downsample: int | Sequence[int] = PAPER_DOWNSAMPLE):
    """``floor(N / r)`` per axis: the LR shape of an HR volume (or patch) of ``shape_zyx`` voxels."""
    factors = _factors3(downsample, "downsample", integer=True)
    return tuple(int(n) // r for n, r in zip(shape_zyx, factors, strict=True))


def high_resolution_slices(
    lr_start_zyx: Sequence[int],
    lr_size_zyx: Sequence[int],
    downsample: int | Sequence[int] = PAPER_DOWNSAMPLE,
) -> tuple[slice, slice, slice]:
    """The HR region an LR patch covers: starts ``r * start``, sizes ``r * size`` (voxels, Z, Y, X).

    ``hr[high_resolution_slices(start, size)]`` is the HR image / label patch paired with
    ``lr[tuple(slice(s, s + n) for s, n in zip(start, size))]``.
    """
    factors = _factors3(downsample, "downsample", integer=True)
    if len(lr_start_zyx) != 3 or len(lr_size_zyx) != 3:
        raise ValueError("lr_start_zyx and lr_size_zyx must each have three entries (Z, Y, X).")
    if any(int(s) < 0 for s in lr_start_zyx) or any(int(n) < 1 for n in lr_size_zyx):
        raise ValueError(f"Need starts >= 0 and sizes >= 1, got {tuple(lr_start_zyx)}, {tuple(lr_size_zyx)}.")
    return tuple(
        slice(r * int(s), r * (int(s) + int(n)))
        for s, n, r in zip(lr_start_zyx, lr_size_zyx, factors, strict=True)
    )


def low_resolution_index_to_world(
    index_to_world: np.ndarray, downsample: int | Sequence[int] = PAPER_DOWNSAMPLE
) -> np.ndarray:
    """The 4x4 index-to-world matrix of the LR grid made by :func:`simulate_low_resolution`.

    LR voxel ``k`` is the centre of HR voxels ``r k .. r k + r - 1``, HR continuous index
    ``r k + (r - 1) / 2``: spacing ``r`` times the HR spacing, origin ``(r - 1) / 2`` HR voxels further
    along each axis (through the direction matrix). The inverse of
    ``VesselSegLib.methods.base.refined_index_to_world`` with the same factors.

    Parameters
    ----------
    index_to_world : ndarray, shape (4, 4)
        HR grid's matrix; columns 0-2 map the I, J, K (X, Y, Z) indices (LPS or RAS), column 3 is voxel
        (0, 0, 0)'s centre (mm).
    downsample : int or 3 ints
        ``r`` along (Z, Y, X).
    """
    factors = _factors3(downsample, "downsample", integer=True)
    matrix = np.asarray(index_to_world, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError(f"Expected a 4x4 index-to-world matrix, got shape {matrix.shape}.")
    scale_ijk = np.asarray(tuple(reversed(factors)), dtype=float)
    coarse_to_fine = np.eye(4)
    coarse_to_fine[:3, :3] = np.diag(scale_ijk)
    coarse_to_fine[:3, 3] = (scale_ijk - 1) / 2
    return matrix @ coarse_to_fine


__all__ = [
    "KEPT_FRACTIONS",
    "PAPER_DOWNSAMPLE",
    "PAPER_TRUNCATION_ZYX",
    "block_mean",
    "high_resolution_slices",
    "kept_half_width",
    "low_resolution_index_to_world",
    "low_resolution_shape",
    "simulate_low_resolution",
    "truncate_k_space",
]
