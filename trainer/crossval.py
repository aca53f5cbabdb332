"""Cross-validation over whole stacks: the folds, and the training configuration of each fold.

A stack is never split: every fold's test stacks are whole stacks no model of that fold saw, and the stack
that chooses the best epoch and the decision threshold (the *inner validation* stack) comes from the fold's
training stacks, never from its test stacks. ``benchmarks/crossval.py`` drives the folds; this module holds
the rules so that they are tested (``Testing/test_crossval.py``).

Splitting: the stack names are sorted, shuffled with a fixed seed and dealt round-robin into ``k`` folds, so
the folds differ in size by at most one stack and depend on nothing but the names and the seed. The inner
validation stack of fold ``i`` is the first stack (in the shuffled order) of fold ``i + 1`` (cyclically):
each training stack is inner validation of exactly one fold when there are as many folds as needed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Fold:
    """One fold: which stacks to train on, which one selects the epoch and threshold, which are scored.

    Attributes
    ----------
    index : int
        0-based fold number.
    test : tuple of str
        Held-out stacks, scored once at the end.
    validation : tuple of str
        Inner validation stack(s), taken from the training folds.
    training : tuple of str
        The remaining stacks, the only ones the model is fitted to.
    """

    index: int
    test: tuple[str, ...]
    validation: tuple[str, ...]
    training: tuple[str, ...]

    def as_record(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "test": list(self.test),
            "validation": list(self.validation),
            "training": list(self.training),
        }


def make_folds(names: Sequence[str], folds: int, *, seed: int = 0) -> list[Fold]:
    """Split stacks into ``folds`` folds by stack, each with an inner validation stack from the others.

    Parameters
    ----------
    names : sequence of str
        Stack names (distinct).
    folds : int
        Number of folds, 2 <= folds <= len(names) - 1 (a fold needs a test, a validation and a training
        stack).
    seed : int
        Seed of the shuffle; the same names and seed give the same folds.

    Returns
    -------
    list of Fold
    """
    names = [str(n) for n in names]
    if len(set(names)) != len(names):
        raise ValueError(f"Stack names must be distinct, got {names}.")
    if not 2 <= folds <= len(names) - 1:
        raise ValueError(
            f"--folds must be between 2 and {len(names) - 1} for {len(names)} stacks (each fold needs a "
            f"test, an inner validation and a training stack), got {folds}."
        )
    import numpy as np

    order = sorted(names)
    np.random.default_rng(seed).shuffle(order)
    groups = [tuple(order[i::folds]) for i in range(folds)]
    result = []
    for index, test in enumerate(groups):
        validation = (groups[(index + 1) % folds][0],)
        training = tuple(n for n in order if n not in test and n not in validation)
        result.append(Fold(index=index, test=test, validation=validation, training=training))
    return result


def fold_training_document(
    raw: dict[str, Any], fold: Fold, *, run_dir: str, train_on_validation: bool = False
) -> dict[str, Any]:
    """A copy of a training configuration (parsed TOML) rewritten for ``fold``.

    Every ``files`` source of ``data.training`` excludes the fold's test and validation stacks (whatever
    it excluded before is replaced: the fold decides); ``data.validation`` becomes the fold's validation
    stacks, read from the first training files source's root, labels and metadata. Phantom sources are
    kept as they are (synthetic data is never a test stack).

    ``train_on_validation``: the validation stacks are trained on as well (only the test stacks are
    excluded) and stay the watched validation, as the shipped 2PM model trains on every stack. Only for
    recipes that choose nothing on the validation stack (last epoch, fixed threshold): the caller checks.

    Raises
    ------
    ValueError
        If the configuration has no ``files`` source to take the stacks from.
    """
    document = copy.deepcopy(raw)
    data = document["data"]
    file_sources = [s for s in data["training"] if s.get("kind") == "files"]
    if not file_sources:
        raise ValueError(
            "Cross-validation needs a configuration with a `files` training source (the stacks to split)."
        )
    held_out = sorted(set(fold.test) if train_on_validation else {*fold.test, *fold.validation})
    for source in file_sources:
        source["exclude"] = held_out
    template = file_sources[0]
    validation = {
        key: template[key]
        for key in (
            "kind",
            "modality",
            "root",
            "labels",
            "metadata",
            "binary_class",
            "label_map",
            "spacing_xyz",
            "assumed_spacing_xyz",
        )
        if key in template
    }
    validation["images"] = [f"images/{name}.tif" for name in fold.validation]
    data["validation"] = [validation]
    document["output"] = {"run_dir": run_dir}
    return document


__all__ = ["Fold", "fold_training_document", "make_folds"]
