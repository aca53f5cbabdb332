"""Input checks, modality presets and intensity normalisation."""

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
from VesselSegLib.preprocessing.validation import validate_image, validate_mask

__all__ = [
    "MODALITY_PRESETS",
    "ModalityPreset",
    "estimate_intensity_scale",
    "get_preset",
    "median_filter_3d",
    "normalize_intensity",
    "preprocess_microscopy_stack",
    "scale_intensity",
    "subtract_slice_median",
    "validate_image",
    "validate_mask",
]
