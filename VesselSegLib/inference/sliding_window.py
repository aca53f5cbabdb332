"""Sliding-window inference over volumes of any size, on top of MONAI's ``sliding_window_inference``.

MONAI does the tiling, padding of small volumes, Gaussian blending and batching; this module adds what a
desktop tool needs around it: device choice (CUDA, MPS, CPU), mixed precision on CUDA, a CPU fallback on GPU
out-of-memory, a progress callback, cancellation, and the channels-last memory layout that makes 3D
convolutions about 1.6x faster on CPU (measured in ``benchmarks/benchmark_inference_runtime.py``).

Networks whose output grid is finer than their input's (ROSE's 2x super-resolution) say so with an
``output_scale_zyx`` attribute, e.g. (2, 2, 2): the windows are cut from the input as usual and MONAI blends
each window's ``s`` times larger output on the fine grid (it infers the zoom from the output's shape, scales
the window positions and the crop of a padded volume by it, and nearest-upsamples the Gaussian weights to the
output window, so every fine voxel of a coarse voxel gets that coarse voxel's weight). With an integer scale
every window position and crop is a whole number of fine voxels, for any overlap.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.test_time_augmentation import predict_with_flips
from VesselSegLib.models.memory_format import set_3d_memory_format

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[float, str], None]
CancelCheck = Callable[[], bool]
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: What :func:`predict_outputs` can blend: the sigmoid of the network's logits (``forward``), and the
#: super-resolved image of a network with ``forward_all`` returning ``sr_image`` (ROSE's SR stream).
OUTPUT_NAMES = ("probabilities", "super_resolved")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then CPU; an unavailable explicit choice raises ValueError."""
    name = str(device)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("Device 'cuda' was asked for but PyTorch sees no CUDA GPU; choose 'cpu' or 'auto'.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(
            "Device 'mps' was asked for but Apple Metal is not available; choose 'cpu' or 'auto'."
        )
    if name.split(":")[0] not in DEVICE_CHOICES:
        raise ValueError(f"Unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}.")
    return torch.device(name)


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device``; None runs float32."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    if precision == "float16" and device.type != "cuda":
        raise ValueError(
            "Precision float16 needs a CUDA GPU; on this device choose bfloat16, float32 or auto."
        )
    if precision not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"Unknown precision {precision!r}; choose auto, float32, bfloat16 or float16.")
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(precision)


def count_windows(
    image_shape_zyx: Sequence[int], patch_size_zyx: Sequence[int], overlap: Sequence[float]
) -> int:
    """Number of windows MONAI's scan visits (same formula as ``monai.inferers.utils._get_scan_interval``)."""
    total = 1
    for size, patch, ratio in zip(image_shape_zyx, patch_size_zyx, overlap, strict=True):
        patch = min(patch, size) if size < patch else patch
        size = max(size, patch)
        interval = max(int(patch * (1 - ratio)), 1) if patch < size else patch
        total *= math.ceil((size - patch) / interval) + 1 if patch < size else 1
    return total


def fit_patch_to_volume(
    patch_size_zyx: Sequence[int], image_shape_zyx: Sequence[int], divisor_zyx: Sequence[int]
) -> tuple[int, int, int]:
    """Shrink a patch that is larger than the volume along an axis to the volume's size, rounded up to the
    network's size divisor. A 15-slice microscopy stack is then run in 16-slice windows instead of being
    zero-padded to a 128-slice window (8x the work, and padding the network never saw in training)."""
    return tuple(
        min(int(patch), -(-int(size) // int(divisor)) * int(divisor))
        for patch, size, divisor in zip(patch_size_zyx, image_shape_zyx, divisor_zyx, strict=True)
    )


def output_scale_of(network: nn.Module) -> tuple[int, int, int]:
    """Output voxels per input voxel along (Z, Y, X): the network's ``output_scale_zyx``, else (1, 1, 1)."""
    scale = tuple(getattr(network, "output_scale_zyx", (1, 1, 1)))
    if len(scale) != 3 or not all(isinstance(s, int | np.integer) and s >= 1 for s in scale):
        raise ValueError(
            f"{type(network).__name__}.output_scale_zyx must be 3 positive integers (Z, Y, X), got {scale}."
        )
    return tuple(int(s) for s in scale)


def has_super_resolved_image(network: nn.Module) -> bool:
    """Whether ``network.forward_all`` gives a super-resolved image (ROSE built with its SR stream)."""
    return callable(getattr(network, "forward_all", None)) and bool(getattr(network, "has_sr_stream", True))


def _as_overlap(overlap: float | Sequence[float]) -> tuple[float, float, float]:
    values = (overlap,) * 3 if isinstance(overlap, (int, float)) else tuple(overlap)
    if len(values) != 3 or not all(0.0 <= v < 1.0 for v in values):
        raise ValueError(f"Overlap must be in [0, 1) for each axis (Z, Y, X), got {overlap}.")
    return tuple(float(v) for v in values)


def predict_probabilities(
    network: nn.Module,
    image: np.ndarray,
    *,
    patch_size_zyx: Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    batch_size: int = 2,
    device: str | torch.device = "auto",
    blend_mode: str = "gaussian",
    precision: str = "auto",
    test_time_augmentation: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> np.ndarray:
    """Per-class vessel probabilities of a whole volume, patch by patch.

    Parameters
    ----------
    network : nn.Module
        Maps ``(B, 1, z, y, x)`` to logits ``(B, C, sz, sy, sx)``, ``s`` its ``output_scale_zyx`` attribute
        (default (1, 1, 1); ROSE's (2, 2, 2)). Used in eval mode; its mode is restored.
    image : ndarray of float32, shape (Z, Y, X)
        Normalised intensities. Volumes smaller than the patch are padded (MONAI pads with zeros).
    patch_size_zyx : sequence of 3 int
        Window size on the input's grid. Non-cubic windows such as (16, 128, 128) suit thick-slice MRA slabs.
    overlap : float or 3 floats
        Fraction of a window shared with its neighbour along each axis. 0 tiles without overlap.
    batch_size : int
        Windows per forward pass.
    device : {"auto", "cpu", "cuda", "mps"}
    blend_mode : {"gaussian", "constant"}
        Gaussian weighting down-weights window borders where context is missing.
    precision : {"auto", "float32", "bfloat16", "float16"}
        Autocast precision of the network. "auto": float16 on CUDA, float32 elsewhere (which CPUs run
        bfloat16 faster is measured by :func:`VesselSegLib.inference.runtime.choose_runtime`, whose choice the
        methods pass here); float16 needs CUDA.
    test_time_augmentation : bool
        Average each window's probabilities over its in-plane flips (Y, X, YX;
        :func:`~VesselSegLib.inference.test_time_augmentation.predict_with_flips`): 4 forward passes per
        window, the same windows and blending.
    progress : callable(fraction, message), optional
    cancel : callable() -> bool, optional
        Polled before every batch; when it returns True, :class:`SegmentationCancelled` is raised.

    Returns
    -------
    ndarray of float32, shape (C, sZ, sY, sX)
        Sigmoid probabilities, on the input's grid or the network's finer one (``s`` times as many voxels
        along each axis, covering the same box).
    """
    return predict_outputs(
        network,
        image,
        outputs=("probabilities",),
        patch_size_zyx=patch_size_zyx,
        overlap=overlap,
        batch_size=batch_size,
        device=device,
        blend_mode=blend_mode,
        precision=precision,
        test_time_augmentation=test_time_augmentation,
        progress=progress,
        cancel=cancel,
    )["probabilities"]


def predict_super_resolved_image(network: nn.Module, image: np.ndarray, **options) -> np.ndarray:
    """The super-resolved image of a whole volume (ROSE's SR stream), blended window by window.

    ``options`` are :func:`predict_probabilities`' keywords (``patch_size_zyx`` is required). The network's
    ``forward_all(window)`` must return an ``sr_image`` ``(B, 1, sz, sy, sx)``; it is blended like the
    probabilities (same windows, weights and flips) but not passed through a sigmoid.

    Returns
    -------
    ndarray of float32, shape (sZ, sY, sX)
        Linear intensities, about [0, 1] (clip only to show them or to score PSNR).
    """
    return predict_outputs(network, image, outputs=("super_resolved",), **options)["super_resolved"]


def predict_outputs(
    network: nn.Module,
    image: np.ndarray,
    *,
    outputs: Sequence[str] = ("probabilities",),
    patch_size_zyx: Sequence[int],
    overlap: float | Sequence[float] = 0.25,
    batch_size: int = 2,
    device: str | torch.device = "auto",
    blend_mode: str = "gaussian",
    precision: str = "auto",
    test_time_augmentation: bool = False,
    progress: ProgressCallback | None = None,
    cancel: CancelCheck | None = None,
) -> dict[str, np.ndarray]:
    """Several outputs of one network over a whole volume, from one sliding-window pass.

    Parameters
    ----------
    outputs : sequence of {"probabilities", "super_resolved"}
        What to blend (:data:`OUTPUT_NAMES`): the sigmoid of the logits, shape ``(C, sZ, sY, sX)``, and the
        super-resolved image of ``forward_all``, shape ``(sZ, sY, sX)``. Both come from the same forward
        pass of each window, stacked as channels and blended together (blending is per channel).
    network, image, patch_size_zyx, overlap, batch_size, device, blend_mode, precision,
    test_time_augmentation, progress, cancel
        As for :func:`predict_probabilities`.

    Returns
    -------
    dict output name -> ndarray of float32
    """
    if image.ndim != 3:
        raise ValueError(f"Expected a (Z, Y, X) volume, got shape {image.shape}.")
    wanted = tuple(dict.fromkeys(str(name) for name in outputs))
    if not wanted or any(name not in OUTPUT_NAMES for name in wanted):
        raise ValueError(f"Outputs must be one or more of {', '.join(OUTPUT_NAMES)}; got {tuple(outputs)}.")
    if "super_resolved" in wanted and not has_super_resolved_image(network):
        raise ValueError(
            f"{type(network).__name__} gives no super-resolved image (it needs forward_all with an SR "
            "stream, e.g. ROSENet built with sr_stream=True); ask for the probabilities only."
        )
    patch = tuple(int(p) for p in patch_size_zyx)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"Patch size must be 3 positive integers (Z, Y, X), got {patch_size_zyx}.")
    if blend_mode not in ("gaussian", "constant"):
        raise ValueError(f"Blend mode must be 'gaussian' or 'constant', got {blend_mode!r}.")
    patch = fit_patch_to_volume(patch, image.shape, getattr(network, "size_divisor_zyx", (1, 1, 1)))
    overlaps = _as_overlap(overlap)
    if not isinstance(test_time_augmentation, bool | np.bool_):
        raise ValueError(f"test_time_augmentation must be True or False, got {test_time_augmentation!r}.")
    settings = _Settings(
        outputs=wanted,
        scale=output_scale_of(network),
        patch=patch,
        overlaps=overlaps,
        blend_mode=blend_mode,
        test_time_augmentation=bool(test_time_augmentation),
        progress=progress,
        cancel=cancel,
    )
    target = resolve_device(device)
    try:
        return _run(network, image, settings, batch_size, target, precision)
    except torch.cuda.OutOfMemoryError:
        if target.type != "cuda":
            raise
        logger.warning("GPU out of memory; running the network on the GPU and stitching on the CPU instead.")
        torch.cuda.empty_cache()
        try:
            return _run(network, image, settings, 1, target, precision, stitch_device=torch.device("cpu"))
        except torch.cuda.OutOfMemoryError:
            logger.warning("GPU still out of memory; falling back to the CPU (slower).")
            torch.cuda.empty_cache()
            # float32 on the CPU: the GPU's float16 does not exist there, and bfloat16 is for the probe to choose.
            return _run(network, image, settings, batch_size, torch.device("cpu"), "float32")


def input_placement(
    device: torch.device, stitch_device: torch.device | None = None
) -> tuple[torch.device, bool]:
    """Where the whole input volume sits during a pass on ``device``, and whether it is page-locked.

    On a GPU that also stitches (the default), the volume goes to the GPU once and MONAI cuts the windows
    there: no copy per window (a 448 x 448 x 128 float32 volume is 100 MB, small beside the network's
    activations). When stitching falls back to the CPU after an out-of-memory error, the volume stays in CPU
    memory, pinned, so that each window's copy to the GPU is asynchronous. On a CPU nothing moves.

    Returns
    -------
    (torch.device, bool)
        The volume's device and whether to pin it.
    """
    if device.type != "cuda":
        return torch.device("cpu"), False
    if stitch_device is None or stitch_device.type == "cuda":
        return device, False
    return torch.device("cpu"), True


@dataclass(frozen=True)
class _Settings:
    """One sliding-window pass, checked: what to blend and how (the same for every device it is tried on)."""

    outputs: tuple[str, ...]
    scale: tuple[int, int, int]
    patch: tuple[int, int, int]
    overlaps: tuple[float, float, float]
    blend_mode: str
    test_time_augmentation: bool
    progress: ProgressCallback | None
    cancel: CancelCheck | None


def _run(
    network: nn.Module,
    image: np.ndarray,
    settings: _Settings,
    batch_size: int,
    device: torch.device,
    precision: str,
    stitch_device: torch.device | None = None,
) -> dict[str, np.ndarray]:
    n_batches = max(1, math.ceil(count_windows(image.shape, settings.patch, settings.overlaps) / batch_size))
    done = 0
    autocast_dtype = _autocast_dtype(precision, device)
    channels_last = device.type == "cpu" and not getattr(network, "runs_outside_pytorch", False)
    with_image = "super_resolved" in settings.outputs
    was_training = network.training
    network.eval()
    first_tensor = next(itertools.chain(network.parameters(), network.buffers()), None)
    original_device = first_tensor.device if first_tensor is not None else torch.device("cpu")
    network.to(device)
    if channels_last:
        set_3d_memory_format(network, torch.channels_last_3d)

    def window_outputs(window: torch.Tensor) -> torch.Tensor:
        """The wanted outputs of one batch of windows, stacked as channels on the (fine) output grid."""
        if channels_last:
            window = window.contiguous(memory_format=torch.channels_last_3d)
        autocast = (
            contextlib.nullcontext()
            if autocast_dtype is None
            else torch.autocast(device.type, dtype=autocast_dtype)
        )
        with autocast:
            if with_image:
                both = network.forward_all(window)
                logits, sr_image = both.logits, both.sr_image
                if sr_image is None:
                    raise ValueError(f"{type(network).__name__}.forward_all gave no super-resolved image.")
            else:
                logits, sr_image = network(window), None
        parts = [torch.sigmoid(logits.float())] if "probabilities" in settings.outputs else []
        if sr_image is not None:
            parts.append(sr_image.float())
        stacked = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        expected = tuple(n * s for n, s in zip(window.shape[2:], settings.scale, strict=True))
        if tuple(stacked.shape[2:]) != expected:
            # MONAI would infer some other zoom from the shape and blend the windows out of place.
            raise ValueError(
                f"{type(network).__name__} maps a window {tuple(window.shape[2:])} (Z, Y, X) to "
                f"{tuple(stacked.shape[2:])}, but its output_scale_zyx {settings.scale} says {expected}."
            )
        return stacked

    def predictor(window: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if settings.cancel is not None and settings.cancel():
            raise SegmentationCancelled("Segmentation cancelled by the user.")
        window = window.to(device, non_blocking=True)  # from pinned memory, the copy overlaps the GPU's work
        # Test-time augmentation sits here, per window, rather than around the whole scan: memory stays one
        # window's worth (not four volume-sized accumulators), MONAI keeps the same windows and Gaussian
        # weights, and a window's output still depends on that window alone, so streaming tile by tile
        # stays exact (inference/streaming.py).
        output = (
            predict_with_flips(window_outputs, window, output_scale_zyx=settings.scale)
            if settings.test_time_augmentation
            else window_outputs(window)
        )
        done += 1
        if settings.progress is not None:
            settings.progress(min(done / n_batches, 1.0), f"Inference: batch {done}/{n_batches}")
        return output.contiguous()

    volume = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
    volume_device, pinned = input_placement(device, stitch_device)
    volume = volume.pin_memory() if pinned else volume.to(volume_device)
    try:
        with torch.inference_mode():
            # A window's output s times its size: MONAI places it at s times the window's position, with the
            # Gaussian weights nearest-upsampled to it, and crops a padded volume's output by s times the pad.
            stacked = sliding_window_inference(
                volume,
                roi_size=settings.patch,
                sw_batch_size=batch_size,
                predictor=predictor,
                overlap=settings.overlaps,
                mode=settings.blend_mode,
                sw_device=device,
                device=stitch_device or (device if device.type == "cuda" else torch.device("cpu")),
            )
    finally:
        network.to(original_device)
        if channels_last:
            set_3d_memory_format(network, torch.contiguous_format)
        network.train(was_training)
    stacked = stacked[0].float().cpu().numpy()
    expected = tuple(n * s for n, s in zip(image.shape, settings.scale, strict=True))
    if stacked.shape[1:] != expected:
        raise RuntimeError(f"Sliding-window output has shape {stacked.shape[1:]}, expected {expected}.")
    results: dict[str, np.ndarray] = {}
    if "probabilities" in settings.outputs:
        results["probabilities"] = stacked[: stacked.shape[0] - int(with_image)]
    if with_image:
        results["super_resolved"] = stacked[-1]
    return results
