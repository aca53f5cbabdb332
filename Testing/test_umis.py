"""UMIS: the network, label-free training (the loader reads no label), test-time adaptation and its method.

Everything runs for real on small volumes: a tiny UMIS network, a 2PM phantom, the trainer's own loop, the
registry and the segmentation driver.
"""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from safetensors.numpy import load_file

from trainer.config import parse_config
from trainer.datasets import PatchSampler, clear_case_cache, load_cases, load_source_list
from trainer.export import export_run
from trainer.loop import LAST_WEIGHTS, LOG_CSV, RUN_RECORD, run_training
from VesselSegLib.cli.options import request_from_args
from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.methods import build_method
from VesselSegLib.methods.base import AdaptiveMethod
from VesselSegLib.models.checkpoint import save_checkpoint
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.models.umis import UMISNet
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.preprocessing import normalize_intensity
from VesselSegLib.unsupervised.adaptation import AdaptationSettings, adapt_network, random_crops

REPO = Path(__file__).resolve().parents[1]
UMIS_CONFIG = REPO / "trainer" / "configs" / "umis_2pm.toml"
TINY_ARGUMENTS = {"blocks": [1, 1, 1, 1], "widths": [4, 8, 8, 8], "decoder_widths": [8, 4, 4]}
ADAPTIVE = "VesselSegLib.methods.adaptive:AdaptiveNetwork"


def _tiny_network(seed: int = 0) -> UMISNet:
    torch.manual_seed(seed)
    return UMISNet(**TINY_ARGUMENTS)


@pytest.fixture(scope="module")
def phantom_image() -> np.ndarray:
    phantom = make_phantom_case("2PM", (16, 64, 64), seed=5)
    return normalize_intensity(phantom.image, "2PM")


def _state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------------ network


def test_slim_and_faithful_configurations_have_the_documented_sizes():
    slim = UMISNet()
    faithful = UMISNet(
        blocks=(3, 4, 6, 3), widths=(64, 128, 256, 512), stem_kernel=7, decoder_widths=(64, 32, 8)
    )
    assert sum(p.numel() for p in slim.parameters()) == 2_857_730
    assert round(sum(p.numel() for p in faithful.parameters()) / 1e6, 1) == 69.2
    assert slim.size_divisor_zyx == (16, 32, 32)


def test_outputs_have_the_input_shape_and_forward_is_the_logit_of_the_smoothed_map():
    network = _tiny_network().eval()
    image = torch.rand(2, 1, 16, 64, 32)
    with torch.no_grad():
        maps = network.forward_all(image)
        logits = network(image)
    for output in maps:
        assert output.shape == image.shape
        assert float(output.min()) >= 0 and float(output.max()) <= 1
    torch.testing.assert_close(
        torch.sigmoid(logits), maps.segmentation.clamp(1e-6, 1 - 1e-6), atol=1e-5, rtol=0
    )
    # S is the (SI o IS)^3 smoothing of S_bar, not S_bar itself.
    assert not torch.allclose(maps.segmentation, maps.raw_segmentation)


def test_gradients_reach_the_encoder_from_both_decoders():
    network = _tiny_network()
    maps = network.forward_all(torch.rand(1, 1, 16, 64, 64))
    maps.segmentation.mean().backward(retain_graph=True)
    stem_from_segmentation = network.stem[0].weight.grad.abs().sum()
    assert stem_from_segmentation > 0 and network.reconstruction_head.weight.grad is None
    maps.reconstruction.mean().backward()
    assert network.reconstruction_head.weight.grad.abs().sum() > 0


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="4 stage block counts"):
        UMISNet(blocks=(1, 1, 1))


# ------------------------------------------------------------------------------------------ label-free data


def _write_images_only(root: Path, names=("a", "b"), shape=(6, 40, 48)) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in names:
        image = rng.normal(40, 5, shape)
        image[:, 18:22, 10:40] += 80
        tifffile.imwrite(root / "images" / f"{name}.tif", image.clip(0, 255).astype(np.uint8))


def _umis_document(tmp_path: Path, files_root: Path | None = None) -> dict:
    document = tomllib.loads(UMIS_CONFIG.read_text())
    document["model"]["arguments"] = dict(TINY_ARGUMENTS)
    phantom = {
        "kind": "phantom",
        "modality": "2PM",
        "count": 2,
        "shape_zyx": [16, 48, 48],
        "seed": 7,
        "class_remap": {"artery": "micro", "vein": "micro"},
    }
    training = [phantom]
    if files_root is not None:
        training.append(
            {"kind": "files", "modality": "2PM", "root": str(files_root), "images": "images/*.tif"}
        )
    document["data"]["training"] = training
    document["data"]["validation"] = [{**phantom, "count": 1, "seed": 70}]
    document["training"].update(epochs=2, patches_per_epoch=4, batch_size=2, patch_size_zyx=[16, 32, 32])
    document["training"].pop("randomisation", None)
    document["output"] = {"run_dir": str(tmp_path / "run")}
    return document


def test_a_files_source_may_have_no_labels_and_the_label_free_loader_yields_none(tmp_path):
    _write_images_only(tmp_path / "data")
    config = parse_config(_umis_document(tmp_path, tmp_path / "data"))
    source = config.data.training[1]
    assert source.labels == ()
    clear_case_cache()
    cases, probabilities = load_source_list(
        config.data.training, config.data.vessel_classes, images_only=True
    )
    assert len(cases) == 4 and probabilities.sum() == pytest.approx(1)
    for case in cases:
        assert case.target.shape == (0, *case.image.shape) and case.vessel_voxels.size == 0
    images, targets = PatchSampler(cases, (16, 32, 32)).batch(np.random.default_rng(0), 3)
    assert images.shape == (3, 1, 16, 32, 32) and targets.shape == (3, 0, 16, 32, 32)
    with pytest.raises(ValueError, match="have no labels; supervised training needs"):
        load_cases(source, config.data.vessel_classes)


def test_label_free_training_never_reads_a_label(tmp_path, monkeypatch):
    """The UMIS trainer's loader must not open a label file, even when the configuration names labels."""
    _write_images_only(tmp_path / "data")
    (tmp_path / "data" / "labels").mkdir()
    for name in ("a", "b"):  # labels exist, so the configuration is valid, but reading one is an error
        tifffile.imwrite(tmp_path / "data" / "labels" / f"{name}.tif", np.zeros((6, 40, 48), np.uint8))
    document = _umis_document(tmp_path, tmp_path / "data")
    document["data"]["training"][1].update(labels="labels", binary_class="micro")
    config = parse_config(document)
    import trainer.datasets as datasets

    real_read = datasets.read_volume

    def guarded_read(path, *args, **kwargs):
        assert "labels" not in Path(path).parts, f"label read: {path}"
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(datasets, "read_volume", guarded_read)
    clear_case_cache()
    summary = run_training(config, command=["test"])
    assert summary.epochs_completed == 2


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("umis")
    config = parse_config(_umis_document(tmp_path))
    clear_case_cache()
    summary = run_training(config, command=["python", "-m", "trainer", "train", "umis"])
    assert summary.epochs_completed == 2 and not summary.interrupted
    return tmp_path / "run"


def test_unsupervised_run_logs_every_term_and_keeps_the_last_epoch(trained_run):
    import csv

    with (trained_run / LOG_CSV).open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for name in ("loss", "ac", "rank", "tight", "rec", "mv", "me", "c1", "c2", "fraction"):
        assert np.isfinite(float(rows[-1][f"train_{name}"])), name
        assert np.isfinite(float(rows[-1][f"val_{name}"])), name
    record = json.loads((trained_run / RUN_RECORD).read_text())
    assert record["finished"] and record["best_epoch"] == 2  # the last epoch, not a label-selected one
    assert record["decision_thresholds"]["selection"] == "fixed"
    assert record["decision_thresholds"]["thresholds"] == {"micro": 0.5}


def test_export_makes_an_adaptive_registry_entry(trained_run, tmp_path):
    entry = export_run(trained_run, name="umis-test", out_dir=tmp_path, modalities=["2PM"])
    assert entry["implementation"] == ADAPTIVE and entry["architecture"] == "UMISNet"
    assert entry["settings"]["default_adaptation_s"] == 0
    assert entry["settings"]["adaptation_loss_weights"] == "notes"
    assert entry["thresholds"] == {"micro": 0.5}
    assert entry["spacing_mm_zyx"] is not None
    mixed = export_run(
        trained_run, name="umis-mixed", out_dir=tmp_path, modalities=["2PM"], mixed_spacing=True
    )
    assert mixed["spacing_mm_zyx"] is None  # trained at several voxel sizes: inputs are not resampled


def test_a_supervised_network_cannot_be_trained_with_the_umis_loss(tmp_path):
    document = _umis_document(tmp_path)
    document["model"] = {
        "architecture": "VNet3D",
        "arguments": {"in_channels": 1, "base_channels": 2, "levels": 2},
    }
    document["training"]["patch_size_zyx"] = [16, 32, 32]
    with pytest.raises(ValueError, match="trains a UMIS network"):
        run_training(parse_config(document), command=["test"])


def test_label_free_trainers_refuse_several_processes(tmp_path):
    from trainer.distributed import DistributedContext
    from trainer.unsupervised import UnsupervisedTrainer

    # The UMIS step calls the unwrapped network's forward_all: DDP would never synchronise its gradients.
    two_ranks = DistributedContext(rank=0, world_size=2, local_world_size=2)
    trainer = UnsupervisedTrainer(parse_config(_umis_document(tmp_path)), command=["test"], context=two_ranks)
    with pytest.raises(
        ValueError, match="UMIS training runs in one process only .2 were started.*not torchrun"
    ):
        trainer.setup()
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------ adaptation


def test_crops_are_mirror_padded_for_thin_stacks():
    crops = random_crops(
        np.arange(5 * 7 * 9, dtype=np.float32).reshape(5, 7, 9), (16, 32, 32), 2, np.random.default_rng(0)
    )
    assert crops.shape == (2, 1, 16, 32, 32) and crops.dtype == np.float32
    assert set(np.unique(crops)) <= set(range(5 * 7 * 9))


def test_adaptation_keeps_to_its_budget_with_monotone_progress_and_leaves_the_original_alone(phantom_image):
    network = _tiny_network()
    before = _state(network)
    fractions: list[float] = []
    settings = AdaptationSettings(patch_size_zyx=(16, 64, 64), batch_size=1, learning_rate=1e-3)
    started = time.perf_counter()
    adapted, record = adapt_network(
        network, phantom_image, budget_s=2.0, settings=settings, progress=lambda f, _m: fractions.append(f)
    )
    elapsed = time.perf_counter() - started
    step = record["seconds"] / record["steps"]
    assert record["steps"] >= 1 and not record["collapsed"]
    assert elapsed <= 2.0 + 2 * step + 0.5  # budget + one step (and the copy and the final bookkeeping)
    assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] <= 1
    assert len(fractions) == record["steps"]
    assert adapted is not network and not adapted.training
    assert _same_state(_state(network), before)
    assert not _same_state(_state(adapted), before)
    assert set(record["last"]) >= {"loss", "ac", "rank", "c1", "c2", "fraction"}


def test_cancel_raises_and_the_weights_are_untouched(phantom_image):
    network = _tiny_network()
    before = _state(network)
    calls = iter([False, False, True])
    settings = AdaptationSettings(patch_size_zyx=(16, 64, 64), batch_size=1)
    with pytest.raises(SegmentationCancelled):
        adapt_network(network, phantom_image, budget_s=60, settings=settings, cancel=lambda: next(calls))
    assert _same_state(_state(network), before)


def test_the_collapse_guard_restores_the_original_on_a_constant_image():
    network = _tiny_network()
    settings = AdaptationSettings(patch_size_zyx=(16, 64, 64), batch_size=1, guard_steps=3)
    # A budget far beyond 3 steps: the guard, not the clock, must end the run (a busy machine took 12 s a step).
    adapted, record = adapt_network(
        network, np.full((16, 64, 64), 0.3, np.float32), budget_s=600, settings=settings
    )
    assert record["collapsed"] and record["steps"] == 3  # c1 == c2 on a constant image, every step
    assert adapted is network


def test_a_zero_budget_is_no_adaptation(phantom_image):
    network = _tiny_network()
    adapted, record = adapt_network(network, phantom_image, budget_s=0)
    assert adapted is network and record["steps"] == 0


# ------------------------------------------------------------------------------------------ the method


@pytest.fixture
def umis_registry(tmp_path) -> ModelRegistry:
    network = _tiny_network()
    sha256 = save_checkpoint(
        network,
        tmp_path / "umis-tiny.safetensors",
        architecture="UMISNet",
        arguments=dict(network.arguments),
        card={},
    )
    entry = {
        "name": "umis-tiny",
        "display_name": "UMIS (tiny)",
        "kind": "network",
        "implementation": ADAPTIVE,
        "architecture": "UMISNet",
        "arguments": dict(network.arguments),
        "weights": "umis-tiny.safetensors",
        "sha256": sha256,
        "modalities": ["2PM"],
        "default_for": ["2PM"],
        "vessel_classes": ["micro"],
        "patch_size_zyx": [16, 32, 32],
        "thresholds": {"micro": 0.5},
        "settings": {
            "default_adaptation_s": 0,
            "adaptation_patch_size_zyx": [16, 64, 64],
            "adaptation_batch_size": 1,
        },
    }
    (tmp_path / "models.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    return ModelRegistry.from_file(tmp_path / "models.json")


def test_the_umis_method_adapts_only_when_asked_and_never_changes_the_registry_file(umis_registry):
    from VesselSegLib.request import SegmentationRequest

    method = build_method(umis_registry.get("umis-tiny"), umis_registry)
    assert isinstance(method, AdaptiveMethod) and not method.supports_streaming
    phantom = make_phantom_case("2PM", (16, 64, 64), seed=9)
    weights = umis_registry.get("umis-tiny").weights_path
    checksum = weights.read_bytes()
    plain = segment_image(
        phantom.image,
        phantom.spacing_zyx,
        SegmentationRequest(modality="2PM", device="cpu"),
        registry=umis_registry,
    )
    assert plain.adaptation == {}
    adapted = segment_image(
        phantom.image,
        phantom.spacing_zyx,
        SegmentationRequest(modality="2PM", device="cpu", adaptation_budget_s=1.5, keep_probabilities=True),
        registry=umis_registry,
    )
    assert adapted.adaptation["steps"] >= 1 and adapted.adaptation["budget_s"] == 1.5
    assert adapted.class_map.shape == phantom.image.shape
    assert weights.read_bytes() == checksum


def test_the_command_line_and_the_logic_know_about_adaptation(umis_registry):
    import argparse

    from VesselSegLib.cli.options import add_in_memory_options, add_request_options
    from VesselSegLib.mrml.logic import VesselSegLogic

    parser = argparse.ArgumentParser()
    add_request_options(parser, default_modality="2PM")
    add_in_memory_options(parser)
    args = parser.parse_args(["--modality", "2PM", "--adapt-seconds", "120"])
    assert request_from_args(args).adaptation_budget_s == 120
    with pytest.raises(ValueError, match="between 0 s"):
        request_from_args(parser.parse_args(["--modality", "2PM", "--adapt-seconds", "900"]))
    logic = VesselSegLogic()
    logic.registry = umis_registry
    assert logic.methodCanAdapt("umis-tiny")
    logic.registry = ModelRegistry.default()
    assert not logic.methodCanAdapt("vnet-2pm")


def test_a_resumed_run_trains_the_same_weights_as_an_uninterrupted_one(trained_run, tmp_path):
    # Dropout draws from torch's generator: the loop seeds it per epoch, so a resumed run does not replay
    # the first epoch's masks (as it did when the generator was seeded once at setup).
    assert isinstance(UMISNet(**TINY_ARGUMENTS).dropout, torch.nn.Dropout3d)  # the default 0.2 is on
    config = parse_config(_umis_document(tmp_path))
    clear_case_cache()
    run_training(config.with_overrides(epochs=1), command=["test"])
    run_training(config, resume=True, command=["test"])
    first, again = load_file(trained_run / LAST_WEIGHTS), load_file(tmp_path / "run" / LAST_WEIGHTS)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
