"""A run folder: its layout and every read and write of its files. No other module spells a file name.

    config.yaml            the resolved configuration the run trains with
    metrics.jsonl          one JSON line per finished epoch (appended whole, fsynced)
    results.json           the summary, written when the run finishes
    student_last.pth       the student's weights after the last epoch (public teacher format)
    student_best.pth       ... at the epoch of best test top-1
    checkpoint.pt          the newest resume state; checkpoint.prev.pt the one before it
    config_changes.jsonl   what a forced resume changed in the configuration
    run.lock               locked by the process that trains the run (holds its pid)
    tensorboard/           TensorBoard event files
    <eval>_<which>.<ext>   evaluation reports (`eval_output`)

Every file is written to a temporary file and renamed into place, so a kill at any instant
leaves either the old or the new file, never a torn one; metrics lines are appended whole and a
reader skips a torn last line (what a full disk can leave).
"""

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from kdistill.config.yaml_file import read_yaml_mapping
from kdistill.errors import KdistillError
from kdistill.files import TEMP_SUFFIX, also_intact, atomic_write_text, lock_holder, reported_write, try_lock
from kdistill.models.checkpoint import UnreadableCheckpoint, atomic_save, read_torch_file, save_model_weights

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RESULTS_FILE = "results.json"
RESUME_FILE = "checkpoint.pt"
PREVIOUS_RESUME_FILE = "checkpoint.prev.pt"
CONFIG_CHANGES_FILE = "config_changes.jsonl"
LOCK_FILE = "run.lock"
TENSORBOARD_DIR = "tensorboard"
WEIGHTS = ("last", "best")


class RunFolder:
    """The files of one run, by role."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock_file = None  # open while this process holds the run's lock

    def __repr__(self) -> str:
        return f"RunFolder('{self.path}')"

    # ---- paths ----------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def results_path(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def resume_path(self) -> Path:
        return self.path / RESUME_FILE

    @property
    def previous_resume_path(self) -> Path:
        return self.path / PREVIOUS_RESUME_FILE

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    def weights_path(self, which: str = "last") -> Path:
        if which not in WEIGHTS:
            raise KdistillError(f"unknown weights '{which}': use which=last or which=best")
        return self.path / f"student_{which}.pth"

    def eval_output(self, name: str, which: str, suffix: str) -> Path:
        """Where an evaluation of this run's `which` weights writes its report."""
        return self.path / f"{name}_{which}{suffix}"

    # ---- what is there --------------------------------------------------------------------
    def is_run(self) -> bool:
        """A folder a run has written to (its configuration is saved before the first epoch)."""
        return self.config_path.is_file()

    def is_finished(self) -> bool:
        return self.results_path.is_file()

    def has_resume_state(self) -> bool:
        return self.resume_path.is_file() or self.previous_resume_path.is_file()

    def holds_run(self) -> bool:
        return self.is_run() or self.is_finished() or self.has_resume_state()

    @staticmethod
    def find(paths: list[str | Path]) -> list["RunFolder"]:
        """Finished run folders at or below each path (sorted per path). A folder that holds other
        runs is not one, whatever results.json it has at its top (older versions of the experiment
        script wrote their combined results there)."""
        found: list[Path] = []
        for given in paths:
            found += sorted(result.parent for result in Path(given).rglob(RESULTS_FILE))
        return [RunFolder(path) for path in found
                if not any(other != path and other.is_relative_to(path) for other in found)]

    # ---- a full disk ----------------------------------------------------------------------
    def kept_state(self) -> str:
        """What a run stopped now leaves to continue from, for one-line messages."""
        if self.has_resume_state():
            return "the previous checkpoint is intact (resume=true continues)"
        return "no checkpoint was written yet (run the command again to start over)"

    def _writing(self, path: Path) -> contextlib.AbstractContextManager[None]:
        """A failed write of `path` (a full disk...) is one line saying what the run keeps: every
        write is atomic or a whole line, so what was on disk before stays readable."""
        return reported_write(path, self.kept_state())

    def writing_elsewhere(self) -> contextlib.AbstractContextManager[None]:
        """A failed write outside the folder during the run (its teacher cache) also says what
        the run keeps."""
        return also_intact(self.kept_state())

    # ---- config ---------------------------------------------------------------------------
    def write_config(self, values: dict[str, Any]) -> None:
        """config.yaml from plain values (`kdistill.config.config_to_dict`)."""
        with self._writing(self.config_path):
            atomic_write_text(self.config_path, yaml.safe_dump(values, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        """The saved configuration as plain nested dicts (`kdistill.config.loading.load_config` types it)."""
        return read_yaml_mapping(self.config_path)

    def record_config_change(self, change: dict[str, Any]) -> None:
        """Append what a forced (or allowed) resume changed in the configuration."""
        path = self.path / CONFIG_CHANGES_FILE
        with self._writing(path), open(path, "a") as file:
            file.write(json.dumps(change) + "\n")

    # ---- metrics --------------------------------------------------------------------------
    def append_metrics(self, entry: dict[str, Any]) -> None:
        """Append one epoch's line whole and fsync it, so it is on disk with its checkpoint."""
        with self._writing(self.metrics_path), open(self.metrics_path, "a") as file:
            file.write(json.dumps(entry) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every whole line of metrics.jsonl; a torn line (a kill or a full disk mid-write) is
        skipped with a warning."""
        if not self.metrics_path.is_file():
            return []
        entries, torn = [], 0
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                torn += 1
                continue
            if isinstance(entry, dict):
                entries.append(entry)
            else:
                torn += 1
        if torn:
            print(f"warning: skipped {torn} torn line(s) in {self.metrics_path}", file=sys.stderr)
        return entries

    def trim_metrics(self, last_global_epoch: int) -> None:
        """Keep the lines of epochs up to `last_global_epoch` (those a resume state covers), by
        writing a new file and renaming it into place: a kill during the trim loses nothing."""
        if not self.metrics_path.is_file():
            return
        kept = [entry for entry in self.read_metrics() if entry.get("global_epoch", 0) <= last_global_epoch]
        with self._writing(self.metrics_path):
            atomic_write_text(self.metrics_path, "".join(json.dumps(entry) + "\n" for entry in kept))

    # ---- results --------------------------------------------------------------------------
    def write_results(self, results: dict[str, Any]) -> None:
        with self._writing(self.results_path):
            atomic_write_text(self.results_path, json.dumps(results, indent=2) + "\n")

    def read_results(self) -> dict[str, Any]:
        try:
            results = json.loads(self.results_path.read_text())
        except FileNotFoundError:
            raise KdistillError(f"'{self.path}' holds no {RESULTS_FILE}: the run has not finished") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            results = None
        if not isinstance(results, dict):
            raise KdistillError(f"{self.results_path} is not a kdistill results file: delete it or re-run the training")
        return results

    # ---- weights and resume state ---------------------------------------------------------
    def save_weights(self, model, which: str, **info: Any) -> None:
        with self._writing(self.weights_path(which)):
            save_model_weights(model, self.weights_path(which), **info)

    def save_resume_state(self, state: dict[str, Any]) -> None:
        """Keep the previous state as a fallback, then write the new one (each step atomic)."""
        with self._writing(self.resume_path):
            if self.resume_path.is_file():
                os.replace(self.resume_path, self.previous_resume_path)
            atomic_save(state, self.resume_path)

    def load_resume_state(self, map_location) -> dict[str, Any] | None:
        """The newest readable resume state; None when the folder has none. When the newest is
        unreadable, the previous one is used (said in one line) and renamed into its place, so
        the next save keeps two good states. KdistillError naming the files if none is readable."""
        candidates = [path for path in (self.resume_path, self.previous_resume_path) if path.is_file()]
        if not candidates:
            return None
        reasons = []
        for path in candidates:
            try:
                state = read_torch_file(path, map_location)
            except UnreadableCheckpoint as error:
                reasons.append(f"{path.name}: {error.reason}")
                continue
            if path != candidates[0]:
                print(f"warning: {candidates[0].name} is unreadable ({reasons[0]}); resuming from {path.name}, "
                      "the state saved before it", file=sys.stderr)
                os.replace(path, self.resume_path)
            return state
        names = " and ".join(path.name for path in candidates)
        raise KdistillError(f"cannot resume '{self.path}': {names} {'are' if len(candidates) > 1 else 'is'} unreadable "
                            f"({'; '.join(reasons)}): delete {names} to train this run from the start, "
                            "or choose another out=")

    # ---- one process per run ---------------------------------------------------------------
    def lock(self) -> None:
        """Hold an exclusive lock on the run until `unlock` or this process's end. KdistillError
        naming the holder's pid if another process holds it."""
        with self._writing(self.path / LOCK_FILE):
            file, holder = try_lock(self.path / LOCK_FILE)
        if file is None:
            raise KdistillError(f"'{self.path}' is in use by another kdistill process (pid {holder}): wait for it "
                                "to end or stop it, or choose another out=")
        self._lock_file = file

    def holder(self) -> str | None:
        """The pid of the process that trains the run now (as its lock file says); None if none does."""
        return lock_holder(self.path / LOCK_FILE)

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing the file releases the lock
            self._lock_file = None

    def remove_temporary_files(self) -> int:
        """Delete the temporary files a killed save left behind; returns how many."""
        removed = 0
        for path in self.path.glob(f".*{TEMP_SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
        return removed
