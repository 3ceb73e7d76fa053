"""A small real comparison of the methods on Fashion-MNIST, same budget for every student.

A teacher is trained once; then each method trains the same student for the same number of
epochs with each seed. The methods run with the spec's default options and table weights (not
tuned to this data). Writes every run folder, `comparison.json` (all runs) and `table.md`
(mean and standard deviation over seeds) under --out.

    PYTHONPATH=src python experiments/compare_fashion_mnist.py --out runs/compare_fmnist
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

from kdistill.cli import parse_with_overrides
from kdistill.config.loading import load_config
from kdistill.engine import train_run
from kdistill.methods import method_class
from kdistill.run_folder import RunFolder, RunResults

DEFAULT_METHODS = ["vanilla", "kd", "dcd", "dcd+kd", "crd", "crd+kd", "crld"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/compare_fmnist")
    parser.add_argument("--data", default="embedded", help="embedded (10k/2k subset) or fashion-mnist (full)")
    parser.add_argument("--teacher", default="resnet32")
    parser.add_argument("--student", default="resnet8")
    parser.add_argument("--teacher-epochs", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=DEFAULT_METHODS)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="applied to every run (e.g. device=cuda), anywhere on the line")
    return parse_with_overrides(parser, argv)


def finished_or_train(overrides: list[str], out: Path) -> RunResults:
    """Reuse a finished run folder, so an interrupted comparison continues where it stopped."""
    if RunFolder(out).is_finished():
        return RunFolder(out).read_results()
    return train_run(load_config(None, [*overrides, f"out={out}", "resume=true"]))


def main() -> None:
    args = parse_args()
    out = Path(args.out)
    # Cosine schedule: with a short budget the table's step decay at epochs 150/180/210 never fires.
    common = [f"data.name={args.data}", "schedule.name=cosine", "progress=false", *args.overrides]
    teacher_dir = out / "teacher"
    teacher = finished_or_train([*common, f"student={args.teacher}", f"epochs={args.teacher_epochs}", "seed=0"],
                                teacher_dir)
    runs = []
    for method in args.methods:
        for seed in args.seeds:
            overrides = [*common, f"student={args.student}", f"epochs={args.epochs}", f"seed={seed}",
                         f"method.name={method}"]
            if method_class(method).needs_teacher:
                overrides += [f"teacher={args.teacher}", f"teacher_checkpoint={teacher_dir}"]
            result = finished_or_train(overrides, out / method / f"seed{seed}")
            print(f"{method} seed {seed}: top-1 {result.top1_last:.2f}", flush=True)
            runs.append(result)
    # Not results.json: that name is a run folder's, and this folder is not a run.
    (out / "comparison.json").write_text(json.dumps({"teacher": teacher.to_dict(),
                                                     "runs": [run.to_dict() for run in runs]}, indent=2) + "\n")
    table = format_table(teacher, runs, args)
    (out / "table.md").write_text(table + "\n")
    print(table)


def format_table(teacher: RunResults, runs: list[RunResults], args: argparse.Namespace) -> str:
    lines = [f"{args.data}: teacher {args.teacher} ({args.teacher_epochs} epochs) top-1 {teacher.top1_last:.2f}; "
             f"student {args.student}, {args.epochs} epochs, seeds {args.seeds}", "",
             "| method | top-1 last (mean ± std) | top-1 best (mean ± std) | train time per run (s) |",
             "|---|---|---|---|"]
    for method in args.methods:
        rows = [run for run in runs if run.method == method]
        last = [run.top1_last for run in rows]
        best = [run.top1_best for run in rows]
        spread = lambda values: statistics.stdev(values) if len(values) > 1 else 0.0
        seconds = statistics.mean(run.train_time_s for run in rows)
        lines.append(f"| {method} | {statistics.mean(last):.2f} ± {spread(last):.2f} | "
                     f"{statistics.mean(best):.2f} ± {spread(best):.2f} | {seconds:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
