"""Test phantoms rendered in ways the training phantoms never are: one fixed scanner or protocol shift each.

A model trained on phantoms from one renderer can score well on held-out phantoms of that renderer and fail
on a scan from another protocol. These shifts take a rendered TOF-MRA test phantom outside the ranges its
renderer draws from (``VesselSegLib/phantoms/renderers.py``: noise sigma 0.015-0.04 and arterial contrast
0.45-0.8 of a tissue level 0.25-0.35, bias field +-10-25 %, one slice thickness), each in one direction a
real scan can differ:

================  ===================================================================================
shift             what it stands for, and how far outside the training range
================  ===================================================================================
``noisy``         lower field strength, faster protocol: Rician noise of sigma 0.08 x (tissue / 0.3)
                  added (twice the renderer's largest).
``strong-bias``   receive coil without intensity correction: a smooth multiplicative ramp from 0.6
                  to 1.4 across the volume (Z and X; the renderer's field stays within about +-25 %).
``low-contrast``  weaker vessel contrast: on TOF-MRA (weaker inflow enhancement: slow flow, saturated
                  slabs) everything above the tissue level is compressed to half its height (arterial
                  contrast 0.22-0.4); on SWI (dark veins: lower field strength, shorter echo time)
                  everything below it.
``thick-slices``  slices twice as thick: pairs of slices averaged, interpolated back to the grid (the
                  partial-volume blur along Z of a 1.6 mm acquisition resampled to 0.8 mm).
================  ===================================================================================

Every shift is deterministic for a phantom seed and keeps the voxel grid, so the phantom's labels stay the
truth. The brain's median intensity stands for the tissue level (the renderer scales its normalised image
by an unknown factor; the median undoes it).
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import zoom

AS_RENDERED = "as-rendered"
SHIFTS = ("noisy", "strong-bias", "low-contrast", "thick-slices")
RENDERINGS = (AS_RENDERED, *SHIFTS)
#: The renderer's tissue level is drawn around this (normalised units).
_TISSUE_LEVEL = 0.3
_NOISE_SIGMA = 0.08
_BIAS_RANGE = (0.6, 1.4)
_CONTRAST_FACTOR = 0.5


def shift_rendering(
    image: np.ndarray, brain_mask: np.ndarray, rendering: str, seed: int, *, modality: str = "TOF-MRA"
) -> np.ndarray:
    """``image`` (Z, Y, X), as rendered, shifted by ``rendering`` (one of :data:`RENDERINGS`); a new array.

    ``modality`` ("TOF-MRA": bright vessels, or "SWI": dark veins) decides which side of the tissue level
    ``low-contrast`` compresses; the other shifts do not depend on it.

    Raises ``ValueError`` for an unknown rendering or modality, naming the known ones.
    """
    if rendering not in RENDERINGS:
        raise ValueError(f"Unknown rendering {rendering!r}; use one of {', '.join(RENDERINGS)}.")
    if modality not in ("TOF-MRA", "SWI"):
        raise ValueError(f"Unknown modality {modality!r} for a rendering shift; use TOF-MRA or SWI.")
    image = np.asarray(image, dtype=np.float32)
    if rendering == AS_RENDERED:
        return image.copy()
    tissue = float(np.median(image[brain_mask])) if brain_mask.any() else float(np.median(image))
    if rendering == "noisy":
        rng = np.random.default_rng([seed, 17])
        sigma = np.float32(_NOISE_SIGMA / _TISSUE_LEVEL * tissue)
        real = image + rng.standard_normal(image.shape, dtype=np.float32) * sigma
        imag = rng.standard_normal(image.shape, dtype=np.float32) * sigma
        return np.sqrt(real * real + imag * imag)
    if rendering == "strong-bias":
        depth, _, width = image.shape
        z = np.linspace(0.0, 1.0, depth, dtype=np.float32)[:, None, None]
        x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, None, :]
        low, high = _BIAS_RANGE
        return image * (low + (high - low) * (z + x) / 2.0)
    if rendering == "low-contrast":
        if modality == "SWI":  # veins are darker than tissue
            below = np.maximum(tissue - image, 0.0)
            return image + (1.0 - _CONTRAST_FACTOR) * below
        above = np.maximum(image - tissue, 0.0)
        return image - (1.0 - _CONTRAST_FACTOR) * above
    # thick-slices: pairs of slices averaged (an odd last slice kept), then linear interpolation back
    depth = image.shape[0]
    even = depth - depth % 2
    coarse = image[:even].reshape(even // 2, 2, *image.shape[1:]).mean(axis=1)
    if depth % 2:
        coarse = np.concatenate([coarse, image[-1:]], axis=0)
    return zoom(coarse, (depth / coarse.shape[0], 1.0, 1.0), order=1, grid_mode=True, mode="nearest").astype(
        np.float32
    )
