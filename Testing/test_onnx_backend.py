"""The exported backend (OpenVINO): equal output to PyTorch, chosen only when measured faster, cached, and
refused with a one-line reason where it cannot run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("openvino")

from VesselSegLib.inference import onnx_backend, runtime  # noqa: E402
from VesselSegLib.inference.pipeline import segment_image  # noqa: E402
from VesselSegLib.inference.sliding_window import predict_probabilities  # noqa: E402
from VesselSegLib.models.registry import ModelRegistry  # noqa: E402
from VesselSegLib.models.unet3d import UNet3D  # noqa: E402
from VesselSegLib.phantoms import make_phantom_case  # noqa: E402
from VesselSegLib.request import SegmentationRequest  # noqa: E402

WINDOW = (8, 32, 32)


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VESSELSEG_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("VESSELSEG_EXPORTED_BACKENDS", "openvino")  # conftest turns it off
    runtime.forget_choices()
    yield tmp_path
    runtime.forget_choices()


@pytest.fixture()
def network():
    torch.manual_seed(0)
    return UNet3D(in_channels=1, out_channels=2, base_channels=4, levels=2).eval()


def test_a_forced_backend_gives_the_pytorch_probabilities_through_the_sliding_window(cache, network):
    backend = "openvino"
    runner, choice = onnx_backend.choose_backend(network, WINDOW, backend)
    assert isinstance(runner, onnx_backend.ExportedNetwork) and runner.backend == backend == choice.backend
    assert choice.max_logit_difference[backend] < onnx_backend.MAX_LOGIT_DIFFERENCE
    image = np.random.default_rng(1).random(
        (12, 40, 44), dtype=np.float32
    )  # several windows, a last batch of 1
    options = {
        "patch_size_zyx": WINDOW,
        "overlap": 0.25,
        "batch_size": 3,
        "device": "cpu",
        "precision": "float32",
    }
    expected = predict_probabilities(network, image, **options)
    got = predict_probabilities(runner, image, **options)
    assert got.shape == expected.shape == (2, 12, 40, 44)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    small = np.random.default_rng(2).random((6, 20, 24), dtype=np.float32)  # smaller than the window
    np.testing.assert_allclose(
        predict_probabilities(runner, small, **options),
        predict_probabilities(network, small, **options),
        atol=1e-4,
    )
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1  # exported once, whole


AUTO_TAKES_OPENVINO = """
import json, os, sys, torch
from VesselSegLib.inference import onnx_backend
from VesselSegLib.models.unet3d import UNet3D
torch.manual_seed(0)
network = UNet3D(in_channels=1, out_channels=2, base_channels=4, levels=2).eval()
seconds, calls = {"pytorch": 3.0, "openvino": 1.0}, []
order = ["pytorch", "openvino"]  # the order measure() times them
def fake_best_seconds(run, repeats=2):
    calls.append(1)
    return seconds[order[len(calls) - 1]]
onnx_backend.best_seconds = fake_best_seconds
runner, choice = onnx_backend.choose_backend(network, (8, 32, 32), "auto")
again, cached = onnx_backend.choose_backend(network, (8, 32, 32), "auto")
print(json.dumps({"choice": choice.as_record(), "cached": cached.as_record(), "calls": len(calls),
                  "runner": getattr(runner, "backend", None), "again": getattr(again, "backend", None)}))
"""


def test_auto_takes_the_fastest_equal_backend_and_caches_the_measurement(cache):
    """In a subprocess: in OpenVINO 2026.4 this sequence, followed later in the same process by a SIGINT,
    ended that process with a segmentation fault (not understood yet; the backend is opt-in meanwhile)."""
    import os
    import subprocess
    import sys

    environment = {**os.environ, "VESSELSEG_CACHE_DIR": str(cache), "VESSELSEG_EXPORTED_BACKENDS": "openvino"}
    done = subprocess.run(
        [sys.executable, "-c", AUTO_TAKES_OPENVINO],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["choice"]["backend"] == "openvino" and "3.00x" in result["choice"]["reason"]
    assert result["runner"] == result["again"] == "openvino"
    assert result["calls"] == 2 and result["cached"] == result["choice"]  # measured once, then read back
    decisions = json.loads((cache / "backend_choices.json").read_text())
    assert [d["backend"] for d in decisions.values()] == ["openvino"]


def test_auto_keeps_pytorch_when_no_backend_is_faster_or_equal(cache, network, monkeypatch):
    timings = iter([1.0, 0.95])  # pytorch, openvino: 1.05x
    monkeypatch.setattr(onnx_backend, "best_seconds", lambda run, repeats=2: next(timings))
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "auto")
    assert runner is network and choice.backend == "pytorch" and "1.05x" in choice.reason

    with torch.no_grad():
        next(network.parameters()).mul_(2.0)  # other weights: another hash, measured again
    timings = iter([1.0, 0.1])
    monkeypatch.setattr(onnx_backend, "best_seconds", lambda run, repeats=2: next(timings))
    real_runner = onnx_backend.load_runner

    def wrong(backend, path):  # an export that computes something else
        run = real_runner(backend, path)
        return lambda array: run(array) + 1.0

    monkeypatch.setattr(onnx_backend, "load_runner", wrong)
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "auto")
    assert runner is network and choice.backend == "pytorch" and "differs" in choice.reason
    timings = iter([1.0, 0.1])  # the forced backend is measured again (another cache key)
    with pytest.raises(ValueError, match="Backend openvino cannot run this model: exported output differs"):
        onnx_backend.choose_backend(network, WINDOW, "openvino")


def test_pytorch_is_kept_where_no_backend_can_help_and_forcing_one_there_is_refused(
    cache, network, monkeypatch
):
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "auto", precision="bfloat16")
    assert runner is network and "float32 only" in choice.reason
    with pytest.raises(ValueError, match="Backend openvino cannot run this model: precision bfloat16"):
        onnx_backend.choose_backend(network, WINDOW, "openvino", precision="bfloat16")
    with pytest.raises(ValueError, match="Unknown backend 'onnxruntime'"):  # measured by the benchmark only
        onnx_backend.choose_backend(network, WINDOW, "onnxruntime")
    with pytest.raises(ValueError, match="Unknown backend 'tensorrt'"):
        onnx_backend.choose_backend(network, WINDOW, "tensorrt")
    assert onnx_backend.choose_backend(network, WINDOW, "pytorch")[1].reason == "asked for"
    on_gpu = onnx_backend.choose_backend(network, WINDOW, "auto", device="cuda")
    assert on_gpu[0] is network and "CPU only" in on_gpu[1].reason  # decided before anything is exported
    with pytest.raises(ValueError, match="Backend openvino cannot run this model: device cuda"):
        onnx_backend.choose_backend(network, WINDOW, "openvino", device="cuda")
    with pytest.raises(ValueError, match="cannot run this model: this method needs more"):
        onnx_backend.choose_backend(network, WINDOW, "openvino", unavailable="this method needs more outputs")
    monkeypatch.setenv("VESSELSEG_EXPORTED_BACKENDS", "")  # as if neither were installed
    assert onnx_backend.choose_backend(network, WINDOW, "auto")[1].reason.startswith(
        "OpenVINO is not installed"
    )
    with pytest.raises(ValueError, match="openvino is not installed"):
        onnx_backend.choose_backend(network, WINDOW, "openvino")


def test_a_shipped_model_segments_the_same_with_an_exported_backend(cache):
    backend = "openvino"
    case = make_phantom_case(
        "2PM", (16, 96, 96), spacing_zyx=(0.005, 0.001, 0.001), seed=4, radius_model="2pm-physical"
    )
    registry = ModelRegistry.default()
    results = {
        name: segment_image(
            case.image,
            case.spacing_zyx,
            # float32 on both: "auto" picks bfloat16 on CPUs with native bfloat16, which no exported backend runs.
            SegmentationRequest(
                modality="2PM", method="vnet-2pm", device="cpu", backend=name, precision="float32"
            ),
            registry=registry,
        )
        for name in ("pytorch", backend)
    }
    assert results[backend].runtime["backend_by_model"]["vnet-2pm"]["backend"] == backend
    assert results["pytorch"].runtime["backend_by_model"]["vnet-2pm"]["backend"] == "pytorch"
    changed = np.mean(results["pytorch"].class_map != results[backend].class_map)
    assert changed < 1e-4  # a voxel may sit exactly at the threshold
