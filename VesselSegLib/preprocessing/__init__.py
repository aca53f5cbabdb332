"""Input checks, modality presets, intensity normalisation and resampling to a model's spacing."""

from VesselSegLib.preprocessing.low_resolution import simulate_low_resolution
from VesselSegLib.preprocessing.microscopy import (
    estimate_intensity_scale,
    median_filter_3d,
    preprocess_microscopy_stack,
    scale_intensity,
    subtract_slice_median,
)
from VesselSegLib.preprocessing.presets import (
    MODALITY_PRESETS,
    ModalityPreset,
    get_preset,
    normalize_intensity,
)
from VesselSegLib.preprocessing.resampling import (
    ResamplingPlan,
    ResamplingPolicy,
    SpacingDecision,
    check_spacing_units,
    plan_resampling,
    resample_mask_to_grid,
    resample_mask_to_spacing,
    resample_to_grid,
    resample_to_spacing,
)
from VesselSegLib.preprocessing.validation import validate_image, validate_mask

__all__ = [
    "MODALITY_PRESETS",
    "ModalityPreset",
    "ResamplingPlan",
    "ResamplingPolicy",
    "SpacingDecision",
    "check_spacing_units",
    "estimate_intensity_scale",
    "get_preset",
    "median_filter_3d",
    "normalize_intensity",
    "plan_resampling",
    "preprocess_microscopy_stack",
    "resample_mask_to_grid",
    "resample_mask_to_spacing",
    "resample_to_grid",
    "resample_to_spacing",
    "scale_intensity",
    "simulate_low_resolution",
    "subtract_slice_median",
    "validate_image",
    "validate_mask",
]
