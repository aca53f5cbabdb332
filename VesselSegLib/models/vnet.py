"""The lightweight 3D V-Net of the two-photon microscopy (2PM) paper (section 4.3).

The 2PM paper modifies V-Net (Milletari et al. 2016) for large-scale vascular segmentation: end-to-end 3D,
an encoder-decoder with high-resolution feature forwarding (skip connections), batch normalisation after
every convolution, outputs the size of the input patch (128^3 in the paper), and few parameters (about
153k for the published model with 4 base channels) so that big patches run fast.

Its exact layer list is in the paper's supplementary Figure S7, which we do not have. This network keeps
V-Net's design as the original describes it, with the paper's changes:

- each resolution stage is a residual block of ``convolutions_per_stage[level]`` 3x3x3 convolutions, each
  followed by batch normalisation and PReLU, with the stage input added to its output (V-Net's residual
  learning; 3x3x3 instead of V-Net's 5x5x5 kernels to stay light);
- down-sampling by 2x2x2 convolutions of stride 2 that double the channels, up-sampling by 2x2x2 transposed
  convolutions that halve them (V-Net uses no pooling);
- decoder stages take the up-sampled features concatenated with the encoder features of the same level;
- a 1x1x1 convolution to one logit per class (callers apply ``torch.sigmoid``).

With the defaults (4 base channels, 4 levels, 1-2-3-3 convolutions) it has 153,353 parameters, as near to
the published model's ~153k as the text lets us get.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: Normalisation layers a V-Net can use: the paper's batch normalisation, or instance normalisation (each
#: sample's own statistics, the same in training and inference, as nnU-Net uses for domain shift).
NORMALISATIONS = ("batch", "instance")


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.InstanceNorm3d(channels, affine=True)


def _conv_bn_prelu(in_channels: int, out_channels: int, normalisation: str = "batch") -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),  # the norm has the bias
        _norm(normalisation, out_channels),
        nn.PReLU(out_channels),
    )


class _ResidualStage(nn.Module):
    """``depth`` conv-BN-PReLU layers; the input (projected to ``out_channels`` if needed) is added."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, normalisation: str = "batch") -> None:
        super().__init__()
        layers = [_conv_bn_prelu(in_channels, out_channels, normalisation)]
        layers += [_conv_bn_prelu(out_channels, out_channels, normalisation) for _ in range(depth - 1)]
        self.layers = nn.Sequential(*layers)
        self.shortcut = (
            nn.Identity()
            if in_channels == out_channels
            else nn.Conv3d(in_channels, out_channels, kernel_size=1)
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features) + self.shortcut(features)


class VNet3D(nn.Module):
    """Lightweight V-Net with batch normalisation (2PM paper, section 4.3).

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels (1) and vessel classes (one sigmoid each).
    base_channels : int
        Channels of the first stage; each level down doubles them (paper: 4).
    levels : int
        Resolution levels including the bottleneck; sizes must be multiples of ``2 ** (levels - 1)``.
    convolutions_per_stage : sequence of int, optional
        Convolutions in each encoder stage (and, mirrored, in the decoder); default 1, 2, 3, 3, ... as in
        V-Net.
    normalisation : {"batch", "instance"}
        After every convolution: the paper's batch normalisation (default), or instance normalisation,
        whose statistics come from each patch in training and inference alike (no running averages
        learnt on the training stacks' intensities).

    Shapes
    ------
    input ``(B, in_channels, Z, Y, X)`` -> logits ``(B, out_channels, Z, Y, X)``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 4,
        levels: int = 4,
        convolutions_per_stage: Sequence[int] | None = None,
        normalisation: str = "batch",
    ) -> None:
        super().__init__()
        if levels < 2:
            raise ValueError(f"levels must be >= 2, got {levels}.")
        if normalisation not in NORMALISATIONS:
            raise ValueError(
                f"normalisation must be one of {', '.join(NORMALISATIONS)}, got {normalisation!r}."
            )
        depths = list(convolutions_per_stage or [min(level + 1, 3) for level in range(levels)])
        if len(depths) != levels or min(depths) < 1:
            raise ValueError(f"convolutions_per_stage needs {levels} positive counts, got {depths}.")
        self.levels = levels
        widths = [base_channels * 2**level for level in range(levels)]
        self.encoders = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(widths):
            self.encoders.append(_ResidualStage(previous, width, depths[level], normalisation))
            if level < levels - 1:
                self.downsamplers.append(
                    nn.Sequential(
                        nn.Conv3d(width, width * 2, kernel_size=2, stride=2, bias=False),
                        _norm(normalisation, width * 2),
                        nn.PReLU(width * 2),
                    )
                )
            previous = width * 2 if level < levels - 1 else width
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(levels - 1)):
            width = widths[level]
            self.upsamplers.append(
                nn.Sequential(
                    nn.ConvTranspose3d(widths[level + 1], width, kernel_size=2, stride=2, bias=False),
                    _norm(normalisation, width),
                    nn.PReLU(width),
                )
            )
            self.decoders.append(_ResidualStage(width * 2, width, depths[level], normalisation))
        self.head = nn.Conv3d(widths[0], out_channels, kernel_size=1)

    @property
    def size_divisor_zyx(self) -> tuple[int, int, int]:
        factor = 2 ** (self.levels - 1)
        return (factor, factor, factor)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        features = image
        for level, encoder in enumerate(self.encoders):
            features = encoder(features)
            if level < self.levels - 1:
                skips.append(features)
                features = self.downsamplers[level](features)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips), strict=True):
            features = decoder(torch.cat([upsample(features), skip], dim=1))
        return self.head(features)


__all__ = ["VNet3D"]
