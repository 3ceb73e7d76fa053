import json

from conftest import run_kdistill

TINY = ["--teacher", "resnet14", "--student", "resnet8", "--steps", "3", "--warmup", "1", "--batch-size", "8",
        "--train-size", "256", "--num-classes", "10", "--workers", "0", "--data-batches", "1"]


def test_bench_runs_every_row_and_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    result = run_kdistill("bench", "--method", "kd", *TINY, "--out", str(out))
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    rows = {row["row"]: row for row in report["rows"]}
    assert list(rows) == ["a", "b", "c", "d-bf16", "e"]  # no CUDA here: no fp16 row
    assert all(row["img_per_s"] > 0 and row["step_ms"] > 0 for row in rows.values())
    # The conventional and the default step do the same model work; the cached step skips the
    # teacher's forward pass; compiled and bf16 steps count the same model FLOPs as b.
    assert rows["a"]["flops_per_image"] == rows["b"]["flops_per_image"] == rows["e"]["flops_per_image"]
    assert rows["d-bf16"]["flops_per_image"] == rows["b"]["flops_per_image"]
    assert rows["c"]["flops_per_image"] < rows["b"]["flops_per_image"]
    assert rows["a"]["vs_a"] == 1.0 and rows["a"]["mfu"] is None  # MFU only against a GPU's peak
    pipelines = [row["pipeline"].split(":")[0].split(" ")[0] for row in report["data_pipeline"]]
    assert pipelines == ["per-image", "in-memory", "folder"]
    assert "x1.00 vs a" in result.stdout  # the table on screen


def test_bench_refuses_the_conventional_row_for_a_method_it_does_not_cover(tmp_path):
    result = run_kdistill("bench", "--method", "crld", *TINY)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "kdistill: error: bench: row a (the conventional loop) is written for kd and crd; "
        "for 'crld' pass --rows b c d e"]
