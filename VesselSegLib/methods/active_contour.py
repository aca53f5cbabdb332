"""Morphological active contours without edges (Morph-ACWE) as a method: no training, one class.

The registry entry's ``settings`` are the keyword arguments of
:func:`VesselSegLib.baselines.morph_acwe.morph_acwe` (``iterations``, ``smoothing``, ``lambda1``,
``lambda2``, ``init``, ``average_last``, ``downsample_yx``); a ``"note"`` key is free text and ignored.
"""

from __future__ import annotations

import numpy as np

from VesselSegLib.methods.base import MethodBase, MethodImages, MethodPrediction

#: Settings an entry may give, with the values used when it does not (those of the shipped "morph-acwe").
DEFAULT_SETTINGS = {
    "iterations": 100,
    "smoothing": 1,
    "lambda1": 1.0,
    "lambda2": 2.0,
    "init": "checkerboard",
    "average_last": 5,
    "downsample_yx": 2,
}
_IGNORED_SETTINGS = ("note",)


class ActiveContour(MethodBase):
    """Registry kind ``"active-contour"``: Morph-ACWE on the normalised image, the bright phase is vessel.

    The class map is ACWE's own final level set; the probability map is its score (the fraction of the last
    few level sets a voxel was inside, see :func:`~VesselSegLib.baselines.morph_acwe.morph_acwe`). A
    threshold given in the request cuts that score instead.
    """

    def __init__(self, entry, registry=None) -> None:
        super().__init__(entry, registry)
        unknown = sorted(set(entry.settings) - set(DEFAULT_SETTINGS) - set(_IGNORED_SETTINGS))
        if unknown:
            raise ValueError(
                f"Registry entry {entry.name!r} has unknown settings {unknown}; an active contour takes "
                f"{', '.join(DEFAULT_SETTINGS)}."
            )
        self.settings = {
            **DEFAULT_SETTINGS,
            **{k: v for k, v in entry.settings.items() if k not in _IGNORED_SETTINGS},
        }

    def training_spacing_zyx(self, modality: str):
        return None  # nothing was trained: the contour runs on each volume's own grid

    def predict(self, images: MethodImages, plan, *, device, progress=None, cancel=None) -> MethodPrediction:
        from VesselSegLib.baselines.morph_acwe import morph_acwe

        class_name = plan.vessel_classes[0]
        # The brain mask, if any, is not given to ACWE (scikit-image's has no region of interest); the driver
        # zeroes both maps outside it afterwards.
        mask, score = morph_acwe(images.image, progress=progress, cancel=cancel, **self.settings)
        threshold = plan.request.thresholds.get(class_name)
        if threshold is None:  # ACWE's own decision; 0.5 splits the 0/1 mask
            thresholds, decisions = {class_name: 0.5}, {class_name: mask.astype(np.float32)}
        else:  # the request's threshold cuts the score map
            thresholds, decisions = {class_name: float(threshold)}, None
        return MethodPrediction(
            probabilities={class_name: score},
            vessel_classes=(class_name,),
            thresholds=thresholds,
            decisions=decisions,
            device="cpu",
        )


__all__ = ["DEFAULT_SETTINGS", "ActiveContour"]
