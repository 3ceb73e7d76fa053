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


def run_demo(out: Path, overrides: list[str] = ()) -> dict[str, RunResults]:
    """Train (or reuse) the teacher, then the students; `overrides` apply to every run."""
    common = COMMON + list(overrides)
    teacher_dir = out / "teacher"
    reused = RunFolder(teacher_dir).is_finished()
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
