"""One call from a configuration to a finished run folder."""

import sys
import time
from dataclasses import dataclass
from typing import Any

from kdistill.config import EXECUTION_KEYS, RunConfig, flat_config, recorded_config
from kdistill.config.loading import load_config
from kdistill.distributed import barrier, is_main_process
from kdistill.engine.schedule import idle_schedule_warning
from kdistill.engine.setup import build_run, resolve_run
from kdistill.engine.teacher_cache import TeacherCache
from kdistill.engine.trainer import Trainer
from kdistill.errors import KdistillError
from kdistill.run_folder import RunFolder, RunResults


@dataclass
class ResumeCheck:
    """How the configuration of a resume differs from the one its run folder saved."""

    changes: dict[str, tuple[Any, Any]]  # every differing key: (saved, now)
    forced: list[str]  # the keys only resume_force=true accepts
    finished: bool  # the run has finished and the resume adds no epoch: nothing to train


def _note(text: str, kind: str = "note") -> None:
    print(f"kdistill: {kind}: {text}", file=sys.stderr)


def check_resume(run: RunFolder, cfg: RunConfig) -> ResumeCheck | None:
    """Compare the resolved `cfg` with the run's saved configuration; None when the folder holds
    no run yet (it starts there, with a note). A difference outside EXECUTION_KEYS (and `epochs`
    growing) is a one-line error unless resume_force=true."""
    if not run.holds_run():
        _note(f"'{run.path}' holds no run yet: starting a new one there")
        return None
    if not run.is_run():
        raise KdistillError(f"'{run.path}' holds a checkpoint or results but no {run.config_path.name} to check this "
                            "configuration against: choose another out=, or delete the folder to start over")
    try:
        saved = flat_config(load_config(str(run.config_path)))
    except KdistillError as error:
        raise KdistillError(f"the saved configuration {run.config_path} does not load ({error}); "
                            "choose another out= for a new run") from None
    now = flat_config(recorded_config(cfg))
    changes = {key: (saved.get(key), now.get(key)) for key in sorted(saved.keys() | now.keys())
               if saved.get(key) != now.get(key)}
    epochs_added = "epochs" in changes and changes["epochs"][1] > changes["epochs"][0]
    forced = [key for key in changes if key not in EXECUTION_KEYS and not (key == "epochs" and epochs_added)]
    if forced and not cfg.resume_force:
        listed = ", ".join(f"{key} ({changes[key][0]!r} -> {changes[key][1]!r})" for key in forced)
        raise KdistillError(f"'{run.path}' was started with another configuration: {listed}; resume with the saved "
                            f"values (its {run.config_path.name}), choose another out=, or pass resume_force=true "
                            "to accept the change")
    finished = run.is_finished() and not epochs_added
    if not finished and not run.has_resume_state():
        _note(f"'{run.path}' has no checkpoint yet: its run starts again from the first epoch")
    return ResumeCheck(changes, forced, finished)


def train_run(cfg: RunConfig) -> RunResults:
    """Train (or resume) the run that `cfg` describes; returns its results, also in results.json.

    Resuming a finished run returns its results untouched unless `epochs` grew. Under torchrun
    every process calls this; `data.batch_size` is per process and only rank 0 writes the run folder."""
    resolved = resolve_run(cfg)
    run = RunFolder(cfg.out)
    check = check_resume(run, resolved.cfg) if cfg.resume else None
    if check is not None and check.finished:
        _note(f"'{run.path}' has finished its {cfg.epochs} epochs: nothing to train (raise epochs= to train on)")
        return run.read_results()
    parts = build_run(resolved)  # joins the torchrun process group, if any
    try:
        if is_main_process():
            run.prepare(cfg.resume)  # takes the run's lock
            if warning := idle_schedule_warning(cfg.schedule, cfg.epochs, cfg.optim.lr):
                _note(warning, "warning")
            if check is not None and check.changes:
                run.record_config_change({
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "changes": {key: {"saved": saved, "now": now} for key, (saved, now) in check.changes.items()},
                    "forced": check.forced})
        barrier()
        return Trainer(resolved.cfg, parts.distiller, parts.loaders, parts.device, cfg.optim.lr, run,
                       parts.teacher_cache).fit()
    finally:
        run.unlock()


def fill_teacher_cache(cfg: RunConfig) -> tuple[TeacherCache, int]:
    """Fill cfg.teacher_cache with every epoch of the run `cfg` describes, ahead of the runs
    (on any device; only the batches a run capped by steps_per_epoch reads), and check every
    epoch file against its checksum; returns the cache and how many files were computed or completed."""
    if cfg.teacher_cache is None:
        raise KdistillError("`kdistill cache` needs teacher_cache=<folder>")
    if not cfg.method.spec.needs_teacher:
        raise KdistillError("`kdistill cache` fills a distillation run's teacher outputs: give the runs' method.name "
                            "(e.g. kd; crld for both views), teacher= and teacher_checkpoint=")
    cache = build_run(resolve_run(cfg)).teacher_cache
    filled = 0
    for epoch in range(cfg.epochs):
        filled += cache.fill_epoch(epoch)
        cache.verify_epoch(epoch)
    return cache, filled
