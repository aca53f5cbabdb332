"""Which numeric precision runs the networks fastest on this machine: measured once, not assumed.

On CPUs with native bfloat16 units (AVX512-BF16, AMX) oneDNN runs 3D convolutions in bfloat16 up to a few
times faster than in float32; on CPUs without them bfloat16 is emulated and many times slower. Which one a
machine has, and whether it pays, is decided by a short probe: a two-convolution 3D block
(8 -> 16 -> 16 channels, 3^3 kernels, channels_last_3d) on a 32 x 128 x 128 input is timed in float32 and,
where the CPU has native bfloat16, under bfloat16 autocast; bfloat16 is chosen only when it is at least
:data:`MIN_SPEEDUP` times faster. The probe's result is cached per machine (CPU model and flags, PyTorch
version, thread count) in ``VESSELSEG_CACHE_DIR`` (default ``~/.cache/vesselseg``), so it runs once.

The probe also measures the machine's peak arithmetic rate in each precision it tries, a large matrix
multiply (:func:`matmul_peak_gflops`), so a benchmark can say what fraction of the peak a network reaches
(``benchmarks/benchmark_backends.py``).

On CUDA, "auto" keeps float16 autocast (tensor cores); MPS runs float32.

Reduced precision changes the output a little. It is applied to a model only when its registry entry lists
that precision in ``reduced_precision`` (a test checks every listed model keeps its class map within
:data:`MAX_DICE_CHANGE` Dice of float32 on the phantom test set); other models run in float32 whatever the
machine.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from VesselSegLib.request import PRECISIONS

logger = logging.getLogger(__name__)

#: What a request may ask for (the request's list); "auto" is decided here.
PRECISION_CHOICES = PRECISIONS
#: bfloat16 must beat float32 by this factor in the probe to be chosen (timing noise is a few per cent).
MIN_SPEEDUP = 1.15
#: A reduced precision may change a model's class map by at most this much Dice against float32.
MAX_DICE_CHANGE = 0.002
#: The probe: input (batch, channels, Z, Y, X) and channel widths of its two convolutions.
PROBE_SHAPE = (1, 8, 32, 128, 128)
PROBE_WIDTHS = (16, 16)
PROBE_REPEATS = 3
#: Side of the square matrices whose product measures the peak rate (2 x 2048^3 = 17 GFLOP: about 0.1-0.5 s
#: on a 2-core CPU in float32; large enough that oneDNN/BLAS runs at full speed).
PEAK_MATMUL_SIZE = 2048
CACHE_VERSION = 2
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class RuntimeChoice:
    """How the networks run: the device, the autocast precision (``"float32"``: none) and why.

    ``timings_s`` holds the probe's seconds per candidate (empty when nothing was measured) and
    ``peak_gflops`` the matrix-multiply rate per candidate precision; ``source`` is ``"probe"``, ``"cache"``
    (the probe of an earlier run on this machine), ``"requested"`` or ``"default"``.
    """

    device: str
    precision: str
    reason: str
    source: str = "default"
    timings_s: dict[str, float] = field(default_factory=dict)
    peak_gflops: dict[str, float] = field(default_factory=dict)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.precision)

    def for_model(self, verified: tuple[str, ...]) -> RuntimeChoice:
        """This choice for a model whose entry lists ``verified`` reduced precisions; float32 otherwise. A
        precision the request named is used for any model (the user asked for it)."""
        if self.precision == "float32" or self.precision in verified or self.source == "requested":
            return self
        return RuntimeChoice(
            self.device,
            "float32",
            f"{self.precision} is not verified for this model (registry entry's reduced_precision)",
            self.source,
            self.timings_s,
            self.peak_gflops,
        )

    def as_record(self) -> dict:
        return asdict(self)


def cpu_has_native_bfloat16() -> bool:
    """Whether the CPU advertises bfloat16 arithmetic (AVX512-BF16 or AMX-BF16; Linux /proc/cpuinfo, else
    oneDNN's own check)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = re.search(r"^flags\s*:(.*)$", cpuinfo.read_text(errors="replace"), flags=re.MULTILINE)
        if flags is not None:
            return any(flag in flags.group(1).split() for flag in _CPU_BF16_FLAGS)
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = re.findall(
            r"^model name\s*:\s*(.+)$", cpuinfo.read_text(errors="replace"), flags=re.MULTILINE
        )
        if names:
            return names[0].strip()
    return platform.processor() or platform.machine()


def machine_key() -> dict:
    """What the probe's result depends on: a cached result is reused only for the same key."""
    return {
        "cache_version": CACHE_VERSION,
        "cpu": _cpu_model(),
        "native_bfloat16": cpu_has_native_bfloat16(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def cache_path() -> Path:
    root = os.environ.get("VESSELSEG_CACHE_DIR") or Path.home() / ".cache" / "vesselseg"
    return Path(root) / "runtime_probe.json"


def _probe_block() -> nn.Module:
    channels = (PROBE_SHAPE[1], *PROBE_WIDTHS)
    layers: list[nn.Module] = []
    for c_in, c_out in zip(channels[:-1], channels[1:], strict=True):
        layers += [nn.Conv3d(c_in, c_out, 3, padding=1), nn.ReLU()]
    return nn.Sequential(*layers).eval().to(memory_format=torch.channels_last_3d)


def _seconds(block: nn.Module, x: torch.Tensor, dtype: torch.dtype | None) -> float:
    best = float("inf")
    with (
        torch.inference_mode(),
        torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None),
    ):
        block(x)  # warm-up: oneDNN picks and compiles its kernels on the first call
        for _ in range(PROBE_REPEATS):
            started = time.perf_counter()
            block(x)
            best = min(best, time.perf_counter() - started)
    return best


def matmul_peak_gflops(dtype: torch.dtype = torch.float32, size: int = PEAK_MATMUL_SIZE) -> float:
    """The CPU's arithmetic rate on a large matrix product in ``dtype``, GFLOP/s (2 size^3 operations;
    best of :data:`PROBE_REPEATS` after a warm-up, on the current torch thread count).

    What a network's convolutions could reach at most on this machine: a network's GFLOP/s divided by this
    is the fraction of the peak it uses.
    """
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    best = float("inf")
    with torch.inference_mode():
        torch.mm(a, b)  # warm-up
        for _ in range(PROBE_REPEATS):
            started = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - started)
    return 2.0 * size**3 / best / 1e9


def probe_cpu() -> RuntimeChoice:
    """Time the probe block in float32 and, on a CPU with native bfloat16, in bfloat16; choose (seconds).
    Each precision's matrix-multiply peak (:func:`matmul_peak_gflops`) is recorded with it."""
    generator = torch.Generator().manual_seed(0)
    block = _probe_block()
    x = torch.randn(PROBE_SHAPE, generator=generator).contiguous(memory_format=torch.channels_last_3d)
    timings = {"float32": _seconds(block, x, None)}
    peaks = {"float32": matmul_peak_gflops(torch.float32)}
    if not cpu_has_native_bfloat16():
        return RuntimeChoice(
            "cpu", "float32", "the CPU has no native bfloat16 (AVX512-BF16/AMX)", "probe", timings, peaks
        )
    timings["bfloat16"] = _seconds(block, x, torch.bfloat16)
    peaks["bfloat16"] = matmul_peak_gflops(torch.bfloat16)
    speedup = timings["float32"] / timings["bfloat16"]
    if speedup >= MIN_SPEEDUP:
        return RuntimeChoice(
            "cpu", "bfloat16", f"bfloat16 {speedup:.2f}x faster in the probe", "probe", timings, peaks
        )
    return RuntimeChoice(
        "cpu",
        "float32",
        f"bfloat16 only {speedup:.2f}x float32 in the probe (< {MIN_SPEEDUP})",
        "probe",
        timings,
        peaks,
    )


def _cached_probe(key: dict) -> RuntimeChoice | None:
    try:
        record = json.loads(cache_path().read_text())
        if record.get("key") != key:
            return None
        choice = record["choice"]
        return RuntimeChoice(
            "cpu",
            choice["precision"],
            choice["reason"],
            "cache",
            {k: float(v) for k, v in choice["timings_s"].items()},
            {k: float(v) for k, v in choice["peak_gflops"].items()},
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no cache, or one from another version: probe again


def _store_probe(key: dict, choice: RuntimeChoice) -> None:
    """Write the cache whole or not at all; a cache that cannot be written only costs a probe next time."""
    from VesselSegLib.io.atomic import atomic_write_path

    try:
        path = cache_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write_path(path) as temporary:
            temporary.write_text(json.dumps({"key": key, "choice": choice.as_record()}, indent=1) + "\n")
    except OSError as error:
        logger.info("Runtime probe not cached (%s); it runs again next time.", error)


def choose_runtime(device: str | torch.device, requested: str = "auto") -> RuntimeChoice:
    """The precision networks run in on ``device`` (a resolved device) for ``requested``.

    ``"auto"``: float16 autocast on CUDA; on a CPU, the cached or freshly measured probe (:func:`probe_cpu`);
    float32 elsewhere. A named precision is used as asked, except float16 on a CPU (no fast half precision
    there), which is refused.

    Raises
    ------
    ValueError
        An unknown precision, or float16 on a device other than CUDA, with the fix.
    """
    kind = torch.device(device).type
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"Unknown precision {requested!r}; choose one of {', '.join(PRECISION_CHOICES)}.")
    if requested == "float16" and kind != "cuda":
        raise ValueError(
            "Precision float16 needs a CUDA GPU; on this device choose bfloat16, float32 or auto."
        )
    if requested != "auto":
        return RuntimeChoice(kind, requested, "asked for", "requested")
    if kind == "cuda":
        return RuntimeChoice(kind, "float16", "CUDA: float16 autocast (tensor cores)", "default")
    if kind != "cpu":
        return RuntimeChoice(kind, "float32", f"{kind}: float32", "default")
    key = machine_key()
    memo_key = (json.dumps(key, sort_keys=True), str(cache_path()))
    if memo_key in _CHOSEN:
        return _CHOSEN[memo_key]
    choice = _cached_probe(key)
    if choice is None:
        choice = probe_cpu()
        _store_probe(key, choice)
        logger.info("Runtime probe: %s (%s).", choice.precision, choice.reason)
    _CHOSEN[memo_key] = choice
    return choice


#: This process's choices, so that the cache file is read once per run, not once per model.
_CHOSEN: dict[tuple[str, str], RuntimeChoice] = {}


def forget_choices() -> None:
    """Drop this process's remembered choices (the next :func:`choose_runtime` reads the cache again)."""
    _CHOSEN.clear()


__all__ = [
    "MAX_DICE_CHANGE",
    "PRECISION_CHOICES",
    "RuntimeChoice",
    "choose_runtime",
    "cpu_has_native_bfloat16",
    "machine_key",
    "matmul_peak_gflops",
    "probe_cpu",
]
