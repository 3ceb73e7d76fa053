"""`kdistill ood`: out-of-distribution detection, in-distribution (the run's data set) against an
OOD data set (`ood.*` keys), for the model and its teacher side by side.

Three scores, each higher for in-distribution samples: the maximum softmax probability, the
energy score (logsumexp of the logits, i.e. the negative free energy at temperature 1), and
TinTeM's 1-nearest-neighbour cosine similarity of the L2-normalised penultimate feature to the
in-distribution training features (`ood.bank_size=N`: a keyed subset of N of them). In-distribution
is the positive class of AUROC and of the false-positive rate at 95% true-positive rate (FPR95).
"""

import math
import sys
from typing import Any

import torch
from torch import Tensor

from kdistill.errors import KdistillError
from kdistill.eval.common import (
    Outputs,
    bank_batches,
    build_other_loaders,
    collect_outputs,
    load_evaluation,
    model_inputs,
    resolve_target,
    split_overrides,
    take_bank_size,
    write_report,
)
from kdistill.eval.knn import nearest_neighbours

TPR_LEVEL = 0.95


def _check_scores(positive: Tensor, negative: Tensor) -> None:
    if positive.numel() == 0 or negative.numel() == 0:
        raise KdistillError("AUROC and FPR need at least one in-distribution and one OOD score")


def auroc(positive: Tensor, negative: Tensor) -> float:
    """Area under the ROC curve: the probability that a positive outscores a negative, ties
    counting one half (the Mann-Whitney statistic from average ranks)."""
    _check_scores(positive, negative)
    scores = torch.cat([positive.flatten(), negative.flatten()]).double()
    _, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    last_rank = counts.cumsum(0).double()  # 1-based rank of each distinct value's last occurrence
    average_rank = last_rank - (counts.double() - 1) / 2
    positive_rank_sum = average_rank[inverse[: positive.numel()]].sum()
    n_positive, n_negative = positive.numel(), negative.numel()
    return float((positive_rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative))


def fpr_at_tpr(positive: Tensor, negative: Tensor, tpr: float = TPR_LEVEL) -> float:
    """The fraction of negatives accepted by the highest threshold that accepts (score >= threshold)
    at least `tpr` of the positives: the first ROC point with TPR >= tpr."""
    _check_scores(positive, negative)
    needed = math.ceil(round(tpr * positive.numel(), 9))  # the rounding keeps 0.95 * 20 at 19
    threshold = positive.flatten().double().sort(descending=True).values[max(needed, 1) - 1]
    return float((negative.flatten().double() >= threshold).double().mean())


def max_softmax(logits: Tensor) -> Tensor:
    return logits.softmax(dim=1).amax(dim=1)


def energy(logits: Tensor) -> Tensor:
    return logits.logsumexp(dim=1)


def detection_metrics(in_scores: Tensor, out_scores: Tensor) -> dict[str, float]:
    return {"auroc": auroc(in_scores, out_scores), "fpr95": fpr_at_tpr(in_scores, out_scores)}


def same_images_warning(inside: Outputs, outside: Outputs) -> str | None:
    """A warning when the OOD test split gives the model the very outputs of the in-distribution
    test split: the OOD set is the in-distribution set, and every AUROC is 0.5 by construction."""
    if inside.pooled.shape == outside.pooled.shape and torch.allclose(inside.pooled, outside.pooled, atol=1e-5):
        return ("the OOD set's test images are the in-distribution test images (AUROC 0.5 by construction): "
                "set ood.name= and ood.root= to another data set")
    return None


def run_ood(target: str, overrides: list[str], which: str = "last") -> dict[str, Any]:
    """AUROC and FPR95 of every score, for the model and (when the run has one) its teacher."""
    ood_items, run_items = split_overrides(overrides, "ood")
    bank_size, ood_items = take_bank_size(ood_items, "ood")
    resolved = resolve_target(target, run_items, which)
    evaluation = load_evaluation(resolved)
    ood_loaders = build_other_loaders("ood", ood_items, evaluation)
    models, progress, autocast_dtype = evaluation.models, evaluation.cfg.progress, evaluation.autocast_dtype
    loaders = evaluation.loaders
    bank = collect_outputs(models, *bank_batches(loaders.train, bank_size, evaluation.cfg.seed),
                           "in-distribution train", progress, autocast_dtype)
    inside = collect_outputs(models, loaders.test, len(loaders.test), "in-distribution test", progress, autocast_dtype)
    ood_batches = model_inputs(ood_loaders.test, ood_loaders.info, loaders.info)
    outside = collect_outputs(models, ood_batches, len(ood_loaders.test), "OOD test", progress, autocast_dtype)
    warning = same_images_warning(inside["student"], outside["student"])
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    metrics = {}
    for role in models:
        train_features = bank[role].pooled.to(evaluation.device)
        nearest = {name: nearest_neighbours(outputs[role].pooled.to(evaluation.device), train_features, 1)[0][:, 0]
                   for name, outputs in (("in", inside), ("out", outside))}
        metrics[role] = {
            "max_softmax": detection_metrics(max_softmax(inside[role].logits), max_softmax(outside[role].logits)),
            "energy": detection_metrics(energy(inside[role].logits), energy(outside[role].logits)),
            "nearest_neighbour": detection_metrics(nearest["in"].cpu(), nearest["out"].cpu()),
        }
    ood_name = ood_loaders.info.name
    report = {"weights": str(resolved.path), "in_distribution": resolved.cfg.data.name, "ood": ood_name,
              "samples": {"in": len(inside["student"].labels), "ood": len(outside["student"].labels),
                          "bank": len(bank["student"].labels)},
              "models": {role: loaded.name for role, loaded in models.items()}, "metrics": metrics}
    if warning:
        report["warning"] = warning
    return write_report(report, resolved.output_path(f"ood_{ood_name}" + (f"_bank{bank_size}" if bank_size else ""),
                                                     ".json"))


def format_ood(report: dict[str, Any]) -> str:
    lines = [(f"OOD detection: {report['in_distribution']} (in) against {report['ood']} (out); "
             "AUROC higher is better, FPR at 95% TPR lower is better"),
             f"{'model':<24}{'score':<20}{'AUROC':>8}{'FPR95':>8}"]
    for role, by_score in report["metrics"].items():
        for score, values in by_score.items():
            lines.append(f"{role + ' ' + report['models'][role]:<24}{score:<20}{values['auroc']:>8.4f}"
                         f"{values['fpr95']:>8.4f}")
    return "\n".join(lines)
