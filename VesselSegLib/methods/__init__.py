"""Segmentation methods, one module per kind, and the table that maps a registry ``kind`` to its class.

Adding a kind of method is one file and a registry entry: write a class following
:class:`~VesselSegLib.methods.base.SegmentationMethod` (derive from ``MethodBase`` for the defaults) and
either add it to :data:`BUILTIN_KINDS` or name it in the entry itself,
``"kind": "my-kind", "implementation": "my_package.my_module:MyMethod"`` (see ``Testing/methods/``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from VesselSegLib.methods.base import (
    AdaptiveMethod,
    MethodBase,
    MethodImages,
    MethodPrediction,
    SegmentationMethod,
)

if TYPE_CHECKING:
    from VesselSegLib.models.registry import ModelEntry, ModelRegistry

#: Registry kind -> "module:Class" of its implementation.
BUILTIN_KINDS: dict[str, str] = {
    "network": "VesselSegLib.methods.networks:NetworkEnsemble",
    "ensemble": "VesselSegLib.methods.networks:NetworkEnsemble",
    "vesselness": "VesselSegLib.methods.vesselness:VesselnessFilter",
    "active-contour": "VesselSegLib.methods.active_contour:ActiveContour",
}


def method_class(entry: ModelEntry) -> type:
    """The class implementing ``entry``'s kind (its ``implementation`` if it names one)."""
    target = entry.implementation or BUILTIN_KINDS.get(entry.kind)
    if target is None:
        raise ValueError(
            f"Registry entry {entry.name!r} has kind {entry.kind!r}, which VesselSeg does not know; use one of "
            f'{", ".join(BUILTIN_KINDS)}, or name its class with "implementation": "module:Class".'
        )
    module_name, _, class_name = target.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"Registry entry {entry.name!r}: cannot load its method class {target!r} ({error}); check the "
            'entry\'s "implementation" and that its package is installed.'
        ) from None


def build_method(entry: ModelEntry, registry: ModelRegistry | None = None) -> SegmentationMethod:
    """The method object for a registry entry (no weights are loaded until it predicts)."""
    method = method_class(entry)(entry, registry)
    if not isinstance(method, SegmentationMethod):
        raise ValueError(
            f"{type(method).__name__} (registry entry {entry.name!r}) lacks part of the method protocol "
            "(entry, output_scale_zyx, supports_streaming, training_spacing_zyx, predict)."
        )
    return method


__all__ = [
    "BUILTIN_KINDS",
    "AdaptiveMethod",
    "MethodBase",
    "MethodImages",
    "MethodPrediction",
    "SegmentationMethod",
    "build_method",
    "method_class",
]
