"""The model registry: ``Resources/Models/models.json`` read as data.

Each entry names a method the user can pick (in Slicer's Method panel or ``vesselseg --method``)::

    {
      "name": "unet3d-baseline",            # what users type
      "display_name": "3D U-Net (baseline)",
      "kind": "network" | "vesselness" | "active-contour",  # learned network, or a non-learned filter
                                            # (Frangi, Morph-ACWE; VesselSegLib.methods)
      "architecture": "UNet3D",             # network class (VesselSegLib.models.networks)
      "arguments": {...},                   # its constructor arguments
      "weights": "unet3d_baseline.safetensors",  # beside models.json
      "sha256": "...",                      # checked before loading
      "modalities": ["TOF-MRA", "SWI", "2PM"],
      "default_for": ["TOF-MRA"],           # presets for which this is the default method
      "vessel_classes": ["artery", "vein", "micro"],  # one network output channel each, in order
      "spacing_mm_zyx": [0.8, 0.5, 0.5],    # training voxel size (or {"TOF-MRA": [...], ...}); inputs
                                            # further off than the policy's tolerance are resampled to it
      "normalisation": "preset",            # intensity normalisation: the modality preset's; "brain-mask":
                                            # trained on skull-stripped volumes, so the input is normalised
                                            # inside the brain mask and zeroed outside it (a mask is required)
      "patch_size_zyx": [64, 128, 128], "overlap": 0.25, "thresholds": {"artery": 0.5, ...}
    }

An ``"ensemble"`` entry runs one network per class and fills one class map (VC-Net's artery, vein and
micro models)::

    {"name": "vcnet", "kind": "ensemble", "members": {"artery": "vcnet-artery", "vein": "vcnet-vein", ...},
     "modalities": ["TOF-MRA", "SWI"], "vessel_classes": ["artery", "vein", "micro"]}

A kind that is not built in names its class, and may carry settings for it::

    {"name": "my-method", "kind": "my-kind", "implementation": "my_package.my_module:MyMethod",
     "settings": {...}, "modalities": [...], "vessel_classes": [...]}

Each member is a network entry of the same registry that produces its class; it reads the image of its
first modality (the input itself, or a co-registered companion image of that modality, see
``VesselSegLib.inference.pipeline.segment_image``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from VesselSegLib.resources import models_dir
from VesselSegLib.vessel_classes import vessel_class

if TYPE_CHECKING:  # the registry is read without PyTorch (Slicer lists methods before torch is installed)
    from torch import nn

REGISTRY_FILE_NAME = "models.json"
#: Kinds built into VesselSeg (``VesselSegLib.methods.BUILTIN_KINDS``); an entry of another kind names its
#: class with ``"implementation": "module:Class"``.
METHOD_KINDS = ("network", "vesselness", "ensemble", "active-contour")
#: ``"normalisation"`` of an entry: the modality preset's (bright-vessel modalities over the whole volume), or
#: inside the brain mask with the outside zeroed, for a network trained on skull-stripped volumes.
NORMALISATIONS = ("preset", "brain-mask")
#: Non-learned kinds: they mark the preset's main vessel class, whatever classes the entry lists.
FILTER_KINDS = ("vesselness", "active-contour")


@dataclass(frozen=True)
class ModelEntry:
    """One method of the registry; see the module docstring for the fields."""

    name: str
    display_name: str
    kind: str
    modalities: tuple[str, ...]
    vessel_classes: tuple[str, ...]
    default_for: tuple[str, ...] = ()
    architecture: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    sha256: str | None = None
    spacing_mm_zyx: tuple[float, float, float] | dict[str, tuple[float, float, float]] | None = None
    """Voxel size of the training data (mm, Z Y X): one for all modalities, or per modality; a modality not
    named (or None) was trained at mixed sizes, and inputs are not resampled for it."""
    patch_size_zyx: tuple[int, int, int] | None = None
    overlap: float = 0.25
    thresholds: dict[str, float] = field(default_factory=dict)
    card: str | None = None
    members: dict[str, str] = field(default_factory=dict)
    implementation: str | None = None
    """"module:Class" of a method kind that is not built in (``VesselSegLib.methods``)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Method-specific settings (e.g. an adaptation's learning rate), read by the method's class."""
    reduced_precision: tuple[str, ...] = ()
    """Precisions besides float32 ("bfloat16", "float16") this network may run in: each keeps its class map
    within ``VesselSegLib.inference.runtime.MAX_DICE_CHANGE`` Dice of float32 (Testing/test_runtime.py)."""
    normalisation: str = "preset"
    """One of ``NORMALISATIONS``: "brain-mask" for a network trained on skull-stripped volumes (needs a mask)."""
    directory: Path = field(default_factory=Path)

    @property
    def needs_brain_mask(self) -> bool:
        """Trained on skull-stripped volumes: reads the brain alone, so an input without a mask is refused."""
        return self.normalisation == "brain-mask"

    def training_spacing_for(self, modality: str) -> tuple[float, float, float] | None:
        """The training voxel size (mm, Z Y X) for inputs of ``modality``, or None when there is none."""
        if isinstance(self.spacing_mm_zyx, dict):
            return self.spacing_mm_zyx.get(modality)
        return self.spacing_mm_zyx

    @property
    def input_modality(self) -> str:
        """The modality a network reads (its first): an ensemble feeds each member that image."""
        return self.modalities[0]

    @property
    def produced_classes(self) -> tuple[str, ...] | None:
        """Classes a learned method outputs; None for a filter (it marks the preset's main class)."""
        return None if self.kind in FILTER_KINDS else self.vessel_classes

    @property
    def weights_path(self) -> Path | None:
        return None if self.weights is None else self.directory / self.weights

    @property
    def card_path(self) -> Path | None:
        return None if self.card is None else self.directory / self.card

    def intensity_reference(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """``(percentiles, values)``: the raw intensities of this model's training stacks at ``percentiles``.

        Read from the card's ``intensity_reference`` (written by ``scripts/intensity_reference.py``); the
        2PM preprocessing estimates a new stack's intensity factor against it (``intensity_scale="auto"``).

        Raises
        ------
        ValueError
            The model has no card, or its card no intensity reference (the message says what to do).
        """
        path = self.card_path
        card = json.loads(path.read_text()) if path is not None and path.is_file() else {}
        reference = card.get("intensity_reference")
        if not reference:
            raise ValueError(
                f"Model {self.name!r} has no intensity reference in its card, so its intensity factor cannot "
                f"be estimated; give the factor as a number, or add the reference with "
                f"scripts/intensity_reference.py."
            )
        return tuple(map(float, reference["percentiles"])), tuple(map(float, reference["values"]))

    def load_network(self) -> nn.Module:
        """Build the network and load its checked weights (SHA256 and architecture)."""
        from VesselSegLib.models.checkpoint import load_checkpoint

        if self.kind != "network":
            raise ValueError(
                f"Method {self.name!r} is a {self.kind} filter, not a network; it has no weights."
            )
        return load_checkpoint(
            self.weights_path,
            expected_sha256=self.sha256,
            expected_architecture=self.architecture,
            expected_arguments=self.arguments,
        )


def _training_spacing(value):
    """``spacing_mm_zyx`` of an entry: None, 3 numbers, or modality -> 3 numbers."""
    if not value:
        return None
    if isinstance(value, dict):
        return {str(modality): tuple(float(s) for s in spacing) for modality, spacing in value.items()}
    return tuple(float(s) for s in value)


def _entry_from_json(raw: dict[str, Any], directory: Path) -> ModelEntry:
    try:
        entry = ModelEntry(
            name=raw["name"],
            display_name=raw.get("display_name", raw["name"]),
            kind=raw["kind"],
            modalities=tuple(raw["modalities"]),
            vessel_classes=tuple(raw["vessel_classes"]),
            default_for=tuple(raw.get("default_for", ())),
            architecture=raw.get("architecture"),
            arguments=dict(raw.get("arguments", {})),
            weights=raw.get("weights"),
            sha256=raw.get("sha256"),
            spacing_mm_zyx=_training_spacing(raw.get("spacing_mm_zyx")),
            patch_size_zyx=tuple(raw["patch_size_zyx"]) if raw.get("patch_size_zyx") else None,
            overlap=float(raw.get("overlap", 0.25)),
            thresholds={str(k): float(v) for k, v in raw.get("thresholds", {}).items()},
            card=raw.get("card"),
            members={str(k): str(v) for k, v in raw.get("members", {}).items()},
            implementation=raw.get("implementation"),
            settings=dict(raw.get("settings", {})),
            reduced_precision=tuple(str(p) for p in raw.get("reduced_precision", ())),
            normalisation=str(raw.get("normalisation", "preset")),
            directory=directory,
        )
    except KeyError as missing:
        raise ValueError(
            f"Model registry entry {raw.get('name', raw)!r} lacks the field {missing}."
        ) from None
    if entry.kind not in METHOD_KINDS and not entry.implementation:
        raise ValueError(
            f"Model registry entry {entry.name!r} has kind {entry.kind!r}; use one of {METHOD_KINDS}, or name "
            'the class of a new kind with "implementation": "module:Class".'
        )
    if entry.normalisation not in NORMALISATIONS:
        raise ValueError(
            f"Model registry entry {entry.name!r} has normalisation {entry.normalisation!r}; use one of "
            f"{NORMALISATIONS}."
        )
    for class_name in entry.vessel_classes:
        vessel_class(class_name)  # raises on unknown class names
    if entry.kind == "network" and not (entry.architecture and entry.weights and entry.sha256):
        raise ValueError(f"Network entry {entry.name!r} needs 'architecture', 'weights' and 'sha256'.")
    if entry.kind == "ensemble" and set(entry.members) != set(entry.vessel_classes):
        raise ValueError(
            f"Ensemble entry {entry.name!r} must name one member network per vessel class "
            f"{list(entry.vessel_classes)}; its members cover {sorted(entry.members)}."
        )
    return entry


class ModelRegistry:
    """The methods listed in a ``models.json``; ``ModelRegistry.default()`` reads the shipped one."""

    def __init__(self, entries: list[ModelEntry]) -> None:
        self._entries = {entry.name: entry for entry in entries}
        for entry in entries:
            if entry.kind == "ensemble":
                self.members(entry)  # raises when a member is missing or does not produce its class

    def members(self, entry: ModelEntry) -> dict[str, ModelEntry]:
        """Class name -> member network entry of an ensemble, in the ensemble's class order."""
        members = {}
        for class_name in entry.vessel_classes:
            member = self._entries.get(entry.members[class_name])
            if member is None or member.kind != "network" or class_name not in member.vessel_classes:
                raise ValueError(
                    f"Ensemble {entry.name!r}: member {entry.members[class_name]!r} for {class_name} must be a "
                    f"network entry of the registry that produces {class_name}."
                )
            members[class_name] = member
        return members

    @classmethod
    def from_file(cls, path: str | Path) -> ModelRegistry:
        path = Path(path)
        try:
            document = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"Cannot read the model registry {path}: {error}") from None
        return cls([_entry_from_json(raw, path.parent) for raw in document.get("models", [])])

    @classmethod
    def default(cls) -> ModelRegistry:
        return cls.from_file(models_dir() / REGISTRY_FILE_NAME)

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    def entries(self, modality: str | None = None) -> list[ModelEntry]:
        """All entries, or those that accept ``modality``."""
        return [e for e in self._entries.values() if modality is None or modality in e.modalities]

    def get(self, name: str) -> ModelEntry:
        """The entry called ``name``; ValueError listing the known names otherwise."""
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(self._entries) or "(none)"
            raise ValueError(f"Unknown method {name!r}; known methods are: {known}.") from None

    def get_for_modality(self, name: str, modality: str) -> ModelEntry:
        """The entry called ``name``, or the one member of the family ``name`` that handles ``modality``.

        A family is the entries named ``NAME-SUFFIX`` (``rose`` -> ``rose-tof``, ``rose-swi``), so the issue's
        ``--method rose --modality SWI`` picks ``rose-swi``; an exact name always wins. ValueError when no
        entry or more than one family member fits (the message lists them), never a guess.
        """
        if name in self._entries:
            return self._entries[name]
        family = [entry for entry in self._entries.values() if entry.name.startswith(f"{name}-")]
        fitting = [entry for entry in family if modality in entry.modalities]
        if len(fitting) == 1:
            return fitting[0]
        if len(fitting) > 1:
            raise ValueError(
                f"Method {name!r} has several {modality} models ({', '.join(e.name for e in fitting)}); "
                "give one of those names."
            )
        if family:
            raise ValueError(
                f"Method {name!r} has no model for {modality} images (it has "
                f"{', '.join(e.name for e in family)}); pick another method or modality preset."
            )
        return self.get(name)

    def default_for(self, modality: str) -> ModelEntry:
        """The recommended method for a modality preset (the first entry that names it as default)."""
        for entry in self._entries.values():
            if modality in entry.default_for:
                return entry
        for entry in self._entries.values():
            if modality in entry.modalities:
                return entry
        raise ValueError(f"No method in the registry handles modality {modality!r}.")
