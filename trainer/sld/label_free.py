"""Label-free checks of a trained 3D-SLD network: did it find the vessels, and where to cut its map.

3D-SLD's adversarial training is unstable: the same recipe finds the vessels with one seed and collapses
with the next (README "3D-SLD"), and its user has no 3D label to tell which happened. Two measurements on
the unlabelled validation volumes answer without one (both ours, not the paper's):

- :func:`bright_voxel_ap`, a collapse check: the average precision with which the decision map ranks the
  volume's brightest voxels (inside the brain mask of a skull-stripped volume). Vessels are the brightest
  structures of a TOF-MRA or two-photon angiogram, so a network whose vessel channel has found them ranks
  the bright voxels first; a collapsed one ranks them near chance (``1 - quantile``). It ranks *runs* of one
  recipe (``python -m trainer pick-sld``); it is not a segmentation score, and it does not apply to dark-vessel
  contrasts (SWI).
- :func:`reference_density_threshold`, a decision threshold: the cut at which the MIPs of the decision map's
  crops, drawn as the training crops are, are as dense as the Crop-and-Overlap references that the
  discriminator was trained to accept as vessels (eq. 8-9). At the CPU budget the map of a network that ranks
  the vessels well can sit above 0.5 almost everywhere (README: Dice 0.05 at 0.5, 0.58 at this cut).

Both read images and the brain mask only; :func:`assess` combines them for the trainer (``[training.sld]
threshold``), :func:`assess_run` for a finished run folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from trainer.sld.sampling import CropSampler
from VesselSegLib.metrics.ranking import average_precision
from VesselSegLib.unsupervised.adaptation import padded_to

#: Crops of the validation volumes whose MIPs set the reference-density threshold (fixed draws, seed 0).
DENSITY_CROPS = 128


@dataclasses.dataclass(frozen=True)
class LabelFreeAssessment:
    """What :func:`assess` measured on the validation volumes (JSON-ready by :meth:`to_dict`).

    Attributes
    ----------
    bright_voxel_ap : float
        Mean over the volumes of :func:`bright_voxel_ap` (chance: ``1 - bright_quantile``).
    bright_quantile : float
        Intensity quantile above which a voxel counts as bright.
    reference_density : float
        Foreground fraction of the references' MIPs the threshold is matched to.
    reference_density_threshold : float
        The threshold of :func:`reference_density_threshold` over all the volumes' crops.
    foreground_at_threshold : float
        Share of the scored voxels called vessel at that threshold.
    foreground_at_half : float
        The same at 0.5 (the paper's cut).
    """

    bright_voxel_ap: float
    bright_quantile: float
    reference_density: float
    reference_density_threshold: float
    foreground_at_threshold: float
    foreground_at_half: float

    def to_dict(self) -> dict[str, float]:
        return {key: round(float(value), 6) for key, value in dataclasses.asdict(self).items()}


def _scored(volume: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The voxels of ``volume`` inside ``mask`` (all of them when None), flat."""
    volume = np.asarray(volume)
    if mask is None:
        return volume.ravel()
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != volume.shape:
        raise ValueError(f"mask has shape {mask.shape} but the volume has {volume.shape}; they must match")
    if not mask.any():
        raise ValueError("mask is empty; give a brain mask that covers the brain")
    return volume[mask]


def bright_voxel_ap(
    decision: np.ndarray, image: np.ndarray, mask: np.ndarray | None = None, *, quantile: float = 0.995
) -> float:
    """Average precision of ``decision`` against the brightest voxels of ``image``: a label-free collapse check.

    Parameters
    ----------
    decision : np.ndarray, shape (Z, Y, X)
        The network's decision map in [0, 1] (``SLDNet.decision_probability``, as inference computes it).
    image : np.ndarray, shape (Z, Y, X)
        The normalised image the network read (vessels bright).
    mask : np.ndarray of bool, shape (Z, Y, X), optional
        Where to look (the brain of a skull-stripped volume); None: everywhere.
    quantile : float in (0, 1)
        Voxels at or above this intensity quantile (inside ``mask``) are the positives.

    Returns
    -------
    float
        AP in [0, 1]; a map unrelated to the intensity scores about ``1 - quantile``.
    """
    if np.shape(decision) != np.shape(image):
        raise ValueError(f"decision {np.shape(decision)} and image {np.shape(image)} must have one shape")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    scores = np.clip(_scored(decision, mask).astype(np.float64), 0.0, 1.0)
    values = _scored(image, mask)
    bright = values >= np.quantile(values, quantile)
    if bright.all():  # a constant image has no brightest voxels
        return math.nan
    return float(average_precision(scores, bright))


def reference_density_threshold(
    decisions: Sequence[np.ndarray],
    sampler: CropSampler,
    reference_density: float,
    *,
    crops: int = DENSITY_CROPS,
    seed: int = 0,
) -> float:
    """The cut at which the crops' decision MIPs are as dense as the references (label-free).

    ``crops`` windows are drawn by ``sampler`` (built on the images, so bright crops are drawn around bright
    voxels as in training) from ``seed``; each window of each decision map is projected by its maximum along
    Z, Y and X. Because thresholding commutes with the maximum, the MIPs of ``decision > t`` are the MIPs
    cut at ``t``, and their mean foreground fraction is ``reference_density`` at the (1 - density) quantile
    of the projections' pixels, each projection weighted by 1 / its pixel count (as a mean of per-MIP
    fractions weighs them).

    Parameters
    ----------
    decisions : sequence of np.ndarray (Z, Y, X)
        Decision maps, one per volume of ``sampler`` (same shapes, same order).
    sampler : CropSampler
        Draws the windows (its ``patch`` is the crop size).
    reference_density : float in (0, 1)
        Mean foreground fraction of the references' MIPs.

    Returns
    -------
    float
        The threshold in [0, 1].
    """
    if not 0.0 < reference_density < 1.0:
        raise ValueError(f"reference_density must be in (0, 1), got {reference_density!r}")
    if len(decisions) != len(sampler.volumes):
        raise ValueError(f"{len(decisions)} decision maps for {len(sampler.volumes)} volumes; give one each")
    # On the sampler's grids: it mirror-pads volumes smaller than its patch.
    padded = [padded_to(np.asarray(d, dtype=np.float32), sampler.patch) for d in decisions]
    rng = np.random.default_rng(seed)
    values, weights = [], []
    for _ in range(int(crops)):
        block = sampler.cut(padded, sampler.draw_window(rng))
        for axis in range(3):
            mip = block.max(axis=axis).ravel()
            values.append(mip)
            weights.append(np.full(mip.size, 1.0 / mip.size))
    values, weights = np.concatenate(values), np.concatenate(weights)
    order = np.argsort(values)[::-1]  # descending: the densest cut first
    covered = np.cumsum(weights[order]) / weights.sum()
    index = min(int(np.searchsorted(covered, reference_density)), values.size - 1)
    return float(np.clip(values[order][index], 0.0, 1.0))


def assess(
    decisions: Sequence[np.ndarray],
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    *,
    patch_zyx: Sequence[int],
    bright_fraction: float,
    bright_quantile: float,
    reference_density: float,
) -> LabelFreeAssessment:
    """Both checks on the validation volumes (``decisions``, ``images``, ``masks``: one per volume)."""
    if not (len(decisions) == len(images) == len(masks)) or not decisions:
        raise ValueError(
            "give one decision map, image and mask (or None) per validation volume, at least one"
        )
    aps = [
        bright_voxel_ap(d, i, m, quantile=bright_quantile)
        for d, i, m in zip(decisions, images, masks, strict=True)
    ]
    sampler = CropSampler(
        images,
        [1.0 / len(images)] * len(images),
        patch_zyx,
        bright_fraction=bright_fraction,
        bright_quantile=bright_quantile,
    )
    threshold = reference_density_threshold(decisions, sampler, reference_density)

    scored = np.concatenate([_scored(d, m) for d, m in zip(decisions, masks, strict=True)])
    return LabelFreeAssessment(
        bright_voxel_ap=float(np.nanmean(aps)),
        bright_quantile=float(bright_quantile),
        reference_density=float(reference_density),
        reference_density_threshold=threshold,
        foreground_at_threshold=float((scored > threshold).mean()),
        foreground_at_half=float((scored > 0.5).mean()),
    )


def assess_run(run_dir: str | Path, *, device: str = "cpu") -> LabelFreeAssessment:
    """:func:`assess` for a finished 3D-SLD run folder: its last weights on its validation volumes.

    For runs trained before the trainer recorded the assessment (``run.json: decision_thresholds.label_free``)
    and for the benchmarks; reads the run's configuration and Crop-and-Overlap record, never a label.
    """
    from trainer.config import parse_config
    from trainer.datasets import load_source_list
    from trainer.loop import LAST_WEIGHTS, RUN_RECORD
    from VesselSegLib.inference.sliding_window import predict_probabilities
    from VesselSegLib.models.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    record_path = run_dir / RUN_RECORD
    if not record_path.is_file():
        raise FileNotFoundError(
            f"{run_dir} holds no {RUN_RECORD}; give a finished `python -m trainer train` folder"
        )
    record = json.loads(record_path.read_text())
    if "sld" not in record:
        raise ValueError(f"{run_dir} is not a 3D-SLD run (its {RUN_RECORD} has no sld record)")
    config_file = record.get("config_file")
    config = parse_config(record["config"], base_dir=Path(config_file).parent if config_file else Path("."))
    cases, _ = load_source_list(config.data.validation, tuple(record["vessel_classes"]), images_only=True)
    if not cases:
        raise ValueError(f"{run_dir}: the run has no validation volumes to assess it on")
    network = load_checkpoint(
        run_dir / LAST_WEIGHTS,
        expected_architecture=record["architecture"],
        expected_arguments=record["arguments"],
    )
    training = config.training
    decisions = [
        predict_probabilities(
            network,
            case.image,
            patch_size_zyx=training.patch_size_zyx,
            overlap=training.validation_overlap,
            batch_size=training.batch_size,
            device=device,
        )[0]
        for case in cases
    ]
    sld = config.training.sld
    return assess(
        decisions,
        [case.image for case in cases],
        [case.brain_mask for case in cases],
        patch_zyx=training.patch_size_zyx,
        bright_fraction=sld.bright_crop_fraction,
        bright_quantile=sld.bright_crop_quantile,
        reference_density=float(record["sld"]["crop_overlap"]["reference_foreground"]),
    )


def recorded_or_measured(run_dir: str | Path, *, device: str = "cpu") -> tuple[LabelFreeAssessment, bool]:
    """A run's assessment: the one its trainer recorded (``run.json: decision_thresholds.label_free``), or
    measured now by :func:`assess_run` for runs older than that record. Returns it and whether it was recorded."""
    from trainer.loop import RUN_RECORD

    record_path = Path(run_dir) / RUN_RECORD
    if record_path.is_file():
        recorded = (json.loads(record_path.read_text()).get("decision_thresholds") or {}).get("label_free")
        if recorded:
            return LabelFreeAssessment(**recorded), True
    return assess_run(run_dir, device=device), False


def rank_runs(
    run_dirs: Sequence[str | Path], *, device: str = "cpu"
) -> list[tuple[Path, LabelFreeAssessment, bool]]:
    """Runs of one recipe (other seeds) ordered by :func:`bright_voxel_ap`, highest first: the label-free pick
    among restarts of an unstable training. Each item: run folder, assessment, whether it was recorded."""
    if not run_dirs:
        raise ValueError("give at least one 3D-SLD run folder")
    rows = [(Path(run), *recorded_or_measured(run, device=device)) for run in run_dirs]
    return sorted(rows, key=lambda row: -np.nan_to_num(row[1].bright_voxel_ap, nan=-1.0))
