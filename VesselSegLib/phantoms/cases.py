"""Ready-made phantom cases: a vessel tree rendered in one modality, with its labels and brain mask."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from VesselSegLib.phantoms.renderers import _render_swi, _render_tof, render_2pm
from VesselSegLib.phantoms.vascular_tree import VesselTree, make_vessel_tree

#: Typical voxel sizes (Z, Y, X) in mm, as everywhere in VesselSeg. 2PM: 2 x 1 x 1 um. With the default
#: ``radius_model="voxel"`` the tree scales with the spacing (capillaries 1-2 voxels across whatever the
#: units); ``radius_model="2pm-physical"`` draws capillaries of 2-4 um radius, 4-8 voxels across here.
MODALITY_DEFAULT_SPACING_ZYX: dict[str, tuple[float, float, float]] = {
    "TOF-MRA": (0.8, 0.5, 0.5),
    "SWI": (1.0, 0.5, 0.5),
    "2PM": (0.002, 0.001, 0.001),
}


@dataclass
class PhantomCase:
    """A synthetic image with its ground truth.

    Attributes
    ----------
    image : (Z, Y, X) float32 rendered image.
    class_map : (Z, Y, X) uint8 labels, 0 background, 1 artery, 2 vein, 3 micro.
    brain_mask : (Z, Y, X) bool, the brain ellipsoid (all True for 2PM).
    spacing_zyx : voxel size (Z, Y, X).
    modality : "TOF-MRA", "SWI" or "2PM".
    tree : the VesselTree the image was rendered from; ``tree.radius_model`` says how its radii were drawn.
    """

    image: np.ndarray
    class_map: np.ndarray
    brain_mask: np.ndarray
    spacing_zyx: tuple[float, float, float]
    modality: str
    tree: VesselTree

    @property
    def radius_model(self) -> str:
        """How the vessel radii were drawn, one of ``RADIUS_MODELS`` (recorded in the tree)."""
        return self.tree.radius_model


def make_phantom_case(
    modality: str,
    shape_zyx: tuple[int, int, int] = (64, 128, 128),
    *,
    spacing_zyx: tuple[float, float, float] | None = None,
    seed: int = 0,
    radius_model: str = "voxel",
) -> PhantomCase:
    """Grow a vessel tree and render it in ``modality``; deterministic for a given seed.

    Parameters
    ----------
    modality : str
        "TOF-MRA", "SWI" or "2PM".
    shape_zyx : tuple of int
        Volume shape (Z, Y, X), each >= 16.
    spacing_zyx : tuple of float or None
        Voxel size (Z, Y, X); None uses ``MODALITY_DEFAULT_SPACING_ZYX[modality]``.
    seed : int
        Seed for the tree and the rendering (the renderer uses a seed derived from it).
    radius_model : {"voxel", "2pm-physical"}
        Passed to ``make_vessel_tree``: radii relative to the voxel size, or a two-photon stack of mouse
        cortex in micrometres (needs a spacing with a finest voxel <= 0.02 mm, e.g. the 2PM default).

    Returns
    -------
    PhantomCase
    """
    if modality not in MODALITY_DEFAULT_SPACING_ZYX:
        valid = ", ".join(repr(m) for m in MODALITY_DEFAULT_SPACING_ZYX)
        raise ValueError(f"Unknown modality {modality!r}; use one of {valid}.")
    try:
        shape = tuple(int(s) for s in shape_zyx)
    except (TypeError, ValueError):
        raise ValueError(f"shape_zyx must be 3 integers >= 16, got {shape_zyx!r}.") from None
    if len(shape) != 3 or min(shape) < 16 or any(int(s) != s for s in shape_zyx):
        raise ValueError(f"shape_zyx must be 3 integers >= 16, got {shape_zyx!r}.")
    spacing = MODALITY_DEFAULT_SPACING_ZYX[modality] if spacing_zyx is None else tuple(spacing_zyx)
    tree = make_vessel_tree(shape, spacing_zyx=spacing, seed=seed, radius_model=radius_model)
    # Separate but deterministic stream for the renderer, so the image noise is not correlated with the tree.
    render_rng = np.random.default_rng([seed, 1])
    if modality == "TOF-MRA":
        image, brain_mask = _render_tof(tree, render_rng)
    elif modality == "SWI":
        image, brain_mask = _render_swi(tree, render_rng)
    else:
        image = render_2pm(tree, seed=int(render_rng.integers(2**31)))
        brain_mask = np.ones(shape, dtype=bool)
    return PhantomCase(
        image=image,
        class_map=tree.class_map,
        brain_mask=brain_mask,
        spacing_zyx=tree.spacing_zyx,
        modality=modality,
        tree=tree,
    )
