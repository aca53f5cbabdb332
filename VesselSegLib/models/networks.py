"""Network classes by architecture name, so checkpoints and the registry can rebuild a model from data."""

from __future__ import annotations

from typing import Any

from torch import nn

from VesselSegLib.models.rose import ROSENet
from VesselSegLib.models.sld import SLDNet
from VesselSegLib.models.umis import UMISNet
from VesselSegLib.models.unet3d import UNet3D
from VesselSegLib.models.vcnet import VCNet
from VesselSegLib.models.vnet import VNet3D

# Architecture name (as written in checkpoints and models.json) -> class. Later models (V-Net, ...)
# register here.
NETWORK_CLASSES: dict[str, type[nn.Module]] = {
    "ROSENet": ROSENet,
    "SLDNet": SLDNet,
    "UMISNet": UMISNet,
    "UNet3D": UNet3D,
    "VCNet": VCNet,
    "VNet3D": VNet3D,
}


def build_network(architecture: str, arguments: dict[str, Any]) -> nn.Module:
    """Construct the network ``architecture`` with keyword ``arguments``.

    Raises
    ------
    ValueError
        Unknown architecture (the message lists the known ones) or arguments it does not accept.
    """
    try:
        network_class = NETWORK_CLASSES[architecture]
    except KeyError:
        known = ", ".join(sorted(NETWORK_CLASSES))
        raise ValueError(
            f"Unknown network architecture {architecture!r}; known architectures: {known}."
        ) from None
    try:
        return network_class(**arguments)
    except TypeError as error:
        raise ValueError(f"Arguments {arguments} do not fit architecture {architecture!r}: {error}") from None
