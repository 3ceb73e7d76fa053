"""Trained models from weight files, run folders or their libraries, and the device a run asks
for: what the engine and the evaluations both build (it sits below both, so neither imports the other)."""

from pathlib import Path
from typing import Any

import torch

from kdistill.config import RunConfig
from kdistill.errors import KdistillError, missing_path_hint
from kdistill.methods import MethodContext, build_distiller
from kdistill.models import TIMM_PREFIX, TV_PREFIX, create_model
from kdistill.models.base import FeatureModel
from kdistill.models.checkpoint import load_state_into, read_state_dict, stored_classes
from kdistill.models.cifar_teachers import CIFAR100_TEACHERS, published_teacher_file
from kdistill.models.pretrained import preprocessing, pretrained_classes
from kdistill.run_folder import RunFolder


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise KdistillError(f"unknown device '{name}': use device=auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KdistillError(f"device '{name}' asked for, but this machine has no CUDA device: "
                            "use device=cpu or device=auto")
    return device


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


def teacher_weights_path(path: str, which: str = "last") -> Path:
    """A weight file, or a run folder (its last-epoch weights by default, as the tables' teachers are)."""
    resolved = RunFolder(path).weights_path(which) if Path(path).is_dir() else Path(path)
    if not resolved.is_file():
        raise KdistillError(f"checkpoint '{resolved}' not found{missing_path_hint(resolved)}: give a .pth file or a "
                            "finished run folder")
    return resolved


def load_trained_model(name: str, checkpoint: str, num_classes: int, in_chans: int, data_name: str,
                       which: str = "last", options: dict | None = None, needs_head: bool = True) -> FeatureModel:
    """A zoo/timm/torchvision model with trained weights, checked against the data's class count.

    `needs_head=False` (label-free methods) accepts a backbone-only file and skips that check."""
    model = create_model(name, num_classes=num_classes, in_chans=in_chans, **(options or {}))
    return _with_trained_weights(model, checkpoint, num_classes, data_name, which, needs_head)


def load_trained_student(cfg: RunConfig, checkpoint: str, num_classes: int, in_chans: int, image_size: int,
                         which: str = "last") -> FeatureModel:
    """The student a run trained, as the run deploys it, with its trained weights: the one way
    every evaluation and export loads a run's student. For a method whose deployed student is more
    than the student model (`Distiller.deploys_composite`, e.g. SimKD: student + projector + the
    teacher's classifier), the method is built on the teacher's architecture (no teacher weights
    are read: the weight file holds every part the deployed student uses)."""
    student = create_model(cfg.student, num_classes=num_classes, in_chans=in_chans, **cfg.student_options)
    if cfg.method.spec.deploys_composite:
        if cfg.teacher is None:
            raise KdistillError(f"method '{cfg.method.name}' deploys its student with parts of the teacher: "
                                "set teacher=<the run's teacher model>")
        teacher = create_model(cfg.teacher, num_classes=num_classes, in_chans=in_chans, **cfg.teacher_options)
        context = MethodContext((in_chans, image_size, image_size), num_classes)
        student = build_distiller(cfg.method, student, teacher, context).deployed_student()
    return _with_trained_weights(student, checkpoint, num_classes, cfg.data.name, which, needs_head=True)


def _with_trained_weights(model: FeatureModel, checkpoint: str, num_classes: int, data_name: str, which: str,
                          needs_head: bool) -> FeatureModel:
    """`model` with the weights of `checkpoint` (a file, or a run folder's `which` weights)."""
    path = teacher_weights_path(checkpoint, which)
    state_dict = read_state_dict(path)
    classes = stored_classes(state_dict, model) if needs_head else None
    if classes is not None and classes != num_classes:
        raise KdistillError(f"checkpoint '{path}' has {classes} classes but data set "
                            f"'{data_name}' has {num_classes}: use a model trained on this data set")
    load_state_into(model, state_dict, path, allow_missing_head=not needs_head)
    return model


def build_teacher(cfg: RunConfig, num_classes: int, in_chans: int, needs_head: bool = True) -> FeatureModel:
    """The teacher from teacher_checkpoint, else (teacher_pretrained) from its library's weights or,
    for a published CIFAR-100 teacher, from mdistiller's archive (fetched once into the cache)."""
    if cfg.teacher is None:
        raise KdistillError("no teacher: set teacher=<model> and teacher_checkpoint=<file or run folder>")
    if cfg.teacher_checkpoint is None and cfg.teacher_pretrained and cfg.teacher in CIFAR100_TEACHERS:
        return load_trained_model(cfg.teacher, str(published_teacher_file(cfg.teacher)), num_classes, in_chans,
                                  cfg.data.name, options=cfg.teacher_options, needs_head=needs_head)
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
                            f"(or teacher_pretrained=true for a timm:/tv: model or a published CIFAR-100 teacher: "
                            f"{', '.join(CIFAR100_TEACHERS)})")
    return load_trained_model(cfg.teacher, cfg.teacher_checkpoint, num_classes, in_chans, cfg.data.name,
                              options=cfg.teacher_options, needs_head=needs_head)
