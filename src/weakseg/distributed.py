"""torchrun process groups and the collectives that the engine and the batch-level losses share.

``torchrun --nproc_per_node N weakseg …`` sets ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
:func:`init_distributed` then joins the process group: NCCL when the run trains on CUDA, gloo on the CPU. In a
single process nothing is initialised, and every helper here is the identity (or a no-op), so library code calls
them without asking how many processes there are.

Collectives that a loss issues in its forward or backward pass (:func:`gather_rows`) run on a process group of
their own. This keeps them from interleaving with DistributedDataParallel's gradient all-reduces on the default
group.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Protocol, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F

from weakseg.errors import ConfigError

log = logging.getLogger(__name__)

_LOSS_GROUP: dist.ProcessGroup | None = None
T = TypeVar("T")
M = TypeVar("M", bound="Mergeable")


class Mergeable(Protocol):
    def merge(self, other: Mergeable) -> Mergeable: ...


def env_world_size() -> int:
    """The number of processes torchrun started (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: str = "auto") -> bool:
    """Join torchrun's process group when there is one; returns whether the run is distributed.

    The backend is NCCL when ``device`` (a ``train.device`` value) resolves to CUDA, gloo otherwise. With NCCL
    each process uses the GPU numbered by its ``LOCAL_RANK``.
    """
    global _LOSS_GROUP
    if env_world_size() <= 1:
        return False
    if is_distributed():
        return True
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if on_cuda:
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device={device} but CUDA is not available on this machine")
        if local_rank() >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank()} has no GPU: this node has {torch.cuda.device_count()} "
                "(start at most that many processes per node)"
            )
        torch.cuda.set_device(local_rank())
    backend = "nccl" if on_cuda else "gloo"
    dist.init_process_group(backend=backend)
    _LOSS_GROUP = dist.new_group(backend=backend)
    log.info("process %d of %d (%s)", rank(), world_size(), backend)
    return True


def shutdown() -> None:
    """Leave the process group (end of a distributed command)."""
    global _LOSS_GROUP
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
    _LOSS_GROUP = None


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Whether this process logs, shows progress and writes the run's files (rank 0)."""
    return rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shard(count: int) -> range:
    """The items of ``0 … count − 1`` this process handles (every ``world_size``-th, from its rank)."""
    return range(rank(), count, world_size())


def all_gather_objects(obj: T) -> list[T]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    if not is_distributed():
        return [obj]
    out: list = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def merged(accumulator: M) -> M:
    """An accumulator (anything with ``merge``, e.g. the metrics) holding every process's counts."""
    parts = all_gather_objects(accumulator)
    total = parts[0]
    for part in parts[1:]:
        total.merge(part)
    return total


def broadcast_object(obj: T) -> T:
    """Rank 0's ``obj`` on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` summed (``sum``), averaged (``mean``) or maxed (``max``) over the processes, in place; returned."""
    if not is_distributed():
        return tensor
    if op == "mean":
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world_size()
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor


class _GatherRows(torch.autograd.Function):
    """All processes' ``n_r × …`` tensors concatenated in rank order; the backward pass sums every process's
    gradient of the result and returns each process its own rows (the adjoint of the gather)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        ctx.sizes, ctx.rank = list(sizes), rank()
        widest = max(sizes)
        padded = F.pad(tensor, (0, 0) * (tensor.dim() - 1) + (0, widest - tensor.shape[0])).contiguous()
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=_LOSS_GROUP)
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=_LOSS_GROUP)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's ``tensor`` concatenated along dim 0 in rank order (their lengths may differ), with gradient,
    and where this process's rows start. In one process: ``(tensor, 0)``.

    Under DistributedDataParallel, whose gradients are the mean of the processes', a loss that averages over its
    own process's pixels and reads the other processes' rows through this gather gets the gradient of the loss
    averaged over the global batch: the backward pass hands each row's gradient from every process to its owner.
    """
    if not is_distributed():
        return tensor, 0
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes_all = [torch.empty_like(size) for _ in range(world_size())]
    dist.all_gather(sizes_all, size, group=_LOSS_GROUP)
    sizes = [int(s) for s in sizes_all]
    if tensor.dtype == torch.bool:
        return _GatherRows.apply(tensor.to(torch.uint8), sizes).bool(), sum(sizes[: rank()])
    return _GatherRows.apply(tensor, sizes), sum(sizes[: rank()])
