"""Label-free training (UMIS): the trainer's loop with the UMIS loss, reading images only.

``training.loss = "umis"`` (or ``"umis-code"`` / ``"umis-paper"``, the loss presets of
``VesselSegLib.unsupervised.loss``) runs :class:`UnsupervisedTrainer` instead of the supervised one:

- cases are loaded with ``images_only=True``: no label file is read, targets have 0 channels, patches are
  drawn uniformly over each volume (the supervised sampler centres half of them on vessel voxels);
- each step is :func:`VesselSegLib.unsupervised.adaptation.unsupervised_step`, the same step that "adapt to
  this stack" takes at test time, and every loss term, ``c1``, ``c2`` and the foreground fraction are logged;
- "validation" is the unsupervised loss on fixed crops of the validation images (a label-free check, shown
  in the log), never a label-based selection: the last epoch is the model (the UMIS notes), the learning rate
  is constant (the paper's Adam without schedule) and there is no early stop;
- the decision threshold is the fixed ``validation_threshold`` (0.5).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from trainer.datasets import load_source_list
from trainer.loop import Trainer
from VesselSegLib.unsupervised.adaptation import logged_term_names, random_crops, unsupervised_step
from VesselSegLib.unsupervised.loss import UMISLoss

#: training.loss -> the loss preset it names.
LOSS_PRESETS = {"umis": "notes", "umis-code": "code", "umis-paper": "paper"}
#: Crops per validation image for the label-free validation loss (fixed positions, seed 0).
VALIDATION_CROPS = 4


class UnsupervisedTrainer(Trainer):
    """The supervised :class:`~trainer.loop.Trainer` with its label-reading hooks replaced (module text)."""

    single_process_only = "UMIS"

    def setup(self) -> None:
        # The last epoch is the model: no early stop, whatever the configuration's default.
        self.config = dataclasses.replace(
            self.config,
            training=dataclasses.replace(
                self.config.training, early_stop_patience=10**9, threshold_selection="fixed"
            ),
        )
        self._epoch_terms: dict[str, list[float]] = {}
        super().setup()

    def load_cases(self, sources):
        return load_source_list(sources, self.vessel_classes, images_only=True)

    def build_model(self) -> nn.Module:
        model = super().build_model()
        if not hasattr(model, "forward_all"):
            raise ValueError(
                f'training.loss = "{self.config.training.loss}" trains a UMIS network (model.architecture = '
                f'"UMISNet"), not {self.config.model.architecture}; to adapt another network use the '
                "segmenter's --adapt-seconds."
            )
        return model

    def build_loss(self) -> nn.Module:
        return UMISLoss(weights=LOSS_PRESETS[self.config.training.loss])

    def build_scheduler(self, optimizer):
        # The paper trains with a constant learning rate; a plateau scheduler that never fires keeps the
        # loop's interface (it steps on the validation loss) without changing the rate.
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=10**9)

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> float:
        if targets.shape[1] != 0:
            raise RuntimeError("Label-free training was handed labels; the loader must read images only.")
        images = images.to(self.context.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        terms = unsupervised_step(self.model, self.loss_function, self.optimizer, images)
        for name, value in terms.items():
            self._epoch_terms.setdefault(name, []).append(value)
        return terms["loss"]

    @torch.no_grad()
    def validate(self, epoch: int) -> dict[str, float]:
        """The unsupervised loss and its terms on fixed crops of the validation images (no label is read)."""
        if not self.validation_cases:
            return {"loss": math.nan, "mean_dice": math.nan}
        network = self.model
        network.eval()
        rng = np.random.default_rng(0)
        sums: dict[str, list[float]] = {}
        patch = self.config.training.patch_size_zyx
        for case in self.validation_cases:
            crops = torch.from_numpy(random_crops(case.image, patch, VALIDATION_CROPS, rng)).clamp(0, 1)
            maps = network.forward_all(crops.to(self.context.device))
            total, terms = self.loss_function(
                crops,
                raw_segmentation=maps.raw_segmentation,
                segmentation=maps.segmentation,
                reconstruction=maps.reconstruction,
            )
            sums.setdefault("loss", []).append(float(total))
            for name, value in terms.items():
                sums.setdefault(name, []).append(float(value))
        network.train()
        metrics = {name: float(np.mean(values)) for name, values in sums.items()}
        metrics["mean_dice"] = math.nan  # no labels: the loop falls back on the loss
        return metrics

    @property
    def log_columns(self) -> list[str]:
        names = logged_term_names()
        return [
            "epoch",
            *(f"train_{n}" for n in names),
            *(f"val_{n}" for n in names),
            "lr",
            "seconds",
        ]

    def on_epoch_end(self, epoch: int, record: dict[str, float], improved: bool) -> None:
        record.update({f"train_{n}": float(np.mean(v)) for n, v in self._epoch_terms.items()})
        self._epoch_terms = {}
        # The last epoch is the model: every epoch replaces the "best" checkpoint that export ships.
        self.best_epoch, self.best_metrics = epoch, {k.removeprefix("val_"): v for k, v in record.items()}
        super().on_epoch_end(epoch, record, True)


__all__ = ["LOSS_PRESETS", "UnsupervisedTrainer"]
