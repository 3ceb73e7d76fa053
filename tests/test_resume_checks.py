"""A resume checks the configuration against the saved one; the user errors around a run are one line."""

import errno
import json
import shutil

import pytest
import yaml
from helpers import QUICK_RUN, assert_user_error, run_kdistill

from kdistill import cli
from kdistill.config.loading import load_config
from kdistill.engine import train_run
from kdistill.errors import KdistillError
from kdistill.models import checkpoint
from kdistill.run_folder import RunFolder

RUN = [*QUICK_RUN, "steps_per_epoch=2", "epochs=1", "schedule.name=cosine"]  # no short-schedule warning line


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("base") / "run"
    train_run(load_config(None, [*RUN, f"out={out}"]))
    return out


@pytest.fixture
def run(finished_run, tmp_path):
    """A copy of the finished one-epoch run, as the test's own."""
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def resume(out, *overrides):
    return train_run(load_config(None, [*RUN, f"out={out}", "resume=true", *overrides]))


def test_a_changed_configuration_is_refused_naming_the_keys_and_nothing_is_written(run):
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    with pytest.raises(KdistillError, match=r"another configuration: method.name \('vanilla' -> 'kd'\), .*"
                                            r"optim.lr \(0.05 -> 0.1\), seed \(0 -> 3\); .*resume_force=true"):
        resume(run, "seed=3", "optim.lr=0.1", "method.name=kd")
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before


def test_more_epochs_train_on_and_the_change_is_recorded(run, finished_run):
    results = resume(run, "epochs=2", "progress=true")
    assert results.epochs == 2 and [record.epoch for record in RunFolder(run).read_metrics()] == [1, 2]
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 2
    change = json.loads((run / "config_changes.jsonl").read_text())
    moved = change["changes"].pop("out")  # the test copied the run folder: allowed, and recorded
    assert moved == {"saved": str(finished_run), "now": str(run)}
    assert change["changes"] == {"epochs": {"saved": 1, "now": 2}, "progress": {"saved": False, "now": True}}
    assert change["forced"] == []


def test_resume_force_accepts_a_change_and_records_it(run):
    resume(run, "epochs=2", "seed=5", "resume_force=true")
    change = json.loads((run / "config_changes.jsonl").read_text())
    assert change["forced"] == ["seed"] and change["changes"]["seed"] == {"saved": 0, "now": 5}
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["seed"], saved["resume"], saved["resume_force"]) == (5, False, False)


def test_resuming_a_finished_run_reports_it_and_writes_nothing(run, run_cli):
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    result = run_cli("train", *RUN, f"out={run}", "--resume")
    assert result.returncode == 0, result.stderr
    saved = json.loads(before["results.json"])
    assert f"top-1 last {saved['top1_last']:.2f}" in result.stdout
    assert "has finished its 1 epochs: nothing to train" in result.stderr
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before


def test_resume_with_another_student_is_one_line(run):
    assert_user_error(run_kdistill("train", *RUN, "student=resnet14", f"out={run}", "--resume"),
                      "another configuration: student ('resnet8' -> 'resnet14')")


def test_resume_into_an_empty_folder_starts_the_run_with_a_note(tmp_path):
    out = tmp_path / "new"
    result = run_kdistill("train", *RUN, f"out={out}", "--resume")
    assert result.returncode == 0, result.stderr
    assert f"kdistill: note: '{out}' holds no run yet: starting a new one there" in result.stderr
    assert RunFolder(out).is_finished()


def test_zero_epochs_is_one_line_and_leaves_no_folder(tmp_path):
    assert_user_error(run_kdistill("train", *RUN, "epochs=0", f"out={tmp_path / 'r'}"),
                      "epochs=0: a run needs at least one epoch")
    assert not (tmp_path / "r").exists()


def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(run, monkeypatch):
    state = (run / "checkpoint.pt").read_bytes()
    monkeypatch.setattr("kdistill.run_folder.atomic_save", no_space)
    with pytest.raises(KdistillError) as raised:
        resume(run, "epochs=2")
    assert str(raised.value) == (f"no space left on device while writing {run / 'checkpoint.pt'}; "
                                 "the previous checkpoint is intact (resume=true continues)")
    assert (run / "checkpoint.prev.pt").read_bytes() == state  # what the next resume falls back to


def test_a_full_disk_before_any_checkpoint_says_so_through_the_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(checkpoint, "atomic_save", no_space)  # the weight files are written first
    out = tmp_path / "r"
    assert cli.main(["train", *RUN, f"out={out}"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"kdistill: error: no space left on device while writing {out / 'student_best.pth'}; "
                     "no checkpoint was written yet (run the command again to start over)"]
