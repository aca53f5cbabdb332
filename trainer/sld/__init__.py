"""3D-SLD: 3D vessel segmentation trained without 3D labels, guided only by 2D vessel masks.

Chen, Wang and Wang, "3D Vessel Segmentation with Limited Guidance of 2D Structure-agnostic Vessel
Annotations" (arXiv 2302.03299); implementation notes in ``../shared/docs/methods/3D-SLD.md``.

Modules, one job each:

- :mod:`trainer.sld.losses`: the losses and schedules (eq. 2-18 as the notes reconstruct them);
- :mod:`trainer.sld.discriminator`: the 2D mask discriminator (four conv + two FC layers);
- :mod:`trainer.sld.guidance`: the bundled 2D guidance masks (fundus recipe, procedural trees) and mask folders;
- :mod:`trainer.sld.references`: Crop-and-Overlap reference masks and their label-free parameter choice;
- :mod:`trainer.sld.trainer`: the three-stage training loop.

The network (with its orientation-invariant blocks) lives in :mod:`VesselSegLib.models.sld`, because
inference needs it.
"""
