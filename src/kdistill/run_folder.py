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
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kdistill.config import RunConfig, config_to_dict, recorded_config
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
EVALUATED_SPLITS = ("test", "val")


@dataclass(frozen=True)
class EpochRecord:
    """One epoch of a run: a line of metrics.jsonl. The line keeps the flat layout of earlier
    versions (`train/<term>`, `test/top1`, ...), so every metrics file stays readable."""

    phase: str  # "init" (a method's initialisation phase) or "train"
    epoch: int  # within its phase, from 1
    global_epoch: int  # over all phases, from 1
    lr: float  # at the epoch's start
    train: dict[str, float]  # mean per step of each logged term and extra, "loss" (the weighted total), "top1"
    evaluation: dict[str, dict[str, float]]  # split ("test", "val") -> its metrics (top1, top5)
    img_per_s: float
    epoch_time_s: float
    data_wait_fraction: float  # near 1: the input pipeline, not the step, is the wall
    precision: str
    nonfinite_steps: int | None = None  # steps skipped for a non-finite loss (nonfinite=skip runs)

    TIMING_FIELDS = ("img_per_s", "epoch_time_s", "data_wait_fraction")  # differ between equal runs

    TOTAL = "loss"  # the weighted total, among the train means

    def accuracy(self, split: str = "test") -> float | None:
        """Top-1 (%) on `split` ("train": over the epoch's training steps); None when it was not measured."""
        values = self.train if split == "train" else self.evaluation.get(split, {})
        return values.get("top1")

    def loss_terms(self) -> dict[str, float]:
        """The train means of the loss terms, the weighted total and the logged extras (no accuracy)."""
        return {name: value for name, value in self.train.items() if name != "top1"}

    def scalars(self) -> dict[str, float]:
        """The line's measured values (everything but the epoch counters and the precision), e.g. for TensorBoard."""
        counters = {"phase", "epoch", "global_epoch", "precision"}
        return {name: value for name, value in self.to_line().items() if name not in counters}

    def summary(self) -> str:
        """The progress line's values: the weighted total's train mean and the evaluated top-1s."""
        values = {f"train/{self.TOTAL}": self.train.get(self.TOTAL),
                  **{f"{split}/top1": self.accuracy(split) for split in self.evaluation}}
        return " ".join(f"{name}={value:.4g}" for name, value in values.items() if value is not None)

    def to_line(self) -> dict[str, Any]:
        line: dict[str, Any] = {"phase": self.phase, "epoch": self.epoch, "global_epoch": self.global_epoch,
                                "lr": self.lr, **{f"train/{name}": value for name, value in self.train.items()}}
        if self.nonfinite_steps is not None:
            line["nonfinite_steps"] = self.nonfinite_steps
        line |= {name: getattr(self, name) for name in (*self.TIMING_FIELDS, "precision")}
        for split, values in self.evaluation.items():
            line |= {f"{split}/{name}": value for name, value in values.items()}
        return line

    @classmethod
    def from_line(cls, line: dict[str, Any]) -> "EpochRecord":
        train = {key.removeprefix("train/"): value for key, value in line.items() if key.startswith("train/")}
        evaluation = {split: {key.removeprefix(f"{split}/"): value for key, value in line.items()
                              if key.startswith(f"{split}/")} for split in EVALUATED_SPLITS}
        return cls(line["phase"], line["epoch"], line["global_epoch"], line["lr"], train,
                   {split: values for split, values in evaluation.items() if values},
                   *(line[name] for name in cls.TIMING_FIELDS), line.get("precision", "fp32"),
                   line.get("nonfinite_steps"))


@dataclass(frozen=True)
class RunResults:
    """A finished run's summary: results.json."""

    student: str
    teacher: str | None  # None: trained without a teacher (the vanilla model)
    method: str
    dataset: str
    seed: int
    epochs: int
    top1_last: float | None  # test top-1 (%) after the last epoch
    top5_last: float | None
    top1_best: float  # the best test top-1 over the epochs, and when
    top5_best: float
    best_epoch: int
    train_time_s: float
    wall_time_s: float
    student_params: int
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know, kept on a round trip

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {**{key: value for key, value in values.items() if key != "extra"}, **self.extra}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunResults":
        """KeyError or TypeError when `values` lacks a field of the schema."""
        names = [item.name for item in dataclasses.fields(cls) if item.name != "extra"]
        return cls(**{name: values[name] for name in names},
                   extra={key: value for key, value in values.items() if key not in names})


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

    # ---- lifecycle --------------------------------------------------------------------------
    def prepare(self, resume: bool) -> None:
        """Create the folder and lock it for this process; refuse to overwrite a run that is there
        unless resuming it; remove what a killed save left."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise KdistillError(f"output folder '{self.path}' cannot be written ({error.strerror}): "
                                "choose another out=<folder>") from None
        self.lock()
        if not resume and (self.has_resume_state() or self.is_finished()):
            raise KdistillError(f"output folder '{self.path}' already holds a run: pass resume=true to continue it, "
                                "or choose another out=<folder>")
        self.remove_temporary_files()

    # ---- config ---------------------------------------------------------------------------
    def write_config(self, cfg: RunConfig) -> None:
        """config.yaml: the configuration the run trains with, without one invocation's resume flags."""
        with self._writing(self.config_path):
            atomic_write_text(self.config_path, yaml.safe_dump(config_to_dict(recorded_config(cfg)), sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        """The saved configuration as plain nested dicts (`kdistill.config.loading.load_config` types it)."""
        return read_yaml_mapping(self.config_path)

    def record_config_change(self, change: dict[str, Any]) -> None:
        """Append what a forced (or allowed) resume changed in the configuration."""
        path = self.path / CONFIG_CHANGES_FILE
        with self._writing(path), open(path, "a") as file:
            file.write(json.dumps(change) + "\n")

    # ---- metrics --------------------------------------------------------------------------
    def append_metrics(self, record: EpochRecord) -> None:
        """Append one epoch's line whole and fsync it, so it is on disk with its checkpoint."""
        with self._writing(self.metrics_path), open(self.metrics_path, "a") as file:
            file.write(json.dumps(record.to_line()) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def read_metrics(self) -> list[EpochRecord]:
        """Every whole line of metrics.jsonl; a torn line (a kill or a full disk mid-write) is
        skipped with a warning."""
        if not self.metrics_path.is_file():
            return []
        entries, torn = [], 0
        for line in self.metrics_path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                entries.append(EpochRecord.from_line(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError, AttributeError):
                torn += 1
        if torn:
            print(f"warning: skipped {torn} torn line(s) in {self.metrics_path}", file=sys.stderr)
        return entries

    def trim_metrics(self, last_global_epoch: int) -> None:
        """Keep the lines of epochs up to `last_global_epoch` (those a resume state covers), by
        writing a new file and renaming it into place: a kill during the trim loses nothing."""
        if not self.metrics_path.is_file():
            return
        kept = [record for record in self.read_metrics() if record.global_epoch <= last_global_epoch]
        with self._writing(self.metrics_path):
            atomic_write_text(self.metrics_path, "".join(json.dumps(record.to_line()) + "\n" for record in kept))

    # ---- results --------------------------------------------------------------------------
    def write_results(self, results: RunResults) -> None:
        with self._writing(self.results_path):
            atomic_write_text(self.results_path, json.dumps(results.to_dict(), indent=2) + "\n")

    def read_results(self) -> RunResults:
        try:
            return RunResults.from_dict(json.loads(self.results_path.read_text()))
        except FileNotFoundError:
            raise KdistillError(f"'{self.path}' holds no {RESULTS_FILE}: the run has not finished") from None
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
            raise KdistillError(f"{self.results_path} is not a kdistill results file ({type(error).__name__}: "
                                f"{error}): delete it or re-run the training") from None

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
