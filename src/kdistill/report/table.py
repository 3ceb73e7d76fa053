"""The paper-style table: rows = methods, columns = teacher -> student pairs, the teacher and the
vanilla student on top, mean +- std over seeds, an arrow against KD, and the relative improvement
over KD (the ICD paper's footnote): mean over pairs of (acc - acc_KD) / (acc_KD - acc_vanilla)."""

import csv
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdistill.errors import KdistillError
from kdistill.run_folder import RESULTS_FILE, RunFolder

VARIANTS = {"last": "top1_last", "best": "top1_best"}  # variant -> key in results.json
VARIANT_TITLES = {"last": "last epoch", "best": "best epoch"}
TEACHER_ROW, STUDENT_ROW, REFERENCE = "teacher", "student", "kd"
VANILLA = "vanilla"

Pair = tuple[str, str]  # (teacher, student)


@dataclass
class RunResult:
    path: Path
    method: str
    student: str
    teacher: str | None
    dataset: str
    seed: int
    top1: dict[str, float]  # variant -> top-1 (%)


def load_result(run: Path) -> RunResult:
    path = RunFolder(run).results_path
    try:
        results = json.loads(path.read_text())
        return RunResult(run, results["method"], results["student"], results.get("teacher"), results["dataset"],
                         results.get("seed", 0), {variant: float(results[key]) for variant, key in VARIANTS.items()})
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise KdistillError(f"{path} is not a kdistill results file ({type(error).__name__}: {error}); "
                            "give folders of finished runs") from None


def find_runs(paths: list[str]) -> list[Path]:
    """Run folders (with a results.json): each path is one, or a folder searched for them."""
    runs: list[Path] = []
    for given in paths:
        path = Path(given)
        if RunFolder(path).is_finished():
            found = [path]
        elif path.is_dir():
            found = [folder.path for folder in RunFolder.find([path])]
        else:
            raise KdistillError(f"'{given}' is not a folder: give run folders or folders that hold them")
        if not found:
            raise KdistillError(f"no {RESULTS_FILE} under '{given}': give folders of finished runs")
        runs += [run for run in found if run not in runs]
    return runs


@dataclass
class Cell:
    """One method on one pair: the top-1 of each seed."""

    values: list[float] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation over seeds (0 for a single seed)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0


@dataclass
class Table:
    dataset: str
    variant: str
    pairs: list[Pair]
    rows: dict[str, dict[Pair, Cell]]  # teacher, student, kd, then the other methods
    relative: dict[str, float | None]  # method -> relative improvement over KD (a fraction)


def relative_improvement(method: list[float], kd: list[float], vanilla: list[float]) -> float | None:
    """Mean over pairs of (acc_method - acc_KD) / (acc_KD - acc_vanilla), from per-pair accuracies;
    pairs where KD equals vanilla (the ratio is undefined) are left out; None if none is left."""
    ratios = [(m - k) / (k - v) for m, k, v in zip(method, kd, vanilla, strict=True) if k != v]
    return statistics.fmean(ratios) if ratios else None


def build_tables(results: list[RunResult]) -> list[Table]:
    """One table per data set and variant; its columns are the pairs of the distillation runs."""
    tables = []
    for dataset in dict.fromkeys(result.dataset for result in results):
        runs = [result for result in results if result.dataset == dataset]
        distilled = [run for run in runs if run.method != VANILLA]
        pairs = list(dict.fromkeys((run.teacher, run.student) for run in distilled))
        if not pairs:
            continue
        methods = sorted({run.method for run in distilled}, key=lambda name: (name != REFERENCE, name))
        for variant in VARIANTS:
            rows: dict[str, dict[Pair, Cell]] = {name: {} for name in (TEACHER_ROW, STUDENT_ROW, *methods)}
            for pair in pairs:
                for run in runs:
                    if run.method == VANILLA:
                        # A vanilla run of a model is the teacher row of pairs it teaches and the
                        # student row of pairs it is the student of.
                        names = [row for row, model in ((TEACHER_ROW, pair[0]), (STUDENT_ROW, pair[1]))
                                 if run.student == model]
                    else:
                        names = [run.method] if (run.teacher, run.student) == pair else []
                    for name in names:
                        rows[name].setdefault(pair, Cell()).values.append(run.top1[variant])
            tables.append(Table(dataset, variant, pairs, rows, _relative_improvements(rows, pairs, methods)))
    return tables


def _relative_improvements(rows: dict[str, dict[Pair, Cell]], pairs: list[Pair],
                           methods: list[str]) -> dict[str, float | None]:
    improvements = {}
    for method in methods:
        if method == REFERENCE:
            continue
        usable = [pair for pair in pairs if all(pair in rows.get(row, {}) for row in (method, REFERENCE, STUDENT_ROW))]
        improvements[method] = relative_improvement(*[[rows[row][pair].mean for pair in usable]
                                                      for row in (method, REFERENCE, STUDENT_ROW)])
    return improvements


def _arrow(table: Table, row: str, pair: Pair) -> str:
    """↑ / ↓ where a method's mean is above / below KD's on the pair, as the tables mark them."""
    kd = table.rows.get(REFERENCE, {}).get(pair)
    if row in (TEACHER_ROW, STUDENT_ROW, REFERENCE) or kd is None:
        return ""
    mean = table.rows[row][pair].mean
    return " ↑" if mean > kd.mean else " ↓" if mean < kd.mean else ""


def _cell_text(table: Table, row: str, pair: Pair) -> str:
    cell = table.rows[row].get(pair)
    if cell is None:
        return "-"
    spread = f" ± {cell.std:.2f}" if len(cell.values) > 1 else ""
    return f"{cell.mean:.2f}{spread}{_arrow(table, row, pair)}"


def _relative_text(table: Table, row: str) -> str:
    value = table.relative.get(row)
    return "" if value is None else f"{100 * value:+.2f}%"


def _row_title(row: str) -> str:
    return {TEACHER_ROW: "teacher", STUDENT_ROW: "student (vanilla)"}.get(row, row)


def format_markdown(tables: list[Table]) -> str:
    sections = []
    for table in tables:
        header = ["", *[f"{teacher} → {student}" for teacher, student in table.pairs], "rel. improvement over KD"]
        lines = [f"### {table.dataset}: top-1 (%) at the {VARIANT_TITLES[table.variant]}", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in table.rows:
            cells = [_row_title(row), *[_cell_text(table, row, pair) for pair in table.pairs], _relative_text(table, row)]
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    note = ("mean ± sample std over seeds; ↑/↓: above/below KD on that pair; relative improvement over KD = mean "
            "over pairs of (acc − acc_KD) / (acc_KD − acc_vanilla student)")
    return "\n\n".join(sections) + "\n\n" + note + "\n"


def write_csv(tables: list[Table], path: Path) -> None:
    """The tables in one CSV: a row per (data set, variant, method), mean/std/runs per pair; one
    header per data set (one data set gives a plain rectangular table)."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        header_pairs = None
        for table in tables:
            if table.pairs != header_pairs:  # a header per data set: its columns are its pairs
                header_pairs = table.pairs
                pair_names = [f"{teacher} -> {student}" for teacher, student in table.pairs]
                writer.writerow(["dataset", "variant", "row", *[f"{name} {part}" for name in pair_names
                                                                for part in ("mean", "std", "runs")],
                                 "relative improvement over KD (%)"])
            for row, cells in table.rows.items():
                values = []
                for pair in table.pairs:
                    cell = cells.get(pair)
                    values += [f"{cell.mean:.4f}", f"{cell.std:.4f}", len(cell.values)] if cell else ["", "", 0]
                relative = table.relative.get(row)
                writer.writerow([table.dataset, table.variant, row, *values,
                                 "" if relative is None else f"{100 * relative:.4f}"])


def table_json(table: Table) -> dict[str, Any]:
    return {"dataset": table.dataset, "variant": table.variant,
            "pairs": [{"teacher": teacher, "student": student} for teacher, student in table.pairs],
            "rows": {row: {f"{teacher} -> {student}": {"mean": cell.mean, "std": cell.std, "values": cell.values}
                           for (teacher, student), cell in cells.items()} for row, cells in table.rows.items()},
            "relative_improvement_over_kd": table.relative}
