"""The compact teacher cache at ImageNet scale: fill and read a whole epoch of a synthetic
1.28 M x 1000 table with K = 10 through kdistill's own cache code, reading batches of 256 as a
training run does; report the process's resident memory and the per-batch read time. Also the
KD loss from the rebuilt logits against the exact loss (relative error per K and temperature).

The teacher is a cheap fake (random logits with one high class per sample): what is measured is
the cache's storage and reads, not a teacher. Timings depend on the machine's load (say it).

    PYTHONPATH=src python benchmarks/teacher_cache_scale.py --out benchmarks/results/teacher_cache_topk_read.json
"""

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdistill.data.loaders import BatchOrder
from kdistill.engine.teacher_cache import MANIFEST_FILE, TeacherCache, TopKRows
from kdistill.files import atomic_write_text
from kdistill.losses import kd_loss


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1_281_167)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--folder", default=None, help="where the cache is written (default: a temporary folder)")
    parser.add_argument("--out", default="benchmarks/results/teacher_cache_topk_read.json")
    return parser.parse_args()


def fake_logits(index: torch.Tensor, classes: int) -> torch.Tensor:
    """Random logits keyed by the sample index, one class per sample 8 higher (a confident teacher)."""
    generator = torch.Generator().manual_seed(int(index[0]))
    logits = torch.randn(len(index), classes, generator=generator) * 2
    logits[torch.arange(len(index)), index % classes] += 8
    return logits


def memory_mb(field: str) -> float:
    """VmRSS (resident now) or VmHWM (resident peak) of this process, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def kd_relative_errors(classes: int, ks: list[int], temperatures: list[float]) -> dict:
    """On 1024 fake teacher rows against random students: the KD loss from the rebuilt logits
    against the exact loss (|difference| / exact), and its gradient with respect to the student's
    logits (what training uses; the teacher's own entropy, a constant in the loss, drops out):
    ||g_rebuilt - g_exact|| / ||g_exact||."""
    index = torch.arange(1024)
    teacher = fake_logits(index, classes)
    student = torch.randn(1024, classes, generator=torch.Generator().manual_seed(1), requires_grad=True)

    def loss_and_gradient(target: torch.Tensor, temperature: float) -> tuple[float, torch.Tensor]:
        loss = kd_loss(student, target, temperature)
        return loss.item(), torch.autograd.grad(loss, student)[0]

    errors = {}
    for temperature in temperatures:
        exact, exact_gradient = loss_and_gradient(teacher, temperature)
        for k in ks:
            rows = TopKRows(torch.float16, classes, k)
            loss, gradient = loss_and_gradient(rows.decode(rows.encode(teacher)).logits, temperature)
            errors[f"k{k}_t{temperature:g}"] = {
                "loss": abs(loss - exact) / exact,
                "gradient": ((gradient - exact_gradient).norm() / exact_gradient.norm()).item()}
    return errors


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)  # on a shared machine, spinning intra-op threads measure the neighbours
    folder = Path(args.folder or tempfile.mkdtemp(prefix="kdistill-cache-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    manifest = {"rows": args.samples, "dtype": "float16", "logits": args.classes, "pooled": 0,
                "teacher_cache_topk": args.k, "epochs": 1}
    atomic_write_text(folder / MANIFEST_FILE, json.dumps({**manifest, "files": {}}))
    order = BatchOrder(args.samples, args.batch_size, seed=0, rank=0, world_size=1, train=True)

    def compute(epoch, view, batches):
        for index in batches:
            yield index, fake_logits(index, args.classes)

    cache = TeacherCache(folder, manifest, ("image",), torch.device("cpu"), compute, order)
    started = time.perf_counter()
    cache.fill_epoch(0)
    fill_s = time.perf_counter() - started
    file_bytes = cache.epoch_file(0, "image").stat().st_size
    rss_before_read = memory_mb("VmRSS")

    steps = len(order)
    started = time.perf_counter()
    cache.prepare_epoch(0, range(0, steps))  # checks the checksum, maps the file
    prepare_s = time.perf_counter() - started
    read_ms, rss_during_read = [], []
    for step, index in enumerate(order.batches(0)):
        started = time.perf_counter()
        logits = cache.read(index, "image").logits
        read_ms.append((time.perf_counter() - started) * 1e3)
        assert logits.shape == (args.batch_size, args.classes)
        if step % 500 == 0:
            rss_during_read.append(memory_mb("VmRSS"))
    rss_during_read.append(memory_mb("VmRSS"))
    read_ms.sort()
    result = {
        "what": "compact teacher cache: fill and read one epoch of a synthetic table through TeacherCache",
        "samples": args.samples, "classes": args.classes, "k": args.k, "batch_size": args.batch_size,
        "batches": steps, "row_bytes": cache.row_bytes, "epoch_file_mb": file_bytes / 1e6,
        "fill_s": fill_s, "prepare_epoch_s (sha256 check + map)": prepare_s,
        "read_ms_per_batch": {"mean": statistics.fmean(read_ms), "median": read_ms[len(read_ms) // 2],
                              "p95": read_ms[int(len(read_ms) * 0.95)]},
        "rss_mb": {"before_read": rss_before_read, "max_during_read": max(rss_during_read),
                   "peak_of_process (fill included)": memory_mb("VmHWM")},
        "kd_relative_error (fake teacher: N(0, 2) logits + 8 on one class; random student)": kd_relative_errors(
            args.classes, [1, 3, 10, 100], [1.0, 4.0]),
        "machine": {"cpus": os.cpu_count(), "load_average_1_5_15": os.getloadavg(), "torch": torch.__version__,
                    "platform": platform.machine(), "torch_threads": torch.get_num_threads(),
                    "note": "a 2-core machine shared by several agents: timings are loaded-machine figures"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
