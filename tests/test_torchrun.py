"""Training under torchrun: two CPU processes (gloo), one run folder."""

import json
import subprocess
import sys

from helpers import QUICK_RUN


def test_two_process_distillation_writes_one_run_with_whole_split_metrics(tmp_path, run_cli):
    teacher = tmp_path / "teacher"
    assert run_cli("train", *QUICK_RUN, "epochs=1", f"out={teacher}").returncode == 0
    run = tmp_path / "dcd"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "kdistill", "distill", *QUICK_RUN, "epochs=1", "method.name=dcd+kd", "teacher=resnet8",
               f"teacher_checkpoint={teacher}", f"out={run}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 1 and "train/dcd" in metrics[0]  # one writer: rank 0
    # The logged accuracy covers the whole test split (both ranks' shards): one process agrees.
    evaluated = run_cli("eval", str(run), "device=cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((run / "eval_last.json").read_text())
    assert abs(report["top1"] - metrics[0]["test/top1"]) < 1e-9
