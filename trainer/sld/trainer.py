"""The three-stage 3D-SLD training loop: no 3D label is ever read (notes ``3D-SLD.md`` sections 2.9-2.11).

:class:`SLDTrainer` is the supervised :class:`~trainer.loop.Trainer` with its hooks replaced; a
``[training.sld]`` table selects it (:func:`trainer.loop.run_training`).

One iteration takes ``training.batch_size`` items. Each item is two random crops ``a``, ``b`` of two
training volumes; each crop gives two photometrically augmented views, the second also turned by a
random in-plane flip/rotation ``G`` (its embedding is turned back by ``G^-1``), plus ``mixups`` mixed crops
``lam a + (1 - lam) b``. The network sees all of them in one batch.

- Stage 1 (eq. 15): patch discrimination between the two views' 4 x 4 x 4 patch vectors, and the
  hypersphere mixup loss on the mixed crops.
- Stage 2 (eq. 16) adds, on the non-mixed crops: 10 x region discrimination (eq. 2-5); the adversarial loss
  of the vessel channel's soft MIPs along the three axes against Crop-and-Overlap reference masks (eq. 8-9;
  the discriminator is updated after the network, on detached MIPs); ``lambda_i`` x consistency with the
  EMA teacher (eq. 10-12, 18; the teacher starts as a copy of the network at the stage's first iteration,
  and both ramps count from there); 0.1 x entropy (eq. 17).
- Stage 3 adds Reliability-Refinement (eq. 13-14): pseudo labels are the mean of the historical best
  network ``f'`` over ``pseudo_label_views`` flipped copies of each crop (of its decision map, or with
  ``pseudo_labels = "votes"`` of its decisions), and only voxels outside ``(1 - v_c, v_c)`` count; the
  log's ``train_reliable`` is their share. ``f'`` is the stage-2 epoch with the lowest label-free
  validation loss (below).

Validation reads no label: it is the stage-2 objective's single-pass terms (10 x region discrimination +
adversarial loss against the current discriminator + 0.1 x entropy) on fixed crops of the validation
images, and only picks ``f'``. The shipped model is the last epoch (nothing is selected with labels); the
decision threshold is the fixed ``validation_threshold`` (0.5, the notes), or with ``threshold =
"reference-density"`` the label-free cut of :mod:`trainer.sld.label_free`. After the last epoch that module's
checks run on the validation volumes either way, and the run record (then the card) keeps them under
``decision_thresholds.label_free``: ``bright_voxel_ap`` tells a collapsed run from one that found the vessels
(``python -m trainer pick-sld RUN...``). The learning rates are constant (the notes' [C] choice).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from trainer.datasets import load_source_list
from trainer.distributed import unwrap_model
from trainer.loop import (
    LAST_STATE,
    Trainer,
    TrainingInterruptedError,
    optimizer_state_from_files,
    optimizer_state_to_files,
)
from trainer.sld import label_free, losses
from trainer.sld.discriminator import MaskDiscriminator
from trainer.sld.guidance import BUNDLED_MASKS, mask_files, read_mask
from trainer.sld.references import (
    DENSITY_PROBES,
    choose_crop_settings,
    foreground_fraction_of_intensity_mips,
    foreground_fraction_of_mips,
    reference_batch,
    target_vessel_width_voxels,
)
from trainer.sld.sampling import CropSampler
from VesselSegLib.models.sld import apply_orientation, decision_map, invert_orientation, orientation_group
from VesselSegLib.unsupervised.adaptation import random_crops

logger = logging.getLogger(__name__)

#: Extra state of a run beside the loop's last_* files: teacher, discriminator, best network, their optimiser.
SLD_STATE = "last_sld_state.safetensors"
SLD_OPTIMIZER = "last_sld_discriminator_optimizer.safetensors"
#: Crops per validation image for the label-free validation loss (fixed positions, seed 0).
VALIDATION_CROPS = 4
#: Random crops of the training images that the density of the references is matched to (notes 6.3).
DENSITY_PROBE_CROPS = 32


def photometric_view(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One photometric augmentation ``A_k`` of a crop in [0, 1]: gamma, contrast, brightness and noise.

    The notes leave ``A_k`` open ([C]); these are the usual contrastive-learning intensity changes, mild
    enough to keep vessels visible. Written here because it is four lines on one crop.
    """
    gamma = float(np.exp(rng.uniform(np.log(0.7), np.log(1.5))))
    view = np.clip(crop, 0.0, 1.0) ** gamma
    view = view * rng.uniform(0.8, 1.2) + rng.uniform(-0.1, 0.1)
    view = view + rng.normal(0.0, rng.uniform(0.0, 0.05), size=crop.shape)
    return view.astype(np.float32)


@dataclasses.dataclass
class IterationBatch:
    """The network input of one iteration and where each part sits in it.

    ``images`` is ``(4 B + M B, 1, Z, Y, X)``: first view of every crop (``2 B``: a, b of each item), second
    view (``2 B``, turned by ``turns[i]``), then the mixed crops (``M B``) with their ``lams``.
    """

    images: torch.Tensor
    turns: list[Any]
    lams: list[float]
    items: int
    mixups: int


class SLDTrainer(Trainer):
    """3D-SLD: the loop of :class:`~trainer.loop.Trainer` with 3D-SLD's iteration (module text)."""

    single_process_only = "3D-SLD"

    def setup(self) -> None:
        self.sld = self.config.training.sld
        self.loss_weights = self.sld.weights()
        # Constant learning rate and no early stop: nothing here is selected with a label.
        self.config = dataclasses.replace(
            self.config,
            training=dataclasses.replace(
                self.config.training, early_stop_patience=10**9, threshold_selection="fixed"
            ),
        )
        self._epoch_terms: dict[str, list[float]] = {}
        self.iteration_in_stage = 0
        self.best_validation_loss = math.inf
        self.best_network_state: dict[str, torch.Tensor] | None = None
        self.teacher: nn.Module | None = None
        super().setup()
        device = self.context.device
        self.discriminator = MaskDiscriminator().to(device)
        self.discriminator_optimizer = torch.optim.Adam(
            self.discriminator.parameters(), lr=self.sld.discriminator_learning_rate, betas=(0.5, 0.999)
        )
        patch = self.config.training.patch_size_zyx
        self.mip_size = (max(patch[1], patch[2]), max(patch[1], patch[2]))
        self.group = orientation_group("in-plane", square=patch[1] == patch[2])
        self.crop_sampler = CropSampler(
            [case.image for case in self.sampler.cases],
            self.sampler.case_probabilities,
            patch,
            bright_fraction=self.sld.bright_crop_fraction,
            bright_quantile=self.sld.bright_crop_quantile,
        )
        self.reference_files = mask_files(self._references_folder())
        self.reference_masks = [read_mask(path) for path in self.reference_files]
        self.crop_choice = self._choose_crop_settings()
        if self.resume:
            self._load_sld_state()

    # ------------------------------------------------------------------------------------------ hooks

    def load_cases(self, sources):
        return load_source_list(sources, self.vessel_classes, images_only=True)

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if not hasattr(model, "forward_all") or not hasattr(model, "vessel_channel"):
            raise ValueError(
                f'[training.sld] trains a 3D-SLD network (model.architecture = "SLDNet"), not '
                f"{self.config.model.architecture}."
            )
        return model

    def build_loss(self) -> nn.Module:
        return nn.Identity()  # the losses are the functions of trainer.sld.losses, combined in train_step

    def build_scheduler(self, optimizer):
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=10**9)

    @property
    def steps_per_epoch(self) -> int:
        training = self.config.training
        return max(1, math.ceil(training.patches_per_epoch / training.batch_size))

    def stage_of(self, epoch: int) -> int:
        """1, 2 or 3: the stage that ``epoch`` (1-based) belongs to."""
        first, second, _ = self.sld.stage_epochs
        return 1 if epoch <= first else 2 if epoch <= first + second else 3

    def train_epoch(self, epoch: int) -> float:
        self.model.train()
        stage = self.stage_of(epoch)
        first = self.sld.stage_epochs[0]
        steps = self.steps_per_epoch
        # The ramps (eq. 11, 18) count iterations from the start of stage 2; stage 3 continues them.
        self.iteration_in_stage = (epoch - (first + 1)) * steps if stage >= 2 else 0
        if stage >= 2 and self.teacher is None:
            self.teacher = copy.deepcopy(unwrap_model(self.model)).eval()
        if stage == 3 and self.best_network_state is None:  # no stage 2 (or no validation) chose f'
            self.best_network_state = self._network_state()
        rng = np.random.default_rng([self.config.training.seed, epoch])
        total = 0.0
        show = sys.stderr.isatty()
        for _ in tqdm(range(steps), desc=f"epoch {epoch} (stage {stage})", disable=not show, leave=False):
            total += self.iteration(rng, stage)
            self.patches_seen += self.config.training.batch_size
            if self.stop_requested:
                raise TrainingInterruptedError
        return total / steps

    # -------------------------------------------------------------------------------------- iteration

    def draw_batch(self, rng: np.random.Generator) -> IterationBatch:
        """Crops, views and mixups of ``batch_size`` items (see :class:`IterationBatch`)."""
        items = self.config.training.batch_size
        crops = [self.crop_sampler.draw(rng) for _ in range(2 * items)]
        first_views = [photometric_view(c, rng) for c in crops]
        turns = [self.group[int(rng.integers(len(self.group)))] for _ in crops]
        second_views = []
        for crop, turn in zip(crops, turns, strict=True):
            view = torch.from_numpy(photometric_view(crop, rng))
            second_views.append(apply_orientation(view, turn).numpy())
        mixed, lams = [], []
        for item in range(items):
            a, b = first_views[2 * item], first_views[2 * item + 1]
            for _ in range(self.sld.mixups):
                lam = float(rng.uniform(0.2, 0.8))
                mixed.append(lam * a + (1.0 - lam) * b)
                lams.append(lam)
        stacked = np.stack([*first_views, *second_views, *mixed])[:, None]
        images = torch.from_numpy(np.ascontiguousarray(stacked, dtype=np.float32))
        return IterationBatch(images, turns, lams, items, self.sld.mixups)

    def iteration(self, rng: np.random.Generator, stage: int) -> float:
        """One update of the network and (stages 2-3) of the discriminator; returns the network's loss."""
        batch = self.draw_batch(rng)
        device = self.context.device
        images = batch.images.to(device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        crops = 2 * batch.items
        network = unwrap_model(self.model)
        output = network.forward_all(images)
        embedding, clusters = output.embedding.float(), output.clusters.float()
        # Stage 1 terms (eq. 15): the second views' embeddings turned back onto the first views' grid.
        first = embedding[:crops]
        second = torch.stack(
            [invert_orientation(e, g) for e, g in zip(embedding[crops : 2 * crops], batch.turns, strict=True)]
        )
        grid = losses.patch_vectors(first)
        terms = {
            "patch": losses.instance_discrimination_loss(grid, losses.patch_vectors(second)),
        }
        loss = self.loss_weights.patch * terms["patch"]
        if batch.mixups:
            cells = grid.shape[0] // crops
            by_crop = grid.reshape(crops, cells, -1)
            a = by_crop[0::2].repeat_interleave(batch.mixups, dim=0).reshape(-1, grid.shape[1])
            b = by_crop[1::2].repeat_interleave(batch.mixups, dim=0).reshape(-1, grid.shape[1])
            lam = torch.tensor(batch.lams, device=device).repeat_interleave(cells)[:, None]
            mixed = losses.patch_vectors(embedding[2 * crops :])
            terms["mixup"] = losses.hypersphere_mixup_loss(mixed, a, b, lam)
            loss = loss + self.loss_weights.mixup * terms["mixup"]
        if stage >= 2:
            plain = slice(0, 2 * crops)  # both views of every crop; the mixed crops only enter the mixup loss
            channel = network.vessel_channel
            vessel = clusters[plain, channel : channel + 1]
            fake = losses.discriminator_mips(vessel, self.mip_size)
            terms["region"] = losses.region_discrimination_loss(embedding[plain], clusters[plain])
            terms["adversarial"] = losses.adversarial_loss(self.discriminator(fake))
            terms["entropy"] = losses.entropy_loss(clusters[plain])
            loss = (
                loss
                + self.loss_weights.region * terms["region"]
                + self.loss_weights.adversarial * terms["adversarial"]
                + self.loss_weights.entropy * terms["entropy"]
            )
            if self.loss_weights.brightness > 0:
                terms["brightness"] = losses.brightness_prior_loss(images[plain].float(), vessel)
                loss = loss + self.loss_weights.brightness * terms["brightness"]
            if self.sld.consistency:
                with torch.no_grad():
                    teacher = self.teacher.forward_all(images[plain]).clusters.float()
                weight = losses.consistency_weight(self.iteration_in_stage, self.steps_per_epoch)
                terms["consistency"] = losses.consistency_loss(vessel, teacher[:, channel : channel + 1])
                terms["consistency_weight"] = torch.tensor(float(weight))
                loss = loss + weight * terms["consistency"]
        if stage == 3:
            pseudo = self.pseudo_labels(images[:crops])
            terms["reliable"] = losses.reliable_mask(pseudo, self.sld.confidence).mean()
            terms["refinement"] = losses.reliability_refinement_loss(
                decision_map(clusters[:crops], network.vessel_channel, network.decision),
                pseudo,
                confidence=self.sld.confidence,
            )
            loss = loss + self.loss_weights.refinement * terms["refinement"]
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"3D-SLD loss is not finite ({ {k: float(v) for k, v in terms.items()} })."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if stage >= 2:
            if self.teacher is not None:
                momentum = losses.ema_momentum(self.iteration_in_stage, self.steps_per_epoch)
                losses.update_ema(self.teacher, network, momentum)
            terms["discriminator"] = self.discriminator_step(fake.detach(), rng)
            self.iteration_in_stage += 1
        terms["loss"] = loss
        for name, value in terms.items():
            self._epoch_terms.setdefault(name, []).append(float(torch.as_tensor(value).detach()))
        return float(loss.detach())

    def discriminator_step(self, fake: torch.Tensor, rng: np.random.Generator) -> float:
        """Eq. (8): one Adam step of the discriminator on fresh references (real) and detached MIPs (fake)."""
        real = reference_batch(self.reference_masks, self.crop_choice.settings, self.sld.reference_count, rng)
        real = torch.from_numpy(real).to(fake.device)
        self.discriminator_optimizer.zero_grad(set_to_none=True)
        loss = losses.discriminator_loss(self.discriminator(real), self.discriminator(fake))
        loss.backward()
        self.discriminator_optimizer.step()
        return float(loss.detach())

    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Eq. (13): ``f'``'s decision maps (``pseudo_labels = "map"``) or decisions (``"votes"``) averaged
        over the flips of (Z, Y, X) (:func:`trainer.sld.losses.averaged_pseudo_labels`)."""
        return losses.averaged_pseudo_labels(
            self._best_network(), images, self.sld.pseudo_label_views, self.sld.pseudo_labels
        )

    def _network_state(self) -> dict[str, torch.Tensor]:
        """A detached copy of the network's weights and buffers (the candidate ``f'``)."""
        return {k: v.detach().clone() for k, v in unwrap_model(self.model).state_dict().items()}

    def _best_network(self) -> nn.Module:
        if getattr(self, "_best_network_module", None) is None:
            network = copy.deepcopy(unwrap_model(self.model))
            network.load_state_dict(self.best_network_state)
            self._best_network_module = network.eval()
        return self._best_network_module

    # ------------------------------------------------------------------------------------- threshold

    def choose_thresholds(self) -> dict[str, Any]:
        """The fixed threshold or the label-free reference-density one, with the label-free checks (module text)."""
        fixed = self.config.training.validation_threshold
        chosen = {"selection": "fixed", "thresholds": {name: fixed for name in self.vessel_classes}}
        # data.validation is never empty (the configuration requires it): the checks always have a volume.
        network = copy.deepcopy(unwrap_model(self.model))  # the last epoch: the shipped weights
        decisions = [self.predict_validation_case(network, case)[0] for case in self.validation_cases]
        assessment = label_free.assess(
            decisions,
            [case.image for case in self.validation_cases],
            [case.brain_mask for case in self.validation_cases],
            patch_zyx=self.config.training.patch_size_zyx,
            bright_fraction=self.sld.bright_crop_fraction,
            bright_quantile=self.sld.bright_crop_quantile,
            reference_density=self.crop_choice.reference_foreground,
        )
        logger.info(
            "Label-free checks: bright-voxel AP %.3f (chance %.3f), reference-density threshold %.3f",
            assessment.bright_voxel_ap,
            1 - assessment.bright_quantile,
            assessment.reference_density_threshold,
        )
        if self.sld.threshold == "reference-density":
            cut = round(assessment.reference_density_threshold, 4)
            chosen = {"selection": "reference-density", "thresholds": {n: cut for n in self.vessel_classes}}
        return {**chosen, "label_free": assessment.to_dict()}

    # ------------------------------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        """Label-free: stage-2 single-pass terms on fixed crops of the validation images (module text)."""
        if self.stage_of(epoch) == 1 or not self.validation_cases:
            return {"loss": math.nan, "mean_dice": math.nan}
        network = unwrap_model(self.model)
        network.eval()
        rng = np.random.default_rng(0)
        values: dict[str, list[float]] = {}
        channel = network.vessel_channel
        for case in self.validation_cases:
            crops = torch.from_numpy(
                random_crops(case.image, self.config.training.patch_size_zyx, VALIDATION_CROPS, rng)
            ).clamp(0, 1)
            output = network.forward_all(crops.to(self.context.device))
            clusters = output.clusters.float()
            fake = losses.discriminator_mips(clusters[:, channel : channel + 1], self.mip_size)
            region = float(losses.region_discrimination_loss(output.embedding.float(), clusters))
            adversarial = float(losses.adversarial_loss(self.discriminator(fake)))
            entropy = float(losses.entropy_loss(clusters))
            total = self.loss_weights.region * region + self.loss_weights.adversarial * adversarial
            total += self.loss_weights.entropy * entropy
            for name, value in (("loss", total), ("region", region), ("adversarial", adversarial)):
                values.setdefault(name, []).append(value)
            decision = decision_map(clusters, channel, network.decision)
            values.setdefault("foreground", []).append(float((decision > 0.5).float().mean()))
        network.train()
        metrics = {name: float(np.mean(v)) for name, v in values.items()}
        metrics["mean_dice"] = math.nan  # no labels
        return metrics

    @property
    def log_columns(self) -> list[str]:
        names = ["patch", "mixup", "region", "adversarial", "entropy", "consistency", "consistency_weight"]
        names += ["reliable", "refinement", "discriminator", "loss"]
        if self.loss_weights.brightness > 0:  # the optional prior (not in the paper) logs only where it is on
            names.insert(names.index("refinement"), "brightness")
        return [
            "epoch",
            "stage",
            *(f"train_{n}" for n in names),
            "val_loss",
            "val_region",
            "val_adversarial",
            "val_foreground",
            "lr",
            "seconds",
        ]

    def on_epoch_end(self, epoch: int, record: dict[str, float], improved: bool) -> None:
        record["stage"] = self.stage_of(epoch)
        record.update({f"train_{n}": float(np.mean(v)) for n, v in self._epoch_terms.items()})
        self._epoch_terms = {}
        validation_loss = record.get("val_loss", math.nan)
        if self.stage_of(epoch) == 2 and validation_loss < self.best_validation_loss:
            # f' of stage 3: the stage-2 epoch with the lowest label-free validation loss.
            self.best_validation_loss = validation_loss
            self.best_network_state = self._network_state()
        # The last epoch is the model: every epoch replaces the "best" checkpoint that export ships.
        self.best_epoch, self.best_metrics = epoch, {k.removeprefix("val_"): v for k, v in record.items()}
        self._save_sld_state()
        super().on_epoch_end(epoch, record, True)

    # --------------------------------------------------------------------------------------- guidance

    def _references_folder(self) -> Path:
        if self.sld.references == "bundled":
            return BUNDLED_MASKS
        folder = Path(self.sld.references).expanduser()
        if not folder.is_absolute() and self.config.source_path is not None:
            folder = (Path(self.config.source_path).parent / folder).resolve()
        return folder

    def _choose_crop_settings(self):
        """Crop scale and overlap count from physical widths and image statistics only (notes 6.3)."""
        rng = np.random.default_rng([self.config.training.seed, 6_3])
        cases = self.sampler.cases
        patch = self.config.training.patch_size_zyx
        modality = cases[0].modality
        spacing = np.median([c.spacing_zyx for c in cases], axis=0)
        # The MIP fed to the discriminator is resized to mip_size: widths scale with it.
        width = target_vessel_width_voxels(modality, spacing[1:]) * self.mip_size[0] / max(patch[1], patch[2])
        if self.sld.bright_crop_fraction > 0:  # the density of the crops the network will see
            density = foreground_fraction_of_mips(
                [self.crop_sampler.draw(rng) for _ in range(DENSITY_PROBE_CROPS)]
            )
        else:
            density = foreground_fraction_of_intensity_mips(
                [c.image for c in cases], patch, DENSITY_PROBE_CROPS, rng
            )
        choice = choose_crop_settings(self.reference_masks, self.mip_size, width, density, rng)
        settings = choice.settings
        if self.sld.crop_scale != "auto":
            settings = dataclasses.replace(settings, crop_scale=tuple(self.sld.crop_scale))
        if self.sld.max_patches != "auto":
            settings = dataclasses.replace(settings, max_patches=int(self.sld.max_patches))
        if settings != choice.settings:
            # Overridden by the configuration: record the density of the references actually drawn (the
            # reference-density threshold matches it). A generator of its own leaves the training's draws alone.
            probes = reference_batch(
                self.reference_masks, settings, DENSITY_PROBES, np.random.default_rng(6_3)
            )
            choice = dataclasses.replace(choice, reference_foreground=float(probes.mean()))
        choice = dataclasses.replace(choice, settings=settings)
        logger.info(
            "Crop-and-Overlap: crop scale %s, up to %d patches (target width %.1f px, intensity-MIP density %.3f)",
            settings.crop_scale,
            settings.max_patches,
            width,
            density,
        )
        return choice

    def run_record_extras(self) -> dict[str, Any]:
        """``sld``: the guidance (which masks, the Crop-and-Overlap choice) and the stages, for the card."""
        if not hasattr(self, "crop_choice"):  # the record written during setup, before the guidance is read
            return {}
        choice = self.crop_choice
        return {
            "sld": {
                "references": self.sld.references,
                "references_folder": str(self.reference_files[0].parent),
                "reference_masks": len(self.reference_masks),
                "reference_files": [f.name for f in self.reference_files],
                "provenance": "Resources/GuidanceMasks/README.md"
                if self.sld.references == "bundled"
                else "the user's folder",
                "crop_overlap": {
                    "crop_scale": list(choice.settings.crop_scale),
                    "max_patches": choice.settings.max_patches,
                    "size": list(choice.settings.size),
                    **{k: v for k, v in dataclasses.asdict(choice).items() if k != "settings"},
                },
                "training_crops": {
                    "bright_fraction": self.sld.bright_crop_fraction,
                    "bright_quantile": self.sld.bright_crop_quantile,
                },
                "stage_epochs": list(self.sld.stage_epochs),
                "iterations_per_epoch": self.steps_per_epoch,
                "best_stage2_validation_loss": None
                if not math.isfinite(self.best_validation_loss)
                else self.best_validation_loss,
            }
        }

    # ------------------------------------------------------------------------------------ checkpoints

    def _save_sld_state(self) -> None:
        """Teacher, discriminator, ``f'`` and the discriminator's optimiser, before the loop's state file."""
        tensors: dict[str, torch.Tensor] = {}
        for prefix, module in (("teacher.", self.teacher), ("discriminator.", self.discriminator)):
            if module is not None:
                tensors.update(
                    {prefix + k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
                )
        if self.best_network_state is not None:
            tensors.update({"best." + k: v.cpu().contiguous() for k, v in self.best_network_state.items()})
        metadata = {"best_validation_loss": repr(self.best_validation_loss)}
        save_file(tensors, str(self.run_dir / (SLD_STATE + ".tmp")), metadata=metadata)
        (self.run_dir / (SLD_STATE + ".tmp")).replace(self.run_dir / SLD_STATE)
        optimizer_tensors, optimizer_meta = optimizer_state_to_files(
            self.discriminator_optimizer.state_dict()
        )
        save_file(
            optimizer_tensors,
            str(self.run_dir / (SLD_OPTIMIZER + ".tmp")),
            metadata={"state": json.dumps(optimizer_meta)},
        )
        (self.run_dir / (SLD_OPTIMIZER + ".tmp")).replace(self.run_dir / SLD_OPTIMIZER)

    def _load_sld_state(self) -> None:
        path = self.run_dir / SLD_STATE
        if not path.is_file() or not (self.run_dir / LAST_STATE).is_file():
            raise ValueError(
                f"Cannot resume 3D-SLD: {path} is missing; start the run again without --resume."
            )
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt") as handle:
            self.best_validation_loss = float(handle.metadata()["best_validation_loss"])

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}

        self.discriminator.load_state_dict(part("discriminator."))
        if part("teacher."):
            self.teacher = copy.deepcopy(unwrap_model(self.model)).eval()
            self.teacher.load_state_dict(part("teacher."))
        if part("best."):
            self.best_network_state = part("best.")
        optimizer_path = self.run_dir / SLD_OPTIMIZER
        with safe_open(str(optimizer_path), framework="pt") as handle:
            meta = json.loads(handle.metadata()["state"])
        self.discriminator_optimizer.load_state_dict(
            optimizer_state_from_files(load_file(str(optimizer_path), device="cpu"), meta)
        )


__all__ = ["SLDTrainer", "photometric_view"]
