"""Defects found by trying `vesselseg` as a new user would, each reproduced here (they failed before the
segmentation request, the checked inputs and the shared summary existed)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk  # noqa: N813

from VesselSegLib.cli.main import main
from VesselSegLib.io import Volume, read_volume, write_volume
from VesselSegLib.phantoms import make_phantom_case

SPACING_XYZ = (0.5, 0.5, 0.8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    case = make_phantom_case("TOF-MRA", (16, 32, 32), seed=2)
    image = Volume(case.image.astype(np.float32), SPACING_XYZ, (3.0, -4.0, 5.0))
    write_volume(image, folder / "tof.nii.gz")
    write_volume(image.with_array(case.class_map.astype(np.uint8)), folder / "labels.nii.gz")
    write_volume(image.with_array(np.ones(case.image.shape, np.uint8)), folder / "mask.nii.gz")
    return folder


def _run(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _segment(files, out, *extra):
    return [
        "segment",
        files / "tof.nii.gz",
        "--out",
        out,
        "--method",
        "frangi",
        "--no-models",
        "--quiet",
        *extra,
    ]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--batch-size", "0"], "batch size must be a whole number >= 1"),
        (["--batch-size", "-3"], "batch size must be a whole number >= 1"),
        (["--min-component-mm3", "nan"], "minimum component volume must be a finite number"),
        (["--patch-size", "7", "0", "7"], "3 positive whole numbers"),
        (["--threshold", "artery=2"], "within [0, 1]"),
    ],
)
def test_bad_option_values_are_refused_in_one_line(tmp_path, files, capsys, extra, message):
    code, err = _run(_segment(files, tmp_path / "out", *extra), capsys)
    assert code == 1 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_modality_is_case_insensitive(tmp_path, files, capsys):
    code, _ = _run(_segment(files, tmp_path / "out", "--modality", "tof-mra"), capsys)
    assert code == 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["modality"] == "TOF-MRA"


def test_batch_size_reaches_the_network(tmp_path, files, capsys, monkeypatch):
    import VesselSegLib.inference.sliding_window as sliding_window

    seen = []
    original = sliding_window.predict_probabilities

    def recording(*args, **kwargs):
        seen.append(kwargs["batch_size"])
        return original(*args, **kwargs)

    monkeypatch.setattr(sliding_window, "predict_probabilities", recording)
    argv = ["segment", files / "tof.nii.gz", "--out", tmp_path / "out", "--method", "unet3d-baseline",
            "--batch-size", "3", "--patch-size", "16", "32", "32", "--no-models", "--quiet", "--device", "cpu"]  # fmt: skip
    code, err = _run(argv, capsys)
    assert code == 0, err
    assert seen == [3]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["request"]["batch_size"] == 3


def test_reference_on_another_grid_is_refused_before_any_work(tmp_path, files, capsys):
    labels = read_volume(files / "labels.nii.gz")
    shifted = Volume(labels.array, (0.6, 0.5, 0.8), labels.origin_xyz, labels.direction)  # same shape
    write_volume(shifted, tmp_path / "other_grid.nii.gz")
    started = time.perf_counter()
    code, err = _run(_segment(files, tmp_path / "out", "--reference", tmp_path / "other_grid.nii.gz"), capsys)
    assert code == 1 and "reference" in err and "not on the input volume's grid" in err and "spacing" in err
    assert time.perf_counter() - started < 5 and not (tmp_path / "out").exists()


def test_a_missing_reference_is_found_before_the_run(tmp_path, files, capsys):
    code, err = _run(_segment(files, tmp_path / "out", "--reference", tmp_path / "nope.nii.gz"), capsys)
    assert code == 1 and "reference file" in err and "does not exist" in err
    assert list(tmp_path.iterdir()) == []


def test_spacing_applies_to_the_mask_too(tmp_path, files, capsys):
    mask = read_volume(files / "mask.nii.gz")
    write_volume(
        Volume(mask.array, (1.0, 1.0, 1.0), mask.origin_xyz, mask.direction), tmp_path / "mask_1mm.nii.gz"
    )
    # Without --spacing the two grids differ: refused, not segmented misaligned.
    code, err = _run(_segment(files, tmp_path / "a", "--mask", tmp_path / "mask_1mm.nii.gz"), capsys)
    assert code == 1 and "mask" in err and "not on the input volume's grid" in err
    # --spacing sets the voxel size of every file of the run, the mask included.
    code, err = _run(
        _segment(files, tmp_path / "b", "--mask", tmp_path / "mask_1mm.nii.gz", "--spacing", 0.5, 0.5, 0.8),
        capsys,
    )
    assert code == 0, err


def test_a_constant_companion_is_named_as_such(tmp_path, files, capsys):
    write_volume(
        Volume(np.full((16, 32, 32), 7.0, np.float32), SPACING_XYZ, (3.0, -4.0, 5.0)), tmp_path / "swi.nii.gz"
    )
    argv = ["segment", files / "tof.nii.gz", "--out", tmp_path / "out", "--method", "vcnet", "--companion",
            f"SWI={tmp_path / 'swi.nii.gz'}", "--no-models", "--quiet"]  # fmt: skip
    code, err = _run(argv, capsys)
    assert code == 1 and "SWI companion swi.nii.gz image is constant" in err


def test_a_folder_given_as_input_is_called_a_folder(tmp_path, capsys):
    code, err = _run(["segment", tmp_path, "--out", tmp_path / "out", "--quiet"], capsys)
    assert code == 1 and "is a folder, not a volume file" in err


def test_stream_patch_not_fitting_the_network_is_one_line(tmp_path, capsys):
    np.save(tmp_path / "stack.npy", np.random.default_rng(0).random((16, 32, 32)).astype(np.float32))
    argv = ["stream", tmp_path / "stack.npy", "--out", tmp_path / "out", "--spacing", 0.001, 0.001, 0.005,
            "--patch-size", 7, 7, 7, "--quiet"]  # fmt: skip
    code, err = _run(argv, capsys)
    assert code == 1 and "must be a multiple of" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stack.npy"]


def test_stream_and_segment_agree_voxel_for_voxel_on_an_oblique_stack(tmp_path, capsys):
    """Same class map and same geometry (spacing, origin, direction), and the same summary keys."""
    # At the 2PM default's training voxel size (5 x 1 x 1 um): streaming cannot resample.
    case = make_phantom_case(
        "2PM", (24, 72, 64), spacing_zyx=(0.005, 0.001, 0.001), seed=11, radius_model="2pm-physical"
    )
    angle = 0.4
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    stack = Volume(
        np.clip(case.image, 0, 65535).astype(np.uint16), (0.001, 0.001, 0.005), (1.5, -2.0, 3.0), direction
    )
    sitk.WriteImage(stack.to_sitk(), str(tmp_path / "stack.nrrd"), useCompression=False)  # raw: streamable
    common = ["--patch-size", 16, 64, 64, "--device", "cpu", "--quiet"]
    code, err = _run(["segment", tmp_path / "stack.nrrd", "--modality", "2PM", "--out", tmp_path / "seg",
                      "--min-component-mm3", 0, "--no-models", *common], capsys)  # fmt: skip
    assert code == 0, err
    code, err = _run(
        ["stream", tmp_path / "stack.nrrd", "--out", tmp_path / "str", "--tile", 16, 64, 64, *common], capsys
    )
    assert code == 0, err
    segmented, streamed = (
        read_volume(tmp_path / "seg" / "labels.nii.gz"),
        read_volume(tmp_path / "str" / "labels.nrrd"),
    )
    assert segmented.array.any()
    np.testing.assert_array_equal(segmented.array, streamed.array)
    for volume in (segmented, streamed):
        np.testing.assert_allclose(volume.spacing_xyz, stack.spacing_xyz, rtol=1e-6)
        np.testing.assert_allclose(volume.origin_xyz, stack.origin_xyz, atol=1e-6)
        np.testing.assert_allclose(volume.direction, direction, atol=1e-6)
    summaries = [json.loads((tmp_path / name / "summary.json").read_text()) for name in ("seg", "str")]
    assert list(summaries[0]) == list(summaries[1])
    assert summaries[0]["voxel_count"] == summaries[1]["voxel_count"]
