"""Streaming on a Dask cluster and from OME-Zarr: the same outputs as one process reading the same stack."""

from __future__ import annotations

import contextlib
import json
import os
import signal

import numpy as np
import pytest
import SimpleITK as sitk
import torch

pytest.importorskip("distributed")
zarr = pytest.importorskip("zarr")

from VesselSegLib.cli.main import main  # noqa: E402
from VesselSegLib.io.lazy import open_volume_lazily  # noqa: E402
from VesselSegLib.phantoms import make_phantom_case  # noqa: E402

SPACING_ARGS = ["--spacing", "0.001", "0.001", "0.005"]
COMMON = ["--tile", "8", "40", "40", "--patch-size", "16", "32", "32", "--batch-size", "1", "--output-dtype", "float32", "--device", "cpu",
          "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def stack():
    case = make_phantom_case(
        "2PM", (20, 72, 64), spacing_zyx=(0.005, 0.001, 0.001), seed=11, radius_model="2pm-physical"
    )
    return np.clip(case.image, 0, 65535).astype(np.uint16)


def write_ome_zarr(path, array, spacing_zyx_um):
    """An OME-Zarr 0.4 image: one level "0", axes z/y/x in micrometres, chunks smaller than a tile."""
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.create_array("0", data=array, chunks=(1,) * (array.ndim - 3) + (4, 32, 32))
    group.attrs["multiscales"] = [
        {
            "version": "0.4",
            "axes": [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"],
            "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(spacing_zyx_um)}]}
            ],
        }
    ]


def outputs(folder):
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels.nrrd")))
    return np.load(folder / "probabilities.npy"), labels, json.loads((folder / "summary.json").read_text())


def test_ome_zarr_is_read_lazily_with_its_voxel_size(tmp_path, stack):
    path = tmp_path / "stack.zarr"
    write_ome_zarr(path, stack[None], (5.0, 1.0, 1.0))  # a singleton channel axis is dropped
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["multiscales"] = [
        {**group.attrs["multiscales"][0], "axes": [{"name": "c", "type": "channel"}] + group.attrs["multiscales"][0]["axes"],
         "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 5.0, 1.0, 1.0]}]}]}
    ]  # fmt: skip
    with open_volume_lazily(path) as volume:
        assert volume.shape == stack.shape and volume.dtype == np.uint16
        assert volume.spacing_zyx == pytest.approx((0.005, 0.001, 0.001))
        np.testing.assert_array_equal(volume[3:9, 10:50, 5:37], stack[3:9, 10:50, 5:37])
    plain = tmp_path / "plain.zarr"
    zarr.save_array(str(plain), np.zeros((4, 5, 6, 2), np.float32))
    with pytest.raises(ValueError, match="three axes"):
        open_volume_lazily(plain)


@pytest.fixture()
def one_thread():
    """The workers run one torch thread each: so does the single-process run compared with them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_a_local_dask_cluster_writes_what_one_process_writes(tmp_path, stack, one_thread):
    npy = tmp_path / "stack.npy"
    np.save(npy, stack)
    single = tmp_path / "single"
    assert main(["stream", str(npy), "--out", str(single), *SPACING_ARGS, *COMMON]) == 0
    probabilities, labels, summary = outputs(single)
    assert summary["streaming"]["tiles"] > 4 and summary["streaming"]["dask_workers"] is None

    zarr_path = tmp_path / "stack.zarr"
    write_ome_zarr(zarr_path, stack, (5.0, 1.0, 1.0))  # the voxel size comes from the metadata
    cluster = tmp_path / "cluster"
    assert main(["stream", str(zarr_path), "--out", str(cluster), "--workers", "2", *COMMON]) == 0
    got, got_labels, got_summary = outputs(cluster)
    assert got_summary["streaming"]["dask_workers"] == 2
    assert got_summary["runtime"]["backend_by_model"]["vnet-2pm"]["reason"].startswith("Dask workers")
    np.testing.assert_allclose(got, probabilities, rtol=0, atol=1e-6)
    assert np.count_nonzero(got_labels != labels) == 0
    assert got_summary["voxel_count"] == summary["voxel_count"]


def _die():
    """Run on a worker: it is killed the hard way (its nanny starts a new one)."""
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_mid_run_has_its_tiles_retried_and_the_output_is_unchanged(
    tmp_path, stack, one_thread
):
    from distributed import Client, LocalCluster

    from VesselSegLib.inference import distributed
    from VesselSegLib.inference.large_volume import segment_large_volume
    from VesselSegLib.request import SegmentationRequest

    npy = tmp_path / "stack.npy"
    np.save(npy, stack)
    request = SegmentationRequest(
        modality="2PM", method="vnet-2pm", patch_size_zyx=(16, 32, 32), batch_size=1, device="cpu",
        min_component_mm3=0.0, backend="pytorch",
    )  # fmt: skip
    plan = request.resolve()
    options = {"spacing_xyz": (0.001, 0.001, 0.005), "tile_size_zyx": (8, 40, 40), "output_dtype": "float32"}
    (tmp_path / "single").mkdir()
    segment_large_volume(npy, tmp_path / "single", plan, **options)
    expected = np.load(tmp_path / "single" / "probabilities.npy")

    original = distributed.DaskTiles.__call__
    killed = []

    def kill_one_worker_after_the_first_tile(self, tiles, patch):
        for number, item in enumerate(original(self, tiles, patch)):
            yield item
            if number == 0:
                victim = sorted(self.client.scheduler_info()["workers"])[0]
                with contextlib.suppress(Exception):  # the worker dies before answering, as it should
                    self.client.run(_die, workers=[victim])
                killed.append(victim)

    distributed.DaskTiles.__call__ = kill_one_worker_after_the_first_tile
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    try:
        (tmp_path / "cluster").mkdir()
        segment_large_volume(npy, tmp_path / "cluster", plan, dask_client=client, **options)
        assert killed and killed[0] not in client.scheduler_info()["workers"]  # it really died
    finally:
        distributed.DaskTiles.__call__ = original
        client.close()
        cluster.close()
    np.testing.assert_allclose(
        np.load(tmp_path / "cluster" / "probabilities.npy"), expected, rtol=0, atol=1e-6
    )
