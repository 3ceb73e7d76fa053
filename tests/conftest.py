import os
import subprocess
import sys
from pathlib import Path

# One intra-op thread per test process (and the commands it starts): the models here are tiny,
# and two spinning OpenMP threads per process on a two-core machine shared by a parallel CLI
# test run many times slower than one.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

# A run small enough for a test: tiny model, a few steps per epoch, no progress bars.
QUICK_RUN = ["student=resnet8", "data.name=embedded", "data.batch_size=32", "steps_per_epoch=4",
             "progress=false", "tensorboard=false", "device=cpu"]


def kdistill_command() -> list[str]:
    """The installed console script when there is one, else the module entry point."""
    script = Path(sys.executable).with_name("kdistill")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kdistill"]


def run_kdistill(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real `kdistill` entry point with `args`, capturing its output."""
    return subprocess.run(kdistill_command() + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture
def run_cli():
    return run_kdistill


def mean_over_ranks(grads) -> None:
    """What DistributedDataParallel does to gradients, in place: the mean over ranks."""
    import torch.distributed as dist

    for grad in grads:
        dist.all_reduce(grad)
        grad /= dist.get_world_size()
