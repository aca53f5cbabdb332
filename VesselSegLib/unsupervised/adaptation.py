"""Label-free training steps, shared by the trainer and by "adapt to this stack" (test-time training).

UMIS (paper section 4.4, "FT") keeps training the network on the user's own stack with the same
unsupervised loss before segmenting it; the paper found it helps most when the stack comes from another
microscope than the training data. :func:`adapt_network` does that within a wall-clock budget, on a copy of
the weights (the registry's file is never touched), with progress, cancel and a guard against collapse.

Any network with a sigmoid output can be adapted: a UMIS network gives ``S_bar``, ``S`` and ``I_bar``
(:meth:`VesselSegLib.models.umis.UMISNet.forward_all`); for any other, ``S_bar`` is its sigmoid output, ``S``
its morphological smoothing, and the reconstruction term is dropped (it has no reconstruction decoder).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.models.morphology import morphological_smoothing
from VesselSegLib.models.umis import UMISOutput
from VesselSegLib.unsupervised.loss import TERM_NAMES, UMISLoss

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdaptationSettings:
    """How :func:`adapt_network` trains; the defaults are the UMIS notes' (section 6, "Product").

    Attributes
    ----------
    patch_size_zyx : 3 ints
        Random crops of the stack (reflect-padded when the stack is thinner), multiples of the network's
        size divisor.
    batch_size : int
    learning_rate : float
        Adam's, fresh for each adaptation (the paper fine-tunes at its training rate, 1e-4).
    loss_weights : {"notes", "code", "paper"}
        The UMIS loss preset (``VesselSegLib.unsupervised.loss``).
    guard_steps : int
        Consecutive steps of collapse (foreground fraction < ``min_fraction`` or > ``max_fraction``, or
        inside hardly brighter than outside, ``c1 - c2 < min_contrast``) after which the original weights
        are restored.
    seed : int
        Seeds the crop positions, so a run can be repeated.
    """

    patch_size_zyx: tuple[int, int, int] = (16, 128, 128)
    batch_size: int = 2
    learning_rate: float = 1e-4
    loss_weights: str = "notes"
    guard_steps: int = 20
    min_fraction: float = 1e-4
    max_fraction: float = 0.9
    #: Normalised intensity; a trained model starts near 0.1-0.2 on VesselNN (UMIS notes, pilot).
    min_contrast: float = 1e-3
    seed: int = 0


def segmentation_maps(network: nn.Module, images: torch.Tensor) -> UMISOutput:
    """``S_bar``, ``S`` and ``I_bar`` (None without a reconstruction decoder) of ``images`` (B, 1, Z, Y, X)."""
    if hasattr(network, "forward_all"):
        return network.forward_all(images)
    raw = torch.sigmoid(network(images).float())
    return UMISOutput(raw, morphological_smoothing(raw), None)


def unsupervised_step(
    network: nn.Module, loss: UMISLoss, optimizer: torch.optim.Optimizer, images: torch.Tensor
) -> dict[str, float]:
    """One Adam step of the UMIS loss on ``images`` (B, 1, Z, Y, X) in [0, 1]; returns every logged term.

    Keys: ``"loss"`` (the weighted total), the unweighted terms ``"ac"`` ... ``"me"``, ``"c1"``, ``"c2"`` and
    ``"fraction"`` (share of voxels with S > 0.5).
    """
    images = images.clamp(0.0, 1.0)
    optimizer.zero_grad(set_to_none=True)
    maps = segmentation_maps(network, images)
    # Without a reconstruction decoder the image stands in for I_bar: L_rec has no gradient then.
    reconstruction = maps.reconstruction if maps.reconstruction is not None else images
    total, terms = loss(
        images,
        raw_segmentation=maps.raw_segmentation,
        segmentation=maps.segmentation,
        reconstruction=reconstruction,
    )
    if not torch.isfinite(total):
        raise FloatingPointError(f"The UMIS loss is not finite ({float(total)}); lower the learning rate.")
    total.backward()
    optimizer.step()
    return {"loss": float(total.detach()), **{name: float(value) for name, value in terms.items()}}


def padded_to(image: np.ndarray, size_zyx: Sequence[int]) -> np.ndarray:
    """``image`` mirror-padded (repeatedly, for stacks much thinner than the patch) to at least ``size_zyx``."""
    while any(s < p for s, p in zip(image.shape, size_zyx, strict=True)):
        pad = [(0, min(p - s, s)) if s < p else (0, 0) for s, p in zip(image.shape, size_zyx, strict=True)]
        image = np.pad(image, pad, mode="symmetric")
    return image


def random_crops(
    image: np.ndarray, size_zyx: Sequence[int], count: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` random crops ``(count, 1, *size_zyx)`` float32 of a (Z, Y, X) volume, with in-plane flips."""
    volume = padded_to(np.asarray(image, dtype=np.float32), size_zyx)
    crops = []
    for _ in range(count):
        start = [int(rng.integers(0, s - p + 1)) for s, p in zip(volume.shape, size_zyx, strict=True)]
        crop = volume[tuple(slice(a, a + p) for a, p in zip(start, size_zyx, strict=True))]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        if rng.random() < 0.5:
            crop = crop[:, :, ::-1]
        crops.append(crop)
    return np.ascontiguousarray(np.stack(crops)[:, None])


def adapt_network(
    network: nn.Module,
    image: np.ndarray,
    *,
    budget_s: float,
    settings: AdaptationSettings | None = None,
    device: str | torch.device = "cpu",
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[nn.Module, dict]:
    """Train a copy of ``network`` on random crops of ``image`` with the UMIS loss for ``budget_s`` seconds.

    Parameters
    ----------
    network : nn.Module
        Left untouched (weights and mode); a deep copy is trained.
    image : ndarray of float32, shape (Z, Y, X)
        The stack, normalised as the network's training data (values are clipped to [0, 1]).
    budget_s : float
        Wall-clock seconds. A step is started only when the previous step's duration still fits, so the
        run ends within the budget plus at most one step (the first step's length is not known before).
    settings : AdaptationSettings, optional
    device : str or torch.device
    progress : callable (fraction, message), optional
        Called after each step with the share of the budget used, monotone in [0, 1].
    cancel : callable () -> bool, optional
        Polled before every step.

    Returns
    -------
    adapted : nn.Module
        The trained copy in eval mode, or ``network`` itself when the collapse guard fired (or the
        budget allowed no step).
    record : dict
        JSON-ready: ``budget_s``, ``seconds``, ``steps``, ``collapsed``, ``learning_rate``, ``first`` and
        ``last`` (the logged terms of the first and last step).

    Raises
    ------
    SegmentationCancelled
        ``cancel()`` returned True; ``network`` is unchanged.
    """
    settings = settings or AdaptationSettings()
    started = time.perf_counter()
    record: dict = {
        "budget_s": float(budget_s),
        "steps": 0,
        "collapsed": False,
        "learning_rate": settings.learning_rate,
        "patch_size_zyx": list(settings.patch_size_zyx),
        "batch_size": settings.batch_size,
    }
    if budget_s <= 0:
        record["seconds"] = 0.0
        return network, record
    adapted = copy.deepcopy(network).to(device)
    adapted.train()
    loss = UMISLoss(weights=settings.loss_weights)
    optimizer = torch.optim.Adam(adapted.parameters(), lr=settings.learning_rate)
    rng = np.random.default_rng(settings.seed)
    last_step_s, collapsing, terms = 0.0, 0, {}
    while True:
        elapsed = time.perf_counter() - started
        if record["steps"] and elapsed + last_step_s > budget_s:
            break
        if cancel is not None and cancel():
            raise SegmentationCancelled(
                "Adaptation cancelled by the user; the model's weights are unchanged."
            )
        tick = time.perf_counter()
        crops = torch.from_numpy(random_crops(image, settings.patch_size_zyx, settings.batch_size, rng))
        terms = unsupervised_step(adapted, loss, optimizer, crops.to(device))
        last_step_s = time.perf_counter() - tick
        record["steps"] += 1
        record.setdefault("first", terms)
        collapsed_now = (
            terms["fraction"] < settings.min_fraction
            or terms["fraction"] > settings.max_fraction
            or terms["c1"] - terms["c2"] < settings.min_contrast
        )
        collapsing = collapsing + 1 if collapsed_now else 0
        if progress is not None:
            fraction = min(1.0, (time.perf_counter() - started) / budget_s)
            progress(
                fraction,
                f"Adapting to this stack: step {record['steps']}, loss {terms['loss']:.4f}, "
                f"foreground {100 * terms['fraction']:.1f} %",
            )
        if collapsing >= settings.guard_steps:
            record["collapsed"] = True
            logger.warning(
                "Adaptation stopped after %d steps: the segmentation collapsed (foreground %.2g %%, inside %.3g "
                "vs outside %.3g for %d steps); the original weights are used.",
                record["steps"],
                100 * terms["fraction"],
                terms["c1"],
                terms["c2"],
                settings.guard_steps,
            )
            break
    record["last"] = terms
    record["seconds"] = time.perf_counter() - started
    if record["collapsed"]:
        return network, record
    adapted.eval()
    return adapted, record


def logged_term_names() -> tuple[str, ...]:
    """Names of the values :func:`unsupervised_step` returns, in log order."""
    return ("loss", *TERM_NAMES, "c1", "c2", "fraction")


__all__ = [
    "AdaptationSettings",
    "adapt_network",
    "logged_term_names",
    "padded_to",
    "random_crops",
    "segmentation_maps",
    "unsupervised_step",
]
