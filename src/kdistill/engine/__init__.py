"""The training engine: one Trainer for teachers and for every method."""

from kdistill.engine.run import fill_teacher_cache, train_run
from kdistill.engine.setup import build_run, load_config
from kdistill.engine.trainer import Trainer, prepare_out_dir

__all__ = ["Trainer", "build_run", "fill_teacher_cache", "load_config", "prepare_out_dir", "train_run"]
