"""Runtime selection: the precision is measured per machine, cached, honoured when asked, and reduced precision
only runs models verified to keep their segmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from VesselSegLib.inference import runtime
from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.inference.sliding_window import predict_probabilities
from VesselSegLib.metrics import dice
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.request import SegmentationRequest
from VesselSegLib.vessel_classes import VESSEL_CLASS_BY_NAME


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VESSELSEG_CACHE_DIR", str(tmp_path))
    runtime.forget_choices()
    yield tmp_path / "runtime_probe.json"
    runtime.forget_choices()


def test_named_precisions_are_used_as_asked_and_float16_needs_cuda(fresh_cache):
    assert runtime.choose_runtime("cpu", "float32").precision == "float32"
    assert runtime.choose_runtime("cpu", "bfloat16").precision == "bfloat16"
    assert runtime.choose_runtime("cpu", "float32").source == "requested"
    with pytest.raises(ValueError, match="float16 needs a CUDA GPU"):
        runtime.choose_runtime("cpu", "float16")
    with pytest.raises(ValueError, match="choose one of auto, float32"):
        runtime.choose_runtime("cpu", "half")
    assert not fresh_cache.exists()  # nothing measured for a named precision


def test_auto_on_a_cpu_probes_once_caches_and_reuses_the_measurement(fresh_cache):
    first = runtime.choose_runtime("cpu", "auto")
    assert first.source == "probe" and first.timings_s["float32"] > 0
    assert first.precision in ("float32", "bfloat16")
    if runtime.cpu_has_native_bfloat16():
        assert (first.precision == "bfloat16") == (
            first.timings_s["float32"] / first.timings_s["bfloat16"] >= runtime.MIN_SPEEDUP
        )
    else:
        assert first.precision == "float32" and set(first.timings_s) == {"float32"}
    record = json.loads(fresh_cache.read_text())
    assert record["key"] == runtime.machine_key() and record["choice"]["precision"] == first.precision
    runtime.forget_choices()
    again = runtime.choose_runtime("cpu", "auto")
    assert again.source == "cache" and again.precision == first.precision
    assert again.timings_s == pytest.approx(first.timings_s)
    # The peak rate of each precision tried is measured with it and cached with it.
    assert set(first.peak_gflops) == set(first.timings_s) and first.peak_gflops["float32"] > 0
    assert again.peak_gflops == pytest.approx(first.peak_gflops)


def test_the_peak_rate_counts_two_operations_per_multiply_add(monkeypatch):
    # A 2-thread CPU core does 10-200 GFLOP/s in float32; a clock that says each product took 1 s
    # makes the rate exactly 2 n^3 / 1e9.
    ticks = iter(range(100))
    monkeypatch.setattr(runtime.time, "perf_counter", lambda: float(next(ticks)))
    assert runtime.matmul_peak_gflops(torch.float32, size=64) == pytest.approx(2 * 64**3 / 1e9)


def test_a_cache_from_another_machine_or_a_damaged_one_is_measured_again(fresh_cache):
    fresh_cache.write_text(json.dumps({"key": {"cpu": "another"}, "choice": {"precision": "bfloat16"}}))
    assert runtime.choose_runtime("cpu", "auto").source == "probe"
    runtime.forget_choices()
    fresh_cache.write_text("{ not json")
    assert runtime.choose_runtime("cpu", "auto").source == "probe"
    assert json.loads(fresh_cache.read_text())["key"] == runtime.machine_key()  # rewritten whole


def test_the_probe_chooses_bfloat16_only_when_it_measures_faster(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: True)
    measured = {"float32": 1.0, "bfloat16": 0.5}
    monkeypatch.setattr(
        runtime, "_seconds", lambda block, x, dtype: measured["bfloat16" if dtype else "float32"]
    )
    monkeypatch.setattr(runtime, "matmul_peak_gflops", lambda dtype: 100.0)  # emulated bfloat16 is slow
    assert runtime.probe_cpu().precision == "bfloat16"
    measured["bfloat16"] = 0.95  # 1.05x: within timing noise
    slow = runtime.probe_cpu()
    assert slow.precision == "float32" and "1.05x" in slow.reason
    monkeypatch.setattr(runtime, "cpu_has_native_bfloat16", lambda: False)
    assert runtime.probe_cpu().precision == "float32"


def test_a_model_not_verified_for_the_machine_s_precision_runs_float32():
    choice = runtime.RuntimeChoice("cpu", "bfloat16", "measured", "probe", {"float32": 1.0, "bfloat16": 0.4})
    assert choice.for_model(("bfloat16",)).precision == "bfloat16"
    unverified = choice.for_model(())
    assert unverified.precision == "float32" and "not verified" in unverified.reason
    assert runtime.RuntimeChoice("cpu", "float32", "x").for_model(()).precision == "float32"
    forced = runtime.choose_runtime("cpu", "bfloat16")  # the user asked: any model
    assert forced.for_model(()).precision == "bfloat16"


def test_bfloat16_on_the_cpu_really_runs_in_reduced_precision_and_stays_close():
    torch.manual_seed(0)
    network = torch.nn.Sequential(
        torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 1, 1)
    )
    image = np.random.default_rng(0).random((8, 32, 32), dtype=np.float32)
    options = {"patch_size_zyx": (8, 32, 32), "device": "cpu"}
    full = predict_probabilities(network, image, precision="float32", **options)
    reduced = predict_probabilities(network, image, precision="bfloat16", **options)
    assert not np.array_equal(full, reduced)  # autocast took effect
    assert np.abs(full - reduced).max() < 0.02  # bfloat16 keeps ~3 significant digits
    with pytest.raises(ValueError, match="float16 needs a CUDA GPU"):
        predict_probabilities(network, image, precision="float16", **options)


def _verified_models():
    registry = ModelRegistry.default()
    return [e.name for e in registry.entries() if e.kind == "network" and "bfloat16" in e.reduced_precision]


@pytest.mark.slow
@pytest.mark.parametrize("name", _verified_models())
def test_every_model_listed_for_bfloat16_keeps_its_class_map_within_0_002_dice(name):
    """What lets "auto" run a model in bfloat16: its Dice against the truth moves by <= 0.002 on a phantom of
    each modality it reads (benchmarks/precision_check.py checks more and larger phantoms)."""
    registry = ModelRegistry.default()
    entry = registry.get(name)
    for modality in entry.modalities:
        if modality == "2PM":
            case = make_phantom_case(
                "2PM", (16, 96, 96), spacing_zyx=(0.005, 0.001, 0.001), seed=5001, radius_model="2pm-physical"
            )
        else:
            case = make_phantom_case(
                modality, (32, 96, 96), spacing_zyx=entry.training_spacing_for(modality), seed=5001
            )
        results = {
            precision: segment_image(
                case.image,
                case.spacing_zyx,
                SegmentationRequest(
                    modality=modality, method=name, device="cpu", precision=precision, backend="pytorch"
                ),
                brain_mask=case.brain_mask,
                registry=registry,
            )
            for precision in ("float32", "bfloat16")
        }
        assert results["bfloat16"].runtime["precision_by_model"] == {name: "bfloat16"}
        for class_name in results["float32"].vessel_classes:
            label = VESSEL_CLASS_BY_NAME[class_name].label_value
            truth = case.class_map > 0 if modality == "2PM" else case.class_map == label
            scores = [dice(results[p].class_map == label, truth) for p in ("float32", "bfloat16")]
            assert abs(scores[1] - scores[0]) <= runtime.MAX_DICE_CHANGE, (modality, class_name, scores)


def test_the_summary_of_a_run_says_how_the_network_ran(fresh_cache):
    case = make_phantom_case(
        "2PM", (16, 64, 64), spacing_zyx=(0.005, 0.001, 0.001), seed=3, radius_model="2pm-physical"
    )
    request = SegmentationRequest(modality="2PM", method="vnet-2pm", device="cpu", precision="float32")
    result = segment_image(case.image, case.spacing_zyx, request)
    assert result.runtime["precision"] == "float32" and result.runtime["source"] == "requested"
    assert result.runtime["precision_by_model"] == {"vnet-2pm": "float32"}
    frangi = segment_image(case.image, case.spacing_zyx, SegmentationRequest(modality="2PM", method="frangi"))
    assert frangi.runtime == {}
