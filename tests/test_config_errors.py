"""Input files the user hands the CLI that cannot be used: a broken YAML config, a weight file
that is damaged or carries code. Each gives one line naming the file, exit code 2, and nothing
runs (no run folder is made)."""

import os
import pickle
from pathlib import Path

import pytest
import torch
from helpers import QUICK_RUN, RunsCommand, assert_user_error, run_kdistill

from kdistill.config.loading import load_config
from kdistill.config.yaml_file import read_yaml_mapping
from kdistill.errors import KdistillError

RUN = [*QUICK_RUN, "epochs=1", "steps_per_epoch=1"]


# --- YAML configs ---------------------------------------------------------------------------

MARKER = "code-ran"
NOT_A_MAPPING = "not a mapping of keys; write one key per line, e.g. 'epochs: 10'"
CONFIGS = {  # name: (file bytes, what the one line must say after the file's name)
    "syntax error": (b"epochs: 3\nstudent: [resnet8\nseed: 1\n",
                     "is not valid YAML: line 3, column 5: did not find expected ',' or ']' "
                     "(while parsing a flow sequence at line 2, column 10)"),
    "python tag": (f"epochs: 2\nseed: !!python/object/apply:os.system ['touch {MARKER}']\n".encode(),
                   "is not valid YAML: line 2, column 7: the tag !!python/object/apply:os.system would build a "
                   "Python object; a config holds plain values only: remove it"),
    "top-level list": (b"- epochs: 3\n- seed: 1\n", f"holds a list, {NOT_A_MAPPING}"),
    "single value": (b"42\n", f"holds a single value, {NOT_A_MAPPING}"),
    "not UTF-8": ("epochs: 1\nstudent: r\xe9snet8\n".encode("latin-1"),
                  "is not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"),
}


@pytest.mark.parametrize("case", CONFIGS)
def test_a_config_file_that_cannot_be_used_is_one_line_and_nothing_runs(tmp_path, case):
    content, expected = CONFIGS[case]
    config = tmp_path / "recipe.yaml"
    config.write_bytes(content)
    out = tmp_path / "run"
    result = run_kdistill("train", "--config", str(config), *RUN, f"out={out}", cwd=tmp_path)
    assert_user_error(result, f"kdistill: error: config file '{config}' {expected}")
    assert not out.exists() and not (tmp_path / MARKER).exists()


def test_a_good_config_still_reads_as_before(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("epochs: 3\noptim:\n  lr: 1e-3\nmethod:\n  name: kd\n  temperature: 2e0\n"
                      "schedule:\n  milestones: [1, 2]\n")
    cfg = load_config(str(config), ["seed=5"])
    assert (cfg.epochs, cfg.optim.lr, cfg.seed, list(cfg.schedule.milestones)) == (3, 0.001, 5, [1, 2])
    assert (cfg.method.name, cfg.method.options.temperature) == ("kd", 2.0)  # YAML 1.2 floats, as OmegaConf reads them
    (tmp_path / "empty.yaml").write_text("")
    assert read_yaml_mapping(tmp_path / "empty.yaml") == {}


def test_an_unreadable_config_names_the_file(tmp_path):
    with pytest.raises(KdistillError, match=f"cannot read config file '{tmp_path}'"):
        read_yaml_mapping(tmp_path)  # a folder


# --- weight files ---------------------------------------------------------------------------


def weight_file(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind.replace(' ', '_')}.pth"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"weight": torch.zeros(4096)}, path)
        path.write_bytes(path.read_bytes()[:4000])
    elif kind == "not torch":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    elif kind == "code":
        path.write_bytes(pickle.dumps({"weight": RunsCommand(f"touch {tmp_path / MARKER}")}, protocol=2))
    return path


WEIGHT_PROBLEMS = {
    "empty": "the file is empty (0 bytes)",
    "truncated": "the file is truncated or damaged (its zip archive cannot be read)",
    "not torch":
        "it is not a file of tensors written by torch.save (damaged, or another format)",
    "code": f"it holds a Python object ({os.system.__module__}.system), not tensors only; "
            "refused, none of its code ran",
}


@pytest.mark.parametrize("kind", WEIGHT_PROBLEMS)
def test_a_bad_student_weight_file_is_one_line_without_torchs_advice(tmp_path, kind):
    path = weight_file(tmp_path, kind)
    out = tmp_path / "run"
    result = run_kdistill("train", *RUN, f"student_checkpoint={path}", f"out={out}")
    assert_user_error(result, f"kdistill: error: cannot read checkpoint '{path}' ({WEIGHT_PROBLEMS[kind]}): ")
    assert "weights_only" not in result.stderr and not out.exists() and not (tmp_path / MARKER).exists()


def test_a_truncated_teacher_weight_file_is_one_line(tmp_path):
    path = weight_file(tmp_path, "truncated")
    out = tmp_path / "run"
    result = run_kdistill("distill", *RUN, "method.name=kd", "teacher=resnet8", f"teacher_checkpoint={path}",
                          f"out={out}")
    assert_user_error(result, f"cannot read checkpoint '{path}' ({WEIGHT_PROBLEMS['truncated']})")
    assert not out.exists()
