"""The end-to-end segmentation of one volume: check, normalise, predict, post-process.

``segment_image`` is what the Slicer module's Logic, the ``vesselseg`` command and the benchmarks all call.
It works on numpy arrays in (Z, Y, X) order with their voxel size, so it needs neither Slicer nor files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.sliding_window import predict_probabilities, resolve_device
from VesselSegLib.models.registry import ModelEntry, ModelRegistry
from VesselSegLib.postprocessing import build_class_map
from VesselSegLib.preprocessing import get_preset, normalize_intensity, validate_image, validate_mask
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME, vessel_class

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]


@dataclass
class SegmentationResult:
    """What :func:`segment_image` returns.

    Attributes
    ----------
    class_map : ndarray of uint8, shape (Z, Y, X)
        0 background, 1 artery, 2 vein, 3 micro (``VesselSegLib.vessel_classes``).
    probabilities : dict class name -> ndarray of float32, shape (Z, Y, X)
        Per-class probability (or vesselness for filters) in [0, 1]; empty when not kept.
    vessel_classes : tuple of str
        Classes the method produced, in label order.
    """

    class_map: np.ndarray
    probabilities: dict[str, np.ndarray]
    vessel_classes: tuple[str, ...]
    method: str
    method_display_name: str
    model_sha256: str | None
    device: str
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    preprocessing: dict = field(default_factory=dict)
    """What ``microscopy_preprocessing`` did (scale factor, slice medians, filter), JSON-ready; empty if off."""

    def binary_mask(self, class_name: str) -> np.ndarray:
        """Voxels labelled ``class_name``, shape (Z, Y, X), bool."""
        return self.class_map == vessel_class(class_name).label_value

    def volumes_mm3(self, spacing_zyx: Sequence[float]) -> dict[str, float]:
        """Segmented volume per produced class, mm^3."""
        voxel = float(np.prod(spacing_zyx))
        return {name: float(self.binary_mask(name).sum()) * voxel for name in self.vessel_classes}


def _report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    if progress is not None:
        progress(float(min(max(fraction, 0.0), 1.0)), message)


def _check_cancel(cancel: Callable[[], bool] | None) -> None:
    if cancel is not None and cancel():
        raise SegmentationCancelled("Segmentation cancelled by the user.")


def _validate_spacing(spacing_zyx: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing_zyx)
    if len(values) != 3 or not all(np.isfinite(values)) or min(values) <= 0:
        raise ValueError(f"Voxel spacing must be 3 positive numbers (mm), got {tuple(spacing_zyx)}.")
    return values


def _select_classes(entry: ModelEntry, requested: Sequence[str] | None, primary: str) -> tuple[str, ...]:
    produced = entry.produced_classes or (primary,)
    if requested is None:
        return tuple(produced)
    requested = tuple(requested)
    if not requested:
        raise ValueError("No vessel class selected; tick at least one of artery, vein, micro.")
    for name in requested:
        vessel_class(name)
    kept = tuple(name for name in produced if name in requested)
    if not kept:
        raise ValueError(
            f"Method {entry.name!r} produces {', '.join(produced)}, none of the requested classes "
            f"({', '.join(requested)}); choose another method or class."
        )
    return kept


MICROSCOPY_OPTIONS = ("intensity_scale", "subtract_slice_median", "median_size")


def _preprocess_microscopy(
    data: np.ndarray, options: Mapping[str, object], entry: ModelEntry
) -> tuple[np.ndarray, dict]:
    from VesselSegLib.preprocessing.microscopy import DEFAULT_SCALE_PERCENTILES, preprocess_microscopy_stack

    unknown = set(options) - set(MICROSCOPY_OPTIONS)
    if unknown:
        raise ValueError(
            f"Unknown microscopy preprocessing options {sorted(unknown)}; use {MICROSCOPY_OPTIONS}."
        )
    scale = options.get("intensity_scale")
    factor, reference, percentiles = None, None, DEFAULT_SCALE_PERCENTILES
    if scale == "auto":
        percentiles, reference = entry.intensity_reference()
    elif scale is not None:
        try:
            factor = float(scale)
        except (TypeError, ValueError):
            raise ValueError(f"intensity_scale must be a positive number or 'auto', got {scale!r}.") from None
    processed, record = preprocess_microscopy_stack(
        data,
        reference_percentiles=reference,
        percentiles=percentiles,
        scale_factor=factor,
        subtract_median=bool(options.get("subtract_slice_median", False)),
        median_size=options.get("median_size"),
    )
    return processed, record


def _predict_network(
    entry: ModelEntry,
    normalized: np.ndarray,
    *,
    patch_size_zyx: Sequence[int] | None,
    default_patch_zyx: Sequence[int],
    overlap: float | Sequence[float] | None,
    batch_size: int,
    device,
    progress: ProgressCallback | None,
    cancel: Callable[[], bool] | None,
) -> dict[str, np.ndarray]:
    """Class name -> probability map of one registry network over the whole (normalised) volume."""
    network = entry.load_network()
    patch = tuple(patch_size_zyx or entry.patch_size_zyx or default_patch_zyx)
    divisor = getattr(network, "size_divisor_zyx", (1, 1, 1))
    if any(p % d for p, d in zip(patch, divisor, strict=True)):
        raise ValueError(
            f"Patch size {patch} (Z, Y, X) must be a multiple of {divisor} along each axis for {entry.name}."
        )
    output = predict_probabilities(
        network,
        normalized,
        patch_size_zyx=patch,
        overlap=entry.overlap if overlap is None else overlap,
        batch_size=batch_size,
        device=device,
        progress=progress,
        cancel=cancel,
    )
    return {name: output[index] for index, name in enumerate(entry.vessel_classes)}


def segment_image(
    image: np.ndarray,
    spacing_zyx: Sequence[float],
    *,
    modality: str = "TOF-MRA",
    method: str | None = None,
    brain_mask: np.ndarray | None = None,
    vessel_classes: Sequence[str] | None = None,
    device: str = "auto",
    patch_size_zyx: Sequence[int] | None = None,
    overlap: float | Sequence[float] | None = None,
    batch_size: int = 2,
    thresholds: Mapping[str, float] | None = None,
    min_component_mm3: float | None = None,
    keep_probabilities: bool = True,
    progress: ProgressCallback | None = None,
    cancel: Callable[[], bool] | None = None,
    registry: ModelRegistry | None = None,
    companion_images: Mapping[str, np.ndarray] | None = None,
    microscopy_preprocessing: Mapping[str, object] | None = None,
) -> SegmentationResult:
    """Segment the vessels of one volume into artery, vein and micro-vessel classes.

    Parameters
    ----------
    image : ndarray, shape (Z, Y, X)
        Raw intensities, any real dtype. Never modified.
    spacing_zyx : 3 floats
        Voxel size in mm, array-axis order.
    modality : {"TOF-MRA", "SWI", "2PM"}
        Preset that sets the intensity normalisation (``VesselSegLib.preprocessing.presets``).
    method : str, optional
        A name from the model registry; default: the registry's default for ``modality``.
    brain_mask : ndarray of bool, shape (Z, Y, X), optional
        Region to segment; voxels outside are background. SWI inverts intensities inside it.
    vessel_classes : sequence of str, optional
        Classes to keep among those the method produces (default: all).
    device : {"auto", "cpu", "cuda", "mps"}
    patch_size_zyx, overlap : optional
        Sliding-window settings; default: the registry entry's.
    batch_size : int
    thresholds : mapping class -> float, optional
        Probability thresholds; default: the registry entry's, else 0.5.
    min_component_mm3 : float, optional
        Remove connected components below this volume; default: the modality preset's.
    keep_probabilities : bool
        Return the per-class probability maps (costs 4 bytes per voxel per class).
    progress : callable(fraction, message), optional
    cancel : callable() -> bool, optional
        Polled between steps and patches; True raises :class:`VesselSegLib.errors.SegmentationCancelled`.
    registry : ModelRegistry, optional
        Default: the shipped ``Resources/Models/models.json``.
    companion_images : mapping modality -> ndarray (Z, Y, X), optional
        Co-registered images of other modalities on the input's grid, for ensembles whose members read
        another contrast (VC-Net: artery from TOF-MRA, vein and micro from SWI). Other methods ignore them.
        Classes whose member has no image are skipped with a warning.
    microscopy_preprocessing : mapping, optional
        The 2PM paper's preprocessing for stacks from another microscope (section 4.2), applied before the
        preset's normalisation: ``{"intensity_scale": float | "auto" | None, "subtract_slice_median": bool,
        "median_size": int | None}``. The paper picks a linear intensity factor by hand to match a new
        microscope to its training data; "auto" estimates it from robust percentiles against the reference
        in the model's card (``ModelEntry.intensity_reference``) and records it in
        ``result.preprocessing``. Our presets then map each volume's robust percentiles onto a fixed range
        (``normalize_intensity``), which makes the segmentation the same for any positive factor: the
        factor is a diagnostic of how a new microscope's scale compares with the training data's, and kept
        for parity with the paper.

    Returns
    -------
    SegmentationResult
    """
    started = time.perf_counter()
    timings: dict[str, float] = {}
    preset = get_preset(modality)
    registry = registry or ModelRegistry.default()
    entry = registry.default_for(modality) if method is None else registry.get(method)
    if modality not in entry.modalities:
        raise ValueError(
            f"Method {entry.name!r} is not made for {modality} images (it handles {', '.join(entry.modalities)}); "
            f"pick another method or preset."
        )
    classes = _select_classes(entry, vessel_classes, preset.primary_vessel_class)
    spacing_zyx = _validate_spacing(spacing_zyx)
    data = validate_image(image)
    mask = None if brain_mask is None else validate_mask(brain_mask, data.shape)
    if mask is None and not preset.vessels_bright:
        logger.warning(
            "%s without a brain mask: intensities are inverted over the whole volume, so the dark air around "
            "the head becomes bright. Give a brain mask (e.g. from Slicer's Swiss Skull Stripper or HD-BET).",
            preset.name,
        )
    unknown = set(thresholds or {}) - set(VESSEL_CLASS_BY_NAME)
    if unknown:
        raise ValueError(
            f"Thresholds given for unknown classes {sorted(unknown)}; use artery, vein or micro."
        )
    if batch_size < 1:
        raise ValueError(f"Batch size must be >= 1, got {batch_size}.")
    target_device = resolve_device(device)
    _check_cancel(cancel)

    preprocessing_record: dict = {}
    if microscopy_preprocessing:
        data, preprocessing_record = _preprocess_microscopy(data, microscopy_preprocessing, entry)
    _report(progress, 0.0, f"Normalising ({preset.name})")
    tick = time.perf_counter()
    # Bright-vessel presets are normalised over the whole volume, as the trainer does for them; the mask then
    # only limits where vessels are searched. SWI needs the mask for its inversion (preprocessing.presets).
    normalized = normalize_intensity(data, preset, None if preset.vessels_bright else mask)
    del data
    timings["normalise_s"] = time.perf_counter() - tick
    _check_cancel(cancel)

    tick = time.perf_counter()
    if entry.kind == "network":
        all_probabilities = _predict_network(
            entry,
            normalized,
            patch_size_zyx=patch_size_zyx,
            default_patch_zyx=preset.default_patch_size_zyx,
            overlap=overlap,
            batch_size=batch_size,
            device=target_device,
            progress=lambda fraction, message: _report(progress, 0.05 + 0.85 * fraction, message),
            cancel=cancel,
        )
        probabilities = {name: all_probabilities[name] for name in classes}
        decisions = probabilities
        merged_thresholds = {**entry.thresholds, **(thresholds or {})}
    elif entry.kind == "ensemble":
        images = {preset.name: normalized}
        raw_companions = dict(companion_images or {})
        members = registry.members(entry)
        runnable = [
            name for name in classes if members[name].input_modality in {preset.name, *raw_companions}
        ]
        skipped = [name for name in classes if name not in runnable]
        if not runnable:
            needed = sorted({members[name].input_modality for name in classes})
            raise ValueError(
                f"{entry.display_name} reads {' and '.join(needed)} images for the classes asked for "
                f"({', '.join(classes)}); give the input as {needed[0]}, or add a co-registered companion "
                f"image of that modality (--companion {needed[0]}=PATH on the command line)."
            )
        if skipped:
            logger.warning(
                "%s: no %s image, so %s is not segmented; add a co-registered companion image to get it.",
                entry.display_name,
                " / ".join(sorted({members[name].input_modality for name in skipped})),
                ", ".join(skipped),
            )
        probabilities = {}
        merged_thresholds = {}
        for index, name in enumerate(runnable):
            member = members[name]
            member_modality = member.input_modality
            if member_modality not in images:
                companion = validate_image(raw_companions[member_modality])
                if companion.shape != normalized.shape:
                    raise ValueError(
                        f"The {member_modality} companion image has shape {companion.shape} but the input has "
                        f"{normalized.shape}; resample it onto the input's grid first."
                    )
                member_preset = get_preset(member_modality)
                images[member_modality] = normalize_intensity(
                    companion, member_preset, None if member_preset.vessels_bright else mask
                )
            start, stop = 0.05 + 0.85 * index / len(runnable), 0.05 + 0.85 * (index + 1) / len(runnable)
            member_probabilities = _predict_network(
                member,
                images[member_modality],
                patch_size_zyx=patch_size_zyx,
                default_patch_zyx=preset.default_patch_size_zyx,
                overlap=overlap,
                batch_size=batch_size,
                device=target_device,
                progress=lambda fraction, message, a=start, b=stop, n=member.display_name: _report(
                    progress, a + (b - a) * fraction, f"{n}: {message}"
                ),
                cancel=cancel,
            )
            probabilities[name] = member_probabilities[name]
            merged_thresholds[name] = member.thresholds.get(name, 0.5)
        del images
        classes = tuple(runnable)
        merged_thresholds.update(thresholds or {})
        decisions = probabilities
    else:
        from VesselSegLib.baselines.frangi import segment_frangi

        finest_mm = min(spacing_zyx)
        vesselness, segmentation = segment_frangi(
            normalized,
            spacing_zyx,
            threshold=(thresholds or {}).get(classes[0]),  # None: automatic (triangle) threshold
            sigmas_mm=tuple(k * finest_mm for k in preset.frangi_sigmas_voxels),
            bright_vessels=True,  # the preset already made vessels bright
            mask=mask,
            progress=lambda fraction, message: (
                _check_cancel(cancel),
                _report(progress, 0.05 + 0.85 * fraction, message),
            ),
        )
        probabilities = {classes[0]: vesselness}
        # The class map is built from Frangi's own binary decision; 0.5 splits the 0/1 mask.
        decisions = {classes[0]: segmentation.astype(np.float32)}
        merged_thresholds = {}
    timings["predict_s"] = time.perf_counter() - tick
    _check_cancel(cancel)

    _report(progress, 0.92, "Post-processing")
    tick = time.perf_counter()
    if mask is not None:
        for probability in probabilities.values():
            probability[~mask] = 0.0
    class_map = build_class_map(
        decisions,
        spacing_zyx=spacing_zyx,
        thresholds=merged_thresholds,
        min_component_mm3=preset.default_min_component_mm3
        if min_component_mm3 is None
        else min_component_mm3,
    )
    timings["postprocess_s"] = time.perf_counter() - tick
    _report(progress, 1.0, "Done")
    return SegmentationResult(
        class_map=class_map,
        probabilities={name: p.astype(np.float32, copy=False) for name, p in probabilities.items()}
        if keep_probabilities
        else {},
        vessel_classes=classes,
        method=entry.name,
        method_display_name=entry.display_name,
        model_sha256=entry.sha256
        if entry.kind != "ensemble"
        else ";".join(f"{member.name}={member.sha256}" for member in registry.members(entry).values()),
        device=str(target_device) if entry.kind != "vesselness" else "cpu",
        seconds=time.perf_counter() - started,
        timings=timings,
        preprocessing=preprocessing_record,
    )


__all__ = ["SegmentationResult", "segment_image"]
