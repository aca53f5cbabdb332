"""Segmentation losses on per-class sigmoid outputs.

VC-Net trains with a soft Dice loss (Wang et al., VC-Net, eq. (4), the voxel term of eq. (3)):
``L = -(2 sum p g + delta) / (sum p + sum g + delta)``. Here it is written as ``1 - Dice`` (same gradient,
non-negative), computed per class channel over the whole batch and averaged over the classes. A channel
whose target is empty in the batch still counts: it teaches the network to keep that class silent there
(e.g. no "artery" in a two-photon stack).

``dice_bce`` adds voxel-wise binary cross-entropy, which gives useful gradients from the first step where
Dice alone is flat (nnU-Net's default combination). ``dice_bce_cldice`` adds MONAI's soft clDice (Shit et al., CVPR 2021),
which rewards keeping thin vessels' centrelines inside the prediction and the prediction's centrelines inside
the vessels, i.e. connectivity rather than thickness.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from trainer.losses_2pm import BalancedBCETVLoss


def soft_dice_loss(probabilities: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Mean over classes of ``1 - soft Dice`` (VC-Net eq. (4)).

    Parameters
    ----------
    probabilities, targets : tensor, shape (B, C, Z, Y, X)
        Sigmoid outputs in [0, 1] and binary (0/1) targets.
    smooth : float
        The smoothing constant delta of eq. (4); keeps empty channels finite.
    """
    if probabilities.shape != targets.shape:
        raise ValueError(
            f"Probabilities {tuple(probabilities.shape)} and targets {tuple(targets.shape)} differ."
        )
    dims = [0, *range(2, probabilities.ndim)]  # sum over batch and space, keep classes
    intersection = (probabilities * targets).sum(dim=dims)
    denominator = probabilities.sum(dim=dims) + targets.sum(dim=dims)
    dice = (2.0 * intersection + smooth) / (denominator + smooth)
    return 1.0 - dice.mean()


class DiceLoss(nn.Module):
    """Soft Dice loss on logits (VC-Net eq. (4))."""

    def __init__(self, smooth: float = 1.0) -> None:
        super().__init__()
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.from_probabilities(torch.sigmoid(logits), targets)

    def from_probabilities(self, probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(probabilities, targets, self.smooth)


class DiceBCELoss(DiceLoss):
    """Soft Dice + ``bce_weight`` x binary cross-entropy."""

    def __init__(self, smooth: float = 1.0, bce_weight: float = 1.0) -> None:
        super().__init__(smooth)
        self.bce_weight = bce_weight

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        dice = soft_dice_loss(torch.sigmoid(logits), targets, self.smooth)
        return dice + self.bce_weight * F.binary_cross_entropy_with_logits(logits, targets)

    def from_probabilities(self, probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        dice = soft_dice_loss(probabilities, targets, self.smooth)
        return dice + self.bce_weight * F.binary_cross_entropy(probabilities.clamp(1e-6, 1 - 1e-6), targets)


class DiceBCEclDiceLoss(DiceBCELoss):
    """Soft Dice + BCE + ``cldice_weight`` x soft clDice (MONAI ``SoftclDiceLoss``, 3 soft-skeleton steps).

    0.5 is the weight Shit et al. found best for their Dice + clDice combination (Table 5).
    """

    def __init__(self, smooth: float = 1.0, bce_weight: float = 1.0, cldice_weight: float = 0.5) -> None:
        super().__init__(smooth, bce_weight)
        from monai.losses import SoftclDiceLoss

        self.cldice_weight = cldice_weight
        self.cldice = SoftclDiceLoss(iter_=3, smooth=1e-4)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().forward(logits, targets) + self.cldice_weight * self.cldice(
            torch.sigmoid(logits), targets
        )

    def from_probabilities(self, probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return super().from_probabilities(probabilities, targets) + self.cldice_weight * self.cldice(
            probabilities, targets
        )


class MIPAuxiliaryLoss(nn.Module):
    """VC-Net eq. (3): ``L = L_vox + lambda L_mip`` for networks with a composited-MIP stream.

    ``L_vox`` is ``volume_loss`` on the 3D logits; ``L_mip`` is the soft Dice (eq. 4) of the 2D stream's
    prediction on the composited MIP against the labels projected with the image MIP's own slice indices
    (the label of the voxel each MIP pixel shows), tiled the same way. Plain logits (no MIP output, e.g. in
    validation) get ``volume_loss`` alone.
    """

    def __init__(self, volume_loss: DiceLoss, mip_weight: float = 0.2) -> None:
        super().__init__()
        self.volume_loss = volume_loss
        self.mip_weight = mip_weight
        # The MIP term's Dice smoothing (eq. 4's delta): the volume loss's when it is a Dice loss.
        self.smooth = getattr(volume_loss, "smooth", 1.0)

    def forward(self, output, targets: torch.Tensor) -> torch.Tensor:
        if isinstance(output, torch.Tensor):
            return self.volume_loss(output, targets)
        from VesselSegLib.models.mip import composite_tiles, gather_at_indices

        volume_term = self.volume_loss(output.logits.float(), targets)
        mip_targets = composite_tiles(gather_at_indices(targets, output.mip_indices))
        mip_term = soft_dice_loss(torch.sigmoid(output.mip_logits.float()), mip_targets, self.smooth)
        return volume_term + self.mip_weight * mip_term

    def from_probabilities(self, probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.volume_loss.from_probabilities(probabilities, targets)


def build_loss(name: str, *, mip_weight: float | None = None) -> nn.Module:
    """``"dice"`` -> :class:`DiceLoss`, ``"dice_bce"`` -> :class:`DiceBCELoss`, ``"dice_bce_cldice"`` ->
    :class:`DiceBCEclDiceLoss`, ``"balanced_bce_tv"`` ->
    :class:`trainer.losses_2pm.BalancedBCETVLoss` (2PM V-Net eq. 3 without weight decay, which is
    ``training.weight_decay``); with ``mip_weight`` (networks with a MIP stream) wrapped in
    :class:`MIPAuxiliaryLoss`."""
    if name == "dice":
        loss = DiceLoss()
    elif name == "dice_bce":
        loss = DiceBCELoss()
    elif name == "dice_bce_cldice":
        loss = DiceBCEclDiceLoss()
    elif name == "balanced_bce_tv":
        loss = BalancedBCETVLoss()
    else:
        raise ValueError(
            f"Unknown loss {name!r}; choose 'dice', 'dice_bce', 'dice_bce_cldice' or 'balanced_bce_tv'."
        )
    return loss if mip_weight is None else MIPAuxiliaryLoss(loss, mip_weight)


__all__ = [
    "BalancedBCETVLoss",
    "DiceBCELoss",
    "DiceBCEclDiceLoss",
    "DiceLoss",
    "MIPAuxiliaryLoss",
    "build_loss",
    "soft_dice_loss",
]
