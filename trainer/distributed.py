"""Data-parallel training with ``torch.distributed`` when the trainer is launched by ``torchrun``.

``torchrun --nproc_per_node=N -m trainer train CONFIG`` sets RANK, WORLD_SIZE and LOCAL_RANK; each process
then trains a replica wrapped in DistributedDataParallel (gradients averaged each step), samples its own
patches (seed + rank), and only rank 0 validates and writes files. The backend is NCCL on CUDA, gloo on
the CPU. Without those variables everything here is a no-op and training runs in one process.
"""

from __future__ import annotations

import datetime
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from VesselSegLib.inference.sliding_window import resolve_device

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: rank among ``world_size`` processes, and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group when launched by torchrun; otherwise a single-process context.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}
        "auto" takes the GPU ``LOCAL_RANK`` when CUDA is present, else the CPU.
    """
    if not launched_by_torchrun():
        return DistributedContext(device=resolve_device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if device == "cuda" and not use_cuda:
        raise ValueError("training.device is 'cuda' but PyTorch sees no CUDA GPU; use 'cpu' or 'auto'.")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30)
        )
    logger.info("Rank %d of %d on %s", rank, world_size, target)
    return DistributedContext(rank, world_size, local_rank, local_world_size, target)


def wrap_model(model: nn.Module, context: DistributedContext) -> nn.Module:
    """DistributedDataParallel around ``model`` (already on ``context.device``) when distributed."""
    if not context.enabled:
        return model
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    # A channels-last model's 1x1x1 head has gradient strides that differ from DDP's bucket views only in
    # size-1 dimensions; PyTorch warns each step although nothing is wrong, so that one warning is muted.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap_model(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def broadcast_floats(values: Sequence[float], context: DistributedContext) -> list[float]:
    """Rank 0's ``values`` on every rank (e.g. the validation loss the LR schedulers all step on)."""
    if not context.enabled:
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device(context))
    dist.broadcast(tensor, src=0)
    return tensor.cpu().tolist()


def any_rank(flag: bool, context: DistributedContext) -> bool:
    """True on every rank when ``flag`` is True on at least one (e.g. Ctrl+C seen by one process)."""
    if not context.enabled:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=_collective_device(context))
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def gather_floats(value: float, context: DistributedContext) -> list[float]:
    """``value`` of every rank, in rank order (e.g. patches each rank trained on, for the run record)."""
    if not context.enabled:
        return [float(value)]
    device = _collective_device(context)
    pieces = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(context.world_size)]
    dist.all_gather(pieces, torch.tensor([float(value)], dtype=torch.float64, device=device))
    return [float(p.item()) for p in pieces]


def mean_over_ranks(value: float, context: DistributedContext) -> float:
    if not context.enabled:
        return float(value)
    tensor = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device(context))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item()) / context.world_size


def cleanup(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def _collective_device(context: DistributedContext) -> torch.device:
    # NCCL only moves CUDA tensors; gloo only CPU ones.
    return context.device if context.device.type == "cuda" else torch.device("cpu")


__all__ = [
    "DistributedContext",
    "any_rank",
    "barrier",
    "broadcast_floats",
    "cleanup",
    "gather_floats",
    "init_distributed",
    "launched_by_torchrun",
    "mean_over_ranks",
    "unwrap_model",
    "wrap_model",
]
