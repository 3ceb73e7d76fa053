"""`kdistill demo`: a teacher, then vanilla, KD and DCD+KD students on the embedded data, offline."""

import json
import shutil
from pathlib import Path

from kdistill.config.loading import load_config
from kdistill.engine import train_run
from kdistill.files import atomic_write_text
from kdistill.methods import method_class
from kdistill.run_folder import RunFolder, RunResults

TEACHER = "resnet14"
STUDENT = "resnet8"
# Short cosine runs keep the whole demo under five minutes on two CPU cores.
COMMON = ["data.name=embedded", "schedule.name=cosine", "optim.lr=0.05", "data.batch_size=64", "seed=0"]
TEACHER_EPOCHS = 3
STUDENT_EPOCHS = 2
STUDENT_METHODS = ("vanilla", "kd", "dcd+kd")
# The whole demo at full length (3 + 3 x 2 epochs of 156 steps) took about five minutes on two CPU
# cores: the rate its announced time is estimated from.
CPU_SECONDS_PER_STEP = 5 * 60 / (9 * 156)
SHORT_STEPS = 20  # the steps_per_epoch= the announcement suggests
EMBEDDED_TRAIN_SIZE = 10000  # training images of the embedded data set


def training_steps(epochs_by_run: list[int], overrides: list[str]) -> int:
    """Optimizer steps of the demo's runs (their epochs, with `overrides` applied to every run)."""
    total = 0
    for epochs in epochs_by_run:
        cfg = load_config(None, [f"epochs={epochs}", *COMMON, *overrides])
        batches = EMBEDDED_TRAIN_SIZE // cfg.data.batch_size
        total += cfg.epochs * min(batches, cfg.steps_per_epoch or batches)
    return total


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} minutes" if seconds >= 120 else f"{max(seconds, 10):.0f} s"


def announce(reuse_teacher: bool, overrides: list[str]) -> str:
    """What the demo trains, how long that takes on a CPU, and how to shorten it."""
    epochs = ([] if reuse_teacher else [TEACHER_EPOCHS]) + [STUDENT_EPOCHS] * len(STUDENT_METHODS)
    steps = training_steps(epochs, overrides)
    teacher = "reusing its teacher" if reuse_teacher else f"a {TEACHER} teacher ({TEACHER_EPOCHS} epochs)"
    line = (f"kdistill demo: {teacher}, then {', '.join(STUDENT_METHODS)} {STUDENT} students ({STUDENT_EPOCHS} "
            f"epochs each) on the embedded data: {steps} training steps, about "
            f"{_duration(steps * CPU_SECONDS_PER_STEP)} on two CPU cores (far less on a GPU)")
    short = training_steps(epochs, [*overrides, f"steps_per_epoch={SHORT_STEPS}"])
    if short < steps:
        line += (f"; steps_per_epoch={SHORT_STEPS} shortens it to {short} steps, about "
                 f"{_duration(short * CPU_SECONDS_PER_STEP)} (a rougher table)")
    return line


def run_demo(out: Path, overrides: list[str] = ()) -> dict[str, RunResults]:
    """Train (or reuse) the teacher, then the students; `overrides` apply to every run."""
    common = COMMON + list(overrides)
    teacher_dir = out / "teacher"
    reused = RunFolder(teacher_dir).is_finished()
    print(announce(reused, list(overrides)), flush=True)
    if reused:
        teacher = RunFolder(teacher_dir).read_results()
        print(f"reusing the demo teacher in {teacher_dir}")
    else:
        shutil.rmtree(teacher_dir, ignore_errors=True)  # an unfinished demo teacher is started over
        teacher = train_run(load_config(None, [f"student={TEACHER}", f"epochs={TEACHER_EPOCHS}", *common,
                                               f"out={teacher_dir}"]))
    rows = {"teacher": teacher}
    for method in STUDENT_METHODS:
        student_dir = out / method
        shutil.rmtree(student_dir, ignore_errors=True)  # the demo's students are retrained each call
        run_overrides = [f"student={STUDENT}", f"epochs={STUDENT_EPOCHS}", f"method.name={method}", *common,
                         f"out={student_dir}"]
        if method_class(method).needs_teacher:
            run_overrides += [f"teacher={TEACHER}", f"teacher_checkpoint={teacher_dir}"]
        rows[method] = train_run(load_config(None, run_overrides))
    table = format_table(rows, reused_teacher=reused)
    print(table)
    atomic_write_text(out / "table.md", table + "\n")
    rows_json = [{"run": run, **results.to_dict(), **({"reused": True} if run == "teacher" and reused else {})}
                 for run, results in rows.items()]
    atomic_write_text(out / "table.json", json.dumps(rows_json, indent=2) + "\n")
    print(f"-> {out / 'table.md'} and {out / 'table.json'}; the runs are in {', '.join(rows)} under {out}")
    return rows


def format_table(rows: dict[str, RunResults], reused_teacher: bool = False) -> str:
    lines = ["| run | model | method | top-1 (%) | best top-1 (%) | train time (s) |",
             "|---|---|---|---|---|---|"]
    for run, results in rows.items():
        time_cell = "reused" if run == "teacher" and reused_teacher else f"{results.train_time_s:.0f}"
        lines.append(f"| {run} | {results.student} | {results.method} | {results.top1_last:.2f} | "
                     f"{results.top1_best:.2f} | {time_cell} |")
    return "\n".join(lines)
