"""`kdistill report`: paper-style tables and training curves from run folders."""

from kdistill.report.build import build_report
from kdistill.report.curves import plot_training_curves
from kdistill.report.table import RunResult, build_tables, find_runs, format_markdown, load_result, relative_improvement

__all__ = ["RunResult", "build_report", "build_tables", "find_runs", "format_markdown", "load_result",
           "plot_training_curves", "relative_improvement"]
