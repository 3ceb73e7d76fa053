"""A full disk at every write site of a run, through the real command (`cli.main`, in process so
the disk can fill at one chosen write): one line naming the file and what is intact, exit 2, and
the rerun the line asks for (after space is freed) ends as the uninterrupted run does.

The disk fills by wrapping what kdistill writes through (`os.fdopen` of the atomic writer's
temporary files, `open` for appends and lock files, `os.pwrite` of the teacher cache), so the bytes
reach the same Python calls as on a real full disk; torch.save's own wrapping of the OSError is
exercised."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import QUICK_RUN
from test_crash_safety import assert_same_weights, metrics_lines, without_timing

from kdistill import cli
from kdistill.models import create_model
from kdistill.models.checkpoint import save_model_weights
from kdistill.run_folder import EpochRecord, RunFolder, RunResults

RUN = QUICK_RUN + ["data.image_size=12", "epochs=2", "schedule.name=cosine"]
TORCH_SAVE_ROOM = 2000  # bytes a weight or checkpoint file gets: past torch's first record, so torch wraps the error


class FullFile:
    """A file on a disk that fills after `room` bytes: a larger write raises ENOSPC."""

    def __init__(self, file, room: int):
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def fill_disk_at(monkeypatch, name: str, write: int = 1, room: int = 0) -> None:
    """The disk is full at the `write`-th write of the file `name` (counted from 1) and after."""
    writes = []
    real_fdopen, real_open, real_pwrite = os.fdopen, open, os.pwrite

    def full(file, path: str):
        if Path(path).name != name and not Path(path).name.startswith(f".{name}."):  # the writer's temporary
            return file
        writes.append(path)
        return FullFile(file, room) if len(writes) >= write else file

    monkeypatch.setattr(os, "fdopen", lambda fd, *args, **kwargs: full(real_fdopen(fd, *args, **kwargs),
                                                                      os.readlink(f"/proc/self/fd/{fd}")))
    for module in ("kdistill.run_folder", "kdistill.files"):  # appends, and the lock files
        monkeypatch.setattr(f"{module}.open", lambda path, *args, **kwargs: full(
            real_open(path, *args, **kwargs), str(path)), raising=False)

    def pwrite(fd: int, data: bytes, offset: int) -> int:  # the teacher cache fills its rows in place
        if isinstance(full(None, os.readlink(f"/proc/self/fd/{fd}")), FullFile):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)


def train(command: str, args: list[str], capsys) -> tuple[int, list[str]]:
    code = cli.main([command, *args])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pth"
    save_model_weights(create_model("resnet8", num_classes=10, in_chans=1), path)
    return path


def distill_args(teacher: Path, out: Path, cache: Path) -> list[str]:
    return [*RUN, "method.name=kd", "teacher=resnet8", f"teacher_checkpoint={teacher}", f"teacher_cache={cache}",
            "teacher_cache_dtype=float32", f"out={out}"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, teacher) -> Path:
    """The uninterrupted run (with a teacher cache of its own)."""
    folder = tmp_path_factory.mktemp("reference")
    assert cli.main(["distill", *distill_args(teacher, folder / "run", folder / "cache")]) == 0
    return folder / "run"


SITES = {  # file: (its write that fails, room, where it lives, what the line says is intact)
    "run.lock": (1, 0, "run", "no checkpoint was written yet (run the command again to start over)"),
    "config.yaml": (1, 0, "run", "no checkpoint was written yet (run the command again to start over)"),
    "student_best.pth": (1, TORCH_SAVE_ROOM, "run", "no checkpoint was written yet (run the command again"),
    "student_last.pth": (2, TORCH_SAVE_ROOM, "run", "the previous checkpoint is intact (resume=true continues)"),
    "checkpoint.pt": (2, TORCH_SAVE_ROOM, "run", "the previous checkpoint is intact (resume=true continues)"),
    "metrics.jsonl": (2, 0, "run", "the previous checkpoint is intact (resume=true continues)"),
    "results.json": (1, 0, "run", "the previous checkpoint is intact (resume=true continues)"),
    "manifest.json": (1, 0, "cache", "no manifest.json was written"),
    # An epoch is filled in place under a temporary name (its rows are written where they go).
    ".epoch_0001.image.bin.filling": (1, 0, "cache", "the epoch is filled again by the next run; "
                                                     "the previous checkpoint is intact (resume=true continues)"),
}


@pytest.mark.parametrize("name", list(SITES))
def test_a_full_disk_is_one_line_and_the_rerun_ends_as_the_uninterrupted_run(tmp_path, teacher, reference,
                                                                             monkeypatch, capsys, name):
    write, room, where, intact = SITES[name]
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = distill_args(teacher, out, cache)
    fill_disk_at(monkeypatch, name, write, room)
    code, lines = train("distill", args, capsys)
    monkeypatch.undo()  # space is freed
    path = (out if where == "run" else cache) / name
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"kdistill: error: no space left on device while writing {path}; {intact}"), lines
    resume = ["resume=true"] if "resume=true" in intact else []
    code, lines = train("distill", [*args, *resume], capsys)
    assert code == 0, lines
    assert_same_weights(reference, out)
    assert without_timing(metrics_lines(out)) == without_timing(metrics_lines(reference))
    assert not [path for path in out.iterdir() if path.name.endswith(".tmp")]


def hand_made_run(folder: Path, method: str, teacher: str | None, top1: float) -> None:
    """A finished run folder as `kdistill report` reads it (its results and one epoch's line)."""
    folder.mkdir(parents=True)
    run = RunFolder(folder)
    run.write_results(RunResults(student="resnet8", teacher=teacher, method=method, dataset="embedded", seed=0,
                                 epochs=1, top1_last=top1, top5_last=90.0, top1_best=top1, top5_best=90.0,
                                 best_epoch=1, train_time_s=1.0, wall_time_s=1.0, student_params=1))
    run.append_metrics(EpochRecord(phase="train", epoch=1, global_epoch=1, lr=0.1, train={"loss": 1.0},
                                   evaluation={"test": {"top1": top1}}, img_per_s=1.0, epoch_time_s=1.0,
                                   data_wait_fraction=0.0, precision="fp32"))


@pytest.mark.parametrize("name", ["table.md", "table.csv", "report.json", "kd.png"])
def test_a_full_disk_while_reporting_is_one_line_and_keeps_the_previous_report(tmp_path, monkeypatch, capsys, name):
    runs, out = tmp_path / "runs", tmp_path / "report"
    hand_made_run(runs / "vanilla", "vanilla", None, 60.0)
    hand_made_run(runs / "kd", "kd", "resnet20", 62.0)
    assert cli.main(["report", str(runs), "--out", str(out)]) == 0
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    fill_disk_at(monkeypatch, name)
    code, lines = train("report", [str(runs), "--out", str(out)], capsys)
    path = out / "curves" / name if name.endswith(".png") else out / name
    assert code == 2 and lines == [f"kdistill: error: no space left on device while writing {path}; "
                                   f"the previous {name} is untouched"]
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


GRID_LOG = "broken_resnet8_resnet8_seed0.1.log"  # the first attempt's log of the grid's one run


@pytest.mark.parametrize(("name", "intact"), [("grid.lock", "no run of the grid was started"),
                                              (GRID_LOG, f"no {GRID_LOG} was written")])
def test_a_full_disk_at_the_grids_own_files_is_one_line(tmp_path, teacher, monkeypatch, capsys, name, intact):
    out = tmp_path / "grid"
    spec = tmp_path / "grid.yaml"  # one run, refused at its configuration: the grid writes its log itself
    spec.write_text(json.dumps({"pairs": ["resnet8:resnet8"], "teachers": {"resnet8": str(teacher)},
                                "methods": {"broken": ["method.name=kd", "method.no_such_option=1"]}}))
    fill_disk_at(monkeypatch, name)
    code, lines = train("grid", [str(spec), "--out", str(out)], capsys)
    path = out / "logs" / name if name.endswith(".log") else out / name
    assert code == 2 and lines == [f"kdistill: error: no space left on device while writing {path}; {intact}"]
