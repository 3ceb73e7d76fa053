"""What several test files share: a quick run's overrides, the real entry point, assertions."""

import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np

# A run small enough for a test: tiny model, a few steps per epoch, no progress bars.
QUICK_RUN = ["student=resnet8", "data.name=embedded", "data.batch_size=32", "steps_per_epoch=4",
             "progress=false", "tensorboard=false", "device=cpu"]


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist_format(folder: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
    """A data folder in MNIST's file format (`data.name=mnist data.root=<folder>`)."""
    folder.mkdir(parents=True)
    for prefix, (images, labels) in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder


def kdistill_command() -> list[str]:
    """The installed console script when there is one, else the module entry point."""
    script = Path(sys.executable).with_name("kdistill")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kdistill"]


def run_kdistill(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real `kdistill` entry point with `args`, capturing its output."""
    return subprocess.run(kdistill_command() + list(args), capture_output=True, text=True, cwd=cwd, timeout=600,
                          check=False)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and one clear line, never a traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


class RunsCommand:
    """Unpickling this calls os.system(command): what a hostile data or weight file carries."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def assert_nonblank_png(path) -> None:
    image = matplotlib.image.imread(path)  # fails on a file that is not a valid PNG
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    colours = np.unique(image[..., :3].reshape(-1, 3).round(3), axis=0)
    assert len(colours) > 20 and image[..., :3].std() > 0.05


def mean_over_ranks(grads) -> None:
    """What DistributedDataParallel does to gradients, in place: the mean over ranks."""
    import torch.distributed as dist

    for grad in grads:
        dist.all_reduce(grad)
        grad /= dist.get_world_size()


def term_over_steps(distiller, batch: dict, term: str, steps: int = 6, lr: float = 0.05) -> list[float]:
    """A method's `term` before each of `steps` SGD steps (momentum 0.9) on its total, on one fixed batch."""
    import torch

    optimizer = torch.optim.SGD(distiller.train_parameters(), lr=lr, momentum=0.9)
    values = []
    for _ in range(steps):
        output = distiller.train()(batch)
        optimizer.zero_grad()
        output.total.backward()
        optimizer.step()
        values.append(output.terms[term].item())
    return values
