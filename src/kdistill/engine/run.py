"""One call from a configuration to a finished run folder."""

from typing import Any

from kdistill.config import RunConfig
from kdistill.distributed import barrier, is_main_process
from kdistill.engine.setup import build_run, resolve_run
from kdistill.engine.teacher_cache import TeacherCache
from kdistill.engine.trainer import Trainer, prepare_out_dir
from kdistill.errors import KdistillError
from kdistill.run_folder import RunFolder


def train_run(cfg: RunConfig) -> dict[str, Any]:
    """Train (or resume) the run that `cfg` describes; returns its results, also in results.json.

    Under torchrun every process calls this; `data.batch_size` is per process and only rank 0
    writes the run folder."""
    resolved = resolve_run(cfg)
    run = RunFolder(cfg.out)
    parts = build_run(resolved)  # joins the torchrun process group, if any
    try:
        if is_main_process():
            prepare_out_dir(run, cfg.resume)  # takes the run's lock
        barrier()
        return Trainer(resolved.cfg, parts.distiller, parts.loaders, parts.device, cfg.optim.lr, run).fit()
    finally:
        run.unlock()


def fill_teacher_cache(cfg: RunConfig) -> tuple[TeacherCache, int]:
    """Fill cfg.teacher_cache with every epoch of the run `cfg` describes, ahead of the runs
    (on any device); returns the cache and how many epoch files were computed."""
    if cfg.teacher_cache is None:
        raise KdistillError("`kdistill cache` needs teacher_cache=<folder>")
    if cfg.method.name == "vanilla":
        raise KdistillError("`kdistill cache` fills a distillation run's teacher outputs: give the runs' method.name "
                            "(e.g. kd; crld for both views), teacher= and teacher_checkpoint=")
    cache = build_run(resolve_run(cfg)).distiller.teacher_outputs
    filled = 0
    for epoch in range(cfg.epochs):
        filled += len(cache.missing_views(epoch))
        cache.fill_epoch(epoch)
    return cache, filled
