"""OpenVINO as an optional inference backend, used for a model only where it is measured faster than PyTorch
at equal output on the machine that runs it (the network is exported to ONNX, which OpenVINO loads).

PyTorch's CPU convolutions are not the fastest on every CPU: on a CPU without AVX-512 OpenVINO's 3D kernels
ran the shipped networks 1.5-8.8x faster (``benchmarks/benchmark_backends.py``, which also measures ONNX
Runtime: slower than OpenVINO for every network, so not used at run time). OpenVINO is optional
(``pip install openvino onnx``, or the ``[fast]`` extra); without it nothing changes.

For a network in float32 on the CPU, at first use on a machine (:func:`choose_backend`):

1. the network is exported once (``torch.onnx.export``, opset 17, batch and window axes dynamic: a volume
   smaller than the patch gives smaller windows) to ``$VESSELSEG_CACHE_DIR/onnx/<weights hash>.onnx``
   (written whole or not at all);
2. one window of random input (the window the run will use: the patch, or the volume where smaller) runs
   through PyTorch (channels_last_3d, as the sliding window runs it) and OpenVINO; a backend counts only if its logits equal PyTorch's within
   :data:`MAX_LOGIT_DIFFERENCE`, and the fastest is chosen if it is at least :data:`MIN_SPEEDUP` times
   faster than PyTorch (best of :data:`REPEATS` runs after a warm-up each);
3. the decision, its timings and the reason are cached per weights, window and machine, so later runs only
   read them.

The weights hash is taken from the network's parameters, so adapted weights (UMIS) never reuse another
network's file. Methods that need more than the logits (ROSE's super-resolved image) keep PyTorch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from VesselSegLib.inference.runtime import cache_path, machine_key
from VesselSegLib.request import BACKENDS

logger = logging.getLogger(__name__)

#: Backends that run the exported ONNX file at run time. ONNX Runtime is not among them: it was slower than
#: OpenVINO for every shipped network here (benchmarks/benchmark_backends.py still measures it), and a
#: process that had loaded both crashed with a segmentation fault on a later Ctrl+C.
EXPORTED_BACKENDS = ("openvino",)
#: What :func:`load_runner` can load (the benchmark compares them all).
LOADABLE_BACKENDS = ("openvino", "onnxruntime")
MIN_SPEEDUP = 1.15
MAX_LOGIT_DIFFERENCE = 1e-3
REPEATS = 2
OPSET = 17
#: Attributes the sliding window reads from a network, copied onto the exported twin.
_NETWORK_ATTRIBUTES = ("output_scale_zyx", "size_divisor_zyx")
#: Environment variable restricting the exported backends "auto" and a named backend may use.
ALLOWED_BACKENDS_VARIABLE = "VESSELSEG_EXPORTED_BACKENDS"
_INSTALL = {"onnxruntime": "pip install onnxruntime onnx", "openvino": "pip install openvino onnx"}

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BackendChoice:
    """Which backend runs one network, why, the measured seconds per window (empty if not measured) and
    the largest difference of each exported backend's logits from PyTorch's."""

    backend: str
    reason: str
    timings_s: dict[str, float] = field(default_factory=dict)
    max_logit_difference: dict[str, float] = field(default_factory=dict)

    def as_record(self) -> dict:
        return asdict(self)


class ExportedNetwork(nn.Module):
    """An exported network that the sliding window calls like the PyTorch network it came from:
    ``(B, 1, z, y, x)`` float32 tensor in, logits tensor out (CPU)."""

    #: The sliding window keeps its windows in the plain layout for it (channels-last helps PyTorch's
    #: convolutions only, and would cost a copy back per window here).
    runs_outside_pytorch = True

    def __init__(self, runner: Runner, source: nn.Module, backend: str) -> None:
        super().__init__()
        self.runner = runner
        self.backend = backend
        for name in _NETWORK_ATTRIBUTES:
            if hasattr(source, name):
                setattr(self, name, getattr(source, name))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        array = image.detach().to("cpu", torch.float32).contiguous().numpy()
        # One window at a time: the shape the backend was measured and compiled for (a batch of two
        # would make OpenVINO compile the dynamic model again for that shape).
        # Each window's logits go straight into one output array (no list of copies to concatenate).
        first = np.asarray(self.runner(array[:1]), dtype=np.float32)
        logits = np.empty((array.shape[0], *first.shape[1:]), dtype=np.float32)
        logits[:1] = first
        for index in range(1, array.shape[0]):
            logits[index : index + 1] = self.runner(array[index : index + 1])
        return torch.from_numpy(logits)


def available_backends() -> tuple[str, ...]:
    """The exported backends installed here (each also needs the ``onnx`` package, which the exporter uses),
    restricted to ``$VESSELSEG_EXPORTED_BACKENDS`` when set (comma-separated; empty: PyTorch only)."""
    if importlib.util.find_spec("onnx") is None:
        return ()
    allowed = os.environ.get(ALLOWED_BACKENDS_VARIABLE)
    names = EXPORTED_BACKENDS if allowed is None else [n.strip() for n in allowed.split(",") if n.strip()]
    return tuple(
        name for name in EXPORTED_BACKENDS if name in names and importlib.util.find_spec(name) is not None
    )


def weights_hash(network: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().numpy().tobytes())
    return digest.hexdigest()


def load_runner(backend: str, onnx_file: Path) -> Runner:
    """A function from a ``(B, 1, z, y, x)`` float32 array to the logits, run by ``backend`` on the CPU with
    PyTorch's thread count."""
    threads = max(1, torch.get_num_threads())
    if backend == "onnxruntime":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda array: session.run(None, {name: array})[0]
    if backend == "openvino":
        import openvino

        # float32 inference: without the hint OpenVINO may run bfloat16 on CPUs that have it.
        compiled = openvino.compile_model(
            str(onnx_file), "CPU", {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
        )
        output = compiled.output(0)
        return lambda array: np.asarray(compiled(array)[output])
    raise ValueError(f"Unknown exported backend {backend!r}; choose one of {', '.join(LOADABLE_BACKENDS)}.")


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


def best_seconds(run, repeats: int = REPEATS) -> float:
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


def measure(
    network: nn.Module, runners: dict[str, Runner], window_zyx: tuple[int, int, int]
) -> BackendChoice:
    """Time one window of random input in PyTorch (channels_last_3d, as the sliding window runs it) and in
    each runner; compare their logits with PyTorch's; choose."""
    from VesselSegLib.models.memory_format import set_3d_memory_format

    x = torch.from_numpy(np.random.default_rng(0).random((1, 1, *window_zyx), dtype=np.float32))
    array = x.numpy()
    network.eval()
    timings: dict[str, float] = {}
    with torch.no_grad():  # as predict_probabilities runs it on a CPU: channels_last_3d
        set_3d_memory_format(network, torch.channels_last_3d)
        x_last = x.contiguous(memory_format=torch.channels_last_3d)
        timings["pytorch"] = best_seconds(lambda: network(x_last))
        reference = network(x_last).float().numpy()
    differences = {}
    for name, run in runners.items():
        timings[name] = best_seconds(lambda run=run: run(array))
        differences[name] = float(np.abs(run(array) - reference).max())
    equal = [name for name in runners if differences[name] <= MAX_LOGIT_DIFFERENCE]
    if not equal:
        worst = ", ".join(f"{name} by {differences[name]:.1e}" for name in runners)
        return BackendChoice("pytorch", f"exported output differs ({worst})", timings, differences)
    fastest = min(equal, key=timings.__getitem__)
    speedup = timings["pytorch"] / timings[fastest]
    if speedup < MIN_SPEEDUP:
        return BackendChoice("pytorch", f"{fastest} only {speedup:.2f}x PyTorch", timings, differences)
    return BackendChoice(fastest, f"{fastest} {speedup:.2f}x faster than PyTorch", timings, differences)


def _refused(requested: str, reason: str) -> ValueError:
    return ValueError(f"Backend {requested} cannot run this model: {reason}; choose pytorch or auto.")


def _outputs_differ(choice: BackendChoice) -> bool:
    return any(d > MAX_LOGIT_DIFFERENCE for d in choice.max_logit_difference.values())


def choose_backend(
    network: nn.Module,
    window_zyx,
    requested: str = "auto",
    *,
    precision: str = "float32",
    device: str | torch.device = "cpu",
    unavailable: str | None = None,
) -> tuple[nn.Module, BackendChoice]:
    """The network to run (``network`` itself or its exported twin) and why.

    ``requested``: "pytorch" keeps PyTorch; "openvino" uses that backend whatever the timing
    (still refused if its output differs); "auto" measures once per weights, window and machine (module
    docstring). Only float32 networks on the CPU are exported, and only ``forward`` (the logits);
    ``unavailable`` is the caller's reason why this model must stay on PyTorch (None: no such reason).

    Raises
    ------
    ValueError
        An unknown backend, or a named one that cannot run here, with the fix.
    """
    if requested not in BACKENDS:
        raise ValueError(f"Unknown backend {requested!r}; choose one of {', '.join(BACKENDS)}.")
    if requested == "pytorch":
        return network, BackendChoice("pytorch", "asked for")
    window = tuple(int(w) for w in window_zyx)
    installed = available_backends()
    wanted = installed if requested == "auto" else (requested,)
    reason = None
    if unavailable is not None:
        reason = unavailable
    elif torch.device(device).type != "cpu":
        reason = f"device {device}: the exported backends run on the CPU only"
    elif requested != "auto" and requested not in installed:
        reason = f"{requested} is not installed ({_INSTALL[requested]}) or not allowed by ${ALLOWED_BACKENDS_VARIABLE}"
    elif not installed:
        reason = "OpenVINO is not installed (pip install openvino onnx)"
    elif precision != "float32":
        reason = f"precision {precision}: the exported backends run float32 only here"
    if reason is not None:
        if requested != "auto":
            raise _refused(requested, reason)
        return network, BackendChoice("pytorch", reason)
    digest = weights_hash(network)
    onnx_file = cache_path().parent / "onnx" / f"{digest[:32]}.onnx"
    key = json.dumps(
        {"weights": digest, "window": window, "backends": list(wanted), "machine": machine_key()},
        sort_keys=True,
    )
    cached = _read_decisions().get(key)
    if cached is not None and cached.get("backend") == "pytorch":
        choice = BackendChoice(**cached)
        if requested != "auto":
            raise _refused(requested, choice.reason)
        return network, choice
    try:
        if not onnx_file.is_file():
            export_network(network, window, onnx_file)
        runners = {name: load_runner(name, onnx_file) for name in wanted}
    except Exception as error:  # noqa: BLE001 - any exporter or loader failure means: stay on PyTorch
        message = f"export or load failed ({type(error).__name__}: {str(error).splitlines()[0][:120]})"
        if requested != "auto":
            raise _refused(requested, message) from None
        choice = BackendChoice("pytorch", message)
        _store_decision(key, choice)
        return network, choice
    if cached is not None:
        choice = BackendChoice(**cached)
    else:
        choice = measure(network, runners, window)
        if requested != "auto" and choice.backend == "pytorch" and not _outputs_differ(choice):
            choice = BackendChoice(requested, "asked for", choice.timings_s, choice.max_logit_difference)
        _store_decision(key, choice)
        logger.info("Backend for this model: %s (%s).", choice.backend, choice.reason)
    if choice.backend == "pytorch":
        if requested != "auto":
            raise _refused(requested, choice.reason)
        return network, choice
    return ExportedNetwork(runners[choice.backend], network, choice.backend), choice


__all__ = [
    "BackendChoice",
    "EXPORTED_BACKENDS",
    "LOADABLE_BACKENDS",
    "ExportedNetwork",
    "available_backends",
    "choose_backend",
    "load_runner",
]
