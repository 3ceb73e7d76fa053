import json
import math

import pytest
import torch
from conftest import QUICK_RUN, run_kdistill

from kdistill.errors import KdistillError
from kdistill.precision import autocast_dtype


def metrics_of(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_bf16_on_cpu_trains_without_nan_logs_its_precision_and_changes_the_numerics(tmp_path):
    lines = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        result = run_kdistill("train", *QUICK_RUN, "epochs=1", f"precision={precision}", f"out={out}")
        assert result.returncode == 0, result.stderr
        lines[precision] = metrics_of(out)[0]
    bf16 = lines["bf16"]
    assert bf16["precision"] == "bf16" and lines["fp32"]["precision"] == "fp32"
    assert math.isfinite(bf16["train/loss"]) and math.isfinite(bf16["test/loss"])
    # Same data, weights and steps: only autocast can make the losses differ.
    assert bf16["train/loss"] != lines["fp32"]["train/loss"]
    assert abs(bf16["train/loss"] - lines["fp32"]["train/loss"]) < 0.1 * lines["fp32"]["train/loss"]
    # The loader's waits are a part of the epoch's wall time.
    assert 0 < bf16["data_wait_fraction"] < 1


def test_fp16_on_cpu_is_refused_with_one_line(tmp_path):
    result = run_kdistill("train", *QUICK_RUN, "precision=fp16", f"out={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "kdistill: error: precision=fp16 needs a CUDA device (this run is on cpu): use precision=bf16"]


def test_precision_names():
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(KdistillError, match="precision='fp8' is not one of: fp32, bf16, fp16"):
        autocast_dtype("fp8", torch.device("cpu"))
