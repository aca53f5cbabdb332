"""Headless training of VesselSeg's networks: ``python -m trainer train CONFIG`` / ``export RUN_DIR``.

- ``config``: the TOML configuration, checked into frozen dataclasses.
- ``datasets``: phantom and file cases, normalised like inference does, and the random patch sampler.
- ``losses``: soft Dice (VC-Net eq. (4)) and Dice + BCE.
- ``loop``: the :class:`~trainer.loop.Trainer` (hooks for variants), checkpoints, resume, logs.
- ``distributed``: torch.distributed when launched by ``torchrun``.
- ``export``: a run's best checkpoint -> ``Resources/Models`` weights, model card and registry entry.
- ``plotting``: training curves as PNG.
"""

from trainer.config import TrainConfig, load_config
from trainer.loop import Trainer, TrainingSummary, run_training

__all__ = ["TrainConfig", "Trainer", "TrainingSummary", "load_config", "run_training"]
