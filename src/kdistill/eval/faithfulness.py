"""`kdistill faithfulness`: how closely a student follows its teacher (the theme of TinTeM,
"Faithful Label-free Knowledge Distillation"): prediction agreement, KL divergence, CKA of the
penultimate features, and agreement under corruption."""

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.eval.common import collect_outputs, load_evaluation, resolve_target, top1, write_report
from kdistill.eval.robustness import CORRUPTIONS, SEVERITIES, check_corruptions, outputs_under_corruptions


def top1_agreement(first_logits: Tensor, second_logits: Tensor) -> float:
    """Fraction of samples on which both models predict the same class."""
    return float((first_logits.argmax(1) == second_logits.argmax(1)).double().mean())


def mean_kl(teacher_logits: Tensor, student_logits: Tensor) -> float:
    """Mean over samples of KL(softmax(teacher) || softmax(student)), in nats, at temperature 1."""
    teacher_log_probs = F.log_softmax(teacher_logits.double(), dim=1)
    student_log_probs = F.log_softmax(student_logits.double(), dim=1)
    return float(F.kl_div(student_log_probs, teacher_log_probs, log_target=True, reduction="batchmean"))


def linear_cka(first: Tensor, second: Tensor) -> float:
    """Linear CKA (Kornblith et al. 2019) of two feature sets [N, D1], [N, D2] of the same samples:
    ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on centred features. Computed in feature space, so
    the memory is D x D rather than N x N."""
    x = first.double() - first.double().mean(0)
    y = second.double() - second.double().mean(0)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    return float(cross / (torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)))


def run_faithfulness(target: str, overrides: list[str], which: str = "last",
                     corruptions: tuple[str, ...] = tuple(CORRUPTIONS),
                     severities: tuple[int, ...] = SEVERITIES) -> dict[str, Any]:
    """Student against teacher on the test split, clean and under each corruption."""
    names, severities = list(corruptions), list(severities)
    check_corruptions(names, severities)
    resolved = resolve_target(target, overrides, which)
    evaluation = load_evaluation(resolved, teacher="required")
    test = evaluation.loaders.test
    clean = collect_outputs(evaluation.models, test, len(test), "clean", evaluation.cfg.progress,
                            evaluation.autocast_dtype)
    student, teacher = clean["student"], clean["teacher"]
    corrupted: dict[str, dict[str, float]] = {}
    for name, severity, outputs in outputs_under_corruptions(evaluation, names, severities):
        corrupted.setdefault(name, {})[str(severity)] = top1_agreement(outputs["teacher"].logits,
                                                                      outputs["student"].logits)
    report = {
        "weights": str(resolved.path), "dataset": resolved.cfg.data.name,
        "models": {role: loaded.name for role, loaded in evaluation.models.items()},
        "top1": {"student": top1(student.logits, student.labels), "teacher": top1(teacher.logits, teacher.labels)},
        "agreement": top1_agreement(teacher.logits, student.logits),
        "kl_teacher_student": mean_kl(teacher.logits, student.logits),
        "cka_pooled": linear_cka(teacher.pooled, student.pooled),
        "severities": severities,
        "corruption_agreement": corrupted,
        "mean_corruption_agreement": float(np.mean([a for table in corrupted.values() for a in table.values()])),
    }
    return write_report(report, resolved.output_path("faithfulness", ".json"))


def format_faithfulness(report: dict[str, Any]) -> str:
    models = report["models"]
    lines = [f"student {models['student']} against teacher {models['teacher']} on {report['dataset']} test",
             f"top-1 (%): student {report['top1']['student']:.2f}, teacher {report['top1']['teacher']:.2f}",
             (f"top-1 agreement {report['agreement']:.4f}, KL(teacher || student) {report['kl_teacher_student']:.4f}, "
             f"linear CKA of pooled features {report['cka_pooled']:.4f}"),
             f"agreement under corruption (mean over severities {report['severities']}):"]
    for name, table in report["corruption_agreement"].items():
        lines.append(f"  {name:<16} {np.mean(list(table.values())):.4f}")
    lines.append(f"  {'mean':<16} {report['mean_corruption_agreement']:.4f}")
    return "\n".join(lines)
