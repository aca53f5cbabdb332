"""Networks, the model registry and safetensors checkpoints."""

from VesselSegLib.models.checkpoint import load_checkpoint, save_checkpoint, sha256_of_file
from VesselSegLib.models.networks import NETWORK_CLASSES, build_network
from VesselSegLib.models.registry import ModelEntry, ModelRegistry
from VesselSegLib.models.unet3d import UNet3D, count_parameters

__all__ = [
    "NETWORK_CLASSES",
    "ModelEntry",
    "ModelRegistry",
    "UNet3D",
    "build_network",
    "count_parameters",
    "load_checkpoint",
    "save_checkpoint",
    "sha256_of_file",
]
