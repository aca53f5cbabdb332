"""Synthetic vascular phantoms: branching vessel trees and TOF-MRA / SWI / two-photon renderers."""

from VesselSegLib.phantoms.cases import MODALITY_DEFAULT_SPACING_ZYX, PhantomCase, make_phantom_case
from VesselSegLib.phantoms.renderers import render_2pm, render_swi, render_tof_mra
from VesselSegLib.phantoms.vascular_tree import (
    RADIUS_MODELS,
    TubeSegment,
    VesselTree,
    make_vessel_tree,
    rasterize_segments,
    tree_on_grid,
)

__all__ = [
    "MODALITY_DEFAULT_SPACING_ZYX",
    "PhantomCase",
    "RADIUS_MODELS",
    "TubeSegment",
    "VesselTree",
    "make_phantom_case",
    "make_vessel_tree",
    "rasterize_segments",
    "tree_on_grid",
    "render_2pm",
    "render_swi",
    "render_tof_mra",
]
