"""The readers refuse damaged data, NaN/Inf voxels, sheared grids and folders; eager and lazy reading agree.

Each test here reproduces a defect of the former readers: SimpleITK read cut or corrupt NIfTI files as if
valid (missing voxels as zeros) and turned NIfTI NaN/Inf voxels into 0; the lazy TIFF reader and
``read_volume`` read ImageJ stacks in centimetres differently; NRRD ``space units`` were ignored by one
reader and applied by the other; ``labels.nrrd`` of ``vesselseg stream`` lost the input's origin and
direction; a sheared NIfTI grid was silently straightened; a folder was reported as missing.
"""

from __future__ import annotations

import dataclasses
import math

import nibabel as nib
import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

import VesselSegLib.io.layout as layout
from VesselSegLib.inference import streaming
from VesselSegLib.inference.large_volume import write_raw_nrrd_header
from VesselSegLib.io import Grid, Volume, open_volume_lazily, read_volume, write_volume
from VesselSegLib.io.lazy import open_volume_lazily as lazy_open

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def _rotation(degrees: float = 30.0) -> np.ndarray:
    """A direction rotated about two axes, so that no entry is 0 or 1."""
    a, b = np.deg2rad(degrees), np.deg2rad(degrees / 2)
    about_y = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    about_z = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return about_z @ about_y


def _oblique_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.4, 0.55, 1.7))
    image.SetOrigin((-12.5, 30.0, 4.25))
    image.SetDirection(tuple(_rotation().ravel()))
    return image


def _random(shape=(64, 128, 128), dtype=np.int16) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 1000, size=shape).astype(dtype)


# ------------------------------------------------------------------------------------- damaged files


def _cut_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _flip_crc(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[-8] ^= 0x01  # the gzip trailer: CRC-32 (4 bytes), then the length
    return bytes(damaged)


def _drop_trailer(data: bytes) -> bytes:
    return data[:-8]


@pytest.mark.parametrize(
    ("suffix", "damage", "why"),
    [
        (".nii.gz", _cut_half, "gzip data"),
        (".nii.gz", _flip_crc, "CRC check failed"),
        (".nii.gz", _drop_trailer, "gzip data"),
        (".nii", _cut_half, "voxel bytes its header promises"),
        (".nrrd", _cut_half, "voxel bytes its header promises"),  # raw NRRD
        (".mha", _cut_half, "voxel bytes its header promises"),
    ],
    ids=["nii.gz-cut", "nii.gz-crc", "nii.gz-no-trailer", "nii-cut", "nrrd-cut", "mha-cut"],
)
def test_cut_or_corrupt_files_are_refused_not_read_as_zeros(tmp_path, suffix, damage, why):
    array = _random()
    good = tmp_path / f"good{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(good), useCompression=suffix == ".nii.gz")
    np.testing.assert_array_equal(read_volume(good).array, array)  # the intact file reads exactly
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(
        ValueError, match=rf"bad{suffix} is truncated or damaged \(.*{why}.*\); re-export"
    ) as info:
        read_volume(bad)
    assert "\n" not in str(info.value)


def test_gzip_nrrd_with_a_bad_checksum_is_refused(tmp_path):
    path = tmp_path / "packed.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(_random()), str(path), useCompression=True)
    path.write_bytes(_flip_crc(path.read_bytes()))
    with pytest.raises(ValueError, match="packed.nrrd is truncated or damaged .*CRC"):
        read_volume(path)


@pytest.mark.parametrize("suffix", [".nrrd", ".tif"])
def test_lazy_files_cut_short_are_refused_when_opened(tmp_path, suffix):
    path = tmp_path / f"stack{suffix}"
    stack = _random((8, 64, 64), np.uint16)
    if suffix == ".nrrd":
        sitk.WriteImage(sitk.GetImageFromArray(stack), str(path), useCompression=False)
    else:  # uncompressed and contiguous: memory-mapped
        tifffile.imwrite(path, stack, photometric="minisblack")
    path.write_bytes(_cut_half(path.read_bytes()))
    with pytest.raises(
        ValueError, match=rf"stack{suffix} is truncated or damaged \(.* of the 65536 voxel bytes"
    ):
        open_volume_lazily(path)


# ------------------------------------------------------------------------------------------ NaN / Inf


def _with_non_finite(shape=(6, 7, 8)) -> np.ndarray:
    array = np.linspace(0, 1, math.prod(shape), dtype=np.float32).reshape(shape)
    array[1, 2, 3] = np.nan
    array[4, 0, 7] = np.inf
    array[5, 6, 0] = -np.inf
    return array


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd", ".mha", ".tif"])
def test_nan_and_inf_voxels_are_refused_by_every_format(tmp_path, suffix):
    array = _with_non_finite()
    path = tmp_path / f"float{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, array, photometric="minisblack")
    else:  # SimpleITK writes the NaN/Inf bytes; its NIfTI reader used to turn them into 0
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(ValueError, match=rf"Input float{suffix} has 3 NaN/Inf voxels; replace them"):
        read_volume(path)


def test_nifti_non_finite_count_is_exact_across_chunk_borders(tmp_path, monkeypatch):
    # Chunks of 997 bytes: values straddle chunk borders, and the 352-byte header sits in the first one.
    monkeypatch.setattr(layout, "_CHUNK_BYTES", 997)
    array = np.random.default_rng(1).random((9, 10, 11)).astype(np.float32)
    flat = array.reshape(-1)
    flat[np.random.default_rng(2).choice(flat.size, 37, replace=False)] = np.nan
    path = tmp_path / "many.nii.gz"
    nib.save(nib.Nifti1Image(array.T, np.eye(4)), path)  # nibabel: X fastest, as the file stores it
    with pytest.raises(ValueError, match="has 37 NaN/Inf voxels"):
        read_volume(path)
    flat[np.isnan(flat)] = 0.5
    nib.save(nib.Nifti1Image(array.T, np.eye(4)), path)
    np.testing.assert_array_equal(read_volume(path).array, array)


@pytest.mark.parametrize("kind", ["npy", "raw-nrrd", "tiff-pages"])
def test_lazy_reads_refuse_regions_with_nan(tmp_path, kind):
    stack = np.ones((30, 12, 10), np.float32)
    stack[20, 5, 5] = np.nan
    if kind == "npy":
        path = tmp_path / "stack.npy"
        np.save(path, stack)
    elif kind == "raw-nrrd":
        path = tmp_path / "stack.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(stack), str(path), useCompression=False)
    else:
        path = tmp_path / "stack.tif"
        tifffile.imwrite(path, stack, photometric="minisblack", compression="zlib")
    with open_volume_lazily(path) as lazy:
        np.testing.assert_array_equal(lazy[0:15], stack[0:15])  # regions without NaN read as before
        with pytest.raises(ValueError, match=r"has 1 NaN/Inf voxels in slices 15 to 24; replace them"):
            lazy[15:25]


# --------------------------------------------------------------------------------- TIFF voxel sizes


def _imagej_cm(path):
    # As ImageJ saves a stack calibrated in cm: unit "cm" and ResolutionUnit 3 (centimetre).
    tifffile.imwrite(
        path,
        np.zeros((4, 8, 8), np.uint16),
        imagej=True,
        resolution=(1 / 0.0002, 1 / 0.0002),
        resolutionunit=3,
        metadata={"spacing": 0.0005, "unit": "cm", "axes": "ZYX"},
    )
    return (0.002, 0.002, 0.005)


def _imagej_micron_escaped(path):
    tifffile.imwrite(
        path,
        np.zeros((4, 8, 8), np.uint16),
        imagej=True,
        resolution=(1 / 0.497, 1 / 0.497),
        metadata={"spacing": 2.5, "unit": "\\u00B5m", "axes": "ZYX"},
    )
    return (0.000497, 0.000497, 0.0025)


def _ome_nanometres(path):
    sizes = {"PhysicalSizeX": 994, "PhysicalSizeY": 994, "PhysicalSizeZ": 5000}
    units = {f"{key}Unit": "nm" for key in sizes}
    tifffile.imwrite(
        path, np.zeros((4, 8, 8), np.uint16), ome=True, metadata={"axes": "ZYX", **sizes, **units}
    )
    return (0.000994, 0.000994, 0.005)


@pytest.mark.parametrize("write", [_imagej_cm, _imagej_micron_escaped, _ome_nanometres])
def test_tiff_voxel_size_is_the_same_read_eagerly_and_lazily(tmp_path, write):
    path = tmp_path / "stack.tif"
    expected_xyz = write(path)
    np.testing.assert_allclose(read_volume(path).spacing_xyz, expected_xyz, rtol=1e-9)
    with open_volume_lazily(path) as lazy:
        np.testing.assert_allclose(lazy.spacing_xyz, expected_xyz, rtol=1e-9)
        np.testing.assert_allclose(lazy.spacing_zyx, expected_xyz[::-1], rtol=1e-9)


def test_sidecar_ome_and_non_length_units(tmp_path, caplog):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    sidecar = tmp_path / "plain.xml.txt"
    sidecar.write_text(
        '<OME><Image><Pixels PhysicalSizeX="0.5" PhysicalSizeY="0.5" PhysicalSizeZ="2" /></Image></OME>'
    )
    assert read_volume(path, metadata_path=sidecar).spacing_zyx == pytest.approx((0.002, 0.0005, 0.0005))
    with open_volume_lazily(path, metadata_path=sidecar) as lazy:
        assert lazy.spacing_zyx == pytest.approx((0.002, 0.0005, 0.0005))
    # ImageJ's "pixel" is no length: no spacing is made up from it (the old readers took it for um).
    uncalibrated = tmp_path / "pixels.tif"
    tifffile.imwrite(uncalibrated, np.zeros((3, 8, 8), np.uint8), imagej=True,
                     resolution=(2.0, 2.0), metadata={"spacing": 3.0, "unit": "pixel"})  # fmt: skip
    with open_volume_lazily(uncalibrated) as lazy:
        assert lazy.spacing_zyx is None
    assert read_volume(uncalibrated).spacing_xyz == (0.001, 0.001, 0.001)  # the documented default
    assert "ImageJ unit 'pixel' is not a length" in caplog.text


# ------------------------------------------------------------------------------------ NRRD geometry


def test_oblique_nrrd_has_one_geometry_eagerly_lazily_and_in_labels_nrrd(tmp_path):
    array = _random((9, 11, 13), np.uint16)
    source = tmp_path / "oblique.nrrd"
    sitk.WriteImage(_oblique_image(array), str(source), useCompression=False)
    eager = read_volume(source)
    with open_volume_lazily(source) as lazy:
        np.testing.assert_array_equal(lazy[:, :, :], array)
        assert lazy.grid.same_as(eager.grid, tolerance=1e-9), lazy.grid.describe_difference(eager.grid)
        np.testing.assert_allclose(lazy.direction, _rotation(), atol=1e-12)
        assert lazy.origin_xyz == pytest.approx((-12.5, 30.0, 4.25))
        origin, direction, spacing_zyx = lazy.origin_xyz, lazy.direction, lazy.spacing_zyx

    labels_path = tmp_path / "labels.nrrd"
    offset = write_raw_nrrd_header(
        labels_path, array.shape, np.uint8, spacing_zyx, origin_xyz=origin, direction=direction
    )
    labels = (array % 4).astype(np.uint8)
    with open(labels_path, "r+b") as handle:
        handle.truncate(offset + labels.size)
    mapped = np.memmap(labels_path, dtype=np.uint8, mode="r+", offset=offset, shape=labels.shape)
    mapped[:] = labels
    mapped.flush()
    del mapped
    image = sitk.ReadImage(str(labels_path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), labels)
    np.testing.assert_allclose(image.GetOrigin(), eager.origin_xyz, atol=1e-6)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), eager.direction, atol=1e-6)
    np.testing.assert_allclose(image.GetSpacing(), eager.spacing_xyz, rtol=1e-6)
    assert read_volume(labels_path).grid.same_as(eager.grid)
    assert nrrd.read_header(str(labels_path))["space"] == "left-posterior-superior"


def test_ras_nrrd_with_micrometre_units_reads_alike_both_ways(tmp_path):
    array = _random((5, 6, 7), np.uint16)
    header = {
        "space": "right-anterior-superior",
        "space directions": np.diag([0.5, 0.6, 2.0]) @ _rotation().T,  # rows: the I, J, K axes
        "space origin": np.array([100.0, -50.0, 25.0]),
        "space units": ["um", "um", "um"],
        "encoding": "raw",
    }
    path = tmp_path / "ras.nrrd"
    nrrd.write(str(path), array.T.copy(), header)  # pynrrd takes (X, Y, Z)
    eager = read_volume(path)
    expected_direction = LPS_FROM_RAS @ _rotation()
    np.testing.assert_allclose(eager.spacing_xyz, (0.0005, 0.0006, 0.002), rtol=1e-9)  # um -> mm
    np.testing.assert_allclose(eager.origin_xyz, (-0.1, 0.05, 0.025), rtol=1e-9)
    np.testing.assert_allclose(eager.direction, expected_direction, atol=1e-9)
    np.testing.assert_array_equal(eager.array, array)
    with open_volume_lazily(path) as lazy:
        assert lazy.grid.same_as(eager.grid, tolerance=1e-9), lazy.grid.describe_difference(eager.grid)


def test_detached_nrrd_header_streams_through_pynrrd(tmp_path):
    array = _random((6, 9, 10), np.int16)
    # Written by hand: pynrrd's writer puts "byte skip" down as a key/value pair ("byte skip:=16").
    (tmp_path / "stack.nhdr").write_text(
        "NRRD0004\ntype: short\ndimension: 3\nsizes: 10 9 6\nendian: big\nencoding: raw\n"
        "spacings: 0.001 0.001 0.002\ndata file: stack.raw\nbyte skip: 16\n\n"
    )
    (tmp_path / "stack.raw").write_bytes(b"\0" * 16 + array.astype(">i2").tobytes())
    with open_volume_lazily(tmp_path / "stack.nhdr") as lazy:
        np.testing.assert_array_equal(lazy[2:5, 3:, 1], array[2:5, 3:, 1])
        assert lazy.spacing_zyx == pytest.approx((0.002, 0.001, 0.001))
    assert streaming.open_volume_lazily is lazy_open  # the old import path still works


# ----------------------------------------------------------------------------------- sheared grids


def _sheared_direction() -> np.ndarray:
    sheared = np.array([[1.0, 0.3, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    return sheared / np.linalg.norm(sheared, axis=0)


def test_sheared_nifti_is_refused_instead_of_silently_straightened(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = LPS_FROM_RAS @ _sheared_direction() * np.array([0.5, 0.7, 1.2])
    image = nib.Nifti1Image(np.zeros((5, 4, 3), np.int16), affine)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)  # nibabel stores the nearest orthogonal grid there
    path = tmp_path / "sheared.nii.gz"
    nib.save(image, path)
    # What happened before: ITK read the orthogonal qform, giving another grid than the sform's.
    itk_direction = np.reshape(sitk.ReadImage(str(path)).GetDirection(), (3, 3))
    assert np.abs(itk_direction - _sheared_direction()).max() > 0.1
    with pytest.raises(
        ValueError, match="sheared.nii.gz has a sheared voxel grid .*resample it onto an orthogonal"
    ):
        read_volume(path)


def test_sheared_nrrd_is_refused_and_never_written_as_nifti(tmp_path):
    volume = Volume(np.zeros((3, 4, 5), np.int16), (0.5, 0.7, 1.2), (1.0, 2.0, 3.0), _sheared_direction())
    with pytest.raises(ValueError, match="sheared .*write .nrrd or .mha"):
        write_volume(volume, tmp_path / "labels.nii.gz")
    assert not (tmp_path / "labels.nii.gz").exists()
    path = write_volume(volume, tmp_path / "sheared.nrrd")  # NRRD keeps the grid exactly ...
    np.testing.assert_allclose(np.reshape(sitk.ReadImage(str(path)).GetDirection(), (3, 3)), volume.direction)
    with pytest.raises(ValueError, match="sheared voxel grid"):  # ... but VesselSeg does not segment it
        read_volume(path)
    sitk.WriteImage(volume.to_sitk(), str(tmp_path / "raw.nrrd"), useCompression=False)
    with pytest.raises(ValueError, match="sheared voxel grid"):
        open_volume_lazily(tmp_path / "raw.nrrd")


def test_oblique_nifti_written_by_nibabel_keeps_its_affine(tmp_path):
    affine = np.eye(4)
    affine[:3, :3] = LPS_FROM_RAS @ _rotation() * np.array([0.4, 0.55, 1.7])
    affine[:3, 3] = LPS_FROM_RAS @ np.array([-12.5, 30.0, 4.25])
    path = tmp_path / "oblique.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((13, 11, 9), np.int16), affine), path)  # float32 sform: rounding
    volume = read_volume(path)  # not mistaken for a sheared grid
    np.testing.assert_allclose(
        volume.grid.ijk_to_lps()[:3], (np.diag([-1, -1, 1, 1]) @ affine)[:3], atol=1e-5
    )


# ------------------------------------------------------------------------------------ folder inputs


def test_a_folder_is_named_a_folder_and_dicom_gets_a_conversion_hint(tmp_path):
    for reader in (read_volume, open_volume_lazily):
        with pytest.raises(
            ValueError, match=r"is a folder, not a volume file; give a .nii.gz, .nrrd, .mha or .tif"
        ):
            reader(tmp_path)
    series = tmp_path / "series"
    (series / "1").mkdir(parents=True)
    (series / "1" / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 64)  # a DICOM Part 10 preamble
    with pytest.raises(ValueError, match="DICOM series, convert it to NIfTI or NRRD first"):
        read_volume(series)


# --------------------------------------------------------------------------------------------- Grid


def test_grid_compares_describes_and_maps_indices_like_itk():
    image = _oblique_image(np.zeros((9, 11, 13), np.uint8))
    grid = Volume.from_sitk(image).grid
    assert grid.shape_zyx == (9, 11, 13) and len(grid.direction) == 9
    for index in [(0, 0, 0), (12, 0, 8), (3, 10, 4)]:
        world = grid.ijk_to_lps() @ np.array([*index, 1.0])
        np.testing.assert_allclose(world[:3], image.TransformIndexToPhysicalPoint(index), atol=1e-9)

    assert grid.same_as(dataclasses.replace(grid, origin_xyz=(-12.5 + 1e-6, 30.0, 4.25)))
    shifted = dataclasses.replace(grid, origin_xyz=(-12.0, 30.0, 4.25))
    assert not grid.same_as(shifted)
    assert grid.describe_difference(shifted) == "origin (-12.5, 30, 4.25) vs (-12, 30, 4.25) mm"
    coarser = dataclasses.replace(grid, spacing_xyz=(0.8, 0.55, 1.7), shape_zyx=(9, 11, 7))
    assert grid.describe_difference(coarser) == (
        "shape (Z, Y, X) (9, 11, 13) vs (9, 11, 7); spacing (0.4, 0.55, 1.7) vs (0.8, 0.55, 1.7) mm"
    )
    assert grid.describe_difference(grid) == ""
    # Relative to the voxel: 1e-4 mm is a tenth of a 1 um microscopy voxel, not "the same".
    micro = Grid((4, 4, 4), (0.001, 0.001, 0.001))
    assert not micro.same_as(dataclasses.replace(micro, spacing_xyz=(0.0011, 0.001, 0.001)))
    assert not micro.same_as(dataclasses.replace(micro, origin_xyz=(0.0005, 0.0, 0.0)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        grid.spacing_xyz = (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="spacing must be positive"):
        Grid((4, 4, 4), (0.0, 1.0, 1.0))
