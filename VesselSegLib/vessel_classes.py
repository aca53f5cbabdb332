"""The vessel classes VesselSeg segments, with their label values and display colours.

One place defines them so that the class map written to disk (artery = 1, vein = 2, micro = 3),
the segments made in Slicer, the preview picture and the model registry all agree.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VesselClass:
    """A vessel class: its name, the label value it gets in a class map and its RGB colour (0-1)."""

    name: str
    label_value: int
    display_name: str
    color_rgb: tuple[float, float, float]


ARTERY = VesselClass("artery", 1, "Artery", (0.85, 0.12, 0.12))  # red
VEIN = VesselClass("vein", 2, "Vein", (0.15, 0.30, 0.90))  # blue
MICRO = VesselClass("micro", 3, "Micro-vessel", (1.00, 0.45, 0.75))  # pink

VESSEL_CLASSES: tuple[VesselClass, ...] = (ARTERY, VEIN, MICRO)
VESSEL_CLASS_BY_NAME: dict[str, VesselClass] = {c.name: c for c in VESSEL_CLASSES}
BACKGROUND_LABEL = 0


def vessel_class(name: str) -> VesselClass:
    """Return the vessel class called ``name``; raise ValueError listing the known names otherwise."""
    try:
        return VESSEL_CLASS_BY_NAME[name]
    except KeyError:
        known = ", ".join(VESSEL_CLASS_BY_NAME)
        raise ValueError(f"Unknown vessel class {name!r}; known classes are: {known}.") from None
