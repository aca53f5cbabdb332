"""The physical voxel grid of a volume: shape, spacing, origin and direction, comparable between volumes.

A mask or a reference segmentation is only meaningful voxel for voxel if it lies on the input's grid;
:meth:`Grid.same_as` decides that, and :meth:`Grid.describe_difference` says what differs, for messages such
as "reference X is on another grid than the input (spacing (...) vs (...) mm); resample it onto the input
first".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _floats(values: Sequence[float], count: int, what: str) -> tuple[float, ...]:
    result = tuple(float(v) for v in np.asarray(values, dtype=float).ravel())
    if len(result) != count or not all(np.isfinite(result)):
        raise ValueError(f"A grid's {what} must be {count} finite numbers, got {values!r}.")
    return result


def _format(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


@dataclass(frozen=True)
class Grid:
    """Where a (Z, Y, X) array's voxels lie in the world, in ITK's LPS convention.

    Attributes
    ----------
    shape_zyx : tuple of 3 int
        Array shape (Z, Y, X).
    spacing_xyz : tuple of 3 float
        Voxel size in mm along the image's I, J, K axes (X, Y, Z: ITK order).
    origin_xyz : tuple of 3 float
        World position (mm, LPS) of the centre of voxel (0, 0, 0).
    direction : tuple of 9 float
        The 3 x 3 direction matrix, row by row; its columns are the I, J, K axis directions in LPS.
    """

    shape_zyx: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__ so that grids built from arrays compare and hash.
        shape = tuple(int(s) for s in self.shape_zyx)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"A grid's shape must be 3 positive sizes (Z, Y, X), got {self.shape_zyx!r}.")
        spacing = _floats(self.spacing_xyz, 3, "spacing")
        if min(spacing) <= 0:
            raise ValueError(f"A grid's spacing must be positive (mm), got {self.spacing_xyz!r}.")
        object.__setattr__(self, "shape_zyx", shape)
        object.__setattr__(self, "spacing_xyz", spacing)
        object.__setattr__(self, "origin_xyz", _floats(self.origin_xyz, 3, "origin"))
        object.__setattr__(self, "direction", _floats(self.direction, 9, "direction"))

    @property
    def direction_matrix(self) -> np.ndarray:
        """The direction as a (3, 3) array; columns are the I, J, K axes in LPS."""
        return np.array(self.direction, dtype=float).reshape(3, 3)

    def ijk_to_lps(self) -> np.ndarray:
        """The (4, 4) affine taking voxel indices (i, j, k, 1) (X, Y, Z order) to LPS world mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix * np.asarray(self.spacing_xyz)
        affine[:3, 3] = self.origin_xyz
        return affine

    def _differences(self, other: Grid, tolerance: float) -> list[str]:
        found = []
        if self.shape_zyx != other.shape_zyx:
            found.append(f"shape (Z, Y, X) {self.shape_zyx} vs {other.shape_zyx}")
        mine, theirs = np.asarray(self.spacing_xyz), np.asarray(other.spacing_xyz)
        # Relative: a 1e-4 mm tolerance would be a tenth of a 1 um microscopy voxel.
        if np.any(np.abs(mine - theirs) > tolerance * np.maximum(mine, theirs)):
            found.append(f"spacing {_format(mine)} vs {_format(theirs)} mm")
        # Origins differ meaningfully by a fraction of a voxel, whatever the voxel size.
        shift = np.abs(np.subtract(self.origin_xyz, other.origin_xyz))
        if np.any(shift > tolerance * min(mine.min(), theirs.min())):
            found.append(f"origin {_format(self.origin_xyz)} vs {_format(other.origin_xyz)} mm")
        if np.any(np.abs(np.subtract(self.direction, other.direction)) > tolerance):
            found.append(f"direction {_format(self.direction)} vs {_format(other.direction)}")
        return found

    def same_as(self, other: Grid, tolerance: float = 1e-4) -> bool:
        """Whether ``other`` puts every voxel at the same place as this grid.

        Parameters
        ----------
        other : Grid
        tolerance : float
            Relative: spacings may differ by this fraction of themselves, origins by this fraction of the
            smallest voxel size, direction cosines by this much.
        """
        return not self._differences(other, tolerance)

    def describe_difference(self, other: Grid, tolerance: float = 1e-4) -> str:
        """What differs between the two grids, e.g. ``"spacing (0.5, 0.5, 1) vs (1, 1, 1) mm"``.

        Several differences are joined with ``"; "``; an empty string means :meth:`same_as` is true.
        """
        return "; ".join(self._differences(other, tolerance))


__all__ = ["Grid"]
