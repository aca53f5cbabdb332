"""Channels-last memory layout for the 3D layers of a network.

oneDNN runs 3D convolutions several times faster on the CPU with ``torch.channels_last_3d`` tensors. That
format exists only for 5D tensors, and ``Module.to(memory_format=...)`` raises on any 4D weight, so a
network that mixes 2D and 3D layers (VC-Net's MIP stream) is converted layer by layer here.
"""

from __future__ import annotations

import torch
from torch import nn

_LAYERS_3D = (nn.Conv3d, nn.ConvTranspose3d)


def set_3d_memory_format(network: nn.Module, memory_format: torch.memory_format) -> nn.Module:
    """Put the weights of every 3D (transposed) convolution of ``network`` in ``memory_format``, in place.

    ``memory_format`` is ``torch.channels_last_3d`` or ``torch.contiguous_format``; 2D layers are left as
    they are. Returns ``network``.
    """
    for layer in network.modules():
        if isinstance(layer, _LAYERS_3D):
            layer.to(memory_format=memory_format)
    return network
