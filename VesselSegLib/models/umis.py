"""The UMIS network: a 3D ResNet encoder, a segmentation and a reconstruction decoder, and the smoothing layers.

UMIS (Gur et al., ICCV 2019, section 4.1) segments 2PM stacks without labels. The network maps the image
``I`` (B, 1, Z, Y, X) in [0, 1] to

- ``S_bar = D_seg(E(I))``, a sigmoid map (eq. 11);
- ``S = (SI o IS)^3 (S_bar)``, its morphological smoothing (eq. 12; ``models/morphology.py``), which is the
  segmentation and what the loss's active-contour term reads;
- ``I_bar = D_rec(E(I))``, a reconstruction of the image that keeps the encoder informative (eq. 13).

Encoder ``E``: a 3D ResNet (Hara et al.'s video ResNet, shortcut type B): a stem convolution of stride
(1, 2, 2) (the stacks are thin), 3x3x3 max pooling of stride 2, then four stages of basic blocks whose first
block halves the resolution (stages 2-4), and dropout 0.2 on the deepest features (the official code's).
Outputs ``C2``, ``C3`` and ``C4`` feed the decoders.

Decoders (the paper's appendix table is missing from its text; this follows the official code, see the
implementation notes): three up blocks, each a 4x4x4 transposed convolution of stride 2 then a second
transposed convolution of stride 1 ((1, 3, 3) for segmentation, 1x1x1 for reconstruction), both with batch
norm and ReLU; the segmentation decoder concatenates ``C3`` and ``C2`` resized trilinearly (which undoes the
stem's anisotropic stride), the reconstruction decoder concatenates them directly; both end in a trilinear
resize to the input's size and a 3x3x3 transposed convolution to one channel with a sigmoid. The official
code sends the reconstruction through the segmentation head by mistake; here each decoder has its own.

Two configurations (the registry's arguments pick one):

- faithful (the paper, for a GPU): ``blocks=(3, 4, 6, 3)`` (ResNet-34), ``widths=(64, 128, 256, 512)``,
  ``stem_kernel=7``, ``decoder_widths=(64, 32, 8)``: 69.2 M parameters;
- slim (trains on 2 CPU cores; the shipped default): ``blocks=(2, 2, 2, 2)``, ``widths=(16, 32, 64, 128)``,
  ``stem_kernel=3``, ``decoder_widths=(32, 16, 8)``: 2.86 M parameters.

Inputs must be multiples of (16, 32, 32) voxels (Z, Y, X) so that ``C3`` has even size. The project's
inference code applies a sigmoid to ``forward``'s output, so ``forward`` returns ``logit(S)``;
:meth:`UMISNet.forward_all` gives all three maps for training.

References
----------
.. [1] S. Gur, L. Wolf, L. Golgher, P. Blinder. "Unsupervised Microvascular Image Segmentation Using an
   Active Contours Mimicking Neural Network." ICCV 2019, pp. 10722-10731.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from VesselSegLib.models.morphology import PAPER_SMOOTHING_ITERATIONS, MorphologicalSmoothing

#: Smallest S kept away from 0 and 1 before the logit, so that ``sigmoid(forward(x))`` returns S to float32
#: precision without infinities.
LOGIT_EPSILON = 1e-6


class UMISOutput(NamedTuple):
    """The three maps of :meth:`UMISNet.forward_all`, each (B, 1, Z, Y, X) in [0, 1]."""

    raw_segmentation: torch.Tensor
    """``S_bar``, the segmentation decoder's sigmoid output (eq. 11)."""
    segmentation: torch.Tensor
    """``S``, the smoothed segmentation (eq. 12)."""
    reconstruction: torch.Tensor
    """``I_bar``, the reconstruction decoder's output (eq. 13)."""


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with batch norm and a residual shortcut (1x1x1 convolution when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def _up_block(in_channels: int, out_channels: int, second_kernel: tuple[int, int, int]) -> nn.Sequential:
    """x2 up-sampling (4x4x4 transposed convolution), then a refining transposed convolution of stride 1."""
    padding = tuple(k // 2 for k in second_kernel)
    return nn.Sequential(
        nn.ConvTranspose3d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
        nn.ConvTranspose3d(out_channels, out_channels, second_kernel, padding=padding, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="trilinear", align_corners=False)


class UMISNet(nn.Module):
    """UMIS's encoder and two decoders, with the morphological smoothing on the segmentation (module text).

    Parameters
    ----------
    blocks : 4 ints
        Basic blocks per encoder stage: (3, 4, 6, 3) is ResNet-34 (paper), (2, 2, 2, 2) the slim CPU model.
    widths : 4 ints
        Channels of the four stages.
    stem_kernel : int
        Size of the stem convolution (7 in the paper).
    decoder_widths : 3 ints
        Channels of the three up blocks of each decoder.
    dropout : float
        Dropout on the deepest features (0.2, the official code's).
    smoothing_iterations : int
        ``mu`` of eq. (12), the number of ``SI o IS`` applications (3).

    Examples
    --------
    >>> net = UMISNet(widths=(4, 8, 8, 8), blocks=(1, 1, 1, 1), decoder_widths=(8, 4, 4))
    >>> out = net.forward_all(torch.rand(1, 1, 16, 32, 32))
    >>> tuple(out.segmentation.shape), tuple(out.reconstruction.shape)
    ((1, 1, 16, 32, 32), (1, 1, 16, 32, 32))
    """

    def __init__(
        self,
        *,
        blocks: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (16, 32, 64, 128),
        stem_kernel: int = 3,
        decoder_widths: Sequence[int] = (32, 16, 8),
        dropout: float = 0.2,
        smoothing_iterations: int = PAPER_SMOOTHING_ITERATIONS,
        in_channels: int = 1,
        out_channels: int = 1,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or len(widths) != 4 or len(decoder_widths) != 3:
            raise ValueError(
                f"UMISNet needs 4 stage block counts, 4 stage widths and 3 decoder widths; got {tuple(blocks)}, "
                f"{tuple(widths)}, {tuple(decoder_widths)}."
            )
        if in_channels != 1 or out_channels != 1:
            raise ValueError("UMISNet reads one image channel and gives one vessel class.")
        self.arguments = {
            "blocks": list(blocks),
            "widths": list(widths),
            "stem_kernel": stem_kernel,
            "decoder_widths": list(decoder_widths),
            "dropout": dropout,
            "smoothing_iterations": smoothing_iterations,
        }
        self.stem = nn.Sequential(
            nn.Conv3d(1, widths[0], stem_kernel, stride=(1, 2, 2), padding=stem_kernel // 2, bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        stages, channels = [], widths[0]
        for index, (count, width) in enumerate(zip(blocks, widths, strict=True)):
            stage = []
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stage.append(BasicBlock(channels, width, stride))
                channels = width
            stages.append(nn.Sequential(*stage))
        self.stages = nn.ModuleList(stages)
        self.dropout = nn.Dropout3d(dropout) if dropout > 0 else nn.Identity()
        w1, w2, w3 = decoder_widths
        c2, c3, c4 = widths[1], widths[2], widths[3]
        self.segmentation_decoder = nn.ModuleList(
            [
                _up_block(c4, w1, (1, 3, 3)),
                _up_block(w1 + c3, w2, (1, 3, 3)),
                _up_block(w2 + c2, w3, (1, 3, 3)),
            ]
        )
        self.segmentation_head = nn.ConvTranspose3d(w3, 1, 3, padding=1)
        self.reconstruction_decoder = nn.ModuleList(
            [
                _up_block(c4, w1, (1, 1, 1)),
                _up_block(w1 + c3, w2, (1, 1, 1)),
                _up_block(w2 + c2, w3, (1, 1, 1)),
            ]
        )
        self.reconstruction_head = nn.ConvTranspose3d(w3, 1, 3, padding=1)
        self.smoothing = MorphologicalSmoothing(iterations=smoothing_iterations)
        for module in self.modules():  # Hara et al.'s initialisation
            if isinstance(module, nn.Conv3d | nn.ConvTranspose3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def size_divisor_zyx(self) -> tuple[int, int, int]:
        """Inputs must be multiples of this (Z, Y, X): the stem, the pooling and three stride-2 stages."""
        return (16, 32, 32)

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(C2, C3, C4)`` of the encoder for ``image`` (B, 1, Z, Y, X)."""
        c1 = self.stages[0](self.stem(image))
        c2 = self.stages[1](c1)
        c3 = self.stages[2](c2)
        c4 = self.dropout(self.stages[3](c3))
        return c2, c3, c4

    def _segment_raw(self, features, size) -> torch.Tensor:
        c2, c3, c4 = features
        up1, up2, up3 = self.segmentation_decoder
        x = torch.cat([up1(c4), c3], dim=1)
        # The stem halved Y and X but not Z; resizing here restores the input's aspect ratio (official code).
        x = _resize(x, [max(1, s // 8) for s in size])
        x = up2(x)
        x = torch.cat([x, _resize(c2, x.shape[2:])], dim=1)
        x = _resize(up3(x), size)
        return torch.sigmoid(self.segmentation_head(x))

    def _reconstruct(self, features, size) -> torch.Tensor:
        c2, c3, c4 = features
        up1, up2, up3 = self.reconstruction_decoder
        x = up2(torch.cat([up1(c4), c3], dim=1))
        x = _resize(up3(torch.cat([x, c2], dim=1)), size)
        return torch.sigmoid(self.reconstruction_head(x))

    def forward_all(self, image: torch.Tensor, *, reconstruct: bool = True) -> UMISOutput:
        """``S_bar``, ``S`` and ``I_bar`` for ``image`` (B, 1, Z, Y, X); ``I_bar`` is None unless ``reconstruct``."""
        size = tuple(image.shape[2:])
        features = self.encode(image)
        raw = self._segment_raw(features, size)
        reconstruction = self._reconstruct(features, size) if reconstruct else None
        return UMISOutput(raw, self.smoothing(raw), reconstruction)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``logit(S)``, shape (B, 1, Z, Y, X): callers apply ``torch.sigmoid`` and get ``S`` back."""
        segmentation = self.forward_all(image, reconstruct=False).segmentation
        return torch.logit(segmentation.float(), eps=LOGIT_EPSILON)


__all__ = ["LOGIT_EPSILON", "BasicBlock", "UMISNet", "UMISOutput"]
