"""Training curves as a PNG (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never open a window, also on machines with a display
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def _series(rows: Sequence[Mapping[str, float]], key: str) -> list[float]:
    return [float(row.get(key, math.nan)) for row in rows]


def plot_training_curves(rows: Sequence[Mapping[str, float]], path: str | os.PathLike) -> Path:
    """Plot losses, validation Dice / clDice and the learning rate against the epoch.

    Parameters
    ----------
    rows : sequence of mappings
        One per epoch, with the CSV log's columns (epoch, train_loss, val_loss, val_<class>_dice, lr, ...).
    path : path
        PNG file to write (replaced atomically).
    """
    path = Path(path)
    epochs = _series(rows, "epoch")
    figure, (ax_loss, ax_dice, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    ax_loss.plot(epochs, _series(rows, "train_loss"), "o-", label="training")
    ax_loss.plot(epochs, _series(rows, "val_loss"), "s-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    keys = sorted(
        {k for row in rows for k in row if k.startswith("val_") and k.endswith(("_dice", "_cldice"))}
    )
    for key in keys:
        style = "-" if key.endswith("_dice") else "--"
        width = 2.5 if key == "val_mean_dice" else 1.2
        ax_dice.plot(epochs, _series(rows, key), style, linewidth=width, label=key.removeprefix("val_"))
    ax_dice.set(
        xlabel="epoch", ylabel="score", title="Validation Dice (solid) / clDice (dashed)", ylim=(0, 1)
    )
    if keys:
        ax_dice.legend(fontsize=7, ncol=2)
    ax_lr.semilogy(epochs, _series(rows, "lr"), "o-")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="Learning rate")
    for axis in (ax_loss, ax_dice, ax_lr):
        axis.grid(alpha=0.3)
    temporary = path.with_name(path.name + ".tmp.png")
    figure.savefig(temporary, dpi=90)
    plt.close(figure)
    os.replace(temporary, path)
    return path


__all__ = ["plot_training_curves"]
