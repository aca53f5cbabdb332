"""ONNX Runtime backend: equal output to PyTorch, chosen only when measured faster, cached, and refused with a
one-line reason where it cannot run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

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
    runtime.forget_choices()
    yield tmp_path
    runtime.forget_choices()


@pytest.fixture()
def network():
    torch.manual_seed(0)
    return UNet3D(in_channels=1, out_channels=2, base_channels=4, levels=2).eval()


def test_forced_onnxruntime_gives_the_pytorch_probabilities_through_the_sliding_window(cache, network):
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "onnxruntime")
    assert isinstance(runner, onnx_backend.OnnxRuntimeNetwork) and choice.backend == "onnxruntime"
    assert choice.max_logit_difference < onnx_backend.MAX_LOGIT_DIFFERENCE
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
    assert len(list((cache / "onnx").glob("*.onnx"))) == 1  # exported once, whole


def test_auto_follows_the_measurement_and_caches_it(cache, network, monkeypatch):
    calls = []

    def fake_measure(net, session, window, ratio=3.0):
        calls.append(window)
        return onnx_backend.BackendChoice(
            "onnxruntime", "measured", {"pytorch": ratio, "onnxruntime": 1.0}, 1e-6
        )

    monkeypatch.setattr(onnx_backend, "measure", fake_measure)
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "auto")
    assert choice.backend == "onnxruntime" and isinstance(runner, onnx_backend.OnnxRuntimeNetwork)
    again, cached = onnx_backend.choose_backend(network, WINDOW, "auto")
    assert calls == [WINDOW] and cached == choice  # measured once per weights, window and machine
    decisions = json.loads((cache / "backend_choices.json").read_text())
    assert [d["backend"] for d in decisions.values()] == ["onnxruntime"]


def test_auto_keeps_pytorch_when_onnxruntime_is_not_faster_or_differs(cache, network, monkeypatch):
    session = onnx_backend._session  # the real session, a fake clock
    timings = iter([1.0, 1.0, 0.95])  # pytorch contiguous, pytorch channels_last, onnxruntime
    monkeypatch.setattr(onnx_backend, "_best_seconds", lambda run, repeats=2: next(timings))
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "auto")
    assert runner is network and choice.backend == "pytorch" and "1.05x" in choice.reason
    assert session is onnx_backend._session

    with torch.no_grad():
        next(network.parameters()).mul_(2.0)  # other weights: another hash, measured again
    timings = iter([1.0, 1.0, 0.1])
    monkeypatch.setattr(onnx_backend, "_best_seconds", lambda run, repeats=2: next(timings))
    real_session = onnx_backend._session

    class Wrong:
        def __init__(self, inner):
            self.inner = inner

        def get_inputs(self):
            return self.inner.get_inputs()

        def run(self, names, feed):
            return [self.inner.run(names, feed)[0] + 1.0]  # an export that computes something else

    monkeypatch.setattr(onnx_backend, "_session", lambda path: Wrong(real_session(path)))
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "auto")
    assert runner is network and choice.backend == "pytorch" and "differs" in choice.reason


def test_pytorch_is_kept_where_onnxruntime_cannot_help_and_forcing_it_there_is_refused(cache, network):
    runner, choice = onnx_backend.choose_backend(network, WINDOW, "auto", precision="bfloat16")
    assert runner is network and "float32 only" in choice.reason
    with pytest.raises(ValueError, match="Backend onnxruntime cannot run this model: precision bfloat16"):
        onnx_backend.choose_backend(network, WINDOW, "onnxruntime", precision="bfloat16")
    with pytest.raises(ValueError, match="Unknown backend 'tensorrt'"):
        onnx_backend.choose_backend(network, WINDOW, "tensorrt")
    assert onnx_backend.choose_backend(network, WINDOW, "pytorch")[1].reason == "asked for"


def test_a_shipped_model_segments_the_same_with_either_backend(cache):
    case = make_phantom_case(
        "2PM", (16, 96, 96), spacing_zyx=(0.005, 0.001, 0.001), seed=4, radius_model="2pm-physical"
    )
    registry = ModelRegistry.default()
    results = {
        backend: segment_image(
            case.image,
            case.spacing_zyx,
            SegmentationRequest(modality="2PM", method="vnet-2pm", device="cpu", backend=backend),
            registry=registry,
        )
        for backend in ("pytorch", "onnxruntime")
    }
    assert results["onnxruntime"].runtime["backend_by_model"]["vnet-2pm"]["backend"] == "onnxruntime"
    assert results["pytorch"].runtime["backend_by_model"]["vnet-2pm"]["backend"] == "pytorch"
    changed = np.mean(results["pytorch"].class_map != results["onnxruntime"].class_map)
    assert changed < 1e-4  # a voxel may sit exactly at the threshold
