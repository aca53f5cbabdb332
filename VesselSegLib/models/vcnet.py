"""VC-Net: a 3D U-Net stream joined with a 2D U-Net on composited sliding MIPs (Wang et al., VC-Net, Fig. 2).

For a patch ``V`` of ``K3 x K1 x K2`` voxels (``(Z, Y, X)``, Z the slice axis):

1. 3D stream: a :class:`~VesselSegLib.models.unet3d.UNet3D` gives decoder features ``(B, c3, K3, K1, K2)``.
2. 3D-to-2D projection: ``m`` sliding MIPs of ``s`` slices every ``t`` slices (eq. 1), tiled into one
   ``(m / 2) K1 x 2 K2`` image; the slice of every MIP pixel is recorded (:mod:`VesselSegLib.models.mip`).
3. 2D stream: a half-width :class:`~VesselSegLib.models.unet3d.UNet2D` on the composite gives features
   ``(B, c2, (m / 2) K1, 2 K2)`` and, through its own 1x1 head, the MIP prediction used by the auxiliary
   loss (eq. 3).
4. 2D-to-3D unprojection: the 2D features are split back into the ``m`` MIPs and put on the voxels they
   came from, overlaps fused by an element-wise maximum (eq. 2).
5. Fusion: the 3D and unprojected 2D features are concatenated, passed through two 3x3x3 convolutions
   (ReLU) and a 1x1x1 convolution to one logit map per class.

ReLU everywhere and no batch normalisation, as published; callers apply ``torch.sigmoid``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from VesselSegLib.models.mip import (
    DEFAULT_SLAB,
    DEFAULT_STRIDE,
    composite_tiles,
    project_sliding_mips,
    sliding_mip_count,
    split_tiles,
    unproject_features,
)
from VesselSegLib.models.unet3d import UNet2D, UNet3D


class VCNetOutput(NamedTuple):
    """What :meth:`VCNet.forward` returns with ``return_mip=True`` (for training)."""

    logits: torch.Tensor
    """3D logits ``(B, out_channels, K3, K1, K2)``."""
    mip_logits: torch.Tensor
    """2D stream's logits on the composited MIP, ``(B, out_channels, (m / 2) K1, 2 K2)``."""
    mip_indices: torch.Tensor
    """Slice index of every MIP pixel, ``(B, 1, m, K1, K2)``; project labels with it for eq. (3)."""


class VCNet(nn.Module):
    """VC-Net, with widths configurable from the paper's size (GPU) down to a slim CPU default.

    Parameters
    ----------
    in_channels, out_channels : int
        Image channels (1) and vessel classes (one sigmoid each).
    base_channels : int
        Features at the first level of the 3D stream (doubling per level).
    mip_base_channels : int, optional
        Same for the 2D stream; default ``base_channels // 2`` ("half 2D U-Net", section 3.1), at least 2.
    levels : int
        Resolution levels of both U-Nets (3 = two poolings).
    pool_z : bool
        Whether the 3D stream pools along Z.
    mip_slab, mip_stride : int
        ``s`` and ``t`` of eq. (1); VC-Net: 5 and 2.
    mip_mode : {"max", "min"}
        Maximum intensity projections for bright vessels (TOF-MRA, inverted SWI), minimum for dark ones.

    Shapes
    ------
    input ``(B, in_channels, K3, K1, K2)`` with ``K3`` a depth the MIP settings tile and every size a
    multiple of :attr:`size_divisor_zyx` -> logits ``(B, out_channels, K3, K1, K2)``.
    """

    #: The trainer adds the auxiliary MIP loss for networks that set this.
    has_mip_stream = True

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 8,
        mip_base_channels: int | None = None,
        levels: int = 3,
        pool_z: bool = True,
        mip_slab: int = DEFAULT_SLAB,
        mip_stride: int = DEFAULT_STRIDE,
        mip_mode: str = "max",
    ) -> None:
        super().__init__()
        if mip_mode not in ("max", "min"):
            raise ValueError(f"mip_mode must be 'max' or 'min', got {mip_mode!r}.")
        self.mip_slab, self.mip_stride, self.mip_mode = int(mip_slab), int(mip_stride), mip_mode
        mip_base_channels = max(2, base_channels // 2) if mip_base_channels is None else mip_base_channels
        self.volume_stream = UNet3D(
            in_channels=in_channels,
            out_channels=out_channels,
            base_channels=base_channels,
            levels=levels,
            pool_z=pool_z,
        )
        self.mip_stream = UNet2D(
            in_channels=in_channels, out_channels=out_channels, base_channels=mip_base_channels, levels=levels
        )
        joint = self.volume_stream.feature_channels + self.mip_stream.feature_channels
        self.fusion = nn.Sequential(
            nn.Conv3d(joint, base_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(base_channels, base_channels, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv3d(base_channels, out_channels, kernel_size=1),
        )
        self._z_divisor = self._smallest_valid_depth()

    def _smallest_valid_depth(self) -> int:
        """Smallest Z size that the 3D poolings accept and whose multiples the MIP settings all tile."""
        pool = self.volume_stream.size_divisor_zyx[0]
        for depth in range(pool, 64 * pool + 1, pool):
            try:
                for multiple in range(1, 5):
                    sliding_mip_count(depth * multiple, self.mip_slab, self.mip_stride)
            except ValueError:
                continue
            return depth
        # No depth tiles: let sliding_mip_count raise its message listing valid (slab, stride) choices.
        sliding_mip_count(pool, self.mip_slab, self.mip_stride)
        raise AssertionError("unreachable")

    @property
    def size_divisor_zyx(self) -> tuple[int, int, int]:
        """Input sizes along (Z, Y, X) must be multiples of these (Z: also a depth the MIPs tile; 16 with
        VC-Net's slab 5 and stride 2)."""
        _, y, x = self.volume_stream.size_divisor_zyx
        return (self._z_divisor, y, x)

    def forward(self, image: torch.Tensor, return_mip: bool = False) -> torch.Tensor | VCNetOutput:
        volume_features = self.volume_stream.features(image)
        depth = image.shape[2]
        count = sliding_mip_count(depth, self.mip_slab, self.mip_stride)
        # Indices come from the first image channel: one selected voxel per MIP pixel for all channels.
        mips, indices = project_sliding_mips(image, self.mip_slab, self.mip_stride, self.mip_mode)
        composite = composite_tiles(mips)
        mip_features = self.mip_stream.features(composite)
        unprojected = unproject_features(split_tiles(mip_features, count), indices[:, :1], depth)
        logits = self.fusion(torch.cat([volume_features, unprojected], dim=1))
        if not return_mip:
            return logits
        return VCNetOutput(logits, self.mip_stream.head(mip_features), indices[:, :1])


__all__ = ["VCNet", "VCNetOutput"]
