"""One call from a configuration to a finished run folder."""

import copy
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from kdistill.distributed import barrier, is_main_process
from kdistill.engine.setup import build_run
from kdistill.engine.trainer import Trainer, prepare_out_dir
from kdistill.run_folder import RunFolder

PATH_KEYS = ("teacher_checkpoint", "student_checkpoint", "data.root")


def with_absolute_paths(cfg: DictConfig) -> DictConfig:
    """`cfg` with the files and folders it names made absolute, so that the saved config.yaml names
    the same files from any working directory (a teacher-based evaluation run elsewhere)."""
    resolved = copy.deepcopy(cfg)
    for key in PATH_KEYS:
        value = OmegaConf.select(cfg, key)
        if value is not None:
            OmegaConf.update(resolved, key, str(Path(value).expanduser().resolve()))
    return resolved


def train_run(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) the run that `cfg` describes; returns its results, also in results.json.

    Under torchrun every process calls this; `data.batch_size` is per process and only rank 0
    writes the run folder."""
    cfg = with_absolute_paths(cfg)
    run = RunFolder(cfg.out)
    parts = build_run(cfg)  # joins the torchrun process group, if any
    try:
        if is_main_process():
            prepare_out_dir(run, cfg.resume)  # takes the run's lock
        barrier()
        cfg.optim.lr = parts.lr  # the saved config records the learning rate actually used
        return Trainer(cfg, parts.distiller, parts.loaders, parts.device, parts.lr, run).fit()
    finally:
        run.unlock()
