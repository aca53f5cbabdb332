"""Training at twice the input's resolution (ROSE): paired low/high-resolution patches and the ROSE loss.

A configuration with a ``[training.super_resolution]`` table runs :class:`SuperResolutionTrainer`:

- every case (phantom or file) is the high-resolution (HR) truth; its low-resolution (LR) input is made once
  per whole volume by :func:`VesselSegLib.preprocessing.low_resolution.simulate_low_resolution` (k-space
  truncation ``truncation_zyx``, then ``downsample`` x block means), after the modality's normalisation,
  so the HR target image and the LR input share one intensity scale (ROSE notes, 5.8); the HR volume is
  cropped to ``downsample`` x the LR shape so that LR voxel ``k`` covers HR voxels ``r k .. r k + r - 1``;
- ``training.patch_size_zyx`` is the HR (output) patch; the network reads the LR patch of half its size at
  half its start (:class:`PairedPatchSampler`), with the same flips and intensity jitter on both;
- the loss is eq. (5): soft Dice on the 2x segmentation (eq. 3, delta = 1 over the batch) plus
  ``image_loss_weight`` (lambda, 0.1) x L1 between the SR image and the HR image (eq. 4);
- validation segments each validation case's LR volume through the project's sliding window (2x output)
  and scores it against the HR labels, as inference will.

The sampler packs the HR image as the last target channel, so the loop's batches keep their two arrays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the conventional alias
from torch import nn

from trainer.config import SuperResolutionSpec
from trainer.datasets import PatchSampler, TrainingCase, _crop_padded
from trainer.loop import Trainer
from trainer.losses import soft_dice_loss
from VesselSegLib.preprocessing import get_preset, normalize_intensity
from VesselSegLib.preprocessing.low_resolution import block_mean, simulate_low_resolution

#: lambda of ROSE eq. (5).
PAPER_IMAGE_LOSS_WEIGHT = 0.1


@dataclass(frozen=True)
class PairedCase:
    """An HR case (image, targets, cropped to ``r`` x the LR shape) and its simulated LR input."""

    high: TrainingCase
    low_image: np.ndarray


def make_paired_case(case: TrainingCase, spec: SuperResolutionSpec) -> PairedCase:
    """The LR input of ``case`` (a whole normalised HR volume) and the case cropped to match it."""
    r = spec.downsample
    low = simulate_low_resolution(
        case.image, truncation_zyx=spec.truncation_zyx, downsample=r, kept_fraction=spec.kept_fraction
    ).astype(np.float32)
    # Inference normalises the user's LR volume with the preset's percentiles; the LR of a normalised HR
    # volume is ~1.15x narrower, so normalise it the same way (the SR target stays the HR scale).
    if get_preset(case.modality).vessels_bright:
        low = normalize_intensity(low, case.modality).astype(np.float32)
    else:
        # SWI: the user gives dark veins and the LR brain mask; the case's image is zero exactly outside the
        # brain (its normalisation zeroes it there), so that is its mask, and the LR mask is its block mean
        # >= 0.5, as the benchmark hands SWI inputs to the pipeline.
        low_brain = block_mean((case.image != 0).astype(np.float32), r) >= 0.5
        low = normalize_intensity(1.0 - low, case.modality, low_brain).astype(np.float32)
    crop = tuple(slice(0, r * n) for n in low.shape)
    target = np.ascontiguousarray(case.target[(slice(None), *crop)])
    shape = tuple(r * n for n in low.shape)
    high = dataclasses.replace(
        case,
        image=np.ascontiguousarray(case.image[crop]),
        target=target,
        box=tuple((min(lo, n - 1), min(hi, n)) for (lo, hi), n in zip(case.box, shape, strict=True)),
        vessel_voxels=np.flatnonzero(target.any(axis=0)),
    )
    return PairedCase(high=high, low_image=low)


class PairedPatchSampler:
    """LR input patches with their HR targets; the HR image rides along as the last target channel.

    Parameters
    ----------
    pairs : list of PairedCase
    high_patch_zyx : 3 ints
        The HR (output) patch, a multiple of ``downsample``; the LR patch is ``high_patch_zyx / downsample``.
    downsample : int
    **sampler_options
        Of :class:`trainer.datasets.PatchSampler` (case probabilities, foreground fraction, augment), which
        draws the HR patch; its start is rounded down to a multiple of ``downsample`` so that the LR patch
        starts on an LR voxel. Domain randomisation is not offered: it would have to degrade the LR input
        and the HR image consistently.
    """

    def __init__(self, pairs, high_patch_zyx, downsample: int, **sampler_options) -> None:
        if any(int(p) % downsample for p in high_patch_zyx):
            raise ValueError(
                f"training.patch_size_zyx {tuple(high_patch_zyx)} is the high-resolution patch and must be a "
                f"multiple of the super-resolution factor {downsample} on every axis."
            )
        self.pairs = list(pairs)
        self.downsample = downsample
        self.cases = [p.high for p in self.pairs]
        self.high = PatchSampler(self.cases, high_patch_zyx, **sampler_options)
        self.low_patch_zyx = tuple(int(p) // downsample for p in high_patch_zyx)

    def extract(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """One pair: LR image ``(1, z, y, x)`` and targets ``(C + 1, r z, r y, r x)`` (HR image last)."""
        r = self.downsample
        spec = self.high.draw(rng)
        low_start = tuple(s // r for s in spec.start_zyx)  # floor, also for the padding's negative starts
        spec = dataclasses.replace(spec, start_zyx=tuple(s * r for s in low_start))
        pair = self.pairs[spec.case_index]
        high_image = _crop_padded(pair.high.image, spec.start_zyx, self.high.patch_size_zyx)[None]
        target = _crop_padded(pair.high.target, spec.start_zyx, self.high.patch_size_zyx)
        low = _crop_padded(pair.low_image, low_start, self.low_patch_zyx)[None]
        for flip, axis in ((spec.flip_y, -2), (spec.flip_x, -1)):
            if flip:
                high_image, target, low = (np.flip(a, axis) for a in (high_image, target, low))
        if spec.transpose_yx:
            high_image, target, low = (a.swapaxes(-1, -2) for a in (high_image, target, low))
        scale, shift = np.float32(spec.intensity_scale), np.float32(spec.intensity_shift)
        low = low * scale + shift
        high_image = high_image * scale + shift  # the SR target follows the input's jitter
        targets = np.concatenate([target.astype(np.float32), high_image.astype(np.float32)])
        return np.ascontiguousarray(low, dtype=np.float32), np.ascontiguousarray(targets)

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.extract(rng) for _ in range(batch_size)]
        return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


class ROSELoss(nn.Module):
    """Eq. (5): ``1 - Dice(sigmoid(logits), labels) + lambda mean |I_SR - I_HR|`` (eqs. 3-4)."""

    def __init__(self, image_loss_weight: float = PAPER_IMAGE_LOSS_WEIGHT) -> None:
        super().__init__()
        self.image_loss_weight = float(image_loss_weight)

    def forward(self, output, targets: torch.Tensor) -> torch.Tensor:
        labels, high_image = targets[:, :-1], targets[:, -1:]
        loss = soft_dice_loss(torch.sigmoid(output.logits.float()), labels)
        if output.sr_image is not None and self.image_loss_weight > 0:
            loss = loss + self.image_loss_weight * F.l1_loss(output.sr_image.float(), high_image)
        return loss

    def from_probabilities(self, probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Validation: the Dice term on labels alone (validation has no SR image)."""
        return soft_dice_loss(probabilities, targets)


class SuperResolutionTrainer(Trainer):
    """The trainer with paired LR/HR data, the ROSE loss, and validation through the 2x sliding window."""

    @property
    def spec(self) -> SuperResolutionSpec:
        return self.config.training.super_resolution

    def build_model(self) -> nn.Module:
        model = super().build_model()
        scale = tuple(getattr(model, "output_scale_zyx", (1, 1, 1)))
        if scale != (self.spec.downsample,) * 3 or not hasattr(model, "forward_all"):
            raise ValueError(
                f"[training.super_resolution] needs a network whose output is {self.spec.downsample}x its input "
                f'(model.architecture = "ROSENet"), not {self.config.model.architecture}.'
            )
        return model

    def build_loss(self) -> nn.Module:
        return ROSELoss(self.spec.image_loss_weight)

    def setup(self) -> None:
        super().setup()
        training = self.config.training
        cases = self.sampler.cases
        self.sampler = PairedPatchSampler(
            [make_paired_case(c, self.spec) for c in cases],
            training.patch_size_zyx,
            self.spec.downsample,
            case_probabilities=self.sampler.case_probabilities,
            foreground_fraction=training.foreground_fraction,
            augment=training.augment,
        )
        pairs = [make_paired_case(c, self.spec) for c in self.validation_cases]
        self.validation_cases = [p.high for p in pairs]
        self._low_images = {p.high.name: p.low_image for p in pairs}

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> float:
        images = images.to(self.context.device, non_blocking=True)
        targets = targets.to(self.context.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last_3d)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_function(self.model.forward_all(images), targets)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def validation_input(self, case: TrainingCase):
        # The network reads the simulated LR volume; its probabilities come out on the HR grid of the labels.
        patch = tuple(p // self.spec.downsample for p in self.config.training.patch_size_zyx)
        return self._low_images[case.name], patch


__all__ = [
    "PAPER_IMAGE_LOSS_WEIGHT",
    "PairedCase",
    "PairedPatchSampler",
    "ROSELoss",
    "SuperResolutionTrainer",
    "make_paired_case",
]
