"""Modality presets: how each kind of image is normalised before a model sees it.

Every model in VesselSeg sees "bright vessels on a dark background, intensities roughly in [0, 1]".
A preset says how to get there from a modality's raw intensities:

- TOF-MRA: vessels are bright (inflow enhancement); robust percentile scaling.
- SWI: veins are dark (deoxyhaemoglobin); intensities are inverted inside the brain mask, as VC-Net does for
  its micro-vessel (SWI) model, so that vessels become bright. Outside the mask is set to 0.
- 2PM: two-photon angiograms, fluorescent lumen is bright; robust percentile scaling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ModalityPreset:
    """Normalisation and defaults for one imaging modality.

    Attributes
    ----------
    name : str
        Key used in the UI, the CLI (``--modality``) and models.json.
    vessels_bright : bool
        False when vessels are darker than tissue (SWI); the image is then inverted inside the brain mask.
    primary_vessel_class : str
        Class given to a single-output method's (e.g. Frangi's) vessels for this modality.
    percentiles : tuple[float, float]
        Intensities at these percentiles (inside the mask) map to 0 and 1.
    default_patch_size_zyx : tuple[int, int, int]
        Sliding-window patch for this modality's typical geometry (thin slabs for MRA).
    default_min_component_mm3 : float
        Connected components smaller than this are removed (noise specks); about 10 voxels of the
        modality's typical grid (TOF 0.5 x 0.5 x 0.8 mm, SWI 0.5 x 0.5 x 1 mm, 2PM 1 x 1 x 2 um).
    frangi_sigmas_voxels : tuple of float
        Scales of the Hessian vesselness baseline, in multiples of the finest voxel size (2PM vessels span
        more voxels: 2-8 um scales measured best on VesselNN).
    """

    name: str
    description: str
    vessels_bright: bool
    primary_vessel_class: str
    percentiles: tuple[float, float] = (0.5, 99.5)
    default_patch_size_zyx: tuple[int, int, int] = (64, 128, 128)
    default_min_component_mm3: float = 2.0
    frangi_sigmas_voxels: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)


MODALITY_PRESETS: dict[str, ModalityPreset] = {
    preset.name: preset
    for preset in (
        ModalityPreset("TOF-MRA", "Time-of-flight MR angiography (bright arteries)", True, "artery"),
        ModalityPreset("SWI", "Susceptibility-weighted imaging (dark veins)", False, "vein"),
        ModalityPreset(
            "2PM",
            "Two-photon microscopy angiogram (bright lumen)",
            True,
            "micro",
            default_min_component_mm3=2e-8,
            frangi_sigmas_voxels=(2.0, 4.0, 6.0, 8.0),
        ),
    )
}


def get_preset(name: str) -> ModalityPreset:
    """The preset called ``name``; ValueError listing the known presets otherwise."""
    try:
        return MODALITY_PRESETS[name]
    except KeyError:
        known = ", ".join(MODALITY_PRESETS)
        raise ValueError(f"Unknown modality preset {name!r}; choose one of: {known}.") from None


def normalize_intensity(
    image: np.ndarray, preset: ModalityPreset | str, brain_mask: np.ndarray | None = None
) -> np.ndarray:
    """Map ``image`` to bright vessels in about [0, 1] following ``preset``.

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Raw intensities, any real dtype. Not modified.
    preset : ModalityPreset or str
    brain_mask : ndarray of bool, shape (Z, Y, X), optional
        Voxels to normalise over. SWI inverts inside it and zeroes outside it (VC-Net, Sec. 3.1); without a
        mask, every voxel counts as brain.

    Returns
    -------
    ndarray of float32, shape (Z, Y, X)
        Scaled so the lower/upper percentiles inside the mask map to 0 and 1 (values outside are clipped to
        [-0.5, 1.5] to keep outliers from dominating).
    """
    if isinstance(preset, str):
        preset = get_preset(preset)
    data = np.asarray(image, dtype=np.float32)
    inside = np.ones(data.shape, dtype=bool) if brain_mask is None else np.asarray(brain_mask, dtype=bool)
    if not inside.any():
        raise ValueError("The brain mask is empty; give a mask that covers the brain, or none.")
    low, high = np.percentile(data[inside], preset.percentiles)
    if high <= low:  # e.g. a mostly-constant image: fall back to the full range
        low, high = float(data[inside].min()), float(data[inside].max())
    # float32 scalars keep the result float32 (numpy would promote to float64 with Python floats here).
    scale = np.float32(1.0 / max(high - low, np.finfo(np.float32).eps))
    normalized = (data - np.float32(low)) * scale
    if not preset.vessels_bright:
        normalized = np.float32(1.0) - normalized
    np.clip(normalized, -0.5, 1.5, out=normalized)
    if brain_mask is not None:
        normalized[~inside] = 0.0
    return normalized
