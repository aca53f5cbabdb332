"""Networks that segment on a grid finer than the input's, and super-resolve the input (ROSE, issue 13).

A registry entry of kind ``"network"`` whose ``"implementation"`` is ``VesselSegLib.methods.super_resolution:
SuperResolutionNetwork`` runs window by window like any network, but its network's output is
``output_scale_zyx`` times the window along each axis (ROSE: (2, 2, 2), ``VesselSegLib.models.rose``), so
the probabilities come on the finer grid covering the input's box (``methods.base.refined_index_to_world``:
spacing / 2, origin moved by -0.25 voxel). A network with an SR stream also gives the super-resolved input,
blended from the same forward passes (``inference.sliding_window.predict_outputs``), as the auxiliary image
``"super_resolved"`` (``MethodPrediction.images``): the command line writes ``super_resolved.nrrd``, the
Slicer Logic adds a volume "<input> super-resolved". Example entry::

    {"name": "rose-tof", "kind": "network",
     "implementation": "VesselSegLib.methods.super_resolution:SuperResolutionNetwork",
     "architecture": "ROSENet", "arguments": {...}, "weights": "rose-tof.safetensors", "sha256": "...",
     "modalities": ["TOF-MRA"], "vessel_classes": ["artery"], "patch_size_zyx": [8, 32, 32]}

``patch_size_zyx`` is the window on the input's (low-resolution) grid.
"""

from __future__ import annotations

from VesselSegLib.methods.networks import NetworkEnsemble

#: Name of the super-resolved input among a prediction's auxiliary images.
SUPER_RESOLVED_IMAGE = "super_resolved"


def architecture_output_scale(entry) -> tuple[int, int, int]:
    """``output_scale_zyx`` of the entry's architecture class (a class attribute: no network is built and no
    weights are read); (1, 1, 1) when the class does not declare one."""
    from VesselSegLib.models.networks import NETWORK_CLASSES  # imports torch

    network_class = NETWORK_CLASSES.get(entry.architecture)
    if network_class is None:
        known = ", ".join(sorted(NETWORK_CLASSES))
        raise ValueError(
            f"{entry.name!r}: unknown network architecture {entry.architecture!r}; known architectures: {known}."
        )
    return tuple(int(s) for s in getattr(network_class, "output_scale_zyx", (1, 1, 1)))


class SuperResolutionNetwork(NetworkEnsemble):
    """A single network whose output grid is finer than its input's (ROSE), with its super-resolved image.

    Not streamed: ``vesselseg stream`` writes tiles on the input's grid.
    """

    def __init__(self, entry, registry=None) -> None:
        super().__init__(entry, registry)
        if entry.kind != "network":
            raise ValueError(
                f'{entry.name!r}: a super-resolution method is a single network (kind "network"), '
                f"not {entry.kind!r}."
            )
        self.supports_streaming = False
        try:
            scale = architecture_output_scale(entry)
        except ImportError:  # no PyTorch yet: the module offers to install it before anything runs
            scale = (2, 2, 2)
        if scale == (1, 1, 1):
            raise ValueError(
                f"{entry.name!r}: architecture {entry.architecture!r} predicts on its input's grid; a "
                "super-resolution entry needs a network with an output_scale_zyx such as ROSENet's (2, 2, 2). "
                'Use "kind": "network" without an "implementation" for it.'
            )
        self.output_scale_zyx = scale

    def predict_member(self, network, image, **options):
        """Probabilities and, when the network has an SR stream, the super-resolved image, in one pass."""
        from VesselSegLib.inference.sliding_window import (
            has_super_resolved_image,
            output_scale_of,
            predict_outputs,
        )

        if output_scale_of(network) != self.output_scale_zyx:
            raise ValueError(
                f"{self.entry.name!r}: the network's output scale {output_scale_of(network)} differs from "
                f"its architecture's {self.output_scale_zyx}."
            )
        with_image = has_super_resolved_image(network)
        outputs = predict_outputs(
            network,
            image,
            outputs=("probabilities", "super_resolved") if with_image else ("probabilities",),
            **options,
        )
        images = {SUPER_RESOLVED_IMAGE: outputs["super_resolved"]} if with_image else {}
        return outputs["probabilities"], images


__all__ = ["SUPER_RESOLVED_IMAGE", "SuperResolutionNetwork", "architecture_output_scale"]
