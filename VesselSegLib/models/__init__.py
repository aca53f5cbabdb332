"""Networks, the model registry and safetensors checkpoints.

Names are imported lazily (PEP 562) so that reading the registry does not import PyTorch: inside Slicer,
the module lists its methods and offers to install PyTorch before any network is built.
"""

from importlib import import_module

_EXPORTS = {
    "load_checkpoint": "VesselSegLib.models.checkpoint",
    "save_checkpoint": "VesselSegLib.models.checkpoint",
    "sha256_of_file": "VesselSegLib.models.checkpoint",
    "NETWORK_CLASSES": "VesselSegLib.models.networks",
    "build_network": "VesselSegLib.models.networks",
    "ModelEntry": "VesselSegLib.models.registry",
    "ModelRegistry": "VesselSegLib.models.registry",
    "SLDNet": "VesselSegLib.models.sld",
    "UNet3D": "VesselSegLib.models.unet3d",
    "count_parameters": "VesselSegLib.models.unet3d",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'VesselSegLib.models' has no attribute {name!r}")
