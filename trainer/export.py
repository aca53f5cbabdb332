"""Export a training run's best checkpoint as a shipped model: weights, model card, registry entry.

``python -m trainer export RUN_DIR --name NAME --out Resources/Models`` writes ``NAME.safetensors`` and
``NAME.card.json`` and prints the JSON entry to paste into ``Resources/Models/models.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainer.config import UMIS_LOSSES, trains_skull_stripped
from trainer.loop import BEST_WEIGHTS, CONFIG_COPY, LAST_WEIGHTS, RUN_RECORD
from trainer.unsupervised import LOSS_PRESETS
from VesselSegLib.models.checkpoint import card_path_for, load_checkpoint, save_checkpoint
from VesselSegLib.unsupervised.adaptation import AdaptationSettings

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def export_run(
    run_dir: str | os.PathLike,
    *,
    name: str,
    out_dir: str | os.PathLike,
    display_name: str | None = None,
    modalities: Sequence[str] | None = None,
    overlap: float = 0.25,
    threshold: float | None = None,
    mixed_spacing: bool = False,
    checkpoint: str = "best",
) -> dict[str, Any]:
    """Write ``out_dir/NAME.safetensors`` + ``NAME.card.json`` from one of ``run_dir``'s checkpoints.

    Parameters
    ----------
    run_dir : path
        A training run folder (holds ``best.safetensors`` and ``run.json``).
    name : str
        Registry name and file stem, e.g. "unet3d-baseline" (letters, digits, ".", "_", "-").
    out_dir : path
        Folder of the registry, normally ``Resources/Models``.
    display_name : str, optional
        Name shown to users (default: derived from the architecture).
    modalities : sequence of str, optional
        Presets the model accepts (default: the modalities it was trained on).
    overlap : float
        Sliding-window overlap the registry entry recommends.
    threshold : float, optional
        Probability threshold for every class (default: the thresholds the run chose on its validation
        cases, ``run.json: decision_thresholds``; for older runs ``validation_threshold``).
    mixed_spacing : bool
        The model was trained at several voxel sizes (e.g. 2PM phantoms at 1 and 2 um): the entry gives no
        training spacing, so inputs are not resampled to the median one.
    checkpoint : {"best", "last"}
        Which of the run's checkpoints to ship: the model the run selected (``best.safetensors``), or its
        last epoch (``last.safetensors``; what ``training.model_selection = "last"`` would have selected).

    Returns
    -------
    dict
        The registry entry (fields of ``VesselSegLib.models.registry``).
    """
    run_dir = Path(run_dir)
    if not _NAME_PATTERN.match(name):
        raise ValueError(f"Model name {name!r} may only hold letters, digits, '.', '_' and '-'.")
    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}.")
    weights_name = BEST_WEIGHTS if checkpoint == "best" else LAST_WEIGHTS
    chosen_weights = run_dir / weights_name
    record_path = run_dir / RUN_RECORD
    if not chosen_weights.is_file() or not record_path.is_file():
        raise ValueError(
            f"{run_dir} is not a finished training run: {weights_name} or {RUN_RECORD} is missing."
        )
    record = json.loads(record_path.read_text())
    chosen_card = json.loads(card_path_for(chosen_weights).read_text())
    network = load_checkpoint(
        chosen_weights, expected_architecture=record["architecture"], expected_arguments=record["arguments"]
    )
    training = record["config"].get("training", {})
    vessel_classes = list(record["vessel_classes"])
    chosen = record.get("decision_thresholds") or {}
    if threshold is not None:
        thresholds = {name: float(threshold) for name in vessel_classes}
        threshold_record = {"selection": "given at export (--threshold)", "thresholds": thresholds}
    elif chosen.get("thresholds"):
        thresholds = {name: float(chosen["thresholds"][name]) for name in vessel_classes}
        threshold_record = chosen
    else:
        fixed = float(training.get("validation_threshold", 0.5))
        thresholds = {name: fixed for name in vessel_classes}
        threshold_record = {"selection": "fixed", "thresholds": thresholds}
    modalities = list(modalities) if modalities else list(record["modalities"])
    skull_stripped = trains_skull_stripped(record["config"])  # such a model needs a brain mask
    display_name = display_name or f"{record['architecture']} ({', '.join(modalities)})"
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    card = {
        "name": name,
        "display_name": display_name,
        "vessel_classes": vessel_classes,
        "modalities": modalities,
        "normalisation": "modality preset (VesselSegLib.preprocessing.normalize_intensity)"
        + (
            ", inside the brain mask, outside zeroed (trained on skull-stripped volumes)"
            if skull_stripped
            else ""
        ),
        "patch_size_zyx": record["patch_size_zyx"],
        "training_data": record["training_data"],
        "validation_data": record["validation_data"],
        "config": record["config"],
        "command": record["command"],
        "resumed_with": record.get("resumed_with", []),
        "best_epoch": chosen_card.get("epoch"),
        "best_validation": chosen_card.get("validation", {}),
        "decision_thresholds": threshold_record,
        "epochs_completed": record["epochs_completed"],
        "stopped_early": record.get("stopped_early", False),
        "wall_time_seconds": round(float(record["elapsed_seconds"]), 1),
        "world_size": record.get("world_size", 1),
        "machine": record["machine"],
        "training_started": record["started"],
        "recipe_notes": _leading_comments(run_dir / CONFIG_COPY),
        "date": now,
    }
    if record.get("sld"):
        # 3D-SLD: which 2D masks guided the model, and the label-free Crop-and-Overlap choice.
        card["guidance"] = record["sld"]
    out_dir = Path(out_dir)
    weights_path = out_dir / f"{name}.safetensors"
    sha256 = save_checkpoint(
        network, weights_path, architecture=record["architecture"], arguments=record["arguments"], card=card
    )
    entry = {
        "name": name,
        "display_name": display_name,
        "kind": "network",
        "architecture": record["architecture"],
        "arguments": record["arguments"],
        "weights": weights_path.name,
        "sha256": sha256,
        "modalities": modalities,
        "vessel_classes": vessel_classes,
        "spacing_mm_zyx": record["training_spacing_zyx"],
        "normalisation": "brain-mask" if skull_stripped else "preset",
        "patch_size_zyx": record["patch_size_zyx"],
        "overlap": overlap,
        "thresholds": thresholds,
        "card": card_path_for(weights_path).name,
    }
    if mixed_spacing:
        entry["spacing_mm_zyx"] = None
    super_resolution = training.get("super_resolution")
    if super_resolution is not None:
        # The registry describes the network's input: the low-resolution window and voxel size.
        factor = int(super_resolution.get("downsample", 2))
        entry["implementation"] = "VesselSegLib.methods.super_resolution:SuperResolutionNetwork"
        entry["patch_size_zyx"] = [int(p) // factor for p in record["patch_size_zyx"]]
        spacing = entry["spacing_mm_zyx"]
        if isinstance(spacing, dict):
            entry["spacing_mm_zyx"] = {m: [factor * v for v in s] for m, s in spacing.items()}
        elif spacing:
            entry["spacing_mm_zyx"] = [factor * v for v in spacing]
    if training.get("loss") in UMIS_LOSSES:
        # A label-free model adapts to the user's stack on request (VesselSegLib/methods/adaptive.py).
        entry["implementation"] = "VesselSegLib.methods.adaptive:AdaptiveNetwork"
        defaults = AdaptationSettings()
        entry["settings"] = {
            "default_adaptation_s": 0,
            "adaptation_learning_rate": defaults.learning_rate,
            "adaptation_patch_size_zyx": list(record["patch_size_zyx"]),
            "adaptation_batch_size": defaults.batch_size,
            "adaptation_loss_weights": LOSS_PRESETS[training["loss"]],
        }
    return entry


def _leading_comments(config_copy: Path) -> str:
    """The comment block that opens a run's configuration (its recipe and deviations), for the card."""
    if not config_copy.is_file():
        return ""
    lines = []
    for line in config_copy.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines).strip()


__all__ = ["export_run"]
