"""Seeded domain randomisation of two-photon (2PM) training patches: other microscopes, on the fly.

The VesselNN stacks the 2PM models learn from come from one Olympus two-photon microscope, BM4D-denoised,
8-bit, at 0.994 x 0.994 x 5 um (or 1.59 / 2.485 um in-plane). A model that only sees them learns their
look; each transform below imitates one way a stack from another set-up differs, applied to the
normalised patch (roughly [0, 1], bright vessels, background near 0):

========================  ===============================================================================
transform                 real-microscope variation it stands for
========================  ===============================================================================
gamma                     tone curve: dye loading and vessel calibre change how bright thin capillaries
                          are next to large vessels; detector response and display LUT of the export.
dye leakage               extravasation where the blood-brain barrier is open (VesselNN's bbbDisruption and
                          BBB_Leakage stacks): a diffuse glow spreading from the vessels into the tissue,
                          patchy, while the label stays the lumen. Off in the defaults
                          (``leakage_probability = 0``); it needs the patch's vessel mask.
dye pools                 dye that has pooled in the tissue away from any vessel (bbbDisruption: sheets and
                          blobs tens of um across, which the annotators did not call vessel): smooth bright
                          regions covering a drawn share of the patch, outside the lumen. Off in the
                          defaults (``pool_probability = 0``).
per-slice factors         depth attenuation ``exp(-z / L)``: excitation and emission light scattered and
                          absorbed with depth (``L`` is a tissue property, drawn in voxels relative to the
                          patch depth); brightening with depth: over-compensated laser power ramps or a
                          stack acquired bottom-up. Slice jumps: laser-power fluctuation, bleaching, PMT
                          gain steps or motion between frames, so a few slices jump in brightness.
blur                      point-spread function: lower NA, aberrations and scattering deep in tissue; the
                          axial PSF is longer than the lateral one (``sigma_z >= sigma_yx`` by default).
background                autofluorescence, out-of-focus haze and PMT dark offset (additive offset), and
                          uneven illumination / vignetting of the haze (smooth low-frequency field).
contrast                  PMT gain and laser power setting around the stack's mean brightness.
noise                     shot noise (Poisson at a random photon count for intensity 1; the training
                          stacks are denoised, raw stacks are not), read / amplifier noise (Gaussian),
                          and PMT gain fluctuation (multiplicative speckle).
resolution change         coarser sampling (a larger Z step, a smaller frame size) interpolated back to the
                          model's grid, as resampling at inference does: the image gets the blocky,
                          correlated look of an upsampled stack while the label grid is unchanged.
========================  ===============================================================================

They run in that order, the physical chain from the stained tissue to the normalised file: gamma shapes
the clean (denoised) object so that it does not amplify noise added later, the per-slice factors and the
PSF act on the fluorescence, the background is added after the blur because it is smooth already, the
gain acts on signal plus background, the detector adds noise, and the resolution change comes last
because real coarse stacks are interpolated noise included. The result is clipped to
:data:`CLIP_RANGE`, so that no setting can make the network input explode.

As in TorchIO (``RandomNoise`` -> ``Noise``), the randomness is drawn in one place and applied in
another: :meth:`DomainRandomisation.draw` takes every decision from a NumPy generator into a frozen
:class:`RandomisationSpec` (plain numbers, and one integer seed for the noise and field arrays), and
:func:`apply_randomisation` applies a spec deterministically. Only the image changes: every transform
keeps the voxel grid, so the label stays aligned without being touched.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter

#: Output intensities are clipped to this range (normalised units; input is roughly [0, 1]).
CLIP_RANGE = (-0.5, 2.0)
#: Coarse grid ``(Z, Y, X)`` of the smooth background field: one gradient along Z, about one bump in Y/X.
FIELD_GRID_ZYX = (2, 3, 3)
#: Coarse grid of the dye pools' field: blobs about a sixth of a patch across in-plane.
POOL_GRID_ZYX = (2, 6, 6)
#: Width of the pools' soft edge, in units of the field (which spans [0, 1]).
POOL_EDGE = 0.05
#: Largest per-slice intensity factor (several jumps on one slice multiply).
MAX_SLICE_FACTOR = 10.0
#: Gaussian kernels are cut at this many sigmas (3 keeps 99.7 % of the weight and halves the cost of 4).
BLUR_TRUNCATE = 3.0

#: Allowed values of each setting, inclusive; a "_range" setting is a [low, high] pair inside its bounds.
SETTING_LIMITS: dict[str, tuple[float, float]] = {
    "probability": (0.0, 1.0),
    "gamma_probability": (0.0, 1.0),
    "gamma_range": (0.1, 10.0),
    "contrast_probability": (0.0, 1.0),
    "contrast_range": (0.1, 10.0),
    "background_probability": (0.0, 1.0),
    "background_offset_range": (-0.5, 1.0),
    "background_field_range": (0.0, 1.0),
    "attenuation_probability": (0.0, 1.0),
    "attenuation_length_range": (0.05, 100.0),
    "attenuation_brightening_probability": (0.0, 1.0),
    "blur_probability": (0.0, 1.0),
    "blur_sigma_yx_range": (0.0, 5.0),
    "blur_axial_ratio_range": (0.0, 10.0),
    "gaussian_noise_probability": (0.0, 1.0),
    "gaussian_noise_std_range": (0.0, 1.0),
    "poisson_noise_probability": (0.0, 1.0),
    "poisson_photons_range": (1.0, 1e6),
    "speckle_noise_probability": (0.0, 1.0),
    "speckle_std_range": (0.0, 1.0),
    "resolution_probability": (0.0, 1.0),
    "resolution_z_range": (1.0, 8.0),
    "resolution_yx_range": (1.0, 8.0),
    "slice_jump_probability": (0.0, 1.0),
    "slice_jump_count_range": (1, 64),
    "slice_jump_factor_range": (0.0, 10.0),
    "leakage_probability": (0.0, 1.0),
    "leakage_amplitude_range": (0.0, 2.0),
    "leakage_sigma_range": (0.5, 20.0),
    "pool_probability": (0.0, 1.0),
    "pool_amplitude_range": (0.0, 2.0),
    "pool_coverage_range": (0.0, 0.9),
}
_INTEGER_SETTINGS = {"slice_jump_count_range"}


def _check_setting(name: str, value: Any, key: str) -> float | int | tuple:
    """``value`` of setting ``name`` as a float, int or (low, high) tuple; ValueError naming ``key``."""
    low, high = SETTING_LIMITS[name]
    integer = name in _INTEGER_SETTINGS
    kind = "integer" if integer else "number"

    def number_ok(item: Any) -> bool:
        if isinstance(item, bool):
            return False
        if integer:
            return isinstance(item, (int, np.integer))
        return isinstance(item, (int, float, np.integer, np.floating)) and math.isfinite(item)

    if not name.endswith("_range"):
        if not number_ok(value) or not low <= value <= high:
            raise ValueError(f"{key} must be a {kind} in [{low}, {high}], got {value!r}.")
        return float(value)
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(number_ok(item) for item in value)
        or not low <= value[0] <= value[1] <= high
    ):
        shown = list(value) if isinstance(value, tuple) else value
        raise ValueError(
            f"{key} must be [low, high], two {kind}s with {low} <= low <= high <= {high}, got {shown!r}."
        )
    cast = int if integer else float
    return (cast(value[0]), cast(value[1]))


@dataclass(frozen=True)
class RandomisationSpec:
    """Every random decision behind the randomisation of one patch; ``None`` (or ``()``) means "not applied".

    Attributes
    ----------
    gamma : float or None
        Exponent of ``x ** gamma`` on positive intensities (0 and 1 stay fixed).
    attenuation_length_voxels : float or None
        ``L`` of the depth factor ``exp(-z / L)``, z the slice index (voxels) from the first slice.
    attenuation_brightening : bool
        Brighter with depth instead: ``exp(-(Z - 1 - z) / L)`` (the deepest slice keeps its intensity).
    slice_jumps : tuple of (float, float)
        ``(position, factor)``: the slice at ``floor(position * Z)`` (position in [0, 1)) is multiplied by
        ``factor``. Positions are relative so that a spec fits the in-volume part of a padded patch.
    blur_sigma_zyx : tuple of 3 float or None
        Gaussian PSF width in voxels, ``(Z, Y, X)``.
    background_offset : float or None
        Added everywhere; with it, a smooth field in ``[0, background_field]`` (interpolated from a random
        :data:`FIELD_GRID_ZYX` grid drawn from ``seed``) is added too.
    background_field : float
    contrast : float or None
        Gain around the mean: ``mean + contrast * (x - mean)``.
    poisson_photons : float or None
        Photons detected at intensity 1: ``Poisson(x * N) / N``.
    gaussian_noise_std : float or None
        Standard deviation of additive read noise (normalised units).
    speckle_std : float or None
        Standard deviation of the multiplicative noise ``x * (1 + s * n)``. With read noise ``g`` both are
        one draw, ``x + sqrt(g ** 2 + (s * x) ** 2) * n``: the same distribution as the sum.
    resolution_factors_zyx : tuple of 3 float or None
        Downsampling factor per axis (1 = unchanged; Y and X share one), linear interpolation down and
        back up to the same shape.
    leakage_amplitude, leakage_sigma_yx : float or None
        Dye leakage: the vessel mask blurred by ``sigma_yx`` voxels in-plane (a third of it along Z),
        scaled to peak 1, modulated by a smooth field in [0, 1] and added outside the vessels times
        ``amplitude``.
    pool_amplitude, pool_coverage : float or None
        Dye pools: the share ``coverage`` of the patch where a smooth random field (:data:`POOL_GRID_ZYX`) is
        highest, with a soft edge, brightened by ``amplitude`` outside the vessels.
    seed : int
        Seed of the noise and background-field arrays.
    """

    gamma: float | None = None
    attenuation_length_voxels: float | None = None
    attenuation_brightening: bool = False
    slice_jumps: tuple[tuple[float, float], ...] = ()
    blur_sigma_zyx: tuple[float, float, float] | None = None
    background_offset: float | None = None
    background_field: float = 0.0
    contrast: float | None = None
    poisson_photons: float | None = None
    gaussian_noise_std: float | None = None
    speckle_std: float | None = None
    resolution_factors_zyx: tuple[float, float, float] | None = None
    leakage_amplitude: float | None = None
    leakage_sigma_yx: float | None = None
    pool_amplitude: float | None = None
    pool_coverage: float | None = None
    seed: int = 0

    @property
    def is_identity(self) -> bool:
        """True when the spec changes nothing (the patch was drawn without randomisation)."""
        return not self.slice_jumps and all(
            getattr(self, name) is None
            for name in (
                "gamma",
                "attenuation_length_voxels",
                "blur_sigma_zyx",
                "background_offset",
                "contrast",
                "poisson_photons",
                "gaussian_noise_std",
                "speckle_std",
                "resolution_factors_zyx",
                "leakage_amplitude",
                "pool_amplitude",
            )
        )


@dataclass(frozen=True)
class DomainRandomisation:
    """Settings of the 2PM domain randomisation: for each transform a probability and a range.

    The defaults are a preset for two-photon stacks normalised to roughly [0, 1]. Ranges are ``(low, high)``;
    ratios (gamma, contrast, attenuation length, photon count, jump factor) are drawn log-uniformly so that
    ``x0.6`` and ``x1.6`` are about equally likely, the others uniformly. The allowed values of each key are
    in :data:`SETTING_LIMITS`; the constructor and :meth:`from_table` check them.

    Attributes
    ----------
    probability : float
        Share of patches randomised at all; the others keep the source look (default 0.8).
    gamma_probability, gamma_range : float, (float, float)
        Exponent of the tone curve.
    contrast_probability, contrast_range : float, (float, float)
        Gain around the patch mean.
    background_probability, background_offset_range, background_field_range : float, (float, float) x2
        Additive offset and peak-to-peak amplitude of the smooth background field (normalised units).
    attenuation_probability, attenuation_length_range : float, (float, float)
        Attenuation length ``L`` in patch depths (``L = 1`` darkens the last of 16 slices to ``exp(-15/16)``).
    attenuation_brightening_probability : float
        Share of attenuated patches that brighten with depth instead.
    blur_probability, blur_sigma_yx_range, blur_axial_ratio_range : float, (float, float) x2
        In-plane PSF sigma in voxels and ``sigma_z / sigma_yx``.
    gaussian_noise_probability, gaussian_noise_std_range : float, (float, float)
    poisson_noise_probability, poisson_photons_range : float, (float, float)
        Photons detected at intensity 1 (fewer photons, more shot noise).
    speckle_noise_probability, speckle_std_range : float, (float, float)
    resolution_probability, resolution_z_range, resolution_yx_range : float, (float, float) x2
        Downsampling factors; a randomised patch changes Z only, Y/X only or both (one third each).
    slice_jump_probability, slice_jump_count_range, slice_jump_factor_range : float, (int, int), (float, float)
        How many slices jump, and their intensity factor.
    leakage_probability, leakage_amplitude_range, leakage_sigma_range : float, (float, float) x2
        Dye leakage around the vessels: peak brightness added (normalised units) and in-plane spread in
        voxels. Off by default: it is drawn only where the sampler passes the vessel mask.
    pool_probability, pool_amplitude_range, pool_coverage_range : float, (float, float) x2
        Dye pooled away from the vessels: brightness added (normalised units) and the share of the patch
        covered. Off by default.
    """

    probability: float = 0.8
    gamma_probability: float = 0.5
    gamma_range: tuple[float, float] = (0.6, 1.6)
    contrast_probability: float = 0.5
    contrast_range: tuple[float, float] = (0.7, 1.4)
    background_probability: float = 0.4
    background_offset_range: tuple[float, float] = (0.0, 0.15)
    background_field_range: tuple[float, float] = (0.0, 0.15)
    attenuation_probability: float = 0.4
    attenuation_length_range: tuple[float, float] = (0.5, 4.0)
    attenuation_brightening_probability: float = 0.25
    blur_probability: float = 0.3
    blur_sigma_yx_range: tuple[float, float] = (0.3, 1.0)
    blur_axial_ratio_range: tuple[float, float] = (1.0, 2.0)
    gaussian_noise_probability: float = 0.4
    gaussian_noise_std_range: tuple[float, float] = (0.005, 0.05)
    poisson_noise_probability: float = 0.3
    poisson_photons_range: tuple[float, float] = (10.0, 300.0)
    speckle_noise_probability: float = 0.2
    speckle_std_range: tuple[float, float] = (0.02, 0.15)
    resolution_probability: float = 0.3
    resolution_z_range: tuple[float, float] = (1.0, 3.0)
    resolution_yx_range: tuple[float, float] = (1.0, 3.0)
    slice_jump_probability: float = 0.2
    slice_jump_count_range: tuple[int, int] = (1, 3)
    slice_jump_factor_range: tuple[float, float] = (0.6, 1.4)
    leakage_probability: float = 0.0
    leakage_amplitude_range: tuple[float, float] = (0.1, 0.6)
    leakage_sigma_range: tuple[float, float] = (3.0, 16.0)
    pool_probability: float = 0.0
    pool_amplitude_range: tuple[float, float] = (0.2, 1.0)
    pool_coverage_range: tuple[float, float] = (0.05, 0.3)

    def __post_init__(self) -> None:
        for item in fields(self):
            value = _check_setting(item.name, getattr(self, item.name), f"DomainRandomisation.{item.name}")
            object.__setattr__(self, item.name, value)  # frozen: store the checked, normalised value

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str = "randomisation") -> DomainRandomisation:
        """Settings from a TOML table; keys left out keep their default (an empty table gives the preset).

        Raises
        ------
        ValueError
            One line naming ``{where}.{key}`` and what it accepts, for an unknown key or a bad value.
        """
        if not isinstance(table, Mapping):
            raise ValueError(f"{where} must be a table, got {type(table).__name__}.")
        allowed = [item.name for item in fields(cls)]
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise ValueError(
                f"Unknown key {where}.{unknown[0]}; allowed keys in [{where}] are: {', '.join(allowed)}."
            )
        return cls(**{key: _check_setting(key, value, f"{where}.{key}") for key, value in table.items()})

    def as_record(self) -> dict[str, Any]:
        """The settings as JSON-safe values (ranges as lists), for the model card; ``from_table`` reads it."""
        return {
            item.name: list(value) if isinstance(value, tuple) else value
            for item in fields(self)
            for value in (getattr(self, item.name),)
        }

    def draw(self, rng: np.random.Generator, patch_shape_zyx: Sequence[int]) -> RandomisationSpec:
        """Take every random decision for one patch of shape ``patch_shape_zyx`` ``(Z, Y, X)``.

        Returns an identity spec (``is_identity``) for the ``1 - probability`` patches left as they are.
        """
        if len(patch_shape_zyx) != 3 or min(patch_shape_zyx) < 1:
            raise ValueError(f"patch_shape_zyx must be 3 positive sizes (Z, Y, X), got {patch_shape_zyx!r}.")
        if rng.random() >= self.probability:
            return RandomisationSpec()
        choices: dict[str, Any] = {}
        if rng.random() < self.gamma_probability:
            choices["gamma"] = _draw(rng, self.gamma_range, log=True)
        if rng.random() < self.attenuation_probability:
            length = _draw(rng, self.attenuation_length_range, log=True)
            choices["attenuation_length_voxels"] = length * int(patch_shape_zyx[0])
            choices["attenuation_brightening"] = bool(rng.random() < self.attenuation_brightening_probability)
        if rng.random() < self.slice_jump_probability:
            low, high = self.slice_jump_count_range
            count = int(rng.integers(low, high + 1))
            choices["slice_jumps"] = tuple(
                (float(rng.random()), _draw(rng, self.slice_jump_factor_range, log=True))
                for _ in range(count)
            )
        if rng.random() < self.blur_probability:
            sigma_yx = _draw(rng, self.blur_sigma_yx_range)
            choices["blur_sigma_zyx"] = (
                sigma_yx * _draw(rng, self.blur_axial_ratio_range),
                sigma_yx,
                sigma_yx,
            )
        if rng.random() < self.background_probability:
            choices["background_offset"] = _draw(rng, self.background_offset_range)
            choices["background_field"] = _draw(rng, self.background_field_range)
        if rng.random() < self.contrast_probability:
            choices["contrast"] = _draw(rng, self.contrast_range, log=True)
        if rng.random() < self.poisson_noise_probability:
            choices["poisson_photons"] = _draw(rng, self.poisson_photons_range, log=True)
        if rng.random() < self.gaussian_noise_probability:
            choices["gaussian_noise_std"] = _draw(rng, self.gaussian_noise_std_range)
        if rng.random() < self.speckle_noise_probability:
            choices["speckle_std"] = _draw(rng, self.speckle_std_range)
        if rng.random() < self.resolution_probability:
            axes = int(rng.integers(3))  # 0: Z only, 1: Y/X only, 2: both
            factor_z = _draw(rng, self.resolution_z_range) if axes != 1 else 1.0
            factor_yx = _draw(rng, self.resolution_yx_range) if axes != 0 else 1.0
            choices["resolution_factors_zyx"] = (factor_z, factor_yx, factor_yx)
        # Drawn last so that turning leakage on leaves every other decision of a seed as it was.
        if self.leakage_probability > 0 and rng.random() < self.leakage_probability:
            choices["leakage_amplitude"] = _draw(rng, self.leakage_amplitude_range)
            choices["leakage_sigma_yx"] = _draw(rng, self.leakage_sigma_range, log=True)
        # Likewise last again: turning pools on changes no earlier decision.
        if self.pool_probability > 0 and rng.random() < self.pool_probability:
            choices["pool_amplitude"] = _draw(rng, self.pool_amplitude_range)
            choices["pool_coverage"] = _draw(rng, self.pool_coverage_range)
        return RandomisationSpec(**choices, seed=int(rng.integers(2**32)))


def _draw(rng: np.random.Generator, bounds: tuple[float, float], *, log: bool = False) -> float:
    low, high = bounds
    if log and low > 0:
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return float(rng.uniform(low, high))


@functools.lru_cache(maxsize=256)
def _interpolation_matrix(size_out: int, size_in: int) -> np.ndarray:
    """Linear interpolation from ``size_in`` to ``size_out`` samples, end points aligned: ``(out, in)``."""
    weights = np.zeros((size_out, size_in), dtype=np.float64)
    if size_in == 1:
        weights[:, 0] = 1.0
    else:
        positions = np.linspace(0.0, size_in - 1, size_out) if size_out > 1 else np.array([(size_in - 1) / 2])
        lower = np.minimum(np.floor(positions).astype(np.int64), size_in - 2)
        fraction = positions - lower
        rows = np.arange(size_out)
        weights[rows, lower] = 1.0 - fraction
        weights[rows, lower + 1] += fraction
    matrix = weights.astype(np.float32)
    matrix.setflags(write=False)  # cached and shared
    return matrix


@functools.lru_cache(maxsize=256)
def _resolution_matrix(size: int, coarse: int) -> np.ndarray:
    """Down to ``coarse`` samples and back up to ``size``, as one ``(size, size)`` matrix."""
    matrix = _interpolation_matrix(size, coarse) @ _interpolation_matrix(coarse, size)
    matrix.setflags(write=False)
    return matrix


def _change_resolution(image: np.ndarray, factors_zyx: Sequence[float]) -> np.ndarray:
    """Each axis resampled to ``round(size / factor)`` samples (at least 2) and back, linearly.

    A separable linear interpolation is a matrix per axis, so three small matrix products do the work
    (faster than two ``scipy.ndimage.zoom`` passes, and the shape comes back exactly).
    """
    size_z, size_y, size_x = image.shape
    for axis, (size, factor) in enumerate(zip(image.shape, factors_zyx, strict=True)):
        coarse = max(2, round(size / factor))
        if coarse >= size:
            continue
        matrix = _resolution_matrix(size, coarse)
        if axis == 0:
            image = (matrix @ image.reshape(size_z, -1)).reshape(size_z, size_y, size_x)
        elif axis == 1:
            image = np.matmul(matrix, image)
        else:
            image = image @ matrix.T
    return image


def _smooth_field(
    shape_zyx: Sequence[int], rng: np.random.Generator, grid_zyx: Sequence[int] = FIELD_GRID_ZYX
) -> np.ndarray:
    """A field in [0, 1] of shape ``shape_zyx``: a random coarse ``grid_zyx``, trilinearly interpolated."""
    grid = tuple(int(g) for g in grid_zyx)
    coarse = rng.random(grid, dtype=np.float32)
    size_z, size_y, size_x = shape_zyx
    field = coarse @ _interpolation_matrix(size_x, grid[2]).T  # (cz, cy, X)
    field = np.matmul(_interpolation_matrix(size_y, grid[1]), field)  # (cz, Y, X)
    field = _interpolation_matrix(size_z, grid[0]) @ field.reshape(grid[0], -1)
    return field.reshape(size_z, size_y, size_x)


def _slice_factors(spec: RandomisationSpec, depth: int) -> np.ndarray | None:
    """Per-slice intensity factors ``(Z,)`` of depth attenuation and slice jumps, or None."""
    if spec.attenuation_length_voxels is None and not spec.slice_jumps:
        return None
    factors = np.ones(depth, dtype=np.float64)
    if spec.attenuation_length_voxels is not None:
        z = np.arange(depth, dtype=np.float64)
        # Brightening is written as attenuation from the bottom so no slice ever exceeds its input.
        depth_below = (depth - 1 - z) if spec.attenuation_brightening else z
        factors *= np.exp(-depth_below / spec.attenuation_length_voxels)
    for position, factor in spec.slice_jumps:
        factors[min(int(position * depth), depth - 1)] *= factor
    # Jumps landing on one slice multiply; the cap keeps 64 jumps of x10 finite.
    return np.clip(factors, 0.0, MAX_SLICE_FACTOR).astype(np.float32)


def apply_randomisation(
    image: np.ndarray, spec: RandomisationSpec, vessel_mask: np.ndarray | None = None
) -> np.ndarray:
    """Apply one drawn randomisation to a normalised patch.

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X) or (1, Z, Y, X)
        Normalised intensities (roughly [0, 1]). Not modified.
    spec : RandomisationSpec
        From :meth:`DomainRandomisation.draw`; the same spec always gives the same output.
    vessel_mask : ndarray of bool, shape (Z, Y, X), optional
        The patch's vessels (any class), which dye leakage spreads from; without it leakage is skipped.

    Returns
    -------
    ndarray of float32, same shape
        Clipped to :data:`CLIP_RANGE`, so finite for any finite input and any allowed settings (an identity
        spec returns an unclipped float32 copy).
    """
    array = np.asarray(image)
    if array.ndim == 4 and array.shape[0] == 1:
        return apply_randomisation(array[0], spec, vessel_mask)[None]
    if array.ndim != 3:
        raise ValueError(f"image must have shape (Z, Y, X) or (1, Z, Y, X), got {array.shape}.")
    if spec.is_identity:
        return array.astype(np.float32, copy=True)
    # A fresh array (never the caller's), clipped first so that no input value can overflow float32 in the
    # steps below, whatever the settings (2 ** 10 times a slice factor of 10 is still small).
    out = np.clip(array, *CLIP_RANGE, dtype=np.float32)
    rng_noise = np.random.default_rng((spec.seed, 0))
    rng_field = np.random.default_rng((spec.seed, 1))  # own stream: the field does not depend on the noise
    if spec.gamma is not None:
        # Only the positive part is raised to the power: 0 and 1 stay fixed, order is kept, and the
        # slightly negative voxels that normalisation leaves are not turned into NaN.
        positive = np.maximum(out, 0.0)
        out = np.power(positive, np.float32(spec.gamma)) + (out - positive)
    if spec.leakage_amplitude is not None and vessel_mask is not None and vessel_mask.any():
        if vessel_mask.shape != out.shape:
            raise ValueError(f"vessel_mask has shape {vessel_mask.shape}, the image {out.shape}.")
        vessels = np.asarray(vessel_mask, dtype=np.float32)
        sigma = spec.leakage_sigma_yx
        # Dye leaves the vessels and diffuses: the glow falls off with distance and is patchy (leaks are
        # focal), and it lies in the tissue, not in the lumen, which keeps its own brightness.
        glow = gaussian_filter(vessels, (sigma / 3.0, sigma, sigma), mode="constant", truncate=BLUR_TRUNCATE)
        glow /= max(float(glow.max()), 1e-6)
        patches = _smooth_field(out.shape, np.random.default_rng((spec.seed, 2)))
        out += np.float32(spec.leakage_amplitude) * glow * patches * (1.0 - vessels)
    if spec.pool_amplitude is not None and spec.pool_coverage:
        field = _smooth_field(out.shape, np.random.default_rng((spec.seed, 3)), POOL_GRID_ZYX)
        level = np.float32(np.quantile(field, 1.0 - spec.pool_coverage))  # the top `coverage` of the field
        pools = np.clip((field - level) / np.float32(POOL_EDGE), 0.0, 1.0)
        if vessel_mask is not None:  # in the tissue: the lumen keeps its own brightness
            pools *= 1.0 - np.asarray(vessel_mask, dtype=np.float32)
        out += np.float32(spec.pool_amplitude) * pools
    factors = _slice_factors(spec, out.shape[0])
    if factors is not None:
        out *= factors[:, None, None]
    if spec.blur_sigma_zyx is not None:
        out = gaussian_filter(out, spec.blur_sigma_zyx, mode="nearest", truncate=BLUR_TRUNCATE)
    if spec.background_offset is not None:
        out += np.float32(spec.background_offset)
        if spec.background_field > 0:
            out += np.float32(spec.background_field) * _smooth_field(out.shape, rng_field)
    if spec.contrast is not None:
        mean = np.float32(out.mean(dtype=np.float64))
        out = mean + np.float32(spec.contrast) * (out - mean)
    if spec.poisson_photons is not None:
        photons = spec.poisson_photons
        # float64 rates: the generator works in float64, and one conversion here saves one inside it.
        rates = np.maximum(out, 0.0, dtype=np.float64)
        rates *= photons
        negative = np.minimum(out, 0.0)  # no photons below 0: that part stays as it is
        out = rng_noise.poisson(rates).astype(np.float32)
        out *= np.float32(1.0 / photons)
        out += negative
    if spec.gaussian_noise_std is not None or spec.speckle_std is not None:
        # Read noise g * n1 plus speckle x * s * n2 (n1, n2 independent standard normals) is distributed as
        # sqrt(g^2 + (s x)^2) * n: one draw of normals instead of two (a third of the noise cost).
        read = np.float32(spec.gaussian_noise_std or 0.0)
        speckle = np.float32(spec.speckle_std or 0.0)
        std = np.sqrt(read * read + np.square(speckle * out)) if speckle > 0 else read
        out += std * rng_noise.standard_normal(out.shape, dtype=np.float32)
    if spec.resolution_factors_zyx is not None:
        out = _change_resolution(out, spec.resolution_factors_zyx)
    return np.ascontiguousarray(np.clip(out, *CLIP_RANGE), dtype=np.float32)


__all__ = [
    "CLIP_RANGE",
    "SETTING_LIMITS",
    "DomainRandomisation",
    "RandomisationSpec",
    "apply_randomisation",
]
