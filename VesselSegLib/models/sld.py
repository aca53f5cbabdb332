"""The 3D-SLD backbone: a 3D U-Net of orientation-invariant blocks with an embedding and a clustering head.

3D-SLD (Chen, Wang and Wang, 2023, Sec. III-A, Fig. 2a) segments 3D vessels without 3D labels. Its
network ``f`` maps an image ``x_n`` (B, 1, Z, Y, X) to (eq. 1) ``v_n, m_n = f(x_n)``:

- ``v_n`` (B, K, Z, Y, X), a voxel embedding of unit l2 norm, ``||v(d, h, w)||_2 = 1``;
- ``m_n`` (B, C, Z, Y, X), a soft clustering of the voxels into C regions (sigmoid, then l1-normalised
  over the channels so that ``||m(d, h, w)||_1 = 1``). Channel ``t`` is the vessel probability; it becomes
  "vessel" only because the training shows this channel to the discriminator.

The paper's backbone is a 3D U-Net with five encoder and four decoder blocks, 2x2x2 max pooling after
encoder blocks 1-4, a 2x2x2 up-sampling before each decoder block and U-Net skip concatenation. Every block
is an *ori-CNN module*: two 3x3x3 convolutions run on features turned by a random orientation ``g``, and
the output is turned back by ``g^-1`` ("restored to original orientation"). Training only; inference
uses ``g`` = identity. The paper's ablation credits this module with +4.93 DSC (cerebrovascular) and
+10.17 (arterial tree) (Table III).

Choices the paper leaves open (marked [C] in ``docs/methods/3D-SLD.md``, Sec. 2.1-2.2):

- widths (16, 32, 64, 128, 256), batch norm and ReLU after each convolution, trilinear up-sampling
  (``align_corners=False``) with no learned weights;
- heads of two convolutions each: 3x3x3 conv (``widths[0]`` channels), batch norm, ReLU, 1x1x1 conv
  (as the authors' 2D code);
- the orientation group: flips of any of (Z, Y, X) combined with quarter turns in the Y-X plane
  (``"in-plane"``, the default, 16 distinct transforms, see :func:`orientation_group`), or the 48-element
  symmetry group of the cube for isotropic data (``"octahedral"``). Where a feature map is not square in
  Y-X (or not a cube), only the elements that keep its shape are drawn.
- ``pool_kernels`` may be (1, 2, 2) at some levels for anisotropic two-photon stacks (5 um Z steps).

Parameters (trainable): the paper-scale default, ``widths=(16, 32, 64, 128, 256)``, has 5,899,784; the
2-core CPU configuration of the notes (Sec. 6.5), ``widths=(8, 16, 32, 64, 64)``, has 922,704 (both
with K = 16, C = 8).

The project's inference applies a sigmoid to ``forward``'s output, so :meth:`SLDNet.forward` returns
``logit(m^t)``; :meth:`SLDNet.forward_all` gives ``v`` and ``m`` for training (the losses live elsewhere).

References
----------
.. [1] H. Chen, X. Wang, L. Wang. "3D Vessel Segmentation with Limited Guidance of 2D Structure-agnostic
   Vessel Annotations." arXiv:2302.03299, 2023.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from VesselSegLib.models.umis import LOGIT_EPSILON

#: Names accepted by :func:`orientation_group` (and ``SLDNet(orientation_group=...)``).
ORIENTATION_GROUPS = ("none", "in-plane", "octahedral")

_NO_FLIP = (False, False, False)
_IDENTITY_AXES = (0, 1, 2)


@dataclass(frozen=True)
class Orientation:
    """One orientation ``g`` of a (Z, Y, X) grid: an axis permutation, then flips, then quarter turns.

    Attributes
    ----------
    flips : 3 bool
        Flip the Z, Y, X axes (of the permuted grid).
    rot90 : int
        Quarter turns ``k`` in the Y-X plane, 0..3 (``torch.rot90`` over the last two axes).
    transpose_zyx : 3 int
        Axis permutation applied first: output axis ``i`` is input axis ``transpose_zyx[i]``
        (only the octahedral group uses it).
    """

    flips: tuple[bool, bool, bool] = _NO_FLIP
    rot90: int = 0
    transpose_zyx: tuple[int, int, int] = _IDENTITY_AXES

    def __post_init__(self) -> None:
        if len(self.flips) != 3:
            raise ValueError(f"flips needs one bool per axis (Z, Y, X), got {self.flips!r}.")
        if self.rot90 not in (0, 1, 2, 3):
            raise ValueError(f"rot90 must be 0, 1, 2 or 3 quarter turns, got {self.rot90!r}.")
        if sorted(self.transpose_zyx) != [0, 1, 2]:
            raise ValueError(f"transpose_zyx must be a permutation of (0, 1, 2), got {self.transpose_zyx!r}.")

    def output_shape(self, shape_zyx: Sequence[int]) -> tuple[int, int, int]:
        """Shape (Z, Y, X) of a grid of shape ``shape_zyx`` after :func:`apply_orientation`."""
        z, y, x = (shape_zyx[axis] for axis in self.transpose_zyx)
        return (z, x, y) if self.rot90 % 2 else (z, y, x)


def orientation_group(name: str, *, square: bool = True) -> tuple[Orientation, ...]:
    """The orientations ``g`` an ori-CNN block draws from (Sec. III-A; the group is our choice [C]).

    Parameters
    ----------
    name : {"none", "in-plane", "octahedral"}
        ``"none"``: the identity only. ``"in-plane"``: flips of any subset of (Z, Y, X) times quarter turns
        in the Y-X plane. The notes count 8 flip subsets x 4 turns = 32 pairs, but flipping both Y and X is
        a half turn, so every transform appears twice among them: the 16 distinct ones are returned (8 flips
        x 0 or 1 quarter turn); drawing uniformly from them is the same distribution as from the 32 pairs.
        ``"octahedral"``: the 48 symmetries of the cube (6 axis permutations x 8 flips), for isotropic data.
    square : bool
        Whether the grids are square in Y-X. False keeps only the elements without a quarter turn (which
        would swap the Y and X sizes): the 8 flips.

    Returns
    -------
    tuple of Orientation
        Distinct elements, the identity first.

    Raises
    ------
    ValueError
        Unknown ``name``, or ``"octahedral"`` with ``square=False`` (it needs cubes).
    """
    flip_subsets = [tuple(flips) for flips in itertools.product((False, True), repeat=3)]
    if name == "none":
        return (Orientation(),)
    if name == "in-plane":
        turns = (0, 1) if square else (0,)
        return tuple(Orientation(flips, k) for k in turns for flips in flip_subsets)
    if name == "octahedral":
        if not square:
            raise ValueError("The octahedral orientation group needs cubic grids; use 'in-plane' instead.")
        return tuple(
            Orientation(flips, 0, axes)
            for axes in itertools.permutations(_IDENTITY_AXES)
            for flips in flip_subsets
        )
    raise ValueError(f"Unknown orientation group {name!r}; known groups: {', '.join(ORIENTATION_GROUPS)}.")


def elements_keeping_shape(group: Sequence[Orientation], shape_zyx: Sequence[int]) -> tuple[Orientation, ...]:
    """The elements of ``group`` that map a grid of shape ``shape_zyx`` to the same shape (identity included)."""
    shape = tuple(shape_zyx)
    return tuple(g for g in group if g.output_shape(shape) == shape)


def _flip_dims(g: Orientation) -> list[int]:
    return [axis - 3 for axis, flip in enumerate(g.flips) if flip]


def _permute_last_three(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    lead = x.dim() - 3
    return x.permute(*range(lead), *(lead + axis for axis in axes))


def _check_grid(x: torch.Tensor) -> None:
    if x.dim() < 3:
        raise ValueError(f"Orientations act on the last three axes (Z, Y, X); got a {x.dim()}-D tensor.")


def apply_orientation(x: torch.Tensor, g: Orientation) -> torch.Tensor:
    """``g(x)`` on a tensor whose last three axes are (Z, Y, X): permute, flip, then turn in Y-X.

    The identity returns ``x`` itself; other elements return a new tensor (or a permuted view).
    """
    _check_grid(x)
    if g.transpose_zyx != _IDENTITY_AXES:
        x = _permute_last_three(x, g.transpose_zyx)
    dims = _flip_dims(g)
    if dims:
        x = torch.flip(x, dims)
    if g.rot90:
        x = torch.rot90(x, g.rot90, dims=(-2, -1))
    return x


def invert_orientation(x: torch.Tensor, g: Orientation) -> torch.Tensor:
    """``g^-1(x)``: undoes :func:`apply_orientation` exactly (the steps in reverse order)."""
    _check_grid(x)
    if g.rot90:
        x = torch.rot90(x, -g.rot90, dims=(-2, -1))
    dims = _flip_dims(g)
    if dims:
        x = torch.flip(x, dims)
    if g.transpose_zyx != _IDENTITY_AXES:
        inverse = [0, 0, 0]
        for position, axis in enumerate(g.transpose_zyx):
            inverse[axis] = position
        x = _permute_last_three(x, inverse)
    return x


class OrientationInvariant(nn.Module):
    """The ori-CNN module (Sec. III-A, Fig. 2a): ``g^-1(inner(g(x)))`` with a random ``g`` per sample.

    In training mode each sample of the batch draws its own ``g`` uniformly from the group (with
    ``torch.randint``, so ``torch.manual_seed`` reproduces the draws); elements that would change the
    sample's grid shape (a quarter turn of a non-square Y-X plane, a permutation of unequal axes) are left
    out at that call. In eval mode ``g`` is the identity: the block is just ``inner``.

    Samples that drew the same element run through ``inner`` together, once per distinct element, so a
    batch norm inside ``inner`` computes its training statistics over each such sub-batch, not the batch.

    Parameters
    ----------
    inner : nn.Module
        Maps (B, C, Z, Y, X) to (B, C', Z, Y, X) of the same spatial size.
    group : str
        Name of the orientation group (:func:`orientation_group`).

    Shapes
    ------
    input (B, C, Z, Y, X) -> output (B, C', Z, Y, X).
    """

    def __init__(self, inner: nn.Module, *, group: str = "in-plane") -> None:
        super().__init__()
        self.inner = inner
        self.group_name = group
        self.group = orientation_group(group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.inner(x)
        group = elements_keeping_shape(self.group, x.shape[-3:])
        if len(group) == 1:
            return self.inner(x)
        draws = torch.randint(len(group), (x.shape[0],))
        return self._forward_drawn(x, group, draws)

    def _forward_drawn(
        self, x: torch.Tensor, group: Sequence[Orientation], draws: torch.Tensor
    ) -> torch.Tensor:
        """Apply the drawn elements ``group[draws[b]]`` to the samples ``b`` (the deterministic half)."""
        distinct = torch.unique(draws).tolist()
        if len(distinct) == 1:
            g = group[distinct[0]]
            return invert_orientation(self.inner(apply_orientation(x, g)), g)
        pieces, order = [], []
        for index in distinct:
            samples = torch.nonzero(draws == index).flatten()
            g = group[index]
            pieces.append(invert_orientation(self.inner(apply_orientation(x[samples.to(x.device)], g)), g))
            order.append(samples)
        # The pieces come grouped by element; this puts the samples back in batch order.
        restore = torch.argsort(torch.cat(order)).to(x.device)
        return torch.cat(pieces)[restore]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # No bias: the batch norm right after would cancel it.
    return [
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    ]


def _block(in_channels: int, out_channels: int, group: str) -> OrientationInvariant:
    """An ori-CNN block: two 3x3x3 conv + batch norm + ReLU, between ``g`` and ``g^-1``."""
    layers = _conv_bn_relu(in_channels, out_channels) + _conv_bn_relu(out_channels, out_channels)
    return OrientationInvariant(nn.Sequential(*layers), group=group)


def _head(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv3x3x3-BN-ReLU-conv1x1 (the notes' reading of the authors' 2-layer modules)."""
    return nn.Sequential(*_conv_bn_relu(in_channels, in_channels), nn.Conv3d(in_channels, out_channels, 1))


#: What :meth:`SLDNet.forward` cuts at 0.5 (see its ``decision`` parameter).
DECISIONS = ("threshold", "largest")

#: How the clustering head's logits become memberships ``m`` (see :class:`SLDNet`'s ``membership``).
MEMBERSHIPS = ("sigmoid-l1", "softmax")


def decision_map(clusters: torch.Tensor, vessel_channel: int, decision: str) -> torch.Tensor:
    """The map cut at 0.5, (B, 1, Z, Y, X), from clusters ``m`` (B, C, Z, Y, X) (``SLDNet``'s ``decision``)."""
    clusters = clusters.float()
    t = vessel_channel
    vessel = clusters[:, t : t + 1]
    if decision == "threshold":
        return vessel
    rivals = torch.cat([clusters[:, :t], clusters[:, t + 1 :]], dim=1).amax(dim=1, keepdim=True)
    return vessel / (vessel + rivals)


class SLDOutput(NamedTuple):
    """The two maps of :meth:`SLDNet.forward_all` (eq. 1)."""

    embedding: torch.Tensor
    """``v``, (B, K, Z, Y, X), unit l2 norm over the channels at every voxel."""
    clusters: torch.Tensor
    """``m``, (B, C, Z, Y, X), in (0, 1), summing to 1 over the channels at every voxel."""


class SLDNet(nn.Module):
    """3D-SLD's backbone ``f`` (eq. 1): a U-Net of ori-CNN blocks with embedding and clustering heads.

    Parameters
    ----------
    in_channels : int
        Image channels (1).
    widths : sequence of int
        Channels of the encoder blocks, shallowest first; ``levels = len(widths)`` (paper: 5 levels).
        Decoder block ``i`` has ``widths[i]`` channels.
    embedding_channels : int
        ``K``, channels of the embedding ``v`` (16).
    clusters : int
        ``C``, channels of the clustering ``m`` (8), at least 2.
    vessel_channel : int
        ``t``, the clustering channel read as the vessel probability (0, as the authors' code).
    orientation_group : str
        Group of the ori-CNN blocks: "in-plane" (default), "octahedral" or "none" (:func:`orientation_group`).
    pool_kernels : sequence of 3-int sequences, optional
        Max-pooling kernel (Z, Y, X) after each encoder block but the last (``levels - 1`` of them),
        default all (2, 2, 2); (1, 2, 2) keeps Z at a level, for anisotropic stacks. Up-sampling before
        each decoder block undoes the same factor.
    upsample_mode : {"trilinear", "nearest"}
        Interpolation of the up-sampling layers.
    out_channels : int
        Must be 1 (one vessel probability); accepted because training configs pass it.
    decision : {"threshold", "largest"}
        What :meth:`forward` returns, i.e. which voxels the usual 0.5 cut calls vessel. "threshold": the
        paper's ``m^t > 0.5`` (``forward`` = ``logit(m^t)``). "largest": the voxels whose largest cluster is
        ``t``, ``forward`` = ``logit(m^t / (m^t + max_{c != t} m^c))``, which is above 0 exactly there. Both
        agree once the clustering is near one-hot, as the entropy loss (eq. 17) drives it; with the short
        CPU budgets here it stays soft (in our exploratory 100-iteration runs on VesselNN no voxel's
        ``m^t`` came near 0.5), so the CPU configurations use "largest" ([C], not the paper's).
    membership : {"sigmoid-l1", "softmax"}
        How the clustering logits become ``m``: "sigmoid-l1", the authors' module (a sigmoid per channel,
        then l1 normalisation); "softmax", which keeps a gradient where every sigmoid saturates (on the TOF
        phantoms the sigmoid-l1 memberships stayed at about 1/C everywhere: entropy 0.53 bit, that of 1/8).

    Shapes
    ------
    input (B, in_channels, Z, Y, X), each size a multiple of :attr:`size_divisor_zyx` ->
    ``forward`` (B, 1, Z, Y, X) logits; ``forward_all`` (B, K, Z, Y, X) and (B, C, Z, Y, X).

    Examples
    --------
    >>> net = SLDNet(widths=(4, 8, 16)).eval()
    >>> out = net.forward_all(torch.rand(1, 1, 16, 16, 16))
    >>> tuple(out.embedding.shape), tuple(out.clusters.shape)
    ((1, 16, 16, 16, 16), (1, 8, 16, 16, 16))
    """

    out_channels = 1

    def __init__(
        self,
        *,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        embedding_channels: int = 16,
        clusters: int = 8,
        vessel_channel: int = 0,
        orientation_group: str = "in-plane",
        pool_kernels: Sequence[Sequence[int]] | None = None,
        upsample_mode: str = "trilinear",
        out_channels: int = 1,
        decision: str = "threshold",
        membership: str = "sigmoid-l1",
    ) -> None:
        super().__init__()
        widths = list(widths)
        if not widths or any(not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(
                f"widths must be a non-empty sequence of positive channel counts, got {widths!r}."
            )
        if in_channels < 1 or embedding_channels < 1:
            raise ValueError(
                f"in_channels and embedding_channels must be >= 1, got {in_channels}, {embedding_channels}."
            )
        if clusters < 2:
            raise ValueError(
                f"clusters (C) must be >= 2 so that the vessel channel competes, got {clusters}."
            )
        if not 0 <= vessel_channel < clusters:
            raise ValueError(
                f"vessel_channel must be in 0..{clusters - 1} (clusters={clusters}), got {vessel_channel}."
            )
        if orientation_group not in ORIENTATION_GROUPS:
            raise ValueError(
                f"Unknown orientation_group {orientation_group!r}; known groups: {', '.join(ORIENTATION_GROUPS)}."
            )
        if upsample_mode not in ("trilinear", "nearest"):
            raise ValueError(f"upsample_mode must be 'trilinear' or 'nearest', got {upsample_mode!r}.")
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}.")
        if membership not in MEMBERSHIPS:
            raise ValueError(f"membership must be one of {', '.join(MEMBERSHIPS)}, got {membership!r}.")
        if out_channels != 1:
            raise ValueError(
                f"SLDNet gives one vessel probability (out_channels=1), got out_channels={out_channels}."
            )
        levels = len(widths)
        kernels = [[2, 2, 2]] * (levels - 1) if pool_kernels is None else [list(k) for k in pool_kernels]
        if len(kernels) != levels - 1 or any(len(k) != 3 or min(k) < 1 for k in kernels):
            raise ValueError(
                f"pool_kernels needs len(widths) - 1 = {levels - 1} kernels of 3 positive ints (Z, Y, X), "
                f"got {pool_kernels!r}."
            )
        self.arguments = {
            "in_channels": in_channels,
            "widths": widths,
            "embedding_channels": embedding_channels,
            "clusters": clusters,
            "vessel_channel": vessel_channel,
            "orientation_group": orientation_group,
            "pool_kernels": kernels,
            "upsample_mode": upsample_mode,
            "decision": decision,
            "membership": membership,
        }
        self.decision = decision
        self.membership = membership
        self.levels = levels
        self.vessel_channel = vessel_channel
        self.orientation_group = orientation_group
        self.pool_kernels = [tuple(k) for k in kernels]
        self.upsample_mode = upsample_mode
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths:
            self.encoders.append(_block(previous, width, orientation_group))
            previous = width
        self.pools = nn.ModuleList(nn.MaxPool3d(kernel) for kernel in self.pool_kernels)
        # decoders[j] works at level levels - 2 - j: the deepest decoder first, as they run.
        self.decoders = nn.ModuleList(
            _block(widths[level + 1] + widths[level], widths[level], orientation_group)
            for level in reversed(range(levels - 1))
        )
        self.embedding_head = _head(widths[0], embedding_channels)
        self.clustering_head = _head(widths[0], clusters)

    @property
    def size_divisor_zyx(self) -> tuple[int, int, int]:
        """Input sizes along (Z, Y, X) must be multiples of these: the product of the pooling kernels."""
        divisor = [1, 1, 1]
        for kernel in self.pool_kernels:
            divisor = [d * k for d, k in zip(divisor, kernel, strict=True)]
        return tuple(divisor)

    def _check_input(self, image: torch.Tensor) -> None:
        if image.dim() != 5:
            raise ValueError(f"SLDNet: expected an input (B, C, Z, Y, X), got shape {tuple(image.shape)}.")
        bad = [n for n, d in zip(image.shape[2:], self.size_divisor_zyx, strict=True) if n % d]
        if bad:
            raise ValueError(
                f"SLDNet: input size {tuple(image.shape[2:])} (Z, Y, X) must be a multiple of "
                f"{self.size_divisor_zyx} along each axis (pool_kernels={self.arguments['pool_kernels']})."
            )

    def _upsample(self, features: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        # To the skip's size, which is the pooling kernel's factor since the input is divisible.
        align = False if self.upsample_mode == "trilinear" else None
        return F.interpolate(features, size=tuple(size), mode=self.upsample_mode, align_corners=align)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """Last decoder features, (B, widths[0], Z, Y, X), that both heads read."""
        self._check_input(image)
        skips: list[torch.Tensor] = []
        features = image
        for level, encoder in enumerate(self.encoders):
            features = encoder(features)
            if level < self.levels - 1:
                skips.append(features)
                features = self.pools[level](features)
        for decoder, skip in zip(self.decoders, reversed(skips), strict=True):
            features = decoder(torch.cat([self._upsample(features, skip.shape[2:]), skip], dim=1))
        return features

    def forward_all(self, image: torch.Tensor) -> SLDOutput:
        """``v`` and ``m`` of eq. (1) for ``image`` (B, in_channels, Z, Y, X)."""
        features = self.features(image)
        embedding = F.normalize(self.embedding_head(features), p=2.0, dim=1)
        return SLDOutput(embedding, self._clusters(features))

    def _clusters(self, features: torch.Tensor) -> torch.Tensor:
        logits = self.clustering_head(features)
        if self.membership == "softmax":
            return torch.softmax(logits, dim=1)
        # Sigmoid then l1 normalisation (not a softmax): the authors' clustering module [R].
        return F.normalize(torch.sigmoid(logits), p=1.0, dim=1)

    def vessel_probability(self, image: torch.Tensor) -> torch.Tensor:
        """``m^t``, the vessel channel of the clustering, (B, 1, Z, Y, X) in (0, 1)."""
        t = self.vessel_channel
        # Only the clustering head: the embedding serves the training losses alone.
        return self._clusters(self.features(image))[:, t : t + 1]

    def decision_probability(self, image: torch.Tensor) -> torch.Tensor:
        """The map that is cut at 0.5, (B, 1, Z, Y, X): ``m^t``, or its share against the largest rival."""
        return decision_map(self._clusters(self.features(image)), self.vessel_channel, self.decision)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``logit`` of :meth:`decision_probability`, (B, 1, Z, Y, X): callers apply ``torch.sigmoid``."""
        return torch.logit(self.decision_probability(image), eps=LOGIT_EPSILON)


__all__ = [
    "DECISIONS",
    "ORIENTATION_GROUPS",
    "Orientation",
    "OrientationInvariant",
    "SLDNet",
    "SLDOutput",
    "apply_orientation",
    "decision_map",
    "elements_keeping_shape",
    "invert_orientation",
    "orientation_group",
]
