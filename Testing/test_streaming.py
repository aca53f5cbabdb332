"""Streaming inference: tiles read from disk give exactly the in-memory result; bad files fail clearly."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile
import torch
from torch import nn

from VesselSegLib.errors import SegmentationCancelled
from VesselSegLib.inference.sliding_window import predict_probabilities
from VesselSegLib.inference.streaming import (
    IntensityNormalisation,
    SliceMedianSubtracted,
    estimate_normalisation,
    open_volume_lazily,
    peak_memory_bound_bytes,
    plan_stream_tiles,
    stream_segment_probabilities,
)
from VesselSegLib.preprocessing import normalize_intensity, subtract_slice_median

SHAPE = (37, 93, 78)  # not a multiple of the tile or the scan interval: edge-aligned last windows
PATCH = (8, 16, 16)
TILE = (16, 48, 40)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Thousands of tiny windows: one thread avoids a thread hand-over per call (10x faster on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _local_network() -> nn.Module:
    """A fixed 3x3x3 convolution, two classes: each output voxel sees its 26 neighbours (zero-padded at
    window borders, so the result depends on where the windows are)."""
    network = nn.Conv3d(1, 2, kernel_size=3, padding=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        network.weight.copy_(torch.randn(network.weight.shape, generator=generator))
        network.bias.copy_(torch.tensor([0.1, -0.2]))
    return network


def _stack(shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(0)
    stack = rng.integers(100, 900, size=shape).astype(np.uint16)
    bright = rng.random(shape) < 0.02  # 2 % bright "lumen" voxels set the upper percentile
    stack[bright] = rng.integers(3000, 4000, size=int(bright.sum()))
    return stack


def _in_memory(stack, *, overlap=0.5, batch_size=1, blend_mode="gaussian", patch=PATCH):
    return predict_probabilities(
        _local_network(),
        normalize_intensity(stack, "2PM"),
        patch_size_zyx=patch,
        overlap=overlap,
        batch_size=batch_size,
        blend_mode=blend_mode,
        device="cpu",
    )


def _stream(source, output, *, overlap=0.5, batch_size=1, output_dtype="float32", tile=TILE, **kwargs):
    normalisation = estimate_normalisation(source, "2PM", max_voxels=math.prod(source.shape))
    return stream_segment_probabilities(
        _local_network(),
        source,
        output,
        patch_size_zyx=kwargs.pop("patch", PATCH),
        normalisation=normalisation,
        tile_size_zyx=tile,
        overlap=overlap,
        batch_size=batch_size,
        output_dtype=output_dtype,
        device="cpu",
        **kwargs,
    )


def _write_page_by_page(path, stack):
    with tifffile.TiffWriter(path) as writer:
        for plane in stack:
            writer.write(plane, photometric="minisblack")


@pytest.mark.parametrize(
    ("writer", "reader"),
    [
        (lambda p, a: tifffile.imwrite(p, a, photometric="minisblack"), "_MemmapVolume"),
        (
            lambda p, a: tifffile.imwrite(p, a, photometric="minisblack", compression="zlib"),
            "_TiffPagesVolume",
        ),
        (_write_page_by_page, "_TiffPagesVolume"),
    ],
    ids=["uncompressed", "zlib", "page-by-page"],
)
def test_tiff_streaming_equals_in_memory_inference(tmp_path, writer, reader):
    stack = _stack()
    writer(tmp_path / "stack.tif", stack)
    with open_volume_lazily(tmp_path / "stack.tif") as source:
        assert type(source).__name__ == reader
        assert source.shape == SHAPE and source.dtype == np.uint16
        output = _stream(source, tmp_path / "probabilities.npy")
    result = np.load(output)
    assert result.shape == (2, *SHAPE) and result.dtype == np.float32
    np.testing.assert_array_equal(result, _in_memory(stack))  # bit for bit with one window per batch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probabilities.npy", "stack.tif"]


def _write_big_endian_nrrd(path, stack):
    header = (
        "NRRD0004\n# written by hand\ntype: unsigned short\ndimension: 3\n"
        f"sizes: {stack.shape[2]} {stack.shape[1]} {stack.shape[0]}\nendian: big\nencoding: raw\n"
        "space dimension: 3\nspace directions: (0.001,0,0) (0,0.001,0) (0,0,0.002)\n"
        'space units: "mm" "mm" "mm"\nmicroscope:=two-photon\n\n'
    )
    path.write_bytes(header.encode() + stack.astype(">u2").tobytes())


@pytest.mark.parametrize("kind", ["sitk-nrrd", "big-endian-nrrd", "npy", "fortran-npy"])
def test_raw_nrrd_and_npy_streaming_equals_in_memory_inference(tmp_path, kind):
    stack = _stack()
    if kind == "sitk-nrrd":
        path = tmp_path / "stack.nrrd"
        image = sitk.GetImageFromArray(stack)
        image.SetSpacing((0.001, 0.001, 0.002))
        sitk.WriteImage(image, str(path), useCompression=False)
    elif kind == "big-endian-nrrd":
        path = tmp_path / "stack.nrrd"
        _write_big_endian_nrrd(path, stack)
    else:
        path = tmp_path / "stack.npy"
        np.save(path, np.asfortranarray(stack) if kind == "fortran-npy" else stack)
    source = open_volume_lazily(path)
    assert source.shape == SHAPE and source.dtype == np.uint16
    if kind.endswith("nrrd"):
        assert source.spacing_zyx == pytest.approx((0.002, 0.001, 0.001))
    np.testing.assert_array_equal(source[3:9, -20:, 5], stack[3:9, -20:, 5])
    result = np.load(_stream(source, tmp_path / "probabilities.npy"))
    np.testing.assert_array_equal(result, _in_memory(stack))


def test_slice_median_levelling_streams_exactly_what_the_in_memory_step_gives(tmp_path):
    stack = _stack()
    stack += (np.arange(SHAPE[0], dtype=np.uint16) * 20)[:, None, None]  # background rising with depth
    np.save(tmp_path / "stack.npy", stack)
    levelled_in_memory = subtract_slice_median(stack)
    with open_volume_lazily(tmp_path / "stack.npy") as lazy:
        levelled = SliceMedianSubtracted(lazy)
        assert levelled.shape == SHAPE and levelled.dtype == np.float32
        np.testing.assert_array_equal(levelled[:, :, :], levelled_in_memory)
        np.testing.assert_array_equal(levelled[5:9, 10:30, 7:8], levelled_in_memory[5:9, 10:30, 7:8])
        result = np.load(_stream(levelled, tmp_path / "probabilities.npy"))
    np.testing.assert_array_equal(result, _in_memory(levelled_in_memory))
    assert not np.array_equal(result, _in_memory(stack))  # the step did change the input
    with pytest.raises(IndexError, match="slices"):
        levelled[3]


@pytest.mark.parametrize(
    ("shape", "overlap", "blend_mode"),
    [(SHAPE, 0.25, "gaussian"), (SHAPE, 0.0, "constant"), ((6, 50, 45), 0.5, "gaussian")],
    ids=["overlap-0.25", "no-overlap", "thinner-than-patch"],
)
def test_batched_streaming_matches_within_rounding_and_output_types(tmp_path, shape, overlap, blend_mode):
    stack = _stack(shape)
    expected = _in_memory(stack, overlap=overlap, batch_size=4, blend_mode=blend_mode)
    kwargs = {"overlap": overlap, "batch_size": 4, "blend_mode": blend_mode}
    # Only the network's rounding may differ: a batch of one window takes another CPU kernel (~1e-7).
    exact = np.load(_stream(stack, tmp_path / "p32.npy", **kwargs))
    np.testing.assert_allclose(exact, expected, rtol=0, atol=1e-6)
    half = np.load(_stream(stack, tmp_path / "p16.npy", output_dtype="float16", **kwargs))
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, expected, rtol=1e-3, atol=1e-4)
    quantised = np.load(_stream(stack, tmp_path / "p8.npy", output_dtype="uint8", **kwargs))
    assert quantised.dtype == np.uint8
    assert np.abs(quantised.astype(np.float32) / 255 - expected).max() <= 0.5 / 255 + 1e-6


def test_normalisation_matches_normalize_intensity_and_subsamples_large_volumes():
    stack = _stack()
    full = estimate_normalisation(stack, "2PM", max_voxels=stack.size)
    assert full.stride == 1 and full.sample_voxels == stack.size
    np.testing.assert_array_equal(full.apply(stack), normalize_intensity(stack, "2PM"))
    sampled = estimate_normalisation(stack, "2PM", max_voxels=20_000)
    assert sampled.stride == 3 and sampled.sample_voxels <= 20_000
    assert sampled.low == pytest.approx(full.low, rel=0.05) and sampled.high == pytest.approx(
        full.high, rel=0.05
    )
    swi = estimate_normalisation(stack.astype(np.float32), "SWI", max_voxels=stack.size)
    np.testing.assert_array_equal(swi.apply(stack), normalize_intensity(stack, "SWI"))
    region = stack[:4].astype(np.float32)
    IntensityNormalisation("2PM", 0.0, 1.0).apply(region)
    np.testing.assert_array_equal(region, stack[:4])  # the input is never modified


@pytest.mark.parametrize(
    ("shape", "tile", "patch", "overlap"),
    [((700, 1024, 1024), (128, 512, 512), (64, 128, 128), 0.25), ((37, 93, 78), TILE, PATCH, 0.5)],
)
def test_tile_cores_partition_the_volume_and_halos_stay_below_two_patches(shape, tile, patch, overlap):
    tiles = plan_stream_tiles(shape, tile_size_zyx=tile, patch_size_zyx=patch, overlap=overlap)
    covered = sum(math.prod(s.stop - s.start for s in t.core) for t in tiles)
    assert covered == math.prod(shape)
    for t in tiles:
        for axis, (read, core) in enumerate(zip(t.read, t.core, strict=True)):
            assert 0 <= read.start <= core.start < core.stop <= read.stop <= shape[axis]
            assert core.stop - core.start <= tile[axis]
            assert (read.stop - read.start) - (core.stop - core.start) < 2 * patch[axis]


def test_bad_files_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        open_volume_lazily(tmp_path / "missing.tif")
    (tmp_path / "junk.tif").write_bytes(b"this is not a tiff" * 10)
    with pytest.raises(ValueError, match="Cannot read TIFF .*damaged or not a TIFF"):
        open_volume_lazily(tmp_path / "junk.tif")
    tifffile.imwrite(tmp_path / "plane.tif", np.zeros((32, 32), np.uint16))
    with pytest.raises(ValueError, match="fewer than 3 axes.*multi-slice stack"):
        open_volume_lazily(tmp_path / "plane.tif")
    with tifffile.TiffWriter(tmp_path / "mixed.tif") as writer:
        writer.write(np.zeros((4, 32, 32), np.uint16), photometric="minisblack")
        writer.write(np.zeros((2, 24, 32), np.uint16), photometric="minisblack")
    with pytest.raises(ValueError, match=r"pages of different shapes: \(32, 32\).*\(24, 32\).*crop or pad"):
        open_volume_lazily(tmp_path / "mixed.tif")
    tifffile.imwrite(
        tmp_path / "channels.tif", np.zeros((5, 2, 16, 16), np.uint16), imagej=True, metadata={"axes": "ZCYX"}
    )
    with pytest.raises(ValueError, match="more than 3 axes.*split channels"):
        open_volume_lazily(tmp_path / "channels.tif")
    image = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.uint16))
    sitk.WriteImage(image, str(tmp_path / "packed.nrrd"), useCompression=True)
    with pytest.raises(ValueError, match="'gzip' encoding.*useCompression=False"):
        open_volume_lazily(tmp_path / "packed.nrrd")
    (tmp_path / "volume.nii.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(ValueError, match="Cannot stream volume.nii.gz.*uncompressed"):
        open_volume_lazily(tmp_path / "volume.nii.gz")
    np.save(tmp_path / "flat.npy", np.zeros((1, 8, 8)))
    with pytest.raises(ValueError, match="fewer than 3 axes"):
        open_volume_lazily(tmp_path / "flat.npy")
    with pytest.raises(ValueError, match="ending in .npy or .ome.zarr"):
        _stream(_stack((8, 16, 16)), tmp_path / "out.nrrd")


def test_cancel_or_failure_mid_way_leaves_no_file(tmp_path):
    stack = _stack()
    polls = {"n": 0}

    def cancel_after_a_few_batches() -> bool:
        polls["n"] += 1
        return polls["n"] > 200  # well after the first tile was written

    with pytest.raises(SegmentationCancelled):
        _stream(stack, tmp_path / "out.npy", batch_size=4, cancel=cancel_after_a_few_batches)
    assert polls["n"] > 200 and list(tmp_path.iterdir()) == []

    class FailsLater(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.calls = 0
            self.conv = _local_network()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            if self.calls > 100:
                raise RuntimeError("out of memory (simulated)")
            return self.conv(x)

    normalisation = estimate_normalisation(stack, "2PM")
    with pytest.raises(RuntimeError, match="simulated"):
        stream_segment_probabilities(
            FailsLater(),
            stack,
            tmp_path / "out.npy",
            patch_size_zyx=PATCH,
            normalisation=normalisation,
            tile_size_zyx=TILE,
            batch_size=4,
        )
    assert list(tmp_path.iterdir()) == []


def test_progress_rises_to_one(tmp_path):
    fractions: list[float] = []
    _stream(
        _stack((20, 40, 40)), tmp_path / "out.npy", batch_size=4, progress=lambda f, _m: fractions.append(f)
    )
    assert fractions == sorted(fractions) and fractions[-1] == 1.0 and len(fractions) > 3


def test_memory_bound_does_not_grow_with_the_volume():
    settings = {"tile_size_zyx": (128, 512, 512), "patch_size_zyx": (64, 128, 128), "channels": 2}
    generic = peak_memory_bound_bytes(**settings)
    stack_shape, huge_shape = (700, 1024, 1024), (7000, 10240, 10240)
    stack_2pm = peak_memory_bound_bytes(**settings, volume_shape_zyx=stack_shape)
    huge = peak_memory_bound_bytes(**settings, volume_shape_zyx=huge_shape)
    plane_term = 2 * 2 * huge_shape[1] * huge_shape[2]  # one uint16 page and its crop
    assert stack_2pm - 2 * 2 * 1024 * 1024 <= generic and huge - plane_term <= generic
    assert huge < 0.01 * 2 * math.prod(huge_shape)  # under 1 % of the uint16 volume itself
    # In memory, the 2PM stack needs more than 14 bytes per voxel: uint16, float32 copy, 2 classes, count map.
    assert stack_2pm < 0.2 * 14 * math.prod(stack_shape)
    # A bigger tile or batch costs more.
    assert peak_memory_bound_bytes(**{**settings, "tile_size_zyx": (256, 512, 512)}) > generic
    assert peak_memory_bound_bytes(**settings, batch_size=4) > generic


# ------------------------------------------------------------------------------------- vesselseg stream


def _registry_stack(tmp_path):
    from VesselSegLib.phantoms import make_phantom_case

    case = make_phantom_case(modality="2PM", shape_zyx=(24, 72, 64), seed=11)
    stack = np.clip(case.image, 0, 65535).astype(np.uint16)
    path = tmp_path / "stack.npy"
    np.save(path, stack)
    return stack, path


def test_stream_command_writes_the_in_memory_class_map_tile_by_tile(tmp_path):
    from VesselSegLib.cli.main import main
    from VesselSegLib.models.registry import ModelRegistry
    from VesselSegLib.postprocessing import build_class_map

    stack, path = _registry_stack(tmp_path)
    out = tmp_path / "out"
    argv = ["stream", str(path), "--out", str(out), "--method", "unet3d-baseline", "--spacing", "0.001", "0.001",
            "0.002", "--tile", "8", "32", "32", "--patch-size", "8", "32", "32", "--batch-size", "1",
            "--output-dtype", "float32", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(argv) == 0

    entry = ModelRegistry.default().get("unet3d-baseline")
    expected = predict_probabilities(
        entry.load_network(),
        normalize_intensity(stack, "2PM"),
        patch_size_zyx=(8, 32, 32),
        overlap=entry.overlap,
        batch_size=1,
        device="cpu",
    )
    streamed = np.load(out / "probabilities.npy")
    np.testing.assert_allclose(streamed, expected, rtol=0, atol=1e-6)
    expected_map = build_class_map(
        dict(zip(entry.vessel_classes, expected, strict=True)), spacing_zyx=(0.002, 0.001, 0.001)
    )
    labels = sitk.ReadImage(str(out / "labels.nrrd"))
    assert sitk.GetArrayFromImage(labels).shape == stack.shape
    assert labels.GetSpacing() == pytest.approx((0.001, 0.001, 0.002))
    differing = np.count_nonzero(sitk.GetArrayFromImage(labels) != expected_map)
    assert differing <= 2  # only voxels within 1e-6 of a threshold may flip
    assert np.count_nonzero(expected_map) > 100  # the phantom's vessels were found at all
    summary = json.loads((out / "summary.json").read_text())
    assert summary["streaming"]["tiles"] == len(
        plan_stream_tiles(stack.shape, tile_size_zyx=(8, 32, 32), patch_size_zyx=(8, 32, 32), overlap=0.25)
    )
    assert sum(summary["voxel_count"].values()) == np.count_nonzero(sitk.GetArrayFromImage(labels))
    assert summary["streaming"]["memory_bound_bytes_without_network"] > 0


def test_stream_command_levels_slices_with_the_shipped_2pm_model(tmp_path):
    from VesselSegLib.cli.main import main
    from VesselSegLib.models.registry import ModelRegistry

    stack, path = _registry_stack(tmp_path)
    out = tmp_path / "out"
    argv = ["stream", str(path), "--out", str(out), "--spacing", "0.001", "0.001", "0.005", "--tile", "16",
            "64", "64", "--batch-size", "1", "--output-dtype", "float32", "--device", "cpu", "--quiet",
            "--subtract-slice-median", "--precision", "float32"]  # fmt: skip
    # float32 pinned: "auto" runs vnet-2pm in bfloat16 on CPUs with native bfloat16, unlike the reference below.
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "vnet-2pm"  # the 2PM default
    assert summary["preprocessing"]["steps"] == ["subtract_slice_median"]
    entry = ModelRegistry.default().get("vnet-2pm")
    expected = predict_probabilities(
        entry.load_network(),
        normalize_intensity(subtract_slice_median(stack), "2PM"),
        patch_size_zyx=entry.patch_size_zyx,
        overlap=entry.overlap,
        batch_size=1,
        device="cpu",
    )
    np.testing.assert_allclose(np.load(out / "probabilities.npy"), expected, rtol=0, atol=1e-5)


def test_stream_command_refuses_bad_requests_and_leaves_no_folder(tmp_path, capsys):
    from VesselSegLib.cli.main import main

    _, path = _registry_stack(tmp_path)
    out = tmp_path / "out"
    # A .npy file has no voxel size.
    assert main(["stream", str(path), "--out", str(out), "--quiet", "--device", "cpu"]) == 1
    assert "voxel size" in capsys.readouterr().err
    # Ensembles and Frangi need the whole volume.
    argv = [
        "stream",
        str(path),
        "--out",
        str(out),
        "--method",
        "frangi",
        "--spacing",
        "1",
        "1",
        "1",
        "--quiet",
    ]
    assert main(argv) == 1
    assert "whole volume" in capsys.readouterr().err
    # A compressed NIfTI cannot be read region by region: the message says how to convert it.
    nifti = tmp_path / "stack.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.uint16)), str(nifti))
    assert main(["stream", str(nifti), "--out", str(out), "--quiet"]) == 1
    assert "Convert it" in capsys.readouterr().err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_ome_zarr_output_holds_what_the_npy_holds_with_its_geometry(tmp_path):
    """Streaming into an OME-Zarr image gives the .npy's voxels, chunked, with the voxel size and origin in
    its NGFF metadata; a failed run leaves no folder, and an existing one is never written over."""
    import zarr

    stack = _stack()
    from VesselSegLib.io import Grid

    geometry = {
        "grid": Grid(stack.shape, (0.001, 0.001, 0.002), (4.0, 5.0, 6.0)),
        "channel_names": ["a", "b"],
    }
    expected = np.load(_stream(stack, tmp_path / "probabilities.npy"))
    out = _stream(stack, tmp_path / "probabilities.ome.zarr", **geometry)
    group = zarr.open_group(str(out), mode="r")
    np.testing.assert_array_equal(group["0"][:], expected)
    assert group["0"].chunks[0] == 1  # one class per chunk
    image = group.attrs["ome"]["multiscales"][0]
    assert [axis["name"] for axis in image["axes"]] == ["c", "z", "y", "x"]
    transforms = {t["type"]: t for t in image["datasets"][0]["coordinateTransformations"]}
    assert transforms["scale"]["scale"] == pytest.approx([1, 0.002, 0.001, 0.001])
    assert transforms["translation"]["translation"] == pytest.approx([0, 6.0, 5.0, 4.0])  # (Z, Y, X)
    assert group.attrs["vesselseg"]["channels"] == ["a", "b"]

    with pytest.raises(ValueError, match="already exists"):  # written once, never over
        _stream(stack, out, **geometry)
    np.testing.assert_array_equal(zarr.open_group(str(out), mode="r")["0"][:], expected)

    polls = {"n": 0}

    def cancel_later() -> bool:
        polls["n"] += 1
        return polls["n"] > 200

    with pytest.raises(SegmentationCancelled):
        _stream(stack, tmp_path / "cancelled.ome.zarr", batch_size=4, cancel=cancel_later, **geometry)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probabilities.npy", "probabilities.ome.zarr"]


def test_stream_command_writes_ome_zarr_that_reads_back_on_the_input_grid(tmp_path):
    from VesselSegLib.cli.main import main

    stack, _ = _registry_stack(tmp_path)
    path = tmp_path / "stack.nrrd"
    image = sitk.GetImageFromArray(stack)
    image.SetSpacing((0.001, 0.001, 0.002))
    image.SetOrigin((1.5, -2.0, 3.25))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))  # X and Y swapped: kept beside the NGFF metadata
    sitk.WriteImage(image, str(path), useCompression=False)
    common = ["--method", "unet3d-baseline", "--tile", "8", "32", "32", "--patch-size", "8", "32", "32",
              "--batch-size", "1", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main(["stream", str(path), "--out", str(tmp_path / "nrrd"), *common]) == 0
    assert (
        main(["stream", str(path), "--out", str(tmp_path / "zarr"), "--output-format", "ome-zarr", *common])
        == 0
    )

    labels = open_volume_lazily(tmp_path / "zarr" / "labels.ome.zarr")
    reference = open_volume_lazily(tmp_path / "nrrd" / "labels.nrrd")
    np.testing.assert_array_equal(labels[:], reference[:])
    assert np.count_nonzero(labels[:]) > 100
    assert labels.grid == reference.grid == open_volume_lazily(path).grid  # spacing, origin, direction
    summary = json.loads((tmp_path / "zarr" / "summary.json").read_text())
    assert summary["files"] == {"labels": "labels.ome.zarr", "probabilities": "probabilities.ome.zarr"}
    import zarr

    probabilities = zarr.open_group(str(tmp_path / "zarr" / "probabilities.ome.zarr"), mode="r")
    np.testing.assert_array_equal(probabilities["0"][:], np.load(tmp_path / "nrrd" / "probabilities.npy"))
    assert probabilities.attrs["vesselseg"]["channels"] == ["artery", "vein", "micro"]
