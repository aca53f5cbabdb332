"""Non-learned vessel segmentation baselines: multiscale Hessian vesselness (Frangi et al. 1998)."""

from VesselSegLib.baselines.frangi import default_sigmas_mm, hessian_vesselness, segment_frangi

__all__ = ["default_sigmas_mm", "hessian_vesselness", "segment_frangi"]
