"""Exported backends (OpenVINO, ONNX Runtime): equal output to PyTorch, chosen only when measured faster,
cached, and refused with a one-line reason where they cannot run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
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
    monkeypatch.setenv("VESSELSEG_EXPORTED_BACKENDS", "openvino,onnxruntime")  # conftest turns them off
    runtime.forget_choices()
    yield tmp_path
    runtime.forget_choices()


@pytest.fixture()
def network():
    torch.manual_seed(0)
    return UNet3D(in_channels=1, out_channels=2, base_channels=4, levels=2).eval()


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_a_forced_backend_gives_the_pytorch_probabilities_through_the_sliding_window(cache, network, backend):
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


def test_auto_takes_the_fastest_equal_backend_and_caches_the_measurement(cache, network, monkeypatch):
    seconds = {"pytorch": 3.0, "openvino": 1.0, "onnxruntime": 2.0}
    calls = []

    def fake_best_seconds(run, repeats=2):
        calls.append(1)
        return seconds[order[len(calls) - 1]]

    order = ["pytorch", "openvino", "onnxruntime"]  # the order measure() times them
    monkeypatch.setattr(onnx_backend, "best_seconds", fake_best_seconds)
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "auto")
    assert choice.backend == "openvino" and runner.backend == "openvino" and "3.00x" in choice.reason
    again, cached = onnx_backend.choose_backend(network, WINDOW, "auto")
    assert len(calls) == 3 and cached == choice  # measured once per weights, window and machine
    decisions = json.loads((cache / "backend_choices.json").read_text())
    assert [d["backend"] for d in decisions.values()] == ["openvino"]


def test_auto_keeps_pytorch_when_no_backend_is_faster_or_equal(cache, network, monkeypatch):
    timings = iter([1.0, 0.95, 0.97])  # pytorch, openvino, onnxruntime: 1.05x at best
    monkeypatch.setattr(onnx_backend, "best_seconds", lambda run, repeats=2: next(timings))
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "auto")
    assert runner is network and choice.backend == "pytorch" and "1.05x" in choice.reason

    with torch.no_grad():
        next(network.parameters()).mul_(2.0)  # other weights: another hash, measured again
    timings = iter([1.0, 0.1, 0.1])
    monkeypatch.setattr(onnx_backend, "best_seconds", lambda run, repeats=2: next(timings))
    real_runner = onnx_backend.load_runner

    def wrong(backend, path):  # an export that computes something else
        run = real_runner(backend, path)
        return lambda array: run(array) + 1.0

    monkeypatch.setattr(onnx_backend, "load_runner", wrong)
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "auto")
    assert runner is network and choice.backend == "pytorch" and "differs" in choice.reason
    timings = iter([1.0, 0.1])  # the forced backend alone is measured (another cache key)
    with pytest.raises(ValueError, match="Backend openvino cannot run this model: exported output differs"):
        onnx_backend.choose_backend(network, WINDOW, "openvino")


def test_pytorch_is_kept_where_no_backend_can_help_and_forcing_one_there_is_refused(
    cache, network, monkeypatch
):
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "auto", precision="bfloat16")
    assert runner is network and "float32 only" in choice.reason
    with pytest.raises(ValueError, match="Backend onnxruntime cannot run this model: precision bfloat16"):
        onnx_backend.choose_backend(network, WINDOW, "onnxruntime", precision="bfloat16")
    with pytest.raises(ValueError, match="Unknown backend 'tensorrt'"):
        onnx_backend.choose_backend(network, WINDOW, "tensorrt")
    assert onnx_backend.choose_backend(network, WINDOW, "pytorch")[1].reason == "asked for"
    monkeypatch.setenv("VESSELSEG_EXPORTED_BACKENDS", "")  # as if neither were installed
    assert onnx_backend.choose_backend(network, WINDOW, "auto")[1].reason.startswith("neither OpenVINO")
    with pytest.raises(ValueError, match="openvino is not installed"):
        onnx_backend.choose_backend(network, WINDOW, "openvino")


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_a_shipped_model_segments_the_same_with_an_exported_backend(cache, backend):
    case = make_phantom_case(
        "2PM", (16, 96, 96), spacing_zyx=(0.005, 0.001, 0.001), seed=4, radius_model="2pm-physical"
    )
    registry = ModelRegistry.default()
    results = {
        name: segment_image(
            case.image,
            case.spacing_zyx,
            SegmentationRequest(modality="2PM", method="vnet-2pm", device="cpu", backend=name),
            registry=registry,
        )
        for name in ("pytorch", backend)
    }
    assert results[backend].runtime["backend_by_model"]["vnet-2pm"]["backend"] == backend
    assert results["pytorch"].runtime["backend_by_model"]["vnet-2pm"]["backend"] == "pytorch"
    changed = np.mean(results["pytorch"].class_map != results[backend].class_map)
    assert changed < 1e-4  # a voxel may sit exactly at the threshold
