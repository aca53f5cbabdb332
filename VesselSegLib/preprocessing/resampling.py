"""Resampling to a model's training spacing, and a plausibility check of voxel sizes.

A network learns vessels at the scale of its training voxels: a 3D U-Net trained on 0.8 x 0.5 x 0.5 mm
TOF-MRA sees a 1 mm artery as 2 voxels across; fed a 0.25 mm scan, the same artery is 4 voxels across and
looks like something else. So the pipeline (1) checks that the file's voxel size is believable at all
(:func:`check_spacing_units`), (2) decides whether the input is far enough from the model's spacing to
need resampling (:func:`plan_resampling`), (3) resamples the normalised image to the model's spacing
(:func:`resample_to_spacing`) and (4) brings the probabilities back onto the input's exact grid
(:func:`resample_to_grid`), where they are thresholded, so every output keeps the input's geometry.

Grid convention
---------------
Only the voxel size matters here: every array is placed in a frame of its own with an identity direction
(the input's direction and origin are untouched, since outputs come back on the input's grid). ITK puts
the *centre* of voxel 0 at the origin, so a volume of ``n`` voxels of size ``s`` covers the box
``[origin - s/2, origin + (n - 1/2) s]`` along each axis. A resampled grid keeps the *centre of that box*
(each grid's origin is ``-(n - 1) s / 2``, which puts its box centre at 0): with a plain zero origin the
resampled volume would be shifted by ``(t - s) / 2`` (half an input voxel when halving the spacing), and a
segmentation made on it would come back misaligned. The resampled size is ``round(n s / t)`` voxels
(halves round up, at least 1), so the two boxes agree to within half a resampled voxel on each side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from VesselSegLib.preprocessing.presets import MODALITY_PRESETS

INTERPOLATIONS = ("linear", "nearest")
_SITK_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}
_AXES = ("Z", "Y", "X")

#: Beyond this factor on any axis, a mismatch between the input's and the model's spacing is taken as a
#: units error, not something to resample away: 10x per axis is 1000x the voxels (memory), and a scan that
#: far from the training data would not be segmented well anyway.
MAX_RESAMPLING_FACTOR = 10.0

#: Plausible voxel sizes in mm, per kind of image (every axis must fall inside).
#: 2PM: 0.05-50 um (sub-micrometre optical sections to coarse overview stacks). MRI (TOF-MRA, SWI):
#: 0.05-5 mm (7 T micro-angiography to thick clinical slices).
PLAUSIBLE_SPACING_MM: dict[str, tuple[float, float]] = {
    "2PM": (5e-5, 0.05),
    "TOF-MRA": (0.05, 5.0),
    "SWI": (0.05, 5.0),
}

#: Other readings of a file's numbers tried when they are implausible as millimetres, as
#: (factor to mm, what the file then stored). Microscopy files often store micrometres with units
#: "unknown" (the public MiniVess NIfTIs: 0.994 x 0.994 x 2.0), MRI exports sometimes store metres.
_UNIT_READINGS: dict[str, tuple[tuple[float, str], ...]] = {
    "2PM": ((1e-3, "micrometres"), (1e3, "metres")),
    "TOF-MRA": ((1e3, "metres"), (1e-3, "micrometres")),
    "SWI": ((1e3, "metres"), (1e-3, "micrometres")),
}
_OVERRIDE_HINT = "give the voxel size with --spacing X Y Z in mm, or fix the file's units"


# ----------------------------------------------------------------------------------------- helpers


def _spacing3(value: Any, name: str) -> tuple[float, float, float]:
    """``value`` as 3 positive finite floats, or a ValueError naming ``name``."""
    try:
        spacing = tuple(float(s) for s in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 positive voxel sizes in mm (Z, Y, X), got {value!r}.") from None
    if len(spacing) != 3 or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise ValueError(f"{name} must be 3 positive voxel sizes in mm (Z, Y, X), got {value!r}.")
    return spacing  # type: ignore[return-value]


def _shape3(value: Any, name: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(s) for s in value)
        exact = all(int(s) == s for s in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be 3 positive integers (Z, Y, X), got {value!r}.") from None
    if len(shape) != 3 or not exact or min(shape) < 1:
        raise ValueError(f"{name} must be 3 positive integers (Z, Y, X), got {value!r}.")
    return shape  # type: ignore[return-value]


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _modality_key(modality: str) -> str:
    """The preset name matching ``modality`` case-insensitively."""
    by_lower = {name.lower(): name for name in MODALITY_PRESETS}
    key = by_lower.get(str(modality).strip().lower())
    if key is None or key not in PLAUSIBLE_SPACING_MM:
        known = ", ".join(PLAUSIBLE_SPACING_MM)
        raise ValueError(f"Unknown modality {modality!r} for the voxel-size check; use one of: {known}.")
    return key


def resampled_shape(
    shape_zyx: Sequence[int], spacing_zyx: Sequence[float], target_spacing_zyx: Sequence[float]
) -> tuple[int, int, int]:
    """Shape of ``resample_to_spacing``'s output, without resampling (e.g. to check memory first).

    Parameters
    ----------
    shape_zyx : 3 ints
        Input shape (Z, Y, X).
    spacing_zyx, target_spacing_zyx : 3 floats
        Input and output voxel sizes in mm (Z, Y, X).

    Returns
    -------
    tuple of 3 int
        ``round(n * s / t)`` per axis (halves round up), at least 1: the same physical extent.
    """
    shape = _shape3(shape_zyx, "shape_zyx")
    spacing = _spacing3(spacing_zyx, "spacing_zyx")
    target = _spacing3(target_spacing_zyx, "target_spacing_zyx")
    # The epsilon keeps float error (n * s / t = 12.4999999 for an exact 12.5) from flipping a half down.
    return tuple(
        max(1, int(math.floor(n * s / t + 0.5 + 1e-6)))
        for n, s, t in zip(shape, spacing, target, strict=True)
    )


def _centred_origin_xyz(shape_zyx: Sequence[int], spacing_zyx: Sequence[float]) -> tuple[float, ...]:
    """Origin (ITK x, y, z) that puts the centre of the grid's box at 0 (see the module docstring)."""
    return tuple(-(n - 1) * s / 2.0 for n, s in zip(reversed(shape_zyx), reversed(spacing_zyx), strict=True))


def _check_array(array_zyx: Any, interpolation: str) -> np.ndarray:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}.")
    array = np.asarray(array_zyx)
    if array.ndim != 3 or array.size == 0:
        raise ValueError(
            f"Expected a non-empty 3D array (Z, Y, X), got shape {array.shape}; give one 3D volume."
        )
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise ValueError(f"Cannot resample an array of data type {array.dtype}; give a real-valued volume.")
    return array


def _resample(
    array: np.ndarray,
    spacing_zyx: tuple[float, float, float],
    out_shape_zyx: tuple[int, int, int],
    out_spacing_zyx: tuple[float, float, float],
    interpolation: str,
) -> np.ndarray:
    """Resample ``array`` onto a grid of ``out_shape_zyx`` x ``out_spacing_zyx`` with the same box centre."""
    out_dtype = array.dtype
    if interpolation == "linear":
        # Linear on an integer image would truncate the blend back to integers; float32 is what models eat.
        data = array.astype(np.float32, copy=False)
        out_dtype = np.dtype(np.float32)
    elif array.dtype == bool:
        data = array.astype(np.uint8)  # SimpleITK has no bool pixel type
    elif array.dtype == np.float16:
        data = array.astype(np.float32)
    else:
        data = array
    image = sitk.GetImageFromArray(np.ascontiguousarray(data))
    image.SetSpacing(tuple(reversed(spacing_zyx)))
    image.SetOrigin(_centred_origin_xyz(array.shape, spacing_zyx))

    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in reversed(out_shape_zyx)])
    resampler.SetOutputSpacing(tuple(reversed(out_spacing_zyx)))
    resampler.SetOutputOrigin(_centred_origin_xyz(out_shape_zyx, out_spacing_zyx))
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetTransform(sitk.Transform(3, sitk.sitkIdentity))
    resampler.SetInterpolator(_SITK_INTERPOLATORS[interpolation])
    # Output voxel centres within half a resampled voxel of the box edge can fall just outside the input's
    # box: repeat the edge instead of fading to a default 0 (a dark rim, or a lost label, at the border).
    resampler.SetUseNearestNeighborExtrapolator(True)
    resampler.SetDefaultPixelValue(0.0)
    out = sitk.GetArrayFromImage(resampler.Execute(image))
    return out.astype(out_dtype, copy=False)


# ----------------------------------------------------------------------------------------- resampling


def resample_to_spacing(
    array_zyx: np.ndarray,
    spacing_zyx: Sequence[float],
    target_spacing_zyx: Sequence[float],
    *,
    interpolation: str = "linear",
) -> np.ndarray:
    """Resample a volume to another voxel size, keeping its physical extent.

    Parameters
    ----------
    array_zyx : ndarray, shape (Z, Y, X)
        Image (linear) or label/class map (nearest). Any real dtype; bool allowed for nearest. Not modified.
    spacing_zyx : 3 floats
        Its voxel size in mm (Z, Y, X).
    target_spacing_zyx : 3 floats
        The voxel size to resample to, in mm (Z, Y, X), e.g. a model's training spacing.
    interpolation : {"linear", "nearest"}
        "linear" for intensities and probabilities, "nearest" for labels (values are only ever copied).

    Returns
    -------
    ndarray, shape ``resampled_shape(array_zyx.shape, spacing_zyx, target_spacing_zyx)``
        float32 for "linear"; the input's dtype for "nearest". The grid's box is centred on the input's
        (module docstring), so ``resample_to_grid`` brings a result back into alignment.

    Notes
    -----
    Downsampling is plain point sampling of the linear interpolant (no anti-aliasing blur): vessels thinner
    than the target voxel may be thinned or dropped, much as a coarser scan would partial-volume them.
    """
    array = _check_array(array_zyx, interpolation)
    spacing = _spacing3(spacing_zyx, "spacing_zyx")
    target = _spacing3(target_spacing_zyx, "target_spacing_zyx")
    out_shape = resampled_shape(array.shape, spacing, target)
    return _resample(array, spacing, out_shape, target, interpolation)


def resample_to_grid(
    array_zyx: np.ndarray,
    from_spacing_zyx: Sequence[float],
    to_shape_zyx: Sequence[int],
    to_spacing_zyx: Sequence[float],
    *,
    interpolation: str = "linear",
) -> np.ndarray:
    """Bring an array made on a resampled grid back onto the original input's exact grid.

    The inverse step of :func:`resample_to_spacing`: a probability map (``"linear"``, then threshold on the
    input grid) or a label/class map (``"nearest"``) computed on the model's grid comes back with exactly
    the input's shape, aligned voxel for voxel (both grids share their box centre).

    Parameters
    ----------
    array_zyx : ndarray, shape (Z', Y', X')
        The array on the resampled grid. Not modified.
    from_spacing_zyx : 3 floats
        Its voxel size in mm (Z, Y, X): the ``target_spacing_zyx`` given to ``resample_to_spacing``.
    to_shape_zyx : 3 ints
        The input's shape (Z, Y, X).
    to_spacing_zyx : 3 floats
        The input's voxel size in mm (Z, Y, X).
    interpolation : {"linear", "nearest"}

    Returns
    -------
    ndarray, shape ``to_shape_zyx``
        float32 for "linear"; the input's dtype for "nearest".

    Raises
    ------
    ValueError
        Besides bad arguments: when the two grids' physical extents differ by more than one resampled voxel
        on an axis, i.e. the array was not made from a volume of ``to_shape_zyx`` x ``to_spacing_zyx``.
    """
    array = _check_array(array_zyx, interpolation)
    from_spacing = _spacing3(from_spacing_zyx, "from_spacing_zyx")
    to_shape = _shape3(to_shape_zyx, "to_shape_zyx")
    to_spacing = _spacing3(to_spacing_zyx, "to_spacing_zyx")
    from_extent = [n * s for n, s in zip(array.shape, from_spacing, strict=True)]
    to_extent = [n * s for n, s in zip(to_shape, to_spacing, strict=True)]
    # resample_to_spacing's rounding leaves the boxes within half a resampled voxel (one when the size was
    # clamped to 1 voxel); more than that means the wrong shape or spacing was passed.
    if any(abs(a - b) > s * (1 + 1e-6) for a, b, s in zip(from_extent, to_extent, from_spacing, strict=True)):
        raise ValueError(
            f"The array covers {_fmt(from_extent)} mm (Z, Y, X) but the target grid covers {_fmt(to_extent)} mm; "
            "pass the shape and spacing of the volume that resample_to_spacing was given."
        )
    return _resample(array, from_spacing, to_shape, to_spacing, interpolation)


def resample_mask_to_spacing(
    mask_zyx: np.ndarray,
    spacing_zyx: Sequence[float],
    target_spacing_zyx: Sequence[float],
    *,
    interpolation: str = "nearest",
) -> np.ndarray:
    """A bool mask (e.g. the brain mask) on the grid of ``resample_to_spacing``.

    ``interpolation="nearest"`` copies voxels; ``"linear"`` interpolates the 0/1 mask and keeps voxels
    above 0.5, which gives smoother boundaries when upsampling.

    Returns
    -------
    ndarray of bool, shape ``resampled_shape(mask_zyx.shape, spacing_zyx, target_spacing_zyx)``
    """
    mask = np.asarray(mask_zyx) > 0
    out = resample_to_spacing(mask, spacing_zyx, target_spacing_zyx, interpolation=interpolation)
    return out > 0.5 if interpolation == "linear" else out.astype(bool, copy=False)


def resample_mask_to_grid(
    mask_zyx: np.ndarray,
    from_spacing_zyx: Sequence[float],
    to_shape_zyx: Sequence[int],
    to_spacing_zyx: Sequence[float],
    *,
    interpolation: str = "nearest",
) -> np.ndarray:
    """A bool mask made on a resampled grid, back on the input's grid (see :func:`resample_to_grid`).

    Returns
    -------
    ndarray of bool, shape ``to_shape_zyx``
        ``"nearest"`` copies voxels; ``"linear"`` keeps voxels where the interpolated 0/1 mask is > 0.5.
    """
    mask = np.asarray(mask_zyx) > 0
    out = resample_to_grid(mask, from_spacing_zyx, to_shape_zyx, to_spacing_zyx, interpolation=interpolation)
    return out > 0.5 if interpolation == "linear" else out.astype(bool, copy=False)


# ----------------------------------------------------------------------------------------- planning


@dataclass(frozen=True, kw_only=True)
class ResamplingPolicy:
    """When to resample an input to the model's training spacing.

    Rule: with ``r = s_in / s_model`` per axis (Z, Y, X), resample when ``|r - 1| > tolerance`` on any axis;
    only those axes change (the others keep the input's voxel size, sparing them a near-identity
    interpolation that only blurs). A ratio of exactly ``1 + tolerance`` is not resampled.

    Attributes
    ----------
    enabled : bool
        False never resamples; the plan still records the ratio and warns when it is beyond tolerance.
    tolerance : float
        Relative deviation allowed per axis, >= 0 (0.25: 25 %; 0 resamples any mismatch).
    """

    enabled: bool = True
    tolerance: float = 0.25

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, (bool, np.bool_)):
            raise ValueError(f"ResamplingPolicy.enabled must be True or False, got {self.enabled!r}.")
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)):
            raise ValueError(
                f"ResamplingPolicy.tolerance must be a number >= 0 (a fraction, 0.25 for 25 %), got {tol!r}."
            )
        if not math.isfinite(float(tol)) or float(tol) < 0:
            raise ValueError(
                f"ResamplingPolicy.tolerance must be a finite fraction >= 0 (0.25 for 25 %), got {tol!r}."
            )


@dataclass(frozen=True)
class ResamplingPlan:
    """Whether and how an input is resampled before prediction (made by :func:`plan_resampling`).

    Attributes
    ----------
    resample : bool
        True when the image is to be resampled to ``target_spacing_zyx`` before prediction.
    input_spacing_zyx : tuple of 3 float
        The input's voxel size in mm.
    target_spacing_zyx : tuple of 3 float
        The grid the model runs on, in mm: the model's spacing on the axes beyond tolerance, the input's on
        the others; equal to ``input_spacing_zyx`` when ``resample`` is False.
    reason : str
        One sentence saying why (for logs and summary.json).
    model_spacing_zyx : tuple of 3 float or None
        The model's training spacing in mm, None when the model declares none.
    ratio_zyx : tuple of 3 float or None
        ``input / model`` spacing per axis, None without a model spacing.
    enabled, tolerance : the policy that was applied.
    warning : str or None
        Set when resampling is off but the spacing is beyond tolerance (the model sees an unfamiliar scale).
    """

    resample: bool
    input_spacing_zyx: tuple[float, float, float]
    target_spacing_zyx: tuple[float, float, float]
    reason: str
    model_spacing_zyx: tuple[float, float, float] | None = None
    ratio_zyx: tuple[float, float, float] | None = None
    enabled: bool = True
    tolerance: float = 0.25
    warning: str | None = None

    @property
    def resampled_axes(self) -> tuple[str, ...]:
        """Names of the axes whose voxel size changes ("Z", "Y", "X")."""
        if not self.resample:
            return ()
        return tuple(
            a
            for a, s, t in zip(_AXES, self.input_spacing_zyx, self.target_spacing_zyx, strict=True)
            if s != t
        )

    def as_record(self) -> dict[str, Any]:
        """JSON-ready dict for summary.json (lists, floats, str, bool, None only)."""

        def listed(values: tuple[float, ...] | None) -> list[float] | None:
            return None if values is None else [float(v) for v in values]

        return {
            "resample": bool(self.resample),
            "enabled": bool(self.enabled),
            "tolerance": float(self.tolerance),
            "input_spacing_mm_zyx": listed(self.input_spacing_zyx),
            "model_spacing_mm_zyx": listed(self.model_spacing_zyx),
            "target_spacing_mm_zyx": listed(self.target_spacing_zyx),
            "ratio_zyx": None if self.ratio_zyx is None else [round(float(r), 6) for r in self.ratio_zyx],
            "resampled_axes": list(self.resampled_axes),
            "reason": self.reason,
            "warning": self.warning,
        }


def plan_resampling(
    spacing_zyx: Sequence[float],
    model_spacing_zyx: Sequence[float] | None,
    policy: ResamplingPolicy | None = None,
) -> ResamplingPlan:
    """Decide whether to resample an input of ``spacing_zyx`` for a model trained at ``model_spacing_zyx``.

    Parameters
    ----------
    spacing_zyx : 3 floats
        The input's voxel size in mm (Z, Y, X), after :func:`check_spacing_units`.
    model_spacing_zyx : 3 floats or None
        The model's training voxel size in mm (the registry's ``spacing_mm_zyx``); None: never resample.
    policy : ResamplingPolicy, optional
        Default ``ResamplingPolicy()`` (enabled, 25 % tolerance; see its docstring for the rule).

    Returns
    -------
    ResamplingPlan

    Raises
    ------
    ValueError
        Bad spacings, or (with resampling enabled) an axis more than ``MAX_RESAMPLING_FACTOR`` from the
        model's spacing, which is almost always a units error in the file rather than a real scan.
    """
    policy = ResamplingPolicy() if policy is None else policy
    if not isinstance(policy, ResamplingPolicy):
        raise ValueError(f"policy must be a ResamplingPolicy, got {type(policy).__name__}.")
    spacing = _spacing3(spacing_zyx, "spacing_zyx")
    tol = float(policy.tolerance)
    common = {"enabled": bool(policy.enabled), "tolerance": tol}
    if model_spacing_zyx is None:
        return ResamplingPlan(False, spacing, spacing, "the model declares no training spacing", **common)
    model = _spacing3(model_spacing_zyx, "model_spacing_zyx")
    ratio = tuple(s / m for s, m in zip(spacing, model, strict=True))
    beyond = tuple(abs(r - 1.0) > tol for r in ratio)
    common.update(model_spacing_zyx=model, ratio_zyx=ratio)
    ratio_text = f"input/model spacing ratio (Z, Y, X) = {_fmt(ratio)}"
    beyond_axes = ", ".join(a for a, b in zip(_AXES, beyond, strict=True) if b)

    if not policy.enabled:
        warning = None
        if any(beyond):
            warning = (
                f"The input spacing {_fmt(spacing)} mm differs from the model's training spacing {_fmt(model)} mm "
                f"by more than {tol * 100:g}% on {beyond_axes} ({ratio_text}) and resampling is off: vessels appear "
                "at a scale the model was not trained on; enable resampling or check the voxel size."
            )
        return ResamplingPlan(
            False, spacing, spacing, f"resampling is off; {ratio_text}", warning=warning, **common
        )
    if not any(beyond):
        reason = f"the input spacing is within {tol * 100:g}% of the model's training spacing on every axis ({ratio_text})"
        return ResamplingPlan(False, spacing, spacing, reason, **common)
    far = [
        a
        for a, r in zip(_AXES, ratio, strict=True)
        if not 1.0 / MAX_RESAMPLING_FACTOR <= r <= MAX_RESAMPLING_FACTOR
    ]
    if far:
        raise ValueError(
            f"The input spacing {_fmt(spacing)} mm is more than {MAX_RESAMPLING_FACTOR:g}x from the model's training "
            f"spacing {_fmt(model)} mm on {', '.join(far)}; this looks like a units error: {_OVERRIDE_HINT}."
        )
    # Only the axes beyond tolerance change: resampling an axis by 0.96 would only blur it.
    target = tuple(m if b else s for s, m, b in zip(spacing, model, beyond, strict=True))
    reason = (
        f"the input spacing differs from the model's training spacing by more than {tol * 100:g}% on {beyond_axes} "
        f"({ratio_text}); resampled to {_fmt(target)} mm"
    )
    return ResamplingPlan(True, spacing, target, reason, **common)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------- units check


@dataclass(frozen=True)
class SpacingDecision:
    """The voxel size to use for an input, after the plausibility check (:func:`check_spacing_units`).

    Attributes
    ----------
    spacing_zyx : tuple of 3 float
        Voxel size in mm to use (Z, Y, X): the file's, or the file's times ``factor`` when corrected.
    corrected : bool
        True when the file's numbers were reinterpreted in other units.
    factor : float
        What the file's numbers were multiplied by (1.0, 1e-3 for micrometres, 1e3 for metres).
    message : str
        A warning to show the user; empty when the spacing was plausible as given.
    original_spacing_zyx : tuple of 3 float
        The numbers as read (or given).
    modality : str
        The preset name the ranges came from.
    spacing_given : bool
        True when the spacing was the user's override (never corrected).
    plausible : bool
        Whether ``spacing_zyx`` is in the modality's range (False only for an implausible user override).
    """

    spacing_zyx: tuple[float, float, float]
    corrected: bool
    factor: float
    message: str
    original_spacing_zyx: tuple[float, float, float] | None = None
    modality: str = ""
    spacing_given: bool = False
    plausible: bool = True

    def as_record(self) -> dict[str, Any]:
        """JSON-ready dict for summary.json."""
        original = self.spacing_zyx if self.original_spacing_zyx is None else self.original_spacing_zyx
        return {
            "spacing_mm_zyx": [float(s) for s in self.spacing_zyx],
            "original_spacing_zyx": [float(s) for s in original],
            "corrected": bool(self.corrected),
            "factor": float(self.factor),
            "modality": self.modality,
            "spacing_given": bool(self.spacing_given),
            "plausible": bool(self.plausible),
            "message": self.message,
        }


def check_spacing_units(
    spacing_zyx: Sequence[float], modality: str, *, spacing_given: bool = False
) -> SpacingDecision:
    """Check that a voxel size is believable for ``modality``, fixing the common units mistakes.

    Real files are not always honest about units: the public MiniVess 2PM NIfTIs say units "unknown" and
    store micrometres (0.994, 0.994, 2.0), which every reader takes as millimetres, and a model would then
    be run 1000x off its scale. Ranges in mm (``PLAUSIBLE_SPACING_MM``): 2PM 5e-5 to 0.05 (0.05-50 um),
    TOF-MRA and SWI 0.05 to 5. When the numbers are implausible as mm on some axis but every axis is
    plausible once read as micrometres (x 1e-3) or metres (x 1e3), that reading is used with a warning.
    Only the metadata changes: this never makes anything resample by orders of magnitude.

    Parameters
    ----------
    spacing_zyx : 3 floats
        Voxel size (Z, Y, X) as read from the file, nominally in mm.
    modality : str
        "TOF-MRA", "SWI" or "2PM" (case-insensitive).
    spacing_given : bool
        True when the user gave the spacing (``--spacing``): it is never corrected, only warned about when
        implausible.

    Returns
    -------
    SpacingDecision

    Raises
    ------
    ValueError
        Not 3 positive finite numbers, an unknown modality, or a file spacing implausible in every reading.
    """
    spacing = _spacing3(spacing_zyx, "spacing_zyx")
    key = _modality_key(modality)
    low, high = PLAUSIBLE_SPACING_MM[key]

    def plausible(values: Sequence[float]) -> bool:
        return all(low <= v <= high for v in values)

    common = {"original_spacing_zyx": spacing, "modality": key, "spacing_given": bool(spacing_given)}
    expected = f"expected {low:g} to {high:g} mm per voxel"
    if plausible(spacing):
        return SpacingDecision(spacing, False, 1.0, "", **common)
    if spacing_given:
        message = (
            f"The given voxel size (Z, Y, X) = {_fmt(spacing)} mm is unusual for {key} ({expected}); it is used "
            "as given. Check that --spacing X Y Z is in millimetres."
        )
        return SpacingDecision(spacing, False, 1.0, message, plausible=False, **common)
    for factor, unit in _UNIT_READINGS[key]:
        # 12 significant digits drop float noise (0.994e-3 -> 0.000994, not 0.0009940000000000001).
        candidate = tuple(float(f"{s * factor:.12g}") for s in spacing)
        if plausible(candidate):
            message = (
                f"The file's voxel size (Z, Y, X) = {_fmt(spacing)} is implausible in mm for {key} ({expected}) but "
                f"plausible in {unit}: assuming the file stores {unit} and using {_fmt(candidate)} mm. "
                f"If that is wrong, {_OVERRIDE_HINT}."
            )
            return SpacingDecision(candidate, True, factor, message, **common)  # type: ignore[arg-type]
    raise ValueError(
        f"The file's voxel size (Z, Y, X) = {_fmt(spacing)} is implausible for {key} ({expected}) in mm, "
        f"micrometres or metres; {_OVERRIDE_HINT}."
    )
