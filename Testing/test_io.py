"""Volume I/O keeps spacing, origin and direction; TIFF stacks get their voxel size; bad files fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from VesselSegLib.io import Volume, read_volume, write_volume
from VesselSegLib.resources import vesselnn_dir

VESSELNN = vesselnn_dir()


def _oblique_volume(dtype=np.int16) -> Volume:
    rng = np.random.default_rng(0)
    angle = np.deg2rad(30)
    direction = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    return Volume(
        array=rng.integers(0, 1000, size=(7, 11, 13)).astype(dtype),
        spacing_xyz=(0.4, 0.55, 1.7),
        origin_xyz=(-12.5, 30.0, 4.25),
        direction=direction,
    )


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_geometry_and_values(tmp_path, suffix):
    volume = _oblique_volume()
    path = write_volume(volume, tmp_path / f"volume{suffix}")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, volume.array)
    assert back.array.shape == (7, 11, 13)
    np.testing.assert_allclose(back.spacing_xyz, volume.spacing_xyz, rtol=1e-6)
    np.testing.assert_allclose(back.origin_xyz, volume.origin_xyz, atol=1e-5)
    np.testing.assert_allclose(back.direction, volume.direction, atol=1e-6)
    assert back.spacing_zyx == pytest.approx((1.7, 0.55, 0.4))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_with_array_keeps_grid_and_rejects_other_shapes():
    volume = _oblique_volume()
    labels = volume.with_array(np.zeros(volume.array.shape, np.uint8))
    assert labels.spacing_xyz == volume.spacing_xyz and labels.origin_xyz == volume.origin_xyz
    with pytest.raises(ValueError, match="differs from the volume's grid"):
        volume.with_array(np.zeros((2, 2, 2)))


def test_tiff_round_trip_with_ome_spacing_in_micrometres(tmp_path):
    volume = Volume(
        np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6), spacing_xyz=(0.000994, 0.000994, 0.005)
    )
    path = write_volume(volume, tmp_path / "stack.tif")
    back = read_volume(path)
    np.testing.assert_array_equal(back.array, volume.array)
    np.testing.assert_allclose(back.spacing_xyz, (0.000994, 0.000994, 0.005), rtol=1e-6)


def test_tiff_without_metadata_uses_given_spacing(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.ones((3, 8, 8), np.uint8), photometric="minisblack")
    assert read_volume(path).spacing_xyz == (0.001, 0.001, 0.001)  # 1 um default, with a warning
    assert read_volume(path, spacing_xyz=(0.002, 0.002, 0.005)).spacing_xyz == (0.002, 0.002, 0.005)


@pytest.mark.skipif(not VESSELNN.is_dir(), reason="VesselNN data not present (set VESSELSEG_VESSELNN)")
def test_reads_vesselnn_lzw_stack_with_sidecar_ome_metadata():
    name = "burgess2014_tgMouse"
    volume = read_volume(f"{VESSELNN}/images/{name}.tif", metadata_path=f"{VESSELNN}/metadata/{name}.xml.txt")
    assert volume.array.shape == (15, 512, 512)
    np.testing.assert_allclose(volume.spacing_zyx, (0.005, 0.000994, 0.000994))


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="Unsupported file type"):
        read_volume(tmp_path / "notes.txt")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="Cannot read TIFF"):
        read_volume(tmp_path / "broken.tif")
    (tmp_path / "broken.nrrd").write_bytes(b"NRRD0004\ntype: what\n")
    with pytest.raises(ValueError, match="Cannot read"):
        read_volume(tmp_path / "broken.nrrd")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((2, 3, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="3D"):
        read_volume(tmp_path / "rgb.tif")


def test_write_needs_existing_folder(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        write_volume(_oblique_volume(), tmp_path / "missing" / "out.nii.gz")
