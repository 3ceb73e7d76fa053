"""Top-k accuracy of a classifier over a loader."""

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[int]:
    """How many samples have their label among the k highest logits, for each k (capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) for k in ks]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict[str, Tensor]], amp: bool = False) -> dict[str, float]:
    """Top-1, top-5 (in %) and mean cross-entropy of `model` (logits from `forward`) on all batches."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = count = 0
    loss_sum = 0.0
    for batch in batches:
        images, labels = batch["image"], batch["label"]
        with torch.autocast(images.device.type, enabled=amp):
            logits = model(images).float()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        c1, c5 = topk_correct(logits, labels)
        correct1, correct5, count = correct1 + c1, correct5 + c5, count + labels.numel()
    model.train(was_training)
    if count == 0:
        return {"top1": 0.0, "top5": 0.0, "loss": 0.0}
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count}
