"""ROSE: 2x super-resolution vessel segmentation with a compound-plane 2D SR stream (Wang et al. 2024, Fig. 2-4).

ROSE [1]_ maps a low-resolution (LR) patch ``(B, 1, Z, Y, X)`` to vessel logits and a super-resolved (SR)
image, both on a grid twice as fine along every axis, ``(B, C, 2Z, 2Y, 2X)`` and ``(B, 1, 2Z, 2Y, 2X)``.
Two streams share the first encoder level:

1. Shared level-1 encoder (section 3.1.2): two 3x3x3 convolutions with ReLU, giving ``F_V`` with ``d0``
   channels at the LR size.
2. Segmentation stream, an "asymmetric" 3D U-Net (section 3.1.1): the authors' Keras U-Net (level ``l``
   convolves to ``base 2^l`` then ``base 2^(l+1)`` channels, max pooling down, transposed convolutions up,
   ReLU, no normalisation), with one decoder level more than it has poolings, to reach 2x.
3. SR stream (Fig. 3): the ``Z`` slices of ``F_V`` are tiled into one compound 2D map of
   ``(Z / 2) Y x 2 X`` pixels (slice ``k`` at tile row ``k // 2``, column ``k % 2``, the tiling of VC-Net's
   composited MIPs, :func:`VesselSegLib.models.mip.composite_tiles`); one 3x3 2D convolution (``d1``
   channels, PReLU), six SRGAN residual blocks (conv-BN-PReLU-conv-BN + identity), SRGAN's closing
   conv-BN and long skip. The inverse tiling gives ``F_img`` ``(B, d1, Z, Y, X)``. SR image head: a 3x3x3
   convolution, a 2x transposed convolution (ReLU each) and a linear 3x3x3 convolution to one channel.
4. Fusion by concatenation (eq. 1-2) into the decoder at three levels: level 2 (half the LR size)
   ``F_sem (+) MaxPool(F_img)``, level 1 (LR size) ``F_sem (+) F_img``, level 0 (SR size)
   ``F_sem (+) NearestUp(F_img)``. The level-0 stage is a 3x3x3 convolution, a 2x transposed convolution,
   the concatenation, two 3x3x3 convolutions and a 1x1x1 convolution to ``C`` logits.

The drawings and the supplementary material are not in the paper's text; widths and the level-0 stage are
the reconstruction in ``docs/methods/ROSE.md`` (section 2), checked against Table 3's parameter count. Two
configurations:

- paper (GPU): ``levels=4, base_channels=16, sr_channels=48`` (``d0 = 32``, ``d1 = 48``): 5,393,122
  parameters (Table 3: 5.34 M); LR patches 8x64x64 (Z, Y, X) -> 16x128x128;
- slim (the default, trains on 2 CPU cores): ``levels=3, base_channels=4, sr_channels=16``
  (``d0 = 8``, ``d1 = 16``, still six residual blocks): 132,714 parameters; LR patches 8x32x32 ->
  16x64x64, the trainer's usual HR patch. Forward + backward on one CPU thread (channels-last 3D, a
  machine shared with other jobs): about 0.4 s for a batch of 4 such patches, 1.8 s for one 16x64x64 LR
  patch. Without the SR stream 77,609 parameters.

Ablations (Table 4) as arguments: ``sr_stream=False`` (segmentation stream only, no SR image),
``fuse_levels=[0]`` (EnDeTopFuse), ``share_encoder=False`` (DeMultiFuse: the SR stream gets its own
two-convolution 3D encoder on the LR image). ``sr_layout="fold"`` runs the 2D stream on each slice
separately (slices in the batch axis) instead of on the compound plane, where 3x3 kernels also mix the
borders of neighbouring tiles as in the paper.

``forward`` returns the segmentation logits only (the project's inference applies ``torch.sigmoid``);
:meth:`ROSENet.forward_all` also gives the SR image (linear; clamp to [0, 1] only to show it or score PSNR)
for the loss of eq. (5).

References
----------
.. [1] Y. Wang, H. Zhu, H. Li, G. Yan, S. Buch, Y. Wang, E. M. Haacke, J. Hua, Z. Zhong. "ROSE: Multi-level
   super-resolution-oriented semantic embedding for 3D microvasculature segmentation from low-resolution
   images." Neurocomputing, 2024. doi:10.1016/j.neucom.2024.128038
.. [2] C. Ledig et al. "Photo-realistic single image super-resolution using a generative adversarial
   network" (SRGAN). CVPR 2017.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from VesselSegLib.models.mip import TILES_PER_ROW, composite_tiles, split_tiles

#: Decoder levels that take SR features (eq. 1): 2 = half the LR size, 1 = the LR size, 0 = the SR size.
FUSION_LEVELS = (0, 1, 2)
SR_LAYOUTS = ("tile", "fold")
#: Six residual blocks in the SR stream (section 3.1.1).
PAPER_RESIDUAL_BLOCKS = 6
#: Upsampling factor of both outputs along (Z, Y, X).
SCALE = 2


class ROSEOutput(NamedTuple):
    """What :meth:`ROSENet.forward_all` returns."""

    logits: torch.Tensor
    """Segmentation logits, ``(B, out_channels, 2Z, 2Y, 2X)``; ``sigmoid`` gives ``p`` of eq. (3)."""
    sr_image: torch.Tensor | None
    """SR image ``I_SR`` of eq. (4), ``(B, 1, 2Z, 2Y, 2X)``, linear; None when ``sr_stream=False``."""


def _conv_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv3d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True)]


def _double_conv(in_channels: int, middle: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(*_conv_relu(in_channels, middle), *_conv_relu(middle, out_channels))


def _upsample(channels: int) -> nn.ConvTranspose3d:
    return nn.ConvTranspose3d(channels, channels, kernel_size=SCALE, stride=SCALE)


def tile_slices(volume: torch.Tensor) -> torch.Tensor:
    """3D-to-2D (Fig. 3): ``(B, C, Z, Y, X) -> (B, C, (Z / 2) Y, 2 X)``, slice ``k`` at tile ``(k // 2, k % 2)``.

    The paper's compound plane of ``m s / 2 x 2 n`` pixels for an ``m x n x s`` patch; ``Z`` must be even.
    """
    if volume.ndim != 5:
        raise ValueError(f"Expected a (B, C, Z, Y, X) tensor, got shape {tuple(volume.shape)}.")
    if volume.shape[2] % TILES_PER_ROW:
        raise ValueError(
            f"The compound plane holds {TILES_PER_ROW} slices per row, so Z must be even; got Z = {volume.shape[2]}."
        )
    return composite_tiles(volume)


def untile_slices(plane: torch.Tensor, depth: int) -> torch.Tensor:
    """2D-to-3D, the exact inverse of :func:`tile_slices`: ``(B, C, (Z / 2) Y, 2 X) -> (B, C, Z, Y, X)``."""
    return split_tiles(plane, depth)


class ResidualBlock(nn.Module):
    """SRGAN's residual block: conv-BN-PReLU-conv-BN plus the input (3x3 kernels, stride 1).

    PReLU has one slope per channel (Keras ``PReLU(shared_axes=[1, 2])``, as SRGAN implementations use).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
            nn.PReLU(channels),
            nn.Conv2d(channels, channels, kernel_size=3, padding=1),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class SRStream(nn.Module):
    """The 2D SR stream before the dimension expansion: ``(B, d0, Z, Y, X) -> F_img (B, d1, Z, Y, X)``.

    Parameters
    ----------
    in_channels : int
        ``d0``, channels of the shared encoder features ``F_V``.
    channels : int
        ``d1`` (48 in the paper, "n = 48").
    residual_blocks : int
        Number of SRGAN residual blocks (6).
    layout : {"tile", "fold"}
        "tile" convolves the compound plane of :func:`tile_slices` (paper); "fold" each slice on its own.
    """

    def __init__(self, in_channels: int, channels: int, residual_blocks: int, layout: str) -> None:
        super().__init__()
        self.layout = layout
        # One 3x3 conv stands in for SRGAN's 9x9 head, together with the two shared 3D convs (section 3.1.2).
        self.head = nn.Sequential(
            nn.Conv2d(in_channels, channels, kernel_size=3, padding=1), nn.PReLU(channels)
        )
        self.blocks = nn.Sequential(*(ResidualBlock(channels) for _ in range(residual_blocks)))
        self.tail = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size=3, padding=1), nn.BatchNorm2d(channels)
        )

    def forward(self, volume_features: torch.Tensor) -> torch.Tensor:
        batch, _, depth, height, width = volume_features.shape
        if self.layout == "tile":
            plane = tile_slices(volume_features)
        else:  # (B, C, Z, Y, X) -> (B Z, C, Y, X)
            plane = volume_features.permute(0, 2, 1, 3, 4).reshape(batch * depth, -1, height, width)
        head = self.head(plane)
        features = head + self.tail(self.blocks(head))  # SRGAN's long skip
        if self.layout == "tile":
            return untile_slices(features, depth)
        return features.reshape(batch, depth, -1, height, width).permute(0, 2, 1, 3, 4)


class ROSENet(nn.Module):
    """ROSE's two streams and multi-level fusion (module text), from the paper's size down to a CPU model.

    Parameters
    ----------
    in_channels : int
        Image channels (1).
    out_channels : int
        Vessel classes, one logit map each (the paper: 1, any vessel).
    base_channels : int
        ``base`` of the segmentation U-Net: level ``l`` has ``base 2^(l+1)`` output channels; ``d0 = 2 base``.
        Paper 16, slim 4.
    levels : int
        Resolution levels of the encoder including the bottleneck (paper 4, slim 3); >= 3 with level-2
        fusion, else >= 2. LR inputs must be multiples of ``2^(levels - 1)`` along every axis.
    sr_channels : int
        ``d1``, channels of the SR stream (paper 48, slim 16).
    residual_blocks : int
        SRGAN residual blocks of the SR stream (paper 6).
    sr_stream : bool
        False drops the SR stream, its head and every fusion (Table 4, "w/o SR").
    fuse_levels : list of ints, optional
        Decoder levels that get SR features, a subset of ``{0, 1, 2}``; default all three with the SR
        stream, none without. ``[0]`` is Table 4's EnDeTopFuse.
    share_encoder : bool
        False gives the SR stream its own level-1 encoder on the LR image (Table 4, DeMultiFuse).
    sr_layout : {"tile", "fold"}
        2D layout of the SR stream: the compound plane (paper) or one image per slice.

    Shapes
    ------
    input ``(B, in_channels, Z, Y, X)``, each size a multiple of :attr:`size_divisor_zyx` ->
    logits ``(B, out_channels, 2Z, 2Y, 2X)`` (:meth:`forward`) and SR image ``(B, 1, 2Z, 2Y, 2X)``
    (:meth:`forward_all`).

    Examples
    --------
    >>> net = ROSENet()
    >>> out = net.forward_all(torch.rand(1, 1, 8, 32, 32))
    >>> tuple(out.logits.shape), tuple(out.sr_image.shape)
    ((1, 1, 16, 64, 64), (1, 1, 16, 64, 64))
    """

    #: Output voxels per input voxel along (Z, Y, X).
    output_scale_zyx: tuple[int, int, int] = (SCALE, SCALE, SCALE)

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 4,
        levels: int = 3,
        sr_channels: int = 16,
        residual_blocks: int = PAPER_RESIDUAL_BLOCKS,
        sr_stream: bool = True,
        fuse_levels: Sequence[int] | None = None,
        share_encoder: bool = True,
        sr_layout: str = "tile",
    ) -> None:
        super().__init__()
        fuse = self._check_arguments(
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            levels=levels,
            sr_channels=sr_channels,
            residual_blocks=residual_blocks,
            sr_stream=sr_stream,
            fuse_levels=fuse_levels,
            share_encoder=share_encoder,
            sr_layout=sr_layout,
        )
        self.arguments = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "base_channels": base_channels,
            "levels": levels,
            "sr_channels": sr_channels,
            "residual_blocks": residual_blocks,
            "sr_stream": sr_stream,
            "fuse_levels": None if fuse_levels is None else list(fuse_levels),
            "share_encoder": share_encoder,
            "sr_layout": sr_layout,
        }
        self.levels = levels
        self.has_sr_stream = sr_stream
        self.fuse_levels = fuse
        self.share_encoder = share_encoder
        widths = [base_channels * 2 ** (level + 1) for level in range(levels)]  # encoder outputs, w_0 = d0
        d1 = sr_channels if sr_stream else 0

        # Encoder: level l convolves to base 2^l, then base 2^(l+1) (the authors' Keras U-Net).
        self.encoders = nn.ModuleList()
        previous = in_channels
        for level, width in enumerate(widths):
            self.encoders.append(_double_conv(previous, base_channels * 2**level, width))
            previous = width
        self.pool = nn.MaxPool3d(kernel_size=2)

        # Decoder levels levels-2 .. 0 at the encoder's sizes; index l is the paper's "Lvl l+1" (index 1:
        # "Lvl 2", half the LR size; index 0: "Lvl 1", the LR size). The paper's "Lvl 0" is the SR size.
        self.upsamplers = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for level in reversed(range(levels - 1)):
            incoming = widths[level + 1]
            joint = incoming + widths[level] + self._fused_channels(level + 1, d1)
            self.upsamplers.append(_upsample(incoming))
            self.decoders.append(_double_conv(joint, widths[level], widths[level]))

        # Level 0 of eq. (1), the extra up-sampling to the SR grid (Table 4's "Conv3D + Deconv3D").
        d0 = widths[0]
        self.sr_level = nn.Sequential(*_conv_relu(d0, d0), _upsample(d0), nn.ReLU(inplace=True))
        self.sr_decoder = _double_conv(d0 + self._fused_channels(0, d1), d0, d0)
        self.segmentation_head = nn.Conv3d(d0, out_channels, kernel_size=1)

        if sr_stream:
            self.sr_encoder = None if share_encoder else _double_conv(in_channels, base_channels, d0)
            self.sr_stream = SRStream(d0, sr_channels, residual_blocks, sr_layout)
            self.sr_head = nn.Sequential(
                *_conv_relu(sr_channels, sr_channels),
                _upsample(sr_channels),
                nn.ReLU(inplace=True),
                nn.Conv3d(sr_channels, 1, kernel_size=3, padding=1),
            )
        else:
            self.sr_encoder = self.sr_stream = self.sr_head = None

    @staticmethod
    def _check_arguments(**arguments) -> tuple[int, ...]:
        """Refuse arguments that cannot build the network; return the fusion levels used."""
        for name in ("in_channels", "out_channels", "base_channels", "sr_channels"):
            value = arguments[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ROSENet: {name} must be an integer >= 1, got {value!r}.")
        blocks = arguments["residual_blocks"]
        if isinstance(blocks, bool) or not isinstance(blocks, int) or blocks < 0:
            raise ValueError(f"ROSENet: residual_blocks must be an integer >= 0 (paper: 6), got {blocks!r}.")
        if arguments["sr_layout"] not in SR_LAYOUTS:
            raise ValueError(
                f"ROSENet: sr_layout must be one of {SR_LAYOUTS}, got {arguments['sr_layout']!r}."
            )
        for name in ("sr_stream", "share_encoder"):
            if not isinstance(arguments[name], bool):
                raise ValueError(f"ROSENet: {name} must be true or false, got {arguments[name]!r}.")
        sr_stream, fuse_levels = arguments["sr_stream"], arguments["fuse_levels"]
        if fuse_levels is None:
            fuse = FUSION_LEVELS if sr_stream else ()
        else:
            if isinstance(fuse_levels, str) or not isinstance(fuse_levels, Sequence):
                raise ValueError(f"ROSENet: fuse_levels must be a list of levels, got {fuse_levels!r}.")
            fuse = tuple(sorted(set(fuse_levels)))
            if len(fuse) != len(fuse_levels) or any(level not in FUSION_LEVELS for level in fuse):
                raise ValueError(
                    f"ROSENet: fuse_levels must list distinct levels from {list(FUSION_LEVELS)} "
                    f"(2 = half the LR size, 1 = LR size, 0 = SR size), got {list(fuse_levels)!r}."
                )
            if fuse and not sr_stream:
                raise ValueError(
                    f"ROSENet: fuse_levels {list(fuse_levels)} need the SR stream; with sr_stream=False "
                    "leave fuse_levels unset or empty."
                )
        if not sr_stream and not arguments["share_encoder"]:
            raise ValueError(
                "ROSENet: share_encoder=False gives the SR stream its own encoder; it needs sr_stream=True."
            )
        levels = arguments["levels"]
        minimum = 3 if 2 in fuse else 2
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < minimum:
            raise ValueError(
                f"ROSENet: levels must be an integer >= {minimum} (at least one pooling"
                f"{', and a decoder level at half the LR size for level-2 fusion' if minimum == 3 else ''}), "
                f"got {levels!r}."
            )
        return fuse

    def _fused_channels(self, level: int, sr_channels: int) -> int:
        return sr_channels if level in self.fuse_levels else 0

    @property
    def size_divisor_zyx(self) -> tuple[int, int, int]:
        """LR input sizes along (Z, Y, X) must be multiples of these: the poolings (``2^(levels - 1)``,
        which also makes Z even, as the compound plane's two tile columns need)."""
        factor = 2 ** (self.levels - 1)
        return (factor, factor, factor)

    def _check_input(self, image: torch.Tensor) -> None:
        if image.ndim != 5:
            raise ValueError(f"ROSENet expects a (B, C, Z, Y, X) tensor, got shape {tuple(image.shape)}.")
        bad = [n for n, d in zip(image.shape[2:], self.size_divisor_zyx, strict=True) if n % d]
        if bad:
            raise ValueError(
                f"ROSENet: input size {tuple(image.shape[2:])} (Z, Y, X) must be a multiple of "
                f"{self.size_divisor_zyx} along each axis (levels={self.levels})."
            )

    def forward_all(self, image: torch.Tensor) -> ROSEOutput:
        """Segmentation logits and SR image for the LR ``image`` ``(B, in_channels, Z, Y, X)``."""
        self._check_input(image)
        skips: list[torch.Tensor] = []
        features = image
        for level, encoder in enumerate(self.encoders):
            features = encoder(features)
            if level < self.levels - 1:
                skips.append(features)  # skips[0] is F_V, the shared level-1 features
                features = self.pool(features)

        sr_features = sr_image = None
        if self.has_sr_stream:
            shared = skips[0] if self.sr_encoder is None else self.sr_encoder(image)
            sr_features = self.sr_stream(shared)  # F_img, (B, d1, Z, Y, X)
            sr_image = self.sr_head(sr_features)

        for level, upsample, decoder in zip(
            reversed(range(self.levels - 1)), self.upsamplers, self.decoders, strict=True
        ):
            parts = [upsample(features), skips[level]]
            paper_level = level + 1  # the paper counts the SR size as level 0
            if paper_level == 2 and 2 in self.fuse_levels:  # eq. (1), "Lvl 2": F_sem (+) MaxPool(F_img)
                parts.append(F.max_pool3d(sr_features, kernel_size=2))
            elif paper_level == 1 and 1 in self.fuse_levels:  # eq. (1), "Lvl 1": F_sem (+) F_img
                parts.append(sr_features)
            features = decoder(torch.cat(parts, dim=1))

        features = self.sr_level(features)
        if (
            0 in self.fuse_levels
        ):  # eq. (1), "Lvl 0": F_sem (+) UpSample(F_img), nearest as Keras UpSampling3D
            features = torch.cat(
                [features, F.interpolate(sr_features, scale_factor=SCALE, mode="nearest")], 1
            )
        logits = self.segmentation_head(self.sr_decoder(features))
        return ROSEOutput(logits, sr_image)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Segmentation logits ``(B, out_channels, 2Z, 2Y, 2X)``; callers apply ``torch.sigmoid``."""
        return self.forward_all(image).logits


__all__ = [
    "FUSION_LEVELS",
    "PAPER_RESIDUAL_BLOCKS",
    "SR_LAYOUTS",
    "ROSENet",
    "ROSEOutput",
    "ResidualBlock",
    "SRStream",
    "tile_slices",
    "untile_slices",
]
