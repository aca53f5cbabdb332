"""Pictures of results: the preview image written next to every segmentation."""

from VesselSegLib.visualization.preview import render_preview, write_preview

__all__ = ["render_preview", "write_preview"]
