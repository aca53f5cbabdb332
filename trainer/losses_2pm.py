"""The loss of the two-photon microscopy (2PM) V-Net: class-balanced BCE plus 3D total variation.

The 2PM V-Net (Tahir et al. [1]_, Sec. 4.4) trains with

``L(W) = E(W) + alpha TV(W) + gamma ||W||^2``                                              (eq. 3)

- ``E`` (eq. 1) is the binary cross-entropy with class balancing (Xie & Tu, HED):
  ``E = -beta sum_{i in Y+} log P(y_i = 1) - (1 - beta) sum_{i in Y-} log P(y_i = 0)`` with
  ``beta = |Y-| / |Y|`` and ``1 - beta = |Y+| / |Y|``, both counted in the current batch. ``beta`` is the
  *background* fraction, so the rare vessel voxels (about 4 % in 2PM) get the large weight ``beta`` and
  the background gets the small weight ``1 - beta``.
- ``TV`` (eq. 2) is the anisotropic total variation of the sigmoid output,
  ``TV = sum_i |grad_X P_i| + |grad_Y P_i| + |grad_Z P_i|``, with 3D Sobel operators as the gradients.
  It penalises speckle in the output, which the paper credits for denoising and for generalising to
  another microscope.
- ``gamma ||W||^2`` is weight decay. It is an optimiser setting here, not part of the loss:
  ``training.weight_decay`` in the configuration, passed to ``torch.optim.Adam(weight_decay=...)``.

Normalisation. The paper writes both terms as sums over voxels, but with a summed ``E`` its
``alpha = 5e-9`` would make ``alpha TV`` about 1e-7 of ``E``: the term would do nothing. Here ``E`` is
averaged over the voxels and ``TV`` summed over the voxels whose 3x3x3 neighbourhood lies inside the patch
(unnormalised Sobel kernels, whose response to a unit-slope ramp is 32). With the paper's batches of
4 x 128^3 voxels, ``alpha TV`` is then of the order of ``E`` (measured on synthetic batches with 4 % vessel
tubes: E = 0.05 and alpha TV = 0.04 for p = 0.5 + noise; 0.02 and 0.05 for a slightly blurred target), which
is the balance the published alpha implies. ``reduction="sum"`` gives eq. (1) literally. Because ``TV`` is a
sum, ``alpha`` is tied to the batch volume: for batches of ``B x Z x Y x X`` voxels,
``alpha = 5e-9 * 4 * 128**3 / (B * Z * Y * X)`` keeps the paper's balance between the two terms.

References
----------
.. [1] Tahir W, et al. Anatomical modeling of brain vasculature in two-photon microscopy by generalizable
       deep learning. BME Frontiers, 2021. Sec. 4.4, eqs. (1)-(3).
.. [2] Xie S, Tu Z. Holistically-nested edge detection. ICCV 2015 (the class-balanced cross-entropy).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

#: alpha of eq. (3), the TV weight the paper found best (for batches of 4 x 128^3 voxels).
PAPER_TV_WEIGHT = 5e-9
#: gamma of eq. (3), the weight decay the paper found best; set ``training.weight_decay`` to use it.
PAPER_WEIGHT_DECAY = 0.01
REDUCTIONS = ("mean", "sum")
#: Bounds on probabilities before taking logs in :meth:`BalancedBCETVLoss.from_probabilities`.
_PROBABILITY_EPSILON = 1e-6


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}; got {reduction!r}.")


def _check_pair(predictions: torch.Tensor, targets: torch.Tensor, what: str) -> None:
    if predictions.shape != targets.shape:
        raise ValueError(f"{what} {tuple(predictions.shape)} and targets {tuple(targets.shape)} differ.")
    if predictions.ndim < 2:
        raise ValueError(f"{what} must have shape (B, C, ...); got {tuple(predictions.shape)}.")


def class_balance_beta(targets: torch.Tensor) -> torch.Tensor:
    """The class-balancing weight beta of eq. (1), one per class channel, from the batch's labels.

    ``beta = |Y-| / |Y|``: the fraction of background voxels, counted over the batch and space. Positive
    (vessel) voxels are weighted by ``beta`` and background voxels by ``1 - beta = |Y+| / |Y|``.

    Parameters
    ----------
    targets : tensor, shape (B, C, Z, Y, X)
        Binary (0/1) targets; soft targets in [0, 1] count fractionally.

    Returns
    -------
    tensor, shape (C,)
        beta per class channel, in [0, 1], detached (it is data, not a function of the weights).
    """
    if targets.ndim < 2:
        raise ValueError(f"targets must have shape (B, C, ...); got {tuple(targets.shape)}.")
    dims = [0, *range(2, targets.ndim)]  # batch and space, keep classes
    positive_fraction = targets.detach().float().mean(dim=dims)
    return 1.0 - positive_fraction


def _balanced_bce(
    log_p_positive: torch.Tensor, log_p_negative: torch.Tensor, targets: torch.Tensor, reduction: str
) -> torch.Tensor:
    """Eq. (1) from ``log P(y=1)`` and ``log P(y=0)``, both shaped like ``targets`` (B, C, ...)."""
    beta = class_balance_beta(targets).to(log_p_positive.dtype)
    beta = beta.view(1, -1, *([1] * (targets.ndim - 2)))  # broadcast over batch and space
    targets = targets.to(log_p_positive.dtype)
    voxel_terms = -(beta * targets * log_p_positive + (1.0 - beta) * (1.0 - targets) * log_p_negative)
    return voxel_terms.sum() if reduction == "sum" else voxel_terms.mean()


def class_balanced_bce(
    logits: torch.Tensor, targets: torch.Tensor, *, reduction: str = "mean"
) -> torch.Tensor:
    """Binary cross-entropy with class balancing, eq. (1), on logits.

    ``E = -beta sum_{Y+} log sigmoid(z) - (1 - beta) sum_{Y-} log(1 - sigmoid(z))`` with
    ``beta = |Y-| / |Y|`` per class channel (:func:`class_balance_beta`): vessels, the rare class, get the
    large weight. A channel with no positive voxel in the batch has ``beta = 1`` and so contributes nothing
    (the formula's consequence: it gives no signal to keep an absent class silent).

    Parameters
    ----------
    logits : tensor, shape (B, C, Z, Y, X)
        Network outputs before the sigmoid.
    targets : tensor, shape (B, C, Z, Y, X)
        Binary (0/1) targets.
    reduction : {"mean", "sum"}
        "sum" is eq. (1) as written; "mean" divides it by the number of elements ``B C Z Y X``, the
        normalisation under which ``alpha = 5e-9`` balances the two terms (see the module docstring).

    Returns
    -------
    tensor, shape ()
    """
    _check_pair(logits, targets, "Logits")
    _check_reduction(reduction)
    # logsigmoid(-z) = log(1 - sigmoid(z)), without the cancellation for large z.
    return _balanced_bce(F.logsigmoid(logits), F.logsigmoid(-logits), targets, reduction)


def _central_difference(volumes: torch.Tensor, axis: int) -> torch.Tensor:
    """``v[i + 1] - v[i - 1]`` along ``axis``, inner positions only (Sobel's ``[-1, 0, 1]``)."""
    inner = volumes.shape[axis] - 2
    return volumes.narrow(axis, 2, inner) - volumes.narrow(axis, 0, inner)


def _smoothing(volumes: torch.Tensor, axis: int) -> torch.Tensor:
    """``v[i - 1] + 2 v[i] + v[i + 1]`` along ``axis``, inner positions only (Sobel's ``[1, 2, 1]``)."""
    inner = volumes.shape[axis] - 2
    return (
        volumes.narrow(axis, 0, inner) + 2.0 * volumes.narrow(axis, 1, inner) + volumes.narrow(axis, 2, inner)
    )


def _sobel_gradients_3d(volumes: torch.Tensor) -> list[torch.Tensor]:
    """The three 3D Sobel responses of ``volumes`` (N, Z, Y, X) at the inner voxels, each (N, Z-2, Y-2, X-2).

    The 3x3x3 Sobel kernel for one axis is the outer product of ``[-1, 0, 1]`` along that axis and
    ``[1, 2, 1]`` along the two others (scipy.ndimage.sobel's kernels, unnormalised: a ramp of slope 1
    per voxel gives 2 x 4 x 4 = 32). It is applied here as three 1D passes, which gives the same numbers as
    ``conv3d`` with the 3x3x3 kernel but takes the difference first: equal neighbours subtract to an exact
    0, so a constant region has exactly zero TV and zero TV gradient (a 27-tap float32 convolution leaves
    ~1e-7 of rounding per voxel).
    """
    spatial_axes = (1, 2, 3)
    gradients = []
    for axis in spatial_axes:
        response = _central_difference(volumes, axis)
        for other in spatial_axes:
            if other != axis:
                response = _smoothing(response, other)
        gradients.append(response)
    return gradients


def sobel_total_variation_3d(probabilities: torch.Tensor, *, reduction: str = "sum") -> torch.Tensor:
    """Anisotropic 3D total variation with Sobel gradients, eq. (2).

    ``TV = sum_i |S_z * P|_i + |S_y * P|_i + |S_x * P|_i``: the absolute responses of the three 3D Sobel
    operators, added (the L1 sum of eq. (2), not the Euclidean gradient magnitude). It is computed on each
    class channel separately, in voxel units (the paper ignores the 1.2 x 1.2 x 2 um anisotropy), over the
    voxels whose whole 3x3x3 neighbourhood lies inside the patch, so that padding invents no edges: a
    constant volume gives exactly 0, and a volume thinner than 3 voxels along an axis gives 0.

    Parameters
    ----------
    probabilities : tensor, shape (B, C, Z, Y, X)
        The network's sigmoid output (any real values work).
    reduction : {"sum", "mean"}
        "sum" (eq. 2, the normalisation ``alpha = 5e-9`` was tuned with); "mean" divides by the number of
        inner voxels ``B C (Z - 2) (Y - 2) (X - 2)``.

    Returns
    -------
    tensor, shape ()
        For ``P = a z + b y + c x`` the inner voxels each contribute ``32 (|a| + |b| + |c|)``.
    """
    if probabilities.ndim != 5:
        raise ValueError(f"Probabilities must have shape (B, C, Z, Y, X); got {tuple(probabilities.shape)}.")
    _check_reduction(reduction)
    batch, channels, *spatial = probabilities.shape
    if min(spatial) < 3 or probabilities.numel() == 0:
        return probabilities.sum() * 0.0  # no inner voxel; keeps the graph and the dtype
    volumes = probabilities.reshape(batch * channels, *spatial)  # each channel on its own
    total = sum(gradient.abs().sum() for gradient in _sobel_gradients_3d(volumes))
    if reduction == "sum":
        return total
    return total / (batch * channels * math.prod(size - 2 for size in spatial))


class BalancedBCETVLoss(nn.Module):
    """``E + alpha TV`` of eq. (3): class-balanced BCE (eq. 1) plus Sobel total variation (eq. 2).

    The ``gamma ||W||^2`` term of eq. (3) is weight decay and is *not* in this loss: set
    ``training.weight_decay`` (the paper's gamma = 0.01), which ``Trainer.build_optimizer`` passes to Adam.
    Adam's ``weight_decay = gamma`` adds ``gamma W`` to every parameter's gradient, the gradient of
    ``gamma / 2 ||W||^2`` (Adam also decays biases and normalisation parameters).

    Parameters
    ----------
    alpha : float
        Weight of the TV term (eq. 3); the paper's 5e-9 assumes batches of 4 x 128^3 voxels with the
        default reductions (see the module docstring for rescaling it to other batch volumes).
    bce_reduction : {"mean", "sum"}
        Normalisation of eq. (1); see :func:`class_balanced_bce`.
    tv_reduction : {"sum", "mean"}
        Normalisation of eq. (2); see :func:`sobel_total_variation_3d`.
    """

    def __init__(
        self, alpha: float = PAPER_TV_WEIGHT, *, bce_reduction: str = "mean", tv_reduction: str = "sum"
    ) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
            raise ValueError(f"alpha (the TV weight) must be a number >= 0, got {alpha!r}.")
        if not math.isfinite(alpha):
            raise ValueError(f"alpha (the TV weight) must be finite, got {alpha!r}.")
        _check_reduction(bce_reduction)
        _check_reduction(tv_reduction)
        self.alpha = float(alpha)
        self.bce_reduction = bce_reduction
        self.tv_reduction = tv_reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Loss of logits ``(B, C, Z, Y, X)`` against binary targets of the same shape."""
        balanced_bce = class_balanced_bce(logits, targets, reduction=self.bce_reduction)
        total_variation = sobel_total_variation_3d(torch.sigmoid(logits), reduction=self.tv_reduction)
        return balanced_bce + self.alpha * total_variation

    def from_probabilities(self, probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The same loss from sigmoid outputs ``(B, C, Z, Y, X)`` (validation on stitched volumes).

        Probabilities are clipped to ``[1e-6, 1 - 1e-6]`` before the logs of eq. (1), as a logit of
        about +-13.8 would be; the TV term sees them unclipped.
        """
        _check_pair(probabilities, targets, "Probabilities")
        bounded = probabilities.clamp(_PROBABILITY_EPSILON, 1.0 - _PROBABILITY_EPSILON)
        balanced_bce = _balanced_bce(torch.log(bounded), torch.log1p(-bounded), targets, self.bce_reduction)
        total_variation = sobel_total_variation_3d(probabilities, reduction=self.tv_reduction)
        return balanced_bce + self.alpha * total_variation

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha:g}, bce_reduction={self.bce_reduction!r}, tv_reduction={self.tv_reduction!r}"
        )


__all__ = [
    "PAPER_TV_WEIGHT",
    "PAPER_WEIGHT_DECAY",
    "BalancedBCETVLoss",
    "class_balance_beta",
    "class_balanced_bce",
    "sobel_total_variation_3d",
]
