"""Segmentation losses on per-class sigmoid outputs.

VC-Net trains with a soft Dice loss (Wang et al., VC-Net, eq. (4), the voxel term of eq. (3)):
``L = -(2 sum p g + delta) / (sum p + sum g + delta)``. Here it is written as ``1 - Dice`` (same gradient,
non-negative), computed per class channel over the whole batch and averaged over the classes. A channel
whose target is empty in the batch still counts: it teaches the network to keep that class silent there
(e.g. no "artery" in a two-photon stack).

``dice_bce`` adds voxel-wise binary cross-entropy, which gives useful gradients from the first step where
Dice alone is flat (nnU-Net's default combination).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn


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


def build_loss(name: str) -> DiceLoss:
    """``"dice"`` -> :class:`DiceLoss`, ``"dice_bce"`` -> :class:`DiceBCELoss`."""
    if name == "dice":
        return DiceLoss()
    if name == "dice_bce":
        return DiceBCELoss()
    raise ValueError(f"Unknown loss {name!r}; choose 'dice' or 'dice_bce'.")


__all__ = ["DiceBCELoss", "DiceLoss", "build_loss", "soft_dice_loss"]
