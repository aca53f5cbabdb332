"""Render a ``VesselTree`` as a TOF-MRA, SWI or two-photon microscopy (2PM) image.

Each renderer draws every random number from one ``np.random.default_rng(seed)``: first it samples the
contrast and noise levels (within ranges seen in real scans, so training sees variety), then it applies
them. Images are float32 (Z, Y, X). Partial volume comes from ``tree.occupancy``: a voxel's signal is
``tissue + contrast_of_class * occupancy``.

Artefacts modelled:

- TOF-MRA: bright arteries (inflow enhancement), veins at 40-60 % of the arterial contrast (partly saturated
  by the venous saturation band), faint micro-vessels, brain-shaped ellipsoid with darker surroundings and a
  bright scalp-fat shell, smooth tissue texture, multiplicative bias field, Rician noise.
- SWI: strongly dark veins (deoxyhaemoglobin), arteries barely visible, faint dark venules, brain mask,
  bias field, Rician noise.
- 2PM: bright lumen (fluorescent dye), depth attenuation ``exp(-z / L)``, smooth background fluorescence,
  shadows below large vessels along +Z (scaled by the vessels' diameter in voxels, or for ``"2pm-physical"``
  trees by the length of blood in mm, spread by the excitation cone), Poisson shot noise, camera-like uint16
  range.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter, zoom

from VesselSegLib.phantoms.vascular_tree import VesselTree
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

_ARTERY = VESSEL_CLASS_BY_NAME["artery"].label_value
_VEIN = VESSEL_CLASS_BY_NAME["vein"].label_value
_MICRO = VESSEL_CLASS_BY_NAME["micro"].label_value
#: 2PM shadows of ``"2pm-physical"`` trees: ``shadow_strength`` of the light is lost per this length of blood
#: (about one large-vessel diameter) ...
_SHADOW_BLOOD_PATH_MM = 0.02
#: ... and the shadow is spread in-plane by a Gaussian of this sigma (the width of the excitation cone).
_SHADOW_CONE_SIGMA_MM = 0.008


def _smooth_field(
    shape: tuple[int, ...], spacing: np.ndarray, correlation_mm: float, rng: np.random.Generator
) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with the given correlation length.

    Drawn on a coarse grid and upsampled linearly: smoothing a full-size white-noise volume would cost
    seconds on a 128 x 448 x 448 volume, the coarse grid costs milliseconds.
    """
    shape_arr = np.asarray(shape)
    coarse = np.maximum(np.ceil(shape_arr * spacing / correlation_mm).astype(int) + 3, 4)
    field = gaussian_filter(rng.standard_normal(tuple(coarse)), 0.8, mode="wrap")
    field = zoom(field, shape_arr / coarse, order=1, grid_mode=False, mode="nearest")
    field = field[: shape[0], : shape[1], : shape[2]].astype(np.float32)
    field -= field.mean()
    field /= max(float(field.std()), 1e-6)
    return field


def _class_occupancies(tree: VesselTree) -> tuple[np.ndarray, np.ndarray]:
    """Occupancy and the class it belongs to, falling back to ``class_map`` for trees built by hand."""
    occ = tree.occupancy.astype(np.float32, copy=False)
    cls = tree.occupancy_class if tree.occupancy_class is not None else tree.class_map
    return occ, cls


def _vessel_signal(occ: np.ndarray, cls: np.ndarray, contrasts: dict[int, float]) -> np.ndarray:
    """``contrast_of_class * occupancy`` per voxel, float32 (Z, Y, X)."""
    lut = np.zeros(256, dtype=np.float32)
    for label, value in contrasts.items():
        lut[label] = value
    return lut[cls] * occ


def _brain_mask(
    shape: tuple[int, int, int], spacing: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """An irregular ellipsoid brain; returns (mask bool, normalised radius float32, 1 on the surface)."""
    extent = np.asarray(shape) * spacing
    # The axial slab usually cuts through the brain, so the ellipsoid is taller than the volume.
    semi = extent * np.array([rng.uniform(0.6, 0.9), rng.uniform(0.4, 0.47), rng.uniform(0.38, 0.45)])
    centre = extent / 2 + rng.uniform(-0.03, 0.03, 3) * extent
    z = ((np.arange(shape[0]) + 0.5) * spacing[0] - centre[0]) / semi[0]
    y = ((np.arange(shape[1]) + 0.5) * spacing[1] - centre[1]) / semi[1]
    x = ((np.arange(shape[2]) + 0.5) * spacing[2] - centre[2]) / semi[2]
    rho = np.sqrt(z[:, None, None] ** 2 + y[None, :, None] ** 2 + x[None, None, :] ** 2).astype(np.float32)
    # Gyri-scale irregularity of the surface.
    rho *= 1.0 + 0.04 * _smooth_field(shape, spacing, 25.0, rng)
    return rho <= 1.0, rho


def _bias_field(shape: tuple[int, int, int], spacing: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative smooth bias (receive-coil inhomogeneity), mean about 1, +-10-25 %."""
    strength = rng.uniform(0.1, 0.25)
    return np.exp(strength * _smooth_field(shape, spacing, 80.0, rng)).astype(np.float32)


def _rician(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of the signal plus complex Gaussian noise (Rician distribution)."""
    real = image + rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    imag = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(sigma)
    return np.sqrt(real * real + imag * imag)


def _render_tof(tree: VesselTree, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = tree.class_map.shape
    spacing = np.asarray(tree.spacing_zyx, dtype=float)
    mask, rho = _brain_mask(shape, spacing, rng)
    # Normalised intensities (brain tissue ~0.3) are scaled to a scanner-like range at the end.
    tissue_level = rng.uniform(0.25, 0.35)
    artery_contrast = rng.uniform(0.45, 0.8)
    vein_contrast = artery_contrast * rng.uniform(0.4, 0.6)
    micro_contrast = artery_contrast * rng.uniform(0.3, 0.5)
    texture_amount = rng.uniform(0.04, 0.1)
    noise_sigma = rng.uniform(0.015, 0.04)
    scale = rng.uniform(300.0, 1200.0)

    tissue = np.where(mask, np.float32(tissue_level), np.float32(0.03))
    # Bright scalp fat just outside the brain (short T1), dark skull in between.
    shell = (rho > 1.06) & (rho < 1.14)
    tissue[shell] = tissue_level * rng.uniform(1.0, 1.4)
    tissue *= 1.0 + texture_amount * _smooth_field(shape, spacing, 6.0, rng)
    occ, cls = _class_occupancies(tree)
    signal = _vessel_signal(
        occ, cls, {_ARTERY: artery_contrast, _VEIN: vein_contrast, _MICRO: micro_contrast}
    )
    image = tissue + signal
    image *= _bias_field(shape, spacing, rng)
    image = _rician(image, noise_sigma, rng)
    return (image * np.float32(scale)).astype(np.float32), mask


def render_tof_mra(tree: VesselTree, *, seed: int = 0) -> np.ndarray:
    """Render a time-of-flight MR angiogram.

    Parameters
    ----------
    tree : VesselTree
        The phantom to render.
    seed : int
        Seed of the single random generator used.

    Returns
    -------
    (Z, Y, X) float32 image, roughly 0-1500: bright arteries, dimmer veins, faint micro-vessels.
    """
    return _render_tof(tree, np.random.default_rng(seed))[0]


def _render_swi(tree: VesselTree, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    shape = tree.class_map.shape
    spacing = np.asarray(tree.spacing_zyx, dtype=float)
    mask, _ = _brain_mask(shape, spacing, rng)
    tissue_level = rng.uniform(0.5, 0.7)
    # Contrasts are negative: susceptibility (phase) weighting darkens deoxygenated blood.
    vein_contrast = -tissue_level * rng.uniform(0.55, 0.85)
    artery_contrast = -tissue_level * rng.uniform(0.0, 0.08)
    micro_contrast = vein_contrast * rng.uniform(0.3, 0.5)
    texture_amount = rng.uniform(0.05, 0.12)
    noise_sigma = rng.uniform(0.02, 0.05)
    scale = rng.uniform(300.0, 1200.0)

    tissue = np.where(mask, np.float32(tissue_level), np.float32(0.02))
    tissue *= 1.0 + texture_amount * _smooth_field(shape, spacing, 5.0, rng)
    occ, cls = _class_occupancies(tree)
    signal = _vessel_signal(
        occ, cls, {_ARTERY: artery_contrast, _VEIN: vein_contrast, _MICRO: micro_contrast}
    )
    # Outside the brain the minimum-intensity-projected SWI is masked to air: no vessel contrast there.
    image = np.maximum(tissue + signal * mask, 0.0)
    image *= _bias_field(shape, spacing, rng)
    image = _rician(image, noise_sigma, rng)
    return (image * np.float32(scale)).astype(np.float32), mask


def render_swi(tree: VesselTree, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Render a susceptibility-weighted image.

    Parameters
    ----------
    tree : VesselTree
        The phantom to render.
    seed : int
        Seed of the single random generator used.

    Returns
    -------
    image : (Z, Y, X) float32, dark veins and venules on brighter tissue.
    brain_mask : (Z, Y, X) bool, the brain ellipsoid.
    """
    return _render_swi(tree, np.random.default_rng(seed))


def render_2pm(tree: VesselTree, *, seed: int = 0) -> np.ndarray:
    """Render a two-photon microscopy stack of a dye-filled vasculature (Z = depth below the surface).

    Parameters
    ----------
    tree : VesselTree
        The phantom to render.
    seed : int
        Seed of the single random generator used.

    Returns
    -------
    (Z, Y, X) float32 image in a uint16-like range (offset ~100, bright lumen up to thousands of counts).
    """
    rng = np.random.default_rng(seed)
    shape = tree.class_map.shape
    spacing = np.asarray(tree.spacing_zyx, dtype=float)
    depth = shape[0] * spacing[0]
    attenuation_length = depth / rng.uniform(0.7, 1.6)
    background = rng.uniform(0.05, 0.15)
    background_texture = rng.uniform(0.2, 0.4)
    micro_brightness = rng.uniform(0.5, 0.9)
    peak_photons = rng.uniform(15.0, 120.0)
    shadow_strength = rng.uniform(0.3, 0.7)  # fraction of light lost behind one large-vessel diameter
    gain = rng.uniform(20.0, 60.0)
    offset = rng.uniform(80.0, 200.0)
    read_noise = rng.uniform(2.0, 8.0)

    occ, cls = _class_occupancies(tree)
    lumen = occ * np.where(cls == _MICRO, np.float32(micro_brightness), np.float32(1.0))
    fluor = background * np.clip(
        # Correlation length of ~15 in-plane voxels: expressed in voxels so the texture does not depend on
        # whether the stack's spacing is given in um or mm.
        1.0 + background_texture * _smooth_field(shape, spacing, 15.0 * spacing[2], rng),
        0.2,
        None,
    )
    signal = fluor + lumen
    # Blood (haemoglobin) absorbs and scatters the excitation light: everything below a vessel along +Z
    # is dimmer. The optical path through large vessels is accumulated from the surface down.
    large = np.where((cls == _ARTERY) | (cls == _VEIN), occ, np.float32(0.0))
    path = np.cumsum(large, axis=0, dtype=np.float32) - large
    if tree.radius_model == "2pm-physical":
        # Radii in micrometres: light is lost per physical length of blood, and the shadow is spread by the
        # excitation cone (NA ~ 0.8-1, tens of um wide a few tens of um above the focus), which mostly
        # passes beside a vessel: a penetrating vessel seen end-on stays bright at depth, as in real stacks.
        blood_units = path * np.float32(spacing[0] / _SHADOW_BLOOD_PATH_MM)
        cone_sigma_vox = (0.0, _SHADOW_CONE_SIGMA_MM / spacing[1], _SHADOW_CONE_SIGMA_MM / spacing[2])
        shadow = np.exp(np.log(1.0 - shadow_strength) * gaussian_filter(blood_units, sigma=cone_sigma_vox))
    else:
        macro_radii = [float(np.median(s.radii_mm)) for s in tree.segments if s.vessel_class != "micro"]
        typical_diameter_vox = 2.0 * (np.median(macro_radii) if macro_radii else spacing[0]) / spacing[0]
        path = gaussian_filter(path, sigma=(0.0, 1.0, 1.0))
        shadow = np.exp(np.log(1.0 - shadow_strength) * path / max(typical_diameter_vox, 1.0))
    z = (np.arange(shape[0], dtype=np.float32) + 0.5) * np.float32(spacing[0])
    attenuation = np.exp(-z / np.float32(attenuation_length))[:, None, None]
    expected_photons = signal * shadow * attenuation * np.float32(peak_photons)
    photons = rng.poisson(expected_photons).astype(np.float32)
    image = photons * np.float32(gain) + np.float32(offset)
    image += rng.standard_normal(shape, dtype=np.float32) * np.float32(read_noise)
    return np.clip(image, 0.0, 65535.0).astype(np.float32)
