"""The training loop: one :class:`Trainer` class whose steps are hooks, so variants are small subclasses.

Per epoch: ``patches_per_epoch`` random patches (split over the ranks) in batches of ``batch_size``; then,
on rank 0, whole-volume sliding-window inference on every validation case with
:func:`VesselSegLib.inference.sliding_window.predict_probabilities` (the inference code path), the
validation loss, and Dice / clDice per class and for "vessel" (any class). The learning rate follows
``ReduceLROnPlateau`` on the validation loss (VC-Net: x0.5 after 10 epochs without improvement); the best
checkpoint is kept by validation mean Dice; training stops early after ``early_stop_patience`` epochs
without a better mean Dice.

Files in the run folder::

    best.safetensors / best.card.json      weights with the best validation mean Dice (+ its metrics)
    last.safetensors / last.card.json      weights after the last completed epoch
    last_optimizer.safetensors             Adam's tensors (no pickle)
    last_state.json                        epoch, scheduler, counters, Adam's other fields; written last
    training_log.csv / training_curves.png one row per epoch / the curves
    run.json, config.toml                  what was run, how, on what machine
    interrupted.safetensors                weights when Ctrl+C stopped an epoch half-way (not resumable)

After the last epoch, each class's decision threshold is chosen on the validation cases with the best
checkpoint (``training.threshold_selection = "validation"``, :meth:`Trainer.choose_thresholds`) and written to
``run.json``; ``python -m trainer export`` puts it in the registry entry and the model card.

``--resume`` reloads the ``last_*`` files and continues with the next epoch exactly as an uninterrupted run
would: patches are drawn from a generator seeded by (seed, rank, epoch), not from a running stream, and
torch's generator (dropout, 3D-SLD's orientation draws) is seeded by (seed, epoch) before each epoch.
"""

from __future__ import annotations

import copy
import csv
import datetime
import json
import logging
import math
import os
import platform
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from trainer.config import UMIS_LOSSES, TrainConfig
from trainer.datasets import PatchSampler, TrainingCase, load_source_list
from trainer.distributed import (
    DistributedContext,
    any_rank,
    barrier,
    broadcast_floats,
    cleanup,
    gather_floats,
    init_distributed,
    mean_over_ranks,
    unwrap_model,
    wrap_model,
)
from trainer.losses import build_loss
from trainer.plotting import plot_training_curves
from VesselSegLib.inference.sliding_window import predict_probabilities
from VesselSegLib.metrics import best_threshold
from VesselSegLib.metrics import dice as dice_score
from VesselSegLib.metrics.topology import cldice
from VesselSegLib.models.checkpoint import load_state_into, read_checkpoint_metadata, save_checkpoint
from VesselSegLib.models.memory_format import set_3d_memory_format
from VesselSegLib.models.networks import build_network
from VesselSegLib.models.unet3d import check_divisible

logger = logging.getLogger(__name__)

BEST_WEIGHTS = "best.safetensors"
LAST_WEIGHTS = "last.safetensors"
LAST_OPTIMIZER = "last_optimizer.safetensors"
LAST_STATE = "last_state.json"
LOG_CSV = "training_log.csv"
CURVES_PNG = "training_curves.png"
RUN_RECORD = "run.json"
CONFIG_COPY = "config.toml"
INTERRUPTED_WEIGHTS = "interrupted.safetensors"


class TrainingInterruptedError(Exception):
    """Ctrl+C (SIGINT) stopped training; the last completed epoch is saved and resumable."""


@dataclass
class TrainingSummary:
    """What :meth:`Trainer.fit` did."""

    run_dir: Path
    epochs_completed: int
    best_epoch: int | None
    best_score: float
    best_metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    interrupted: bool = False
    elapsed_seconds: float = 0.0


def machine_description(device: torch.device) -> dict[str, Any]:
    """Platform, CPU count, library versions and the training device, for the run record and model card."""
    description = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description


# ----------------------------------------------------------------------------- optimizer state, no pickle


def optimizer_state_to_files(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into safetensors-ready tensors and a JSON-ready remainder."""
    tensors: dict[str, torch.Tensor] = {}
    other: dict[str, dict[str, Any]] = {}
    for param_id, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                other.setdefault(str(param_id), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def optimizer_state_from_files(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_files`."""
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        _, param_id, name = key.split(".", 2)
        state.setdefault(int(param_id), {})[name] = tensor
    for param_id, values in meta.get("state", {}).items():
        state.setdefault(int(param_id), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_json(path: Path, document: dict[str, Any]) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(document, indent=2, default=str) + "\n")
    os.replace(temporary, path)


# ----------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Trains the network a :class:`TrainConfig` describes.

    Override a hook to change one step: ``load_cases``, ``build_model``, ``build_loss``, ``build_optimizer``,
    ``build_scheduler``, ``train_step``, ``validate``, ``choose_thresholds``, ``on_epoch_end``
    (``trainer/unsupervised.py`` does, for label-free training).

    Parameters
    ----------
    config : TrainConfig
    resume : bool
        Continue the run in ``config.output.run_dir`` after its last completed epoch.
    command : sequence of str, optional
        The command line that started training, recorded in the run record and model card.
    context : DistributedContext, optional
        From :func:`trainer.distributed.init_distributed`; default: one process on ``training.device``.
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool = False,
        command: Sequence[str] | None = None,
        context: DistributedContext | None = None,
    ) -> None:
        self.config = config
        self.run_dir = Path(config.output.run_dir)
        self.resume = resume
        self.command = list(command) if command is not None else [sys.executable, *sys.argv]
        self.context = context or init_distributed(config.training.device)
        self.vessel_classes = config.data.vessel_classes
        self.stop_requested = False
        self.history: list[dict[str, float]] = []
        self.start_epoch = 1
        self.best_score = -math.inf
        self.best_epoch: int | None = None
        self.best_metrics: dict[str, float] = {}
        self.epochs_without_improvement = 0
        self.elapsed_before = 0.0
        self.stopped_early = False
        self.patches_seen = 0
        self.patches_per_rank: list[float] = []
        self.thresholds: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------- hooks

    def load_cases(self, sources) -> tuple[list[TrainingCase], np.ndarray]:
        """The cases of ``sources`` (images and targets) and their sampling probabilities."""
        return load_source_list(
            sources, self.vessel_classes, spacing_zyx=self.config.data.training_spacing_zyx
        )

    def build_model(self) -> nn.Module:
        """The network, initialised from ``training.init_weights`` when given (fine-tuning)."""
        model = build_network(self.config.model.architecture, self.config.model.arguments)
        divisor = getattr(model, "size_divisor_zyx", None)
        if divisor is not None:
            check_divisible(self.config.training.patch_size_zyx, divisor)
        if self.config.training.init_weights is not None:
            load_state_into(model, self.config.training.init_weights)
            logger.info("Fine-tuning from %s", self.config.training.init_weights)
        return model

    def build_loss(self) -> nn.Module:
        """The configured loss; VC-Net's auxiliary MIP term (eq. 3) is added for networks with a MIP stream."""
        weight = self.config.training.mip_loss_weight if self.has_mip_stream else None
        return build_loss(self.config.training.loss, mip_weight=weight)

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """Adam at ``learning_rate`` (VC-Net: 1e-4) with L2 ``weight_decay`` (2PM V-Net eq. 3: gamma = 0.01)."""
        training = self.config.training
        return torch.optim.Adam(
            model.parameters(), lr=training.learning_rate, weight_decay=training.weight_decay
        )

    def build_scheduler(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        """``training.lr_schedule``: "plateau" (VC-Net): LR x ``lr_decay_factor`` after ``lr_patience`` epochs
        without a lower validation loss; "cosine": a half cosine from the learning rate to 1 % of it at the
        last epoch (stepped once per epoch)."""
        training = self.config.training
        if training.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(
                optimizer, T_max=max(training.epochs - 1, 1), eta_min=0.01 * training.learning_rate
            )
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="min",
            factor=self.config.training.lr_decay_factor,
            patience=self.config.training.lr_patience,
        )

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> float:
        """One optimisation step on a batch ``(B, 1, Z, Y, X)`` / ``(B, C, Z, Y, X)``; returns the loss."""
        device = self.context.device
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        self.optimizer.zero_grad(set_to_none=True)
        # VC-Net: the 2D stream's MIP prediction feeds the auxiliary loss (eq. 3).
        output = self.model(images, return_mip=True) if self.has_mip_stream else self.model(images).float()
        loss = self.loss_function(output, targets)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def validation_input(self, case: TrainingCase) -> tuple[np.ndarray, tuple[int, int, int]]:
        """The image the network reads for a validation case, and its window (ROSE: the LR volume)."""
        return case.image, self.config.training.patch_size_zyx

    def predict_validation_case(self, network: nn.Module, case: TrainingCase) -> np.ndarray:
        """Whole-volume probabilities ``(C, Z, Y, X)`` of one validation case, by the inference code path."""
        training = self.config.training
        image, patch = self.validation_input(case)
        return predict_probabilities(
            network,
            image,
            patch_size_zyx=patch,
            overlap=training.validation_overlap,
            batch_size=training.batch_size,
            device=self.context.device,
        )

    def validate(self, epoch: int) -> dict[str, float]:
        """Whole-volume inference on the validation cases: loss, Dice and clDice per class and "vessel".

        A class is scored on the cases whose reference contains it (a two-photon stack says nothing about
        arteries); ``mean_dice`` averages the classes' Dice. clDice is NaN in epochs that are not a
        multiple of ``training.cldice_every``. Keys: ``loss``, ``mean_dice``,
        ``<class>_dice``, ``<class>_cldice`` for each class and "vessel".
        """
        network = copy.deepcopy(unwrap_model(self.model))  # inference must not touch the training replica
        training = self.config.training
        threshold = training.validation_threshold
        # 3D skeletonisation dominates validation time (~15 s of 20 s for the default set), so clDice can be
        # computed every few epochs only (training.cldice_every; NaN in the log otherwise).
        with_cldice = training.cldice_every > 0 and epoch % training.cldice_every == 0
        losses: list[float] = []
        scores: dict[str, list[float]] = {}
        for case in self.validation_cases:
            probabilities = self.predict_validation_case(network, case)
            with torch.no_grad():
                losses.append(
                    float(
                        self.loss_function.from_probabilities(
                            torch.from_numpy(probabilities)[None], torch.from_numpy(case.target)[None].float()
                        )
                    )
                )
            predicted = probabilities > threshold
            pairs = [
                (name, predicted[c], case.target[c].astype(bool))
                for c, name in enumerate(self.vessel_classes)
            ]
            pairs.append(("vessel", predicted.any(axis=0), case.target.any(axis=0)))
            for name, prediction, reference in pairs:
                if not reference.any():
                    continue
                scores.setdefault(f"{name}_dice", []).append(float(dice_score(prediction, reference)))
                if with_cldice:
                    scores.setdefault(f"{name}_cldice", []).append(float(cldice(prediction, reference)))
        metrics = {"loss": float(np.mean(losses))}
        for name in [*self.vessel_classes, "vessel"]:
            for kind in ("dice", "cldice"):
                values = scores.get(f"{name}_{kind}")
                metrics[f"{name}_{kind}"] = float(np.mean(values)) if values else math.nan
        class_dice = [metrics[f"{name}_dice"] for name in self.vessel_classes]
        present = [v for v in class_dice if not math.isnan(v)]
        metrics["mean_dice"] = float(np.mean(present)) if present else math.nan
        return metrics

    def choose_thresholds(self) -> dict[str, Any]:
        """Each class's decision threshold, from the best checkpoint's validation probabilities.

        With ``training.threshold_selection = "validation"``: the candidate threshold (0.05-0.95, steps of
        0.05) with the highest mean Dice over the validation cases that contain the class
        (:func:`VesselSegLib.metrics.best_threshold`); a class no validation case contains keeps
        ``validation_threshold``. Why: losses that weight the rare vessel class up (class-balanced BCE)
        give probabilities that are not calibrated at 0.5.

        Returns
        -------
        dict
            ``{"selection": str, "thresholds": {class: float}, "dice_by_threshold": {class: {t: Dice}}}``.
        """
        training = self.config.training
        thresholds = {name: training.validation_threshold for name in self.vessel_classes}
        sweeps: dict[str, dict[str, float]] = {}
        best_path = self.run_dir / BEST_WEIGHTS
        if training.threshold_selection == "fixed" or not best_path.is_file():
            return {"selection": "fixed", "thresholds": thresholds, "dice_by_threshold": sweeps}
        network = copy.deepcopy(unwrap_model(self.model))
        load_state_into(network, best_path)
        maps: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {
            n: ([], []) for n in self.vessel_classes
        }
        for case in self.validation_cases:
            probabilities = self.predict_validation_case(network, case)
            for c, name in enumerate(self.vessel_classes):
                if case.target[c].any():
                    maps[name][0].append(np.clip(probabilities[c], 0.0, 1.0))
                    maps[name][1].append(case.target[c].astype(bool))
        for name, (scores, references) in maps.items():
            if scores:
                thresholds[name], sweep = best_threshold(scores, references)
                sweeps[name] = {f"{t:.2f}": round(d, 4) for t, d in sweep.items()}
        return {"selection": "validation", "thresholds": thresholds, "dice_by_threshold": sweeps}

    def on_epoch_end(self, epoch: int, record: dict[str, float], improved: bool) -> None:
        """Rank 0: best and last checkpoints, CSV log, curves."""
        card = {
            "epoch": epoch,
            "validation": {k.removeprefix("val_"): v for k, v in record.items() if k.startswith("val_")},
        }
        if improved:
            self._save_weights(self.run_dir / BEST_WEIGHTS, card)
        self._save_last(epoch)
        self._write_log()
        plot_training_curves(self.history, self.run_dir / CURVES_PNG)

    # ------------------------------------------------------------------------------------------- setup

    @property
    def log_columns(self) -> list[str]:
        columns = ["epoch", "train_loss", "val_loss", "val_mean_dice"]
        for name in [*self.vessel_classes, "vessel"]:
            columns += [f"val_{name}_dice", f"val_{name}_cldice"]
        return [*columns, "lr", "seconds"]

    #: Set by trainers whose step calls the unwrapped network (``forward_all``), which DistributedDataParallel
    #: cannot see: with several processes their gradients would never be synchronised, so they refuse.
    single_process_only: str | None = None

    def setup(self) -> None:
        """Threads, seed, model, optimizer, data; then the saved state when resuming."""
        if self.single_process_only and self.context.enabled:
            raise ValueError(
                f"{self.single_process_only} training runs in one process only ({self.context.world_size} were "
                "started): run `python -m trainer train CONFIG`, not torchrun."
            )
        training = self.config.training
        threads = training.num_threads
        if self.context.enabled and self.context.device.type == "cpu":
            # Processes on one machine share its cores: split the configured threads between them.
            threads = max(1, threads // self.context.local_world_size)
        torch.set_num_threads(threads)
        torch.manual_seed(training.seed)
        model = self.build_model().to(self.context.device)
        # channels-last 3D convolutions are several times faster on the CPU (oneDNN), forward and backward.
        self.channels_last = self.context.device.type == "cpu"
        if self.channels_last:
            model = set_3d_memory_format(model, torch.channels_last_3d)
        self.has_mip_stream = bool(getattr(model, "has_mip_stream", False))
        self.model = wrap_model(model, self.context)
        self.loss_function = self.build_loss()
        self.optimizer = self.build_optimizer(self.model)
        self.scheduler = self.build_scheduler(self.optimizer)
        cases, probabilities = self.load_cases(self.config.data.training)
        self.sampler = PatchSampler(
            cases,
            training.patch_size_zyx,
            case_probabilities=probabilities,
            foreground_fraction=training.foreground_fraction,
            augment=training.augment,
            randomisation=training.randomisation,
        )
        self.validation_cases: list[TrainingCase] = []
        if self.context.is_main:
            self.validation_cases, _ = self.load_cases(self.config.data.validation)
        state_path = self.run_dir / LAST_STATE
        if self.resume:
            if not state_path.is_file():
                raise ValueError(
                    f"Nothing to resume in {self.run_dir}: {LAST_STATE} is missing; drop --resume."
                )
            self._load_last()
        elif state_path.is_file():
            raise ValueError(
                f"{self.run_dir} already holds a training run; pass --resume to continue it or choose "
                "another --run-dir."
            )
        if self.context.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._write_run_record(finished=False)

    @property
    def steps_per_epoch(self) -> int:
        training = self.config.training
        return max(1, math.ceil(training.patches_per_epoch / (training.batch_size * self.context.world_size)))

    # --------------------------------------------------------------------------------------------- fit

    def fit(self) -> TrainingSummary:
        """Train until ``epochs``, early stop or Ctrl+C; return what happened."""
        self.setup()
        training = self.config.training
        started = time.monotonic()
        previous_handler = self._install_interrupt_handler()
        interrupted = False
        try:
            for epoch in range(self.start_epoch, training.epochs + 1):
                epoch_started = time.monotonic()
                lr = self.optimizer.param_groups[0]["lr"]
                # torch's generator (dropout, ori-CNN's orientation draws) is seeded per epoch like the
                # patch draws: seeded once at setup, it would restart from there when a run resumes.
                torch.manual_seed(int(np.random.SeedSequence([training.seed, epoch]).generate_state(1)[0]))
                train_loss = self.train_epoch(epoch)
                metrics: dict[str, float] = {}
                if self.context.is_main:
                    metrics = self.validate(epoch)
                improved = False
                stop = 0.0
                if self.context.is_main:
                    score = metrics["mean_dice"]
                    if math.isnan(score):  # no class present in validation: fall back on the loss
                        score = -metrics["loss"]
                    # model_selection = "last": every epoch replaces the model, and nothing stops early.
                    improved = training.model_selection == "last" or score > self.best_score
                    if improved:
                        self.best_score, self.best_epoch, self.epochs_without_improvement = score, epoch, 0
                        self.best_metrics = dict(metrics)
                    else:
                        self.epochs_without_improvement += 1
                    stop = float(self.epochs_without_improvement >= training.early_stop_patience)
                val_loss, stop = broadcast_floats([metrics.get("loss", math.nan), stop], self.context)
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(val_loss)
                else:
                    self.scheduler.step()
                if self.context.is_main:
                    record = {"epoch": epoch, "train_loss": train_loss}
                    record.update({f"val_{k}": v for k, v in metrics.items()})
                    record.update(lr=lr, seconds=time.monotonic() - epoch_started)
                    self.history.append(record)
                    self.elapsed_seconds = self.elapsed_before + time.monotonic() - started
                    self.on_epoch_end(epoch, record, improved)
                    logger.info(
                        "epoch %d/%d  train loss %.4f  val loss %.4f  val mean Dice %.4f  lr %.2g  %.1f s%s",
                        epoch,
                        training.epochs,
                        train_loss,
                        val_loss,
                        metrics["mean_dice"],
                        lr,
                        record["seconds"],
                        "  (best)" if improved else "",
                    )
                barrier(self.context)
                if stop:
                    self.stopped_early = True
                    logger.info(
                        "Early stop: %d epochs without a better validation mean Dice.",
                        training.early_stop_patience,
                    )
                    break
        except TrainingInterruptedError:
            interrupted = True
            if self.context.is_main:
                self._save_weights(self.run_dir / INTERRUPTED_WEIGHTS, {"interrupted": True})
                logger.warning(
                    "Interrupted: weights of the unfinished epoch saved to %s; `--resume` continues after "
                    "the last completed epoch.",
                    self.run_dir / INTERRUPTED_WEIGHTS,
                )
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        self.elapsed_seconds = self.elapsed_before + time.monotonic() - started
        if not interrupted:
            self.patches_per_rank = gather_floats(self.patches_seen, self.context)
            if self.context.is_main:
                self.thresholds = self.choose_thresholds()
                logger.info(
                    "Decision thresholds (%s): %s",
                    self.thresholds["selection"],
                    self.thresholds["thresholds"],
                )
        if self.context.is_main:
            self._write_run_record(finished=not interrupted)
        completed = int(self.history[-1]["epoch"]) if self.history else self.start_epoch - 1
        return TrainingSummary(
            run_dir=self.run_dir,
            epochs_completed=completed,
            best_epoch=self.best_epoch,
            best_score=self.best_score,
            best_metrics=self.best_metrics,
            history=list(self.history),
            stopped_early=self.stopped_early,
            interrupted=interrupted,
            elapsed_seconds=self.elapsed_seconds,
        )

    def train_epoch(self, epoch: int) -> float:
        """``steps_per_epoch`` steps; the mean training loss over all ranks."""
        self.model.train()
        # One generator per (seed, rank, epoch): ranks see different patches, and a resumed run draws the
        # same patches for epoch N as an uninterrupted one.
        rng = np.random.default_rng([self.config.training.seed, self.context.rank, epoch])
        steps = self.steps_per_epoch
        total = 0.0
        show = self.context.is_main and sys.stderr.isatty()
        for _ in tqdm(range(steps), desc=f"epoch {epoch}", disable=not show, leave=False, unit="batch"):
            images, targets = self.sampler.batch(rng, self.config.training.batch_size)
            total += self.train_step(torch.from_numpy(images), torch.from_numpy(targets))
            self.patches_seen += len(images)
            if any_rank(self.stop_requested, self.context):
                raise TrainingInterruptedError
        return mean_over_ranks(total / steps, self.context)

    # ------------------------------------------------------------------------------------ checkpoints

    def _save_weights(self, path: Path, card: dict[str, Any]) -> str:
        card = _json_safe(card)
        full_card = {
            "vessel_classes": list(self.vessel_classes),
            "patch_size_zyx": list(self.config.training.patch_size_zyx),
            **card,
        }
        return save_checkpoint(
            unwrap_model(self.model),
            path,
            architecture=self.config.model.architecture,
            arguments=self.config.model.arguments,
            card=full_card,
        )

    def _save_last(self, epoch: int) -> None:
        self._save_weights(self.run_dir / LAST_WEIGHTS, {"epoch": epoch})
        tensors, optimizer_meta = optimizer_state_to_files(self.optimizer.state_dict())
        temporary = self.run_dir / (LAST_OPTIMIZER + ".tmp")
        save_file(tensors, str(temporary))
        os.replace(temporary, self.run_dir / LAST_OPTIMIZER)
        # The state file is written last: its epoch is the one all the last_* files belong to.
        _write_json(
            self.run_dir / LAST_STATE,
            {
                "epoch": epoch,
                "best_score": self.best_score,
                "best_epoch": self.best_epoch,
                "best_metrics": self.best_metrics,
                "epochs_without_improvement": self.epochs_without_improvement,
                "elapsed_seconds": self.elapsed_seconds,
                "scheduler": self.scheduler.state_dict(),
                "optimizer": optimizer_meta,
                "architecture": self.config.model.architecture,
                "arguments": self.config.model.arguments,
            },
        )

    def _load_last(self) -> None:
        state = json.loads((self.run_dir / LAST_STATE).read_text())
        weights = self.run_dir / LAST_WEIGHTS
        stored = read_checkpoint_metadata(weights)
        if (
            stored["architecture"] != self.config.model.architecture
            or stored["arguments"] != self.config.model.arguments
        ):
            raise ValueError(
                f"{weights} holds {stored['architecture']} {stored['arguments']} but the configuration asks "
                f"for {self.config.model.architecture} {self.config.model.arguments}; resume with the run's "
                f"own configuration ({self.run_dir / CONFIG_COPY})."
            )
        load_state_into(unwrap_model(self.model), weights)
        tensors = load_file(str(self.run_dir / LAST_OPTIMIZER), device="cpu")
        self.optimizer.load_state_dict(optimizer_state_from_files(tensors, state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_score = float(state["best_score"])
        self.best_epoch = state["best_epoch"]
        self.best_metrics = state.get("best_metrics", {})
        self.epochs_without_improvement = int(state["epochs_without_improvement"])
        self.elapsed_before = float(state.get("elapsed_seconds", 0.0))
        self.history = [row for row in self._read_log() if row["epoch"] <= state["epoch"]]
        logger.info("Resuming %s after epoch %d", self.run_dir, state["epoch"])

    def _read_log(self) -> list[dict[str, float]]:
        path = self.run_dir / LOG_CSV
        if not path.is_file():
            return []
        with path.open(newline="") as stream:
            return [
                {k: (int(v) if k == "epoch" else float(v)) for k, v in row.items() if v != ""}
                for row in csv.DictReader(stream)
            ]

    def _write_log(self) -> None:
        path = self.run_dir / LOG_CSV
        temporary = path.with_name(path.name + ".tmp")
        with temporary.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=self.log_columns, extrasaction="ignore")
            writer.writeheader()
            for row in self.history:
                writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        os.replace(temporary, path)

    def _write_run_record(self, *, finished: bool) -> None:
        path = self.run_dir / RUN_RECORD
        record = json.loads(path.read_text()) if path.is_file() else {}
        if not record:
            record["started"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            record["command"] = shlex.join(self.command)
        if self.config.source_path is not None and not (self.run_dir / CONFIG_COPY).is_file():
            (self.run_dir / CONFIG_COPY).write_text(self.config.source_path.read_text())
        if self.resume and not finished and not self.history[self.start_epoch - 1 :]:
            # Called from setup (no epoch of this session done yet): note how the run was continued.
            record.setdefault("resumed_with", []).append(shlex.join(self.command))
        record.update(
            config=self.config.raw,
            config_file=str(self.config.source_path) if self.config.source_path else None,
            architecture=self.config.model.architecture,
            arguments=self.config.model.arguments,
            vessel_classes=list(self.vessel_classes),
            patch_size_zyx=list(self.config.training.patch_size_zyx),
            training_data=[s.describe() for s in self.config.data.training],
            validation_data=[s.describe() for s in self.config.data.validation],
            modalities=sorted({s.modality for s in self.config.data.training}),
            training_spacing_zyx=list(
                self.config.data.training_spacing_zyx or _typical_spacing(self.sampler.cases)
            ),
            world_size=self.context.world_size,
            patches_per_rank_this_session=[int(v) for v in self.patches_per_rank],
            machine=machine_description(self.context.device),
            epochs_completed=int(self.history[-1]["epoch"]) if self.history else self.start_epoch - 1,
            best_epoch=self.best_epoch,
            best_validation=_json_safe(self.best_metrics),
            elapsed_seconds=getattr(self, "elapsed_seconds", self.elapsed_before),
            stopped_early=self.stopped_early,
            decision_thresholds=self.thresholds or record.get("decision_thresholds"),
            finished=finished,
            updated=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        record.update(self.run_record_extras())
        _write_json(path, record)

    def run_record_extras(self) -> dict[str, Any]:
        """Method-specific fields for the run record (and so the model card); none by default."""
        return {}

    # ---------------------------------------------------------------------------------------- signals

    def _install_interrupt_handler(self) -> Any:
        """First Ctrl+C: finish the current step, save, stop. Second Ctrl+C: stop at once."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum: int, frame: Any) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            logger.warning("Ctrl+C: stopping after the current step (press again to abort without saving).")

        return signal.signal(signal.SIGINT, handler)


def _json_safe(value: Any) -> Any:
    """NaN/inf -> None, recursively, so cards stay strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _typical_spacing(cases: Sequence[TrainingCase]) -> list[float]:
    """Median voxel size of the MRA/SWI training cases (mm), else of all cases."""
    chosen = [c.spacing_zyx for c in cases if c.modality != "2PM"] or [c.spacing_zyx for c in cases]
    return [float(v) for v in np.median(np.asarray(chosen), axis=0)]


def run_training(
    config: TrainConfig,
    *,
    resume: bool = False,
    command: Sequence[str] | None = None,
    trainer_class: type[Trainer] | None = None,
) -> TrainingSummary:
    """Set up torch.distributed when launched by torchrun, train, and tear it down again.

    ``trainer_class`` defaults to :class:`Trainer`, or to ``trainer.unsupervised.UnsupervisedTrainer`` when
    the configured loss is label-free (``training.loss = "umis"``), or to
    ``trainer.super_resolution.SuperResolutionTrainer`` with a ``[training.super_resolution]`` table (ROSE),
    or to ``trainer.sld.trainer.SLDTrainer`` with a ``[training.sld]`` table (3D-SLD).
    """
    if trainer_class is None:
        trainer_class = Trainer
        if config.training.loss in UMIS_LOSSES:
            from trainer.unsupervised import UnsupervisedTrainer

            trainer_class = UnsupervisedTrainer
        elif config.training.super_resolution is not None:
            from trainer.super_resolution import SuperResolutionTrainer

            trainer_class = SuperResolutionTrainer
        elif config.training.sld is not None:
            from trainer.sld.trainer import SLDTrainer

            trainer_class = SLDTrainer
    context = init_distributed(config.training.device)
    try:
        summary = trainer_class(config, resume=resume, command=command, context=context).fit()
        # Every rank finishes before any tears the group down: a gloo rank whose peer destroys the group
        # while it is still writing its outputs can abort at exit ("terminate called without an active
        # exception", seen once in CI). Only on success: after an error the peer may never reach a barrier.
        barrier(context)
        return summary
    finally:
        cleanup(context)


__all__ = [
    "BEST_WEIGHTS",
    "CURVES_PNG",
    "LAST_STATE",
    "LAST_WEIGHTS",
    "LOG_CSV",
    "RUN_RECORD",
    "Trainer",
    "TrainingInterruptedError",
    "TrainingSummary",
    "machine_description",
    "optimizer_state_from_files",
    "optimizer_state_to_files",
    "run_training",
]
