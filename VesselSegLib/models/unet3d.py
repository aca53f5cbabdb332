"""The plain 3D U-Net baseline (and its 2D twin): ReLU, no batch normalisation, one sigmoid per vessel class.

This is the "3D U-Net" the seed papers compare against (VC-Net, Table 2; 3D-SLD): an encoder-decoder with
skip connections, two 3x3x3 convolutions per level, max-pooling down and transposed convolutions up.
The network returns logits; callers apply ``torch.sigmoid`` (classes may overlap, e.g. an artery touching
a vein, so they are independent sigmoids rather than a softmax).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_LAYERS = {
    2: (nn.Conv2d, nn.ConvTranspose2d, nn.MaxPool2d),
    3: (nn.Conv3d, nn.ConvTranspose3d, nn.MaxPool3d),
}


def _double_conv(spatial_dims: int, in_channels: int, out_channels: int) -> nn.Sequential:
    conv = _LAYERS[spatial_dims][0]
    return nn.Sequential(
        conv(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        conv(out_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
    )


class _UNet(nn.Module):
    """U-Net body shared by the 3D baseline and VC-Net's 2D MIP stream (same layers, 2 or 3 spatial dims)."""

    def __init__(
        self,
        spatial_dims: int,
        *,
        in_channels: int,
        out_channels: int,
        base_channels: int,
        levels: int,
        pool_kernel: tuple[int, ...],
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}.")
        if base_channels < 1:
            raise ValueError(f"base_channels must be >= 1, got {base_channels}.")
        if levels < 2:
            raise ValueError(f"levels must be >= 2 (at least one pooling), got {levels}.")
        conv, transposed_conv, max_pool = _LAYERS[spatial_dims]
        self.levels = levels
        widths = [base_channels * 2**level for level in range(levels)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoders.append(_double_conv(spatial_dims, previous, width))
            previous = width
        self.pool = max_pool(kernel_size=pool_kernel)
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.upsamplers.append(
                transposed_conv(width * 2, width, kernel_size=pool_kernel, stride=pool_kernel)
            )
            self.decoders.append(_double_conv(spatial_dims, width * 2, width))
        self.head = conv(widths[0], out_channels, kernel_size=1)

    @property
    def feature_channels(self) -> int:
        """Channels of :meth:`features` (those of the first level)."""
        return self.head.in_channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Last decoder features before the 1x1 head, ``(B, feature_channels, *spatial)`` (VC-Net fuses these)."""
        skips: list[torch.Tensor] = []
        features = image
        for level, encoder in enumerate(self.encoders):
            features = encoder(features)
            if level < self.levels - 1:
                skips.append(features)
                features = self.pool(features)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips), strict=True):
            features = decoder(torch.cat([upsample(features), skip], dim=1))
        return features


class UNet3D(_UNet):
    """3D U-Net with ``levels`` resolution levels and ``base_channels`` features at full resolution.

    Parameters
    ----------
    in_channels : int
        Image channels (1 for MRA, SWI, 2PM).
    out_channels : int
        Vessel classes predicted, one logit map each.
    base_channels : int
        Features at the first level; each level down doubles them.
    levels : int
        Resolution levels including the bottleneck (3 means two poolings). Input sizes must be divisible by
        ``2 ** (levels - 1)`` along every axis; :func:`VesselSegLib.inference.sliding_window` pads for you.
    pool_z : bool
        Pool along Z too. False keeps slabs with few slices (e.g. 16-slice MRA patches) deep enough.

    Shapes
    ------
    input ``(B, in_channels, Z, Y, X)`` -> logits ``(B, out_channels, Z, Y, X)``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 3,
        base_channels: int = 8,
        levels: int = 3,
        pool_z: bool = True,
    ) -> None:
        super().__init__(
            3,
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            levels=levels,
            pool_kernel=(2, 2, 2) if pool_z else (1, 2, 2),
        )
        self.pool_z = pool_z

    @property
    def size_divisor_zyx(self) -> tuple[int, int, int]:
        """Input sizes along (Z, Y, X) must be multiples of these."""
        factor = 2 ** (self.levels - 1)
        return (factor if self.pool_z else 1, factor, factor)


class UNet2D(_UNet):
    """2D U-Net, same design as :class:`UNet3D`: input ``(B, in_channels, H, W)``, sizes divisible by
    ``2 ** (levels - 1)``. VC-Net's composited-MIP stream."""

    def __init__(
        self, *, in_channels: int = 1, out_channels: int = 1, base_channels: int = 4, levels: int = 3
    ) -> None:
        super().__init__(
            2,
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            levels=levels,
            pool_kernel=(2, 2),
        )


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_divisible(shape_zyx: Sequence[int], divisor_zyx: Sequence[int]) -> None:
    """Raise ValueError when a patch shape cannot pass through the network's poolings."""
    bad = [(s, d) for s, d in zip(shape_zyx, divisor_zyx, strict=True) if s % d]
    if bad:
        raise ValueError(
            f"Patch size {tuple(shape_zyx)} (Z, Y, X) must be a multiple of {tuple(divisor_zyx)} along each "
            "axis for this network; choose e.g. 64 or 128 along Y and X."
        )
