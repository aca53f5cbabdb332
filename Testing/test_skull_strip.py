"""Skull-stripped training and inference: ``skull_strip = true`` phantom sources and ``"normalisation":
"brain-mask"`` registry entries (the 3D-SLD paper's TOF-MRA volumes come with brain masks)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from trainer.config import PhantomSource, parse_config
from trainer.datasets import clear_case_cache, load_cases
from trainer.export import export_run
from trainer.loop import run_training
from VesselSegLib.inference.large_volume import segment_large_volume
from VesselSegLib.inference.pipeline import segment_image
from VesselSegLib.models.registry import ModelRegistry
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.preprocessing import normalize_intensity
from VesselSegLib.request import SegmentationRequest

REPO = Path(__file__).resolve().parents[1]
SLD_TOF = REPO / "trainer" / "configs" / "sld_tof.toml"
SHAPE = (32, 48, 48)


def _source(skull_strip: bool) -> PhantomSource:
    return PhantomSource(
        modality="TOF-MRA",
        count=1,
        shape_zyx=SHAPE,
        seed=77,
        class_remap={"vein": "artery", "micro": "artery"},
        skull_strip=skull_strip,
    )


def _brain_box(mask: np.ndarray) -> tuple[slice, ...]:
    hits = np.argwhere(mask)
    return tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(hits.min(0), hits.max(0), strict=True))


def test_label_free_skull_stripped_phantoms_are_the_brain_alone_normalised_inside_it():
    clear_case_cache()
    phantom = make_phantom_case("TOF-MRA", SHAPE, seed=77)
    assert not phantom.brain_mask.all()  # the phantom has an outside to strip
    (case,) = load_cases(_source(True), ["artery"], images_only=True)
    box = _brain_box(phantom.brain_mask)
    inside = phantom.brain_mask[box]
    assert case.image.shape == inside.shape  # cut to the brain's bounding box
    assert case.target.shape[0] == 0 and case.vessel_voxels.size == 0  # still no label
    assert np.all(case.image[~inside] == 0)
    expected = normalize_intensity(phantom.image, "TOF-MRA", phantom.brain_mask)[box]
    np.testing.assert_array_equal(case.image, expected)
    # The whole-head case is normalised over the whole volume: another image.
    (whole,) = load_cases(_source(False), ["artery"], images_only=True)
    assert whole.image.shape == SHAPE and np.any(whole.image[~phantom.brain_mask] != 0)


def test_labelled_skull_stripped_phantoms_keep_their_grid_and_labels():
    clear_case_cache()
    phantom = make_phantom_case("TOF-MRA", SHAPE, seed=77)
    (stripped,) = load_cases(_source(True), ["artery"])
    (whole,) = load_cases(_source(False), ["artery"])
    assert stripped.image.shape == SHAPE
    assert np.all(stripped.image[~phantom.brain_mask] == 0)
    np.testing.assert_array_equal(stripped.target, whole.target)


def _write_tof_files(root: Path, seed: int, mask_shape=None) -> object:
    """A TOF-MRA phantom as a user's files: images/, labels/ and brain/ (its brain mask), NIfTI."""
    phantom = make_phantom_case("TOF-MRA", SHAPE, seed=seed)
    mask = phantom.brain_mask if mask_shape is None else np.ones(mask_shape, dtype=bool)
    for folder, array in (("images", phantom.image), ("labels", phantom.class_map), ("brain", mask)):
        image = sitk.GetImageFromArray(
            np.asarray(array, dtype=np.float32 if folder == "images" else np.uint8)
        )
        image.SetSpacing(tuple(reversed(phantom.spacing_zyx)))
        (root / folder).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(root / folder / f"case{seed}.nii.gz"))
    return phantom


def _file_document(tmp_path: Path, root: Path, **source_keys) -> dict:
    document = _document(tmp_path)
    source = {"kind": "files", "modality": "TOF-MRA", "root": str(root), "images": "images/*.nii.gz"}
    source.update(labels="labels", binary_class="artery", **source_keys)
    document["data"]["training"] = [source]
    document["data"]["validation"] = [dict(source)]
    return document


def test_file_sources_are_stripped_with_their_brain_masks(tmp_path):
    phantom = _write_tof_files(tmp_path / "data", seed=31)
    config = parse_config(_file_document(tmp_path, tmp_path / "data", skull_strip=True, brain_masks="brain"))
    source = config.data.training[0]
    assert source.skull_strip and "skull-stripped" in source.describe()
    clear_case_cache()
    (free,) = load_cases(source, ["artery"], images_only=True)
    box = _brain_box(phantom.brain_mask)
    expected = normalize_intensity(phantom.image, "TOF-MRA", phantom.brain_mask)[box]
    np.testing.assert_allclose(free.image, expected, atol=1e-6)
    assert free.target.shape[0] == 0 and free.box == tuple((0, n) for n in expected.shape)
    (labelled,) = load_cases(source, ["artery"])
    assert labelled.image.shape == SHAPE and np.all(labelled.image[~phantom.brain_mask] == 0)
    np.testing.assert_array_equal(labelled.target[0], phantom.class_map > 0)


def test_file_source_brain_mask_errors_name_the_fix(tmp_path):
    _write_tof_files(tmp_path / "data", seed=31)
    for keys in ({"skull_strip": True}, {"brain_masks": "brain"}):
        with pytest.raises(ValueError, match="give both or neither"):
            parse_config(_file_document(tmp_path, tmp_path / "data", **keys))
    with pytest.raises(ValueError, match="brain_masks: file .* does not exist"):
        parse_config(_file_document(tmp_path, tmp_path / "data", skull_strip=True, brain_masks="nowhere"))
    _write_tof_files(tmp_path / "other", seed=32, mask_shape=(16, 16, 16))
    config = parse_config(_file_document(tmp_path, tmp_path / "other", skull_strip=True, brain_masks="brain"))
    clear_case_cache()
    with pytest.raises(ValueError, match="must match voxel for voxel"):
        load_cases(config.data.training[0], ["artery"], images_only=True)


def _document(tmp_path: Path, skull_strip=(True, True)) -> dict:
    document = tomllib.loads(SLD_TOF.read_text())
    document["model"]["arguments"] = {
        "in_channels": 1,
        "widths": [4, 8, 8],
        "embedding_channels": 8,
        "clusters": 4,
    }
    for key, strip in zip(("training", "validation"), skull_strip, strict=True):
        source = document["data"][key][0]
        source.update(count=2 if key == "training" else 1, shape_zyx=list(SHAPE), skull_strip=strip)
    document["training"].update(
        epochs=2, patches_per_epoch=1, batch_size=1, patch_size_zyx=[16, 16, 16], num_threads=1
    )
    document["training"]["sld"].update(stage_epochs=[1, 1, 0], reference_count=4, pseudo_label_views=2)
    document["output"] = {"run_dir": str(tmp_path / "run")}
    return document


def test_a_configuration_that_mixes_stripped_and_whole_heads_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mix skull-stripped and whole-head sources"):
        parse_config(_document(tmp_path, skull_strip=(True, False)))
    document = _document(tmp_path)
    document["data"]["training"][0]["skull_strip"] = "yes"
    with pytest.raises(ValueError, match="skull_strip"):
        parse_config(document)


@pytest.fixture(scope="module")
def stripped_registry(tmp_path_factory) -> ModelRegistry:
    tmp_path = tmp_path_factory.mktemp("skull-strip")
    clear_case_cache()
    summary = run_training(parse_config(_document(tmp_path)), command=["test"])
    assert summary.epochs_completed == 2
    entry = export_run(tmp_path / "run", name="sld-stripped", out_dir=tmp_path, modalities=["TOF-MRA"])
    assert entry["normalisation"] == "brain-mask"
    card = json.loads((tmp_path / "sld-stripped.card.json").read_text())
    assert "skull-stripped" in card["normalisation"]
    (tmp_path / "models.json").write_text(json.dumps({"schema_version": 1, "models": [entry]}))
    return ModelRegistry.from_file(tmp_path / "models.json")


def test_a_skull_stripped_model_needs_a_mask_and_reads_only_the_brain(stripped_registry):
    phantom = make_phantom_case("TOF-MRA", SHAPE, seed=9)
    request = SegmentationRequest(
        modality="TOF-MRA", method="sld-stripped", device="cpu", keep_probabilities=True
    )
    with pytest.raises(ValueError, match="needs a brain mask"):
        segment_image(phantom.image, phantom.spacing_zyx, request, registry=stripped_registry)
    result = segment_image(
        phantom.image, phantom.spacing_zyx, request, brain_mask=phantom.brain_mask, registry=stripped_registry
    )
    assert result.class_map.shape == SHAPE and not result.class_map[~phantom.brain_mask].any()
    # Whatever lies outside the brain (scalp, air, a bright artefact) cannot change the segmentation.
    altered = phantom.image.copy()
    altered[~phantom.brain_mask] = np.random.default_rng(0).uniform(
        0, 5 * phantom.image.max(), (~phantom.brain_mask).sum()
    )
    again = segment_image(
        altered, phantom.spacing_zyx, request, brain_mask=phantom.brain_mask, registry=stripped_registry
    )
    for name, probability in result.probabilities.items():
        np.testing.assert_array_equal(again.probabilities[name], probability)


def test_streaming_refuses_a_skull_stripped_model(stripped_registry, tmp_path):
    plan = SegmentationRequest(
        modality="TOF-MRA", method="sld-stripped", device="cpu", min_component_mm3=0
    ).resolve(stripped_registry)
    path = tmp_path / "volume.npy"
    np.save(path, make_phantom_case("TOF-MRA", SHAPE, seed=9).image)
    with pytest.raises(ValueError, match="needs a brain mask"):
        segment_large_volume(path, tmp_path, plan, spacing_xyz=(0.5, 0.5, 0.8))


def test_an_unknown_normalisation_in_the_registry_is_refused(stripped_registry, tmp_path):
    entry = stripped_registry.get("sld-stripped")
    assert entry.normalisation == "brain-mask"
    raw = json.loads((entry.directory / "models.json").read_text())
    raw["models"][0]["normalisation"] = "z-score"
    (tmp_path / "models.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="normalisation 'z-score'"):
        ModelRegistry.from_file(tmp_path / "models.json")


def test_the_cluster_diagnostic_scores_a_stripped_run_inside_the_brain(stripped_registry, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("sld_cluster_ap", REPO / "benchmarks" / "sld_cluster_ap.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    run = stripped_registry.get("sld-stripped").directory / "run"
    assert module.main([str(run), "--seeds", "5001"]) == 0
    out = capsys.readouterr().out
    assert "skull-stripped, scored inside the brain" in out
    row = next(line for line in out.splitlines() if line.startswith("| 5001 |"))
    share = float(row.strip("|").split("|")[1])
    phantom = make_phantom_case("TOF-MRA", module.SHAPE_ZYX, spacing_zyx=(0.8, 0.5, 0.5), seed=5001)
    inside = (phantom.class_map > 0)[phantom.brain_mask].mean()
    assert share == pytest.approx(inside, abs=1e-4)  # the vessel share of the brain, not of the volume
    # The stage-3 table: shares of reliable pseudo-label voxels, map and votes, and of voxels called vessel.
    rows = [line for line in out.splitlines() if line.startswith("| 5001 |")]
    assert len(rows) == 2 and "Reliable voxels of stage 3" in out
    shares = [float(cell) for cell in rows[1].strip("|").split("|")[2:]]
    assert len(shares) == 3 and all(0.0 <= value <= 1.0 for value in shares)


def test_the_methods_listing_says_which_models_need_a_mask(stripped_registry, monkeypatch, capsys):
    from VesselSegLib.cli.main import run_methods

    monkeypatch.setattr(ModelRegistry, "default", classmethod(lambda cls: stripped_registry))
    run_methods()
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("sld-stripped") and line.endswith("needs --mask (trained skull-stripped)")


def test_the_slicer_logic_refuses_apply_without_a_mask_and_segments_inside_one(stripped_registry, scene):
    import slicer.util

    from VesselSegLib.mrml.logic import VesselSegLogic
    from VesselSegLib.mrml.scene import set_ijk_to_ras

    phantom = make_phantom_case("TOF-MRA", SHAPE, seed=9)
    ijk_to_ras = np.diag([*phantom.spacing_zyx[::-1], 1.0])
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "TOF")
    slicer.util.updateVolumeFromArray(volume, phantom.image)
    set_ijk_to_ras(volume, ijk_to_ras)
    logic = VesselSegLogic()
    logic.registry = stripped_registry
    request = SegmentationRequest(
        modality="TOF-MRA", method="sld-stripped", device="cpu", create_models=False
    )

    # The panel's Apply button is disabled with this message before anything runs.
    ok, message = logic.isValidInputOutputData(volume, request)
    assert not ok and "needs a brain mask" in message and "Swiss Skull Stripper" in message
    nodes_before = scene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="needs a brain mask"):
        logic.process(volume, request)
    assert scene.GetNumberOfNodes() == nodes_before

    mask = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "brain")
    slicer.util.updateVolumeFromArray(mask, phantom.brain_mask.astype(np.uint8))
    set_ijk_to_ras(mask, ijk_to_ras)
    ok, message = logic.isValidInputOutputData(volume, request, maskVolume=mask)
    assert ok, message
    outputs = logic.process(volume, request, maskVolume=mask)
    class_map = outputs.result.class_map
    assert class_map.shape == SHAPE and not class_map[~phantom.brain_mask].any()
