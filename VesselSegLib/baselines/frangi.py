"""Multiscale Hessian vesselness (Frangi et al. 1998), the non-learned baseline.

References
----------
Frangi, A. F., Niessen, W. J., Vincken, K. L., Viergever, M. A. "Multiscale vessel enhancement
filtering." MICCAI 1998, LNCS 1496, pp. 130-137. Equation numbers below refer to this paper.

Implementation choice (measured with a 128 x 448 x 448 float32 volume, 4 scales, 2 CPU cores):
SimpleITK (``SmoothingRecursiveGaussian`` + ``ObjectnessMeasure``, multithreaded C++) took 36 s with a
peak RSS of 1.9 GB; ``skimage.filters.frangi`` took 206 s with a peak RSS of 5.3 GB, and takes sigmas in
voxels only (no anisotropic spacing). SimpleITK is used: it is about 6x faster, needs less than half
the memory and works in physical units (mm) through the image spacing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence

import numpy as np
import SimpleITK as sitk  # noqa: N813 (SimpleITK's own convention)
from skimage.filters import threshold_triangle

logger = logging.getLogger(__name__)

#: Frangi's plate-vs-line (alpha) and blob-vs-line (beta) sensitivities, eq. (13); the paper uses 0.5.
FRANGI_ALPHA = 0.5
FRANGI_BETA = 0.5

ProgressCallback = Callable[[float, str], None]


def _check_volume(image: np.ndarray, spacing_zyx: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    array = np.asarray(image)
    if array.ndim != 3:
        raise ValueError(
            f"image must be a 3D (Z, Y, X) array, got {array.ndim} dimensions with shape {array.shape}; "
            "pass a single-channel volume (squeeze channel axes, stack 2D slices)."
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"image must be numeric, got dtype {array.dtype}.")
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(
            f"spacing_zyx must be three positive voxel sizes in mm (Z, Y, X), got {spacing_zyx!r}."
        )
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError("image contains NaN or infinite values; replace them (e.g. np.nan_to_num) first.")
    return array, spacing


def default_sigmas_mm(spacing_zyx: Sequence[float]) -> tuple[float, ...]:
    """Default scales: 1, 2, 3 and 4 times the smallest voxel size (mm).

    A vessel of radius r responds most at sigma ~ r / sqrt(2) (Frangi et al., section 2), so these
    scales cover radii of about 1.4 to 5.7 voxels of the finest axis.
    """
    finest = min(float(s) for s in spacing_zyx)
    return tuple(k * finest for k in (1.0, 2.0, 3.0, 4.0))


def _check_sigmas(sigmas_mm: Sequence[float] | None, spacing: tuple[float, ...]) -> tuple[float, ...]:
    if sigmas_mm is None:
        return default_sigmas_mm(spacing)
    sigmas = tuple(float(s) for s in np.atleast_1d(np.asarray(sigmas_mm, dtype=float)))
    if not sigmas or not all(math.isfinite(s) and s > 0 for s in sigmas):
        raise ValueError(f"sigmas_mm must be one or more positive scales in mm, got {sigmas_mm!r}.")
    return sigmas


def _smoothed(image: sitk.Image, sigma_mm: float) -> sitk.Image:
    """Gaussian-smoothed image times sigma^2, so that its Hessian is scale-normalised (section 2)."""
    # Recursive (Deriche) Gaussian: cost independent of sigma, sigma in physical units (spacing-aware).
    return sitk.SmoothingRecursiveGaussian(image, sigma_mm) * (sigma_mm * sigma_mm)


def _max_hessian_norm(smoothed: np.ndarray, spacing: tuple[float, ...]) -> float:
    """Largest Frobenius norm S of the Hessian over the interior voxels, eq. (12).

    Central differences in mm, like ITK's Hessian inside ``ObjectnessMeasure``. Written with NumPy
    because SimpleITK exposes neither the Hessian nor its norm; only the maximum is needed, for c.
    """
    if min(smoothed.shape) < 3:
        return 0.0

    def at(offset: dict[int, int]) -> np.ndarray:
        """Interior block of ``smoothed`` shifted by ``offset`` ({axis: -1 or +1})."""
        return smoothed[
            tuple(slice(1 + offset.get(k, 0), n - 1 + offset.get(k, 0)) for k, n in enumerate(smoothed.shape))
        ]

    centre = at({})
    sum_sq = np.zeros(centre.shape, dtype=np.float32)
    for a in range(3):
        d_aa = (at({a: 1}) - 2.0 * centre + at({a: -1})) / np.float32(spacing[a] ** 2)
        sum_sq += d_aa * d_aa
        for b in range(a + 1, 3):
            d_ab = at({a: 1, b: 1}) - at({a: 1, b: -1}) - at({a: -1, b: 1}) + at({a: -1, b: -1})
            d_ab /= np.float32(4.0 * spacing[a] * spacing[b])
            sum_sq += 2.0 * d_ab * d_ab  # off-diagonal entries appear twice in the symmetric Hessian
    return float(np.sqrt(sum_sq.max()))


def hessian_vesselness(
    image: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    sigmas_mm: Sequence[float] | None = None,
    bright_vessels: bool = True,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Frangi vesselness of a 3D image, the maximum over scales.

    At each scale sigma the image is smoothed with a Gaussian of sigma mm and its Hessian is
    normalised by sigma^2. With the eigenvalues ordered |l1| <= |l2| <= |l3|:

    - R_A = |l2| / |l3| (plate vs. line), eq. (11); R_B = |l1| / sqrt(|l2 l3|) (blob), eq. (10);
      S = sqrt(l1^2 + l2^2 + l3^2) (structure), eq. (12);
    - V = (1 - exp(-R_A^2 / 2 alpha^2)) exp(-R_B^2 / 2 beta^2) (1 - exp(-S^2 / 2 c^2)), and 0 unless
      l2 < 0 and l3 < 0 (bright vessels; both > 0 for dark vessels), eq. (13), with alpha = beta = 0.5
      and c = half the maximum Hessian norm over the image and all scales (section 3);
    - the output is max over sigma of V, eq. (14).

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Scalar volume, any numeric dtype; NaN/inf are rejected.
    spacing_zyx : sequence of 3 float
        Voxel size in mm along (Z, Y, X). Anisotropic spacing is respected (smoothing and derivatives in
        mm).
    sigmas_mm : sequence of float, optional
        Scales in mm; default :func:`default_sigmas_mm` (1-4 x the smallest voxel size).
    bright_vessels : bool
        True for bright vessels on a dark background (TOF-MRA, 2PM), False for dark ones (SWI).
    progress : callable(fraction, message), optional
        Called once per scale with the fraction done in [0, 1] and a short message.

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)
        Vesselness in [0, 1]. A constant image gives all zeros.
    """
    array, spacing = _check_volume(image, spacing_zyx)
    sigmas = _check_sigmas(sigmas_mm, spacing)
    sitk_image = sitk.GetImageFromArray(array)
    sitk_image.SetSpacing(spacing[::-1])  # SimpleITK orders axes (X, Y, Z)

    def report(fraction: float, message: str) -> None:
        if progress is not None:
            progress(float(fraction), message)

    # Pass 1: c of eq. (13) from the scale-normalised Hessians of all scales. Re-smoothing in pass 2
    # (under 1 s per scale for 25M voxels) is cheaper than holding every scale in memory.
    n = len(sigmas)
    max_norm = 0.0
    for i, sigma in enumerate(sigmas):
        report(0.15 * i / n, f"Hessian norm at sigma {sigma:.3g} mm")
        smoothed = _smoothed(sitk_image, sigma)  # keep a reference: the array view does not
        max_norm = max(max_norm, _max_hessian_norm(sitk.GetArrayViewFromImage(smoothed), spacing))
        del smoothed
    vesselness = np.zeros(array.shape, dtype=np.float32)
    if max_norm == 0.0:  # constant (or linear) image: no structure at any scale
        report(1.0, "No structure found; vesselness is zero")
        return vesselness
    c = 0.5 * max_norm
    logger.debug("Frangi c = %.4g (half the max Hessian norm), sigmas_mm = %s", c, sigmas)

    # Pass 2: vesselness per scale (eqs. (10)-(13)) and the maximum over scales (eq. (14)).
    for i, sigma in enumerate(sigmas):
        report(0.15 + 0.85 * i / n, f"Vesselness at sigma {sigma:.3g} mm ({i + 1}/{n})")
        objectness = sitk.ObjectnessMeasure(
            _smoothed(sitk_image, sigma),
            alpha=FRANGI_ALPHA,
            beta=FRANGI_BETA,
            gamma=c,
            scaleObjectnessMeasure=False,  # Frangi's V, not Antiga's variant scaled by |l3|
            objectDimension=1,  # lines (vessels) in 3D
            brightObject=bool(bright_vessels),
        )
        np.maximum(vesselness, sitk.GetArrayViewFromImage(objectness), out=vesselness)
        del objectness
    np.clip(vesselness, 0.0, 1.0, out=vesselness)
    report(1.0, "Vesselness done")
    return vesselness


def segment_frangi(
    image: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    threshold: float | None = None,
    sigmas_mm: Sequence[float] | None = None,
    bright_vessels: bool = True,
    mask: np.ndarray | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment vessels by thresholding the Frangi vesselness.

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Scalar volume.
    spacing_zyx : sequence of 3 float
        Voxel size in mm along (Z, Y, X).
    threshold : float in [0, 1], optional
        Vesselness above it is vessel. None: the triangle threshold (Zack et al. 1977,
        ``skimage.filters.threshold_triangle``) of the nonzero vesselness inside ``mask``. Most voxels
        are exactly 0 (eigenvalue sign test of eq. (13)) and the rest form a skewed histogram with a
        peak at low values (noise) and a long tail (vessels), the case the triangle method is made
        for. Dice on VesselNN two-photon volumes (sigmas 2-8 um; bbbDisruption, BBB_Leakage,
        tgMouse): triangle 0.28 / 0.43 / 0.34, Otsu 0.10 / 0.04 / 0.10, Otsu on log10 values
        0.48 / 0.39 / 0.53; on a noisy synthetic tube: triangle 0.96, Otsu 0.82, Otsu-log 0.13.
        The triangle threshold is the one that does not fail on either.
    sigmas_mm, bright_vessels, progress
        As in :func:`hessian_vesselness`.
    mask : ndarray of bool, shape (Z, Y, X), optional
        Region to segment (e.g. the brain); vesselness and segmentation are zero outside it.

    Returns
    -------
    (vesselness, segmentation) : (ndarray float32, ndarray bool), both shape (Z, Y, X)
    """
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(
            f"threshold must be in [0, 1] (vesselness range) or None for Otsu, got {threshold!r}."
        )
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != np.shape(image):
            raise ValueError(f"mask shape {mask.shape} differs from image shape {np.shape(image)}.")
        mask = mask.astype(bool, copy=False)
    vesselness = hessian_vesselness(
        image, spacing_zyx, sigmas_mm=sigmas_mm, bright_vessels=bright_vessels, progress=progress
    )
    if mask is not None:
        vesselness[~mask] = 0.0
    if threshold is None:
        values = vesselness[vesselness > 0]
        if values.size == 0 or values.min() == values.max():
            # Nothing (or a single level) to split: no voxel stands out.
            threshold = float(values.max()) if values.size else math.inf
        else:
            threshold = float(threshold_triangle(values))
        logger.info("Frangi threshold (triangle method on the nonzero vesselness): %.4g", threshold)
    segmentation = vesselness > threshold
    return vesselness, segmentation
