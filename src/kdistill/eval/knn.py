"""`kdistill knn`: weighted k-nearest-neighbour accuracy on frozen features, as DINO evaluates
(Caron et al. 2021): cosine similarity of L2-normalised penultimate features to the training
set's, each of the k neighbours voting for its class with weight exp(similarity / temperature).
It needs no classifier, so it also scores label-free students.

By default the bank and the queries are the run's own data; `knn.*` keys (the keys of `data.*`)
name another data set, whose images are resized to the model's input size and normalised as the
model's training data (as `probe` does). `knn.bank_size=N` embeds a keyed subset of N training
samples as the bank instead of the whole split (`kdistill.eval.common.bank_indices`)."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.errors import KdistillError
from kdistill.eval.common import (
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

KS = (10, 200)
TEMPERATURE = 0.07
QUERY_CHUNK = 256  # queries scored at once: bounds the chunk x bank similarity matrix


def nearest_neighbours(queries: Tensor, bank: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Cosine similarities [N, k] (descending) and bank indices [N, k] of each query's k nearest
    bank entries; both sets are L2-normalised here."""
    queries, bank = F.normalize(queries.float(), dim=1), F.normalize(bank.float(), dim=1)
    similarities, indices = [], []
    for chunk in queries.split(QUERY_CHUNK):
        top = (chunk @ bank.T).topk(k, dim=1)
        similarities.append(top.values)
        indices.append(top.indices)
    return torch.cat(similarities), torch.cat(indices)


def weighted_knn_accuracy(bank: Tensor, bank_labels: Tensor, queries: Tensor, query_labels: Tensor,
                          num_classes: int, ks: tuple[int, ...] = KS,
                          temperature: float = TEMPERATURE) -> dict[int, float]:
    """Top-1 (%) of the weighted kNN vote for each k (each capped at the bank size)."""
    if min(ks) < 1:
        raise KdistillError(f"k must be at least 1 (got {min(ks)})")
    largest = min(max(ks), len(bank))
    similarities, indices = nearest_neighbours(queries, bank, largest)
    neighbour_labels = bank_labels.to(indices.device)[indices]
    accuracy = {}
    for k in ks:
        weights = (similarities[:, :k] / temperature).exp()
        votes = torch.zeros(len(queries), num_classes, device=weights.device)
        votes.scatter_add_(1, neighbour_labels[:, :k], weights)
        accuracy[k] = 100.0 * float((votes.argmax(1) == query_labels.to(votes.device)).float().mean())
    return accuracy


def run_knn(target: str, overrides: list[str], which: str = "last", ks: tuple[int, ...] = KS,
            temperature: float = TEMPERATURE) -> dict[str, Any]:
    """kNN top-1 on the test split with the train split (unaugmented) as the bank, for the model
    and, when the run has one, its teacher; on the run's data or on the `knn.*` data set."""
    knn_items, run_items = split_overrides(overrides, "knn")
    bank_size, knn_items = take_bank_size(knn_items, "knn")
    resolved = resolve_target(target, run_items, which)
    evaluation = load_evaluation(resolved)
    loaders = build_other_loaders("knn", knn_items, evaluation) if knn_items else evaluation.loaders
    progress, autocast_dtype = evaluation.cfg.progress, evaluation.autocast_dtype

    def features(batches, total: int, desc: str):
        return collect_outputs(evaluation.models, model_inputs(batches, loaders.info, evaluation.loaders.info),
                               total, desc, progress, autocast_dtype)

    bank = features(*bank_batches(loaders.train, bank_size, evaluation.cfg.seed), "train features")
    test = features(loaders.test, len(loaders.test), "test features")
    top1 = {role: weighted_knn_accuracy(bank[role].pooled.to(evaluation.device), bank[role].labels,
                                        test[role].pooled.to(evaluation.device), test[role].labels,
                                        loaders.info.num_classes, tuple(ks), temperature)
            for role in evaluation.models}
    name = loaders.info.name
    report = {"weights": str(resolved.path), "dataset": name, "model_dataset": resolved.cfg.data.name,
              "temperature": temperature, "models": {role: loaded.name for role, loaded in evaluation.models.items()},
              "bank_size": len(bank["student"].labels),
              "top1": {role: {str(k): value for k, value in by_k.items()} for role, by_k in top1.items()}}
    output_name = (f"knn_{name}" if knn_items else "knn") + (f"_bank{bank_size}" if bank_size else "")
    return write_report(report, resolved.output_path(output_name, ".json"))


def format_knn(report: dict[str, Any]) -> str:
    model_dataset = report["model_dataset"]
    trained_on = "" if report["dataset"] == model_dataset else f" (model trained on {model_dataset})"
    lines = [(f"weighted kNN top-1 (%) on {report['dataset']} test{trained_on}, bank of {report['bank_size']} "
              f"train features, temperature {report['temperature']}")]
    for role, by_k in report["top1"].items():
        cells = ", ".join(f"k={k}: {value:.2f}" for k, value in by_k.items())
        lines.append(f"  {role} {report['models'][role]}: {cells}")
    return "\n".join(lines)
