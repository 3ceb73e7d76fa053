"""Crash safety of a run folder: kills, torn files, unreadable checkpoints, a second process,
non-finite losses, SIGTERM. Kills inside a save are simulated in-process (a `Killed` raised where
the process would die); kills at arbitrary moments and signals use a real `kdistill` process."""

import json
import os
import shutil
import signal
import subprocess
import time
from itertools import islice
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import QUICK_RUN, kdistill_command, run_kdistill
from PIL import Image

from kdistill.config import DataConfig
from kdistill.config.loading import load_config
from kdistill.data import build_loaders
from kdistill.engine import train_run
from kdistill.errors import KdistillError, RunStopped
from kdistill.methods.base import Distiller
from kdistill.models import create_model
from kdistill.models.checkpoint import save_model_weights
from kdistill.run_folder import RunFolder

TIMING = ("img_per_s", "epoch_time_s", "data_wait_fraction")
RUN = QUICK_RUN + ["data.image_size=12"]  # a quarter of the pixels: evaluating each epoch takes 4x less
THREE_EPOCHS = RUN + ["epochs=3", "schedule.name=cosine"]
# Long enough epochs to stop a process inside one, with a resume state every 8 steps.
LONG_EPOCHS = RUN + ["epochs=2", "steps_per_epoch=30", "schedule.name=cosine"]
EVERY_8_STEPS = "checkpoint_every_steps=8"


class Killed(BaseException):
    """Where the process would die; a BaseException, as no handler of the run may catch a kill."""


def train(args: list[str], out: Path, *extra: str) -> dict:
    return train_run(load_config(None, args + [f"out={out}", *extra]))


def metrics_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in TIMING} for row in rows]


def assert_same_weights(expected_run: Path, actual_run: Path) -> None:
    expected = torch.load(expected_run / "student_last.pth", weights_only=True)["model"]
    actual = torch.load(actual_run / "student_last.pth", weights_only=True)["model"]
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def kill_at_save(monkeypatch, call: int) -> None:
    """The process dies as it starts its `call`-th resume-state save (counted from 1)."""
    original, calls = RunFolder.save_resume_state, []

    def save(self, state):
        calls.append(1)
        if len(calls) == call:
            raise Killed
        original(self, state)

    monkeypatch.setattr(RunFolder, "save_resume_state", save)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> Path:
    """THREE_EPOCHS, never interrupted."""
    out = tmp_path_factory.mktemp("reference") / "run"
    train(THREE_EPOCHS, out)
    return out


@pytest.fixture(scope="module")
def killed_after_two_epochs(tmp_path_factory) -> Path:
    """THREE_EPOCHS killed as it saved epoch 3: checkpoint.pt holds epoch 2, checkpoint.prev.pt epoch 1."""
    out = tmp_path_factory.mktemp("killed") / "run"
    with pytest.MonkeyPatch.context() as monkeypatch:
        kill_at_save(monkeypatch, 3)
        with pytest.raises(Killed):
            train(THREE_EPOCHS, out)
    return out


@pytest.fixture
def killed_run(killed_after_two_epochs, tmp_path) -> Path:
    return Path(shutil.copytree(killed_after_two_epochs, tmp_path / "run"))


def test_a_torn_last_metrics_line_is_skipped_and_the_run_resumes(tmp_path, monkeypatch, capsys, reference_run):
    # A full disk tears epoch 2's line after its resume state was saved.
    original = RunFolder.append_metrics

    def torn_append(self, record):
        if record.global_epoch == 2:
            with open(self.metrics_path, "a") as file:
                file.write(json.dumps(record.to_line())[:25])
            raise Killed
        original(self, record)

    monkeypatch.setattr(RunFolder, "append_metrics", torn_append)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        train(THREE_EPOCHS, run)
    monkeypatch.undo()
    with pytest.raises(json.JSONDecodeError):
        metrics_lines(run)  # what made every --resume fail before

    train(THREE_EPOCHS, run, "resume=true")
    assert "skipped 1 torn line(s)" in capsys.readouterr().err
    assert without_timing(metrics_lines(run)) == without_timing(metrics_lines(reference_run))
    assert_same_weights(reference_run, run)


def test_a_kill_during_the_metrics_trim_leaves_the_old_file(killed_run, monkeypatch):
    before = (killed_run / "metrics.jsonl").read_bytes()
    real_replace = os.replace

    def replace(source, target):
        if Path(target).name == "metrics.jsonl":
            raise Killed  # after the new file is written, before it is renamed into place
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        train(THREE_EPOCHS, killed_run, "resume=true")
    monkeypatch.undo()
    assert (killed_run / "metrics.jsonl").read_bytes() == before
    assert [row["global_epoch"] for row in metrics_lines(killed_run)] == [1, 2]
    assert not list(killed_run.glob(".*.tmp"))


def test_a_kill_before_the_first_checkpoint_leaves_no_duplicate_epochs(tmp_path, monkeypatch, reference_run):
    run = tmp_path / "run"
    kill_at_save(monkeypatch, 1)
    with pytest.raises(Killed):
        train(THREE_EPOCHS, run)
    monkeypatch.undo()
    assert not (run / "checkpoint.pt").exists()
    assert not (run / "metrics.jsonl").exists()  # an epoch's line is written after its checkpoint
    # A line without its checkpoint, as an older kdistill (line first) left it: a fresh start drops it.
    (run / "metrics.jsonl").write_text(json.dumps(metrics_lines(reference_run)[0]) + "\n")

    train(THREE_EPOCHS, run, "resume=true")
    assert [row["global_epoch"] for row in metrics_lines(run)] == [1, 2, 3]
    assert_same_weights(reference_run, run)


def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(killed_run, capsys, reference_run):
    (killed_run / "checkpoint.pt").write_bytes((killed_run / "checkpoint.pt").read_bytes()[:1000])
    (killed_run / ".checkpoint.pt.x1y2z3.tmp").write_bytes(b"left by a killed save")
    (killed_run / ".metrics.jsonl.a1b2c3.tmp").write_text("{")

    train(THREE_EPOCHS, killed_run, "resume=true")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "checkpoint" in line]
    assert len(warnings) == 1 and "checkpoint.pt is unreadable" in warnings[0]
    assert "resuming from checkpoint.prev.pt" in warnings[0]
    assert not list(killed_run.glob(".*.tmp"))  # a killed save's temporary files are removed at the start
    # Epoch 2 ran again from the state of epoch 1: the log and the weights are those of an unbroken run.
    assert without_timing(metrics_lines(killed_run)) == without_timing(metrics_lines(reference_run))
    assert_same_weights(reference_run, killed_run)
    assert torch.load(killed_run / "checkpoint.prev.pt", weights_only=True)["epoch"] == 1  # two good states again


def test_no_readable_checkpoint_is_one_line_naming_the_files(killed_run):
    (killed_run / "checkpoint.pt").write_bytes(b"")
    (killed_run / "checkpoint.prev.pt").write_bytes(b"not a torch file")
    result = run_kdistill("train", *THREE_EPOCHS, f"out={killed_run}", "--resume")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kdistill: error: cannot resume")
    assert "checkpoint.pt and checkpoint.prev.pt are unreadable" in lines[0]
    assert "delete checkpoint.pt and checkpoint.prev.pt" in lines[0]
    assert "weights_only" not in lines[0]


def start_training(args: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen(kdistill_command() + ["train", *args, f"out={out}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert path.exists() and process.poll() is None, "the run ended before the moment to stop it"


def test_a_second_process_on_a_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    first = start_training(RUN + ["epochs=200"], run)
    try:
        wait_for(run / "config.yaml", first)
        config_before = (run / "config.yaml").read_bytes()
        with pytest.raises(KdistillError) as refused:  # this test's process is the second one
            train(RUN + ["epochs=200"], run, "resume=true")
        assert str(refused.value) == (f"'{run}' is in use by another kdistill process (pid {first.pid}): "
                                      "wait for it to end or stop it, or choose another out=")
        assert (run / "config.yaml").read_bytes() == config_before
        assert first.poll() is None
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    RunFolder(run).lock()  # the OS released the lock of the killed process


def test_a_non_finite_loss_stops_the_run_with_exit_code_3(tmp_path):
    run = tmp_path / "run"
    # a milestone within the run (no short-schedule warning line); epoch 1 is as under the default
    result = run_kdistill("train", *QUICK_RUN, "epochs=2", "optim.lr=1e6", "schedule.milestones=[1]", f"out={run}")
    assert result.returncode == 3, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kdistill: error: the loss is not finite in train epoch 1 step ")
    assert "(term ce)" in lines[0] and "no checkpoint was saved before it" in lines[0]
    assert sorted(path.name for path in run.iterdir()) == ["config.yaml", "run.lock"]


def test_a_non_finite_loss_keeps_the_last_good_checkpoint_and_weights(tmp_path):
    # The learning rate jumps by 1e12 after epoch 1: epoch 2 diverges.
    args = RUN + ["optim.lr=0.01", "schedule.milestones=[1]", "schedule.gamma=1e12"]
    train(args + ["epochs=1"], tmp_path / "one_epoch")
    run = tmp_path / "run"
    with pytest.raises(RunStopped, match="in train epoch 2 step .* checkpoint.pt .the end of train epoch 1.") as stop:
        train(args + ["epochs=2"], run)
    assert stop.value.exit_code == 3
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 0
    assert_same_weights(tmp_path / "one_epoch", run)
    assert [row["global_epoch"] for row in metrics_lines(run)] == [1]
    assert not (run / "results.json").exists()


def nan_at_step(monkeypatch, step: int) -> list[float]:
    """CE of the `step`-th training step (from 1) becomes NaN; returns the CE of the other steps."""
    original, calls, finite = Distiller.supervised_terms, [], []

    def terms(self, student, teacher, labels):
        result = original(self, student, teacher, labels)
        if not self.training:
            return result
        calls.append(1)
        if len(calls) == step:
            return {**result, "ce": result["ce"] * float("nan")}
        finite.append(float(result["ce"].detach()))
        return result

    monkeypatch.setattr(Distiller, "supervised_terms", terms)
    return finite


def test_a_non_finite_step_names_its_epoch_step_and_term(tmp_path, monkeypatch):
    nan_at_step(monkeypatch, 2)
    with pytest.raises(RunStopped, match=r"in train epoch 1 step 2 \(term ce\)"):
        train(RUN + ["epochs=1"], tmp_path / "run")


def test_nonfinite_skip_skips_the_step_and_counts_it(tmp_path, monkeypatch):
    finite_ce = nan_at_step(monkeypatch, 2)
    train(RUN + ["epochs=1", "nonfinite=skip"], tmp_path / "run")
    [row] = metrics_lines(tmp_path / "run")
    assert row["nonfinite_steps"] == 1
    assert len(finite_ce) == 3
    assert row["train/ce"] == pytest.approx(sum(finite_ce) / 3, rel=1e-6)  # the mean over the steps taken
    weights = torch.load(tmp_path / "run" / "student_last.pth", weights_only=True)["model"]
    assert all(torch.isfinite(value).all() for value in weights.values() if value.is_floating_point())


def test_a_teacher_with_non_finite_outputs_is_refused_at_the_start(tmp_path):
    teacher = create_model("resnet8", num_classes=10, in_chans=1)
    with torch.no_grad():
        next(teacher.parameters()).view(-1)[0] = float("nan")
    save_model_weights(teacher, tmp_path / "nan_teacher.pth")
    run = tmp_path / "run"
    result = run_kdistill("distill", *RUN, "method.name=kd", "teacher=resnet8",
                          f"teacher_checkpoint={tmp_path / 'nan_teacher.pth'}", f"out={run}")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"kdistill: error: teacher 'resnet8' from '{tmp_path / 'nan_teacher.pth'}' gives non-finite outputs on the "
        "first batch (its weights hold NaN or inf): give a trained teacher's weights"]
    assert not (run / "metrics.jsonl").exists()


@pytest.fixture(scope="module")
def long_reference(tmp_path_factory) -> Path:
    """LONG_EPOCHS without any mid-epoch save or interruption."""
    out = tmp_path_factory.mktemp("long") / "run"
    train(LONG_EPOCHS, out)
    return out


def stop_after_first_save(run: Path, signum: int) -> subprocess.Popen:
    """Start LONG_EPOCHS with a save every 8 steps; send `signum` once the first (mid-epoch) one is there."""
    process = start_training(LONG_EPOCHS + [EVERY_8_STEPS], run)
    wait_for(run / "checkpoint.pt", process)
    os.kill(process.pid, signum)
    process.wait(timeout=120)
    return process


def assert_resumes_exactly(run: Path, reference: Path) -> None:
    train(LONG_EPOCHS + [EVERY_8_STEPS], run, "resume=true")
    assert_same_weights(reference, run)
    assert without_timing(metrics_lines(run)) == without_timing(metrics_lines(reference))


def test_a_kill_within_an_epoch_resumes_with_bit_identical_weights(tmp_path, long_reference):
    run = tmp_path / "run"
    process = stop_after_first_save(run, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == -1 and state["tally"]["steps"] in (8, 16, 24)  # inside epoch 1
    assert_resumes_exactly(run, long_reference)


def test_sigterm_keeps_the_last_checkpoint_says_so_and_resumes_exactly(tmp_path, long_reference):
    run = tmp_path / "run"
    process = stop_after_first_save(run, signal.SIGTERM)
    assert process.returncode == 143
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    steps = state["tally"]["steps"]
    assert process.stderr.read().strip().splitlines() == [
        f"kdistill: stopped by SIGTERM; checkpoint.pt keeps train epoch 1 step {steps}: "
        "add --resume (resume=true) to continue from there"]
    assert not list(run.glob(".*.tmp"))
    assert_resumes_exactly(run, long_reference)


def test_sigterm_before_any_checkpoint_says_none_was_kept(tmp_path):
    run = tmp_path / "run"
    process = start_training(LONG_EPOCHS, run)
    wait_for(run / "config.yaml", process)
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=120)
    assert process.returncode == 143
    assert process.stderr.read().strip().splitlines() == [
        "kdistill: stopped by SIGTERM; no checkpoint was saved yet: run the command again to start over"]
    assert not RunFolder(run).has_resume_state()


def test_ctrl_c_within_a_step_abandons_it_and_says_no_checkpoint_exists(tmp_path, monkeypatch):
    original, calls = Distiller.supervised_terms, []

    def terms(self, student, teacher, labels):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, student, teacher, labels)

    monkeypatch.setattr(Distiller, "supervised_terms", terms)
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RunStopped) as stop:
        train(RUN + ["epochs=2"], tmp_path / "run")
    assert stop.value.exit_code == 130
    assert str(stop.value) == "stopped by SIGINT; no checkpoint was saved yet: run the command again to start over"
    assert len(calls) == 3  # no step after the signal
    assert signal.getsignal(signal.SIGINT) is handler_before  # the handler is put back


def test_a_signal_during_a_save_lets_the_save_finish(tmp_path, monkeypatch):
    original = RunFolder.save_resume_state

    def save(self, state):
        os.kill(os.getpid(), signal.SIGTERM)
        original(self, state)

    monkeypatch.setattr(RunFolder, "save_resume_state", save)
    with pytest.raises(RunStopped) as stop:
        train(RUN + ["epochs=2"], tmp_path / "run")
    assert stop.value.exit_code == 143
    assert "checkpoint.pt keeps the end of train epoch 1" in str(stop.value)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 0
    assert [row["global_epoch"] for row in metrics_lines(tmp_path / "run")] == [1]  # the line after the state too


def test_bad_crash_safety_options_are_one_line_errors(tmp_path):
    with pytest.raises(KdistillError, match=r"nonfinite.*\[stop, skip\]"):
        train(RUN, tmp_path / "a", "nonfinite=ignore")
    with pytest.raises(KdistillError, match="checkpoint_every_steps=-1 is negative"):
        train(RUN, tmp_path / "b", "checkpoint_every_steps=-1")


def assert_skipping_keeps_the_later_batches(loader, epoch: int, skip: int, count: int) -> None:
    loader.set_epoch(epoch)
    full = list(islice(loader, skip + count))
    loader.set_epoch(epoch, skip_batches=skip)
    rest = list(islice(loader, count))
    assert len(rest) == count
    for expected, actual in zip(full[skip:], rest):
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), key
    assert not torch.equal(full[0]["index"], rest[0]["index"])


def test_skipping_batches_leaves_the_samples_and_views_of_the_rest(tmp_path):
    # In memory, with the strong view (its random choices are keyed too).
    embedded = build_loaders(DataConfig("embedded", batch_size=16), torch.device("cpu"), seed=3,
                             with_strong_view=True)
    assert_skipping_keeps_the_later_batches(embedded.train, epoch=2, skip=3, count=2)
    # Files decoded by DataLoader workers.
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for k in range(4):
                pixels = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{k}.png")
    folder = build_loaders(DataConfig("imagefolder", str(tmp_path), batch_size=2, image_size=16, num_workers=1),
                           torch.device("cpu"), seed=3)
    assert_skipping_keeps_the_later_batches(folder.train, epoch=1, skip=2, count=2)


# Methods with a teacher and state of their own (a learned temperature, a distillation head):
# a kill as the third resume state is saved, then --resume, ends as the unbroken run.
# ReviewKD: fusion blocks and a warm-up by epoch (3 epochs here, so the kill falls inside it).
# OFD: connectors, and margins rebuilt from the teacher on resume.
# RRD: a queue of 48 wraps around within the run (its write position is resumed state too).
RESUMED_METHODS = {
    "dist": [],
    "reviewkd": ["method.warmup=3"],
    "simkd": [],
    "srrl": [],
    "ofd": [],
    "kdsvd": [],
    "kd+ctkd": [],
    "dkd+ctkd": ["method.instance_temperature=true", "method.warmup=2"],
    "rrd": ["method.queue_size=48"],
    # The DeiT token on a one-block ViT of width 32 (its two heads and tokens in the state).
    "deit": ["student=timm:deit_tiny_distilled_patch16_224", "student_options.img_size=12",
             "student_options.patch_size=4", "student_options.depth=1", "student_options.embed_dim=32",
             "student_options.num_heads=2"],
    "semckd": [],
}


@pytest.fixture(scope="module")
def random_teacher(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "resnet8.pth"
    save_model_weights(create_model("resnet8", num_classes=10, in_chans=1), path)
    return path


@pytest.mark.parametrize("method", list(RESUMED_METHODS))
def test_a_method_run_killed_at_a_save_resumes_with_bit_identical_weights(method, tmp_path, monkeypatch,
                                                                           random_teacher):
    args = THREE_EPOCHS + [f"method.name={method}", "teacher=resnet8", f"teacher_checkpoint={random_teacher}",
                           *RESUMED_METHODS[method]]
    train(args, tmp_path / "reference")
    with monkeypatch.context() as patch:
        kill_at_save(patch, 3)
        with pytest.raises(Killed):
            train(args, tmp_path / "run")
    train(args, tmp_path / "run", "resume=true")
    assert_same_weights(tmp_path / "reference", tmp_path / "run")
    assert without_timing(metrics_lines(tmp_path / "run")) == without_timing(metrics_lines(tmp_path / "reference"))
