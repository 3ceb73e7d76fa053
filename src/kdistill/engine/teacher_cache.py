"""The exact teacher cache (`teacher_cache=DIR`): the teacher's logits and pooled feature per
(epoch, sample index, view), computed once and read by every run that shares its teacher, data,
transform and seed (every method of a grid, every rerun).

Why it is exact: every augmentation parameter is keyed by (seed, epoch, sample index) and the
teacher is frozen in eval mode, so its output on a sample's view is a pure function of those. An
epoch's table is computed in the run's own batches (the epoch's shuffle order, then the samples
the training batches drop) with the run's memory format and precision, so with float32 storage a
run that reads the cache computes the same numbers as one that runs the teacher.

Layout: `DIR/manifest.json` (what the outputs are a function of) and one file per (epoch, view),
`DIR/epoch_0003.image.bin`: a raw [N, C + D] array of the manifest's dtype, one row per sample
index, the C logits then the D-wide pooled feature. A file is written under a temporary name and
renamed into place, so runs that fill the same epoch at once each leave a whole file and readers
never see a partial one. A reading run maps the epoch's files (CPU) or copies them to its device
once per epoch (CUDA: 2 x 50000 x (100 + 256) B = 36 MB for CIFAR-100 in float16), so a step
gathers its rows without a host-device synchronisation.
"""

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import kdistill
from kdistill.config import EXECUTION_KEYS, RunConfig, flat_config
from kdistill.data import Loader, Loaders
from kdistill.data.batch import channels_last_views
from kdistill.distributed import barrier, is_main_process
from kdistill.errors import KdistillError
from kdistill.files import atomic_write_bytes
from kdistill.methods.base import LOGITS_AND_POOLED, Distiller
from kdistill.models.base import Features, probe_features
from kdistill.precision import autocast

CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 2
INFORMATIONAL_KEYS = ("epochs",)  # recorded, not required to match
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


def weights_sha256(model: torch.nn.Module) -> str:
    """A checksum of the model's weights (names and bytes): the same for the same weights in any
    file format, and defined for library-pretrained teachers that have no file."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.2f} MB"


def manifest_mismatch(stored: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """'key: stored vs wanted' for the first fact on which two (flat) manifests differ, None when they agree."""
    for key in sorted(stored.keys() | wanted.keys()):
        if key not in INFORMATIONAL_KEYS and stored.get(key) != wanted.get(key):
            return f"{key} is {stored.get(key)!r} there but {wanted.get(key)!r} in this run"
    return None


class TeacherCache:
    """The teacher's outputs of one run's configuration, filled an epoch at a time.

    `prepare_epoch(epoch)` (called by the Trainer before each epoch, with the data epoch the
    loader uses) fills the epoch's missing files with `compute(epoch, view)` and loads them;
    `read(index, view)` returns the rows of a batch as `Features` (logits, pooled; no stages).
    """

    def __init__(self, folder: Path, manifest: dict[str, Any], views: tuple[str, ...], device: torch.device,
                 compute: Callable[[int, str], Tensor]):
        self.folder, self.manifest, self.views, self.device = folder, manifest, views, device
        self.dtype = CACHE_DTYPES[manifest["dtype"]]
        self.num_samples, self.num_classes, self.feature_dim = manifest["rows"], manifest["logits"], manifest["pooled"]
        self.compute = compute
        self.tables: dict[str, Tensor] = {}
        self.epoch: int | None = None
        self.announced = False

    @property
    def row_bytes(self) -> int:
        return (self.num_classes + self.feature_dim) * self.dtype.itemsize

    def epoch_file(self, epoch: int, view: str) -> Path:
        return self.folder / f"epoch_{epoch:04d}.{view}.bin"

    def disk_use(self, epochs: int) -> str:
        """A line on what filling `epochs` epochs of this run's views costs on disk."""
        per_sample = self.num_samples * self.dtype.itemsize * epochs * len(self.views)
        logits, pooled = per_sample * self.num_classes, per_sample * self.feature_dim
        return (f"teacher cache {self.folder}: {epochs} epochs x {len(self.views)} view(s) x "
                f"{self.num_samples} samples x "
                f"({self.num_classes} logits + {self.feature_dim} pooled) x {self.dtype.itemsize} B = "
                f"{_size(logits + pooled)} (logits {_size(logits)}, pooled {_size(pooled)})")

    def missing_views(self, epoch: int) -> list[str]:
        return [view for view in self.views if not self.epoch_file(epoch, view).is_file()]

    def fill_epoch(self, epoch: int) -> None:
        """Compute and store the epoch's missing views (the main process; the others wait)."""
        missing = self.missing_views(epoch)
        if missing and is_main_process():
            if not self.announced:
                print(self.disk_use(self.manifest["epochs"]), flush=True)
                self.announced = True
            for view in missing:
                table = self.compute(epoch, view).to(self.dtype).cpu()
                data = table.view(torch.uint8).numpy().tobytes()
                atomic_write_bytes(self.epoch_file(epoch, view), data)
        barrier()

    def prepare_epoch(self, epoch: int) -> None:
        self.fill_epoch(epoch)
        self.tables = {view: self._load(self.epoch_file(epoch, view)) for view in self.views}
        self.epoch = epoch

    def _load(self, path: Path) -> Tensor:
        expected = self.num_samples * self.row_bytes
        if path.stat().st_size != expected:
            raise KdistillError(f"teacher cache file {path} has {path.stat().st_size} bytes, not {expected}: "
                                "delete it and it is filled again")
        size = self.num_samples * (self.num_classes + self.feature_dim)
        table = torch.from_file(str(path), shared=False, size=size, dtype=self.dtype)
        return table.view(self.num_samples, -1).to(self.device)

    def read(self, index: Tensor, view: str) -> Features:
        if view not in self.tables:
            raise KdistillError(f"the teacher cache holds no '{view}' view for epoch {self.epoch}")
        rows = self.tables[view][index].float()
        return Features(rows[:, : self.num_classes].contiguous(), [], rows[:, self.num_classes :].contiguous())


def epoch_table_function(distiller: Distiller, loader: Loader, channels_last: bool,
                         autocast_dtype: torch.dtype | None, device: torch.device) -> Callable[[int, str], Tensor]:
    """compute(epoch, view) -> the [N, C + D] float32 table of the teacher's logits and pooled
    feature on every sample's view, run in the training batches' order and format."""
    def compute(epoch: int, view: str) -> Tensor:
        loader.set_epoch(epoch)
        table = None
        # A DataLoader draws its base seed from the global generator: the pass must leave it as it
        # was, or a method's own draws (CRD's negatives) would differ from a run without the cache.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for batch in loader.batches_of(loader.order.covering_batches(epoch)):
                if channels_last:
                    batch = channels_last_views(batch)
                with autocast(device, autocast_dtype):
                    features = distiller.teacher_features(batch[view])
                rows = torch.cat([features.logits.float(), features.pooled.float()], dim=1)
                if table is None:
                    table = torch.zeros(loader.dataset_size, rows.shape[1], device=rows.device)
                table[batch["index"]] = rows
        return table
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
    if cfg.teacher_cache_dtype not in CACHE_DTYPES:
        raise KdistillError(f"teacher_cache_dtype={cfg.teacher_cache_dtype} is unknown: "
                            "use float16, bfloat16 or float32")
    folder = Path(cfg.teacher_cache)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise KdistillError(f"teacher_cache folder '{folder}' cannot be created ({error.strerror}): "
                            "choose another") from None
    info, loader = loaders.info, loaders.train
    probe = probe_features(distiller.teacher, (info.in_chans, info.image_size, info.image_size))
    # One flat level: configuration keys as a user writes them, so a mismatch names the key.
    manifest = {
        "format": FORMAT_VERSION,
        "kdistill_version": kdistill.__version__,
        **cache_identity(cfg),
        "teacher.weights_sha256": weights_sha256(distiller.teacher),
        "data.tree_state": data_state(loaders),
        # What a row holds: the logits, then the pooled feature, of one training sample.
        "dtype": cfg.teacher_cache_dtype, "rows": loader.dataset_size,
        "logits": probe.logits.shape[1], "pooled": probe.pooled.shape[1],
        "epochs": cfg.epochs,
    }
    manifest = json.loads(json.dumps(manifest))  # as it reads back: tuples as lists
    encoded = (json.dumps(manifest, indent=2) + "\n").encode()
    if is_main_process():
        atomic_write_bytes(folder / MANIFEST_FILE, encoded, exclusive=True)
    barrier()
    stored = json.loads((folder / MANIFEST_FILE).read_text())
    mismatch = manifest_mismatch(stored, manifest)
    if mismatch is not None:
        raise KdistillError(f"teacher cache {folder} was filled for another configuration ({mismatch}): "
                            "use another teacher_cache=<folder>, or delete this one")
    views = ("image", "image_strong") if distiller.needs_strong_view else ("image",)
    compute = epoch_table_function(distiller, loader, cfg.channels_last, autocast_dtype, device)
    return TeacherCache(folder, stored, views, device, compute)
