"""Hessian vesselness (Frangi) as a method: no training, one class (the preset's main vessel class)."""

from __future__ import annotations

import numpy as np

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.methods.base import MethodBase, MethodImages, MethodPrediction


class VesselnessFilter(MethodBase):
    """Registry kind ``"vesselness"``: Frangi's filter at the preset's scales, triangle threshold by default."""

    def training_spacing_zyx(self, modality: str):
        return None  # scales are set in voxels of each volume: nothing to resample to

    def predict(self, images: MethodImages, plan, *, device, progress=None, cancel=None) -> MethodPrediction:
        from VesselSegLib.baselines.frangi import segment_frangi

        class_name = plan.vessel_classes[0]
        finest_mm = min(images.spacing_zyx)

        def report(fraction: float, message: str) -> None:
            if cancel is not None and cancel():
                raise SegmentationCancelled("Segmentation cancelled by the user.")
            if progress is not None:
                progress(fraction, message)

        vesselness, segmentation = segment_frangi(
            images.image,
            images.spacing_zyx,
            threshold=plan.request.thresholds.get(class_name),  # None: automatic (triangle) threshold
            sigmas_mm=tuple(k * finest_mm for k in images.preset.frangi_sigmas_voxels),
            bright_vessels=True,  # the preset already made vessels bright
            mask=images.mask,
            progress=report,
        )
        # The class map comes from Frangi's own binary decision; 0.5 splits the 0/1 mask.
        return MethodPrediction(
            probabilities={class_name: vesselness},
            vessel_classes=(class_name,),
            thresholds={class_name: 0.5},
            decisions={class_name: segmentation.astype(np.float32)},
            device="cpu",
        )


__all__ = ["VesselnessFilter"]
