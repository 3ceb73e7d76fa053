"""The SLURM launcher, through submitit (the optional extra kdistill[slurm]): each run is one job
(the runs ready together form one job array); a job the cluster pre-empts or times out is requeued
and resumes from its last checkpoint.

`cluster="local"` is submitit's local executor (jobs as local processes, same code path): for tests
and for trying a grid without a cluster."""

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import submitit
import submitit.helpers

from kdistill.errors import KdistillError
from kdistill.files import reported_write
from kdistill.grid.launch import Launch, run_to_completion

SUBMITIT_DIR = "submitit"


class SubmititRun(submitit.helpers.Checkpointable):
    """One run as a submitit job. On pre-emption or time-out submitit calls checkpoint() and requeues
    what it returns: the same run with resume=true (its last finished epoch is on disk)."""

    def __init__(self, launch: Launch, gpus: int):
        self.launch = launch
        self.gpus = gpus

    def __call__(self) -> int:
        return run_to_completion(self.launch, self.gpus)

    def checkpoint(self, *args: Any, **kwargs: Any):
        return submitit.helpers.DelayedSubmission(SubmititRun(replace(self.launch, resume=True), self.gpus))


class SubmititLauncher:
    def __init__(self, folder: Path, cluster: str, gpus_per_run: int, options: dict[str, Any]):
        self.gpus = gpus_per_run
        self.poll_seconds = 1.0 if cluster == "local" else 15.0
        self.executor = submitit.AutoExecutor(folder=folder / SUBMITIT_DIR, cluster=cluster)
        parameters = {"name": "kdistill-grid", "timeout_min": options.get("time_min") or 24 * 60,
                      "gpus_per_node": gpus_per_run, "tasks_per_node": 1, "nodes": 1,
                      "cpus_per_task": options.get("cpus_per_run"),
                      "slurm_partition": options.get("partition"),
                      "slurm_array_parallelism": options.get("array_parallelism"),
                      **(options.get("slurm") or {})}
        try:
            self.executor.update_parameters(**{key: value for key, value in parameters.items() if value is not None})
        except (NameError, AssertionError) as error:
            raise KdistillError(f"submitit rejects the launcher options ({str(error).splitlines()[0]})") from None
        self.jobs: list[tuple[Launch, Any]] = []

    def capacity(self) -> int:
        return 1 << 30  # the cluster queues what it cannot run yet

    def start(self, ready: list[Launch]) -> list[Launch]:
        with self.executor.batch():  # one job array
            submitted = [(launch, self.executor.submit(SubmititRun(launch, self.gpus))) for launch in ready]
        self.jobs += submitted
        for launch, job in submitted:
            print(f"submitted {launch.run.name} as job {job.job_id}", flush=True)
        return ready

    @property
    def running(self) -> list:
        return self.jobs

    def stop(self, signum: int) -> list[tuple[Launch, int]]:
        """The submitted jobs are the cluster's: they run on (a rerun of the grid waits for them)."""
        return []

    def finished(self) -> list[tuple[Launch, int]]:
        done, still = [], []
        for launch, job in self.jobs:
            if not job.done():
                still.append((launch, job))
                continue
            try:
                code = job.result()
            except Exception as error:  # noqa: BLE001 - a cancelled or crashed job fails its run only
                message = str(error).strip().splitlines()
                code = 1
                with reported_write(launch.log), open(launch.log, "a") as log:
                    log.write(f"submitit job {job.job_id} failed: {message[-1] if message else type(error).__name__}\n")
            done.append((launch, code))
        self.jobs = still
        if not done:
            time.sleep(self.poll_seconds)
        return done
