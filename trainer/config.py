"""Training configuration: a TOML file read into frozen dataclasses, checked key by key.

A configuration has four tables::

    [model]      architecture = "UNet3D", arguments = {...}
    [data]       vessel_classes = ["artery", "vein", "micro"], training = [...sources], validation = [...]
    [training]   epochs, patches_per_epoch, batch_size, patch_size_zyx, learning_rate, ...
    [output]     run_dir = "runs/unet3d_default"

A data source is either a set of synthetic phantoms made on the fly::

    {kind = "phantom", modality = "TOF-MRA", count = 24, shape_zyx = [64, 128, 128], seed = 1000,
     spacing_zyx = [0.8, 0.5, 0.5], class_remap = {artery = "micro", vein = "micro"}}

or image/label files::

    {kind = "files", modality = "2PM", root = "${VESSELSEG_VESSELNN:-data/vesselnn}",
     images = "images/*.tif", labels = "labels", exclude = ["burgess2014_tgMouse"], binary_class = "micro"}

``root`` may use ``${VAR}`` / ``${VAR:-default}`` so that each machine points it at its own copy of the data;
the command line's ``--data-root`` replaces it for every file source. A relative root is resolved against
the folder of the configuration file.

Any unknown key, missing key or bad value raises ValueError naming the key (``training.batch_size``,
``data.training[2].modality``) and what it accepts.
"""

from __future__ import annotations

import glob as globbing
import logging
import math
import os
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trainer.randomisation import DomainRandomisation
from VesselSegLib.models.networks import NETWORK_CLASSES
from VesselSegLib.phantoms import RADIUS_MODELS
from VesselSegLib.preprocessing.presets import MODALITY_PRESETS
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME

logger = logging.getLogger(__name__)

THRESHOLD_SELECTIONS = ("validation", "fixed")
#: Label-free losses (UMIS, VesselSegLib.unsupervised.loss presets "notes", "code", "paper"): training with one
#: reads no label and runs trainer/unsupervised.py's UnsupervisedTrainer.
UMIS_LOSSES = ("umis", "umis-code", "umis-paper")
LOSSES = ("dice", "dice_bce", "dice_bce_cldice", "balanced_bce_tv", *UMIS_LOSSES)
DEVICES = ("auto", "cpu", "cuda")
#: "plateau": LR x lr_decay_factor after lr_patience epochs without a lower validation loss (VC-Net);
#: "cosine": LR falls along a half cosine from learning_rate to 1 % of it over the epochs (a short CPU budget
#: then ends on small steps, so the last epochs' weights differ less from one another).
LR_SCHEDULES = ("plateau", "cosine")
MODEL_SELECTIONS = ("best", "last")
#: 3D-SLD's pseudo labels (eq. 13): the views' mean decision "map" (as written) or the share of their "votes".
PSEUDO_LABELS = ("map", "votes")
#: 3D-SLD's decision threshold: the "fixed" ``validation_threshold``, or the label-free "reference-density" one
#: (``trainer.sld.label_free.reference_density_threshold``).
SLD_THRESHOLDS = ("fixed", "reference-density")
#: Label names a phantom class map uses (VesselSegLib.vessel_classes label values 1, 2, 3).
PHANTOM_LABELS = {"artery": 1, "vein": 2, "micro": 3}
#: Remapping a phantom class to this drops it (its voxels become background in every channel).
DROP_CLASS = "none"

_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class ModelConfig:
    """Network class name (``VesselSegLib.models.networks.NETWORK_CLASSES``) and constructor arguments."""

    architecture: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class PhantomSource:
    """``count`` synthetic phantoms with seeds ``seed, seed + 1, ...``.

    ``class_remap`` maps a phantom class name (artery, vein, micro) to a model class name or "none".
    """

    modality: str
    count: int
    shape_zyx: tuple[int, int, int]
    seed: int
    spacing_zyx: tuple[float, float, float] | None = None
    class_remap: dict[str, str] = field(default_factory=dict)
    weight: float | None = None
    #: ``VesselSegLib.phantoms.RADIUS_MODELS``: "voxel" (vessels 1-9 voxels across whatever the spacing) or
    #: "2pm-physical" (capillaries 2-4 um, penetrating vessels up to 15 um radius; needs a um-scale spacing).
    radius_model: str = "voxel"
    #: Skull-stripped images: intensities normalised inside the phantom's brain mask and zeroed outside it, as
    #: for a scan with a brain mask from a skull stripper (the 3D-SLD paper's TOF-MRA volumes come with brain
    #: masks "to filter out no-brain parts"). A model trained on them needs a brain mask at inference.
    skull_strip: bool = False
    kind: str = "phantom"

    def describe(self) -> str:
        remap = f", classes remapped {self.class_remap}" if self.class_remap else ""
        remap += ", skull-stripped" if self.skull_strip else ""
        spacing = "" if self.spacing_zyx is None else f" at {list(self.spacing_zyx)} mm"
        radii = "" if self.radius_model == "voxel" else f", {self.radius_model} radii"
        return (
            f"{self.count} synthetic {self.modality} phantoms {list(self.shape_zyx)}{spacing} (seeds "
            f"{self.seed}..{self.seed + self.count - 1}){radii}{remap}"
        )


@dataclass(frozen=True)
class FileSource:
    """Image/label file pairs (or images alone, for label-free training), resolved to absolute paths.

    Labels map onto model classes either by value (``label_map``: label value -> class name) or all
    non-zero voxels onto one class (``binary_class``).
    """

    modality: str
    images: tuple[Path, ...]
    labels: tuple[Path, ...]
    root: Path
    label_map: dict[int, str] = field(default_factory=dict)
    binary_class: str | None = None
    metadata: tuple[Path | None, ...] = ()
    spacing_xyz: tuple[float, float, float] | None = None
    #: Voxel size (mm, X Y Z) of images that have no side-car metadata file (``metadata`` is None for them),
    #: e.g. the two VesselNN Santos stacks, whose README says to assume 0.994 x 0.994 x 5 um.
    assumed_spacing_xyz: tuple[float, float, float] | None = None
    weight: float | None = None
    #: Skull-stripped images (as ``PhantomSource.skull_strip``), with ``brain_masks``: one mask file per image,
    #: on its grid, matched like the labels.
    skull_strip: bool = False
    brain_masks: tuple[Path, ...] = ()
    kind: str = "files"

    def spacing_for(self, index: int) -> tuple[float, float, float] | None:
        """The ``spacing_xyz`` override that image ``index`` is read with (None: the file's own)."""
        if self.spacing_xyz is not None:
            return self.spacing_xyz
        has_metadata = bool(self.metadata) and self.metadata[index] is not None
        return None if has_metadata else self.assumed_spacing_xyz

    @property
    def count(self) -> int:
        return len(self.images)

    def describe(self) -> str:
        names = ", ".join(path.stem for path in self.images)
        mapping = f"binary -> {self.binary_class}" if self.binary_class else f"labels {self.label_map}"
        if not self.labels:
            mapping = "no labels"
        # The folder name only: a model card must not carry one machine's absolute paths.
        stripped = ", skull-stripped" if self.skull_strip else ""
        return (
            f"{self.count} {self.modality} file cases ({names}) from data folder {self.root.name!r}, "
            f"{mapping}{stripped}"
        )


Source = PhantomSource | FileSource


@dataclass(frozen=True)
class DataConfig:
    """What a model learns from.

    ``training_spacing_zyx`` (mm), when set, is the voxel size every training and validation case is
    brought to, by the rule inference uses for a model's training spacing
    (:func:`VesselSegLib.preprocessing.resampling.plan_resampling`, 25 % tolerance per axis), so that a
    vessel of a given physical size always spans the same number of voxels; ``export`` then writes it into
    the registry entry and inputs further off are resampled to it. None: cases keep their own voxel sizes.
    """

    vessel_classes: tuple[str, ...]
    training: tuple[Source, ...]
    validation: tuple[Source, ...]
    training_spacing_zyx: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings; defaults follow VC-Net (Adam 1e-4, LR x0.5 after 10 flat epochs, batch 4)."""

    epochs: int
    patches_per_epoch: int
    patch_size_zyx: tuple[int, int, int]
    batch_size: int = 4
    learning_rate: float = 1e-4
    #: Adam's L2 penalty (adds ``weight_decay * W`` to each gradient); gamma of the 2PM V-Net's eq. (3) is 0.01.
    weight_decay: float = 0.0
    lr_decay_factor: float = 0.5
    lr_patience: int = 10
    lr_schedule: str = "plateau"
    early_stop_patience: int = 30
    loss: str = "dice"
    #: lambda of VC-Net eq. (3): weight of the Dice loss on the composited MIP (networks with a MIP stream).
    mip_loss_weight: float = 0.2
    seed: int = 0
    num_threads: int = 2
    device: str = "auto"
    foreground_fraction: float = 0.5
    augment: bool = True
    validation_overlap: float = 0.25
    validation_threshold: float = 0.5
    #: "validation": after training, each class's decision threshold is the one with the best Dice of the
    #: best checkpoint on the validation cases (written to run.json and the model card, applied by the
    #: registry); "fixed": ``validation_threshold``.
    threshold_selection: str = "validation"
    #: "best": the epoch with the best validation Dice is the model (and early stopping applies); "last": the
    #: last epoch is, whatever the validation says (one validation stack picks epochs noisily; with a cosine
    #: schedule the last epoch is also the most settled). The validation cases are then only watched.
    model_selection: str = "best"
    cldice_every: int = 1
    init_weights: Path | None = None
    #: ``[training.randomisation]``: on-the-fly domain randomisation of the training patches (gamma, contrast,
    #: background, depth attenuation, blur, noise, resolution, slice jumps; trainer/randomisation.py). An
    #: empty table turns on the 2PM defaults; no table: none.
    randomisation: DomainRandomisation | None = None
    #: ``[training.super_resolution]``: train a 2x super-resolution segmenter (ROSE) on simulated
    #: low-resolution inputs of the cases (trainer/super_resolution.py); None: ordinary training.
    super_resolution: SuperResolutionSpec | None = None
    #: ``[training.sld]``: train 3D-SLD (3D segmentation guided only by 2D vessel masks, no 3D label;
    #: trainer/sld/trainer.py); None: ordinary training.
    sld: SLDSpec | None = None


@dataclass(frozen=True)
class SLDSpec:
    """``[training.sld]``: the three stages of 3D-SLD and its guidance (notes ``3D-SLD.md`` sections 2-3, 6.5).

    ``training.batch_size`` is the number of items per iteration (each: two crops, two views of each, and
    ``mixups`` mixed crops) and ``training.patches_per_epoch / batch_size`` the iterations per epoch ``I`` of
    the ramps (eq. 11, 18). ``training.epochs`` must equal the sum of ``stage_epochs``.

    Attributes
    ----------
    stage_epochs : 3 ints >= 0
        Epochs of stage 1 (patch discrimination + hypersphere mixup pre-training, eq. 15), stage 2 (adds
        region discrimination, the adversarial MIP loss, consistency and entropy, eq. 16) and stage 3
        (adds Reliability-Refinement, eq. 14). Paper: 100 / 40 / 60; 0 skips a stage (an ablation).
    references : str
        Folder of 2D vessel masks (PNG/TIFF), relative to the configuration file, or "bundled"
        (``Resources/GuidanceMasks``: a fundus-derived mask and procedural trees; never a target label).
    reference_count : int
        Crop-and-Overlap reference masks per iteration (paper: 24).
    crop_scale : "auto" or 2 floats in (0, 1]
        Crop side as a fraction of a mask's side; "auto": from physical vessel widths (notes 6.3).
    max_patches : "auto" or int >= 1
        Most patches united per reference; "auto": until the references are as dense as Otsu-thresholded
        intensity MIPs of the unlabelled training crops (notes 6.3).
    mixups : int >= 0
        Mixed crops per item for the hypersphere mixup loss.
    consistency : bool
        Temporal consistency with the EMA teacher (eq. 10-12); False: the "without consistency" ablation.
    discriminator_learning_rate : float
        Adam's rate for the discriminator (notes: 0.05 x the network's 1e-3).
    pseudo_label_views : int
        Flipped copies averaged into a pseudo label (N_e = 8, eq. 13).
    confidence : float in (0.5, 1)
        v_c of the reliable-voxel mask (eq. 13): voxels with 1 - v_c < y' < v_c are ignored.
    pseudo_labels : "map" or "votes"
        What eq. 13 averages over the views: "map", the decision map (``m^t``, or with ``decision =
        "largest"`` its share against the largest rival), as written; "votes", the views' decisions (1 where
        the view calls the voxel vessel), so that ``y'`` is the share of views that agree (ours). With the
        "largest" decision and soft clusters the map stays inside (0.1, 0.9), no voxel is reliable and
        stage 3 changes nothing (``train_reliable`` of the training log); votes are reliable wherever at
        least ``v_c`` of the views agree.
    loss_weights : table of name = float >= 0
        Overrides of the paper's weights (``trainer.sld.losses.SLDLossWeights``: patch, mixup, region,
        adversarial, entropy, refinement, ...), e.g. ``{ entropy = 1.0 }``; empty: the paper's (eq. 16).
    bright_crop_fraction : float in [0, 1]
        Share of training crops taken around a voxel at or above the volume's ``bright_crop_quantile``
        intensity (``trainer.sld.sampling.CropSampler``; ours, label-free); 0: uniform crops (the paper).
    bright_crop_quantile : float in (0, 1)
        Intensity quantile of the bright voxels (0.995: the brightest 0.5 %). The label-free check of a
        trained model (``trainer.sld.label_free``) uses the same definition of "bright".
    threshold : "fixed" or "reference-density"
        The shipped decision threshold: "fixed", ``training.validation_threshold`` (0.5, the notes);
        "reference-density", chosen without labels after training so that the MIPs of the validation
        volumes' crops (drawn as the training crops are) are as dense as the Crop-and-Overlap references
        the discriminator was trained on (ours; ``trainer.sld.label_free.reference_density_threshold``).
    """

    stage_epochs: tuple[int, int, int] = (10, 30, 10)
    references: str = "bundled"
    reference_count: int = 8
    crop_scale: str | tuple[float, float] = "auto"
    max_patches: str | int = "auto"
    mixups: int = 2
    consistency: bool = True
    discriminator_learning_rate: float = 5e-5
    pseudo_label_views: int = 8
    confidence: float = 0.9
    pseudo_labels: str = "map"
    loss_weights: dict[str, float] = field(default_factory=dict)
    bright_crop_fraction: float = 0.0
    bright_crop_quantile: float = 0.995
    threshold: str = "fixed"

    def weights(self):
        """The paper's ``SLDLossWeights`` with this run's overrides."""
        from trainer.sld.losses import SLDLossWeights

        return replace(SLDLossWeights(), **self.loss_weights)


def _sld_loss_weights(value: Any, where: str) -> dict[str, float]:
    from dataclasses import fields

    from trainer.sld.losses import SLDLossWeights

    if not isinstance(value, dict):
        raise ValueError(
            f"{where} must be a table of name = weight, e.g. {{ entropy = 1.0 }}, got {value!r}."
        )
    known = [f.name for f in fields(SLDLossWeights)]
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown weight(s) {', '.join(unknown)}; known: {', '.join(known)}.")
    return {name: _number(weight, f"{where}.{name}", 0, math.inf) for name, weight in value.items()}


def _sld(value: Any) -> SLDSpec | None:
    if value is None:
        return None
    where = "training.sld"
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table ([{where}]), got {value!r}.")
    _check_keys(value, where, set(SLDSpec.__dataclass_fields__), set())
    defaults = SLDSpec()
    stages = value.get("stage_epochs", list(defaults.stage_epochs))
    if (
        not isinstance(stages, list)
        or len(stages) != 3
        or any(isinstance(e, bool) or not isinstance(e, int) or e < 0 for e in stages)
    ):
        raise ValueError(f"{where}.stage_epochs must be 3 integers >= 0 (stages 1, 2, 3), got {stages!r}.")
    if stages[1] + stages[2] == 0:
        raise ValueError(
            f"{where}.stage_epochs {stages}: stage 2 or 3 must run (stage 1 trains no vessel map)."
        )
    references = value.get("references", defaults.references)
    if not isinstance(references, str) or not references:
        raise ValueError(f'{where}.references must be a folder path or "bundled", got {references!r}.')
    crop_scale = value.get("crop_scale", defaults.crop_scale)
    if crop_scale != "auto":
        if (
            not isinstance(crop_scale, list)
            or len(crop_scale) != 2
            or not 0 < crop_scale[0] <= crop_scale[1] <= 1
        ):
            raise ValueError(
                f'{where}.crop_scale must be "auto" or [low, high] with 0 < low <= high <= 1, got {crop_scale!r}.'
            )
        crop_scale = (float(crop_scale[0]), float(crop_scale[1]))
    max_patches = value.get("max_patches", defaults.max_patches)
    if max_patches != "auto":
        max_patches = _integer(max_patches, f"{where}.max_patches", 1)
    return SLDSpec(
        stage_epochs=tuple(int(e) for e in stages),
        references=references,
        reference_count=_integer(
            value.get("reference_count", defaults.reference_count), f"{where}.reference_count", 1
        ),
        crop_scale=crop_scale,
        max_patches=max_patches,
        mixups=_integer(value.get("mixups", defaults.mixups), f"{where}.mixups", 0),
        consistency=_boolean(value.get("consistency", defaults.consistency), f"{where}.consistency"),
        discriminator_learning_rate=_number(
            value.get("discriminator_learning_rate", defaults.discriminator_learning_rate),
            f"{where}.discriminator_learning_rate",
            0,
            1,
            open_low=True,
        ),
        pseudo_label_views=_integer(
            value.get("pseudo_label_views", defaults.pseudo_label_views), f"{where}.pseudo_label_views", 1
        ),
        confidence=_number(
            value.get("confidence", defaults.confidence), f"{where}.confidence", 0.5, 1, open_low=True
        ),
        pseudo_labels=_choice(
            value.get("pseudo_labels", defaults.pseudo_labels), f"{where}.pseudo_labels", PSEUDO_LABELS
        ),
        loss_weights=_sld_loss_weights(value.get("loss_weights", {}), f"{where}.loss_weights"),
        bright_crop_fraction=_number(
            value.get("bright_crop_fraction", defaults.bright_crop_fraction),
            f"{where}.bright_crop_fraction",
            0,
            1,
        ),
        bright_crop_quantile=_number(
            value.get("bright_crop_quantile", defaults.bright_crop_quantile),
            f"{where}.bright_crop_quantile",
            0,
            1,
            open_low=True,
            open_high=True,
        ),
        threshold=_choice(value.get("threshold", defaults.threshold), f"{where}.threshold", SLD_THRESHOLDS),
    )


@dataclass(frozen=True)
class SuperResolutionSpec:
    """``[training.super_resolution]``: how low-resolution inputs are simulated, and lambda of ROSE eq. (5).

    Attributes
    ----------
    truncation_zyx : 3 floats >= 1
        k-space factors ``(c_z, c_y, c_x)`` (paper: 1, 3, 3, the phase-encoding plane only).
    downsample : int
        ``r`` on every axis (paper: 2); the network's ``output_scale_zyx`` must equal it.
    kept_fraction : {"1/c", "(c-1)/c"}
        How ``c`` is read (VesselSegLib/preprocessing/low_resolution.py says why 1/c by default).
    image_loss_weight : float
        lambda of eq. (5), 0.1; 0 trains the same network without SR supervision (an ablation).
    """

    truncation_zyx: tuple[float, float, float] = (1.0, 3.0, 3.0)
    downsample: int = 2
    kept_fraction: str = "1/c"
    image_loss_weight: float = 0.1


def _super_resolution(value: Any) -> SuperResolutionSpec | None:
    if value is None:
        return None
    where = "training.super_resolution"
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a table ([{where}]), got {value!r}.")
    _check_keys(value, where, {"truncation_zyx", "downsample", "kept_fraction", "image_loss_weight"}, set())
    defaults = SuperResolutionSpec()
    truncation = value.get("truncation_zyx", list(defaults.truncation_zyx))
    truncation = _triple(truncation, f"{where}.truncation_zyx", integer=False, minimum=0)
    if min(truncation) < 1:
        raise ValueError(f"{where}.truncation_zyx factors must be >= 1 (1: no truncation), got {truncation}.")
    return SuperResolutionSpec(
        truncation_zyx=tuple(float(c) for c in truncation),
        downsample=_integer(value.get("downsample", defaults.downsample), f"{where}.downsample", 1),
        kept_fraction=_choice(
            value.get("kept_fraction", defaults.kept_fraction), f"{where}.kept_fraction", ["1/c", "(c-1)/c"]
        ),
        image_loss_weight=_number(
            value.get("image_loss_weight", defaults.image_loss_weight), f"{where}.image_loss_weight", 0, 100
        ),
    )


@dataclass(frozen=True)
class OutputConfig:
    run_dir: Path


@dataclass(frozen=True)
class TrainConfig:
    """A whole configuration. ``raw`` is the parsed TOML, kept for the model card and the run record."""

    model: ModelConfig
    data: DataConfig
    training: TrainingConfig
    output: OutputConfig
    source_path: Path | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def with_overrides(
        self, *, run_dir: Path | None = None, epochs: int | None = None, seed: int | None = None
    ) -> TrainConfig:
        """A copy with the command line's ``--run-dir`` / ``--epochs`` / ``--seed`` applied. The seed is also
        written into ``raw`` (what the run record and the card show as the configuration): it decides the weights."""
        config = self
        if seed is not None:
            if seed < 0:
                raise ValueError(f"--seed must be >= 0, got {seed}.")
            raw = {**config.raw, "training": {**config.raw.get("training", {}), "seed": int(seed)}}
            config = replace(config, training=replace(config.training, seed=int(seed)), raw=raw)
        if run_dir is not None:
            config = replace(config, output=OutputConfig(run_dir=Path(run_dir)))
        if epochs is not None:
            if epochs < 1:
                raise ValueError(f"--epochs must be >= 1, got {epochs}.")
            config = replace(config, training=replace(config.training, epochs=int(epochs)))
        return config


# ----------------------------------------------------------------------------------------------- helpers


def expand_environment(text: str) -> str:
    """Replace ``${VAR}`` and ``${VAR:-default}`` like a POSIX shell; an unset VAR without default raises."""

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        value = os.environ.get(name)
        if value:
            return value
        if default is not None:
            return default
        raise ValueError(f"Environment variable {name} is not set; set it or write ${{{name}:-DEFAULT}}.")

    return _ENV_PATTERN.sub(substitute, text)


def _check_keys(table: dict[str, Any], where: str, allowed: set[str], required: set[str]) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{where} must be a table, got {type(table).__name__}.")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ValueError(
            f"Unknown key {where}.{unknown[0]}; allowed keys in [{where}] are: {', '.join(sorted(allowed))}."
        )
    missing = sorted(required - set(table))
    if missing:
        raise ValueError(f"Missing key {where}.{missing[0]}.")


def _integer(value: Any, key: str, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}.")
    if minimum is not None and value < minimum:
        raise ValueError(f"{key} must be >= {minimum}, got {value}.")
    return int(value)


def _number(
    value: Any, key: str, low: float, high: float, *, open_low: bool = False, open_high: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key} must be a number, got {value!r}.")
    if value > high or value < low or (open_low and value == low) or (open_high and value == high):
        low_bracket, high_bracket = "(" if open_low else "[", ")" if open_high else "]"
        raise ValueError(f"{key} must be in {low_bracket}{low}, {high}{high_bracket}, got {value}.")
    return float(value)


def _choice(value: Any, key: str, choices: tuple[str, ...] | list[str]) -> str:
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}.")
    return str(value)


def _triple(value: Any, key: str, *, integer: bool, minimum: float) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise ValueError(f"{key} must be a list of 3 numbers (Z, Y, X), got {value!r}.")
    items = []
    for item in value:
        if integer:
            items.append(_integer(item, key, int(minimum)))
        else:
            items.append(_number(item, key, minimum, math.inf, open_low=True))
    return tuple(items)


def _class_name(value: Any, key: str, vessel_classes: tuple[str, ...]) -> str:
    return _choice(value, key, list(vessel_classes))


# ------------------------------------------------------------------------------------------------ sources


def _phantom_source(table: dict[str, Any], where: str, vessel_classes: tuple[str, ...]) -> PhantomSource:
    _check_keys(
        table,
        where,
        {
            "kind",
            "modality",
            "count",
            "shape_zyx",
            "seed",
            "spacing_zyx",
            "class_remap",
            "weight",
            "radius_model",
            "skull_strip",
        },
        {"kind", "modality", "count", "shape_zyx", "seed"},
    )
    remap_raw = table.get("class_remap", {})
    _check_keys(remap_raw, f"{where}.class_remap", set(PHANTOM_LABELS), set())
    remap = {
        name: _choice(target, f"{where}.class_remap.{name}", [*vessel_classes, DROP_CLASS])
        for name, target in remap_raw.items()
    }
    # A phantom class the model does not predict must be remapped (or dropped) explicitly.
    for name in PHANTOM_LABELS:
        if name not in remap and name not in vessel_classes:
            raise ValueError(
                f"{where}.class_remap must map phantom class {name!r} onto one of {list(vessel_classes)} or "
                f"{DROP_CLASS!r}: the model does not predict {name!r}."
            )
    spacing = table.get("spacing_zyx")
    return PhantomSource(
        modality=_choice(table["modality"], f"{where}.modality", list(MODALITY_PRESETS)),
        count=_integer(table["count"], f"{where}.count", 1),
        shape_zyx=_triple(table["shape_zyx"], f"{where}.shape_zyx", integer=True, minimum=16),
        seed=_integer(table["seed"], f"{where}.seed", 0),
        spacing_zyx=None
        if spacing is None
        else _triple(spacing, f"{where}.spacing_zyx", integer=False, minimum=0),
        class_remap=remap,
        weight=None
        if "weight" not in table
        else _number(table["weight"], f"{where}.weight", 0, 1e9, open_low=True),
        radius_model=_choice(
            table.get("radius_model", "voxel"), f"{where}.radius_model", list(RADIUS_MODELS)
        ),
        skull_strip=_boolean(table.get("skull_strip", False), f"{where}.skull_strip"),
    )


def _resolve_root(raw_root: str, where: str, base_dir: Path, data_root: Path | None) -> Path:
    if data_root is not None:
        return Path(data_root).expanduser().resolve()
    if not isinstance(raw_root, str):
        raise ValueError(f"{where}.root must be a string path, got {raw_root!r}.")
    try:
        root = Path(expand_environment(raw_root)).expanduser()
    except ValueError as error:
        raise ValueError(f"{where}.root: {error}") from None
    return root if root.is_absolute() else (base_dir / root).resolve()


def _file_source(
    table: dict[str, Any], where: str, vessel_classes: tuple[str, ...], base_dir: Path, data_root: Path | None
) -> FileSource:
    _check_keys(
        table,
        where,
        {
            "kind",
            "modality",
            "root",
            "images",
            "labels",
            "exclude",
            "label_map",
            "binary_class",
            "metadata",
            "spacing_xyz",
            "assumed_spacing_xyz",
            "weight",
            "skull_strip",
            "brain_masks",
        },
        {"kind", "modality", "images"},
    )
    root = _resolve_root(table.get("root", "."), where, base_dir, data_root)
    if not root.is_dir():
        raise ValueError(
            f"{where}.root: data folder {root} does not exist; pass --data-root DIR or set the environment "
            "variable the configuration names (e.g. VESSELSEG_VESSELNN)."
        )
    exclude = table.get("exclude", [])
    if not isinstance(exclude, list) or not all(isinstance(e, str) for e in exclude):
        raise ValueError(f"{where}.exclude must be a list of file stems, got {exclude!r}.")
    images_raw = table["images"]
    if isinstance(images_raw, str):
        images = [Path(p) for p in sorted(globbing.glob(str(root / images_raw)))]
        if not images:
            raise ValueError(f"{where}.images: pattern {images_raw!r} matches no file under {root}.")
    elif isinstance(images_raw, list) and images_raw and all(isinstance(p, str) for p in images_raw):
        images = [root / p for p in images_raw]
    else:
        raise ValueError(
            f"{where}.images must be a glob pattern or a non-empty list of paths, got {images_raw!r}."
        )
    keep = [i for i, path in enumerate(images) if _stem(path) not in exclude]
    unknown_excluded = sorted(set(exclude) - {_stem(path) for path in images})
    if unknown_excluded:  # e.g. a data copy without the held-out case: nothing to exclude, say so
        logger.warning("%s.exclude names %s, which is not among the images.", where, unknown_excluded)
    images = [images[i] for i in keep]
    if not images:
        raise ValueError(f"{where}: every image is excluded; keep at least one.")
    # Label-free training (UMIS, 3D-SLD) gives no labels; supervised training refuses the source when loading.
    labels = _paired_files(table, "labels", where, root, images, images_raw, keep)
    skull_strip = _boolean(table.get("skull_strip", False), f"{where}.skull_strip")
    brain_masks = _paired_files(table, "brain_masks", where, root, images, images_raw, keep)
    if skull_strip != bool(brain_masks):
        raise ValueError(
            f"{where}: skull_strip = true needs brain_masks (a folder of masks with the images' file names), "
            "and brain_masks are read only for skull_strip = true; give both or neither."
        )
    for key, paths in (("images", images), ("labels", labels), ("brain_masks", brain_masks)):
        for path in paths:
            if not path.is_file():
                raise ValueError(f"{where}.{key}: file {path} does not exist.")
    metadata_dir = table.get("metadata")
    if metadata_dir is not None and not isinstance(metadata_dir, str):
        raise ValueError(f"{where}.metadata must be a folder name, got {metadata_dir!r}.")
    metadata: list[Path | None] = []
    for path in images:
        candidate = None if metadata_dir is None else root / metadata_dir / f"{_stem(path)}.xml.txt"
        metadata.append(candidate if candidate is not None and candidate.is_file() else None)
    has_map, has_binary = "label_map" in table, "binary_class" in table
    if has_map == has_binary and (labels or has_map):
        raise ValueError(f"{where} needs exactly one of label_map (value -> class) or binary_class.")
    label_map: dict[int, str] = {}
    if has_map:
        raw_map = table["label_map"]
        if not isinstance(raw_map, dict) or not raw_map:
            raise ValueError(f'{where}.label_map must be a table like {{"255" = "micro"}}, got {raw_map!r}.')
        for value, name in raw_map.items():
            try:
                label_value = int(value)
            except ValueError:
                raise ValueError(f"{where}.label_map key {value!r} must be an integer label value.") from None
            label_map[label_value] = _class_name(name, f"{where}.label_map.{value}", vessel_classes)
    binary_class = None
    if has_binary:
        binary_class = _class_name(table["binary_class"], f"{where}.binary_class", vessel_classes)
    spacing = table.get("spacing_xyz")
    assumed = table.get("assumed_spacing_xyz")
    return FileSource(
        modality=_choice(table["modality"], f"{where}.modality", list(MODALITY_PRESETS)),
        images=tuple(images),
        labels=tuple(labels),
        root=root,
        label_map=label_map,
        binary_class=binary_class,
        metadata=tuple(metadata),
        spacing_xyz=None
        if spacing is None
        else _triple(spacing, f"{where}.spacing_xyz", integer=False, minimum=0),
        assumed_spacing_xyz=None
        if assumed is None
        else _triple(assumed, f"{where}.assumed_spacing_xyz", integer=False, minimum=0),
        weight=None
        if "weight" not in table
        else _number(table["weight"], f"{where}.weight", 0, 1e9, open_low=True),
        skull_strip=skull_strip,
        brain_masks=tuple(brain_masks),
    )


def trains_skull_stripped(raw_config: dict[str, Any]) -> bool:
    """Whether a configuration as TOML-parsed (a run record's ``config``) trains on skull-stripped images.
    Its sources agree (checked when it is parsed), so any training source says it."""
    return any(bool(source.get("skull_strip")) for source in raw_config.get("data", {}).get("training", []))


def _paired_files(
    table: dict[str, Any], key: str, where: str, root: Path, images: list[Path], images_raw, keep: list[int]
) -> list[Path]:
    """The files of ``table[key]`` that go with ``images`` (after ``exclude``): a folder holding files with the
    images' names, or a list of one path per listed image; none when the key is absent."""
    raw = table.get(key)
    if raw is None:
        return []
    if isinstance(raw, str):
        return [root / raw / path.name for path in images]
    if isinstance(raw, list) and all(isinstance(p, str) for p in raw):
        if len(raw) != len(images_raw if isinstance(images_raw, list) else []):
            raise ValueError(f"{where}.{key} must list one file per image ({len(images)} images).")
        return [root / raw[i] for i in keep]
    raise ValueError(f"{where}.{key} must be a folder name or a list of paths, got {raw!r}.")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".ome.tif", ".ome.tiff"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _sources(
    value: Any, where: str, vessel_classes: tuple[str, ...], base_dir: Path, data_root: Path | None
) -> tuple[Source, ...]:
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"{where} must be a non-empty list of sources ({{kind = 'phantom' | 'files', ...}})."
        )
    sources: list[Source] = []
    for index, table in enumerate(value):
        key = f"{where}[{index}]"
        if not isinstance(table, dict):
            raise ValueError(f"{key} must be a table, got {table!r}.")
        kind = _choice(table.get("kind"), f"{key}.kind", ["phantom", "files"])
        if kind == "phantom":
            sources.append(_phantom_source(table, key, vessel_classes))
        else:
            sources.append(_file_source(table, key, vessel_classes, base_dir, data_root))
    return tuple(sources)


# ------------------------------------------------------------------------------------------------ parsing


def parse_config(
    raw: dict[str, Any],
    *,
    base_dir: Path | str = ".",
    data_root: Path | str | None = None,
    source_path: Path | None = None,
) -> TrainConfig:
    """Check a parsed TOML document and build the :class:`TrainConfig`.

    Parameters
    ----------
    raw : dict
        The TOML document.
    base_dir : path
        Folder that relative ``root`` and ``init_weights`` paths are resolved against.
    data_root : path, optional
        Replaces the ``root`` of every file source (the ``--data-root`` flag).
    """
    base_dir = Path(base_dir)
    data_root = None if data_root is None else Path(data_root)
    _check_keys(
        raw, "config", {"model", "data", "training", "output"}, {"model", "data", "training", "output"}
    )

    model_raw = raw["model"]
    _check_keys(model_raw, "model", {"architecture", "arguments"}, {"architecture"})
    architecture = _choice(model_raw["architecture"], "model.architecture", sorted(NETWORK_CLASSES))
    arguments = model_raw.get("arguments", {})
    if not isinstance(arguments, dict):
        raise ValueError(f"model.arguments must be a table, got {arguments!r}.")

    data_raw = raw["data"]
    _check_keys(
        data_raw,
        "data",
        {"vessel_classes", "training", "validation", "training_spacing_mm_zyx"},
        {"vessel_classes", "training", "validation"},
    )
    classes_raw = data_raw["vessel_classes"]
    if not isinstance(classes_raw, list) or not classes_raw or len(set(classes_raw)) != len(classes_raw):
        raise ValueError(
            f"data.vessel_classes must be a non-empty list of distinct names, got {classes_raw!r}."
        )
    vessel_classes = tuple(
        _choice(name, "data.vessel_classes", list(VESSEL_CLASS_BY_NAME)) for name in classes_raw
    )
    if arguments.get("out_channels", len(vessel_classes)) != len(vessel_classes):
        raise ValueError(
            f"model.arguments.out_channels is {arguments['out_channels']} but data.vessel_classes names "
            f"{len(vessel_classes)} classes; they must match (one output channel per class)."
        )
    arguments = {**arguments, "out_channels": len(vessel_classes)}
    data = DataConfig(
        vessel_classes=vessel_classes,
        training=_sources(data_raw["training"], "data.training", vessel_classes, base_dir, data_root),
        validation=_sources(data_raw["validation"], "data.validation", vessel_classes, base_dir, data_root),
        training_spacing_zyx=None
        if "training_spacing_mm_zyx" not in data_raw
        else _triple(
            data_raw["training_spacing_mm_zyx"], "data.training_spacing_mm_zyx", integer=False, minimum=0
        ),
    )
    # A model reads either skull-stripped images or whole heads (its registry entry's "normalisation").
    if len({source.skull_strip for source in (*data.training, *data.validation)}) > 1:
        raise ValueError(
            "data.training and data.validation mix skull-stripped and whole-head sources; set skull_strip "
            "the same on every source (a model reads one kind)."
        )

    t = raw["training"]
    allowed = {f for f in TrainingConfig.__dataclass_fields__}
    _check_keys(t, "training", allowed, {"epochs", "patches_per_epoch", "patch_size_zyx"})
    init_weights = t.get("init_weights")
    if init_weights is not None:
        if not isinstance(init_weights, str):
            raise ValueError(f"training.init_weights must be a path string, got {init_weights!r}.")
        init_path = Path(expand_environment(init_weights)).expanduser()
        init_weights = init_path if init_path.is_absolute() else (base_dir / init_path).resolve()
        if not init_weights.name.endswith(".safetensors") or not init_weights.is_file():
            raise ValueError(f"training.init_weights: {init_weights} is not an existing .safetensors file.")
    defaults = TrainingConfig(epochs=1, patches_per_epoch=1, patch_size_zyx=(16, 16, 16))
    training = TrainingConfig(
        epochs=_integer(t["epochs"], "training.epochs", 1),
        patches_per_epoch=_integer(t["patches_per_epoch"], "training.patches_per_epoch", 1),
        patch_size_zyx=_triple(t["patch_size_zyx"], "training.patch_size_zyx", integer=True, minimum=1),
        batch_size=_integer(t.get("batch_size", defaults.batch_size), "training.batch_size", 1),
        learning_rate=_number(
            t.get("learning_rate", defaults.learning_rate), "training.learning_rate", 0, 1, open_low=True
        ),
        weight_decay=_number(t.get("weight_decay", defaults.weight_decay), "training.weight_decay", 0, 1),
        lr_decay_factor=_number(
            t.get("lr_decay_factor", defaults.lr_decay_factor),
            "training.lr_decay_factor",
            0,
            0.999,
            open_low=True,
        ),
        lr_patience=_integer(t.get("lr_patience", defaults.lr_patience), "training.lr_patience", 0),
        lr_schedule=_choice(t.get("lr_schedule", defaults.lr_schedule), "training.lr_schedule", LR_SCHEDULES),
        early_stop_patience=_integer(
            t.get("early_stop_patience", defaults.early_stop_patience), "training.early_stop_patience", 1
        ),
        loss=_choice(t.get("loss", defaults.loss), "training.loss", LOSSES),
        mip_loss_weight=_number(
            t.get("mip_loss_weight", defaults.mip_loss_weight), "training.mip_loss_weight", 0, 10
        ),
        seed=_integer(t.get("seed", defaults.seed), "training.seed", 0),
        num_threads=_integer(t.get("num_threads", defaults.num_threads), "training.num_threads", 1),
        device=_choice(t.get("device", defaults.device), "training.device", DEVICES),
        foreground_fraction=_number(
            t.get("foreground_fraction", defaults.foreground_fraction), "training.foreground_fraction", 0, 1
        ),
        augment=_boolean(t.get("augment", defaults.augment), "training.augment"),
        validation_overlap=_number(
            t.get("validation_overlap", defaults.validation_overlap), "training.validation_overlap", 0, 0.95
        ),
        validation_threshold=_number(
            t.get("validation_threshold", defaults.validation_threshold),
            "training.validation_threshold",
            0,
            1,
            open_low=True,
        ),
        threshold_selection=_choice(
            t.get("threshold_selection", defaults.threshold_selection),
            "training.threshold_selection",
            THRESHOLD_SELECTIONS,
        ),
        model_selection=_choice(
            t.get("model_selection", defaults.model_selection), "training.model_selection", MODEL_SELECTIONS
        ),
        cldice_every=_integer(t.get("cldice_every", defaults.cldice_every), "training.cldice_every", 0),
        init_weights=init_weights,
        randomisation=_randomisation(t.get("randomisation")),
        super_resolution=_super_resolution(t.get("super_resolution")),
        sld=_sld(t.get("sld")),
    )
    if training.sld is not None:
        if training.super_resolution is not None:
            raise ValueError(
                "training.sld and training.super_resolution cannot be combined; choose one method."
            )
        if sum(training.sld.stage_epochs) != training.epochs:
            raise ValueError(
                f"training.epochs is {training.epochs} but training.sld.stage_epochs {list(training.sld.stage_epochs)} "
                f"sum to {sum(training.sld.stage_epochs)}; make them agree."
            )

    out = raw["output"]
    _check_keys(out, "output", {"run_dir"}, {"run_dir"})
    if not isinstance(out["run_dir"], str) or not out["run_dir"]:
        raise ValueError(f"output.run_dir must be a non-empty path string, got {out['run_dir']!r}.")
    run_dir = Path(expand_environment(out["run_dir"])).expanduser()
    return TrainConfig(
        model=ModelConfig(architecture=architecture, arguments=arguments),
        data=data,
        training=training,
        output=OutputConfig(run_dir=run_dir),
        source_path=source_path,
        raw=raw,
    )


def _randomisation(value: Any) -> DomainRandomisation | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"training.randomisation must be a table ([training.randomisation]), got {value!r}.")
    return DomainRandomisation.from_table(value, "training.randomisation")


def _boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}.")
    return value


def load_config(path: str | os.PathLike, *, data_root: str | os.PathLike | None = None) -> TrainConfig:
    """Read and check the TOML configuration at ``path``.

    Relative data roots and ``init_weights`` resolve against the configuration file's folder; the run
    folder (``output.run_dir``) resolves against the current directory, like any output path of a CLI.

    Raises
    ------
    ValueError
        Unreadable file, TOML syntax error, or a bad key/value (the message names the key).
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except OSError as error:
        raise ValueError(f"Cannot read configuration {path}: {error.strerror}.") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"Configuration {path} is not valid TOML: {error}.") from None
    return parse_config(
        raw,
        base_dir=path.resolve().parent,
        data_root=None if data_root is None else Path(data_root),
        source_path=path.resolve(),
    )


__all__ = [
    "DROP_CLASS",
    "LOSSES",
    "UMIS_LOSSES",
    "DataConfig",
    "FileSource",
    "ModelConfig",
    "OutputConfig",
    "PhantomSource",
    "SLDSpec",
    "Source",
    "TrainConfig",
    "TrainingConfig",
    "expand_environment",
    "load_config",
    "parse_config",
]
