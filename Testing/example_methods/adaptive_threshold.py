"""A method kind that adapts to each volume before predicting, within a time budget: the shape of UMIS-style
test-time adaptation. It refines a threshold by iterating Ridler-Calvard (isodata) steps until it converges
or the budget is spent, reporting progress and honouring cancel between steps."""

from __future__ import annotations

import time

import numpy as np

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.methods import MethodBase, MethodPrediction


class AdaptiveThreshold(MethodBase):
    default_adaptation_budget_s = 5.0

    def __init__(self, entry, registry=None) -> None:
        super().__init__(entry, registry)
        self.threshold: float | None = None

    def adapt(self, images, plan, *, budget_s, device, progress=None, cancel=None) -> dict:
        values = images.image[images.mask] if images.mask is not None else images.image.ravel()
        threshold, steps, started = float(values.mean()), 0, time.perf_counter()
        max_steps = int(self.entry.settings.get("max_steps", 50))
        while steps < max_steps and time.perf_counter() - started < budget_s:
            if cancel is not None and cancel():
                raise SegmentationCancelled("Segmentation cancelled by the user.")
            above, below = values[values > threshold], values[values <= threshold]
            updated = (
                0.5 * (float(above.mean()) + float(below.mean())) if above.size and below.size else threshold
            )
            steps += 1
            if progress is not None:
                progress(steps / max_steps, f"Adapting the threshold ({steps} steps)")
            if abs(updated - threshold) < 1e-6:
                break
            threshold = updated
        self.threshold = threshold
        return {"threshold": threshold, "steps": steps, "seconds": time.perf_counter() - started}

    def predict(self, images, plan, *, device, progress=None, cancel=None) -> MethodPrediction:
        if self.threshold is None:
            raise RuntimeError("AdaptiveThreshold.predict needs adapt() first (the driver calls it).")
        class_name = plan.vessel_classes[0]
        # A probability-like map centred on the adapted threshold, so 0.5 cuts where adaptation decided.
        probability = np.clip(0.5 + (images.image - self.threshold), 0.0, 1.0).astype(np.float32)
        return MethodPrediction(
            probabilities={class_name: probability},
            vessel_classes=(class_name,),
            thresholds={class_name: 0.5},
        )
