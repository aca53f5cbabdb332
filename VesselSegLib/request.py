"""One segmentation request: every option of a run, checked once, built by every entry point.

The ``vesselseg`` command, the Slicer module's Logic and widget, ``vesselseg stream`` and the benchmarks all
build a :class:`SegmentationRequest`; nothing else parses options. Its fields are checked when it is made
(types, ranges, known names; modality presets match case-insensitively), and :meth:`SegmentationRequest.resolve`
checks it once more against the model registry (the method exists and handles the modality, it produces a
requested class, the patch suits the network) and returns the :class:`SegmentationPlan` the driver runs.

The request says *what to do*; the images themselves (input, brain mask, companions, reference) travel beside
it as :class:`VesselSegLib.inference.inputs.SegmentationInputs`, so that a request is small, hashable and
written whole to ``summary.json`` (:meth:`SegmentationRequest.as_record`).

Example
-------
>>> request = SegmentationRequest(modality="tof-mra", vessel_classes=("artery",), thresholds={"artery": 0.4})
>>> request.modality
'TOF-MRA'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from VesselSegLib.preprocessing.presets import MODALITY_PRESETS, get_preset
from VesselSegLib.preprocessing.resampling import ResamplingPolicy
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

if TYPE_CHECKING:  # the registry is read without PyTorch; methods import it when they run
    from VesselSegLib.methods.base import SegmentationMethod
    from VesselSegLib.models.registry import ModelEntry, ModelRegistry

DEVICES = ("auto", "cpu", "cuda", "mps")
#: "auto": float16 autocast on CUDA; on a CPU, bfloat16 autocast where a measured probe finds it faster
#: (``VesselSegLib.inference.runtime``: CPUs without native bfloat16 run it many times slower), else float32;
#: a named precision is used as asked (float16 on CUDA only). Only models verified for a reduced precision
#: (registry entry ``reduced_precision``) run in it.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
#: "pytorch" (the default); "auto": OpenVINO for a float32 network on the CPU where installed and measured
#: faster at equal output on this machine (``VesselSegLib.inference.onnx_backend``), else PyTorch; "openvino"
#: forced. Opt-in: a process that had run an OpenVINO measurement once died of a segmentation fault on a
#: later Ctrl+C in the tests (not understood yet), and PyTorch never did.
BACKENDS = ("auto", "pytorch", "openvino")
ALL_CLASSES = tuple(VESSEL_CLASS_BY_NAME)
#: Longest test-time adaptation a request may ask for (s); the UMIS notes cap it at 10 minutes.
MAX_ADAPTATION_BUDGET_S = 600.0


def canonical_modality(name: str) -> str:
    """The preset name matching ``name`` case-insensitively ("tof-mra" -> "TOF-MRA"); ValueError otherwise."""
    if isinstance(name, str):
        for preset_name in MODALITY_PRESETS:
            if preset_name.lower() == name.strip().lower():
                return preset_name
    return get_preset(name).name  # raises, listing the presets


def _positive_int_triple(value: Any, what: str) -> tuple[int, int, int] | None:
    if value is None:
        return None
    try:
        triple = tuple(int(v) for v in value)
        exact = all(float(v) == int(v) for v in value)
    except (TypeError, ValueError):
        triple, exact = (), False
    if len(triple) != 3 or not exact or min(triple) < 1:
        raise ValueError(f"{what} must be 3 positive whole numbers of voxels (Z, Y, X), got {value!r}.")
    return triple  # type: ignore[return-value]


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} must be a finite number, got {value!r}.")
    return number


@dataclass(frozen=True, kw_only=True)
class MicroscopyOptions:
    """The 2PM paper's preprocessing for stacks from another microscope (section 4.2), before normalisation.

    Attributes
    ----------
    intensity_scale : float > 0, "auto" or None
        Multiply intensities by this factor (the paper's manual matching), or estimate it against the model
        card's training percentiles ("auto"). Percentile normalisation absorbs any linear factor, so it is
        recorded as a diagnostic (``VesselSegLib.preprocessing.microscopy``).
    subtract_slice_median : bool
        Subtract each Z slice's median (uneven illumination along depth).
    median_size : int >= 2 or None
        Width in voxels of a 3D median filter (erases 1-2-voxel vessels: use on noisy stacks only).
    """

    intensity_scale: float | str | None = None
    subtract_slice_median: bool = False
    median_size: int | None = None

    def __post_init__(self) -> None:
        scale = self.intensity_scale
        if isinstance(scale, str):
            scale = _finite(scale, "The intensity scale") if scale.strip().lower() != "auto" else "auto"
        elif scale is not None:
            scale = _finite(scale, "The intensity scale")
        if isinstance(scale, float) and scale <= 0:
            raise ValueError(f"The intensity scale must be a positive factor or 'auto', got {scale!r}.")
        object.__setattr__(self, "intensity_scale", scale)
        if self.median_size is not None:
            size = _finite(self.median_size, "The median filter size")
            if size != int(size) or size < 2:
                raise ValueError(f"The median filter size must be a whole number >= 2 voxels, got {size!r}.")
            object.__setattr__(self, "median_size", int(size))
        object.__setattr__(self, "subtract_slice_median", bool(self.subtract_slice_median))

    @property
    def active(self) -> bool:
        """True when any step is on."""
        return self.intensity_scale is not None or self.subtract_slice_median or self.median_size is not None


@dataclass(frozen=True, kw_only=True)
class SegmentationRequest:
    """Everything a segmentation run is asked to do, checked when made.

    Attributes
    ----------
    modality : {"TOF-MRA", "SWI", "2PM"}, case-insensitive
        Intensity preset (``VesselSegLib.preprocessing.presets``); stored under its canonical name.
    method : str or None
        Registry name (``vesselseg methods``); None: the registry's default for the modality.
    vessel_classes : tuple of {"artery", "vein", "micro"}, or None
        Classes to keep among those the method produces; None: all of them.
    thresholds : mapping class -> float in [0, 1]
        Probability thresholds overriding the method's (default 0.5).
    patch_size_zyx : 3 ints or None
        Sliding-window size in voxels; None: the method's.
    overlap : float in [0, 1) or None
        Window overlap fraction; None: the method's.
    batch_size : int >= 1
        Windows per forward pass.
    device : {"auto", "cpu", "cuda", "mps"}
    precision : {"auto", "float32", "bfloat16", "float16"}
        Autocast precision of the networks; "auto" measures this machine once (see :data:`PRECISIONS`).
    backend : {"auto", "pytorch", "openvino"}
        What runs the networks (see :data:`BACKENDS`); OpenVINO is an optional install.
    test_time_augmentation : bool
        Average the network's probabilities over in-plane flips (Y, X, YX): ~4x the inference time
        (``VesselSegLib.inference.test_time_augmentation``). Networks only: other methods refuse it.
    min_component_mm3 : float >= 0 or None
        Remove connected components smaller than this (mm^3); None: the preset's; 0 keeps all.
    microscopy : MicroscopyOptions
    resampling : ResamplingPolicy
        Resample to the model's training spacing when the input's differs by more than its tolerance.
    companion_modalities : tuple of str
        Modalities of the co-registered companion images that come with the input (VC-Net reads SWI beside
        TOF-MRA); the images are in ``SegmentationInputs``.
    keep_probabilities : bool
        Return (and write, or add as volumes) the per-class probability maps.
    create_models : bool
        Build 3D surface models of the segments (Slicer model nodes; files from the command line).
    create_graph : bool
        Extract the vessel graph (centrelines, lengths, radii) of the segmented vessels.
    adaptation_budget_s : float in [0, 600] or None
        Wall-clock seconds for methods that adapt to the volume before predicting (test-time training);
        0: no adaptation; None: the method's default. Other methods ignore it.
    """

    modality: str = "TOF-MRA"
    method: str | None = None
    vessel_classes: tuple[str, ...] | None = None
    thresholds: Mapping[str, float] = field(default_factory=dict)
    patch_size_zyx: tuple[int, int, int] | None = None
    overlap: float | None = None
    batch_size: int = 2
    device: str = "auto"
    precision: str = "auto"
    backend: str = "pytorch"
    test_time_augmentation: bool = False
    min_component_mm3: float | None = None
    microscopy: MicroscopyOptions = field(default_factory=MicroscopyOptions)
    resampling: ResamplingPolicy = field(default_factory=ResamplingPolicy)
    companion_modalities: tuple[str, ...] = ()
    keep_probabilities: bool = False
    create_models: bool = True
    create_graph: bool = False
    adaptation_budget_s: float | None = None

    def __post_init__(self) -> None:
        set_field = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_field("modality", canonical_modality(self.modality))
        if self.method is not None and (not isinstance(self.method, str) or not self.method.strip()):
            raise ValueError(
                f"The method must be a registry name (see `vesselseg methods`), got {self.method!r}."
            )
        if self.vessel_classes is not None:
            classes = (self.vessel_classes,) if isinstance(self.vessel_classes, str) else self.vessel_classes
            classes = tuple(dict.fromkeys(str(name).strip().lower() for name in classes))
            if not classes:
                raise ValueError("No vessel class selected; choose at least one of artery, vein, micro.")
            unknown = [name for name in classes if name not in VESSEL_CLASS_BY_NAME]
            if unknown:
                raise ValueError(f"Unknown vessel classes {unknown}; choose among {', '.join(ALL_CLASSES)}.")
            set_field("vessel_classes", classes)
        set_field("thresholds", MappingProxyType(self._checked_thresholds(self.thresholds)))
        set_field("patch_size_zyx", _positive_int_triple(self.patch_size_zyx, "The patch size"))
        if self.overlap is not None:
            overlap = _finite(self.overlap, "The window overlap")
            if not 0.0 <= overlap < 1.0:
                raise ValueError(f"The window overlap must be in [0, 1), got {overlap!r}.")
            set_field("overlap", overlap)
        if (
            isinstance(self.batch_size, bool)
            or _finite(self.batch_size, "The batch size") != int(self.batch_size)
            or int(self.batch_size) < 1
        ):
            raise ValueError(f"The batch size must be a whole number >= 1, got {self.batch_size!r}.")
        set_field("batch_size", int(self.batch_size))
        device = str(self.device).strip().lower()
        if device not in DEVICES and not device.startswith("cuda:"):
            raise ValueError(
                f"Unknown device {self.device!r}; choose one of {', '.join(DEVICES)} (or cuda:N)."
            )
        set_field("device", device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}.")
        if self.backend not in BACKENDS:
            raise ValueError(f"Unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}.")
        if not isinstance(self.test_time_augmentation, bool):
            raise ValueError(
                f"test_time_augmentation must be True or False, got {self.test_time_augmentation!r}."
            )
        if self.min_component_mm3 is not None:
            size = _finite(self.min_component_mm3, "The minimum component volume")
            if size < 0:
                raise ValueError(f"The minimum component volume must be >= 0 mm^3, got {size!r}.")
            set_field("min_component_mm3", size)
        if not isinstance(self.microscopy, MicroscopyOptions):
            raise ValueError("microscopy must be a MicroscopyOptions (VesselSegLib.request).")
        if not isinstance(self.resampling, ResamplingPolicy):
            raise ValueError("resampling must be a ResamplingPolicy (VesselSegLib.preprocessing.resampling).")
        companions = tuple(canonical_modality(name) for name in self.companion_modalities)
        if len(set(companions)) != len(companions):
            raise ValueError(f"Each companion modality may be given once, got {list(companions)}.")
        if self.modality in companions:
            raise ValueError(f"A companion image cannot have the input's own modality ({self.modality}).")
        set_field("companion_modalities", companions)
        for flag in ("keep_probabilities", "create_models", "create_graph"):
            set_field(flag, bool(getattr(self, flag)))
        if self.adaptation_budget_s is not None:
            budget = _finite(self.adaptation_budget_s, "The adaptation budget")
            if not 0 <= budget <= MAX_ADAPTATION_BUDGET_S:
                raise ValueError(
                    f"The adaptation budget must be between 0 s (off) and {MAX_ADAPTATION_BUDGET_S:g} s, "
                    f"got {budget!r}."
                )
            set_field("adaptation_budget_s", budget)

    @staticmethod
    def _checked_thresholds(thresholds: Mapping[str, float] | None) -> dict[str, float]:
        checked = {}
        for name, value in dict(thresholds or {}).items():
            key = str(name).strip().lower()
            if key not in VESSEL_CLASS_BY_NAME:
                raise ValueError(f"Threshold given for unknown class {name!r}; use {', '.join(ALL_CLASSES)}.")
            number = _finite(value, f"The {key} threshold")
            if not 0.0 <= number <= 1.0:
                raise ValueError(f"The {key} threshold must be within [0, 1], got {number!r}.")
            checked[key] = number
        return checked

    def replace(self, **changes: Any) -> SegmentationRequest:
        """A copy with some fields changed (checked again)."""
        return replace(self, **changes)

    def as_record(self) -> dict[str, Any]:
        """JSON-ready fields, for ``summary.json`` and the Logic's outputs."""
        record = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, MicroscopyOptions | ResamplingPolicy):
                value = asdict(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            record[item.name] = value
        return record

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> SegmentationRequest:
        """The request :meth:`as_record` wrote (JSON lists back to tuples, the nested options rebuilt).

        Fields absent from ``record`` take their defaults; an unknown field raises ValueError, as does any
        value the request refuses.
        """
        if not isinstance(record, Mapping):
            raise ValueError(f"A segmentation request record must be a mapping, got {type(record).__name__}.")
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise ValueError(
                f"Unknown segmentation request fields {unknown}; known: {', '.join(sorted(known))}."
            )
        values = dict(record)
        for name, options_class in (("microscopy", MicroscopyOptions), ("resampling", ResamplingPolicy)):
            options = values.get(name)
            if isinstance(options, Mapping):
                option_names = {item.name for item in fields(options_class)}
                if set(options) - option_names:
                    raise ValueError(
                        f"Unknown {name} options {sorted(set(options) - option_names)}; "
                        f"known: {', '.join(sorted(option_names))}."
                    )
                values[name] = options_class(**options)
        for name in ("vessel_classes", "patch_size_zyx", "companion_modalities"):
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)

    def resolve(self, registry: ModelRegistry | None = None) -> SegmentationPlan:
        """Check the request against the model registry and decide every default.

        Raises
        ------
        ValueError
            Unknown method, a method not made for the modality, no requested class produced, a bad patch,
        test-time augmentation asked of a method that has no network to flip (methods that average over flips
        set ``supports_test_time_augmentation = True``).
        """
        from VesselSegLib.methods import build_method
        from VesselSegLib.models.registry import ModelRegistry

        registry = registry or ModelRegistry.default()
        preset = get_preset(self.modality)
        entry = (
            registry.default_for(self.modality)
            if self.method is None
            else registry.get_for_modality(self.method, self.modality)
        )
        if self.modality not in entry.modalities:
            raise ValueError(
                f"Method {entry.name!r} is not made for {self.modality} images (it handles "
                f"{', '.join(entry.modalities)}); pick another method or modality preset."
            )
        produced = entry.produced_classes or (preset.primary_vessel_class,)
        requested = self.vessel_classes or produced
        classes = tuple(name for name in produced if name in requested)
        if not classes:
            raise ValueError(
                f"Method {entry.name!r} segments {', '.join(produced)} on {self.modality} images, none of the "
                f"requested classes ({', '.join(requested)}); choose another method or class."
            )
        method = build_method(entry, registry)
        if self.test_time_augmentation and not getattr(method, "supports_test_time_augmentation", False):
            raise ValueError(
                f"Method {entry.name!r} ({entry.kind}) has no test-time augmentation (it averages a network's "
                "flipped predictions); turn it off or pick a network method."
            )
        return SegmentationPlan(
            request=self,
            entry=entry,
            method=method,
            vessel_classes=classes,
            min_component_mm3=preset.default_min_component_mm3
            if self.min_component_mm3 is None
            else self.min_component_mm3,
            default_patch_size_zyx=preset.default_patch_size_zyx,
        )


@dataclass(frozen=True, kw_only=True)
class SegmentationPlan:
    """A request checked against the registry, with every default decided: what the driver runs.

    Attributes
    ----------
    request : SegmentationRequest
    entry : ModelEntry
        The registry entry of the method.
    method : SegmentationMethod
        The method object of the entry's kind (``VesselSegLib.methods``); loads its weights when it runs.
    vessel_classes : tuple of str
        Classes the run produces, in label order.
    min_component_mm3 : float
    default_patch_size_zyx : 3 ints
        The preset's patch, for networks whose entry names none.
    """

    request: SegmentationRequest
    entry: ModelEntry
    method: SegmentationMethod
    vessel_classes: tuple[str, ...]
    min_component_mm3: float
    default_patch_size_zyx: tuple[int, int, int]

    def patch_size_for(self, entry: ModelEntry) -> tuple[int, int, int]:
        """The window of a network entry: the request's, else the entry's, else the preset's."""
        return tuple(self.request.patch_size_zyx or entry.patch_size_zyx or self.default_patch_size_zyx)

    def overlap_for(self, entry: ModelEntry) -> float:
        return entry.overlap if self.request.overlap is None else self.request.overlap

    def thresholds_for(self, entry: ModelEntry) -> dict[str, float]:
        """The entry's thresholds, overridden by the request's."""
        return {**entry.thresholds, **self.request.thresholds}

    def check_brain_mask_given(self, mask_given: bool) -> None:
        """Refuse a run without a brain mask when the method was trained on skull-stripped volumes.

        Asked by the pipeline (the CLI, scripts) and by the Slicer Logic before Apply, with one message.
        """
        if self.entry.needs_brain_mask and not mask_given:
            raise ValueError(
                f"Method {self.entry.name!r} was trained on skull-stripped volumes and needs a brain mask; give "
                "one (--mask, or the panel's brain mask), e.g. from HD-BET or Slicer's Swiss Skull Stripper."
            )


__all__ = [
    "DEVICES",
    "PRECISIONS",
    "BACKENDS",
    "MicroscopyOptions",
    "SegmentationPlan",
    "SegmentationRequest",
    "canonical_modality",
]
