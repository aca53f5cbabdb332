"""Morphological pooling layers of UMIS: planar grey dilation/erosion, IS, SI and the smoothing (SI o IS)^k.

UMIS (Gur et al. [1]_) smooths the network's segmentation with the morphological curvature operator of
morphological snakes (Marquez-Neila et al. [2]_), written as two parameter-free layers:

``SI(x) = max_{B in P} -MaskPool(-x, B)``  (sup of erosions, eq. 2 and eq. 14)
``IS(x) = min_{B in P} MaskPool(x, B)``    (inf of dilations, eq. 3 and eq. 15)
``S = (SI o IS)^k (S_bar)``, IS applied first, ``k = 3``                     (eq. 12)

``P`` is the set of the nine 3x3x3 *planar* structuring elements: 3x3 squares of 9 voxels through the
centre of the cube, the three axis planes and the six diagonal planes that contain one axis (paper Fig. 1;
the same set, in the same order, as scikit-image's 3D morphsnakes ``_P3``). Indexing is ``[z, y, x]``:

====  =====================  ====================================  ======================
 i    voxels (j = 0, 1, 2)   plane                                 segments (separable)
====  =====================  ====================================  ======================
 0    ``[:, :, 1]``          z-y plane (x = 0)                     z + y
 1    ``[:, 1, :]``          z-x plane (y = 0)                     z + x
 2    ``[1, :, :]``          y-x plane (z = 0)                     y + x
 3    ``[:, j, j]``          contains z and (0, 1, 1)              z + (0, 1, 1)
 4    ``[:, j, 2 - j]``      contains z and (0, 1, -1)             z + (0, 1, -1)
 5    ``[j, :, j]``          contains y and (1, 0, 1)              y + (1, 0, 1)
 6    ``[j, :, 2 - j]``      contains y and (1, 0, -1)             y + (1, 0, -1)
 7    ``[j, j, :]``          contains x and (1, 1, 0)              x + (1, 1, 0)
 8    ``[j, 2 - j, :]``      contains x and (1, -1, 0)             x + (1, -1, 0)
====  =====================  ====================================  ======================

``MaskPool(x, B)(p)`` is the maximum of ``x`` over the 9 voxels ``p + B`` (stride 1, same size), i.e. the
grey dilation by ``B``. Voxels outside the volume are *ignored*, as in the official CUDA kernel, which only
visits in-bounds voxels: equivalently the volume is padded with -inf for a dilation and +inf for an
erosion. Eq. (16) read literally (multiply by the 0/1 mask, then take the maximum over the whole 3x3x3
window) would let the masked-out zeros win wherever the values are negative, i.e. inside the erosion
``-MaskPool(-x, B)``; that is not what the layers compute.

Implementation. Each plane is the Minkowski sum of two 3-voxel segments along disjoint axes (last column
of the table), so a dilation by a plane is two dilations by segments, and with disjoint axes the in-bounds
rule is kept exactly: for ``p`` inside, ``p + a + b`` is inside iff ``p + a`` and ``p + b`` are, so
dilating by one segment and then by the other visits exactly the in-volume voxels of ``p + B``. A
segment dilation is the maximum over a stack of three shifted views of one -inf padded copy; the three
axis dilations (the first segments) are shared by the nine planes, so IS costs 12 three-view maxima and
one 9-way minimum instead of 81 slices per voxel (the naive 81-slice autograd version took 41 s backward
on 16x128x128, this one 0.2 s on one thread). Erosions are ``-dilation(-x)`` (hence +inf padding) and
``SI(x) = -IS(-x)``. The result is exact, not an approximation. Gradients are the usual max/min-pool
subgradients: each output's gradient goes to the voxel that attains the max/min (shared evenly when values
tie), so the layers work with autograd on any device and in any floating dtype.

References
----------
.. [1] Gur S, Wolf L, Golgher L, Blinder P. Unsupervised microvascular image segmentation using an active
       contours mimicking neural network. ICCV 2019. Sec. 3-4.1, eqs. (2)-(3), (12), (14)-(16), Fig. 1.
.. [2] Marquez-Neila P, Baumela L, Alvarez L. A morphological approach to curvature-based evolution of
       curves and surfaces. IEEE TPAMI 36(1), 2014. (The SI/IS operators and the planar elements.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

#: Number of planar structuring elements in 3D.
N_PLANES = 9
#: Iterations of SI o IS in UMIS (the paper's mu, eq. 12).
PAPER_SMOOTHING_ITERATIONS = 3

# Spatial axes of a (B, C, Z, Y, X) tensor.
_Z, _Y, _X = 2, 3, 4


def planar_footprints() -> torch.Tensor:
    """The nine 3x3x3 planar structuring elements of eqs. (2)-(3), in the order of the module table.

    Returns
    -------
    tensor of bool, shape (9, 3, 3, 3)
        ``footprints[i][z, y, x]`` is True on the 9 voxels of plane ``i``. Identical to scikit-image's
        ``skimage.segmentation.morphsnakes._P3`` (same planes, same order).
    """
    footprints = torch.zeros(N_PLANES, 3, 3, 3, dtype=torch.bool)
    j = torch.arange(3)
    footprints[0, :, :, 1] = True
    footprints[1, :, 1, :] = True
    footprints[2, 1, :, :] = True
    footprints[3, :, j, j] = True
    footprints[4, :, j, 2 - j] = True
    footprints[5, j, :, j] = True
    footprints[6, j, :, 2 - j] = True
    footprints[7, j, j, :] = True
    footprints[8, j, 2 - j, :] = True
    return footprints


def _check_volume(x: torch.Tensor) -> None:
    if x.ndim != 5:
        raise ValueError(f"Input must have shape (B, C, Z, Y, X); got {tuple(x.shape)}.")
    if not x.is_floating_point():
        # -inf padding (ignored outside voxels) needs a floating-point dtype.
        raise TypeError(f"Input must be a floating-point tensor; got {x.dtype}.")


def _pad_all(x: torch.Tensor) -> torch.Tensor:
    """``x`` padded by one voxel of -inf on each side of Z, Y and X: outside voxels never win a max."""
    return F.pad(x, (1, 1, 1, 1, 1, 1), value=float("-inf"))


def _segment_dilation(padded: torch.Tensor, step: tuple[int, int, int]) -> torch.Tensor:
    """``max(x[p - step], x[p], x[p + step])`` for every voxel ``p``, from ``padded = _pad_all(x)``.

    Parameters
    ----------
    padded : tensor, shape (B, C, Z + 2, Y + 2, X + 2)
    step : (dz, dy, dx), each in {-1, 0, 1}
        Direction of the 3-voxel segment.

    Returns
    -------
    tensor, shape (B, C, Z, Y, X)
    """

    def shifted(sign: int) -> torch.Tensor:
        # Element p of the view is x[p + sign * step], or -inf outside the volume.
        view = padded
        for axis, delta in zip((_Z, _Y, _X), step, strict=True):
            view = view.narrow(axis, 1 + sign * delta, padded.shape[axis] - 2)
        return view

    # stack + amax rather than two torch.maximum: its backward is one pass over the stack, about 3x faster
    # on the CPU than the two binary backwards, and max_pool3d (the other exact choice for axis segments)
    # is 4x slower forward.
    return torch.stack((shifted(-1), shifted(0), shifted(1))).amax(dim=0)


def planar_dilations(x: torch.Tensor) -> torch.Tensor:
    """Grey dilations of ``x`` by each of the nine planar elements: ``MaskPool(x, B)`` of eq. (16).

    Parameters
    ----------
    x : tensor, shape (B, C, Z, Y, X), floating point
        Any real values; channels are processed independently.

    Returns
    -------
    tensor, shape (B, C, 9, Z, Y, X)
        ``out[:, :, i]`` is the maximum of ``x`` over the in-volume voxels of ``p + B_i``, with ``B_i``
        ``planar_footprints()[i]``. Equals ``scipy.ndimage.grey_dilation(x, footprint=B_i,
        mode="constant", cval=-inf)`` per volume.
    """
    _check_volume(x)
    # First segment of each plane (module table); the three axis dilations are shared by all nine.
    padded = _pad_all(x)
    along_z = _pad_all(_segment_dilation(padded, (1, 0, 0)))
    along_y = _pad_all(_segment_dilation(padded, (0, 1, 0)))
    along_x = _pad_all(_segment_dilation(padded, (0, 0, 1)))
    planes = (
        _segment_dilation(along_z, (0, 1, 0)),  # P0: z + y
        _segment_dilation(along_z, (0, 0, 1)),  # P1: z + x
        _segment_dilation(along_y, (0, 0, 1)),  # P2: y + x
        _segment_dilation(along_z, (0, 1, 1)),  # P3: z + (0, 1, 1)
        _segment_dilation(along_z, (0, 1, -1)),  # P4: z + (0, 1, -1)
        _segment_dilation(along_y, (1, 0, 1)),  # P5: y + (1, 0, 1)
        _segment_dilation(along_y, (1, 0, -1)),  # P6: y + (1, 0, -1)
        _segment_dilation(along_x, (1, 1, 0)),  # P7: x + (1, 1, 0)
        _segment_dilation(along_x, (1, -1, 0)),  # P8: x + (1, -1, 0)
    )
    return torch.stack(planes, dim=2)


def planar_erosions(x: torch.Tensor) -> torch.Tensor:
    """Grey erosions of ``x`` by each planar element: ``-MaskPool(-x, B)`` of eq. (14).

    Parameters
    ----------
    x : tensor, shape (B, C, Z, Y, X), floating point

    Returns
    -------
    tensor, shape (B, C, 9, Z, Y, X)
        The minimum over the in-volume voxels of ``p + B_i`` (+inf padding), i.e.
        ``scipy.ndimage.grey_erosion(x, footprint=B_i, mode="constant", cval=inf)``.
    """
    return -planar_dilations(-x)


def inf_sup(x: torch.Tensor) -> torch.Tensor:
    """The IS operator (inf of sups), eqs. (3) and (15): ``min_B MaskPool(x, B)``.

    Parameters
    ----------
    x : tensor, shape (B, C, Z, Y, X), floating point

    Returns
    -------
    tensor, shape (B, C, Z, Y, X)
        On a 0/1 volume, equal to scikit-image's ``morphsnakes.inf_sup`` (everywhere: a binary dilation
        that treats the outside as 0 is the same as one that ignores it).
    """
    return planar_dilations(x).amin(dim=2)


def sup_inf(x: torch.Tensor) -> torch.Tensor:
    """The SI operator (sup of infs), eqs. (2) and (14): ``max_B -MaskPool(-x, B)``.

    Parameters
    ----------
    x : tensor, shape (B, C, Z, Y, X), floating point

    Returns
    -------
    tensor, shape (B, C, Z, Y, X)
        On a 0/1 volume, equal to scikit-image's ``morphsnakes.sup_inf`` away from the border. At the
        border they differ: scikit-image's binary erosion treats outside voxels as 0, UMIS ignores them.
    """
    # = planar_erosions(x).amax(dim=2), negating one volume instead of the nine erosions.
    return -inf_sup(-x)


def morphological_smoothing(x: torch.Tensor, *, iterations: int = PAPER_SMOOTHING_ITERATIONS) -> torch.Tensor:
    """The UMIS smoothing ``(SI o IS)^k``, eq. (12): ``SI(IS(... SI(IS(x))))``, IS applied first.

    Parameters
    ----------
    x : tensor, shape (B, C, Z, Y, X), floating point
        Typically the raw segmentation probabilities ``S_bar`` in [0, 1]; the output stays in the input's
        range (the operators only select input values).
    iterations : int, >= 0
        ``k`` (the paper's mu); 3 in the paper and the official code. 0 returns ``x``.

    Returns
    -------
    tensor, shape (B, C, Z, Y, X)
        ``S``; differentiable (max/min subgradients).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0; got {iterations!r}.")
    _check_volume(x)
    for _ in range(iterations):
        x = sup_inf(inf_sup(x))
    return x


class MorphologicalSmoothing(nn.Module):
    """``(SI o IS)^k`` as a parameter-free layer (eq. 12); holds ``iterations`` only.

    Parameters
    ----------
    iterations : int, >= 0
        ``k``; the paper's value 3 by default.

    Examples
    --------
    >>> smooth = MorphologicalSmoothing(iterations=3)
    >>> smooth(torch.rand(1, 1, 8, 16, 16)).shape
    torch.Size([1, 1, 8, 16, 16])
    """

    def __init__(self, *, iterations: int = PAPER_SMOOTHING_ITERATIONS) -> None:
        super().__init__()
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"iterations must be an integer >= 0; got {iterations!r}.")
        self.iterations = iterations

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return morphological_smoothing(x, iterations=self.iterations)

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}"
