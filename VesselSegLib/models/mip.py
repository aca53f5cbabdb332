"""VC-Net's 3D-to-2D projection and 2D-to-3D unprojection (Wang et al., VC-Net, section 3.1).

A 3D patch ``V`` of ``K3`` slices (the slice axis is Z, the first spatial axis of a ``(B, C, Z, Y, X)``
tensor) is summarised by ``m`` sliding maximum intensity projections (MIPs): MIP ``k`` (0-based) covers
slices ``k t .. k t + s - 1``, so that (eq. 1)

    m = floor((K3 - s) / t) + 1.

The ``m`` MIPs of ``K1 x K2`` pixels are tiled into one composited 2D image of ``(m / 2) K1 x 2 K2`` pixels
(two tiles per row, MIP ``k`` at tile row ``k // 2``, tile column ``k % 2``), so a 2D network convolves
over all of them as one picture (section 3.1.1, Fig. 3a). For every MIP pixel the slice it came from is
recorded; the unprojection puts a 2D feature vector back on that voxel and fuses voxels chosen by several
overlapping MIPs with an element-wise maximum per channel (eq. 2). Voxels no MIP selected get zeros.

Everything here is plain PyTorch indexing (``amax``/``argmax``, ``gather``, ``scatter_reduce``), so the
unprojection is differentiable with respect to the 2D features and runs on any device. No library offers
this operation, hence the hand-written module.
"""

from __future__ import annotations

from typing import Literal

import torch

#: VC-Net's choice (section 3.1.1): 5-slice MIPs every 2 slices.
DEFAULT_SLAB = 5
DEFAULT_STRIDE = 2
#: Tiles per row of the composited image ("0.5 m K1 x 2 K2").
TILES_PER_ROW = 2

ProjectionMode = Literal["max", "min"]


def valid_mip_settings(depth: int, max_options: int = 6) -> list[tuple[int, int]]:
    """Some ``(slab, stride)`` pairs that tile ``depth`` slices: used to make error messages helpful."""
    options = []
    for slab in range(2, depth + 1):
        for stride in range(1, slab + 1):
            if ((depth - slab) // stride + 1) % TILES_PER_ROW == 0:
                options.append((slab, stride))
    options.sort(key=lambda pair: (abs(pair[0] - DEFAULT_SLAB), abs(pair[1] - DEFAULT_STRIDE)))
    return options[:max_options]


def sliding_mip_count(depth: int, slab: int = DEFAULT_SLAB, stride: int = DEFAULT_STRIDE) -> int:
    """Number ``m`` of sliding MIPs of a ``depth``-slice patch (VC-Net eq. 1), checking that they tile.

    The settings tile when ``1 <= stride <= slab <= depth`` (no slice skipped between MIPs) and ``m`` is
    even, so the MIPs fill the two-column composited image. As in the paper, the last ``(depth - slab) %
    stride`` slices may be in no MIP (with VC-Net's 16 slices, slab 5, stride 2: slice 16); the
    unprojection gives them zeros and the 3D stream still sees them.

    Raises
    ------
    ValueError
        Settings that do not tile; the message lists valid ``(slab, stride)`` pairs for ``depth``.
    """
    depth, slab, stride = int(depth), int(slab), int(stride)
    problem = None
    if not 1 <= stride <= slab <= depth:
        problem = f"need 1 <= stride ({stride}) <= slab ({slab}) <= patch depth ({depth})"
    elif ((depth - slab) // stride + 1) % TILES_PER_ROW:
        problem = f"m = {(depth - slab) // stride + 1} MIPs cannot fill a {TILES_PER_ROW}-column composite"
    if problem:
        choices = ", ".join(f"slab={s} stride={t}" for s, t in valid_mip_settings(depth)) or "none"
        raise ValueError(
            f"Sliding MIPs with slab {slab} and stride {stride} do not tile a {depth}-slice patch: {problem}. "
            f"Valid choices for {depth} slices: {choices} (VC-Net uses 16 slices, slab 5, stride 2)."
        )
    return (depth - slab) // stride + 1


def project_sliding_mips(
    volume: torch.Tensor,
    slab: int = DEFAULT_SLAB,
    stride: int = DEFAULT_STRIDE,
    mode: ProjectionMode = "max",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sliding maximum (or minimum) intensity projections along Z, and the slice each pixel came from.

    Parameters
    ----------
    volume : tensor, shape (B, C, K3, K1, K2)
        Image patch; Z (``K3``) is the slice axis the MIPs run along.
    slab, stride : int
        ``s`` slices per MIP, a new MIP every ``t`` slices (VC-Net: 5 and 2).
    mode : {"max", "min"}
        "min" gives minimum intensity projections, for data whose vessels are dark (SWI without inversion).

    Returns
    -------
    mips : tensor, shape (B, C, m, K1, K2)
    indices : int64 tensor, shape (B, C, m, K1, K2)
        Absolute slice (Z) index in ``volume`` of every MIP pixel. Ties take the first slice.
    """
    if volume.ndim != 5:
        raise ValueError(f"Expected a (B, C, Z, Y, X) tensor, got shape {tuple(volume.shape)}.")
    if mode not in ("max", "min"):
        raise ValueError(f"Projection mode must be 'max' or 'min', got {mode!r}.")
    count = sliding_mip_count(volume.shape[2], slab, stride)
    # windows: (B, C, m, K1, K2, slab) view, no copy; unfold drops the trailing slices no window reaches.
    windows = volume.unfold(2, slab, stride)
    reduce = torch.max if mode == "max" else torch.min
    mips, local = reduce(windows, dim=-1)
    offsets = torch.arange(count, device=volume.device).mul_(stride).view(1, 1, count, 1, 1)
    return mips, local + offsets


def composite_tiles(mips: torch.Tensor) -> torch.Tensor:
    """Tile ``m`` MIPs into the composited image: ``(B, C, m, K1, K2) -> (B, C, (m / 2) K1, 2 K2)``.

    MIP ``k`` goes to tile row ``k // 2``, tile column ``k % 2`` (row-major, Fig. 3a).
    """
    if mips.ndim != 5:
        raise ValueError(f"Expected MIPs as a (B, C, m, K1, K2) tensor, got shape {tuple(mips.shape)}.")
    batch, channels, count, height, width = mips.shape
    if count % TILES_PER_ROW:
        raise ValueError(f"{count} MIPs cannot fill a {TILES_PER_ROW}-column composite; use an even count.")
    rows = count // TILES_PER_ROW
    tiles = mips.reshape(batch, channels, rows, TILES_PER_ROW, height, width)
    return tiles.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, rows * height, TILES_PER_ROW * width)


def split_tiles(composite: torch.Tensor, count: int) -> torch.Tensor:
    """Inverse of :func:`composite_tiles`: ``(B, C, (m / 2) K1, 2 K2) -> (B, C, m, K1, K2)``."""
    if composite.ndim != 4:
        raise ValueError(f"Expected a (B, C, H, W) composite, got shape {tuple(composite.shape)}.")
    batch, channels, height, width = composite.shape
    rows = count // TILES_PER_ROW
    if count < TILES_PER_ROW or count % TILES_PER_ROW or height % rows or width % TILES_PER_ROW:
        raise ValueError(
            f"A {height} x {width} composite does not split into {count} tiles of {TILES_PER_ROW} per row."
        )
    tile_height, tile_width = height // rows, width // TILES_PER_ROW
    tiles = composite.reshape(batch, channels, rows, tile_height, TILES_PER_ROW, tile_width)
    return tiles.permute(0, 1, 2, 4, 3, 5).reshape(batch, channels, count, tile_height, tile_width)


def unproject_features(features: torch.Tensor, indices: torch.Tensor, depth: int) -> torch.Tensor:
    """Put per-MIP-pixel feature vectors back on the voxels they came from (VC-Net section 3.1.2).

    Parameters
    ----------
    features : tensor, shape (B, C, m, K1, K2)
        2D-stream features, already split into the ``m`` MIPs (:func:`split_tiles`).
    indices : int64 tensor, shape (B, 1, m, K1, K2)
        Slice indices from :func:`project_sliding_mips` (of a one-channel image); shared by all channels.
    depth : int
        ``K3``, slices of the 3D patch.

    Returns
    -------
    tensor, shape (B, C, K3, K1, K2)
        Each voxel holds the element-wise maximum over the MIPs that selected it (eq. 2), zero where none
        did. Differentiable with respect to ``features``.
    """
    if features.ndim != 5 or indices.ndim != 5:
        raise ValueError("features and indices must be (B, C, m, K1, K2) tensors.")
    if (
        indices.shape[1] != 1
        or indices.shape[2:] != features.shape[2:]
        or indices.shape[0] != features.shape[0]
    ):
        raise ValueError(
            f"Indices {tuple(indices.shape)} do not match features {tuple(features.shape)}: "
            "expected (B, 1, m, K1, K2) with the features' B, m, K1, K2."
        )
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= depth):
        raise ValueError(f"Slice indices must lie in [0, {depth}) for a {depth}-slice patch.")
    batch, channels, _, height, width = features.shape
    index = indices.expand(-1, channels, -1, -1, -1)
    fill = torch.finfo(features.dtype).min
    volume = features.new_full((batch, channels, depth, height, width), fill)
    # include_self=False: the fill value never wins, so selected voxels get exactly the max of their MIPs.
    volume = volume.scatter_reduce(2, index, features, reduce="amax", include_self=False)
    selected = torch.zeros((batch, 1, depth, height, width), dtype=torch.bool, device=features.device)
    selected.scatter_(2, indices, True)
    return torch.where(selected, volume, torch.zeros((), dtype=volume.dtype, device=volume.device))


def gather_at_indices(volume: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Values of ``volume (B, C, K3, K1, K2)`` at the MIP slice ``indices (B, 1, m, K1, K2)``.

    This is how labels are projected for the auxiliary MIP loss (eq. 3): the label of the voxel the image
    MIP selected, not the MIP of the labels.
    """
    return volume.gather(2, indices.expand(-1, volume.shape[1], -1, -1, -1))


__all__ = [
    "DEFAULT_SLAB",
    "DEFAULT_STRIDE",
    "composite_tiles",
    "gather_at_indices",
    "project_sliding_mips",
    "sliding_mip_count",
    "split_tiles",
    "unproject_features",
    "valid_mip_settings",
]
