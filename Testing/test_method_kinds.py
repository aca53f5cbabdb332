"""A new kind of method is one file and one registry entry (Testing/example_methods/), and the driver, the
command line and the Slicer Logic handle its two new abilities: an output grid finer than the input's
(super-resolution) and adaptation to the volume within a time budget (test-time training)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813
import slicer
import slicer.util

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.inputs import SegmentationInputs
from VesselSegLib.inference.pipeline import run_segmentation, segment_image
from VesselSegLib.io import Volume, read_volume, write_volume
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.mrml.logic import VesselSegLogic
from VesselSegLib.mrml.scene import (
    create_headless_scene,
    get_ijk_to_ras,
    release_headless_scene,
    volume_node_from_volume,
)
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.request import SegmentationRequest
from VesselSegLib.resources import RESOURCES_ENVIRONMENT_VARIABLE

ENTRIES = [
    {
        "name": "twice-finer",
        "kind": "twice-finer-threshold",
        "implementation": "example_methods.twice_finer_threshold:TwiceFinerThreshold",
        "settings": {"threshold": 0.5},
        "modalities": ["TOF-MRA"],
        "default_for": ["TOF-MRA"],
        "vessel_classes": ["artery"],
    },
    {
        "name": "adaptive",
        "kind": "adaptive-threshold",
        "implementation": "example_methods.adaptive_threshold:AdaptiveThreshold",
        "settings": {"max_steps": 40},
        "modalities": ["TOF-MRA"],
        "vessel_classes": ["artery"],
    },
]


@pytest.fixture
def registry(tmp_path):
    path = tmp_path / "Models" / "models.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"models": ENTRIES}))
    return ModelRegistry.from_file(path)


@pytest.fixture(scope="module")
def phantom():
    return make_phantom_case("TOF-MRA", (16, 32, 32), seed=4)


def _oblique_volume(array, spacing_xyz=(0.5, 0.5, 0.8)):
    angle = 0.3
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    return Volume(array, spacing_xyz, (10.0, -20.0, 5.0), direction)


def test_an_unknown_kind_without_implementation_is_refused_with_the_rule(tmp_path):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"models": [{**ENTRIES[0], "implementation": None}]}))
    with pytest.raises(ValueError, match='name the class of a new kind with "implementation"'):
        ModelRegistry.from_file(path)
    path.write_text(
        json.dumps({"models": [{**ENTRIES[0], "implementation": "example_methods.nowhere:Nothing"}]})
    )
    with pytest.raises(ValueError, match="cannot load its method class"):
        SegmentationRequest(method="twice-finer").resolve(ModelRegistry.from_file(path))


def test_a_finer_output_grid_covers_the_same_box(registry, phantom):
    image = _oblique_volume(phantom.image)
    result = run_segmentation(
        SegmentationInputs(image=image, spacing_given=True),
        SegmentationRequest(method="twice-finer", min_component_mm3=0),
        registry=registry,
    )
    assert result.class_map.shape == tuple(2 * n for n in phantom.image.shape)
    assert result.output_scale_zyx == (2, 2, 2)
    output = result.output_volume(image)
    np.testing.assert_allclose(output.spacing_xyz, np.asarray(image.spacing_xyz) / 2)
    # The box's first corner (centre of voxel 0 minus half a voxel along each axis) does not move.
    corner = lambda v: np.asarray(v.origin_xyz) - v.direction @ (np.asarray(v.spacing_xyz) / 2)  # noqa: E731
    np.testing.assert_allclose(corner(output), corner(image), atol=1e-9)
    # Each coarse artery voxel is mostly artery on the fine grid too (same place in the world).
    coarse = result.class_map.reshape(16, 2, 32, 2, 32, 2).mean(axis=(1, 3, 5))
    plain = segment_image(
        phantom.image, phantom.spacing_zyx, method="twice-finer", min_component_mm3=0, registry=registry
    )
    assert plain.class_map.shape == result.class_map.shape
    assert (coarse > 0.5).sum() > 0
    # Volumes are measured on the fine grid: an 8th of a coarse voxel each.
    assert result.volumes_mm3()["artery"] == pytest.approx(
        result.binary_mask("artery").sum() * np.prod(image.spacing_xyz) / 8
    )


def test_metrics_of_a_finer_output_against_input_grid_labels(registry, phantom):
    image = _oblique_volume(phantom.image)
    reference = image.with_array(phantom.class_map.astype(np.uint8))
    result = run_segmentation(
        SegmentationInputs(image=image, reference=reference, spacing_given=True),
        SegmentationRequest(method="twice-finer", min_component_mm3=0),
        registry=registry,
    )
    metrics, binary = result.evaluate_against(reference.array)
    assert not binary and 0.0 < metrics["artery"]["dice"] <= 1.0


def test_logic_puts_a_finer_segmentation_on_its_own_grid(registry, phantom):
    scene = create_headless_scene()
    try:
        image = _oblique_volume(phantom.image)
        node = volume_node_from_volume(scene, image, "input")
        logic = VesselSegLogic()
        logic.registry = registry
        outputs = logic.process(
            node, SegmentationRequest(method="twice-finer", keep_probabilities=True, create_models=False)
        )
        expected = get_ijk_to_ras(node).copy()
        expected[:3, :3] /= 2
        expected[:3, 3] += get_ijk_to_ras(node)[:3, :3] @ np.full(3, -0.25)
        np.testing.assert_allclose(outputs.outputIJKToRAS, expected, atol=1e-9)
        probability = outputs.probabilityVolumeNodes["artery"]
        np.testing.assert_allclose(get_ijk_to_ras(probability), expected, atol=1e-9)
        assert slicer.util.arrayFromVolume(probability).shape == result_shape(phantom)
        labels = slicer.vtkMRMLLabelMapVolumeNode()
        scene.AddNode(labels)
        slicer.vtkSlicerSegmentationsModuleLogic.ExportAllSegmentsToLabelmapNode(
            outputs.segmentationNode, labels, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY
        )
        assert slicer.util.arrayFromVolume(labels).shape == result_shape(phantom)
        np.testing.assert_allclose(get_ijk_to_ras(labels), expected, atol=1e-6)
    finally:
        release_headless_scene(scene)


def result_shape(phantom):
    return tuple(2 * n for n in phantom.image.shape)


def test_cli_writes_finer_labels_with_their_geometry(tmp_path, phantom, monkeypatch):
    from VesselSegLib.cli.main import main

    models = tmp_path / "resources" / "Models"
    models.mkdir(parents=True)
    (models / "models.json").write_text(json.dumps({"models": ENTRIES}))
    monkeypatch.setenv(RESOURCES_ENVIRONMENT_VARIABLE, str(tmp_path / "resources"))
    image = _oblique_volume(phantom.image.astype(np.float32))
    write_volume(image, tmp_path / "mra.nii.gz")
    write_volume(image.with_array(phantom.class_map.astype(np.uint8)), tmp_path / "labels.nii.gz")
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "mra.nii.gz"), "--out", str(out), "--reference", str(tmp_path / "labels.nii.gz"),
            "--min-component-mm3", "0", "--no-models", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    labels = read_volume(out / "labels.nii.gz")
    assert labels.array.shape == result_shape(phantom)
    np.testing.assert_allclose(labels.spacing_xyz, np.asarray(image.spacing_xyz) / 2, rtol=1e-6)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["output_shape_zyx"] == list(result_shape(phantom))
    assert summary["metrics_against_reference"]["artery"]["dice"] > 0
    segmentation = sitk.ReadImage(str(out / "segmentation.seg.nrrd"))
    np.testing.assert_allclose(segmentation.GetSpacing(), labels.spacing_xyz, rtol=1e-6)


def test_adaptation_runs_before_prediction_and_is_recorded(registry, phantom):
    fractions = []
    result = segment_image(
        phantom.image,
        phantom.spacing_zyx,
        method="adaptive",
        adaptation_budget_s=2.0,
        registry=registry,
        progress=lambda fraction, message: fractions.append((fraction, message)),
    )
    assert 1 <= result.adaptation["steps"] <= 40 and result.adaptation["seconds"] <= 2.5
    assert any("Adapting" in message for _, message in fractions)
    assert all(b[0] >= a[0] - 1e-9 for a, b in zip(fractions, fractions[1:], strict=False))
    assert "adapt_s" in result.timings and result.class_map.any()


def test_adaptation_stops_at_its_budget_and_can_be_cancelled(registry, phantom):
    result = segment_image(
        phantom.image, phantom.spacing_zyx, method="adaptive", adaptation_budget_s=1e-9, registry=registry
    )
    assert result.adaptation["steps"] <= 1
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3  # cancel during the adaptation steps

    with pytest.raises(SegmentationCancelled):
        segment_image(phantom.image, phantom.spacing_zyx, method="adaptive", registry=registry, cancel=cancel)
