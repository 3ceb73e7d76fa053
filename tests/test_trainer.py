import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from helpers import QUICK_RUN, kdistill_command

from kdistill.config.loading import load_config
from kdistill.engine import train_run
from kdistill.errors import KdistillError
from kdistill.models import create_model, load_checkpoint
from kdistill.models.checkpoint import atomic_save
from kdistill.run_folder import EpochRecord, RunFolder, RunResults


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_short_training_run_lowers_the_loss_and_writes_its_files(tmp_path):
    cfg = load_config(None, QUICK_RUN + ["epochs=3", "steps_per_epoch=12", f"out={tmp_path / 'run'}"])
    results = train_run(cfg)
    run = tmp_path / "run"
    metrics = read_metrics(run)
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[-1]["train/loss"] < 0.8 * metrics[0]["train/loss"]
    assert results.top1_last == metrics[-1]["test/top1"] > 30.0  # 10 classes: chance is 10%
    assert results.top1_best == max(m["test/top1"] for m in metrics)
    saved = load_config(str(run / "config.yaml"))
    assert saved.optim.lr == 0.05 and saved.epochs == 3
    model = create_model("resnet8", num_classes=10, in_chans=1)
    load_checkpoint(model, run / "student_last.pth")  # a trained model loads as a teacher would
    for name in ("student_best.pth", "checkpoint.pt", "results.json"):
        assert (run / name).is_file()


def test_an_existing_run_is_never_overwritten(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text('{"top1_last": 1}')
    with pytest.raises(KdistillError, match="resume=true"):
        train_run(load_config(None, QUICK_RUN + [f"out={run}"]))
    assert (run / "results.json").read_text() == '{"top1_last": 1}'


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1}, path)

    def failing_save(obj, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KdistillError) as raised:
        atomic_save({"epoch": 2}, path)
    assert str(raised.value) == f"disk full while writing {path}; the previous checkpoint.pt is untouched"
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert list(tmp_path.iterdir()) == [path]


def test_kill_and_resume_ends_with_the_same_weights(tmp_path):
    args = QUICK_RUN + ["epochs=3", "steps_per_epoch=8", "schedule.name=cosine"]
    reference = subprocess.run(kdistill_command() + ["train", *args, f"out={tmp_path / 'a'}"],
                               capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr

    killed_run = tmp_path / "b"
    process = subprocess.Popen(kdistill_command() + ["train", *args, f"out={killed_run}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (killed_run / "checkpoint.pt").exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed_run / "results.json").exists(), "the run finished before it could be killed"
    assert torch.load(killed_run / "checkpoint.pt", weights_only=True)["epoch"] < 2

    resumed = subprocess.run(kdistill_command() + ["train", *args, f"out={killed_run}", "--resume"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    expected = torch.load(tmp_path / "a" / "student_last.pth", weights_only=True)["model"]
    actual = torch.load(killed_run / "student_last.pth", weights_only=True)["model"]
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    timing = ("img_per_s", "epoch_time_s", "data_wait_fraction")
    strip = lambda rows: [{k: v for k, v in row.items() if k not in timing} for row in rows]
    assert strip(read_metrics(killed_run)) == strip(read_metrics(tmp_path / "a"))


def test_metrics_lines_and_results_are_read_back_as_their_schemas(tmp_path):
    folder = RunFolder(tmp_path)
    record = EpochRecord("train", 2, 3, 0.05, {"ce": 1.5, "loss": 1.5, "top1": 40.0},
                         {"test": {"top1": 38.0, "top5": 80.0}}, 120.0, 3.5, 0.1, "fp32")
    folder.append_metrics(record)
    # the line keeps the flat layout of earlier versions, so their metrics files stay readable
    line = json.loads(folder.metrics_path.read_text())
    assert line == {"phase": "train", "epoch": 2, "global_epoch": 3, "lr": 0.05, "train/ce": 1.5, "train/loss": 1.5,
                    "train/top1": 40.0, "img_per_s": 120.0, "epoch_time_s": 3.5, "data_wait_fraction": 0.1,
                    "precision": "fp32", "test/top1": 38.0, "test/top5": 80.0}
    assert folder.read_metrics() == [record]
    assert (record.accuracy("test"), record.accuracy("train"), record.accuracy("val")) == (38.0, 40.0, None)
    assert record.loss_terms() == {"ce": 1.5, "loss": 1.5}
    assert record.summary() == "train/loss=1.5 test/top1=38" and "global_epoch" not in record.scalars()
    results = RunResults("resnet8", "resnet20", "kd", "embedded", 1, 3, 38.0, 80.0, 39.0, 81.0, 2, 10.0, 11.0, 7,
                         extra={"reused": True})
    folder.write_results(results)
    assert folder.read_results() == results and json.loads(folder.results_path.read_text())["reused"] is True
    folder.results_path.write_text(json.dumps({"method": "kd"}))
    with pytest.raises(KdistillError, match="is not a kdistill results file"):
        folder.read_results()
