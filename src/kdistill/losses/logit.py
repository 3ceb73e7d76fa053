"""Logit-based losses."""

import torch.nn.functional as F
from torch import Tensor

__all__ = ["crld_loss", "kd_loss", "kd_per_sample"]


def kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """`T^2 * KL(softmax(t_i/T) || softmax(s_i/T))` for every sample i: a [B] tensor (float32)."""
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=1)
    return kl * temperature**2


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton's KD: `T^2 * (1/B) * sum_i KL(softmax(t_i/T) || softmax(s_i/T))`.

    Reduction: summed over classes, averaged over the batch (`batchmean`); the `T^2` factor
    keeps the gradient scale independent of the temperature.
    """
    return kd_per_sample(student_logits, teacher_logits, temperature).mean()


def crld_loss(
    s_weak: Tensor, s_strong: Tensor, t_weak: Tensor, t_strong: Tensor, labels: Tensor,
    temperature: float = 4.0, weak_threshold: float = 0.9, strong_threshold: float = 0.2,
    w_ce: float = 1.0, w_within: float = 2.0, w_cross: float = 0.5,
) -> dict[str, Tensor]:
    """CRLD: CE on both views, plus KD within each view and across the views, each gated per
    sample by the teacher's confidence (its top softmax probability at temperature 1).

    `within_view = (1/B) sum_i m_w_i (kd_i(s_weak, t_weak) + kd_i(s_strong, t_strong))` with
    `m_w_i = [max softmax(t_weak_i) >= weak_threshold]`; `cross_view` likewise with
    `(s_strong, t_weak)` and `(s_weak, t_strong)`, gated by `m_s_i = [max softmax(t_strong_i) >=
    strong_threshold]`; `kd_i` is `kd_per_sample` at `temperature`. Reduction: both divide by
    the whole batch B, not by the number of selected samples, so a confident batch pulls
    harder than an unsure one. `ce` is the sum of the two batch-mean cross-entropies.

    Returns `ce`, `within_view`, `cross_view` (unweighted), `total = w_ce * ce + w_within *
    within_view + w_cross * cross_view`, and the bool masks `weak_mask`, `strong_mask` [B].
    The teacher's logits are detached: no gradient reaches them.
    """
    t_weak, t_strong = t_weak.detach(), t_strong.detach()  # the teacher is a target, never trained
    weak_mask = F.softmax(t_weak.float(), dim=1).amax(dim=1) >= weak_threshold
    strong_mask = F.softmax(t_strong.float(), dim=1).amax(dim=1) >= strong_threshold
    ce = F.cross_entropy(s_weak, labels) + F.cross_entropy(s_strong, labels)
    within_view = (weak_mask * (kd_per_sample(s_weak, t_weak, temperature)
                                + kd_per_sample(s_strong, t_strong, temperature))).mean()
    cross_view = (strong_mask * (kd_per_sample(s_strong, t_weak, temperature)
                                 + kd_per_sample(s_weak, t_strong, temperature))).mean()
    return {
        "ce": ce,
        "within_view": within_view,
        "cross_view": cross_view,
        "total": w_ce * ce + w_within * within_view + w_cross * cross_view,
        "weak_mask": weak_mask,
        "strong_mask": strong_mask,
    }
