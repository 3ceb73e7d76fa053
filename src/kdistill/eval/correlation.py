"""`kdistill correlate`: the ICD paper's Figure 1 — how far the student's inter-class correlations
are from the teacher's: the correlation matrices of the two models' class logits over the test
set, the mean absolute difference, and a heat map of the difference per run on one colour scale."""

import math
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import Tensor

from kdistill.errors import KdistillError
from kdistill.eval.common import collect_outputs, load_evaluation, resolve_target, write_report
from kdistill.files import atomic_write

PANEL_INCHES = 4.0
TITLE_CHARACTERS = 44  # a title line's width within a panel at font size 9; longer lines are wrapped


def class_correlation(logits: Tensor) -> Tensor:
    """[C, C] Pearson correlations between the classes' logits over the samples of [N, C] logits."""
    centred = logits.double() - logits.double().mean(0)
    unit = centred / centred.norm(dim=0).clamp_min(1e-12)  # a constant logit correlates 0 with all
    return unit.T @ unit


def correlation_difference(teacher_logits: Tensor, student_logits: Tensor) -> Tensor:
    """|corr(teacher) - corr(student)|, per pair of classes."""
    return (class_correlation(teacher_logits) - class_correlation(student_logits)).abs()


def panel_title(title: str) -> str:
    """Each line of `title` wrapped to the panel's width (library model names are long)."""
    return "\n".join(textwrap.fill(line, TITLE_CHARACTERS, break_long_words=True) for line in title.splitlines())


def plot_correlation_differences(panels: list[tuple[str, Tensor]], path: Path) -> Figure:
    """One heat map per (title, difference matrix), all on the colour scale of the largest value;
    returns the figure written to `path`."""
    top = max(float(matrix.max()) for _, matrix in panels) or 1.0  # all zero: any scale shows it
    columns = min(len(panels), 4)
    rows = math.ceil(len(panels) / columns)
    # Each row also holds its panels' titles (up to four lines) and axis labels above the square map.
    figure = Figure(figsize=(PANEL_INCHES * columns + 1, (PANEL_INCHES + 0.8) * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for axis, (title, matrix) in zip(axes, panels):
        image = axis.imshow(matrix.numpy(), cmap="viridis", vmin=0.0, vmax=top, interpolation="nearest")
        axis.set_title(panel_title(title), fontsize=9)
        axis.set_xlabel("class")
        axis.set_ylabel("class")
    for axis in axes[len(panels):]:
        axis.set_visible(False)
    figure.colorbar(image, ax=list(axes[: len(panels)]), label="|corr(teacher) - corr(student)|")
    # A tight box: no title cut at the figure's edges.
    atomic_write(path, lambda file: figure.savefig(file, format="png", dpi=100, bbox_inches="tight", pad_inches=0.15))
    return figure


def run_correlate(targets: list[str], overrides: list[str], which: str = "last",
                  out: str | None = None) -> dict[str, Any]:
    """The correlation difference of every run (each needs a teacher); one PNG with a panel per run.

    The PNG goes to `out`, or beside the single target, or to ./correlation.png for several."""
    if not targets:
        raise KdistillError("no run to correlate: give one or more run folders or .pth files")
    resolved_targets = [resolve_target(target, overrides, which) for target in targets]
    if out is not None:
        png = Path(out)
    elif len(resolved_targets) == 1:
        png = resolved_targets[0].output_path("correlation", ".png")
    else:
        png = Path("correlation.png")
    runs, panels = [], []
    for resolved in resolved_targets:
        evaluation = load_evaluation(resolved, teacher="required")
        test = evaluation.loaders.test
        outputs = collect_outputs(evaluation.models, test, len(test), f"{resolved.path.name} logits",
                                  evaluation.cfg.progress, evaluation.autocast_dtype)
        difference = correlation_difference(outputs["teacher"].logits, outputs["student"].logits)
        cfg = resolved.cfg
        run = {"weights": str(resolved.path), "method": cfg.method.name, "teacher": cfg.teacher,
               "student": cfg.student, "dataset": cfg.data.name, "mean_abs_difference": float(difference.mean())}
        runs.append(run)
        panels.append(((f"{run['method']}: {run['teacher']} -> {run['student']}\n"
                       f"mean |difference| {run['mean_abs_difference']:.4f}"), difference))
    png.parent.mkdir(parents=True, exist_ok=True)
    plot_correlation_differences(panels, png)
    return write_report({"runs": runs, "figure": str(png)}, png.with_suffix(".json"))


def format_correlate(report: dict[str, Any]) -> str:
    lines = ["mean |corr(teacher) - corr(student)| of the class logits over the test set:"]
    for run in report["runs"]:
        lines.append(f"  {run['method']:<12} {run['teacher']} -> {run['student']}: {run['mean_abs_difference']:.4f}"
                     f"  ({run['weights']})")
    lines.append(f"heat map: {report['figure']}")
    return "\n".join(lines)
