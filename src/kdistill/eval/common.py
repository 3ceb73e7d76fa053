"""What every evaluation command shares: the target (a run folder or a weight file), its models
and data, a second data set given as `<prefix>.*` keys, and logits/features over a loader."""

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import Tensor
from tqdm import tqdm

from kdistill.config import DataConfig, RunConfig
from kdistill.config.loading import load_config
from kdistill.data import DatasetInfo, Loader, Loaders, build_loaders
from kdistill.data.augment import Stream, keyed_bits
from kdistill.data.loaders import Normalizer
from kdistill.errors import KdistillError, missing_path_hint
from kdistill.files import atomic_write_text
from kdistill.loading import (
    build_teacher,
    library_preprocessing,
    load_trained_student,
    resolve_device,
)
from kdistill.models.base import FeatureModel
from kdistill.models.checkpoint import weights_sha256
from kdistill.precision import autocast, autocast_dtype
from kdistill.run_folder import CONFIG_FILE, RunFolder


@dataclass
class Target:
    """A run folder (its config.yaml names model and data) or a weight file (`student=`, `data.*`
    given as overrides), resolved to the configuration its evaluations use."""

    path: Path
    cfg: RunConfig
    which: str  # the run folder's weights: "last" or "best"

    def output_path(self, name: str, suffix: str) -> Path:
        """Where an evaluation's file goes: inside the run folder, or beside the weight file."""
        if self.path.is_dir():
            return RunFolder(self.path).eval_output(name, self.which, suffix)
        return self.path.with_name(f"{self.path.name}.{name}{suffix}")


def resolve_target(target: str, overrides: list[str], which: str = "last") -> Target:
    path = Path(target)
    if path.is_dir():
        run = RunFolder(path)
        if not run.is_run():
            raise KdistillError(f"'{target}' is not a run folder (no {CONFIG_FILE}): give a run folder or a .pth file")
        cfg = load_config(str(run.config_path), overrides)
    elif path.is_file():
        cfg = load_config(None, overrides)
    else:
        raise KdistillError(f"'{target}' does not exist{missing_path_hint(target)}: give a run folder or a .pth "
                            "weight file")
    return Target(path, cfg, which)


def split_overrides(items: list[str], prefix: str) -> tuple[list[str], list[str]]:
    """(`<prefix>.key=value` items with the prefix removed, the other items)."""
    marker = f"{prefix}."
    own = [item.removeprefix(marker) for item in items if item.startswith(marker)]
    return own, [item for item in items if not item.startswith(marker)]


BANK_SIZE_KEY = "bank_size"


def take_bank_size(items: list[str], prefix: str) -> tuple[int | None, list[str]]:
    """(`<prefix>.bank_size=N` as N, or None; the other `<prefix>.*` items, prefix removed), where
    the items are those `split_overrides` gave for `prefix`."""
    sizes = [item.split("=", 1)[1] for item in items if item.split("=", 1)[0] == BANK_SIZE_KEY]
    rest = [item for item in items if item.split("=", 1)[0] != BANK_SIZE_KEY]
    if not sizes:
        return None, rest
    try:
        size = int(sizes[-1])
    except ValueError:
        size = 0
    if size < 1:
        raise KdistillError(f"{prefix}.{BANK_SIZE_KEY}={sizes[-1]} is not a positive whole number: set "
                            f"{prefix}.{BANK_SIZE_KEY}=N (N training samples), or leave it out for all of them")
    return size, rest


def bank_indices(size: int, bank_size: int | None, seed: int) -> Tensor:
    """The training samples a feature bank embeds: all of them, or the `bank_size` whose keyed values
    (from the seed alone) are smallest, in their split's order: the same subset in every run and
    for teacher and student."""
    if bank_size is None or bank_size >= size:
        return torch.arange(size)
    keys = keyed_bits(seed, 0, torch.arange(size), Stream.BANK_SUBSET)
    return keys.argsort()[:bank_size].sort().values


def bank_batches(loader: Loader, bank_size: int | None, seed: int) -> tuple[Iterator[dict[str, Tensor]], int]:
    """(the batches of the bank's samples from a train loader read like a test split, their count)."""
    index_batches = list(bank_indices(loader.dataset_size, bank_size, seed).split(loader.order.batch_size))
    return loader.batches_of(index_batches), len(index_batches)


def build_eval_loaders(data: DataConfig, device: torch.device, seed: int) -> Loaders:
    """The data set's loaders with the train split read like a test split (a feature bank or a
    probe's training set needs every sample once, unaugmented)."""
    return build_loaders(data, device, seed=seed, train_as_eval=True)


@dataclass
class LoadedModel:
    name: str
    model: FeatureModel

    @functools.cached_property
    def fingerprint(self) -> dict[str, Any]:
        """Identifies these weights by their checksum, as the teacher cache does: a cache built from
        other (e.g. retrained) weights is stale, and a library model with no file has one too."""
        return {"model": self.name, "weights_sha256": weights_sha256(self.model)}


@dataclass
class Evaluation:
    """A target's models on its data: "student" (the run's trained model) and, when the run has
    one, "teacher"."""

    target: Target
    device: torch.device
    loaders: Loaders
    models: dict[str, LoadedModel]

    @property
    def cfg(self) -> RunConfig:
        return self.target.cfg

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return autocast_dtype(self.cfg.precision, self.device)


def load_evaluation(target: Target, teacher: str = "optional") -> Evaluation:
    """Load the target's model and data; `teacher` is "optional" (loaded when the config names
    one), "required" (an error without one) or "none"."""
    cfg = target.cfg
    device = resolve_device(cfg.device)
    # A weight file evaluated with a pretrained teacher: its library's transform.
    loaders = build_eval_loaders(dataclasses.replace(cfg.data, **library_preprocessing(cfg)), device, cfg.seed)
    info = loaders.info
    student = load_trained_student(cfg, str(target.path), info.num_classes, info.in_chans, info.image_size,
                                   target.which)
    models = {"student": LoadedModel(cfg.student, student.to(device).eval())}
    if teacher == "required" or (teacher == "optional" and cfg.teacher is not None):
        model = build_teacher(cfg, info.num_classes, info.in_chans,
                              needs_head=cfg.method.spec.uses_teacher_logits)
        models["teacher"] = LoadedModel(cfg.teacher, model.to(device).eval())
    return Evaluation(target, device, loaders, models)


def usable_cpus() -> int:
    """The CPUs this process may run on (what DataLoader checks its worker count against)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def build_other_loaders(prefix: str, own: list[str], evaluation: Evaluation) -> Loaders:
    """A second data set (a probe's or an OOD set) from the `<prefix>.*` keys (prefix removed by
    `split_overrides`), which are the keys of `data.*`.

    Its images are resized to the model's input size unless `<prefix>.image_size` says otherwise;
    its DataLoader workers are data.num_workers' default capped at the usable CPUs unless
    `<prefix>.num_workers` says otherwise.
    """
    model_info = evaluation.loaders.info
    try:
        data = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DataConfig), OmegaConf.from_dotlist(own)))
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or ""
        raise KdistillError(f"key '{prefix}.{key}' is invalid ({error.msg.splitlines()[0]}); "
                            f"{prefix}.* takes the keys of data.* (name, root, image_size, ...)") from None
    given = {item.split("=", 1)[0] for item in own}
    if "name" not in given:
        raise KdistillError(f"no {prefix} data set: set {prefix}.name=<data set> (and {prefix}.root=<folder>)")
    data = dataclasses.replace(
        data, image_size=data.image_size or model_info.image_size,
        eval_batch_size=data.eval_batch_size if "eval_batch_size" in given else evaluation.cfg.data.eval_batch_size,
        num_workers=data.num_workers if "num_workers" in given else min(data.num_workers, usable_cpus()))
    loaders = build_eval_loaders(data, evaluation.device, evaluation.cfg.seed)
    channels = loaders.info.in_chans
    if channels != model_info.in_chans:
        if {channels, model_info.in_chans} != {1, 3}:
            raise KdistillError(f"data set '{data.name}' has {channels}-channel images but the model takes "
                                f"{model_info.in_chans} (trained on '{model_info.name}'): choose a {prefix} data set "
                                f"with {model_info.in_chans}-channel images")
        print(f"note: {prefix} data '{data.name}' has {channels}-channel images; converted to the model's "
              f"{model_info.in_chans} ({'luma' if model_info.in_chans == 1 else 'grey repeated'})", file=sys.stderr)
    return loaders


# ---- pixels: the loaders yield normalised images; corruptions and re-normalisation need pixels

def to_pixels(images: Tensor, info: DatasetInfo) -> Tensor:
    """Normalised images back to the uint8 pixels they came from (exact: they were uint8)."""
    normalize = Normalizer(info.mean, info.std, images.device)
    return (images * normalize.std + normalize.mean).round().clamp(0, 255).to(torch.uint8)


def from_pixels(pixels: Tensor, info: DatasetInfo) -> Tensor:
    """uint8 pixels normalised as the loaders of the data set `info` normalise them."""
    return Normalizer(info.mean, info.std, pixels.device)(pixels)


LUMA_WEIGHTS = (19595, 38470, 7471)  # ITU-R 601-2 luma in 16-bit fixed point, PIL's "L" mode; sum 2**16


def to_channels(pixels: Tensor, channels: int) -> Tensor:
    """uint8 pixels [B, C, H, W] with `channels` channels: RGB to luma as PIL computes it (so a grey
    file read as RGB gets its grey values back exactly; torchvision's rgb_to_grayscale truncates
    them one level down), or grey repeated to RGB. Image folders are always read as RGB."""
    if pixels.shape[1] == channels:
        return pixels
    if channels == 1:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.int32, device=pixels.device).view(1, 3, 1, 1)
        return ((pixels.int() * weights).sum(1, keepdim=True) + 2**15).bitwise_right_shift(16).to(torch.uint8)
    return pixels.expand(-1, channels, -1, -1)


def model_inputs(loader: Loader, source: DatasetInfo, model: DatasetInfo) -> Iterator[dict[str, Tensor]]:
    """Batches of a data set as the model's own input pipeline makes them: its channel count and
    its training data's normalisation (a frozen model sees every input through that pipeline)."""
    for batch in loader:
        if (source.mean, source.std, source.in_chans) != (model.mean, model.std, model.in_chans):
            pixels = to_channels(to_pixels(batch["image"], source), model.in_chans)
            batch = {**batch, "image": from_pixels(pixels, model)}
        yield batch


# ---- outputs over a data set

@dataclass
class Outputs:
    """One model's outputs over a data set, on the CPU in float32, in the loader's order."""

    logits: Tensor  # [N, classes]
    pooled: Tensor  # [N, D]: the penultimate feature
    labels: Tensor  # [N]


@torch.no_grad()
def collect_outputs(models: dict[str, LoadedModel], batches: Iterable[dict[str, Tensor]], total: int, desc: str,
                    progress: bool, autocast_dtype: torch.dtype | None = None) -> dict[str, Outputs]:
    """Run every model on every batch (one pass over the data for all models)."""
    parts: dict[str, list[tuple[Tensor, Tensor]]] = {role: [] for role in models}
    labels = []
    for batch in tqdm(batches, total=total, desc=desc, leave=False, disable=not progress, dynamic_ncols=True,
                      mininterval=1.0):
        images = batch["image"]
        for role, loaded in models.items():
            with autocast(images.device, autocast_dtype):
                features = loaded.model.extract(images)
            parts[role].append((features.logits.float().cpu(), features.pooled.float().cpu()))
        labels.append(batch["label"].cpu())
    if not labels:
        raise KdistillError("the data set yielded no samples to evaluate: check data.name and data.root")
    all_labels = torch.cat(labels)
    return {role: Outputs(torch.cat([p[0] for p in chunks]), torch.cat([p[1] for p in chunks]), all_labels)
            for role, chunks in parts.items()}


def top1(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy in %."""
    return 100.0 * float((logits.argmax(1) == labels).float().mean())


def write_report(report: dict[str, Any], path: Path) -> dict[str, Any]:
    """Write the report as JSON and return it with the path it went to."""
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    return {**report, "written_to": str(path)}
