"""`kdistill grid`: plan the runs against what is on disk, launch what is missing, report.

Idempotent: a finished run whose configuration matches the spec is kept; an interrupted one is
resumed from its checkpoint; a run folder whose saved configuration differs from the spec's is
reported and left alone (never silently reused or overwritten)."""

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdistill.config import EXECUTION_KEYS, flat_config
from kdistill.errors import KdistillError, RunStopped
from kdistill.files import atomic_write_text, reported_write, try_lock
from kdistill.grid.launch import Launch, LocalLauncher, last_line
from kdistill.grid.spec import GRID_LOCK, LAUNCHERS, REPORT_DIR, TEACHERS_DIR, GridRun, GridSpec, expand
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
    failed: list[tuple[GridRun, str, Path | None]] = field(default_factory=list)  # run, one-line error, its log

    def count(self) -> str:
        return f"{len(self.done) + len(self.failed)}/{len(self.runs)} done, {len(self.failed)} failed"

    def finish(self, run: GridRun, note: str = "") -> None:
        self.done.append(run)
        results = RunFolder(run.folder).read_results()
        print(f"{run.title}: top-1 {results.top1_last:.2f}, {results.train_time_s:.0f}s{note}   "
              f"[{self.count()}]", flush=True)

    def fail(self, run: GridRun, error: str, log: Path | None = None) -> None:
        self.failed.append((run, error, log))
        print(f"{run.title}: FAILED ({error})   [{self.count()}]", flush=True)


@dataclass
class Adopted:
    """A run that a process of an earlier grid (killed before it) still trains: waited for, not restarted."""

    run: GridRun
    entry: str
    pid: str


def plan(runs: list[GridRun], state: GridState) -> tuple[list[Launch], list[Adopted]]:
    """What to launch and what to wait for; records the runs that are finished already or cannot run."""
    launches, adopted = [], []
    for run in runs:
        folder = RunFolder(run.folder)
        try:
            entry, planned = planned_config(run)
        except KdistillError as error:  # the line a launched run would have logged
            line = f"kdistill: error: {error}"
            log = run.next_log()
            atomic_write_text(log, line + "\n")
            state.fail(run, line, log)
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
        holder = folder.holder()
        if holder is not None:
            print(f"waiting for {run.name}: pid {holder} (started by an earlier grid) trains it", flush=True)
            adopted.append(Adopted(run, entry, holder))
            continue
        if folder.is_finished():
            state.finish(run, " (finished before, kept)")
            continue
        launches.append(Launch(run, entry, resume=folder.has_resume_state()))
    return launches, adopted


class StopRequests:
    """While active, SIGINT and SIGTERM are noted (`received`) rather than ending the grid at once:
    the grid then stops its runs through `stop` and waits for their saves."""

    HANDLED = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequests":
        self.previous = {signum: signal.signal(signum, self._note) for signum in self.HANDLED}
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame) -> None:
        self.received = self.received or signum


def execute(launches: list[Launch], adopted: list[Adopted], launcher, state: GridState, stops: StopRequests) -> None:
    """Start each run once its teacher run has finished; a failed teacher fails its students. A run
    an earlier grid's process still trains is waited for, then kept if it finished or resumed if not.
    Returns early, starting nothing more, when a stop is requested."""
    pending = list(launches)
    while (pending or launcher.running or adopted) and stops.received is None:
        for waiting in [waiting for waiting in adopted if RunFolder(waiting.run.folder).holder() is None]:
            adopted.remove(waiting)
            if RunFolder(waiting.run.folder).is_finished():
                state.finish(waiting.run, " (by the earlier grid's process)")
            else:
                pending.append(Launch(waiting.run, waiting.entry, resume=True))
        finished = {run.name for run in state.done}
        failed = {run.name for run, _, _ in state.failed}
        for launch in [launch for launch in pending if launch.run.needs in failed]:
            pending.remove(launch)
            state.fail(launch.run, f"its teacher run {launch.run.needs} failed")
        ready = [launch for launch in pending if launch.run.needs is None or launch.run.needs in finished]
        if ready and launcher.capacity() > 0:
            for launch in launcher.start(ready):
                pending.remove(launch)
                print(f"{'resuming' if launch.resume else 'starting'} {launch.run.name}", flush=True)
        for launch, code in launcher.finished():
            record(state, launch, code)


def record(state: GridState, launch: Launch, code: int) -> None:
    if code == 0 and RunFolder(launch.run.folder).is_finished():
        state.finish(launch.run)
    else:
        state.fail(launch.run, last_line(launch.log), launch.log)


def stop(launcher, adopted: list[Adopted], state: GridState, signum: int) -> RunStopped:
    """Forward `signum` to the runs in flight (and to those adopted from an earlier grid), wait for
    them to save and end; the one line the grid ends with."""
    for launch, code in launcher.stop(signum):
        if code == 0:  # it finished before the signal reached it
            record(state, launch, code)
    for waiting in adopted:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(waiting.pid), signum)
    while any(RunFolder(waiting.run.folder).holder() is not None for waiting in adopted):
        time.sleep(0.2)
    unfinished = len(state.runs) - len(state.done) - len(state.failed)
    return RunStopped(f"grid stopped by {signal.Signals(signum).name}: the runs in flight saved their checkpoints "
                      f"and stopped, {unfinished} run(s) unfinished; run the same command again to continue",
                      128 + signum, prefix="")


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
        raise KdistillError(f"--launcher {name} needs submitit: pip install -e \".[slurm]\" "
                            "(in a clone of kdistill)") from None
    return SubmititLauncher(spec.out.resolve(), "slurm" if name == "slurm" else "local", gpus, options)


def write_report(state: GridState, out: Path) -> str | None:
    """The `kdistill report` table of the grid's finished runs, under <out>/report/."""
    from kdistill.report import build_report

    if not any(run.teacher is not None for run in state.done):
        return None  # no distillation run finished: a table has no columns
    return build_report([str(run.folder) for run in reported_runs(state.done)], out / REPORT_DIR)["markdown"]


def reported_runs(done: list[GridRun]) -> list[GridRun]:
    """The finished runs but a teacher run that is the same training as a vanilla student run (a
    self-distillation pair whose teacher has the common overrides and its seed): the report takes
    that run once, and it fills both the teacher and the student row."""
    from kdistill.report import load_result

    def identity(run: GridRun) -> tuple:
        result = load_result(run.folder)
        return result.setting, result.seed

    def is_teacher_run(run: GridRun) -> bool:
        return run.name.startswith(f"{TEACHERS_DIR}/")

    vanilla = {identity(run) for run in done if run.teacher is None and not is_teacher_run(run)}
    return [run for run in done if not is_teacher_run(run) or identity(run) not in vanilla]


def lock_grid(out: Path):
    """The grid folder's lock, held by this grid until it ends; one line naming the holder if
    another grid holds it."""
    with reported_write(out):
        out.mkdir(parents=True, exist_ok=True)
    with reported_write(out / GRID_LOCK, "no run of the grid was started"):
        lock, holder = try_lock(out / GRID_LOCK)
    if lock is None:
        raise KdistillError(f"grid folder '{out}' is in use by another kdistill grid (pid {holder}): wait for it to "
                            "end or stop it, or choose another --out")
    return lock


def run_grid(spec: GridSpec) -> GridState:
    runs = expand(spec)
    launcher = make_launcher(spec)
    with lock_grid(spec.out), StopRequests() as stops:
        state = GridState(runs)
        print(f"grid {spec.out}: {len(runs)} runs", flush=True)
        launches, adopted = plan(runs, state)
        execute(launches, adopted, launcher, state, stops)
        if stops.received is not None:
            raise stop(launcher, adopted, state, stops.received)
        print(f"\n{state.count()} in {time.perf_counter() - state.started:.0f}s", flush=True)
        for run, error, log in state.failed:
            print(f"failed: {run.name}: {error}" + (f"\n        log: {log}" if log else ""), flush=True)
        table = write_report(state, spec.out)
        if table:
            print(f"\n{table}\n-> {spec.out / REPORT_DIR}", flush=True)
        return state
