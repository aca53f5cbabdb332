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
    *,
    output_scale_zyx: Sequence[int] = (1, 1, 1),
) -> Batch:
    """The mean of ``predict`` over flipped copies of ``image``, each flipped back first.

    Parameters
    ----------
    predict : callable
        Maps a batch ``(N, C, Z, Y, X)`` to probabilities ``(N, C', sZ, sY, sX)`` (any number of channels;
        ``s`` is ``output_scale_zyx``), of the same type (torch tensor or NumPy array) as its input.
    image : torch.Tensor or ndarray, shape (N, C, Z, Y, X)
        Not modified.
    flip_axes_list : sequence of tuples of int
        The flips to average, each a tuple of spatial axes (negative, -3 Z, -2 Y, -1 X, or the batch's
        positive 2, 3, 4); ``()`` is the input itself. Default: the in-plane flips :data:`IN_PLANE_FLIPS`.
    output_scale_zyx : 3 ints
        Output voxels per input voxel along each axis: (2, 2, 2) for ROSE-style super-resolution. A finer
        grid covering the same box is flipped back along the same axes: fine voxel ``i'`` lies in coarse voxel
        ``i' // s``, and its mirror ``s N - 1 - i'`` in the mirrored coarse voxel ``N - 1 - i' // s``.

    Returns
    -------
    torch.Tensor or ndarray of float32, shape (N, C', sZ, sY, sX)
        ``mean_f f(predict(f(image)))`` over the flips ``f`` (each flip is its own inverse). Costs one
        ``predict`` call per flip (4 by default) and one extra prediction's memory.

    Raises
    ------
    ValueError
        A flip naming a non-spatial or repeated axis, no flip at all, or a prediction whose batch or spatial
        shape differs from the input's times ``output_scale_zyx`` (it could not be flipped back onto it).
    """
    axes_list = _checked_flip_axes(flip_axes_list, image.ndim)
    scale = tuple(int(s) for s in output_scale_zyx)
    if len(scale) != 3 or min(scale) < 1:
        raise ValueError(
            f"Output scale must be 3 positive integers (Z, Y, X), got {tuple(output_scale_zyx)}."
        )
    expected = (image.shape[0], *(n * s for n, s in zip(image.shape[-3:], scale, strict=True)))
    total = None
    for axes in axes_list:
        prediction = predict(_flip(image, axes))
        if prediction.ndim != image.ndim or (
            tuple(prediction.shape[:1]) + tuple(prediction.shape[-3:]) != expected
        ):
            scaled = "" if scale == (1, 1, 1) else f" times the output scale {scale}"
            raise ValueError(
                "Test-time augmentation flips each prediction back, so the network must keep the batch and "
                f"spatial shape (N, ..., Z, Y, X) of its input{scaled}; got {tuple(image.shape)} -> "
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
