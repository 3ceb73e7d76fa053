"""torch.distributed helpers that methods share (all no-ops in a single process)."""

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from every rank along dim 0, in rank order, differentiably.

    The backward pass sums each rank's gradient into the owner's rows. When every rank then
    computes the same global loss, the owner's gradient is world_size times its share, and
    DistributedDataParallel's mean over ranks gives exactly the single-process gradient of
    the concatenated batch.
    """
    if not is_distributed():
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor), dim=0)


def all_gather_detached(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from every rank along dim 0, without gradient (e.g. memory-bank updates)."""
    if not is_distributed():
        return tensor
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)
