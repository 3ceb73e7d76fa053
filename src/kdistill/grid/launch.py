"""Starting a grid's runs: the command line of one run, its log, and the local launcher (separate
processes, one GPU each when there are GPUs, CPU threads split between them otherwise)."""

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from kdistill.files import reported_write
from kdistill.grid.spec import GridRun


@dataclass
class Launch:
    """A run as the grid starts it: fresh or resumed, through `kdistill train` or `kdistill distill`."""

    run: GridRun
    entry: str  # train | distill
    resume: bool
    log: Path | None = None  # this attempt's log (default: the run's next attempt)

    def __post_init__(self):
        if self.log is None:
            self.log = self.run.next_log()


def command_line(launch: Launch, gpus: int) -> list[str]:
    """`python -m kdistill <entry> ...`, under torchrun when the run takes several GPUs."""
    run = launch.run
    arguments = [launch.entry, *(["--config", run.recipe] if run.recipe else []), *run.overrides,
                 *(["resume=true"] if launch.resume else [])]
    if gpus > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
                "-m", "kdistill", *arguments]
    return [sys.executable, "-m", "kdistill", *arguments]


def open_log(launch: Launch, command: list[str]):
    """The attempt's log (a requeued SLURM job appends to it), with a header line."""
    with reported_write(launch.log, "no run of the grid was started with it"):
        launch.log.parent.mkdir(parents=True, exist_ok=True)
        handle = open(launch.log, "a")  # noqa: SIM115 - the caller's child process writes to it; the caller closes it
        handle.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
        handle.flush()
    return handle


def last_line(path: Path) -> str:
    """The last non-empty line of a log: the one-line error of a failed run."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "empty log"


def run_to_completion(launch: Launch, gpus: int, env: dict[str, str] | None = None) -> int:
    """Run one training in the foreground, output to its log; returns the exit code."""
    command = command_line(launch, gpus)
    with open_log(launch, command) as log:
        return subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPU ids this process may hand out (CUDA_VISIBLE_DEVICES if set, else all)."""
    import torch

    count = torch.cuda.device_count()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [item for item in given.split(",") if item.strip()] if given else [str(index) for index in range(count)]
    return ids[:count]


class LocalLauncher:
    """Up to `jobs` runs at once as child processes. With GPUs each run gets `gpus_per_run` of them
    (CUDA_VISIBLE_DEVICES, handed out from a free list); without, the cores are split between the
    runs in flight (OMP_NUM_THREADS, which sets torch's intra-op threads)."""

    poll_seconds = 0.5

    def __init__(self, jobs: int, gpus_per_run: int, threads: int | None):
        self.free_gpus = visible_gpus()
        self.gpus_per_run = gpus_per_run
        self.jobs = jobs
        if self.free_gpus:
            self.jobs = min(self.jobs, max(1, len(self.free_gpus) // gpus_per_run))
        self.threads = threads
        self.running: list[tuple[Launch, subprocess.Popen, list[str], object]] = []

    def capacity(self) -> int:
        return self.jobs - len(self.running)

    def start(self, ready: list[Launch]) -> list[Launch]:
        started = []
        in_flight = min(self.jobs, len(self.running) + len(ready))
        for launch in ready[:self.capacity()]:
            env = dict(os.environ)
            gpus: list[str] = []
            if self.free_gpus:
                gpus, self.free_gpus = self.free_gpus[:self.gpus_per_run], self.free_gpus[self.gpus_per_run:]
                env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            threads = self.threads or max(1, usable_cores() // in_flight)
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
            command = command_line(launch, len(gpus))
            log = open_log(launch, command)
            # A session of its own: a signal reaches a run once, through the grid (`stop`).
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self.running.append((launch, process, gpus, log))
            started.append(launch)
        return started

    def finished(self) -> list[tuple[Launch, int]]:
        """The runs whose process has ended since the last call, with their exit codes."""
        done, still = [], []
        for entry in self.running:
            launch, process, gpus, log = entry
            if process.poll() is None:
                still.append(entry)
                continue
            log.close()
            self.free_gpus += gpus
            done.append((launch, process.returncode))
        self.running = still
        if not done:
            time.sleep(self.poll_seconds)
        return done

    def stop(self, signum: int) -> list[tuple[Launch, int]]:
        """Send `signum` to every run in flight and wait for each to save and end; their exit codes."""
        for _, process, _, _ in self.running:
            process.send_signal(signum)
        done = []
        for launch, process, gpus, log in self.running:
            done.append((launch, process.wait()))
            log.close()
            self.free_gpus += gpus
        self.running = []
        return done
