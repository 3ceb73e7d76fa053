import json

import pytest
import torch

from conftest import QUICK_RUN
from kdistill.models import create_model


def assert_user_error(result, *fragments: str) -> None:
    """Exit code 2 and one clear line, never a traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One quick vanilla run shared by the eval/distill tests."""
    from kdistill.engine import load_config, train_run

    run = tmp_path_factory.mktemp("runs") / "teacher"
    train_run(load_config(None, QUICK_RUN + ["epochs=1", f"out={run}"]))
    return run


def test_list_names_models_methods_and_datasets(run_cli):
    result = run_cli("list")
    assert result.returncode == 0
    assert "resnet32x4" in result.stdout and "kd" in result.stdout and "embedded" in result.stdout


def test_train_and_distill_through_the_entry_point(run_cli, trained_run, tmp_path):
    result = run_cli("distill", *QUICK_RUN, "epochs=1", "method.name=kd", "teacher=resnet8",
                     f"teacher_checkpoint={trained_run}", f"out={tmp_path / 'kd'}")
    assert result.returncode == 0, result.stderr
    assert "kd resnet8: top-1 last" in result.stdout
    results = json.loads((tmp_path / "kd" / "results.json").read_text())
    assert results["method"] == "kd" and results["teacher"] == "resnet8"


def test_config_file_and_overrides(run_cli, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: resnet8\nepochs: 1\ndata:\n  name: embedded\n  batch_size: 16\n")
    result = run_cli("train", "--config", str(recipe), *QUICK_RUN[2:], "data.batch_size=16", f"out={tmp_path / 'r'}")
    assert result.returncode == 0, result.stderr
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "batch_size: 16" in saved and "epochs: 1" in saved


def test_eval_of_a_run_folder_and_of_a_weight_file(run_cli, trained_run):
    result = run_cli("eval", str(trained_run), "device=cpu")
    assert result.returncode == 0, result.stderr
    report = json.loads((trained_run / "eval_last.json").read_text())
    assert report["top1"] == pytest.approx(json.loads((trained_run / "results.json").read_text())["top1_last"])
    result = run_cli("eval", str(trained_run / "student_best.pth"), "student=resnet8", "data.name=embedded", "device=cpu")
    assert result.returncode == 0, result.stderr
    assert (trained_run / "student_best.pth.eval.json").is_file()


def test_demo_runs_and_reuses_its_teacher(run_cli, tmp_path):
    args = ("demo", "--out", str(tmp_path / "demo"), "--quiet", "steps_per_epoch=2", "data.eval_batch_size=500")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "| kd | resnet8 | kd |" in first.stdout
    rows = json.loads((tmp_path / "demo" / "table.json").read_text())
    assert [row["run"] for row in rows] == ["teacher", "vanilla", "kd", "dcd+kd"]
    second = run_cli(*args)
    assert second.returncode == 0, second.stderr
    assert "reusing the demo teacher" in second.stdout


def test_bad_names_give_the_closest_ones(run_cli, tmp_path):
    assert_user_error(run_cli("train", *QUICK_RUN, "student=resnet9", f"out={tmp_path / 'a'}"),
                      "unknown model 'resnet9'", "resnet8")
    assert_user_error(run_cli("distill", *QUICK_RUN, "method.name=kdd", f"out={tmp_path / 'b'}"),
                      "unknown method 'kdd'", "kd")
    assert_user_error(run_cli("train", *QUICK_RUN, "data.name=cifar1000", f"out={tmp_path / 'c'}"),
                      "unknown dataset 'cifar1000'", "cifar100")
    assert_user_error(run_cli("train", *QUICK_RUN, "epoch=3"), "epoch")


def test_missing_and_malformed_data_folders(run_cli, tmp_path):
    assert_user_error(run_cli("train", *QUICK_RUN, "data.name=cifar100", f"data.root={tmp_path / 'none'}",
                              f"out={tmp_path / 'a'}"), str(tmp_path / "none"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (bad / name).write_bytes(b"\x00\x00\x00\x00not an idx file")
    assert_user_error(run_cli("train", *QUICK_RUN, "data.name=fashion-mnist", f"data.root={bad}",
                              f"out={tmp_path / 'b'}"), str(bad))


def test_checkpoints_that_do_not_fit(run_cli, trained_run, tmp_path):
    assert_user_error(run_cli("distill", *QUICK_RUN, "method.name=kd", "teacher=resnet14",
                              f"teacher_checkpoint={trained_run}", f"out={tmp_path / 'a'}"), "layer")
    hundred = tmp_path / "resnet8_vanilla" / "ckpt_epoch_240.pth"
    hundred.parent.mkdir()
    torch.save({"model": create_model("resnet8", num_classes=100, in_chans=1).state_dict()}, hundred)
    assert_user_error(run_cli("distill", *QUICK_RUN, "method.name=kd", "teacher=resnet8",
                              f"teacher_checkpoint={hundred}", f"out={tmp_path / 'b'}"), "100 classes", "10")
    assert_user_error(run_cli("distill", *QUICK_RUN, "method.name=kd", "teacher=resnet8",
                              f"teacher_checkpoint={tmp_path / 'missing.pth'}", f"out={tmp_path / 'c'}"), "not found")


def test_unwritable_output_cuda_and_finished_runs(run_cli, trained_run, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert_user_error(run_cli("train", *QUICK_RUN, f"out={blocker / 'run'}"), "cannot be written")
    if not torch.cuda.is_available():
        assert_user_error(run_cli("train", *QUICK_RUN, "device=cuda", f"out={tmp_path / 'c'}"), "no CUDA")
    before = (trained_run / "results.json").read_text()
    assert_user_error(run_cli("train", *QUICK_RUN, f"out={trained_run}"), "resume=true")
    assert (trained_run / "results.json").read_text() == before
