"""ONNX Runtime as an optional inference backend, used for a model only where it is measured faster at equal
output on the machine that runs it.

PyTorch's CPU convolutions are not the fastest on every CPU: on CPUs without AVX-512 oneDNN's 3D kernels run
several times slower than ONNX Runtime's (``benchmarks/benchmark_backends.py``). ONNX Runtime is optional
(``pip install onnxruntime onnx``, or the ``[fast]`` extra); without it nothing changes.

For a network in float32, at first use on a machine (:func:`choose_backend`):

1. the network is exported once (``torch.onnx.export``, opset 17, batch and window axes dynamic: a volume
   smaller than the patch gives smaller windows) to ``$VESSELSEG_CACHE_DIR/onnx/<weights hash>.onnx``
   (written whole or not at all);
2. one window of random input runs through both; the ONNX output must equal PyTorch's within
   :data:`MAX_LOGIT_DIFFERENCE`, and ONNX Runtime must be at least :data:`MIN_SPEEDUP` times faster (best of
   :data:`REPEATS` runs after a warm-up each);
3. the decision, its timings and the reason are cached per weights, window and machine, so later runs only
   read them.

The weights hash is taken from the network's parameters, so adapted weights (UMIS) never reuse another
network's file. Methods that need more than the logits (ROSE's super-resolved image) keep PyTorch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from VesselSegLib.inference.runtime import cache_path, machine_key
from VesselSegLib.request import BACKENDS

logger = logging.getLogger(__name__)

MIN_SPEEDUP = 1.15
MAX_LOGIT_DIFFERENCE = 1e-3
REPEATS = 2
OPSET = 17
#: Attributes the sliding window reads from a network, copied onto the ONNX wrapper.
_NETWORK_ATTRIBUTES = ("output_scale_zyx", "size_divisor_zyx")


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs one network, why, and the measured seconds per window (empty if not measured)."""

    backend: str
    reason: str
    timings_s: dict[str, float] = field(default_factory=dict)
    max_logit_difference: float | None = None

    def as_record(self) -> dict:
        return asdict(self)


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX Runtime session that the sliding window calls like the PyTorch network it was exported from:
    ``(B, 1, z, y, x)`` float32 tensor in, logits tensor out (CPU)."""

    def __init__(self, session, source: nn.Module) -> None:
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        for name in _NETWORK_ATTRIBUTES:
            if hasattr(source, name):
                setattr(self, name, getattr(source, name))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        array = image.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])


def onnxruntime_available() -> bool:
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def weights_hash(network: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def _session(onnx_file: Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def export_network(network: nn.Module, window_zyx: tuple[int, int, int], onnx_file: Path) -> None:
    """Write ``network`` as ONNX, traced on a ``(1, 1, *window_zyx)`` window with every axis but the
    channels dynamic; whole or not at all."""
    from VesselSegLib.io.atomic import atomic_write_path
    from VesselSegLib.models.memory_format import set_3d_memory_format

    onnx_file.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros((1, 1, *window_zyx), dtype=torch.float32)
    was_training = network.training
    network.eval()
    set_3d_memory_format(network, torch.contiguous_format)
    try:
        with atomic_write_path(onnx_file) as temporary, torch.no_grad():
            torch.onnx.export(
                network,
                (example,),
                str(temporary),
                opset_version=OPSET,
                dynamo=False,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={name: {0: "batch", 2: "z", 3: "y", 4: "x"} for name in ("image", "logits")},
            )
    finally:
        network.train(was_training)


def _best_seconds(run, repeats: int = REPEATS) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def _decisions_file() -> Path:
    return cache_path().with_name("backend_choices.json")


def _read_decisions() -> dict:
    try:
        decisions = json.loads(_decisions_file().read_text())
        return decisions if isinstance(decisions, dict) else {}
    except (OSError, ValueError):
        return {}


def _store_decision(key: str, choice: BackendChoice) -> None:
    from VesselSegLib.io.atomic import atomic_write_path

    decisions = _read_decisions()
    decisions[key] = choice.as_record()
    try:
        with atomic_write_path(_decisions_file()) as temporary:
            temporary.write_text(json.dumps(decisions, indent=1) + "\n")
    except OSError as error:
        logger.info("Backend choice not cached (%s); it is measured again next time.", error)


def measure(network: nn.Module, session, window_zyx: tuple[int, int, int]) -> BackendChoice:
    """Time one window of random input in PyTorch (channels_last_3d and contiguous, the faster counts) and
    ONNX Runtime; compare their logits; choose."""
    from VesselSegLib.models.memory_format import set_3d_memory_format

    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, *window_zyx), dtype=np.float32))
    feed = {session.get_inputs()[0].name: x.numpy()}
    network.eval()
    timings = {}
    with torch.no_grad():
        set_3d_memory_format(network, torch.contiguous_format)
        reference = network(x).float().numpy()
        timings["pytorch"] = _best_seconds(lambda: network(x))
        set_3d_memory_format(network, torch.channels_last_3d)
        x_last = x.contiguous(memory_format=torch.channels_last_3d)
        timings["pytorch"] = min(timings["pytorch"], _best_seconds(lambda: network(x_last)))
    timings["onnxruntime"] = _best_seconds(lambda: session.run(None, feed))
    difference = float(np.abs(session.run(None, feed)[0] - reference).max())
    speedup = timings["pytorch"] / timings["onnxruntime"]
    if difference > MAX_LOGIT_DIFFERENCE:
        return BackendChoice("pytorch", f"ONNX output differs by {difference:.1e}", timings, difference)
    if speedup < MIN_SPEEDUP:
        return BackendChoice("pytorch", f"ONNX Runtime only {speedup:.2f}x PyTorch", timings, difference)
    return BackendChoice(
        "onnxruntime", f"ONNX Runtime {speedup:.2f}x faster than PyTorch", timings, difference
    )


def choose_backend(
    network: nn.Module, window_zyx, requested: str = "auto", *, precision: str = "float32"
) -> tuple[nn.Module, BackendChoice]:
    """The network to run (``network`` itself or its ONNX Runtime twin) and why.

    ``requested``: "pytorch" keeps PyTorch; "onnxruntime" uses ONNX Runtime whatever the timing (still
    refused if its output differs); "auto" measures once per weights, window and machine (module docstring).
    Only float32 networks are exported, and only ``forward`` (the logits): callers that need another output
    (ROSE's ``forward_all``) keep PyTorch.

    Raises
    ------
    ValueError
        An unknown backend, or "onnxruntime" asked for where it cannot run, with the fix.
    """
    if requested not in BACKENDS:
        raise ValueError(f"Unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}.")
    window = tuple(int(w) for w in window_zyx)
    if requested == "pytorch":
        return network, BackendChoice("pytorch", "asked for")
    reason = None
    if not onnxruntime_available():
        reason = "ONNX Runtime is not installed (pip install onnxruntime onnx)"
    elif precision != "float32":
        reason = f"precision {precision}: ONNX Runtime runs float32 only here"
    if reason is not None:
        if requested == "onnxruntime":
            raise ValueError(f"Backend onnxruntime cannot run this model: {reason}; choose pytorch or auto.")
        return network, BackendChoice("pytorch", reason)
    digest = weights_hash(network)
    onnx_file = cache_path().parent / "onnx" / f"{digest[:32]}.onnx"
    key = json.dumps({"weights": digest, "window": window, "machine": machine_key()}, sort_keys=True)
    cached = _read_decisions().get(key)
    if requested == "auto" and cached is not None and cached.get("backend") == "pytorch":
        return network, BackendChoice(**cached)
    try:
        if not onnx_file.is_file():
            export_network(network, window, onnx_file)
        session = _session(onnx_file)
    except Exception as error:  # noqa: BLE001 - any exporter or runtime failure means: stay on PyTorch
        message = f"ONNX export or load failed ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
        if requested == "onnxruntime":
            raise ValueError(
                f"Backend onnxruntime cannot run this model: {message}; choose pytorch or auto."
            ) from None
        choice = BackendChoice("pytorch", message)
        _store_decision(key, choice)
        return network, choice
    if cached is not None:
        choice = BackendChoice(**cached)
    else:
        choice = measure(network, session, window)
        _store_decision(key, choice)
        logger.info("Backend for this model: %s (%s).", choice.backend, choice.reason)
    if requested == "onnxruntime" and choice.max_logit_difference is not None:
        if choice.max_logit_difference > MAX_LOGIT_DIFFERENCE:
            raise ValueError(
                f"Backend onnxruntime cannot run this model: {choice.reason}; choose pytorch or auto."
            )
        choice = BackendChoice("onnxruntime", "asked for", choice.timings_s, choice.max_logit_difference)
    if choice.backend != "onnxruntime":
        return network, choice
    return OnnxRuntimeNetwork(session, network), choice


__all__ = ["BACKENDS", "BackendChoice", "OnnxRuntimeNetwork", "choose_backend", "onnxruntime_available"]
