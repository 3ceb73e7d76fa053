import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import QUICK_RUN, assert_user_error
from omegaconf import OmegaConf

from kdistill.cli import EVAL_COMMANDS, parse_command_line
from kdistill.demo import announce
from kdistill.models import create_model


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One quick vanilla run shared by the eval/distill tests."""
    from kdistill.config.loading import load_config
    from kdistill.engine import train_run

    run = tmp_path_factory.mktemp("runs") / "teacher"
    train_run(load_config(None, QUICK_RUN + ["epochs=1", f"out={run}"]))
    return run


def test_list_names_models_methods_and_datasets(run_cli):
    from kdistill.data import list_datasets
    from kdistill.methods import list_methods
    from kdistill.models import list_models

    result = run_cli("list")
    assert result.returncode == 0
    listed = dict(line.split(": ", 1) for line in result.stdout.splitlines()[:3])
    assert {title: names.split(", ") for title, names in listed.items()} == {
        "models": list_models(), "methods": list_methods(), "datasets": list_datasets()}
    methods = listed["methods"].split(", ")
    assert {"kd", "dcd+kd", "crd+kd", "tintem"} <= set(methods) and "tintem+kd" not in methods


# ---- key=value overrides stand anywhere on a command's line

LIST_VALUES = {"--corruptions": ("jpeg", "jpeg"), "--severities": ("3", 3), "--k": ("5", 5)}


@pytest.mark.parametrize("command, option", [(command, option) for command in EVAL_COMMANDS
                                             for option in command.options if option.nargs == "+"],
                         ids=lambda value: getattr(value, "name", None) or getattr(value, "flag", None))
def test_an_override_after_a_list_option_is_no_list_value(command, option):
    token, value = LIST_VALUES[option.flag]
    args = parse_command_line([command.name, "runs/kd", option.flag, token, "progress=false", token, "device=cpu"])
    assert getattr(args, option.parameter) == [value, value]
    assert args.overrides == ["progress=false", "device=cpu"]


def test_overrides_anywhere_on_every_command():
    examples = {
        ("faithfulness", "runs/kd", "--severities", "3", "progress=false"): {"severities": [3]},
        ("robustness", "runs/kd", "--corruptions", "gaussian_noise", "contrast", "progress=false"):
            {"corruptions": ["gaussian_noise", "contrast"]},
        ("correlate", "A", "B", "C", "--out", "f.png", "progress=false"): {"targets": ["A", "B", "C"], "out": "f.png"},
        ("correlate", "A", "progress=false", "B", "--out", "x=1.png"): {"targets": ["A", "B"], "out": "x=1.png"},
        ("knn", "progress=false", "runs/kd", "--which", "best"): {"target": "runs/kd", "which": "best"},
        ("probe", "runs/kd", "--max-iter", "5", "progress=false"): {"max_iter": 5},
        ("train", "--config", "r.yaml", "progress=false", "--resume"): {"config": "r.yaml", "resume": True},
        ("demo", "progress=false", "--quiet"): {"quiet": True},
    }
    for argv, expected in examples.items():
        args = parse_command_line(list(argv))
        assert args.overrides == ["progress=false"], argv
        assert {key: getattr(args, key) for key in expected} == expected, argv
    for command in EVAL_COMMANDS:
        assert parse_command_line([command.name, "progress=false", "runs/kd", "seed=1"]).overrides == [
            "progress=false", "seed=1"]


def test_a_run_folder_named_like_a_path_is_not_an_override():
    assert parse_command_line(["eval", "runs/lr=0.1", "seed=1"]).target == "runs/lr=0.1"


def test_commands_without_config_refuse_overrides(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_command_line(["report", "runs", "progress=false"])
    assert exit_info.value.code == 2 and "takes no key=value" in capsys.readouterr().err


def test_help_shows_the_defaults_of_the_evaluation_modules(capsys):
    from kdistill.eval.knn import KS, TEMPERATURE
    from kdistill.eval.probe import MAX_ITER, WEIGHT_DECAY
    from kdistill.eval.robustness import CORRUPTIONS, SEVERITIES

    expected = {"knn": [" ".join(map(str, KS)), str(TEMPERATURE)], "probe": [str(WEIGHT_DECAY), str(MAX_ITER)],
                "robustness": [" ".join(CORRUPTIONS), " ".join(map(str, SEVERITIES))]}
    for name, defaults in expected.items():
        with pytest.raises(SystemExit):
            parse_command_line([name, "--help"])
        text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for default in defaults:
            assert f"(default: {default})" in text, (name, default)


def test_config_lists_every_key_with_its_default(run_cli):
    from kdistill.config import RunConfig, flat_config
    from kdistill.config.reference import config_rows, method_rows

    listing = run_cli("config")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()[1:]
    listed = {line.split()[0]: line.split()[1] for line in lines}
    defaults = flat_config(RunConfig())
    assert set(listed) == set(defaults)  # every key, none made up
    assert listed["optim.lr"] == "0.05" and listed["schedule.name"] == "step" and listed["seed"] == "0"
    assert any(line.startswith("steps_per_epoch ") and "cap on steps per epoch" in line for line in lines)
    assert all(text for _, _, text in config_rows(RunConfig) + method_rows(None))  # every key says what it does
    dkd = run_cli("config", "--method", "dkd").stdout.splitlines()
    assert any(line.split()[:2] == ["method.beta", "8.0"] and "NCKD" in line for line in dkd)
    assert any(line.split()[:3] == ["method.w_kd", "null", "(="] for line in dkd)  # the method's own default
    assert_user_error(run_cli("config", "--method", "dkdd"), "unknown method 'dkdd': did you mean dkd")


def test_cache_help_offers_no_resume(run_cli):
    """A cache fill keeps the epoch files already there by itself: `--resume` would mean nothing."""
    cache, train = run_cli("cache", "--help"), run_cli("train", "--help")
    assert cache.returncode == 0 and "--config" in cache.stdout and "--resume" not in cache.stdout
    assert "--resume" in train.stdout


def test_the_experiment_script_takes_overrides_after_its_lists():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "experiments" / "compare_fashion_mnist.py"
    spec = importlib.util.spec_from_file_location("compare_fashion_mnist", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    args = script.parse_args(["--methods", "kd", "dcd", "device=cpu", "--seeds", "0", "1", "progress=false"])
    assert args.methods == ["kd", "dcd"] and args.seeds == [0, 1]
    assert args.overrides == ["device=cpu", "progress=false"]


def test_train_and_distill_through_the_entry_point(run_cli, trained_run, tmp_path):
    # The teacher is named relative to the working directory; the run folder stores it absolute,
    # so evaluations of the run work from anywhere.
    # teacher= left out: the teacher run's config.yaml names its model.
    result = run_cli("distill", *QUICK_RUN, "epochs=1", "method.name=kd",
                     f"teacher_checkpoint={trained_run.name}", f"out={tmp_path / 'kd'}", cwd=trained_run.parent)
    assert result.returncode == 0, result.stderr
    assert "kd resnet8: top-1 last" in result.stdout
    results = json.loads((tmp_path / "kd" / "results.json").read_text())
    assert results["method"] == "kd" and results["teacher"] == "resnet8"
    saved = OmegaConf.load(tmp_path / "kd" / "config.yaml")
    assert saved.teacher_checkpoint == str(trained_run.resolve()) and saved.student_checkpoint is None
    assert saved.teacher == "resnet8"


def test_config_file_and_overrides(run_cli, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("student: resnet8\nepochs: 1\ndata:\n  name: embedded\n  batch_size: 16\n")
    result = run_cli("train", "--config", str(recipe), *QUICK_RUN[2:], "data.batch_size=16", f"out={tmp_path / 'r'}")
    assert result.returncode == 0, result.stderr
    saved = (tmp_path / "r" / "config.yaml").read_text()
    assert "batch_size: 16" in saved and "epochs: 1" in saved
    # The default step schedule's milestones (150, 180, 210) lie beyond a 1-epoch run: one warning line.
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert warnings == ["kdistill: warning: schedule.name=step decays the learning rate at epochs 150, 180, 210, "
                        "none within epochs=1: it stays 0.05 to the end; for a short run set schedule.name=cosine "
                        "(or schedule.milestones=[...])"]


def test_a_recipe_run_with_another_seed_writes_its_own_folder(run_cli, tmp_path):
    """The recipes' `out` holds `${seed}`: `seed=1` on a recipe is a new run beside seed 0's, not a
    run refused as in use."""
    recipe = Path(__file__).resolve().parent.parent / "configs/embedded/teachers/resnet20.yaml"
    seed0 = tmp_path / "runs/embedded/teachers/resnet20/seed0"
    seed0.mkdir(parents=True)
    (seed0 / "results.json").write_text("{}")  # seed 0's run, finished before
    result = run_cli("train", "--config", str(recipe), *QUICK_RUN, "epochs=1", "seed=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "runs/embedded/teachers/resnet20/seed1/results.json").is_file()
    assert "warning" not in result.stderr  # the recipe's cosine schedule acts on a run of any length


def test_eval_of_a_run_folder_and_of_a_weight_file(run_cli, trained_run):
    result = run_cli("eval", str(trained_run), "device=cpu")
    assert result.returncode == 0, result.stderr
    report = json.loads((trained_run / "eval_last.json").read_text())
    assert report["top1"] == pytest.approx(json.loads((trained_run / "results.json").read_text())["top1_last"])
    result = run_cli("eval", str(trained_run / "student_best.pth"), "student=resnet8", "data.name=embedded",
                     "device=cpu")
    assert result.returncode == 0, result.stderr
    assert (trained_run / "student_best.pth.eval.json").is_file()


def test_demo_runs_and_reuses_its_teacher(run_cli, tmp_path):
    args = ("demo", "--out", str(tmp_path / "demo"), "--quiet", "steps_per_epoch=2", "data.eval_batch_size=500")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    # What it trains and how long that takes, before it starts: 3 + 3 x 2 epochs of 2 steps.
    assert first.stdout.startswith("kdistill demo: a resnet14 teacher (3 epochs), then vanilla, kd, dcd+kd resnet8 "
                                   "students (2 epochs each) on the embedded data: 18 training steps, about ")
    assert "| kd | resnet8 | kd |" in first.stdout
    rows = json.loads((tmp_path / "demo" / "table.json").read_text())
    assert [row["run"] for row in rows] == ["teacher", "vanilla", "kd", "dcd+kd"]
    assert f"-> {tmp_path / 'demo' / 'table.md'} and" in first.stdout
    second = run_cli(*[arg for arg in args if arg != "--quiet"])  # with progress output
    assert second.returncode == 0, second.stderr
    assert "reusing the demo teacher" in second.stdout
    assert second.stdout.startswith("kdistill demo: reusing its teacher, then vanilla, kd, dcd+kd resnet8 students")
    # Without the cap, the announcement says how steps_per_epoch= shortens the demo.
    assert "1404 training steps, about 5 minutes on two CPU cores (far less on a GPU); steps_per_epoch=20 shortens " \
           "it to 180 steps" in announce(False, [])
    described = run_cli("--help").stdout
    assert "a resnet14 teacher, then vanilla, KD and DCD+KD resnet8" in " ".join(described.split())
    for run in ("vanilla", "kd", "dcd+kd"):  # every progress line names its run
        assert f"{tmp_path / 'demo' / run}: train epoch 2 " in second.stdout


def test_bad_names_give_the_closest_ones(run_cli, tmp_path):
    assert_user_error(run_cli("train", *QUICK_RUN, "student=resnet9", f"out={tmp_path / 'a'}"),
                      "unknown model 'resnet9'", "resnet8")
    assert_user_error(run_cli("distill", *QUICK_RUN, "method.name=kdd", f"out={tmp_path / 'b'}"),
                      "unknown method 'kdd'", "kd")
    assert_user_error(run_cli("train", *QUICK_RUN, "data.name=cifar1000", f"out={tmp_path / 'c'}"),
                      "unknown dataset 'cifar1000'", "cifar100")
    assert_user_error(run_cli("train", *QUICK_RUN, "epoch=3"), "config key 'epoch' is invalid", "did you mean epochs")
    assert_user_error(run_cli("train", *QUICK_RUN, "lr=0.1"), "config key 'lr' is invalid", "did you mean optim.lr")
    # A method name: the close ones, case aside; never the list of every method.
    assert_user_error(run_cli("distill", *QUICK_RUN, "method.name=DCD+KD", f"out={tmp_path / 'd'}"),
                      "unknown method 'DCD+KD': did you mean dcd+kd")
    assert_user_error(run_cli("distill", *QUICK_RUN, "method.name=xyzzy", f"out={tmp_path / 'e'}"),
                      "unknown method 'xyzzy': no method name is close (`kdistill list` shows all)")


def test_a_mistyped_key_is_reported_before_torch_is_imported():
    code = ("import sys\nfrom kdistill.cli import main\n"
            "code = main(['distill', 'method.name=kd', 'lr=0.1'])\nprint(code, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.stdout.split() == ["2", "False"], result.stdout + result.stderr
    assert "did you mean optim.lr" in result.stderr


def test_a_path_typo_names_the_close_paths(run_cli, trained_run, tmp_path):
    typo = trained_run.with_name(trained_run.name[:-1])  # teache
    assert_user_error(run_cli("eval", str(typo), "device=cpu"), f"does not exist (did you mean {trained_run}?)")
    assert_user_error(run_cli("distill", *QUICK_RUN, "method.name=kd", "teacher=resnet8", f"teacher_checkpoint={typo}",
                              f"out={tmp_path / 'kd'}"), f"not found (did you mean {trained_run}?)")


def test_missing_and_malformed_data_folders(run_cli, tmp_path):
    assert_user_error(run_cli("train", *QUICK_RUN, "data.name=cifar100", f"data.root={tmp_path / 'none'}",
                              f"out={tmp_path / 'a'}"), str(tmp_path / "none"))
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
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
