"""From a configuration to the parts of a run: device, data, models, method."""

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdistill.config import RunConfig
from kdistill.data import Loaders, build_loaders
from kdistill.distributed import init_from_environment, rank, world_size
from kdistill.engine.teacher_cache import open_teacher_cache
from kdistill.errors import KdistillError
from kdistill.methods import Distiller, MethodContext, distiller_from_options, method_class
from kdistill.models import TIMM_PREFIX, TV_PREFIX, create_model
from kdistill.models.base import FeatureModel
from kdistill.models.checkpoint import load_checkpoint, load_state_into, read_state_dict, stored_classes
from kdistill.models.pretrained import preprocessing, pretrained_classes
from kdistill.precision import autocast_dtype
from kdistill.run_folder import RunFolder


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KdistillError(f"unknown device '{name}': use device=auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdistillError(f"device '{name}' asked for, but this machine has no CUDA device: use device=cpu or device=auto")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def library_preprocessing(cfg: RunConfig) -> dict[str, Any]:
    """The preprocessing keys of `cfg.data` left unset (None), filled from the library config of
    the pretrained model: the student's when student_pretrained, else the teacher's when
    teacher_pretrained. The recipe's own values win."""
    name = cfg.student if cfg.student_pretrained else cfg.teacher if cfg.teacher_pretrained else None
    library = preprocessing(name) if name is not None else None
    if library is None:
        return {}
    values = {"mean": tuple(library.mean), "std": tuple(library.std), "image_size": library.image_size,
              "eval_crop_pct": library.crop_pct, "interpolation": library.interpolation}
    return {key: value for key, value in values.items() if getattr(cfg.data, key) is None}


@dataclass(frozen=True)
class ResolvedRun:
    """A run's configuration completed once, and what is derived from it (never written back
    into the loaded configuration)."""

    cfg: RunConfig  # with absolute paths and the library preprocessing filled in: what config.yaml saves
    strong_view: bool  # the method's batches also carry "image_strong"


def resolve_run(cfg: RunConfig) -> ResolvedRun:
    """The files and folders `cfg` names made absolute, so that the saved config.yaml names the
    same files from any working directory; the preprocessing of a pretrained model filled in."""
    data = dataclasses.replace(cfg.data, root=_absolute(cfg.data.root), **library_preprocessing(cfg))
    resolved = dataclasses.replace(cfg, data=data, teacher_checkpoint=_absolute(cfg.teacher_checkpoint),
                                   student_checkpoint=_absolute(cfg.student_checkpoint),
                                   teacher_cache=_absolute(cfg.teacher_cache))
    return ResolvedRun(resolved, method_class(cfg.method.name).needs_strong_view)


def teacher_weights_path(path: str, which: str = "last") -> Path:
    """A weight file, or a run folder (its last-epoch weights by default, as the tables' teachers are)."""
    resolved = RunFolder(path).weights_path(which) if Path(path).is_dir() else Path(path)
    if not resolved.is_file():
        raise KdistillError(f"checkpoint '{resolved}' not found: give a .pth file or a finished run folder")
    return resolved


def load_trained_model(name: str, checkpoint: str, num_classes: int, in_chans: int, data_name: str,
                       which: str = "last", options: dict | None = None, needs_head: bool = True) -> FeatureModel:
    """A zoo/timm/torchvision model with trained weights, checked against the data's class count.

    `needs_head=False` (label-free methods) accepts a backbone-only file and skips that check."""
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, **(options or {}))
    path = teacher_weights_path(checkpoint, which)
    state_dict = read_state_dict(path)
    classes = stored_classes(state_dict, model) if needs_head else None
    if classes is not None and classes != num_classes:
        raise KdistillError(f"checkpoint '{path}' has {classes} classes but data set "
                            f"'{data_name}' has {num_classes}: use a model trained on this data set")
    load_state_into(model, state_dict, path, allow_missing_head=not needs_head)
    return model


def build_teacher(cfg: RunConfig, num_classes: int, in_chans: int, needs_head: bool = True) -> FeatureModel:
    """The teacher from teacher_checkpoint, else (teacher_pretrained) from its library's weights."""
    if cfg.teacher is None:
        raise KdistillError("no teacher: set teacher=<model> and teacher_checkpoint=<file or run folder>")
    if cfg.teacher_checkpoint is None and cfg.teacher_pretrained:
        weight_classes = pretrained_classes(cfg.teacher) if cfg.teacher.startswith((TIMM_PREFIX, TV_PREFIX)) else None
        if needs_head and weight_classes not in (None, num_classes):
            raise KdistillError(f"the pretrained weights of teacher '{cfg.teacher}' have {weight_classes} classes but "
                                f"data set '{cfg.data.name}' has {num_classes}, so its logits mean nothing here: "
                                f"use a teacher trained on this data set (teacher_checkpoint=)")
        return create_model(cfg.teacher, num_classes=num_classes, in_chans=in_chans, pretrained=True,
                            **cfg.teacher_options)
    if cfg.teacher_checkpoint is None:
        raise KdistillError(f"teacher '{cfg.teacher}' has no weights: set teacher_checkpoint=<file or run folder> "
                            f"(or teacher_pretrained=true for a timm:/tv: model)")
    return load_trained_model(cfg.teacher, cfg.teacher_checkpoint, num_classes, in_chans, cfg.data.name,
                              options=cfg.teacher_options, needs_head=needs_head)


def compile_extract(model: FeatureModel) -> None:
    """Compile the model's feature pass with torch.compile (`forward` goes through it too);
    the parameters stay the model's own, so weights save and load as before."""
    model.extract = torch.compile(model.extract)


@dataclass
class RunParts:
    distiller: Distiller
    loaders: Loaders
    device: torch.device


def build_run(run: ResolvedRun) -> RunParts:
    """Everything a Trainer needs, built from a resolved configuration."""
    cfg = run.cfg
    device = resolve_device(init_from_environment(cfg.device))
    seed_everything(cfg.seed)
    cls = method_class(cfg.method.name)
    loaders = build_loaders(cfg.data, device, seed=cfg.seed, rank=rank(), world_size=world_size(),
                            with_strong_view=run.strong_view)
    info = loaders.info
    student = create_model(cfg.student, num_classes=info.num_classes, in_chans=info.in_chans,
                           pretrained=cfg.student_pretrained, **cfg.student_options)
    if cfg.student_checkpoint is not None:
        load_checkpoint(student, Path(cfg.student_checkpoint))
    teacher = build_teacher(cfg, info.num_classes, info.in_chans, cls.uses_teacher_logits) if cls.needs_teacher else None
    context = MethodContext((info.in_chans, info.image_size, info.image_size), info.num_classes,
                            loaders.train.labels, cfg.optim.lr)
    distiller = distiller_from_options(cfg.method.name, cfg.method.options, student, teacher, context).to(device)
    if cfg.channels_last:
        distiller.to(memory_format=torch.channels_last)
    if cfg.compile:
        for model in (student, distiller.teacher):
            if model is not None:
                compile_extract(model)
    if cfg.teacher_cache is not None:
        distiller.teacher_outputs = open_teacher_cache(cfg, distiller, loaders, device,
                                                       autocast_dtype(cfg.precision, device))
    return RunParts(distiller, loaders, device)
