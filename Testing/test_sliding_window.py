"""Sliding-window inference: exact stitching, padding of small volumes, progress and cancellation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.sliding_window import count_windows, predict_probabilities, resolve_device
from VesselSegLib.models.unet3d import UNet3D


class IdentityLogits(nn.Module):
    """Returns its input as logits for ``channels`` classes: stitched output must be sigmoid(input) exactly."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.channels = channels
        self.unused = nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.repeat(1, self.channels, 1, 1, 1) * torch.arange(1, self.channels + 1).view(1, -1, 1, 1, 1)


@pytest.mark.parametrize(
    ("shape", "patch", "overlap", "mode"),
    [
        ((37, 50, 61), (16, 32, 32), 0.25, "gaussian"),
        ((37, 50, 61), (16, 32, 32), 0.0, "constant"),
        ((20, 64, 64), (16, 32, 32), (0.0, 0.5, 0.5), "gaussian"),
    ],
)
def test_identity_network_is_stitched_exactly(shape, patch, overlap, mode):
    image = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    output = predict_probabilities(
        IdentityLogits(2),
        image,
        patch_size_zyx=patch,
        overlap=overlap,
        blend_mode=mode,
        batch_size=3,
        device="cpu",
    )
    assert output.shape == (2, *shape) and output.dtype == np.float32
    expected = 1 / (1 + np.exp(-image))
    np.testing.assert_allclose(output[0], expected, atol=1e-5)
    np.testing.assert_allclose(output[1], 1 / (1 + np.exp(-2 * image)), atol=1e-5)


def test_volume_smaller_than_patch_is_padded_not_rejected():
    image = np.random.default_rng(2).normal(size=(5, 9, 12)).astype(np.float32)
    output = predict_probabilities(IdentityLogits(1), image, patch_size_zyx=(16, 32, 32), device="cpu")
    assert output.shape == (1, 5, 9, 12)
    np.testing.assert_allclose(output[0], 1 / (1 + np.exp(-image)), atol=1e-5)


def test_unet_output_shape_and_progress_reaches_one():
    torch.manual_seed(0)
    network = UNet3D(out_channels=3, base_channels=2, levels=3)
    image = np.random.default_rng(3).random((20, 40, 36)).astype(np.float32)
    fractions: list[float] = []
    output = predict_probabilities(
        network,
        image,
        patch_size_zyx=(16, 32, 32),
        overlap=0.25,
        device="cpu",
        progress=lambda fraction, message: fractions.append(fraction),
    )
    assert output.shape == (3, 20, 40, 36)
    assert ((output >= 0) & (output <= 1)).all()
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert network.training  # mode restored
    windows = count_windows((20, 40, 36), (16, 32, 32), (0.25,) * 3)
    assert len(fractions) == int(np.ceil(windows / 2))


def test_cancel_stops_before_the_next_batch():
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 1

    with pytest.raises(SegmentationCancelled):
        predict_probabilities(
            IdentityLogits(1),
            np.zeros((32, 64, 64), np.float32),
            patch_size_zyx=(16, 32, 32),
            batch_size=1,
            device="cpu",
            cancel=cancel,
        )
    assert calls["n"] == 2


def test_bad_arguments_are_named():
    image = np.zeros((8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="Overlap must be in"):
        predict_probabilities(IdentityLogits(), image, patch_size_zyx=(8, 8, 8), overlap=1.0, device="cpu")
    with pytest.raises(ValueError, match="3 positive integers"):
        predict_probabilities(IdentityLogits(), image, patch_size_zyx=(8, 8), device="cpu")
    with pytest.raises(ValueError, match=r"\(Z, Y, X\) volume"):
        predict_probabilities(IdentityLogits(), image[0], patch_size_zyx=(8, 8, 8), device="cpu")
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")


def test_patch_shrinks_to_thin_volumes_keeping_the_network_divisor():
    from VesselSegLib.inference.sliding_window import fit_patch_to_volume

    assert fit_patch_to_volume((128, 256, 256), (15, 512, 512), (4, 4, 4)) == (16, 256, 256)
    assert fit_patch_to_volume((64, 128, 128), (64, 100, 300), (1, 4, 4)) == (64, 100, 128)
    network = UNet3D(out_channels=1, base_channels=2, levels=3)
    image = np.random.default_rng(4).random((6, 40, 24)).astype(np.float32)
    output = predict_probabilities(network, image, patch_size_zyx=(128, 64, 64), device="cpu")
    assert output.shape == (1, 6, 40, 24)


def test_gpu_out_of_memory_falls_back_to_cpu_stitching_then_to_the_cpu(monkeypatch):
    """The CUDA fallback chain, run on a CPU: every pass on "cuda" raises out-of-memory, as a full GPU would;
    the result must be the CPU's, in float32, from the same windows."""
    from VesselSegLib.inference import sliding_window

    real_run = sliding_window._run
    attempts = []

    def run_on_a_full_gpu(network, image, settings, batch_size, device, precision, stitch_device=None):
        attempts.append((device.type, None if stitch_device is None else stitch_device.type, precision))
        if device.type == "cuda":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_run(network, image, settings, batch_size, device, precision, stitch_device)

    monkeypatch.setattr(sliding_window, "_run", run_on_a_full_gpu)
    monkeypatch.setattr(sliding_window, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    image = np.random.default_rng(3).normal(size=(20, 40, 40)).astype(np.float32)
    output = predict_probabilities(IdentityLogits(1), image, patch_size_zyx=(16, 32, 32), device="cuda")
    assert attempts == [("cuda", None, "auto"), ("cuda", "cpu", "auto"), ("cpu", None, "float32")]
    np.testing.assert_allclose(output[0], 1 / (1 + np.exp(-image)), atol=1e-5)


def test_the_input_volume_is_placed_once_per_pass():
    from VesselSegLib.inference.sliding_window import input_placement

    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert input_placement(cpu) == (cpu, False)  # nothing moves on a CPU
    assert input_placement(gpu) == (gpu, False)  # cut into windows on the GPU, no copy per window
    assert input_placement(gpu, gpu) == (gpu, False)
    assert input_placement(gpu, cpu) == (cpu, True)  # stitched on the CPU: windows from pinned memory
