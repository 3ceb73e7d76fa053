"""Label-free distillation losses: TinTeM's similarity-preserving map and Proteus' feature regression."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MASKED_SIMILARITY",
    "TINTEM_TEMPERATURES",
    "masked_cosine_similarity",
    "proteus_loss",
    "tintem_loss",
    "vmf_sne_loss",
]

# Stands in for "no similarity" on the diagonal: finite, so the zero-probability entries give
# 0 * finite = 0 in the KL rather than 0 * inf = NaN; float32 only (it overflows float16).
MASKED_SIMILARITY = -1e8
TINTEM_TEMPERATURES = (0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1)


def masked_cosine_similarity(z: Tensor) -> Tensor:
    """Cosine similarities between the rows of `z` [..., N, D]: [..., N, N] in float32, with the
    diagonal (a row with itself) set to `MASKED_SIMILARITY`.

    Computed in float32 with autocast off: under mixed precision the product would otherwise run
    in half precision, where the mask overflows. A zero row has similarity 0 to every other row.
    """
    with torch.autocast(z.device.type, enabled=False):
        z = F.normalize(z.float(), dim=-1)
        similarity = z @ z.transpose(-1, -2)
    diagonal = torch.eye(similarity.shape[-1], dtype=torch.bool, device=similarity.device)
    return similarity.masked_fill(diagonal, MASKED_SIMILARITY)


def _joint_log_probabilities(similarity: Tensor, temperatures: Tensor) -> Tensor:
    """log of the symmetrised joint distribution over the pairs (j, k), one per temperature:
    the row-wise softmax `p_{k|j}` of `similarity / temperature`, then `(p_{k|j} + p_{j|k})`
    normalised over all pairs. [..., N, N] -> [len(temperatures), ..., N, N]."""
    scaled = similarity / temperatures.view(-1, *[1] * similarity.dim())
    conditional = F.log_softmax(scaled, dim=-1)
    joint = torch.logsumexp(torch.stack([conditional, conditional.transpose(-1, -2)]), dim=0)
    return joint - torch.logsumexp(joint.flatten(-2), dim=-1)[..., None, None]


def vmf_sne_loss(sim_p: Tensor, sim_q: Tensor, temperatures: Sequence[float] = TINTEM_TEMPERATURES) -> Tensor:
    """TinTeM's multi-temperature vMF-SNE: `KL(P || Q)` between the symmetrised joint
    distributions over the off-diagonal pairs of two similarity matrices [..., N, N] (from
    `masked_cosine_similarity`), summed over the pairs, averaged over the leading (batch)
    dimensions and over the temperatures. `sim_p` is the target (the teacher's).

    Computed in float32 with autocast off, all temperatures at once (one kernel each rather
    than one per temperature). A matrix whose rows are all masked (N = 1) gives 0.
    """
    with torch.autocast(sim_p.device.type, enabled=False):
        sim_p, sim_q = sim_p.float(), sim_q.float()
        temperatures = torch.tensor(list(temperatures), dtype=sim_p.dtype, device=sim_p.device)
        log_p = _joint_log_probabilities(sim_p, temperatures)
        log_q = _joint_log_probabilities(sim_q, temperatures)
        return (log_p.exp() * (log_p - log_q)).sum(dim=(-2, -1)).mean()


def _cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """`mean_i (1 - cos(a_i, b_i))` with each sample flattened to one vector; float32."""
    return (1 - F.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1)).mean()


def tintem_loss(student_tokens: Tensor, teacher_tokens: Tensor, mapped_tokens: Tensor,
                temperatures: Sequence[float] = TINTEM_TEMPERATURES,
                batch_teacher_cls: Tensor | None = None, batch_mapped_cls: Tensor | None = None) -> dict[str, Tensor]:
    """TinTeM ("Faithful Label-free Knowledge Distillation"): the loss of the map and of the student.

    Token sequences are [B, 1 + N, D], token 0 the CLS: `teacher_tokens` (no gradient),
    `mapped_tokens` (the map applied to them, [B, 1 + N, d_s]) and `student_tokens` (on the same
    token grid as `mapped_tokens`; the caller resizes grids that differ).

    - local: `vmf_sne_loss` between each image's token-token similarity matrices, teacher vs mapped.
    - global: `vmf_sne_loss` between the CLS-CLS matrices across the batch. Give
      `batch_teacher_cls` / `batch_mapped_cls` [B_all, D] to use a larger batch (all ranks' CLS
      tokens); by default the CLS tokens of these tokens.
    - feature: `mean_i (1 - cos(student_i, mapped_i))` with each image's token sequence flattened
      to one vector; token: the same on the CLS tokens alone.
    - total: their sum.

    The two SNE terms reach only the map (the student is not in them); in the two cosine terms
    the mapped tokens are detached, so they reach only the student.
    """
    if batch_teacher_cls is None:
        batch_teacher_cls, batch_mapped_cls = teacher_tokens[:, 0], mapped_tokens[:, 0]
    local = vmf_sne_loss(masked_cosine_similarity(teacher_tokens), masked_cosine_similarity(mapped_tokens),
                         temperatures)
    global_ = vmf_sne_loss(masked_cosine_similarity(batch_teacher_cls), masked_cosine_similarity(batch_mapped_cls),
                           temperatures)
    target = mapped_tokens.detach()
    feature = _cosine_distance(student_tokens, target)
    token = _cosine_distance(student_tokens[:, 0], target[:, 0])
    return {"local": local, "global": global_, "feature": feature, "token": token,
            "total": local + global_ + feature + token}


def proteus_loss(mapped_student_tokens: Tensor, teacher_tokens: Tensor) -> dict[str, Tensor]:
    """Proteus' regression of the teacher's features: mean squared error between the student's
    tokens mapped to the teacher's space and the teacher's tokens, both [B, 1 + N, d_t] on the
    same grid (token 0 the CLS).

    - token: MSE of the CLS tokens (Proteus' token level); feature: MSE of the whole sequence,
      CLS and patch (or map position) tokens together (its feature level, as the reference
      computes it); total: their sum. Each is a mean over its elements.
    """
    mapped, target = mapped_student_tokens.float(), teacher_tokens.float()
    token = F.mse_loss(mapped[:, 0], target[:, 0])
    feature = F.mse_loss(mapped, target)
    return {"token": token, "feature": feature, "total": token + feature}
