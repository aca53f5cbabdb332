"""Unsupervised segmentation (UMIS): the label-free loss and the training steps it drives.

- ``loss.py``: the UMIS loss, eqs. (17)-(26) (active contour, ranking, tightness, reconstruction, mean-variance,
  entropy terms);
- ``adaptation.py``: one label-free training step (shared with the trainer) and "adapt to this stack",
  test-time training within a time budget.

The network is ``VesselSegLib.models.umis``; its morphological layers ``VesselSegLib.models.morphology``.
"""
