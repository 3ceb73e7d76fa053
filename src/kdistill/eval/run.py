"""`kdistill eval`: accuracy of a run folder's or a weight file's model on a data set's test split."""

from typing import Any

from kdistill.accuracy import evaluate
from kdistill.eval.common import load_evaluation, resolve_target, write_report


def evaluate_target(target: str, overrides: list[str], which: str = "last") -> dict[str, Any]:
    """Evaluate a run folder (its config names model and data) or a .pth file (`student=`, `data.*` given)."""
    resolved = resolve_target(target, overrides, which)
    evaluation = load_evaluation(resolved, teacher="none")
    student = evaluation.models["student"]
    report = {"model": student.name, "dataset": resolved.cfg.data.name, "split": "test", "weights": str(resolved.path),
              **evaluate(student.model, evaluation.loaders.test)}
    return write_report(report, resolved.output_path("eval", ".json"))


def format_eval(report: dict[str, Any]) -> str:
    return (f"{report['model']} on {report['dataset']} ({report['split']}): top-1 {report['top1']:.2f}, "
            f"top-5 {report['top5']:.2f}")
