"""VesselSegLib: deep-learning blood-vessel segmentation of 3D images (MRA, SWI, two-photon microscopy).

Importable without 3D Slicer. The Slicer module ``VesselSeg`` and the ``vesselseg`` command both call it.
Folders, one job each:

- ``io``: reading and writing volumes (NIfTI, NRRD, MHA, TIFF stacks) with their geometry.
- ``preprocessing``: modality presets and intensity normalisation.
- ``models``: networks, the model registry and safetensors checkpoints.
- ``inference``: sliding-window inference and the end-to-end ``segment_volume`` pipeline.
- ``postprocessing``: thresholds, small-component removal, class maps.
- ``baselines``: non-learned methods (Hessian vesselness).
- ``phantoms``: synthetic vascular trees and modality renderers.
- ``metrics``: overlap, distance and topology metrics.
- ``cli``: the ``vesselseg`` command.
"""

__version__ = "0.1.0"
