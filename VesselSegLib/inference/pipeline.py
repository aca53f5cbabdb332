"""The one driver of a segmentation: check, normalise, resample, (adapt,) predict, bring back, post-process.

:func:`run_segmentation` is what every entry point ends in: the ``vesselseg`` command and the Slicer Logic
(through :class:`~VesselSegLib.inference.inputs.SegmentationInputs` built from files or nodes), the
benchmarks, and :func:`segment_image` for plain arrays. The steps, in order:

1. the request is resolved against the registry (``SegmentationRequest.resolve``) and every image checked
   (finite, non-constant, mask/companions/reference on the input's grid);
2. the voxel size is checked for plausible units (``preprocessing.resampling.check_spacing_units``);
3. 2PM microscopy preprocessing, then each image's preset normalisation;
4. when the input's spacing differs from the model's training spacing by more than the policy's tolerance,
   the images are resampled to it (SimpleITK) and the probabilities brought back, linearly, onto the input's
   exact grid (or the method's finer output grid) before thresholding;
5. an adaptive method adapts within its time budget, then the method predicts;
6. probabilities outside the mask are zeroed, thresholds and small-component removal give the class map.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.inputs import SegmentationInputs
from VesselSegLib.io.volume import Volume
from VesselSegLib.methods.base import AdaptiveMethod, MethodImages, refined_index_to_world
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.postprocessing import build_class_map
from VesselSegLib.preprocessing import get_preset, normalize_intensity
from VesselSegLib.preprocessing.resampling import (
    check_spacing_units,
    plan_resampling,
    resample_to_grid,
    resample_to_spacing,
)
from VesselSegLib.request import SegmentationPlan, SegmentationRequest
from VesselSegLib.vessel_classes import vessel_class

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
#: Shares of the progress bar: preparation, prediction (adaptation takes part of it), post-processing.
_PREDICT_START, _PREDICT_STOP = 0.05, 0.9


@dataclass
class SegmentationResult:
    """What :func:`run_segmentation` returns.

    Attributes
    ----------
    class_map : ndarray of uint8, shape (Z', Y', X')
        0 background, 1 artery, 2 vein, 3 micro (``VesselSegLib.vessel_classes``), on the output grid: the
        input's, or ``output_scale_zyx`` times finer for a super-resolution method.
    probabilities : dict class name -> ndarray of float32, shape (Z', Y', X')
        Per-class probability (or vesselness for filters) in [0, 1]; empty unless asked for.
    vessel_classes : tuple of str
        Classes produced, in label order.
    spacing_zyx : 3 floats, mm
        Voxel size of the output grid used for every measurement (volumes, graph, metrics), after any
        correction of implausible units.
    output_scale_zyx : 3 ints
        Output voxels per input voxel along each axis.
    """

    class_map: np.ndarray
    probabilities: dict[str, np.ndarray]
    vessel_classes: tuple[str, ...]
    method: str
    method_display_name: str
    model_sha256: str | None
    device: str
    seconds: float
    spacing_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)
    modality: str = "TOF-MRA"
    """The input's modality preset (canonical name)."""
    output_scale_zyx: tuple[int, int, int] = (1, 1, 1)
    thresholds: dict[str, float] = field(default_factory=dict)
    """The threshold each class map was cut at (the method's, overridden by the request's)."""
    timings: dict[str, float] = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    """What the microscopy preprocessing did (scale factor, slice medians, filter), JSON-ready; empty if off."""
    resampling: dict = field(default_factory=dict)
    """Whether and why the images were resampled to the model's spacing (``ResamplingPlan.as_record``)."""
    spacing_check: dict = field(default_factory=dict)
    """The voxel-size plausibility decision (``SpacingDecision.as_record``)."""
    adaptation: dict = field(default_factory=dict)
    """What an adaptive method's test-time adaptation did; empty for other methods."""
    runtime: dict = field(default_factory=dict)
    """How the networks ran: precision chosen for this machine, why, the probe's timings and the precision
    each model ran in (``VesselSegLib.inference.runtime``); empty for methods without a network."""
    images: dict[str, np.ndarray] = field(default_factory=dict)
    """Named auxiliary images of the method on the output grid, float32 (Z', Y', X'): ``"super_resolved"``
    for ROSE (``MethodPrediction.images``); brought back from the model's grid like the probabilities, not
    masked; empty for most methods. :meth:`output_volume` gives each its geometry."""

    def binary_mask(self, class_name: str) -> np.ndarray:
        """Voxels labelled ``class_name``, shape (Z', Y', X'), bool."""
        return self.class_map == vessel_class(class_name).label_value

    def volumes_mm3(self, spacing_zyx: Sequence[float] | None = None) -> dict[str, float]:
        """Segmented volume per produced class, mm^3 (default: the output grid's spacing)."""
        voxel = float(np.prod(self.spacing_zyx if spacing_zyx is None else spacing_zyx))
        return {name: float(self.binary_mask(name).sum()) * voxel for name in self.vessel_classes}

    def evaluate_against(self, reference: np.ndarray) -> tuple[dict, bool]:
        """Scores against reference labels on the input's grid (a class map or a binary vessel mask).

        The reference is brought to the output grid by repeating voxels when the output is finer.

        Returns
        -------
        (metrics, scored_as_binary)
            As ``VesselSegLib.metrics.evaluate_against_reference``.
        """
        from VesselSegLib.metrics import evaluate_against_reference

        reference = np.asarray(reference)
        for axis, factor in enumerate(self.output_scale_zyx):
            reference = reference.repeat(factor, axis) if factor != 1 else reference
        if reference.shape != self.class_map.shape:
            raise ValueError(
                f"The reference has shape {reference.shape} on the output grid, the result {self.class_map.shape}; "
                "give reference labels on the input's grid."
            )
        return evaluate_against_reference(
            self.class_map, reference, self.spacing_zyx, class_names=self.vessel_classes
        )

    def output_volume(self, input_volume: Volume, array: np.ndarray | None = None) -> Volume:
        """``array`` (default the class map) as a Volume on the output grid of ``input_volume``.

        The same grid as the input's for most methods; for super-resolution the voxels are
        ``output_scale_zyx`` times smaller and cover the same physical box (origin shifted by half the
        difference of voxel sizes).
        """
        array = self.class_map if array is None else array
        if self.output_scale_zyx == (1, 1, 1):
            return input_volume.with_array(array)
        refined = refined_index_to_world(input_volume.grid.ijk_to_lps(), self.output_scale_zyx)
        spacing_xyz = tuple(float(s) for s in np.linalg.norm(refined[:3, :3], axis=0))
        return Volume(
            array, spacing_xyz, tuple(float(o) for o in refined[:3, 3]), input_volume.direction.copy()
        )


def _report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(float(min(max(fraction, 0.0), 1.0)), message)


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise SegmentationCancelled("Segmentation cancelled by the user.")


def _scaled(progress: ProgressCallback | None, start: float, stop: float) -> ProgressCallback | None:
    if progress is None:
        return None
    return lambda fraction, message: _report(progress, start + (stop - start) * fraction, message)


def _microscopy_preprocess(data: np.ndarray, plan: SegmentationPlan) -> tuple[np.ndarray, dict]:
    from VesselSegLib.preprocessing.microscopy import DEFAULT_SCALE_PERCENTILES, preprocess_microscopy_stack

    options = plan.request.microscopy
    factor, reference, percentiles = None, None, DEFAULT_SCALE_PERCENTILES
    if options.intensity_scale == "auto":
        percentiles, reference = plan.entry.intensity_reference()
    elif options.intensity_scale is not None:
        factor = float(options.intensity_scale)
    return preprocess_microscopy_stack(
        data,
        reference_percentiles=reference,
        percentiles=percentiles,
        scale_factor=factor,
        subtract_median=options.subtract_slice_median,
        median_size=options.median_size,
    )


def _normalised_images(
    inputs: SegmentationInputs, plan: SegmentationPlan, spacing_zyx, timings: dict
) -> tuple[MethodImages, dict]:
    """The input and companions, checked and normalised by their presets, with the mask."""
    preset = get_preset(plan.request.modality)
    data = inputs.checked_image()
    mask = inputs.checked_mask()
    if mask is None and not preset.vessels_bright:
        logger.warning(
            "%s without a brain mask: intensities are inverted over the whole volume, so the dark air around "
            "the head becomes bright. Give a brain mask (e.g. from Slicer's Swiss Skull Stripper or HD-BET).",
            preset.name,
        )
    plan.check_brain_mask_given(mask is not None)
    skull_stripped = plan.entry.needs_brain_mask
    preprocessing_record: dict = {}
    if plan.request.microscopy.active:
        data, preprocessing_record = _microscopy_preprocess(data, plan)
    tick = time.perf_counter()
    # Bright-vessel presets are normalised over the whole volume, as the trainer does for them; the mask then
    # only limits where vessels are searched. SWI needs the mask for its inversion (preprocessing.presets),
    # and a network trained on skull-stripped volumes sees the brain alone, the outside zeroed.
    in_mask = skull_stripped or not preset.vessels_bright
    normalised = normalize_intensity(data, preset, mask if in_mask else None)
    del data
    companions = {}
    for modality in inputs.companions:
        companion_preset = get_preset(modality)
        companions[modality] = normalize_intensity(
            inputs.checked_companion(modality),
            companion_preset,
            None if companion_preset.vessels_bright else mask,
        )
    timings["normalise_s"] = time.perf_counter() - tick
    images = MethodImages(
        image=normalised, spacing_zyx=tuple(spacing_zyx), preset=preset, mask=mask, companions=companions
    )
    return images, preprocessing_record


def _resampled(images: MethodImages, target_spacing_zyx) -> MethodImages:
    """The images on the model's grid: intensities linearly, the mask by nearest neighbour."""
    to_spacing = lambda array, how: resample_to_spacing(  # noqa: E731
        array, images.spacing_zyx, target_spacing_zyx, interpolation=how
    )
    return MethodImages(
        image=to_spacing(images.image, "linear"),
        spacing_zyx=tuple(float(s) for s in target_spacing_zyx),
        preset=images.preset,
        mask=None if images.mask is None else to_spacing(images.mask.astype(np.uint8), "nearest") > 0,
        companions={name: to_spacing(array, "linear") for name, array in images.companions.items()},
    )


def _adapt_and_predict(plan, images: MethodImages, device: str, timings: dict, progress, cancel):
    """Adapt (adaptive methods, within their budget), then predict; returns (prediction, adaptation record)."""
    tick = time.perf_counter()
    adaptation: dict = {}
    predict_start = _PREDICT_START
    if isinstance(plan.method, AdaptiveMethod):
        budget = plan.request.adaptation_budget_s
        if budget is None:
            budget = plan.method.default_adaptation_budget_s
        predict_start = (_PREDICT_START + _PREDICT_STOP) / 2
        adaptation = plan.method.adapt(
            images,
            plan,
            budget_s=budget,
            device=device,
            progress=_scaled(progress, _PREDICT_START, predict_start),
            cancel=cancel,
        )
        timings["adapt_s"] = time.perf_counter() - tick
        _check_cancel(cancel)
    prediction = plan.method.predict(
        images, plan, device=device, progress=_scaled(progress, predict_start, _PREDICT_STOP), cancel=cancel
    )
    timings["predict_s"] = time.perf_counter() - tick - timings.get("adapt_s", 0.0)
    return prediction, adaptation


def _on_output_grid(
    prediction, plan, images: MethodImages, model_images: MethodImages, scale, resampled: bool
):
    """(probabilities, decisions, auxiliary images) on the input's output grid; the maps zero outside the mask.

    The prediction is on the model's grid (times the method's output scale); when the images were resampled,
    each map and image is brought back linearly onto the input's exact grid (times the scale). The auxiliary
    images (a super-resolved input) are pictures, not vessel maps: the mask does not cut them.
    """
    model_shape = tuple(n * k for n, k in zip(model_images.image.shape, scale, strict=True))
    output_shape = tuple(n * k for n, k in zip(images.image.shape, scale, strict=True))

    def back(name: str, array: np.ndarray) -> np.ndarray:
        if array.shape != model_shape:
            raise RuntimeError(
                f"{plan.entry.name} returned a {name} map of shape {array.shape}, expected {model_shape}."
            )
        if not resampled:
            return array
        return resample_to_grid(
            array,
            tuple(s / k for s, k in zip(model_images.spacing_zyx, scale, strict=True)),
            output_shape,
            tuple(s / k for s, k in zip(images.spacing_zyx, scale, strict=True)),
            interpolation="linear",
        )

    probabilities = {name: back(name, array) for name, array in prediction.probabilities.items()}
    for name in prediction.images:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
            raise RuntimeError(
                f"{plan.entry.name} returned an image named {name!r}; image names are lower-case letters, "
                "digits and underscores (they become file and node names)."
            )
    auxiliary = {
        name: np.asarray(back(f"{name} image", array), dtype=np.float32)
        for name, array in prediction.images.items()
    }
    decisions = (
        probabilities
        if prediction.decisions is None
        else {name: back(name, array) for name, array in prediction.decisions.items()}
    )
    mask = images.mask
    if mask is not None:
        for axis, factor in enumerate(scale):  # nearest neighbour onto a finer output grid
            mask = mask.repeat(factor, axis) if factor != 1 else mask
        for maps in (probabilities, decisions):
            for array in maps.values():
                array[~mask] = 0.0
    return probabilities, decisions, auxiliary


def run_segmentation(
    inputs: SegmentationInputs,
    request: SegmentationRequest | SegmentationPlan,
    *,
    registry: ModelRegistry | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
) -> SegmentationResult:
    """Segment the vessels of ``inputs.image`` as ``request`` asks.

    Parameters
    ----------
    inputs : SegmentationInputs
        The input volume with its geometry, and optionally a brain mask, companions and a reference (the
        reference is only checked here; scoring is ``VesselSegLib.metrics.evaluate_against_reference``).
    request : SegmentationRequest or SegmentationPlan
        What to do; a request is resolved against ``registry`` first.
    registry : ModelRegistry, optional
        Default: the shipped ``Resources/Models/models.json``.
    progress : callable(fraction in [0, 1], message), optional
    cancel : callable() -> bool, optional
        Polled between steps and windows; True raises :class:`VesselSegLib.errors.SegmentationCancelled`.

    Returns
    -------
    SegmentationResult

    Raises
    ------
    ValueError
        A bad image or option, with a message that names the problem and the fix.
    SegmentationCancelled
    """
    from VesselSegLib.inference.sliding_window import resolve_device  # imports torch

    started = time.perf_counter()
    timings: dict[str, float] = {}
    plan = request if isinstance(request, SegmentationPlan) else request.resolve(registry)
    request = plan.request
    inputs.check(request.companion_modalities)
    spacing = check_spacing_units(
        inputs.image.spacing_zyx, request.modality, spacing_given=inputs.spacing_given
    )
    if spacing.corrected:
        logger.warning("%s", spacing.message)
    device = str(resolve_device(request.device))
    _check_cancel(cancel)

    _report(progress, 0.0, f"Normalising ({request.modality})")
    images, preprocessing_record = _normalised_images(inputs, plan, spacing.spacing_zyx, timings)
    resampling = plan_resampling(
        images.spacing_zyx, plan.method.training_spacing_zyx(request.modality), request.resampling
    )
    if resampling.resample:
        tick = time.perf_counter()
        _report(progress, 0.02, f"Resampling to the model's voxel size {resampling.target_spacing_zyx} mm")
        model_images = _resampled(images, resampling.target_spacing_zyx)
        timings["resample_s"] = time.perf_counter() - tick
    else:
        model_images = images
    _check_cancel(cancel)

    prediction, adaptation = _adapt_and_predict(plan, model_images, device, timings, progress, cancel)
    _check_cancel(cancel)

    _report(progress, 0.92, "Post-processing")
    tick = time.perf_counter()
    scale = tuple(int(s) for s in plan.method.output_scale_zyx)
    output_spacing = tuple(s / k for s, k in zip(images.spacing_zyx, scale, strict=True))
    probabilities, decisions, auxiliary_images = _on_output_grid(
        prediction, plan, images, model_images, scale, resampling.resample
    )
    class_map = build_class_map(
        decisions,
        spacing_zyx=output_spacing,
        thresholds=prediction.thresholds,
        min_component_mm3=plan.min_component_mm3,
    )
    timings["postprocess_s"] = time.perf_counter() - tick
    _report(progress, 1.0, "Done")
    return SegmentationResult(
        class_map=class_map,
        probabilities={name: np.asarray(p, dtype=np.float32) for name, p in probabilities.items()}
        if request.keep_probabilities
        else {},
        vessel_classes=prediction.vessel_classes,
        method=plan.entry.name,
        method_display_name=plan.entry.display_name,
        model_sha256=prediction.model_sha256,
        device=prediction.device,
        seconds=time.perf_counter() - started,
        spacing_zyx=output_spacing,
        modality=request.modality,
        output_scale_zyx=scale,
        thresholds=dict(prediction.thresholds),
        timings=timings,
        preprocessing=preprocessing_record,
        resampling=resampling.as_record(),
        spacing_check=spacing.as_record(),
        adaptation=adaptation,
        runtime=dict(prediction.runtime),
        images=auxiliary_images,
    )


def segment_image(
    image: np.ndarray,
    spacing_zyx: Sequence[float],
    request: SegmentationRequest | None = None,
    *,
    brain_mask: np.ndarray | None = None,
    companion_images: Mapping[str, np.ndarray] | None = None,
    registry: ModelRegistry | None = None,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    **request_fields,
) -> SegmentationResult:
    """:func:`run_segmentation` for plain arrays on an axis-aligned grid of voxel size ``spacing_zyx`` (mm).

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Raw intensities, any real dtype. Never modified.
    spacing_zyx : 3 floats
        Voxel size in mm, array-axis order.
    request : SegmentationRequest, optional
        What to do; or give its fields as keywords (``modality="2PM", method="vnet-2pm"``), which build one.
        Default: ``SegmentationRequest()`` (TOF-MRA, the registry's default method).
    brain_mask : ndarray of bool, shape (Z, Y, X), optional
    companion_images : mapping modality -> ndarray (Z, Y, X), optional
        Co-registered images of other contrasts on the same grid (VC-Net reads SWI beside TOF-MRA).
    registry, progress, cancel
        As for :func:`run_segmentation`.
    """
    values = tuple(float(s) for s in spacing_zyx)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise ValueError(f"Voxel spacing must be 3 positive numbers (mm), got {tuple(spacing_zyx)}.")
    if request is not None and request_fields:
        raise ValueError(f"Give either a request or its fields, not both (got {sorted(request_fields)}).")
    request = request or SegmentationRequest(**request_fields)
    grid = lambda array: Volume(np.asarray(array), spacing_xyz=tuple(reversed(values)))  # noqa: E731
    companions = {name: grid(array) for name, array in (companion_images or {}).items()}
    if companions and not request.companion_modalities:
        request = request.replace(companion_modalities=tuple(companions))
    inputs = SegmentationInputs(
        image=grid(image),
        mask=None if brain_mask is None else grid(brain_mask),
        companions=companions,
        spacing_given=True,  # the caller states the spacing: never reinterpret its units
    )
    return run_segmentation(inputs, request, registry=registry, progress=progress, cancel=cancel)


__all__ = ["SegmentationResult", "run_segmentation", "segment_image"]
