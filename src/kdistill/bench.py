"""`kdistill bench`: images/second of a distillation training step, side by side in one process.

Rows (random CIFAR-shaped data, random weights: speed does not depend on them):
  a  conventional loop: per-image PIL transforms in DataLoader workers, fp32, NCHW, eager, the
     teacher every step under no_grad; KD and CRD with the public code's formulation (CRD draws
     its negatives per sample in the workers and gathers B x (K+1) bank rows)
  b  kdistill's default: batched keyed augmentation on the device, channels_last, fp32, eager,
     the teacher under inference_mode
  c  b reading the teacher cache (the teacher does not run)
  d  b in bf16 (and fp16 on CUDA)
  e  b compiled (torch.compile of the student's and teacher's feature passes)
Each row: img/s, step time, peak memory (CUDA: allocated; CPU: resident-set growth of this
process during the row, DataLoader workers excluded), model FLOPs per image
(torch.utils.flop_counter, eager), achieved FLOP/s and, on CUDA with a known peak, MFU.
Then the input pipeline alone: per-image PIL transforms, the in-memory batched augmentation,
and the folder pipeline (decode + keyed per-sample augmentation), per worker.
"""

import argparse
import json
import platform
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from torchvision import transforms

from kdistill.config import OptimConfig
from kdistill.data.batch import channels_last_views
from kdistill.data.loaders import ArrayLoader, BatchOrder, Normalizer
from kdistill.data.sources import ImageArrays, ImageFiles
from kdistill.data.streaming import FileDataset
from kdistill.data.two_view import mean_fill
from kdistill.engine.schedule import build_optimizer
from kdistill.engine.setup import compile_extract
from kdistill.engine.teacher_cache import MANIFEST_FILE, TeacherCache, epoch_rows_function
from kdistill.errors import KdistillError
from kdistill.files import atomic_write_text
from kdistill.losses import kd_loss
from kdistill.losses.contrastive import crd_nce_loss
from kdistill.methods import Distiller, MethodContext, build_distiller
from kdistill.models import create_model
from kdistill.precision import autocast, autocast_dtype, grad_scaler

CIFAR_MEAN, CIFAR_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
# Dense peak TFLOP/s (bf16/fp16 tensor cores) of common GPUs, for MFU; --peak-tflops overrides.
PEAK_TFLOPS = {"H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0, "V100": 125.0, "T4": 65.0}


@dataclass
class BenchSetup:
    args: argparse.Namespace
    device: torch.device
    images: Tensor  # uint8 [N, 3, 32, 32], CPU
    labels: Tensor  # int64 [N]


# ---- measurement helpers -------------------------------------------------------------------

class PeakMemory(AbstractContextManager):
    """Peak memory of the block in MB: CUDA's allocator peak, or on the CPU the growth of this
    process's resident set over its level at entry (sampled every 2 ms by a thread)."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb = device, 0.0

    @staticmethod
    def _rss_mb() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096 / 2**20

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self.base, self.high, self.running = self._rss_mb(), 0.0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.high = max(self.high, self._rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self.running = False
            self.thread.join()
            self.peak_mb = max(self.high, self._rss_mb()) - self.base
        return False


def timed_steps(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per step after `warmup` untimed steps (CUDA events on a GPU)."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(steps):
            step()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000 / steps
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def flops_of(step: Callable[[], None]) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return counter.get_total_flops()


def peak_tflops(args: argparse.Namespace, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    if args.peak_tflops:
        return args.peak_tflops
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


# ---- (a) the conventional loop ---------------------------------------------------------------

class PILDataset(Dataset):
    """The conventional CIFAR dataset: a PIL image per sample through torchvision transforms;
    with `negatives` > 0 also the public CRD code's per-sample negatives (drawn without
    replacement from the other classes' samples, as its CIFAR100InstanceSample does)."""

    def __init__(self, images: Tensor, labels: Tensor, negatives: int = 0):
        self.images = images.permute(0, 2, 3, 1).numpy()  # HWC, as torchvision's CIFAR stores them
        self.labels = labels.numpy()
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
            transforms.Normalize(CIFAR_MEAN, CIFAR_STD)])
        self.negatives = negatives
        if negatives:
            self.other_classes = {int(c): np.flatnonzero(self.labels != c) for c in np.unique(self.labels)}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        image = self.transform(Image.fromarray(self.images[index]))
        label = int(self.labels[index])
        if not self.negatives:
            return image, label, index
        pool = self.other_classes[label]
        negatives = np.random.choice(pool, self.negatives, replace=len(pool) < self.negatives)
        return image, label, index, torch.from_numpy(np.concatenate([[index], negatives]))


class ConventionalCRD(nn.Module):
    """The public code's CRD: embeddings, two memory banks, B x (K+1) rows gathered per side and
    scored with a batched matrix product, normalisation constant fixed on the first batch."""

    def __init__(self, student_dim: int, teacher_dim: int, num_data: int, feat_dim: int = 128,
                 temperature: float = 0.07, momentum: float = 0.5):
        super().__init__()
        self.embed_s, self.embed_t = nn.Linear(student_dim, feat_dim), nn.Linear(teacher_dim, feat_dim)
        bound = 1.0 / (feat_dim / 3) ** 0.5
        self.register_buffer("bank_s", torch.rand(num_data, feat_dim) * 2 * bound - bound)
        self.register_buffer("bank_t", torch.rand(num_data, feat_dim) * 2 * bound - bound)
        self.norm_s = self.norm_t = None
        self.num_data, self.temperature, self.momentum = num_data, temperature, momentum

    def forward(self, pooled_s: Tensor, pooled_t: Tensor, index: Tensor, sample_index: Tensor) -> Tensor:
        z_s = F.normalize(self.embed_s(pooled_s), dim=1)
        z_t = F.normalize(self.embed_t(pooled_t), dim=1)
        batch, columns = sample_index.shape
        rows_t = self.bank_t.index_select(0, sample_index.view(-1)).view(batch, columns, -1)
        rows_s = self.bank_s.index_select(0, sample_index.view(-1)).view(batch, columns, -1)
        exp_s = torch.exp(torch.bmm(rows_t, z_s[:, :, None])[:, :, 0] / self.temperature)
        exp_t = torch.exp(torch.bmm(rows_s, z_t[:, :, None])[:, :, 0] / self.temperature)
        if self.norm_s is None:
            self.norm_s = float(exp_s.detach().mean()) * self.num_data  # a host synchronisation, once
            self.norm_t = float(exp_t.detach().mean()) * self.num_data
        with torch.no_grad():
            for bank, z in ((self.bank_s, z_s), (self.bank_t, z_t)):
                bank[index] = F.normalize(bank[index] * self.momentum + z.detach() * (1 - self.momentum), dim=1)
        return crd_nce_loss(exp_s / self.norm_s, self.num_data) + crd_nce_loss(exp_t / self.norm_t, self.num_data)


CONVENTIONAL_METHODS = ("kd", "crd")
CRD_NEGATIVES = 16384


def conventional_row(setup: BenchSetup) -> tuple[Callable[[], None], Callable[[], None]]:
    """(step, flop-counting step) of the conventional loop."""
    args, device = setup.args, setup.device
    student, teacher = make_models(args, device, channels_last=False)
    crd = None
    if args.method == "crd":
        width = {name: model.extract(torch.zeros(2, 3, 32, 32, device=device)).pooled.shape[1]
                 for name, model in (("student", student), ("teacher", teacher))}
        crd = ConventionalCRD(width["student"], width["teacher"], len(setup.labels)).to(device)
    parameters = list(student.parameters()) + (list(crd.parameters()) if crd else [])
    negatives = CRD_NEGATIVES if crd else 0
    loader = DataLoader(PILDataset(setup.images, setup.labels, negatives), batch_size=args.batch_size, shuffle=True,
                        drop_last=True, num_workers=args.workers, pin_memory=device.type == "cuda",
                        persistent_workers=args.workers > 0)
    batches = _forever(loader)
    optimizer = build_optimizer(parameters, OptimConfig(), lr=0.05)

    def forward_backward(batch) -> None:
        images, labels = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
        with torch.no_grad():
            features_t = teacher.extract(images)
        features_s = student.extract(images)
        if crd is None:  # KD: 0.1 CE + 0.9 KD at T = 4, as the tables
            loss = (0.1 * F.cross_entropy(features_s.logits, labels)
                    + 0.9 * kd_loss(features_s.logits, features_t.logits))
        else:  # CE + 0.8 CRD
            loss = F.cross_entropy(features_s.logits, labels) + 0.8 * crd(
                features_s.pooled, features_t.pooled, batch[2].to(device), batch[3].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    first = next(batches)
    return (lambda: forward_backward(next(batches))), (lambda: forward_backward(first))


def _forever(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


# ---- (b)-(e) kdistill's step ----------------------------------------------------------------

def make_models(args: argparse.Namespace, device: torch.device, channels_last: bool):
    torch.manual_seed(0)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    student = create_model(args.student, num_classes=args.num_classes).to(device, memory_format=memory_format)
    teacher = create_model(args.teacher, num_classes=args.num_classes).to(device, memory_format=memory_format)
    return student.train(), teacher.eval().requires_grad_(False)


def kdistill_row(setup: BenchSetup, precision: str = "fp32", compiled: bool = False, cached: bool = False,
                 cache_folder: Path | None = None):
    """(step, flop-counting step) of kdistill's step as the Trainer runs it."""
    args, device = setup.args, setup.device
    student, teacher = make_models(args, device, channels_last=True)
    context = MethodContext((3, 32, 32), args.num_classes, setup.labels, batch_size=args.batch_size)
    distiller: Distiller = build_distiller({"name": args.method}, student, teacher, context).to(device)
    distiller.train()
    dtype = autocast_dtype(precision, device)
    scaler = grad_scaler(device, dtype)
    optimizer = build_optimizer(distiller.train_parameters(), OptimConfig(), lr=0.05)
    # A cache fill covers only the batches the bench reads (a grid pays the full fill once).
    order = BatchOrder(len(setup.labels), args.batch_size, seed=0, rank=0, world_size=1, train=True)
    strong_fill = mean_fill(CIFAR_MEAN) if distiller.needs_strong_view else None
    normalize = Normalizer(CIFAR_MEAN, CIFAR_STD, device)
    loader = ArrayLoader(ImageArrays(setup.images.to(device), setup.labels), order, normalize, device, seed=0,
                         augment=True, hflip=True, strong_fill=strong_fill)
    if cached:
        attach_bench_cache(distiller, loader, dtype, device, cache_folder, covered=args.warmup + args.steps + 2)
    if compiled:
        compile_extract(student)
        compile_extract(teacher)
    batches = _forever(loader)

    def step(batch) -> None:
        batch = channels_last_views(batch)
        with autocast(device, dtype):
            loss = distiller(batch).total
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    first = next(iter(loader))
    return (lambda: step(next(batches))), (lambda: step(first))


def attach_bench_cache(distiller: Distiller, loader: ArrayLoader, dtype, device, folder: Path, covered: int) -> None:
    """A teacher cache of epoch 0's first `covered` batches (its fill is not timed: a grid pays it
    once), through the cache's own write, load and read paths."""
    compute = epoch_rows_function(distiller, loader, True, dtype, device)
    probe = distiller.teacher_features(torch.zeros(2, 3, 32, 32, device=device))
    manifest = {"epochs": 1, "dtype": "float16", "rows": loader.dataset_size,
                "logits": probe.logits.shape[1], "pooled": probe.pooled.shape[1]}
    atomic_write_text(folder / MANIFEST_FILE, json.dumps({**manifest, "files": {}}))
    views = ("image", "image_strong") if distiller.needs_strong_view else ("image",)
    cache = TeacherCache(folder, manifest, views, device, compute, loader.order, covered)
    cache.announced = True  # the bench's own print says what the cache holds
    cache.prepare_epoch(0)
    distiller.teacher_outputs = cache


# ---- the data pipeline alone ----------------------------------------------------------------

def data_rows(setup: BenchSetup, folder: Path) -> list[dict]:
    """Per worker: one process, one intra-op thread each (a worker's share of the cores; a batched
    op's second thread also waits for a core on a busy machine, which would measure the machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _data_rows(setup, folder)
    finally:
        torch.set_num_threads(threads)


def _data_rows(setup: BenchSetup, folder: Path) -> list[dict]:
    args, device = setup.args, setup.device
    count = args.data_batches * args.batch_size

    def rate(batches: Iterator, name: str, workers: int) -> dict:
        next(batches)  # start-up (workers, first batch) untimed
        start = time.perf_counter()
        for _ in range(args.data_batches):
            batch = next(batches)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        del batch
        return {"pipeline": name, "workers": workers, "img_per_s": count / seconds,
                "img_per_s_per_worker": count / seconds / max(workers, 1)}

    rows = []
    pil = DataLoader(PILDataset(setup.images, setup.labels), batch_size=args.batch_size, shuffle=True, num_workers=0)
    rows.append(rate(_forever(pil), "per-image PIL transforms (a)", 0))
    order = BatchOrder(len(setup.labels), args.batch_size, seed=0, rank=0, world_size=1, train=True)
    arrays = ArrayLoader(ImageArrays(setup.images.to(device), setup.labels), order,
                         Normalizer(CIFAR_MEAN, CIFAR_STD, device), device, seed=0, augment=True, hflip=True)
    rows.append(rate(_forever(arrays), "in-memory batched keyed augmentation (b)", 0))
    paths = []
    for index in range(min(len(setup.labels), (args.data_batches + 1) * args.batch_size)):
        path = folder / f"{index}.png"
        Image.fromarray(setup.images[index].permute(1, 2, 0).numpy()).save(path)
        paths.append(str(path))
    files = FileDataset(ImageFiles(paths, setup.labels[: len(paths)]), 32, seed=0, augment=True,
                        resized_crop=False, hflip=True)
    keys = [[(i, 0) for i in range(start, start + args.batch_size)] for start in range(0, len(paths), args.batch_size)]
    folder_loader = DataLoader(files, batch_sampler=[k for k in keys if len(k) == args.batch_size], num_workers=0)
    rows.append(rate(_forever(folder_loader), "folder: PNG decode + keyed per-sample augmentation", 0))
    return rows


# ---- the command ------------------------------------------------------------------------------

ROW_NAMES = {
    "a": "conventional (PIL workers, fp32, NCHW, eager, teacher)",
    "b": "kdistill default",
    "c": "b + teacher cache",
    "d": "b + {low}",
    "e": "b + torch.compile",
}


def bench_rows(setup: BenchSetup, folder: Path) -> list[tuple[str, str, Callable]]:
    """(row id, name, builder) of every row asked for."""
    device = setup.device
    low = ["bf16"] + (["fp16"] if device.type == "cuda" else [])
    builders = {
        "a": [("a", ROW_NAMES["a"], lambda: conventional_row(setup))],
        "b": [("b", ROW_NAMES["b"], lambda: kdistill_row(setup))],
        "c": [("c", ROW_NAMES["c"], lambda: kdistill_row(setup, cached=True, cache_folder=folder))],
        "d": [(f"d-{p}", ROW_NAMES["d"].format(low=p), lambda p=p: kdistill_row(setup, precision=p)) for p in low],
        "e": [("e", ROW_NAMES["e"], lambda: kdistill_row(setup, compiled=True))],
    }
    return [row for key in setup.args.rows for row in builders[key]]


def run_bench(args: argparse.Namespace) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.train_size, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, args.num_classes, (args.train_size,), generator=generator)
    if "a" in args.rows and args.method not in CONVENTIONAL_METHODS:
        covered = " and ".join(CONVENTIONAL_METHODS)
        raise KdistillError(f"bench: row a (the conventional loop) is written for {covered}; "
                            f"for '{args.method}' pass --rows b c d e")
    setup = BenchSetup(args, device, images, labels)
    peak = peak_tflops(args, device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="kdistill-bench-") as temporary:
        folder = Path(temporary)
        for row_id, name, build in bench_rows(setup, folder):
            with PeakMemory(device) as memory:
                step, counted_step = build()
                flops = flops_of(counted_step) if row_id != "e" else None  # compiled: the same model FLOPs as b
                seconds = timed_steps(step, args.warmup, args.steps, device)
            row = {"row": row_id, "name": name, "img_per_s": args.batch_size / seconds, "step_ms": 1000 * seconds,
                   "peak_mem_mb": memory.peak_mb}
            if flops is None:
                flops = next((r["flops_per_image"] * args.batch_size for r in rows if r["row"] == "b"), None)
            if flops is not None:
                row["flops_per_image"] = flops / args.batch_size
                row["achieved_tflops"] = flops / seconds / 1e12
                row["mfu"] = row["achieved_tflops"] / peak if peak else None
            rows.append(row)
            print(format_row(row), flush=True)
        data = data_rows(setup, folder) if args.data_batches else []
    baseline = next((r["img_per_s"] for r in rows if r["row"] == "a"), None)
    for row in rows:
        row["vs_a"] = row["img_per_s"] / baseline if baseline else None
    batched = [r["img_per_s"] for r in data]
    if data:
        data[1]["vs_per_image"] = batched[1] / batched[0]
        data[2]["vs_per_image"] = batched[2] / batched[0]
    return {"method": args.method, "teacher": args.teacher, "student": args.student, "batch_size": args.batch_size,
            "steps": args.steps, "device": str(device), "threads": torch.get_num_threads(), "workers": args.workers,
            "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "peak_tflops": peak, "rows": rows, "data_pipeline": data}


def format_row(row: dict) -> str:
    flops = f"{row['flops_per_image'] / 1e9:6.2f} GFLOP/img {row['achieved_tflops'] * 1e3:7.1f} GFLOP/s" \
        if "flops_per_image" in row else ""
    mfu = f" MFU {100 * row['mfu']:.1f}%" if row.get("mfu") else ""
    return (f"{row['row']:7s} {row['img_per_s']:8.1f} img/s {row['step_ms']:8.1f} ms/step "
            f"{row['peak_mem_mb']:8.0f} MB  {flops}{mfu}  {row['name']}")


def format_report(report: dict) -> str:
    lines = [f"{report['method']} {report['teacher']} -> {report['student']}, batch {report['batch_size']}, "
             f"{report['device']}, {report['threads']} threads"]
    for row in report["rows"]:
        ratio = f"  x{row['vs_a']:.2f} vs a" if row.get("vs_a") else ""
        lines.append(format_row(row) + ratio)
    for row in report["data_pipeline"]:
        ratio = f"  x{row['vs_per_image']:.1f} vs per-image" if row.get("vs_per_image") else ""
        lines.append(f"data    {row['img_per_s_per_worker']:10.0f} img/s per worker  {row['pipeline']}{ratio}")
    return "\n".join(lines)


def bench_command(args: argparse.Namespace) -> None:
    """Run the bench that `args` (of `kdistill bench`) describe, print its table, write its JSON."""
    report = run_bench(args)
    print(format_report(report))
    if args.out:
        out = Path(args.out)
        atomic_write_text(out, json.dumps(report, indent=2) + "\n")
        print(f"-> {out}")
