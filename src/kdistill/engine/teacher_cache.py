"""The exact teacher cache (`teacher_cache=DIR`): the teacher's logits and pooled feature per
(epoch, sample index, view), computed once and read by every run that shares its identity (every
method of a grid, every rerun).

Why it is exact: every augmentation parameter is keyed by (seed, epoch, sample index) and the
teacher is frozen in eval mode, so its output on a sample's view is a pure function of those. An
epoch's rows are computed in the run's own batches (the epoch's shuffle order, then the samples
the training batches drop) with the run's memory format and precision, so with float32 storage a
run that reads the cache computes the same numbers as one that runs the teacher.

Layout: `DIR/manifest.json` (what the outputs are a function of, and per epoch file its size,
SHA-256 and how many of the epoch's covering batches it holds) and one file per (epoch, view),
`DIR/epoch_0003.image.bin`: a raw [N, C + D] array of the manifest's dtype, one row per sample
index, the C logits then the D-wide pooled feature. One process fills an epoch at a time (a lock
in the folder; under torchrun every rank writes its share of the rows into one file): the file
is written under a temporary name and renamed into place, then its entry recorded, so a reader
never sees a partial file. A reading run checks the file's checksum and memory-maps it; a step
gathers its batch's rows (on an accelerator into pinned memory, copied one batch ahead).
"""

import fcntl
import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

import kdistill
from kdistill.config import EXECUTION_KEYS, RunConfig, flat_config
from kdistill.data import Loader, Loaders
from kdistill.data.batch import channels_last_views
from kdistill.data.loaders import BatchOrder
from kdistill.distributed import barrier, is_distributed, is_main_process, rank, world_size
from kdistill.errors import KdistillError
from kdistill.files import atomic_write_bytes, reported_write
from kdistill.methods.base import LOGITS_AND_POOLED, Distiller
from kdistill.models.base import Features, probe_features
from kdistill.models.checkpoint import weights_sha256
from kdistill.precision import autocast

CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2
INFORMATIONAL_KEYS = ("epochs", "files")  # recorded, not required to match
FILL_LOCK = "fill.lock"  # held by the process filling an epoch
FILL_SUFFIX = ".filling"  # an epoch file being filled, renamed into place when whole
HASH_CHUNK = 1 << 24
# Keys of the flattened configuration that do not change the teacher's outputs on the training
# views. A cache's identity is every OTHER key (so a key added later counts until it is listed
# here), the state of the training data and the teacher's weight checksum.
TEACHER_NEUTRAL_KEYS = EXECUTION_KEYS | {
    # The method reads the teacher's outputs, never changes them (a method that reads more than
    # the logits and pooled feature refuses the cache); the student and its optimisation are its own.
    "method", "optim", "schedule", "student", "student_checkpoint", "student_options", "student_pretrained",
    # Where the teacher's weights come from: the weights themselves count, as their checksum.
    "teacher_checkpoint", "teacher_pretrained",
    # How long the student trains and what a non-finite loss does: an epoch's views do not depend
    # on how many epochs follow.
    "epochs", "steps_per_epoch", "nonfinite",
    "data.eval_crop_pct",  # evaluation only
    # The fill's batch size changes the outputs at the rounding level only, as the device does.
    "teacher_cache_fill_batch",
}
# Among EXECUTION_KEYS: data.root (the data's own state stands in for it: a folder's tree state,
# an in-memory set's digest) and device (a float32 cache filled on another device type differs
# from the reading run's teacher by rounding only; `kdistill cache` may fill on any device).


def _teacher_neutral(key: str) -> bool:
    return any(key == neutral or key.startswith(f"{neutral}.") for neutral in TEACHER_NEUTRAL_KEYS)


def cache_identity(cfg: RunConfig) -> dict[str, Any]:
    """The configuration keys a teacher cache's outputs depend on, with their values."""
    return {key: value for key, value in flat_config(cfg).items() if not _teacher_neutral(key)}


def data_state(loaders: Loaders) -> str:
    """What the training data is, beyond the configuration: an image folder's tree state (paths,
    sizes, modification times, from the image check), or a digest of an in-memory set's images and labels."""
    if loaders.info.tree_state is not None:
        return loaders.info.tree_state
    loader = loaders.train
    digest = hashlib.blake2b(digest_size=16)
    for tensor in (loader.images, loader.labels):
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.2f} MB"


def manifest_mismatch(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """'key: stored vs wanted' for the first fact on which two (flat) manifests differ, None when they agree."""
    for key in sorted(stored.keys() | wanted.keys()):
        if key not in INFORMATIONAL_KEYS and stored.get(key) != wanted.get(key):
            return f"{key} is {stored.get(key)!r} there but {wanted.get(key)!r} in this run"
    return None


def _not_a_file(path: Path) -> KdistillError:
    return KdistillError(f"teacher cache entry {path} is not a file: delete it and the cache fills it again")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The cache's manifest, checked to be a JSON object whose `files` are well-formed entries;
    one line naming the fix otherwise."""
    path = folder / MANIFEST_FILE
    if path.exists() and not path.is_file():
        raise _not_a_file(path)
    fix = f"delete the folder {folder} (it is filled again) or choose another teacher_cache=<folder>"
    try:
        manifest = json.loads(path.read_text())
    except ValueError:
        raise KdistillError(f"teacher cache manifest {path} is not valid JSON (empty or damaged): {fix}") from None
    except OSError as error:
        raise KdistillError(f"teacher cache manifest {path} cannot be read ({error.strerror}): {fix}") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(
            isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)
            and (entry.get("batches") is None or isinstance(entry.get("batches"), int)) for entry in files.values()):
        raise KdistillError(f"teacher cache manifest {path} is not a kdistill teacher-cache manifest "
                            f"(a JSON object with well-formed 'files' entries): {fix}")
    return manifest


def file_sha256(file: BinaryIO) -> str:
    digest = hashlib.sha256()
    file.seek(0)
    while chunk := file.read(HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _main_process_value(value: Any) -> Any:
    """The main process's `value` on every process of a run (a decision they must take together)."""
    if not is_distributed():
        return value
    shared = [value]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


@contextmanager
def _locked(folder: Path, held: bool) -> Iterator[None]:
    """An exclusive lock on the cache folder while `held` (one process of a run takes it): runs
    that need the same epoch fill it once, the others wait and then read it."""
    if not held:
        yield
        return
    with reported_write(folder / FILL_LOCK):
        lock = open(folder / FILL_LOCK, "a")  # noqa: SIM115 (closed below, after the block it guards)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class ExactRows:
    """A row: the C logits, then the D-wide pooled feature, in the cache dtype."""

    def __init__(self, dtype: torch.dtype, num_classes: int, feature_dim: int):
        self.dtype, self.num_classes, self.feature_dim = dtype, num_classes, feature_dim
        self.row_bytes = (num_classes + feature_dim) * dtype.itemsize

    def encode(self, rows: Tensor) -> Tensor:
        """[B, C + D] float32 -> [B, row_bytes] uint8 on the CPU."""
        return rows.to(self.dtype).cpu().view(torch.uint8)

    def decode(self, rows: Tensor) -> Features:
        values = rows.view(self.dtype).float()
        return Features(values[:, : self.num_classes].contiguous(), [], values[:, self.num_classes :].contiguous())

    def disk_use(self, rows: int) -> str:
        logits, pooled = rows * self.num_classes * self.dtype.itemsize, rows * self.feature_dim * self.dtype.itemsize
        return (f"({self.num_classes} logits + {self.feature_dim} pooled) x {self.dtype.itemsize} B = "
                f"{_size(logits + pooled)} (logits {_size(logits)}, pooled {_size(pooled)})")


class TopKRows:
    """A row of the compact cache: the K largest logits (cache dtype), their classes (int16, int32
    beyond 32767 classes) and the log-sum-exp of the other C - K logits (float32).

    `decode` rebuilds C logits for the losses: the top K as stored, every other class at
    lse_rest - log(C - K), so the others share the rest's probability mass evenly. At temperature 1
    the softmax is then exact on the top K and on the rest's total mass (the KD loss is exact on the
    top-K terms; the rest's terms see an even spread). At another temperature the top K keep their
    exact ratios, but the rest's mass is approximated: an even spread overstates it for T > 1 (the
    sum of exp(z / T) over the rest is largest when the rest's logits are equal) and understates it
    for T < 1. No pooled feature is kept (methods that read it refuse this cache)."""

    def __init__(self, dtype: torch.dtype, num_classes: int, k: int):
        self.dtype, self.num_classes, self.k = dtype, num_classes, k
        self.class_dtype = torch.int16 if num_classes <= torch.iinfo(torch.int16).max + 1 else torch.int32
        self.value_bytes, self.class_bytes = k * dtype.itemsize, k * self.class_dtype.itemsize
        self.row_bytes = self.value_bytes + self.class_bytes + 4

    def encode(self, rows: Tensor) -> Tensor:
        logits = rows[:, : self.num_classes].float()
        values, classes = logits.topk(self.k, dim=1)
        rest = logits.scatter(1, classes, float("-inf")).logsumexp(dim=1, keepdim=True)
        parts = (values.to(self.dtype), classes.to(self.class_dtype), rest)
        return torch.cat([part.cpu().contiguous().view(torch.uint8) for part in parts], dim=1)

    def decode(self, rows: Tensor) -> Features:
        split = self.value_bytes + self.class_bytes
        values = rows[:, : self.value_bytes].contiguous().view(self.dtype).float()
        classes = rows[:, self.value_bytes : split].contiguous().view(self.class_dtype).long()
        rest = rows[:, split:].contiguous().view(torch.float32)
        logits = (rest - math.log(self.num_classes - self.k)).expand(-1, self.num_classes).clone()
        logits.scatter_(1, classes, values)
        return Features(logits, [], logits.new_zeros(len(logits), 0))

    def disk_use(self, rows: int) -> str:
        return (f"(top-{self.k} logits x {self.dtype.itemsize} B + classes x {self.class_dtype.itemsize} B "
                f"+ the rest's log-sum-exp x 4 B) = {_size(rows * self.row_bytes)}")


class TeacherCache:
    """The teacher's outputs of one run's configuration, filled an epoch at a time.

    `fill_epoch(epoch)` computes what the epoch's files lack; `prepare_epoch(epoch, steps)`
    (called by the Trainer before each epoch, with the data epoch the loader uses and the steps
    it takes) fills, checks and maps them; `read(index, view)` returns a batch's rows as
    `Features` (logits, pooled; no stages).

    `covered`: the leading batches of the epoch's covering order (`BatchOrder.covering_batches`)
    a run reads (a run capped by steps_per_epoch), None for every sample. An epoch file records
    how many it holds, so a later run that reads more fills the rest.
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], views: tuple[str, ...], device: torch.device,
                 compute: Callable[[int, str, list[Tensor]], Iterator[tuple[Tensor, Tensor]]],
                 order: BatchOrder, covered: int | None = None, progress: bool = False):
        self.folder, self.manifest, self.views, self.device = folder, manifest, views, device
        self.num_samples = manifest["rows"]
        dtype, topk = CACHE_DTYPES[manifest["dtype"]], manifest.get("teacher_cache_topk")
        self.format = (ExactRows(dtype, manifest["logits"], manifest["pooled"]) if topk is None
                       else TopKRows(dtype, manifest["logits"], topk))
        self.compute, self.order, self.covered, self.progress = compute, order, covered, progress
        self.readers: dict[str, _ViewReader] = {}
        self.epoch: int | None = None
        self.announced = False

    @property
    def row_bytes(self) -> int:
        return self.format.row_bytes

    def epoch_file(self, epoch: int, view: str) -> Path:
        return self.folder / f"epoch_{epoch:04d}.{view}.bin"

    def disk_use(self, epochs: int) -> str:
        """A line on what filling `epochs` epochs of this run's views costs on disk."""
        return (f"teacher cache {self.folder}: {epochs} epochs x {len(self.views)} view(s) x "
                f"{self.num_samples} samples x {self.format.disk_use(self.num_samples * epochs * len(self.views))}")

    def _held_batches(self, manifest: dict[str, Any], path: Path, total: int) -> int:
        """How many of the `total` leading covering batches the file holds (0: none, or no file)."""
        if path.exists() and not path.is_file():
            raise _not_a_file(path)
        entry = manifest["files"].get(path.name)
        if entry is None or not path.is_file():  # a file renamed into place whose entry a kill lost is filled again
            return 0
        return total if entry["batches"] is None else entry["batches"]

    def fill_epoch(self, epoch: int) -> int:
        """Compute what the epoch's files lack (every process of a run its share); returns how
        many files were written."""
        return sum(self._fill_view(epoch, view) for view in self.views)

    def _fill_view(self, epoch: int, view: str) -> bool:
        path = self.epoch_file(epoch, view)
        batches = self.order.covering_batches(epoch)
        wanted = len(batches) if self.covered is None else min(self.covered, len(batches))
        main = is_main_process()
        # Without the lock first: a complete file needs no write (a cache may be read-only).
        complete = main and self._held_batches(read_manifest(self.folder), path, len(batches)) >= wanted
        if _main_process_value(complete):
            return False
        with _locked(self.folder, held=main):
            barrier()  # the main process holds the lock: every process reads one manifest
            held = self._held_batches(read_manifest(self.folder), path, len(batches))
            if held >= wanted:
                barrier()
                return False
            if main and not self.announced:
                print(self.disk_use(self.manifest["epochs"]), flush=True)
                self.announced = True
            temporary = path.with_name(f".{path.name}{FILL_SUFFIX}")
            if main:
                with reported_write(temporary, "the epoch is filled again by the next run"):
                    if held:
                        shutil.copyfile(path, temporary)  # the rows other runs filled stay
                    else:
                        with open(temporary, "wb") as file:
                            file.truncate(self.num_samples * self.row_bytes)
            barrier()
            self._write_rows(temporary, epoch, view, batches[held + rank() : wanted : world_size()])
            barrier()
            if main:
                self._publish(temporary, path, None if wanted == len(batches) else wanted)
            barrier()
        return True

    def _write_rows(self, temporary: Path, epoch: int, view: str, batches: list[Tensor]) -> None:
        """This process's share of the rows, written in place (disjoint rows of one file)."""
        bar = tqdm(total=sum(map(len, batches)), desc=f"teacher cache: epoch {epoch + 1} {view}", unit="img",
                   leave=False, disable=not (self.progress and is_main_process()), mininterval=1.0, dynamic_ncols=True)
        with reported_write(temporary, "the epoch is filled again by the next run"), open(temporary, "r+b") as file:
            for index, rows in self.compute(epoch, view, batches):
                data = self.format.encode(rows).numpy()
                for sample, row in zip(index.tolist(), data, strict=True):
                    os.pwrite(file.fileno(), row.tobytes(), sample * self.row_bytes)
                bar.update(len(index))
            file.flush()
            os.fsync(file.fileno())
        bar.close()

    def _publish(self, temporary: Path, path: Path, batches: int | None) -> None:
        """Rename the filled file into place and record its size, checksum and coverage."""
        with open(temporary, "rb") as file:
            checksum = file_sha256(file)
        os.replace(temporary, path)
        manifest = read_manifest(self.folder)
        manifest["files"][path.name] = {"bytes": path.stat().st_size, "sha256": checksum, "batches": batches}
        atomic_write_bytes(self.folder / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())

    def verify_epoch(self, epoch: int) -> None:
        """Check the epoch's files against their sizes and checksums in the manifest."""
        manifest = read_manifest(self.folder)
        for view in self.views:
            self._open(manifest, self.epoch_file(epoch, view), None)

    def prepare_epoch(self, epoch: int, steps: range | None = None) -> None:
        """Fill the epoch if it is new, then check its files against the manifest and map them.
        `steps`: the training steps this process takes in the epoch, so that on an accelerator
        each batch's rows are copied one batch ahead; without it rows are gathered at `read`."""
        self.fill_epoch(epoch)
        manifest = read_manifest(self.folder)
        schedule = None if steps is None else self.order.batches(epoch)[steps.start : steps.stop]
        self.readers = {view: self._open(manifest, self.epoch_file(epoch, view), schedule) for view in self.views}
        self.epoch = epoch

    def _open(self, manifest: dict[str, Any], path: Path, schedule: list[Tensor] | None) -> "_ViewReader":
        expected = self.num_samples * self.row_bytes
        entry = manifest["files"].get(path.name)
        delete = "delete it and it is filled again"
        if not path.is_file():
            raise _not_a_file(path) if path.exists() else KdistillError(
                f"teacher cache file {path} is missing (another process deleted it?): run again to fill it")
        if entry is None:
            raise KdistillError(f"teacher cache file {path} has no entry in its manifest: {delete}")
        with open(path, "rb") as file:  # one open file: the bytes checked are the bytes mapped
            size = os.fstat(file.fileno()).st_size
            if size != expected or entry["bytes"] != expected:
                raise KdistillError(f"teacher cache file {path} has {size} bytes, not {expected}: {delete}")
            if file_sha256(file) != entry["sha256"]:
                raise KdistillError(f"teacher cache file {path} does not match its checksum in the manifest "
                                    f"(its bytes changed after it was filled): {delete}")
            table = np.memmap(file, dtype=np.uint8, mode="r", shape=(self.num_samples, self.row_bytes))
        return _ViewReader(table, self.device, schedule)

    def read(self, index: Tensor, view: str) -> Features:
        if view not in self.readers:
            raise KdistillError(f"the teacher cache holds no '{view}' view for epoch {self.epoch}")
        return self.format.decode(self.readers[view].rows(index))


class _ViewReader:
    """Rows (uint8) of one epoch file by batch, from a read-only memory map: resident memory holds the
    batches in flight, not the epoch. With a schedule (the index batches the run will read, in
    order) each batch's rows are gathered into pinned host memory and copied to an accelerator
    one batch ahead, without a host-device synchronisation; the batch's `index` tensor (one per
    step, however many times a method reads the view) advances the schedule."""

    IN_FLIGHT = 3  # pinned buffers: one being read by the step, one being copied, one being gathered

    def __init__(self, table: np.memmap, device: torch.device, schedule: list[Tensor] | None):
        self.table, self.device, self.schedule = table, device, schedule
        self.position = 0
        self.last_index: Tensor | None = None
        self.current: Tensor | None = None
        self.ahead: Tensor | None = None
        self.buffers: list[Tensor] = []
        self.copied: list[Any] = []

    def _gather(self, host_index: Tensor) -> Tensor:
        return torch.from_numpy(self.table[host_index.numpy()])

    def _issue(self, step: int) -> Tensor | None:
        """Start moving the rows of the schedule's `step` to the device."""
        if step >= len(self.schedule):
            return None
        rows = self._gather(self.schedule[step])
        if self.device.type != "cuda":
            return rows.to(self.device)
        slot = step % self.IN_FLIGHT
        if len(self.buffers) < self.IN_FLIGHT:
            self.buffers.append(torch.empty(0, dtype=torch.uint8).pin_memory())
            self.copied.append(None)
        if self.copied[slot] is not None:
            self.copied[slot].synchronize()  # the copy issued IN_FLIGHT batches ago has read this buffer
        if self.buffers[slot].shape != rows.shape:
            self.buffers[slot] = torch.empty(rows.shape, dtype=torch.uint8).pin_memory()
        self.buffers[slot].copy_(rows)
        moved = self.buffers[slot].to(self.device, non_blocking=True)
        self.copied[slot] = torch.cuda.Event()
        self.copied[slot].record()
        return moved

    def rows(self, index: Tensor) -> Tensor:
        if self.schedule is None:
            return self._gather(index.cpu()).to(self.device)
        if index is self.last_index:
            return self.current
        if self.position >= len(self.schedule):
            raise KdistillError("the teacher cache was read for more batches than the epoch's schedule holds")
        expected = self.schedule[self.position]
        if index.device.type == "cpu" and not torch.equal(index, expected):  # checked where it costs no sync
            raise KdistillError("the teacher cache was read out of the epoch's batch order")
        self.current = self.ahead if self.ahead is not None else self._issue(self.position)
        self.position += 1
        self.ahead = self._issue(self.position)
        self.last_index = index
        return self.current


def epoch_rows_function(distiller: Distiller, loader: Loader, channels_last: bool,
                        autocast_dtype: torch.dtype | None, device: torch.device, fill_batch: int | None = None,
                        ) -> Callable[[int, str, list[Tensor]], Iterator[tuple[Tensor, Tensor]]]:
    """compute(epoch, view, index batches) -> (index, [B, C + D] float32 rows) per batch: the
    teacher's logits and pooled feature on the samples' view, in the training batches' format
    (and size, unless `fill_batch` regroups the same samples into batches of its size)."""
    def compute(epoch: int, view: str, batches: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        if fill_batch is not None and batches:
            batches = list(torch.cat(batches).split(fill_batch))
        loader.set_epoch(epoch)
        # A DataLoader draws its base seed from the global generator: the pass must leave it as it
        # was, or a method's own draws (CRD's negatives) would differ from a run without the cache.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for index, batch in zip(batches, loader.batches_of(batches), strict=True):
                if channels_last:
                    batch = channels_last_views(batch)
                with autocast(device, autocast_dtype):
                    features = distiller.teacher_features(batch[view])
                yield index, torch.cat([features.logits.float(), features.pooled.float()], dim=1)
    return compute


def open_teacher_cache(cfg: RunConfig, distiller: Distiller, loaders: Loaders, device: torch.device,
                       autocast_dtype: torch.dtype | None) -> TeacherCache:
    """The cache at cfg.teacher_cache for this run: created (manifest) if new, else checked
    against this run's identity: every configuration key that changes the teacher's outputs
    (`cache_identity`), the training data's state and the teacher's weights."""
    name = cfg.method.name
    if distiller.teacher is None:
        raise KdistillError(f"method '{name}' runs no teacher, so teacher_cache= has nothing to store: drop it")
    extra = sorted(distiller.teacher_reads - LOGITS_AND_POOLED)
    if extra:
        raise KdistillError(f"method '{name}' reads the teacher's {' and '.join(extra)}, "
                            "which teacher_cache= does not store "
                            "(only logits and the pooled feature): drop teacher_cache= for this method")
    if cfg.data.repeated_augment > 1:
        raise KdistillError("teacher_cache= stores one view per sample and epoch, not data.repeated_augment's repeats: "
                            "set data.repeated_augment=1 or drop teacher_cache=")
    folder = Path(cfg.teacher_cache)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KdistillError(f"teacher_cache folder '{folder}' cannot be created ({error.strerror}): "
                            "choose another") from None
    info, loader = loaders.info, loaders.train
    probe = probe_features(distiller.teacher, (info.in_chans, info.image_size, info.image_size))
    topk, num_classes = cfg.teacher_cache_topk, probe.logits.shape[1]
    if topk is not None and not distiller.accepts_topk_teacher:
        raise KdistillError(f"method '{name}' needs the teacher's full outputs, which teacher_cache_topk= does not "
                            "keep: drop teacher_cache_topk= (the exact cache serves this method)")
    if topk is not None and not 1 <= topk < num_classes:
        raise KdistillError(f"teacher_cache_topk={topk} is outside [1, {num_classes - 1}] for a teacher of "
                            f"{num_classes} classes: choose a K in that range, or drop it for the exact cache")
    # One flat level: configuration keys as a user writes them, so a mismatch names the key.
    manifest = {
        "format": FORMAT_VERSION,
        "kdistill_version": kdistill.__version__,
        **cache_identity(cfg),
        "teacher.weights_sha256": weights_sha256(distiller.teacher),
        "data.tree_state": data_state(loaders),
        # What a row holds: the logits, then the pooled feature, of one training sample.
        "dtype": cfg.teacher_cache_dtype, "rows": loader.dataset_size,
        "logits": num_classes, "pooled": probe.pooled.shape[1],
        "epochs": cfg.epochs,
    }
    manifest = json.loads(json.dumps(manifest))  # as it reads back: tuples as lists
    encoded = (json.dumps({**manifest, "files": {}}, indent=2) + "\n").encode()
    if is_main_process() and not (folder / MANIFEST_FILE).exists():
        if any(folder.glob("epoch_*")):
            # Never adopted: what the files were computed from went with the manifest.
            raise KdistillError(f"teacher cache {folder} holds epoch files but no {MANIFEST_FILE}, so what they were "
                                "computed from is unknown: delete the folder (it is filled again) "
                                "or choose another teacher_cache=<folder>")
        atomic_write_bytes(folder / MANIFEST_FILE, encoded, exclusive=True)
    barrier()
    stored = read_manifest(folder)
    mismatch = manifest_mismatch(stored, manifest)
    if mismatch is not None:
        raise KdistillError(f"teacher cache {folder} was filled for another configuration ({mismatch}): "
                            "use another teacher_cache=<folder>, or delete this one")
    views = ("image", "image_strong") if distiller.needs_strong_view else ("image",)
    if cfg.teacher_cache_fill_batch is not None and cfg.teacher_cache_fill_batch < 1:
        raise KdistillError(f"teacher_cache_fill_batch={cfg.teacher_cache_fill_batch} is below 1: give a batch size "
                            "(e.g. 512), or drop it to fill in the run's batches")
    compute = epoch_rows_function(distiller, loader, cfg.channels_last, autocast_dtype, device,
                                  cfg.teacher_cache_fill_batch)
    # A run capped by steps_per_epoch reads the first steps x processes covering batches.
    capped = cfg.steps_per_epoch is not None and cfg.steps_per_epoch < len(loader)
    covered = cfg.steps_per_epoch * world_size() if capped else None
    return TeacherCache(folder, stored, views, device, compute, loader.order, covered, cfg.progress)
