"""`kdistill report RUNS...`: the tables (Markdown, CSV, JSON) and every run's training curves."""

import json
import os
from pathlib import Path
from typing import Any

from kdistill.config import CacheDtype
from kdistill.errors import KdistillError
from kdistill.files import atomic_write_text
from kdistill.report.curves import plot_training_curves
from kdistill.report.published import format_published
from kdistill.report.table import build_tables, find_runs, format_markdown, load_result, table_json, write_csv
from kdistill.run_folder import RunFolder


def curve_names(runs: list[Path]) -> list[str]:
    """A file name per run: its path below the runs' common folder (kd/seed1 -> kd_seed1)."""
    resolved = [run.resolve() for run in runs]
    common = Path(os.path.commonpath(resolved)) if len(resolved) > 1 else resolved[0].parent
    return ["_".join(run.relative_to(common).parts) or run.name for run in resolved]


def teacher_outputs(run: Path) -> str | None:
    """Where a run's teacher outputs came from, from its saved configuration: 'the teacher', or
    'a <dtype> teacher cache'; None for a run without a teacher (or without a config.yaml)."""
    folder = RunFolder(run)
    config = folder.read_config() if folder.is_run() else {}
    if not config.get("teacher"):
        return None
    return f"a {config.get('teacher_cache_dtype')} teacher cache" if config.get("teacher_cache") else "the teacher"


def teacher_outputs_note(sources: dict[str, str | None]) -> str:
    """One line on where the runs' teacher outputs came from; the runs that read a rounded
    (float16/bfloat16) cache are named: they are not bit-identical to the same run computing them."""
    by_source: dict[str, list[str]] = {}
    for name, source in sources.items():
        if source is not None:
            by_source.setdefault(source, []).append(name)
    parts = []
    for source, names in sorted(by_source.items()):
        if source == "the teacher":
            parts.append(f"computed by the teacher in {len(names)} run(s)")
        elif source == f"a {CacheDtype.float32} teacher cache":
            parts.append(f"read from {source} (exact) in {len(names)} run(s)")
        else:
            parts.append(f"read from {source} (rounded) in {len(names)} run(s): {', '.join(names)}")
    return f"teacher outputs: {'; '.join(parts)}" if parts else ""


def build_report(paths: list[str], out: Path, published: bool = False) -> dict[str, Any]:
    """Write table.md, table.csv, report.json and curves/<run>.png under `out`; `published`: table.md
    also sets each measured mean beside the value its paper published (`report.published`)."""
    if out.exists() and not out.is_dir():
        raise KdistillError(f"--out {out} is a file: give a folder for table.md, table.csv, report.json and curves/")
    runs = find_runs(paths)
    tables = build_tables([load_result(run) for run in runs])
    if not tables:
        raise KdistillError("no distillation run among the runs given (only vanilla ones): "
                            "the table's columns are teacher -> student pairs")
    markdown = format_markdown(tables)
    if published:
        markdown += "\n" + format_published(tables)
    sources = {name: teacher_outputs(run) for run, name in zip(runs, curve_names(runs))}
    note = teacher_outputs_note(sources)
    if note:
        markdown += "\n" + note + "\n"
    atomic_write_text(out / "table.md", markdown)
    write_csv(tables, out / "table.csv")
    curves = []
    for run, name in zip(runs, curve_names(runs)):
        if RunFolder(run).metrics_path.is_file():  # hand-made result folders may have no history
            png = out / "curves" / f"{name}.png"
            plot_training_curves(run, png)
            curves.append(str(png))
    report = {"runs": [str(run) for run in runs], "tables": [table_json(table) for table in tables],
              "teacher_outputs": {str(run): source for run, source in zip(runs, sources.values())},
              "curves": curves, "files": [str(out / name) for name in ("table.md", "table.csv", "report.json")]}
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return {**report, "markdown": markdown}
