"""`kdistill probe`: transferability as in the ICD paper — the model frozen as a feature
extractor, a linear classifier trained on its penultimate (pooled) features of another data set
(`probe.*` keys, e.g. STL-10 or Tiny-ImageNet resized to the model's 32x32), top-1 on that data
set's test split.

The features are computed once and cached beside the results; the classifier is a multinomial
logistic regression on standardised features fitted full-batch with L-BFGS, so a second probe
(another weight decay) takes seconds.
"""

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.data import Loaders
from kdistill.eval.common import (
    Evaluation,
    build_other_loaders,
    collect_outputs,
    load_evaluation,
    model_inputs,
    resolve_target,
    split_overrides,
    top1,
    write_report,
)
from kdistill.models.checkpoint import atomic_save

WEIGHT_DECAY = 5e-4  # of 0.5 * ||W||^2 added to the mean cross-entropy
MAX_ITER = 100  # L-BFGS iterations
HISTORY = 20


class LinearProbe(nn.Module):
    """A linear classifier on features standardised with the training set's mean and std."""

    def __init__(self, mean: Tensor, std: Tensor, num_classes: int):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(len(mean), num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear((features - self.mean) / self.std)


def fit_linear_probe(features: Tensor, labels: Tensor, num_classes: int, weight_decay: float = WEIGHT_DECAY,
                     max_iter: int = MAX_ITER) -> LinearProbe:
    """Minimise mean cross-entropy + 0.5 * weight_decay * ||W||^2 full-batch with L-BFGS."""
    features = features.float()
    probe = LinearProbe(features.mean(0), features.std(0).clamp_min(1e-6), num_classes).to(features.device)
    nn.init.zeros_(probe.linear.weight)
    nn.init.zeros_(probe.linear.bias)
    standardised = (features - probe.mean) / probe.std
    optimizer = torch.optim.LBFGS(probe.linear.parameters(), lr=1.0, max_iter=max_iter, history_size=HISTORY,
                                  line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(probe.linear(standardised), labels)
        loss = loss + 0.5 * weight_decay * probe.linear.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return probe.eval()


def cached_features(evaluation: Evaluation, probe_loaders: Loaders, probe_items: list[str],
                    cache_path: Path) -> dict[str, dict[str, tuple[Tensor, Tensor]]]:
    """{role: {split: (pooled features, labels)}} of the probe data, read from `cache_path` when it
    was computed from the same weights and data, else computed and saved there."""
    model_info, probe_info = evaluation.loaders.info, probe_loaders.info
    data_key = {"keys": sorted(probe_items), "image_size": probe_info.image_size, "train_size": probe_info.train_size,
                "normalisation": [list(model_info.mean), list(model_info.std)]}
    fingerprints = {role: {**loaded.fingerprint, "data": data_key} for role, loaded in evaluation.models.items()}
    cache = torch.load(cache_path, weights_only=True) if cache_path.is_file() else {}
    stale = {role: loaded for role, loaded in evaluation.models.items()
             if cache.get(role, {}).get("fingerprint") != fingerprints[role]}
    if stale:
        for split in ("train", "test"):
            loader = getattr(probe_loaders, split)
            outputs = collect_outputs(stale, model_inputs(loader, probe_info, model_info), len(loader),
                                      f"{probe_info.name} {split} features", evaluation.cfg.progress,
                                      evaluation.autocast_dtype)
            for role, output in outputs.items():
                cache.setdefault(role, {})[split] = (output.pooled, output.labels)
        for role in stale:
            cache[role]["fingerprint"] = fingerprints[role]
        atomic_save(cache, cache_path)
    return {role: {split: cache[role][split] for split in ("train", "test")} for role in evaluation.models}


def run_probe(target: str, overrides: list[str], which: str = "last", weight_decay: float = WEIGHT_DECAY,
              max_iter: int = MAX_ITER) -> dict[str, Any]:
    """Linear-probe top-1 on the probe data set for the model and, when the run has one, its teacher."""
    probe_items, run_items = split_overrides(overrides, "probe")
    resolved = resolve_target(target, run_items, which)
    evaluation = load_evaluation(resolved)
    probe_loaders = build_other_loaders("probe", probe_items, evaluation)
    name = probe_loaders.info.name
    cache_path = resolved.output_path(f"probe_{name}_features", ".pt")
    features = cached_features(evaluation, probe_loaders, probe_items, cache_path)
    train_top1, test_top1 = {}, {}
    for role, splits in features.items():
        (train_x, train_y), (test_x, test_y) = [(x.to(evaluation.device), y.to(evaluation.device))
                                                for x, y in (splits["train"], splits["test"])]
        probe = fit_linear_probe(train_x, train_y, probe_loaders.info.num_classes, weight_decay, max_iter)
        with torch.no_grad():
            train_top1[role], test_top1[role] = top1(probe(train_x), train_y), top1(probe(test_x), test_y)
    report = {"weights": str(resolved.path), "dataset": resolved.cfg.data.name, "probe_dataset": name,
              "image_size": probe_loaders.info.image_size, "weight_decay": weight_decay, "max_iter": max_iter,
              "features_cache": str(cache_path),
              "models": {role: loaded.name for role, loaded in evaluation.models.items()},
              "top1": test_top1, "train_top1": train_top1}
    return write_report(report, resolved.output_path(f"probe_{name}", ".json"))


def format_probe(report: dict[str, Any]) -> str:
    lines = [(f"linear probe on {report['probe_dataset']} ({report['image_size']}x{report['image_size']}) "
             f"of frozen features (model trained on {report['dataset']}): top-1 (%) on its test split")]
    for role, value in report["top1"].items():
        lines.append(f"  {role} {report['models'][role]}: {value:.2f} (train {report['train_top1'][role]:.2f})")
    return "\n".join(lines)
