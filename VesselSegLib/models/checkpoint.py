"""Self-describing checkpoints: safetensors weights + a JSON model card.

A checkpoint is two files side by side::

    NAME.safetensors   tensors, plus metadata {"architecture": ..., "arguments": JSON}
    NAME.card.json     the model card: architecture and arguments, training data and command, metrics, date

Weights are read with ``safetensors`` (no unpickling, so a weights file cannot run code), the SHA256 of the
file is checked against the one the registry expects, and the tensors must match the architecture exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from VesselSegLib.errors import CheckpointError
from VesselSegLib.io.atomic import atomic_write_path
from VesselSegLib.models.networks import build_network
from VesselSegLib.resources import sha256_of

CARD_SUFFIX = ".card.json"


# One checksum function for weights and sample data; resources.py stays importable without PyTorch.
sha256_of_file = sha256_of


def card_path_for(weights_path: str | os.PathLike) -> Path:
    """``model.safetensors`` -> ``model.card.json``."""
    weights_path = Path(weights_path)
    return weights_path.with_name(weights_path.name.removesuffix(".safetensors") + CARD_SUFFIX)


def save_checkpoint(
    model: nn.Module,
    weights_path: str | os.PathLike,
    *,
    architecture: str,
    arguments: dict[str, Any],
    card: dict[str, Any] | None = None,
) -> str:
    """Write ``model``'s weights and its card atomically; return the weights' SHA256.

    The card receives ``architecture``, ``arguments``, ``weights_file`` and ``sha256`` on top of what the
    caller passes (training data, command, metrics, date...).
    """
    weights_path = Path(weights_path)
    if not weights_path.name.endswith(".safetensors"):
        raise ValueError(f"Weights file name must end with .safetensors, got {weights_path.name!r}.")
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    metadata = {"architecture": architecture, "arguments": json.dumps(arguments, sort_keys=True)}
    # Write to a temporary file then rename, so a crash never leaves a half-written checkpoint behind.
    with atomic_write_path(weights_path) as temporary:
        save_file(tensors, str(temporary), metadata=metadata)
    sha256 = sha256_of_file(weights_path)
    full_card = dict(card or {})
    full_card.update(
        architecture=architecture, arguments=arguments, weights_file=weights_path.name, sha256=sha256
    )
    card_path = card_path_for(weights_path)
    card_path.write_text(json.dumps(full_card, indent=2, sort_keys=False) + "\n")
    return sha256


def read_checkpoint_metadata(weights_path: str | os.PathLike) -> dict[str, Any]:
    """Architecture and arguments stored in a safetensors file's header."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(
            f"Cannot read weights file {weights_path}: {error}. The file is corrupt or not a safetensors "
            "file; restore it from the repository or re-export it with `python -m trainer export`."
        ) from None
    if "architecture" not in metadata or "arguments" not in metadata:
        raise CheckpointError(
            f"Weights file {weights_path} carries no architecture metadata; export it with "
            "VesselSegLib.models.checkpoint.save_checkpoint."
        )
    return {"architecture": metadata["architecture"], "arguments": json.loads(metadata["arguments"])}


def load_checkpoint(
    weights_path: str | os.PathLike,
    *,
    expected_sha256: str | None = None,
    expected_architecture: str | None = None,
    expected_arguments: dict[str, Any] | None = None,
) -> nn.Module:
    """Rebuild the network stored in ``weights_path`` and load its weights, in eval mode on the CPU.

    Raises
    ------
    CheckpointError
        Missing file, SHA256 mismatch, unreadable (corrupt) file, architecture or arguments other than
        expected, or tensors that do not fit the architecture.
    """
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise CheckpointError(f"Weights file {weights_path} does not exist; check the model registry entry.")
    if expected_sha256 is not None:
        actual = sha256_of_file(weights_path)
        if actual != expected_sha256:
            raise CheckpointError(
                f"Weights file {weights_path} has SHA256 {actual} but the registry expects {expected_sha256}: "
                "the file is corrupt or was replaced. Restore it, or update the registry if you exported a new "
                "model on purpose."
            )
    metadata = read_checkpoint_metadata(weights_path)
    if expected_architecture is not None and metadata["architecture"] != expected_architecture:
        raise CheckpointError(
            f"Weights file {weights_path} holds a {metadata['architecture']!r} network but "
            f"{expected_architecture!r} was expected."
        )
    if expected_arguments is not None and metadata["arguments"] != expected_arguments:
        raise CheckpointError(
            f"Weights file {weights_path} was saved with arguments {metadata['arguments']} but the registry "
            f"expects {expected_arguments}."
        )
    network = build_network(metadata["architecture"], metadata["arguments"])
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"Cannot read weights file {weights_path}: {error}") from None
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise CheckpointError(
            f"Weights in {weights_path} do not fit architecture {metadata['architecture']!r}: {error}"
        ) from None
    network.eval()
    return network


def load_state_into(model: nn.Module, weights_path: str | os.PathLike) -> None:
    """Load safetensors weights into an existing ``model`` (fine-tuning start point), strictly."""
    try:
        state = load_file(str(weights_path), device="cpu")
        model.load_state_dict(state, strict=True)
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"Cannot load {weights_path} into {type(model).__name__}: {error}") from None


__all__ = [
    "CARD_SUFFIX",
    "card_path_for",
    "load_checkpoint",
    "load_state_into",
    "read_checkpoint_metadata",
    "save_checkpoint",
    "sha256_of_file",
]
