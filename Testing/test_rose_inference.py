"""ROSE through the real inference path (issue 13): sliding windows blended on the 2x grid, the method kind,
the driver's result, the command line's files and the Slicer Logic's nodes, all on the fine grid's geometry
(spacing / 2, origin moved by -0.25 voxel through the direction, same direction)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import slicer
import slicer.util
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.inputs import SegmentationInputs
from VesselSegLib.inference.pipeline import run_segmentation, segment_image
from VesselSegLib.inference.sliding_window import (
    predict_outputs,
    predict_probabilities,
    predict_super_resolved_image,
)
from VesselSegLib.io import Volume, read_volume, write_volume
from VesselSegLib.methods import build_method
from VesselSegLib.models.checkpoint import save_checkpoint
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.models.rose import ROSENet, ROSEOutput
from VesselSegLib.mrml.logic import VesselSegLogic
from VesselSegLib.mrml.scene import get_ijk_to_ras, volume_node_from_volume
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.request import SegmentationRequest
from VesselSegLib.resources import RESOURCES_ENVIRONMENT_VARIABLE

IMPLEMENTATION = "VesselSegLib.methods.super_resolution:SuperResolutionNetwork"
ODD_SHAPE_ZYX = (13, 37, 41)
PHANTOM_SHAPE_ZYX = (16, 16, 16)


class NearestTwice(nn.Module):
    """Logits ``gain (x - 0.5)`` repeated 2x2x2 (nearest upsampling): every fine voxel's value is known, so
    any window blended out of place shows; ``forward_all`` also returns the upsampled input as SR image."""

    output_scale_zyx = (2, 2, 2)
    #: 13 slices are run in a 16-slice window: MONAI pads 1 slice before and 2 after, and must crop the
    #: output from fine slice 2 to 28.
    size_divisor_zyx = (4, 1, 1)

    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(4.0))

    def forward_all(self, x: torch.Tensor) -> ROSEOutput:
        up = F.interpolate(x, scale_factor=2, mode="nearest")
        return ROSEOutput(self.gain * (up - 0.5), up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x).logits


def _tiny_rose(*, sr_stream: bool = True, **arguments) -> ROSENet:
    """Two levels (windows a multiple of 2), one residual block: a few hundred parameters."""
    torch.manual_seed(0)
    return ROSENet(
        levels=2,
        base_channels=2,
        sr_channels=4,
        residual_blocks=1,
        sr_stream=sr_stream,
        fuse_levels=[0, 1] if sr_stream else None,
        **arguments,
    )


def _upsampled(image: np.ndarray) -> np.ndarray:
    return image.repeat(2, 0).repeat(2, 1).repeat(2, 2)


def _oblique(array: np.ndarray, spacing_xyz=(0.6, 0.5, 0.8)) -> Volume:
    angle = 0.4
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Volume(array, spacing_xyz, (12.0, -30.0, 4.0), direction)


def _assert_fine_grid(fine: Volume, coarse: Volume) -> None:
    np.testing.assert_allclose(fine.spacing_xyz, np.asarray(coarse.spacing_xyz) / 2, rtol=1e-6)
    np.testing.assert_allclose(fine.direction, coarse.direction, atol=1e-6)
    shift = coarse.direction @ (-0.25 * np.asarray(coarse.spacing_xyz))
    np.testing.assert_allclose(fine.origin_xyz, np.asarray(coarse.origin_xyz) + shift, atol=1e-5)
    assert fine.array.shape == tuple(2 * n for n in coarse.array.shape)


def _fine_ijk_to_ras(coarse: np.ndarray) -> np.ndarray:
    expected = coarse.copy()
    expected[:3, :3] /= 2
    expected[:3, 3] += coarse[:3, :3] @ np.full(3, -0.25)
    return expected


def _rose_entry(tmp_path, name="rose-tiny", **arguments) -> dict:
    network = _tiny_rose(**arguments)
    sha256 = save_checkpoint(
        network, tmp_path / f"{name}.safetensors", architecture="ROSENet", arguments=dict(network.arguments)
    )
    return {
        "name": name,
        "display_name": "ROSE (tiny)",
        "kind": "network",
        "implementation": IMPLEMENTATION,
        "architecture": "ROSENet",
        "arguments": dict(network.arguments),
        "weights": f"{name}.safetensors",
        "sha256": sha256,
        "modalities": ["TOF-MRA"],
        "vessel_classes": ["artery"],
        "patch_size_zyx": [8, 16, 16],
        "thresholds": {"artery": 0.5},
    }


@pytest.fixture
def rose_registry(tmp_path) -> ModelRegistry:
    models = tmp_path / "resources" / "Models"
    models.mkdir(parents=True)
    entries = [_rose_entry(models), _rose_entry(models, "rose-no-sr", sr_stream=False)]
    (models / "models.json").write_text(json.dumps({"schema_version": 1, "models": entries}))
    return ModelRegistry.from_file(models / "models.json")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom_case("TOF-MRA", PHANTOM_SHAPE_ZYX, seed=3)


# ----------------------------------------------------------------------------------------- sliding window


def test_a_rose_network_gives_probabilities_on_the_2x_grid_of_a_non_multiple_volume():
    image = np.random.default_rng(0).random(ODD_SHAPE_ZYX, dtype=np.float32)
    # Z (13) is padded to the window's 14 slices, Y and X are tiled: both crops must scale by 2.
    probabilities = predict_probabilities(
        _tiny_rose(out_channels=2), image, patch_size_zyx=(16, 16, 16), overlap=0.25, device="cpu"
    )
    assert probabilities.shape == (2, 26, 74, 82) and probabilities.dtype == np.float32
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0


@pytest.mark.parametrize(
    ("overlap", "blend_mode", "test_time_augmentation"),
    [
        (0.0, "gaussian", False),
        (0.25, "gaussian", False),
        (0.25, "constant", False),
        (0.25, "gaussian", True),
    ],
)
def test_windows_are_blended_in_place_on_the_fine_grid(overlap, blend_mode, test_time_augmentation):
    image = np.random.default_rng(1).random(ODD_SHAPE_ZYX, dtype=np.float32)
    network = NearestTwice()
    options = {
        "patch_size_zyx": (16, 16, 16),
        "overlap": overlap,
        "blend_mode": blend_mode,
        "test_time_augmentation": test_time_augmentation,
        "device": "cpu",
    }
    expected = 1.0 / (1.0 + np.exp(-4.0 * (_upsampled(image) - 0.5)))
    probabilities = predict_probabilities(network, image, **options)
    np.testing.assert_allclose(probabilities[0], expected, atol=2e-6)
    both = predict_outputs(network, image, outputs=("probabilities", "super_resolved"), **options)
    np.testing.assert_allclose(both["probabilities"], probabilities, atol=1e-6)
    np.testing.assert_allclose(both["super_resolved"], _upsampled(image), atol=2e-6)
    np.testing.assert_allclose(
        predict_super_resolved_image(network, image, **options), _upsampled(image), atol=2e-6
    )


def test_the_sr_image_needs_an_sr_stream_and_the_scale_must_match_the_output():
    image = np.zeros((8, 16, 16), np.float32)
    with pytest.raises(ValueError, match="no super-resolved image"):
        predict_super_resolved_image(
            _tiny_rose(sr_stream=False), image, patch_size_zyx=(8, 16, 16), device="cpu"
        )
    liar = NearestTwice()
    liar.output_scale_zyx = (1, 1, 1)
    with pytest.raises(ValueError, match=r"output_scale_zyx \(1, 1, 1\) says"):
        predict_probabilities(liar, image, patch_size_zyx=(8, 16, 16), device="cpu")
    with pytest.raises(ValueError, match="Outputs must be one or more of"):
        predict_outputs(liar, image, outputs=("labels",), patch_size_zyx=(8, 16, 16))


# ----------------------------------------------------------------------------------------- method and driver


def test_the_method_kind_takes_its_scale_from_the_network(rose_registry):
    method = build_method(rose_registry.get("rose-tiny"), rose_registry)
    assert method.output_scale_zyx == (2, 2, 2) and not method.supports_streaming


def test_segment_image_gives_a_2x_class_map_and_sr_image(rose_registry, phantom):
    result = segment_image(
        phantom.image,
        phantom.spacing_zyx,
        method="rose-tiny",
        device="cpu",
        keep_probabilities=True,
        test_time_augmentation=True,
        registry=rose_registry,
    )
    fine = tuple(2 * n for n in PHANTOM_SHAPE_ZYX)
    assert result.output_scale_zyx == (2, 2, 2) and result.class_map.shape == fine
    assert result.probabilities["artery"].shape == fine
    assert set(result.images) == {"super_resolved"}
    assert (
        result.images["super_resolved"].shape == fine and result.images["super_resolved"].dtype == np.float32
    )
    np.testing.assert_allclose(result.spacing_zyx, np.asarray(phantom.spacing_zyx) / 2)
    without = segment_image(
        phantom.image, phantom.spacing_zyx, method="rose-no-sr", device="cpu", registry=rose_registry
    )
    assert without.class_map.shape == fine and without.images == {}


def test_the_background_worker_hands_the_sr_image_back_as_an_array(rose_registry, phantom, tmp_path):
    """Slicer runs segmentations in a worker process; its result folder must carry the SR image as .npy."""
    from VesselSegLib.cli.job import RESULT_FOLDER, read_result, write_result

    result = segment_image(
        phantom.image, phantom.spacing_zyx, method="rose-tiny", device="cpu", registry=rose_registry
    )
    write_result(tmp_path, result)
    assert (tmp_path / RESULT_FOLDER / "image_super_resolved.npy").is_file()
    back = read_result(tmp_path)
    np.testing.assert_array_equal(back.images["super_resolved"], result.images["super_resolved"])
    np.testing.assert_array_equal(back.class_map, result.class_map)


# ----------------------------------------------------------------------------------------- files and nodes


def test_cli_writes_labels_and_super_resolved_image_on_the_fine_grid(
    rose_registry, tmp_path, phantom, monkeypatch
):
    from VesselSegLib.cli.main import main

    monkeypatch.setenv(RESOURCES_ENVIRONMENT_VARIABLE, str(tmp_path / "resources"))
    image = _oblique(phantom.image.astype(np.float32))
    write_volume(image, tmp_path / "mra.nii.gz")
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "mra.nii.gz"), "--out", str(out), "--method", "rose-tiny",
            "--device", "cpu", "--min-component-mm3", "0", "--no-models", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    coarse = read_volume(tmp_path / "mra.nii.gz")
    _assert_fine_grid(read_volume(out / "labels.nii.gz"), coarse)
    super_resolved = read_volume(out / "super_resolved.nrrd")
    _assert_fine_grid(super_resolved, coarse)
    assert super_resolved.array.dtype == np.float32
    summary = json.loads((out / "summary.json").read_text())
    assert summary["files"]["images"] == {"super_resolved": "super_resolved.nrrd"}
    assert summary["output_shape_zyx"] == [2 * n for n in PHANTOM_SHAPE_ZYX]


def test_logic_runs_rose_on_a_phantom_and_puts_every_output_on_the_fine_grid(rose_registry, scene, phantom):
    node = volume_node_from_volume(scene, _oblique(phantom.image), "mra")
    logic = VesselSegLogic()
    logic.registry = rose_registry
    outputs = logic.process(
        node,
        SegmentationRequest(method="rose-tiny", device="cpu", keep_probabilities=True, create_models=False),
    )
    expected = _fine_ijk_to_ras(get_ijk_to_ras(node))
    fine = tuple(2 * n for n in PHANTOM_SHAPE_ZYX)
    np.testing.assert_allclose(outputs.outputIJKToRAS, expected, atol=1e-9)
    sr_node = outputs.imageVolumeNodes["super_resolved"]
    assert sr_node.GetName() == "mra super-resolved"
    np.testing.assert_allclose(get_ijk_to_ras(sr_node), expected, atol=1e-9)
    np.testing.assert_array_equal(
        slicer.util.arrayFromVolume(sr_node), outputs.result.images["super_resolved"]
    )
    np.testing.assert_allclose(get_ijk_to_ras(outputs.probabilityVolumeNodes["artery"]), expected, atol=1e-9)
    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
        outputs.segmentationNode, labels, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
    )
    assert slicer.util.arrayFromVolume(labels).shape == fine
    np.testing.assert_allclose(get_ijk_to_ras(labels), expected, atol=1e-6)


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


def test_a_cancelled_rose_run_adds_no_node(rose_registry, scene, phantom):
    node = volume_node_from_volume(scene, _oblique(phantom.image), "mra")
    before = _node_ids(scene)
    logic = VesselSegLogic()
    logic.registry = rose_registry
    request = SegmentationRequest(method="rose-tiny", device="cpu", create_models=False)
    calls = []
    with pytest.raises(SegmentationCancelled):  # during the sliding window
        logic.process(node, request, cancelCheck=lambda: calls.append(1) or len(calls) > 4)
    assert _node_ids(scene) == before
    inputs = logic.prepareInputs(node, request)
    result = logic.computeSegmentation(inputs)
    messages = []
    with pytest.raises(SegmentationCancelled):  # once the SR volume is in the scene
        logic.addResultsToScene(
            inputs,
            result,
            progressCallback=lambda fraction, message: messages.append(message),
            cancelCheck=lambda: "Creating image volumes" in messages,
        )
    assert "Creating image volumes" in messages and _node_ids(scene) == before


def test_the_sr_image_is_brought_back_from_the_models_spacing_like_the_probabilities(tmp_path, phantom):
    entry = {**_rose_entry(tmp_path), "spacing_mm_zyx": [1.2, 0.6, 0.6]}
    (tmp_path / "models.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    result = run_segmentation(
        SegmentationInputs(image=_oblique(phantom.image, spacing_xyz=(0.4, 0.4, 0.8)), spacing_given=True),
        SegmentationRequest(method="rose-tiny", device="cpu", keep_probabilities=True),
        registry=ModelRegistry.from_file(tmp_path / "models.json"),
    )
    assert result.resampling["resample"]
    fine = tuple(2 * n for n in PHANTOM_SHAPE_ZYX)
    assert result.class_map.shape == result.images["super_resolved"].shape == fine
