"""`kdistill report`: the paper-style table, the relative improvement over KD, the curve plots."""

import csv
import json
from pathlib import Path

import pytest
from helpers import assert_nonblank_png, run_kdistill

from kdistill import demo
from kdistill.errors import KdistillError
from kdistill.report import build_report, relative_improvement
from kdistill.run_folder import RunFolder, RunResults


def write_run(folder: Path, method: str, student: str, teacher: str | None, top1_last: float,
              top1_best: float | None = None, seed: int = 0, history: list[dict] | None = None,
              config: list[str] | None = None) -> Path:
    """A hand-made run folder: results.json as the Trainer writes it, metrics.jsonl and config.yaml
    (the default config with `config` overrides) if given."""
    folder.mkdir(parents=True)
    if config is not None:
        from kdistill.config.loading import load_config

        cfg = load_config(None, [f"student={student}", f"method.name={method}", "data.name=cifar100", f"seed={seed}",
                                 f"out={folder}", *([f"teacher={teacher}"] if teacher else []), *config])
        RunFolder(folder).write_config(cfg)
    best = top1_last if top1_best is None else top1_best
    RunFolder(folder).write_results(RunResults(student, teacher, method, "cifar100", seed, 240, top1_last, None, best,
                                               best, 240, 1.0, 1.0, 1000))
    if history is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(entry) + "\n" for entry in history))
    return folder


def test_relative_improvement_of_three_hand_made_runs(tmp_path):
    write_run(tmp_path / "vanilla", "vanilla", "resnet8x4", None, 72.50, 72.80)
    write_run(tmp_path / "kd", "kd", "resnet8x4", "resnet32x4", 73.33, 73.60)
    write_run(tmp_path / "dcd", "dcd", "resnet8x4", "resnet32x4", 74.23, 74.40)
    report = build_report([str(tmp_path)], tmp_path / "out")
    last, best = report["tables"]
    # last: (74.23 - 73.33) / (73.33 - 72.50) = 0.90 / 0.83; best: (74.40 - 73.60) / (73.60 - 72.80) = 1
    assert last["relative_improvement_over_kd"] == {"dcd": pytest.approx(0.90 / 0.83)}
    assert best["relative_improvement_over_kd"] == {"dcd": pytest.approx(1.0)}
    assert "| dcd | 74.23 (1) ↑ | +108.43% |" in report["markdown"]
    assert "| dcd | 74.40 (1) ↑ | +100.00% |" in report["markdown"]


def test_relative_improvement_is_the_mean_over_pairs_of_the_ratio():
    # CRD against KD on two pairs of the ICD paper's table (CRD, KD, vanilla student).
    expected = ((75.48 - 74.92) / (74.92 - 73.26) + (71.16 - 70.66) / (70.66 - 69.06)) / 2
    assert relative_improvement([75.48, 71.16], [74.92, 70.66], [73.26, 69.06]) == pytest.approx(expected)
    # The 0/0 pair is left out.
    assert relative_improvement([75.0, 71.16], [74.0, 70.66], [74.0, 69.06]) == pytest.approx(0.5 / 1.6)
    assert relative_improvement([75.0], [74.0], [74.0]) is None


@pytest.fixture
def two_pair_runs(tmp_path) -> Path:
    """Two pairs of the ICD table; KD and the vanilla student with two seeds on the first pair."""
    runs = tmp_path / "runs"
    write_run(runs / "teachers" / "wrn_40_2", "vanilla", "wrn_40_2", None, 75.61)
    write_run(runs / "teachers" / "resnet56", "vanilla", "resnet56", None, 72.34)
    write_run(runs / "vanilla" / "wrn_16_2_s0", "vanilla", "wrn_16_2", None, 73.00, 73.10, seed=0)
    write_run(runs / "vanilla" / "wrn_16_2_s1", "vanilla", "wrn_16_2", None, 73.52, 73.60, seed=1)
    write_run(runs / "vanilla" / "resnet20", "vanilla", "resnet20", None, 69.06)
    write_run(runs / "kd" / "wrn_s0", "kd", "wrn_16_2", "wrn_40_2", 74.82, seed=0)
    write_run(runs / "kd" / "wrn_s1", "kd", "wrn_16_2", "wrn_40_2", 75.02, seed=1)
    write_run(runs / "kd" / "resnet", "kd", "resnet20", "resnet56", 70.66)
    write_run(runs / "crd" / "wrn", "crd", "wrn_16_2", "wrn_40_2", 75.48)
    write_run(runs / "crd" / "resnet", "crd", "resnet20", "resnet56", 71.16)
    write_run(runs / "at" / "wrn", "at", "wrn_16_2", "wrn_40_2", 74.08)
    return runs


def test_table_layout(two_pair_runs, tmp_path):
    report = build_report([str(two_pair_runs)], tmp_path / "out")
    markdown = (tmp_path / "out" / "table.md").read_text()
    assert markdown == report["markdown"]
    last_section = markdown.split("### ")[1].splitlines()
    assert last_section[0] == "cifar100: top-1 (%) at the last epoch"
    assert last_section[2:] == [
        "|  | wrn_40_2 → wrn_16_2 | resnet56 → resnet20 | rel. improvement over KD |",
        "|---|---|---|---|",
        "| teacher | 75.61 (1) | 72.34 (1) |  |",
        "| student (vanilla) | 73.26 ± 0.37 (2) | 69.06 (1) |  |",  # sample std of 73.00 and 73.52
        "| kd | 74.92 ± 0.14 (2) | 70.66 (1) |  |",
        "| at | 74.08 (1) ↓ | - | -50.60% |",  # (74.08 - 74.92) / (74.92 - 73.26)
        "| crd | 75.48 (1) ↑ | 71.16 (1) ↑ | +32.49% |",  # mean of 0.56 / 1.66 and 0.50 / 1.60
        "",
    ]
    assert "cifar100: top-1 (%) at the best epoch" in markdown
    assert "| student (vanilla) | 73.35 ± 0.35 (2) | 69.06 (1) |  |" in markdown  # best epochs 73.10 and 73.60


def test_csv_holds_the_numbers(two_pair_runs, tmp_path):
    build_report([str(two_pair_runs)], tmp_path / "out")
    with open(tmp_path / "out" / "table.csv", newline="") as file:
        rows = list(csv.reader(file))
    header = rows[0]
    assert header[:6] == ["dataset", "variant", "row", "wrn_40_2 -> wrn_16_2 mean", "wrn_40_2 -> wrn_16_2 std",
                          "wrn_40_2 -> wrn_16_2 runs"]
    kd_last = next(row for row in rows if row[1:3] == ["last", "kd"])
    assert float(kd_last[3]) == pytest.approx(74.92) and kd_last[5] == "2"
    crd_last = next(row for row in rows if row[1:3] == ["last", "crd"])
    assert float(crd_last[-1]) == pytest.approx(32.4925, abs=1e-3)
    at_last = next(row for row in rows if row[1:3] == ["last", "at"])
    assert at_last[6:9] == ["", "", "0"]  # no AT run on the second pair
    assert [row[1] for row in rows].count("variant") == 1  # one data set: one header


def test_training_curves_are_nonblank_pngs(tmp_path):
    history = [{"phase": "init" if epoch == 1 else "train", "epoch": epoch, "global_epoch": epoch,
                "train/ce": 2.5 / epoch, "train/kd": 1.0 / epoch ** 0.5, "train/loss": 3.5 / epoch,
                "train/top1": 20.0 + 10 * epoch, "test/top1": 18.0 + 9 * epoch} for epoch in range(1, 7)]
    write_run(tmp_path / "runs" / "vanilla", "vanilla", "resnet8", None, 60.0)
    write_run(tmp_path / "runs" / "kd" / "seed0", "kd", "resnet8", "resnet20", 70.0, history=history)
    report = build_report([str(tmp_path / "runs")], tmp_path / "out")
    assert report["curves"] == [str(tmp_path / "out" / "curves" / "kd_seed0.png")]  # no history, no curve
    assert_nonblank_png(report["curves"][0])


def test_bad_inputs_are_user_errors(tmp_path):
    with pytest.raises(KdistillError, match="no results.json under"):
        build_report([str(tmp_path)], tmp_path / "out")
    with pytest.raises(KdistillError, match="is not a folder"):
        build_report([str(tmp_path / "missing")], tmp_path / "out")
    write_run(tmp_path / "vanilla", "vanilla", "resnet8", None, 60.0)
    with pytest.raises(KdistillError, match="no distillation run"):
        build_report([str(tmp_path)], tmp_path / "out")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "results.json").write_text("{")
    with pytest.raises(KdistillError, match="broken/results.json is not a kdistill results file"):
        build_report([str(tmp_path)], tmp_path / "out")


def test_cells_pool_seeds_of_one_configuration_only(tmp_path):
    """Two seed-0 KD runs of 1 and 2 epochs are not one method over two seeds: each configuration
    gets its row, labelled by what differs; where a run lives or what device it used does not count."""
    runs = tmp_path / "runs"
    write_run(runs / "vanilla", "vanilla", "resnet8", None, 60.0, config=["epochs=2"])
    write_run(runs / "kd_1epoch", "kd", "resnet8", "resnet20", 19.0, config=["epochs=1"])
    write_run(runs / "kd_2epochs_s0", "kd", "resnet8", "resnet20", 70.0, config=["epochs=2", "device=cpu"])
    write_run(runs / "kd_2epochs_s1", "kd", "resnet8", "resnet20", 72.0, seed=1, config=["epochs=2", "device=cuda"])
    write_run(runs / "dcd", "dcd", "resnet8", "resnet20", 73.0, config=["epochs=2"])
    report = build_report([str(runs)], tmp_path / "out")
    rows = report["markdown"].split("### ")[1].splitlines()[4:]
    # DCD (2 epochs) is compared with KD and the vanilla student of 2 epochs: (73 - 71) / (71 - 60).
    assert rows[1:5] == ["| student (vanilla) | 60.00 (1) |  |", "| kd (epochs=1) | 19.00 (1) |  |",
                         "| kd (epochs=2) | 71.00 ± 1.41 (2) |  |", "| dcd | 73.00 (1) ↑ | +18.18% |"]
    assert report["tables"][0]["rows"]["kd (epochs=2)"]["resnet20 -> resnet8"]["seeds"] == [0, 1]


def test_runs_with_exact_teacher_outputs_pool_whether_or_not_they_read_a_cache(tmp_path):
    """A float32 cache is exact: its run computes what an uncached run computes (the grid caches the
    logit methods' runs so, feature methods run uncached), so they share a setting and compare; a
    rounded or top-K cache sets its runs apart."""
    runs = tmp_path / "runs"
    write_run(runs / "vanilla", "vanilla", "resnet8", None, 60.0, config=[])
    write_run(runs / "kd", "kd", "resnet8", "resnet20", 70.0, config=[])
    write_run(runs / "kd_exact", "kd", "resnet8", "resnet20", 72.0, seed=1,
              config=[f"teacher_cache={tmp_path / 'c32'}", "teacher_cache_dtype=float32"])
    write_run(runs / "kd_half", "kd", "resnet8", "resnet20", 74.0, seed=2,
              config=[f"teacher_cache={tmp_path / 'c16'}", "teacher_cache_dtype=float16"])
    write_run(runs / "kd_top", "kd", "resnet8", "resnet20", 75.0, seed=2,
              config=[f"teacher_cache={tmp_path / 'top'}", "teacher_cache_topk=10"])
    write_run(runs / "ofd", "ofd", "resnet8", "resnet20", 73.0, config=["teacher_cache_dtype=float32"])
    rows = build_report([str(runs)], tmp_path / "out")["markdown"].split("### ")[1].splitlines()[4:]
    assert rows[1:6] == ["| student (vanilla) | 60.00 (1) |  |",
                         "| kd (teacher_outputs=exact) | 71.00 ± 1.41 (2) |  |",
                         "| kd (teacher_outputs=float16 cache) | 74.00 (1) |  |",
                         "| kd (teacher_outputs=float16 top-10 cache) | 75.00 (1) |  |",
                         "| ofd | 73.00 (1) ↑ | +18.18% |"]  # (73 - 71) / (71 - 60): against the exact KD


def test_two_runs_of_one_configuration_and_seed_are_refused(tmp_path):
    write_run(tmp_path / "a" / "kd", "kd", "resnet8", "resnet20", 70.0, config=["epochs=2"])
    write_run(tmp_path / "b" / "kd", "kd", "resnet8", "resnet20", 71.0, config=["epochs=2"])
    with pytest.raises(KdistillError, match="have the same configuration and seed 0: give only one"):
        build_report([str(tmp_path)], tmp_path / "out")


def test_a_folder_holding_runs_is_no_run_whatever_its_top_holds(two_pair_runs, tmp_path):
    """The experiment script wrote its combined results.json at the top of its runs (once)."""
    (two_pair_runs / "results.json").write_text(json.dumps({"teacher": {}, "runs": []}))
    report = build_report([str(two_pair_runs)], tmp_path / "out")
    assert len(report["runs"]) == 11 and str(two_pair_runs) not in report["runs"]


def test_a_baseline_of_another_recipe_is_labelled_and_compares_nothing(tmp_path):
    """The demo's runs (resnet14 -> resnet8, steps_per_epoch=10) beside a user's (resnet20 -> resnet8
    and again resnet14 -> resnet8, steps_per_epoch=8, no vanilla run): the demo's vanilla student is
    no baseline of the user's runs, so no improvement of theirs is computed from it."""
    runs = tmp_path / "runs"
    common = [*demo.COMMON, f"epochs={demo.STUDENT_EPOCHS}"]
    write_run(runs / "demo" / "teacher", "vanilla", demo.TEACHER, None, 80.0,
              config=[*demo.COMMON, f"epochs={demo.TEACHER_EPOCHS}", "steps_per_epoch=10"])
    for method, top1 in (("vanilla", 60.0), ("kd", 62.0), ("dcd+kd", 64.0)):
        write_run(runs / "demo" / method, method, demo.STUDENT, None if method == "vanilla" else demo.TEACHER, top1,
                  config=[*common, "steps_per_epoch=10"])
    for teacher in ("resnet20", demo.TEACHER):
        for method, top1 in (("kd", 70.0), ("dcd", 75.0)):
            write_run(runs / "mine" / teacher / method, method, demo.STUDENT, teacher, top1,
                      config=[*common, "steps_per_epoch=8"])
    result = run_kdistill("report", str(runs), "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    rows = result.stdout.split("### ")[1].split("\n\n")[1].splitlines()
    assert rows == [
        "|  | resnet14 → resnet8 | resnet20 → resnet8 | rel. improvement over KD |",
        "|---|---|---|---|",
        "| teacher | 80.00 (1) | - |  |",
        "| student (vanilla) | 60.00 (1) | - |  |",  # the demo's baseline of the demo's runs
        "| student (vanilla) (steps_per_epoch=10) | - | 60.00 (1) |  |",  # ... labelled under the user's pair
        "| kd | - | 70.00 (1) |  |",  # a row's label says what sets it apart within a column
        "| kd (steps_per_epoch=10) | 62.00 (1) | - |  |",
        "| kd (steps_per_epoch=8) | 70.00 (1) | - |  |",
        "| dcd | 75.00 (1) ↑ | 75.00 (1) ↑ |  |",  # above the user's KD; no vanilla of its recipe
        "| dcd+kd | 64.00 (1) ↑ | - | +100.00% |",  # the demo's own: (64 - 62) / (62 - 60)
    ]


def test_the_report_says_which_runs_read_which_teacher_cache(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "vanilla", "vanilla", "resnet8x4", None, 72.5, config=[])
    write_run(runs / "kd", "kd", "resnet8x4", "resnet32x4", 73.0, config=[])
    write_run(runs / "kd_exact", "kd", "resnet8x4", "resnet32x4", 73.1, seed=1,
              config=[f"teacher_cache={tmp_path / 'c32'}", "teacher_cache_dtype=float32"])
    write_run(runs / "kd_half", "kd", "resnet8x4", "resnet32x4", 73.2, seed=2,
              config=[f"teacher_cache={tmp_path / 'c16'}", "teacher_cache_dtype=float16"])
    report = build_report([str(runs)], tmp_path / "out")
    note = ("teacher outputs: read from a float16 teacher cache (rounded) in 1 run(s): kd_half; "
            "read from a float32 teacher cache (exact) in 1 run(s); computed by the teacher in 1 run(s)")
    assert note in report["markdown"] and note in (tmp_path / "out/table.md").read_text()
    assert report["teacher_outputs"] == {str(runs / "kd"): "the teacher", str(runs / "kd_exact"):
                                         "a float32 teacher cache", str(runs / "kd_half"): "a float16 teacher cache",
                                         str(runs / "vanilla"): None}
