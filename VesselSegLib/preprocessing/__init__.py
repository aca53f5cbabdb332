"""Input checks, modality presets and intensity normalisation."""

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
    "get_preset",
    "normalize_intensity",
    "validate_image",
    "validate_mask",
]
