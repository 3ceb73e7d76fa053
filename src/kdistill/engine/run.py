"""One call from a configuration to a finished run folder."""

from typing import Any

from omegaconf import DictConfig

from kdistill.distributed import barrier, is_main_process
from kdistill.engine.setup import build_run
from kdistill.engine.trainer import Trainer, prepare_out_dir
from kdistill.run_folder import RunFolder


def train_run(cfg: DictConfig) -> dict[str, Any]:
    """Train (or resume) the run that `cfg` describes; returns its results, also in results.json.

    Under torchrun every process calls this; `data.batch_size` is per process and only rank 0
    writes the run folder."""
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
