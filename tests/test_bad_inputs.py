"""Bad inputs of the command line, each through the real entry point: one line, exit 2, nothing run."""

import json

import pytest
from helpers import QUICK_RUN, assert_user_error, run_kdistill

GRID = ["--methods", "kd", "--pairs", "resnet8:resnet8"]


def test_report_into_an_existing_file_is_one_line(tmp_path):
    run = tmp_path / "runs" / "kd"
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"method": "kd", "student": "resnet8", "teacher": "resnet20",
                                                  "dataset": "cifar100", "seed": 0, "top1_last": 70.0,
                                                  "top1_best": 70.0}))
    taken = tmp_path / "report.txt"
    taken.write_text("mine")
    assert_user_error(run_kdistill("report", str(tmp_path / "runs"), "--out", str(taken)),
                      f"--out {taken} is a file: give a folder")
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("override", ["optim.lr=-1", "schedule.min_lr=-0.1", "method.w_ce=-1", "method.w_kd=-1",
                                      "method.w_method=-0.5"])
def test_a_negative_learning_rate_or_loss_weight_is_refused_at_load(tmp_path, override):
    key = override.split("=")[0]
    result = run_kdistill("distill", *QUICK_RUN, "method.name=kd", "teacher=resnet8", override,
                          f"out={tmp_path / 'r'}")
    assert_user_error(result, f"{key}=", "cannot be negative", f"set {key} to a value >= 0")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("arguments", "fragment"), [
    (["--seeds", "a", "b"], "argument --seeds: invalid int value: 'a'"),
    (["--jobs", "0"], "--jobs 0: the runs at once must be a whole number >= 1"),
])
def test_bad_grid_flags_are_one_line(tmp_path, arguments, fragment):
    result = run_kdistill("grid", *GRID, "--out", str(tmp_path / "g"), *arguments)
    assert_user_error(result, fragment)
    assert not (tmp_path / "g").exists()


def test_seeds_in_a_grid_spec_must_be_whole_numbers(tmp_path):
    spec = tmp_path / "grid.yaml"
    spec.write_text("seeds: [0, one]\n")
    assert_user_error(run_kdistill("grid", str(spec), *GRID, "--out", str(tmp_path / "g")),
                      "seeds [0, 'one']: give whole numbers")
