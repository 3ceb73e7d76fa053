"""The paper-style table: rows = methods, columns = teacher -> student pairs, the teacher and the
vanilla student on top, mean +- std over seeds with the number of runs, an arrow against KD, and
the relative improvement over KD (the ICD paper's footnote): mean over pairs of
(acc - acc_KD) / (acc_KD - acc_vanilla).

A cell pools the runs whose whole configuration is the same except the seed (and the keys that
do not change what is trained: where the run and its data live, the device, progress output).
Runs of one method and pair that differ in anything else (epochs, an option) get separate rows,
labelled by what differs; two runs of the same configuration and seed are refused.

A baseline is a baseline only for runs of its recipe: the vanilla student row of a pair holds the
runs whose configuration outside the method and the teacher equals that of the pair's distillation
runs, and a vanilla run of another recipe gets a row labelled by what differs. The arrow and the
relative improvement of a cell compare it only with the KD and vanilla cells of its own recipe.
"""

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdistill.config import EXECUTION_KEYS, CacheDtype, flatten
from kdistill.errors import KdistillError, missing_path_hint
from kdistill.files import atomic_write_text
from kdistill.run_folder import RESULTS_FILE, RunFolder, RunResults

VARIANT_TITLES = {"last": "last epoch", "best": "best epoch"}  # the top-1 of results.json: top1_last, top1_best
TEACHER_ROW, STUDENT_ROW, REFERENCE = "teacher", "student", "kd"

Pair = tuple[str, str]  # (teacher, student)
Setting = tuple[tuple[str, str], ...]  # sorted (dotted config key, value) pairs

# Config keys that do not change what a run trains: not part of the setting its cells pool by.
UNPOOLED_KEYS = EXECUTION_KEYS | {"seed"}
# How a teacher cache stores the teacher's outputs (dtype, top-K, fill batch). A run reading an
# exact cache (float32, every logit) computes what a run without one computes (the grid caches so);
# only a rounded or top-K cache makes a different run, set apart under TEACHER_OUTPUTS_KEY.
CACHE_STORAGE_PREFIX = "teacher_cache_"
TEACHER_OUTPUTS_KEY = "teacher_outputs"
# What a hand-made run folder without config.yaml is identified by, from its results.json.
RESULT_SETTING_KEYS = ("method", "student", "teacher", "dataset", "epochs")


def is_method_key(key: str) -> bool:
    """`method.*` (and a hand-made folder's `method`): how the student is distilled."""
    return key == "method" or key.startswith("method.")


def without_method(setting: Setting) -> Setting:
    """What a method's cell and the KD cell it is compared with share: all but the method."""
    return tuple(item for item in setting if not is_method_key(item[0]))


def student_recipe(setting: Setting) -> Setting:
    """What a distillation run and its vanilla baseline share: all but the method and the teacher
    (`teacher`, `teacher_checkpoint`, `teacher_options`, ...)."""
    return tuple(item for item in without_method(setting) if not item[0].startswith("teacher"))


@dataclass
class RunResult:
    path: Path
    method: str
    student: str
    teacher: str | None
    dataset: str
    seed: int
    top1: dict[str, float]  # variant -> top-1 (%)
    setting: Setting = ()  # the configuration without the seed: runs of one setting pool over seeds


def run_setting(run: RunFolder, results: RunResults) -> Setting:
    """The run's configuration without the seed and the keys that change nothing it trains; a
    hand-made folder without config.yaml is identified by its results' fields."""
    if run.is_run():
        flat = {key: value if isinstance(value, str) else json.dumps(value)
                for key, value in flatten(run.read_config()).items()}
    else:
        flat = {key: json.dumps(getattr(results, key)) for key in RESULT_SETTING_KEYS}
    flat[TEACHER_OUTPUTS_KEY] = _teacher_outputs(flat)
    return tuple(sorted((key, value) for key, value in flat.items()
                        if key not in UNPOOLED_KEYS and not key.startswith(CACHE_STORAGE_PREFIX)))


def _teacher_outputs(flat: dict[str, str]) -> str:
    """'exact' unless the run reads a rounded or top-K teacher cache, e.g. 'float16 top-10 cache'."""
    dtype, topk = flat.get(f"{CACHE_STORAGE_PREFIX}dtype"), flat.get(f"{CACHE_STORAGE_PREFIX}topk", "null")
    if flat.get("teacher_cache", "null") == "null" or (dtype == CacheDtype.float32 and topk == "null"):
        return "exact"
    return " ".join([dtype, *([f"top-{topk}"] if topk != "null" else []), "cache"])


def load_result(run: Path) -> RunResult:
    folder = RunFolder(run)
    try:
        results = folder.read_results()
    except KdistillError as error:
        raise KdistillError(f"{error}; give folders of finished runs") from None
    return RunResult(run, results.method, results.student, results.teacher, results.dataset, results.seed,
                     {"last": results.top1_last, "best": results.top1_best}, run_setting(folder, results))


def find_runs(paths: list[str]) -> list[Path]:
    """Run folders (with a results.json): each path is one, or a folder searched for them."""
    runs: list[Path] = []
    for given in paths:
        if not Path(given).is_dir():
            raise KdistillError(f"'{given}' is not a folder{missing_path_hint(given)}: give run folders or folders "
                                "that hold them")
        found = [folder.path for folder in RunFolder.find([given])]
        if not found:
            raise KdistillError(f"no {RESULTS_FILE} under '{given}': give folders of finished runs")
        runs += [run for run in found if run not in runs]
    return runs


@dataclass
class Cell:
    """One setting of a method on one pair: the top-1 of each seed."""

    values: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)

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
    rows: dict[str, dict[Pair, Cell]]  # by label: teacher, student, kd, then the other methods
    bases: dict[str, str]  # row label -> its row kind (teacher, student or the method)
    relative: dict[str, float | None]  # row label -> relative improvement over KD (a fraction)
    settings: dict[str, dict[Pair, Setting]] = field(default_factory=dict)  # the setting of each cell

    def matching(self, kind: str, row: str, pair: Pair) -> Cell | None:
        """The cell of row kind `kind` (kd or the vanilla student) on `pair` of the recipe of `row`'s
        cell there: the same configuration outside the method (and, for the student, the teacher)."""
        recipe = student_recipe if kind == STUDENT_ROW else without_method
        wanted = recipe(self.settings[row][pair])
        return next((self.rows[label][pair] for label, base in self.bases.items() if base == kind
                     and pair in self.rows[label] and recipe(self.settings[label][pair]) == wanted), None)


def relative_improvement(method: list[float], kd: list[float], vanilla: list[float]) -> float | None:
    """Mean over pairs of (acc_method - acc_KD) / (acc_KD - acc_vanilla), from per-pair accuracies;
    pairs where KD equals vanilla (the ratio is undefined) are left out; None if none is left."""
    ratios = [(m - k) / (k - v) for m, k, v in zip(method, kd, vanilla, strict=True) if k != v]
    return statistics.fmean(ratios) if ratios else None


def _cell_runs(runs: list[RunResult], pairs: list[Pair]) -> dict[tuple[str, Pair], list[RunResult]]:
    """The runs of each (row kind, pair). A vanilla run of a model is the teacher row of the pairs
    it teaches and the student row of the pairs it is the student of."""
    cells: dict[tuple[str, Pair], list[RunResult]] = {}
    for pair in pairs:
        for run in runs:
            if run.teacher is None:  # trained without a teacher: the vanilla model
                kinds = [row for row, model in ((TEACHER_ROW, pair[0]), (STUDENT_ROW, pair[1])) if run.student == model]
            else:
                kinds = [run.method] if (run.teacher, run.student) == pair else []
            for kind in kinds:
                cells.setdefault((kind, pair), []).append(run)
    return cells


def _by_setting(kind: str, runs: list[RunResult], recipes: set[Setting]) -> dict[str, list[RunResult]]:
    """One cell's runs by setting, under their row labels: the row kind alone when they share one
    setting, else followed by the keys that differ. A vanilla student is labelled unless its recipe
    is that of the pair's distillation runs (`recipes`), so a baseline of another recipe says what
    sets it apart. Two runs of one setting and seed are refused."""
    groups: dict[Setting, list[RunResult]] = {}
    for run in runs:
        group = groups.setdefault(run.setting, [])
        twin = next((other for other in group if other.seed == run.seed), None)
        if twin is not None:
            raise KdistillError(f"runs '{twin.path}' and '{run.path}' have the same configuration and seed {run.seed}: "
                                "give only one of them")
        group.append(run)
    baselines = recipes if kind == STUDENT_ROW else set()
    if len(groups) == 1 and (not baselines or student_recipe(next(iter(groups))) in baselines):
        return {kind: runs}
    settings = [dict(setting) for setting in groups]
    differing = _differing_keys(settings)
    for recipe in baselines:  # what sets a vanilla run's recipe apart from the distillation runs'
        differing |= _differing_keys([dict(student_recipe(tuple(setting.items()))) for setting in settings]
                                     + [dict(recipe)])
    labels = [", ".join(f"{key}={setting.get(key, '-')}" for key in sorted(differing)) for setting in settings]
    return {f"{kind} ({label})": group for label, group in zip(labels, groups.values())}


def _differing_keys(settings: list[dict[str, str]]) -> set[str]:
    return {key for setting in settings for key in setting if len({str(other.get(key)) for other in settings}) > 1}


def build_tables(results: list[RunResult]) -> list[Table]:
    """One table per data set and variant; its columns are the pairs of the distillation runs."""
    tables = []
    for dataset in dict.fromkeys(result.dataset for result in results):
        runs = [result for result in results if result.dataset == dataset]
        distilled = [run for run in runs if run.teacher is not None]
        pairs = list(dict.fromkeys((run.teacher, run.student) for run in distilled))
        if not pairs:
            continue
        kinds = [TEACHER_ROW, STUDENT_ROW,
                 *sorted({run.method for run in distilled}, key=lambda name: (name != REFERENCE, name))]
        labelled: dict[str, dict[Pair, list[RunResult]]] = {}
        bases = {TEACHER_ROW: TEACHER_ROW, STUDENT_ROW: STUDENT_ROW}
        recipes = {pair: {student_recipe(run.setting) for run in distilled if (run.teacher, run.student) == pair}
                   for pair in pairs}
        for (kind, pair), cell_runs in _cell_runs(runs, pairs).items():
            for label, group in _by_setting(kind, cell_runs, recipes[pair]).items():
                labelled.setdefault(label, {})[pair] = group
                bases[label] = kind
        order = sorted(bases, key=lambda label: (kinds.index(bases[label]), label != bases[label], label))
        # The teacher and student rows stay (as "-") when no run fills them; a split row replaces its plain one.
        order = [label for label in order if label in labelled or not any(
            other != label and bases[other] == label for other in labelled)]
        settings = {label: {pair: group[0].setting for pair, group in labelled.get(label, {}).items()}
                    for label in order}
        for variant in VARIANT_TITLES:
            rows = {label: {pair: Cell([run.top1[variant] for run in group], [run.seed for run in group])
                            for pair, group in labelled.get(label, {}).items()} for label in order}
            table = Table(dataset, variant, pairs, rows, {label: bases[label] for label in order}, {}, settings)
            table.relative = _relative_improvements(table)
            tables.append(table)
    return tables


def _is_method_row(table: Table, row: str) -> bool:
    return table.bases[row] not in (TEACHER_ROW, STUDENT_ROW, REFERENCE)


def _relative_improvements(table: Table) -> dict[str, float | None]:
    """Each method row's improvement over KD, over the pairs where KD and the vanilla student of
    its recipe were run."""
    improvements = {}
    for row in filter(lambda label: _is_method_row(table, label), table.rows):
        means = [(cell, table.matching(REFERENCE, row, pair), table.matching(STUDENT_ROW, row, pair))
                 for pair, cell in table.rows[row].items()]
        usable = [[cell.mean for cell in cells] for cells in means if None not in cells]
        improvements[row] = relative_improvement(*zip(*usable, strict=True)) if usable else None
    return improvements


def _arrow(table: Table, row: str, pair: Pair) -> str:
    """↑ / ↓ where a method's mean is above / below that of KD of its recipe on the pair, as the
    tables mark them."""
    kd = table.matching(REFERENCE, row, pair) if _is_method_row(table, row) else None
    if kd is None:
        return ""
    mean = table.rows[row][pair].mean
    return " ↑" if mean > kd.mean else " ↓" if mean < kd.mean else ""


def _cell_text(table: Table, row: str, pair: Pair) -> str:
    cell = table.rows[row].get(pair)
    if cell is None:
        return "-"
    spread = f" ± {cell.std:.2f}" if len(cell.values) > 1 else ""
    return f"{cell.mean:.2f}{spread} ({len(cell.values)}){_arrow(table, row, pair)}"


def _relative_text(table: Table, row: str) -> str:
    value = table.relative.get(row)
    return "" if value is None else f"{100 * value:+.2f}%"


def _row_title(table: Table, row: str) -> str:
    """The label, with the student row named as the vanilla student."""
    base = table.bases[row]
    return {STUDENT_ROW: "student (vanilla)"}.get(base, base) + row[len(base):]


def format_markdown(tables: list[Table]) -> str:
    sections = []
    for table in tables:
        header = ["", *[f"{teacher} → {student}" for teacher, student in table.pairs], "rel. improvement over KD"]
        lines = [f"### {table.dataset}: top-1 (%) at the {VARIANT_TITLES[table.variant]}", "",
                 "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in table.rows:
            cells = [_row_title(table, row), *[_cell_text(table, row, pair) for pair in table.pairs],
                     _relative_text(table, row)]
            lines.append("| " + " | ".join(cells) + " |")
        sections.append("\n".join(lines))
    note = ("mean ± sample std over seeds (n): n runs, one per seed, of one configuration; a row label in "
            "parentheses names what sets its runs apart from the row's other runs; ↑/↓: above/below KD on that pair; "
            "relative improvement over KD = mean over pairs of (acc − acc_KD) / (acc_KD − acc_vanilla student)")
    return "\n\n".join(sections) + "\n\n" + note + "\n"


def write_csv(tables: list[Table], path: Path) -> None:
    """The tables in one CSV: a row per (data set, variant, method), mean/std/runs per pair; one
    header per data set (one data set gives a plain rectangular table)."""
    with io.StringIO(newline="") as file:
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
        atomic_write_text(path, file.getvalue())


def table_json(table: Table) -> dict[str, Any]:
    return {"dataset": table.dataset, "variant": table.variant,
            "pairs": [{"teacher": teacher, "student": student} for teacher, student in table.pairs],
            "rows": {row: {f"{teacher} -> {student}": {"mean": cell.mean, "std": cell.std, "values": cell.values,
                                                           "seeds": cell.seeds}
                           for (teacher, student), cell in cells.items()} for row, cells in table.rows.items()},
            "relative_improvement_over_kd": table.relative}
