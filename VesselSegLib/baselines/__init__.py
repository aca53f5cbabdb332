"""Non-learned vessel segmentation baselines: multiscale Hessian vesselness (Frangi et al. 1998) and
morphological active contours without edges (Morph-ACWE, Márquez-Neila et al. 2014)."""

from VesselSegLib.baselines.frangi import default_sigmas_mm, hessian_vesselness, segment_frangi
from VesselSegLib.baselines.morph_acwe import morph_acwe

__all__ = ["default_sigmas_mm", "hessian_vesselness", "morph_acwe", "segment_frangi"]
