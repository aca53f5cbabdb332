"""Streaming tiles on a Dask cluster: the same halo-exact tiles as one process, computed by many.

``vesselseg stream STACK --workers N`` (a local cluster of N one-thread processes) or ``--dask ADDRESS`` (a
running ``dask scheduler``) hands each tile of :func:`~VesselSegLib.inference.streaming.plan_stream_tiles`
to a worker as one task. A task carries only the plan (:class:`TileJob`: the input's path, the model's
registry entry, the global normalisation, the window settings) and the tile; each worker opens the input and
loads the model once (cached per worker process) and returns the tile's core probabilities. The client writes
each core where it belongs as results arrive, in any order, so the output is the single-process one: every
core voxel is blended from the same windows with the same weights (``streaming.py``'s exactness argument
holds per tile). Dask re-runs the tasks of a worker that dies; a tile is written once, from whichever try
finished.

Workers read the input by its path, so it must be on storage they all see (a shared file system, or the
local disk for ``--workers``). They run the network on the CPU with PyTorch in the request's precision.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from VesselSegLib.inference.streaming import IntensityNormalisation, SliceMedianSubtracted, StreamTile

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileJob:
    """What a worker needs to compute any tile: plain, picklable values."""

    input_path: str
    subtract_slice_median: bool
    entry: Any  # the registry's ModelEntry: name, weights path and checksum, architecture
    normalisation: IntensityNormalisation
    patch_size_zyx: tuple[int, int, int]
    overlap: Any
    batch_size: int
    blend_mode: str
    precision: str
    test_time_augmentation: bool


_NETWORKS: dict[tuple[str, str | None], Any] = {}


def _worker_network(entry):
    """The model, loaded (and its checksum verified) once per worker process."""
    key = (entry.name, entry.sha256)
    if key not in _NETWORKS:
        _NETWORKS[key] = entry.load_network()
    return _NETWORKS[key]


@functools.lru_cache(maxsize=4)
def _worker_source(path: str, subtract_slice_median: bool):
    from VesselSegLib.io.lazy import open_volume_lazily

    source = open_volume_lazily(path)
    return SliceMedianSubtracted(source) if subtract_slice_median else source


def compute_tile(job: TileJob, tile: StreamTile) -> np.ndarray:
    """The float32 probabilities ``(C, *core shape)`` of one tile, as the single-process stream computes them."""
    import torch

    from VesselSegLib.inference.sliding_window import predict_probabilities

    torch.set_num_threads(1)  # one task per worker thread; Dask runs the parallelism
    raw = np.asarray(_worker_source(job.input_path, job.subtract_slice_median)[tile.read])
    image = job.normalisation.apply(raw)
    probabilities = predict_probabilities(
        _worker_network(job.entry),
        image,
        patch_size_zyx=job.patch_size_zyx,
        overlap=job.overlap,
        batch_size=job.batch_size,
        device="cpu",
        blend_mode=job.blend_mode,
        precision=job.precision,
        test_time_augmentation=job.test_time_augmentation,
    )
    return np.ascontiguousarray(probabilities[(slice(None), *tile.core_in_read)], dtype=np.float32)


def connect(*, address: str | None = None, workers: int | None = None):
    """A ``distributed.Client`` to the scheduler at ``address``, or to a new local cluster of ``workers``
    one-thread processes (closed with the client). Raises a one-line ValueError when Dask is missing or the
    scheduler cannot be reached."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ValueError("Distributed streaming needs Dask: pip install 'dask[distributed]'.") from None
    for name in ("distributed", "tornado"):  # their INFO lines would drown the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)
    if address is not None:
        try:
            return Client(address, timeout="20s")
        except OSError as error:
            raise ValueError(
                f"Cannot reach the Dask scheduler at {address} ({error}); check the address."
            ) from None
    if workers is None or workers < 1:
        raise ValueError(f"--workers must be a whole number >= 1, got {workers!r}.")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    client.close_cluster = True
    return client


class DaskTiles:
    """Computes tiles on a Dask cluster: calling it with the tiles and the (fitted) patch yields
    ``(index, core probabilities)`` as they finish. ``cancel()`` cancels what is still queued."""

    def __init__(self, client, job: TileJob) -> None:
        self.client = client
        self.job = job
        self._futures: list = []

    def __call__(self, tiles: Sequence[StreamTile], patch_zyx) -> Iterator[tuple[int, np.ndarray]]:
        from distributed import as_completed

        job = self.client.scatter(replace(self.job, patch_size_zyx=tuple(patch_zyx)), broadcast=True)
        self._futures = [
            self.client.submit(compute_tile, job, tile, key=f"vesselseg-tile-{index}-{id(self)}", retries=2)
            for index, tile in enumerate(tiles)
        ]
        index_of = {future.key: index for index, future in enumerate(self._futures)}
        try:
            for future, core in as_completed(self._futures, with_results=True):
                yield index_of[future.key], core
        finally:
            self.cancel()

    def cancel(self) -> None:
        if self._futures:
            self.client.cancel(self._futures)
            self._futures = []

    def workers(self) -> int:
        return len(self.client.scheduler_info().get("workers", {}))


def close(client) -> None:
    """Close the client and, for a local cluster, its workers."""
    cluster = getattr(client, "cluster", None)
    client.close()
    if getattr(client, "close_cluster", False) and cluster is not None:
        cluster.close()


__all__ = ["DaskTiles", "TileJob", "close", "compute_tile", "connect"]
