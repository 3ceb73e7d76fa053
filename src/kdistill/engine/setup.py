"""From a configuration to the parts of a run: device, data, models, method."""

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdistill.config import RunConfig
from kdistill.data import Loaders, build_loaders
from kdistill.distributed import init_from_environment, rank, world_size
from kdistill.engine.teacher_cache import TeacherCache, open_teacher_cache
from kdistill.loading import build_teacher, library_preprocessing, resolve_device
from kdistill.methods import Distiller, MethodContext, build_distiller
from kdistill.models import create_model
from kdistill.models.base import FeatureModel
from kdistill.models.checkpoint import load_checkpoint
from kdistill.precision import autocast_dtype


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _absolute(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


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
    return ResolvedRun(resolved, cfg.method.spec.needs_strong_view)


def compile_extract(model: FeatureModel) -> None:
    """Compile the model's feature pass with torch.compile (`forward` goes through it too);
    the parameters stay the model's own, so weights save and load as before."""
    model.extract = torch.compile(model.extract)


@dataclass
class RunParts:
    distiller: Distiller
    loaders: Loaders
    device: torch.device
    teacher_cache: TeacherCache | None = None  # the Trainer prepares its epochs; the distiller reads it


def build_run(run: ResolvedRun) -> RunParts:
    """Everything a Trainer needs, built from a resolved configuration."""
    cfg = run.cfg
    device = resolve_device(init_from_environment(cfg.device))
    seed_everything(cfg.seed)
    loaders = build_loaders(cfg.data, device, seed=cfg.seed, rank=rank(), world_size=world_size(),
                            with_strong_view=run.strong_view)
    info = loaders.info
    student = create_model(cfg.student, num_classes=info.num_classes, in_chans=info.in_chans,
                           pretrained=cfg.student_pretrained, **cfg.student_options)
    if cfg.student_checkpoint is not None:
        load_checkpoint(student, Path(cfg.student_checkpoint))
    spec = cfg.method.spec
    teacher = (build_teacher(cfg, info.num_classes, info.in_chans, spec.uses_teacher_logits)
               if spec.needs_teacher else None)
    context = MethodContext((info.in_chans, info.image_size, info.image_size), info.num_classes,
                            loaders.train.labels, cfg.optim.lr, cfg.data.batch_size)
    distiller = build_distiller(cfg.method, student, teacher, context).to(device)
    if cfg.channels_last:
        distiller.to(memory_format=torch.channels_last)
    if cfg.compile:
        for model in (student, distiller.teacher):
            if model is not None:
                compile_extract(model)
    cache = None
    if cfg.teacher_cache is not None:
        cache = open_teacher_cache(cfg, distiller, loaders, device, autocast_dtype(cfg.precision, device))
        distiller.teacher_outputs = cache
    return RunParts(distiller, loaders, device, cache)
