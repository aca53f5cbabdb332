"""Thresholds, small-component removal and class maps."""

from VesselSegLib.postprocessing.cleanup import DEFAULT_THRESHOLD, build_class_map, remove_small_components

__all__ = ["DEFAULT_THRESHOLD", "build_class_map", "remove_small_components"]
