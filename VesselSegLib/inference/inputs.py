"""The images of one segmentation run, checked together: input, brain mask, companions, reference.

Every entry point fills a :class:`SegmentationInputs` (the command line from files through
``VesselSegLib.io``, the Slicer Logic from volume nodes) and the driver checks it in one place: each image
is a finite, non-constant 3D volume, and the mask, the companions and the reference lie on the input's grid
(shape, spacing, origin and direction), so that nothing is segmented or scored misaligned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from VesselSegLib.io.volume import Volume
from VesselSegLib.preprocessing.validation import check_image, validate_image, validate_mask

#: Largest relative difference between two grids for them to count as the same (``Grid.same_as``).
GRID_TOLERANCE = 1e-4


@dataclass
class SegmentationInputs:
    """The volumes a run reads, with their geometry (``VesselSegLib.io.Volume``). Never modified.

    Attributes
    ----------
    image : Volume
        The volume to segment, of the request's modality.
    mask : Volume or None
        Region to segment (non-zero inside), on the input's grid.
    companions : mapping modality -> Volume
        Co-registered images of other contrasts on the input's grid (VC-Net reads SWI beside TOF-MRA).
    reference : Volume or None
        Reference labels on the input's grid (a class map, or a binary vessel mask) to score the result.
    spacing_given : bool
        True when the user gave the voxel size (``--spacing``): it is then never "corrected" for units.
    names : mapping role -> str
        What to call each image in messages ("input", "mask", "SWI companion", "reference" by default).
    """

    image: Volume
    mask: Volume | None = None
    companions: Mapping[str, Volume] = field(default_factory=dict)
    reference: Volume | None = None
    spacing_given: bool = False
    names: Mapping[str, str] = field(default_factory=dict)
    _checked_with: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)
    """The companion modalities of the last ``check`` that passed: the entry points and the driver all call
    ``check`` (to fail before their own work), and the voxels are scanned once."""

    def name(self, role: str) -> str:
        return self.names.get(role, {"image": "input volume", "mask": "brain mask"}.get(role, role))

    def _check_grid(self, volume: Volume, role: str) -> None:
        if not volume.grid.same_as(self.image.grid, GRID_TOLERANCE):
            difference = volume.grid.describe_difference(self.image.grid, GRID_TOLERANCE)
            raise ValueError(
                f"The {self.name(role)} is not on the input volume's grid ({difference}); resample it onto the "
                "input first (e.g. Slicer's 'Resample Image (BRAINS)' with the input as reference)."
            )

    def checked_image(self) -> np.ndarray:
        """The input as float32 (a copy), refused if not 3D, not finite or constant."""
        return validate_image(self.image.array, name=self.name("image"))

    def checked_mask(self) -> np.ndarray | None:
        """The mask as bool on the input's grid, refused if on another grid or empty."""
        if self.mask is None:
            return None
        self._check_grid(self.mask, "mask")
        return validate_mask(self.mask.array, self.image.array.shape, name=self.name("mask"))

    def _companion_on_grid(self, modality: str) -> tuple[Volume, str]:
        """A companion, refused if on another grid, and what to call it in messages."""
        role = f"{modality} companion"
        volume = self.companions[modality]
        self._check_grid(volume, role)
        return volume, f"{self.name(role)} image"

    def checked_companion(self, modality: str) -> np.ndarray:
        """A companion as float32, refused if on another grid, not finite or constant."""
        volume, name = self._companion_on_grid(modality)
        return validate_image(volume.array, name=name)

    def checked_reference(self) -> np.ndarray | None:
        """The reference labels on the input's grid (refused if on another grid or not finite)."""
        if self.reference is None:
            return None
        self._check_grid(self.reference, "reference")
        array = np.asarray(self.reference.array)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"The {self.name('reference')} has NaN or infinite voxels; give integer labels.")
        return array

    def check(self, companion_modalities=()) -> None:
        """Check everything up front, before any long work, without copying the voxels.

        Every entry point calls it before its own work and the driver calls it again; after one pass with the
        same companions it returns at once.
        """
        wanted = tuple(companion_modalities)
        if self._checked_with == wanted:
            return
        check_image(self.image.array, name=self.name("image"))
        self.checked_mask()
        for modality in self.companions:
            volume, name = self._companion_on_grid(modality)
            check_image(volume.array, name=name)
        missing = set(wanted) - set(self.companions)
        if missing:
            raise ValueError(f"The request names companion images {sorted(missing)} that were not given.")
        self.checked_reference()
        self._checked_with = wanted


__all__ = ["GRID_TOLERANCE", "SegmentationInputs"]
