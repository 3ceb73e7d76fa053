"""`kdistill grid`: plan the runs against what is on disk, launch what is missing, report.

Idempotent: a finished run whose configuration matches the spec is kept; an interrupted one is
resumed from its checkpoint; a run folder whose saved configuration differs from the spec's is
reported and left alone (never silently reused or overwritten)."""

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdistill.config import EXECUTION_KEYS, flat_config
from kdistill.errors import KdistillError
from kdistill.grid.launch import Launch, LocalLauncher, last_line
from kdistill.grid.spec import LAUNCHERS, REPORT_DIR, GridRun, GridSpec, expand
from kdistill.run_folder import RunFolder


def planned_config(run: GridRun) -> tuple[str, dict[str, Any]]:
    """The entry point (train | distill) and the flat configuration the run will save."""
    from kdistill.config.loading import load_config

    cfg = load_config(run.recipe, run.overrides)
    return ("distill" if cfg.method.spec.needs_teacher else "train"), flat_config(cfg)


def saved_config(run: GridRun) -> dict[str, Any]:
    from kdistill.config.loading import load_config

    return flat_config(load_config(str(RunFolder(run.folder).config_path)))


def config_differences(planned: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    keys = sorted((set(planned) | set(saved)) - EXECUTION_KEYS)
    return [f"{key}: saved {saved.get(key)!r}, spec {planned.get(key)!r}" for key in keys
            if planned.get(key) != saved.get(key)]


@dataclass
class GridState:
    runs: list[GridRun]
    started: float = field(default_factory=time.perf_counter)
    done: list[GridRun] = field(default_factory=list)
    failed: list[tuple[GridRun, str]] = field(default_factory=list)  # run, one-line error

    def count(self) -> str:
        return f"{len(self.done) + len(self.failed)}/{len(self.runs)} done, {len(self.failed)} failed"

    def finish(self, run: GridRun, note: str = "") -> None:
        self.done.append(run)
        results = RunFolder(run.folder).read_results()
        print(f"{run.title}: top-1 {results['top1_last']:.2f}, {results['train_time_s']:.0f}s{note}   "
              f"[{self.count()}]", flush=True)

    def fail(self, run: GridRun, error: str) -> None:
        self.failed.append((run, error))
        print(f"{run.title}: FAILED ({error})   [{self.count()}]", flush=True)


def plan(runs: list[GridRun], state: GridState) -> list[Launch]:
    """What to launch; records the runs that are finished already or cannot run."""
    launches = []
    for run in runs:
        folder = RunFolder(run.folder)
        try:
            entry, planned = planned_config(run)
        except KdistillError as error:  # the line a launched run would have logged
            line = f"kdistill: error: {error}"
            run.log.parent.mkdir(parents=True, exist_ok=True)
            run.log.write_text(line + "\n")
            state.fail(run, line)
            continue
        if folder.is_run():
            try:
                differences = config_differences(planned, saved_config(run))
            except KdistillError as error:
                differences = [f"the saved config.yaml does not load ({error})"]
            if differences:
                state.fail(run, f"{run.folder} holds a run with another configuration ({'; '.join(differences[:3])}): "
                                "delete the folder to rerun it, or restore the spec")
                continue
        if folder.is_finished():
            state.finish(run, " (finished before, kept)")
            continue
        launches.append(Launch(run, entry, resume=folder.has_resume_state()))
    return launches


def execute(launches: list[Launch], launcher, state: GridState) -> None:
    """Start each run once its teacher run has finished; a failed teacher fails its students."""
    pending = list(launches)
    while pending or launcher.running:
        finished = {run.name for run in state.done}
        failed = {run.name for run, _ in state.failed}
        for launch in [launch for launch in pending if launch.run.needs in failed]:
            pending.remove(launch)
            state.fail(launch.run, f"its teacher run {launch.run.needs} failed")
        ready = [launch for launch in pending if launch.run.needs is None or launch.run.needs in finished]
        if ready and launcher.capacity() > 0:
            for launch in launcher.start(ready):
                pending.remove(launch)
                print(f"{'resuming' if launch.resume else 'starting'} {launch.run.name}", flush=True)
        for launch, code in launcher.finished():
            if code == 0 and RunFolder(launch.run.folder).is_finished():
                state.finish(launch.run)
            else:
                state.fail(launch.run, last_line(launch.run.log))


def make_launcher(spec: GridSpec):
    options = spec.options
    name = options.get("launcher", "local")
    if name not in LAUNCHERS:
        raise KdistillError(f"unknown launcher '{name}': use {', '.join(LAUNCHERS)}")
    gpus = int(options.get("gpus_per_run") or 1)
    if name == "local":
        jobs = options.get("jobs", 1)
        if not isinstance(jobs, int) or jobs < 1:
            raise KdistillError(f"--jobs {jobs}: the runs at once must be a whole number >= 1 (e.g. --jobs 2)")
        return LocalLauncher(jobs, gpus, options.get("threads"))
    try:
        from kdistill.grid.slurm import SubmititLauncher
    except ModuleNotFoundError as error:
        if error.name != "submitit":
            raise
        raise KdistillError(f"--launcher {name} needs submitit: pip install kdistill[slurm]") from None
    return SubmititLauncher(spec.out.resolve(), "slurm" if name == "slurm" else "local", gpus, options)


def write_report(state: GridState, out: Path) -> str | None:
    """The `kdistill report` table of the grid's finished runs, under <out>/report/."""
    from kdistill.report import build_report

    if not any(run.teacher is not None for run in state.done):
        return None  # no distillation run finished: a table has no columns
    return build_report([str(run.folder) for run in state.done], out / REPORT_DIR)["markdown"]


def run_grid(spec: GridSpec) -> GridState:
    runs = expand(spec)
    launcher = make_launcher(spec)
    state = GridState(runs)
    print(f"grid {spec.out}: {len(runs)} runs", flush=True)
    execute(plan(runs, state), launcher, state)
    print(f"\n{state.count()} in {time.perf_counter() - state.started:.0f}s", flush=True)
    for run, error in state.failed:
        print(f"failed: {run.name}: {error}\n        log: {run.log}", flush=True)
    table = write_report(state, spec.out)
    if table:
        print(f"\n{table}\n-> {spec.out / REPORT_DIR}", flush=True)
    return state
