"""Numeric precision of a run's forward passes (`precision=fp32|bf16|fp16`).

bf16 and fp16 run the forward passes under `torch.autocast`; losses keep their numerically
sensitive parts in fp32 themselves (soft-max, log-sum-exp and the like are computed on `.float()`
values), and the Distiller sums the terms in fp32. fp16 needs a GradScaler and a CUDA device;
bf16 runs on CUDA and on CPUs (fast where the CPU has bf16 instructions).
"""

from contextlib import AbstractContextManager

import torch

from kdistill.config import Precision, enum_value
from kdistill.errors import KdistillError

AUTOCAST_DTYPES = {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def autocast_dtype(precision: Precision | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `precision` on `device` (None: plain fp32); a device that cannot run it is one line."""
    dtype = AUTOCAST_DTYPES[enum_value(Precision, precision, "precision")]
    if dtype is torch.float16 and device.type != "cuda":
        raise KdistillError(f"precision=fp16 needs a CUDA device (this run is on {device.type}): use precision=bf16")
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise KdistillError("this CUDA device has no bf16 support: use precision=fp16")
    return dtype


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to `dtype` on `device`'s type; a no-op context for None (fp32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A loss scaler that is active only for fp16 (bf16 has fp32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=dtype is torch.float16)
