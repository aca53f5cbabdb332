"""Test-time augmentation by flips: predict on flipped copies of the input, flip back, average.

Only in-plane axes (Y, X) are flipped by default. Z is the anisotropic depth axis of two-photon stacks (5 um
steps against 1 um pixels, and signal fading with depth) and the slab axis of TOF-MRA (VC-Net projects its
MIPs along it), so a Z flip shows the network images unlike its training data.

Probabilities are averaged (nnU-Net's mirroring, ``_internal_maybe_mirror_and_predict`` in
``nnunetv2/inference/predict_from_raw_data.py``, averages logits instead): the mean of probability maps is one
too, and the sliding window then blends it like any network output.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

Batch = TypeVar("Batch", np.ndarray, torch.Tensor)

#: No flip, Y, X, and both: the four in-plane mirrorings (Z, the depth or slab axis, is never flipped).
IN_PLANE_FLIPS: tuple[tuple[int, ...], ...] = ((), (-2,), (-1,), (-2, -1))


def _checked_flip_axes(flip_axes_list, ndim: int) -> tuple[tuple[int, ...], ...]:
    """Each flip as negative spatial axes (-3 Z, -2 Y, -1 X) of an ``ndim``-dimensional batch."""
    if ndim < 3:
        raise ValueError(f"Expected a batch (N, C, Z, Y, X) with 3 spatial axes, got {ndim} dimensions.")
    checked = []
    for axes in flip_axes_list:
        values = (axes,) if isinstance(axes, int | np.integer) else tuple(axes)
        if not all(isinstance(a, int | np.integer) and not isinstance(a, bool) for a in values):
            raise ValueError(f"Flip axes must be whole numbers (-3 Z, -2 Y, -1 X), got {axes!r}.")
        negative = tuple(int(a) - ndim if a >= 0 else int(a) for a in values)
        if not all(-3 <= a <= -1 for a in negative) or len(set(negative)) != len(negative):
            raise ValueError(
                f"Flip axes must be distinct spatial axes of the (N, C, Z, Y, X) batch (-3 Z, -2 Y, -1 X, "
                f"or {ndim - 3}, {ndim - 2}, {ndim - 1}), got {axes!r}."
            )
        checked.append(negative)
    if not checked:
        raise ValueError("Give at least one flip (the empty tuple () is the unflipped input).")
    return tuple(checked)


def _flip(batch: Batch, axes: tuple[int, ...]) -> Batch:
    if not axes:
        return batch
    if isinstance(batch, torch.Tensor):
        return torch.flip(batch, axes)
    return np.ascontiguousarray(np.flip(batch, axes))


def predict_with_flips(
    predict: Callable[[Batch], Batch],
    image: Batch,
    flip_axes_list: Sequence[Sequence[int]] = IN_PLANE_FLIPS,
) -> Batch:
    """The mean of ``predict`` over flipped copies of ``image``, each flipped back first.

    Parameters
    ----------
    predict : callable
        Maps a batch ``(N, C, Z, Y, X)`` to probabilities ``(N, C', Z, Y, X)`` (same spatial shape, any
        number of channels), of the same type (torch tensor or NumPy array) as its input.
    image : torch.Tensor or ndarray, shape (N, C, Z, Y, X)
        Not modified.
    flip_axes_list : sequence of tuples of int
        The flips to average, each a tuple of spatial axes (negative, -3 Z, -2 Y, -1 X, or the batch's
        positive 2, 3, 4); ``()`` is the input itself. Default: the in-plane flips :data:`IN_PLANE_FLIPS`.

    Returns
    -------
    torch.Tensor or ndarray of float32, shape (N, C', Z, Y, X)
        ``mean_f f(predict(f(image)))`` over the flips ``f`` (each flip is its own inverse). Costs one
        ``predict`` call per flip (4 by default) and one extra prediction's memory.

    Raises
    ------
    ValueError
        A flip naming a non-spatial or repeated axis, no flip at all, or a prediction whose batch or spatial
        shape differs from the input's (it could not be flipped back onto it).
    """
    axes_list = _checked_flip_axes(flip_axes_list, image.ndim)
    total = None
    for axes in axes_list:
        prediction = predict(_flip(image, axes))
        if prediction.ndim != image.ndim or (
            tuple(prediction.shape[:1]) + tuple(prediction.shape[-3:])
            != tuple(image.shape[:1]) + tuple(image.shape[-3:])
        ):
            raise ValueError(
                "Test-time augmentation flips each prediction back, so the network must keep the batch and "
                f"spatial shape (N, ..., Z, Y, X) of its input; got {tuple(image.shape)} -> "
                f"{tuple(prediction.shape)}."
            )
        prediction = _flip(prediction, axes)
        if isinstance(prediction, torch.Tensor):
            prediction = prediction.float()
        else:
            prediction = np.asarray(prediction, dtype=np.float32)
        total = prediction if total is None else total + prediction  # never in place: ``predict``'s own
    return total / len(axes_list)


__all__ = ["IN_PLANE_FLIPS", "predict_with_flips"]
