"""What a segmentation method is: a small protocol the driver (``VesselSegLib.inference.pipeline``) runs.

A method reads the normalised image (and, if it needs them, the brain mask and companion contrasts) and
returns per-class probabilities. Two optional abilities cover the methods still to come:

- a different output grid (``output_scale_zyx``): ROSE-style super-resolution predicts on a grid 2x finer
  than the input's; the driver gives the result that grid's spacing, origin and direction, and every output
  (MRML nodes, files, metrics) uses it;
- adaptation before predicting (:class:`AdaptiveMethod`): UMIS-style test-time training on the volume
  itself, within a wall-clock budget, with progress and cancel.

One kind of method is one class here, named by the registry entry's ``kind`` (``VesselSegLib.methods``);
plain networks are ensembles of one (``methods/networks.py``), Hessian filters are ``methods/vesselness.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from VesselSegLib.models.registry import ModelEntry, ModelRegistry
    from VesselSegLib.preprocessing.presets import ModalityPreset
    from VesselSegLib.request import SegmentationPlan

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]


@dataclass(frozen=True)
class MethodImages:
    """The images a method reads, all on one grid (the model's, after any resampling).

    Attributes
    ----------
    image : ndarray of float32, shape (Z, Y, X)
        The input, normalised by its modality preset (bright vessels, about [0, 1]).
    spacing_zyx : 3 floats, mm
    preset : ModalityPreset
        The input's preset.
    mask : ndarray of bool, shape (Z, Y, X), or None
        Region to segment; the driver zeroes probabilities outside it afterwards.
    companions : mapping modality -> ndarray of float32, shape (Z, Y, X)
        Co-registered images of other contrasts, each normalised by its own preset.
    """

    image: np.ndarray
    spacing_zyx: tuple[float, float, float]
    preset: ModalityPreset
    mask: np.ndarray | None = None
    companions: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass
class MethodPrediction:
    """What :meth:`SegmentationMethod.predict` returns.

    Attributes
    ----------
    probabilities : dict class name -> ndarray of float32, shape ``image.shape * output_scale_zyx``
        Per-class probability (or vesselness for filters) in [0, 1].
    vessel_classes : tuple of str
        Classes produced, in label order (an ensemble may skip a class whose contrast is missing).
    thresholds : dict class name -> float
        The method's thresholds for ``decisions``, already overridden by the request's.
    decisions : dict class name -> ndarray, or None
        What is thresholded into the class map when it is not ``probabilities`` (Frangi: its own 0/1 mask).
    device : str
        Where it ran ("cpu", "cuda:0").
    model_sha256 : str or None
        Weights it used (ensembles: "member=sha;...").
    record : dict
        JSON-ready facts for ``summary.json`` (e.g. what adaptation did).
    images : dict image name -> ndarray of float32, shape ``image.shape * output_scale_zyx``
        Named auxiliary images on the output grid, beside the probabilities: ``"super_resolved"`` for
        ROSE's super-resolved input (linear intensities, about [0, 1]). The driver brings them onto the
        output grid as it does the probabilities (but does not zero them outside the mask); the command
        line writes each as ``<name>.nrrd``, the Slicer Logic adds a volume node "<input> <name>" with
        dashes for underscores ("<input> super-resolved"). Empty for most methods.
    runtime : dict
        How networks ran (``RuntimeChoice.as_record`` and ``precision_by_model``); empty for filters.
    """

    probabilities: dict[str, np.ndarray]
    vessel_classes: tuple[str, ...]
    thresholds: dict[str, float]
    decisions: dict[str, np.ndarray] | None = None
    device: str = "cpu"
    model_sha256: str | None = None
    record: dict = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)
    runtime: dict = field(default_factory=dict)


@runtime_checkable
class SegmentationMethod(Protocol):
    """One method of the registry, ready to run.

    Attributes
    ----------
    entry : ModelEntry
        Its registry entry (name, classes, training spacing, card).
    output_scale_zyx : 3 ints
        Output voxels per input voxel along each axis: (1, 1, 1) for most, (2, 2, 2) for 2x super-resolution.
    supports_streaming : bool
        True when the method predicts each window from that window alone (one network), so ``vesselseg
        stream`` may run it tile by tile.
    """

    entry: ModelEntry
    output_scale_zyx: tuple[int, int, int]
    supports_streaming: bool

    def training_spacing_zyx(self, modality: str) -> tuple[float, float, float] | None:
        """Voxel size (mm) of the data it was trained on for inputs of ``modality``; None when it has none
        (filters, mixed data)."""
        ...

    def predict(
        self,
        images: MethodImages,
        plan: SegmentationPlan,
        *,
        device: str,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> MethodPrediction:
        """Probabilities of the plan's classes over the whole volume; polls ``cancel`` often."""
        ...


@runtime_checkable
class AdaptiveMethod(SegmentationMethod, Protocol):
    """A method that adapts to the volume before predicting (test-time training)."""

    #: Used when the request gives no ``adaptation_budget_s``.
    default_adaptation_budget_s: float

    def adapt(
        self,
        images: MethodImages,
        plan: SegmentationPlan,
        *,
        budget_s: float,
        device: str,
        progress: ProgressCallback | None = None,
        cancel: CancelCheck | None = None,
    ) -> dict:
        """Adapt to ``images`` within ``budget_s`` seconds of wall clock; returns a JSON-ready record."""
        ...


def refined_index_to_world(index_to_world: np.ndarray, scale_zyx) -> np.ndarray:
    """The 4x4 index-to-world matrix of a grid ``scale_zyx`` times finer covering the same physical box.

    Works for ITK's LPS (IJK -> LPS) and Slicer's RAS (IJK -> RAS) matrices alike. Fine voxel ``i'`` sits at
    coarse continuous index ``(i' + 0.5) / s - 0.5``, so the box's corners stay where they were.

    Parameters
    ----------
    index_to_world : ndarray, shape (4, 4)
        Columns 0-2 map the I, J, K (X, Y, Z array axes reversed) indices; column 3 is voxel (0, 0, 0)'s centre.
    scale_zyx : 3 ints
        Fine voxels per coarse voxel along Z, Y, X.
    """
    scale_ijk = np.asarray(tuple(reversed(tuple(scale_zyx))), dtype=float)
    fine_to_coarse = np.eye(4)
    fine_to_coarse[:3, :3] = np.diag(1.0 / scale_ijk)
    fine_to_coarse[:3, 3] = 0.5 / scale_ijk - 0.5
    return np.asarray(index_to_world, dtype=float) @ fine_to_coarse


class MethodBase:
    """Defaults shared by the built-in kinds: same grid as the input, no streaming, the entry's spacing."""

    output_scale_zyx: tuple[int, int, int] = (1, 1, 1)
    supports_streaming: bool = False

    def __init__(self, entry: ModelEntry, registry: ModelRegistry | None = None) -> None:
        self.entry = entry
        self.registry = registry

    def training_spacing_zyx(self, modality: str) -> tuple[float, float, float] | None:
        return self.entry.training_spacing_for(modality)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.entry.name!r})"


__all__ = [
    "AdaptiveMethod",
    "CancelCheck",
    "MethodBase",
    "MethodImages",
    "MethodPrediction",
    "ProgressCallback",
    "SegmentationMethod",
    "refined_index_to_world",
]
