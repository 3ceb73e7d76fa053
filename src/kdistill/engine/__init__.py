"""The training engine: one Trainer for teachers and for every method."""

from kdistill.engine.run import fill_teacher_cache, train_run
from kdistill.engine.setup import ResolvedRun, build_run, resolve_run
from kdistill.engine.trainer import Trainer

__all__ = ["ResolvedRun", "Trainer", "build_run", "fill_teacher_cache", "resolve_run", "train_run"]
