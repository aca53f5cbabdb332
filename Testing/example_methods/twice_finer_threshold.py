"""A method kind whose output grid is 2x finer than the input's: the shape of ROSE-style super-resolution.

It thresholds the normalised intensity and predicts on a grid twice as fine along each axis, linearly
interpolated (SciPy), so the driver, the files, the Slicer nodes and the metrics must all handle an output
grid that is not the input's. Registry entry::

    {"name": "twice-finer", "kind": "twice-finer-threshold",
     "implementation": "example_methods.twice_finer_threshold:TwiceFinerThreshold",
     "settings": {"threshold": 0.5}, "modalities": ["TOF-MRA"], "vessel_classes": ["artery"]}
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from VesselSegLib.methods import MethodBase, MethodPrediction


class TwiceFinerThreshold(MethodBase):
    output_scale_zyx = (2, 2, 2)

    def predict(self, images, plan, *, device, progress=None, cancel=None) -> MethodPrediction:
        # order=1 zoom by exactly 2 puts fine voxel i' at coarse index (i' + 0.5) / 2 - 0.5 only up to the
        # border convention; grid_mode=True makes SciPy use that voxel-box convention exactly.
        fine = ndimage.zoom(images.image, 2, order=1, grid_mode=True, mode="nearest")
        probability = np.clip(fine, 0.0, 1.0).astype(np.float32)
        class_name = plan.vessel_classes[0]
        threshold = plan.request.thresholds.get(class_name, self.entry.settings.get("threshold", 0.5))
        if progress is not None:
            progress(1.0, "Thresholded on the 2x grid")
        return MethodPrediction(
            probabilities={class_name: probability},
            vessel_classes=(class_name,),
            thresholds={class_name: float(threshold)},
        )
