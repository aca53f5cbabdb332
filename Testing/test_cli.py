"""The ``vesselseg`` command on phantoms: every output written on the input's grid, or nothing at all."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest
import SimpleITK as sitk
import torch

from VesselSegLib.cli.main import main
from VesselSegLib.io import Volume, read_volume, write_volume
from VesselSegLib.models import save_checkpoint
from VesselSegLib.models.networks import NETWORK_CLASSES
from VesselSegLib.phantoms import make_phantom_case
from VesselSegLib.resources import RESOURCES_ENVIRONMENT_VARIABLE, resources_dir


class IntensityBandNet(torch.nn.Module):
    """A deterministic stand-in for a trained network: class c where the normalised intensity is near
    ``centers[c]`` (artery brightest). Real PyTorch module, real checkpoint, real registry entry; it only
    makes the expected output known in advance, so the test can require all three classes."""

    def __init__(self, *, centers=(0.85, 0.5, 0.15), half_width=0.2, sharpness=30.0):
        super().__init__()
        self.register_buffer("centers", torch.tensor(centers).view(1, -1, 1, 1, 1))
        self.half_width, self.sharpness = half_width, sharpness

    def forward(self, image):
        return self.sharpness * (self.half_width - (image - self.centers).abs())


NET_ARGS = {"half_width": 0.2}
OBLIQUE = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 degrees about Z


@pytest.fixture(scope="module")
def phantom_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("input")
    case = make_phantom_case("TOF-MRA", (24, 48, 40), seed=5)
    geometry = {"spacing_xyz": (0.5, 0.45, 0.8), "origin_xyz": (10.0, -20.0, 5.0), "direction": OBLIQUE}
    image = write_volume(Volume((case.image * 100).astype(np.int16), **geometry), folder / "mra.nrrd")
    labels = write_volume(Volume(case.class_map, **geometry), folder / "reference.nii.gz")
    return image, labels


@pytest.fixture
def tiny_resources(tmp_path, monkeypatch):
    """A Resources folder whose registry holds only the intensity-band network."""
    models = tmp_path / "resources" / "Models"
    models.mkdir(parents=True)
    monkeypatch.setitem(NETWORK_CLASSES, "IntensityBandNet", IntensityBandNet)
    sha = save_checkpoint(
        IntensityBandNet(**NET_ARGS),
        models / "tiny.safetensors",
        architecture="IntensityBandNet",
        arguments=NET_ARGS,
    )
    entry = {
        "name": "tiny",
        "kind": "network",
        "architecture": "IntensityBandNet",
        "arguments": NET_ARGS,
        "weights": "tiny.safetensors",
        "sha256": sha,
        "modalities": ["TOF-MRA"],
        "default_for": ["TOF-MRA"],
        "vessel_classes": ["artery", "vein", "micro"],
        "patch_size_zyx": [16, 32, 32],
        "overlap": 0.25,
    }
    (models / "models.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv(RESOURCES_ENVIRONMENT_VARIABLE, str(tmp_path / "resources"))
    return tmp_path / "resources"


def test_segment_writes_every_output_on_the_input_grid(tmp_path, phantom_files, tiny_resources, capsys):
    image_path, reference_path = phantom_files
    before = image_path.read_bytes()
    out = tmp_path / "result"
    code = main(
        [
            "segment",
            str(image_path),
            "--out",
            str(out),
            "--probabilities",
            "--reference",
            str(reference_path),
            "--min-component-mm3",
            "0",
            "--quiet",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert image_path.read_bytes() == before  # input untouched
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "labels.nii.gz",
        "models",
        "preview.png",
        "probability_artery.nii.gz",
        "probability_micro.nii.gz",
        "probability_vein.nii.gz",
        "segmentation.seg.nrrd",
        "summary.json",
    ]
    source = sitk.ReadImage(str(image_path))
    for name in ("labels.nii.gz", "probability_vein.nii.gz"):
        written = sitk.ReadImage(str(out / name))
        assert written.GetSize() == source.GetSize()
        np.testing.assert_allclose(written.GetSpacing(), source.GetSpacing(), rtol=1e-5)
        np.testing.assert_allclose(written.GetOrigin(), source.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(written.GetDirection(), source.GetDirection(), atol=1e-6)
    labels = read_volume(out / "labels.nii.gz").array
    assert {1, 2, 3} <= set(np.unique(labels))  # each band holds some voxels
    segmentation = sitk.ReadImage(str(out / "segmentation.seg.nrrd"))
    segment_names = {segmentation.GetMetaData(f"Segment{i}_Name") for i in range(3)}
    assert segment_names == {"Artery", "Vein", "Micro-vessel"}
    assert sorted(p.name for p in (out / "models").iterdir()) == [
        "Artery.vtk",
        "Micro-vessel.vtk",
        "Vein.vtk",
    ]
    assert (out / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "tiny" and len(summary["model_sha256"]) == 64
    voxel_mm3 = 0.5 * 0.45 * 0.8
    assert summary["volume_mm3"]["vein"] == pytest.approx((labels == 2).sum() * voxel_mm3, rel=1e-6)
    assert set(summary["metrics_against_reference"]) == {"artery", "vein", "micro", "vessel"}
    assert 0 <= summary["metrics_against_reference"]["vessel"]["dice"] <= 1
    assert summary["run_time_s"]["total"] > 0 and summary["device"] == "cpu"
    # Every stage is timed on its own and none is counted twice: the stages add up to at most the total.
    times = summary["run_time_s"]
    stages = ("read", "imports", "segment", "scene_and_models", "write")
    assert all(times[stage] >= 0 for stage in stages)  # imports: ~0 here, where the test already loaded them
    assert sum(times[stage] for stage in stages) <= times["total"] + 0.01
    # precision "auto": the machine's measured choice, and what the (unverified) tiny model ran in
    assert (
        summary["runtime"]["source"] in ("probe", "cache") and summary["runtime"]["timings_s"]["float32"] > 0
    )
    assert summary["runtime"]["precision_by_model"] == {"tiny": "float32"}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_ply_models_and_class_selection(tmp_path, phantom_files, tiny_resources):
    out = tmp_path / "veins"
    code = main(
        [
            "segment",
            str(phantom_files[0]),
            "--out",
            str(out),
            "--classes",
            "vein",
            "--model-format",
            "ply",
            "--quiet",
        ]
    )
    assert code == 0
    assert [p.name for p in (out / "models").iterdir()] == ["Vein.ply"]
    assert json.loads((out / "summary.json").read_text())["vessel_classes"] == ["vein"]


def test_graph_outputs(tmp_path, phantom_files, tiny_resources):
    out = tmp_path / "graph"
    assert (
        main(["segment", str(phantom_files[0]), "--out", str(out), "--graph", "--no-models", "--quiet"]) == 0
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["graph"]["segments"] > 0
    assert summary["graph"]["total_length_mm"] > 0
    graph = nx.read_graphml(out / "graph.graphml")
    assert graph.number_of_edges() == summary["graph"]["segments"]
    assert json.loads((out / "graph.json").read_text())["edges"]
    assert (out / summary["files"]["graph"]["centrelines"]).is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--method", "vcnet"], "known methods are: tiny"),
        (["--companion", "SWI"], "--companion takes MODALITY=PATH"),
        (["--modality", "CTA"], "choose one of"),
        (["--threshold", "aorta=0.3"], "unknown class 'aorta'"),
        (["--threshold", "artery"], "--threshold takes CLASS=VALUE"),
        (["--mask", "MISSING"], "does not exist"),
    ],
)
def test_failures_exit_non_zero_with_one_line_and_leave_nothing(
    tmp_path, phantom_files, tiny_resources, capsys, arguments, message
):
    out = tmp_path / "out"
    arguments = [str(tmp_path / "missing.nrrd") if a == "MISSING" else a for a in arguments]
    code = main(["segment", str(phantom_files[0]), "--out", str(out), "--quiet", *arguments])
    error = capsys.readouterr().err.strip()
    assert code == 1
    assert error.startswith("vesselseg: error:") and message in error and "\n" not in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resources"]  # no output, no staging folder


def test_output_folder_rules(tmp_path, phantom_files, tiny_resources, capsys):
    assert (
        main(["segment", str(phantom_files[0]), "--out", str(tmp_path / "no" / "such" / "out"), "--quiet"])
        == 1
    )
    assert "does not exist; create it first" in capsys.readouterr().err
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert main(["segment", str(phantom_files[0]), "--out", str(existing), "--quiet"]) == 1
    assert "already exists" in capsys.readouterr().err and (existing / "keep.txt").exists()
    # --force replaces only a previous VesselSeg output, never a folder holding the user's own files.
    assert main(["segment", str(phantom_files[0]), "--out", str(existing), "--force", "--quiet"]) == 1
    assert (existing / "keep.txt").read_text() == "mine" and not (existing / "summary.json").exists()
    previous = tmp_path / "previous"
    assert main(["segment", str(phantom_files[0]), "--out", str(previous), "--quiet"]) == 0
    assert main(["segment", str(phantom_files[0]), "--out", str(previous), "--force", "--quiet"]) == 0
    assert (previous / "summary.json").exists()


def test_bad_input_volume_is_reported(tmp_path, tiny_resources, capsys):
    flat = write_volume(Volume(np.full((8, 8, 8), 3, np.int16)), tmp_path / "flat.nrrd")
    assert main(["segment", str(flat), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "constant" in capsys.readouterr().err
    two_d = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.random.rand(16, 16).astype(np.float32)), str(two_d))
    assert main(["segment", str(two_d), "--out", str(tmp_path / "o"), "--quiet"]) == 1
    assert "3D" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_demo_with_the_shipped_default_model(tmp_path):
    """`vesselseg demo` as a user runs it: a separate process, the shipped registry and sample volume."""
    out = tmp_path / "demo"
    completed = subprocess.run(
        [sys.executable, "-m", "VesselSegLib.cli.main", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    sample = read_volume(resources_dir() / "SampleData" / "sample_tof_mra.nrrd")
    labels = read_volume(out / "labels.nii.gz")
    assert labels.array.shape == sample.array.shape
    np.testing.assert_allclose(labels.direction, sample.direction, atol=1e-6)
    for name in ("segmentation.seg.nrrd", "preview.png"):
        assert (out / name).is_file()
    if summary["method"] != "frangi":  # a trained network: the three coloured classes
        assert set(np.unique(labels.array)) == {0, 1, 2, 3}
        assert sorted(summary["volume_mm3"]) == ["artery", "micro", "vein"]
        assert all(volume > 0 for volume in summary["volume_mm3"].values())
        # Scored against the bundled phantom labels: the default model must beat the Frangi baseline's
        # vessel Dice (0.61 on the phantom test set) by a clear margin on the sample.
        assert summary["metrics_against_reference"]["vessel"]["dice"] > 0.7
        assert summary["metrics_against_reference"]["artery"]["dice"] > 0.7
    shutil.rmtree(out)


def test_two_photon_stack_with_preprocessing_and_a_binary_reference(tmp_path, caplog, capsys):
    import tifffile

    case = make_phantom_case(
        "2PM", (16, 128, 128), spacing_zyx=(0.005, 0.001, 0.001), seed=4251, radius_model="2pm-physical"
    )
    stack, reference = tmp_path / "stack.tif", tmp_path / "labels.tif"
    tifffile.imwrite(stack, case.image.astype(np.uint16))  # no voxel size in the file: --spacing gives it
    tifffile.imwrite(reference, np.where(case.class_map > 0, 255, 0).astype(np.uint8))  # a 0/255 mask
    out = tmp_path / "out"
    arguments = ["segment", str(stack), "--modality", "2PM", "--out", str(out), "--no-models", "--quiet"]
    arguments += ["--spacing", *(str(s) for s in case.spacing_zyx[::-1])]
    # Not --median-filter 3 here: the filter is for noisy stacks.
    options = ["--intensity-scale", "auto", "--subtract-slice-median"]
    assert main([*arguments, *options, "--reference", str(reference)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    record = summary["preprocessing"]
    assert summary["method"] == "vnet-2pm" and summary["voxel_count"]["micro"] > 0
    assert record["steps"] == ["scale_intensity", "subtract_slice_median"]
    assert record["intensity_scale_source"] == "estimated" and record["intensity_scale"] > 0
    # A binary mask is scored as vessel against vessel, not as a class map whose 255 matches no class.
    assert list(summary["metrics_against_reference"]) == ["vessel"]
    assert summary["metrics_against_reference"]["vessel"]["dice"] > 0.5
    assert "binary vessel mask" in caplog.text and "no voxel size" not in caplog.text
    for bad in ("-2", "bright"):
        with pytest.raises(SystemExit):
            main([*arguments[:-1], "--intensity-scale", bad])
    assert "--intensity-scale" in capsys.readouterr().err


def test_info_shows_the_machine_s_runtime_choice_and_probes_again_on_request(capsys):
    from VesselSegLib.inference import runtime

    runtime.forget_choices()
    assert main(["info", "--device", "cpu", "--probe-again"]) == 0
    lines = dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())
    measured = json.loads(lines["runtime"])
    assert measured["source"] == "probe" and measured["precision"] in ("float32", "bfloat16")
    assert json.loads(lines["exported_backends"]) == []  # the test session allows none
    assert main(["info", "--device", "cpu"]) == 0
    again = json.loads(
        dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())["runtime"]
    )
    assert (
        again["source"] == "probe" and again["timings_s"] == measured["timings_s"]
    )  # remembered, not re-run
    runtime.forget_choices()
    assert main(["info", "--device", "cpu"]) == 0
    cached = json.loads(
        dict(line.split(maxsplit=1) for line in capsys.readouterr().out.splitlines())["runtime"]
    )
    assert cached["source"] == "cache" and cached["precision"] == measured["precision"]
