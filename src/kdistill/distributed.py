"""torch.distributed helpers that methods share (all no-ops in a single process)."""

import os

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


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return rank() == 0


def init_from_environment(device_name: str) -> str:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK); return the device.

    One process per device: under CUDA, process LOCAL_RANK uses cuda:LOCAL_RANK with NCCL;
    on CPU, gloo. Without torchrun this does nothing and returns `device_name` unchanged.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device_name
    use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return "cpu"


def sum_over_ranks(values: Tensor) -> Tensor:
    """Element-wise sum of a tensor over all ranks (a copy; the input is unchanged)."""
    values = values.clone()
    if is_distributed():
        dist.all_reduce(values)
    return values


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def average_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Mean of the gradients over ranks, in place: what DistributedDataParallel does, for the
    few steps (a method's initialisation phase) that do not run through its wrapper."""
    if not is_distributed():
        return
    for parameter in parameters:
        if parameter.grad is not None:
            dist.all_reduce(parameter.grad)
            parameter.grad /= dist.get_world_size()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (batch-norm statistics), so all ranks evaluate the model
    that rank 0 saves."""
    if not is_distributed():
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
