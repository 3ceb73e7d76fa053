"""Top-k accuracy of a classifier over a loader: used by the Trainer after each epoch and by `kdistill eval`
(it sits below both, so the engine and the evaluations do not import each other)."""

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.distributed import sum_over_ranks
from kdistill.precision import autocast


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """How many samples have their label among the k highest logits, for each k (capped at the class
    count); tensors on the logits' device, so a loop over batches never waits for the device."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return [hits[:, :k].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict[str, Tensor]],
             autocast_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Top-1, top-5 (in %) and mean cross-entropy of `model` (logits from `forward`) on all batches.

    Under torch.distributed each rank passes its shard of the split; the counts are summed over
    ranks, so every rank returns the figures of the whole split.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct@1, correct@5, count, loss sum
    for batch in batches:
        images, labels = batch["image"], batch["label"]
        with autocast(images.device, autocast_dtype):
            logits = model(images).float()
        correct1, correct5 = topk_correct(logits, labels)
        loss_sum = F.cross_entropy(logits, labels, reduction="sum")
        totals += torch.stack([correct1.double(), correct5.double(), torch.tensor(float(labels.numel()), device=device),
                               loss_sum.double()])
    model.train(was_training)
    correct1, correct5, count, loss_sum = sum_over_ranks(totals).tolist()
    if count == 0:
        return {"top1": 0.0, "top5": 0.0, "loss": 0.0}
    return {"top1": 100.0 * correct1 / count, "top5": 100.0 * correct5 / count, "loss": loss_sum / count}
