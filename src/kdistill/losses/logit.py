"""Logit-based losses."""

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crld_loss", "deit_distillation_loss", "dist_loss", "dkd_loss", "kd_loss", "kd_per_sample", "mlkd_loss",
           "standardize_logits"]


def standardize_logits(logits: Tensor) -> Tensor:
    """Logit standardisation (Sun et al., CVPR 2024): each sample's logits z-scored over the
    classes, `(z - mean) / (1e-7 + std)` with the unbiased std (torch's default), as the
    reference's `normalize`. Softmax of the result ignores a per-sample shift and positive scale."""
    mean = logits.mean(dim=-1, keepdim=True)
    return (logits - mean) / (1e-7 + logits.std(dim=-1, keepdim=True))


def _squared_per_sample(temperature: float | Tensor) -> float | Tensor:
    """`T^2` as a factor of per-sample values [B]. A temperature is a number, a 0-dim tensor or
    one per sample, [B, 1] (CTKD's learned temperature), which dividing [B, C] logits broadcasts."""
    if isinstance(temperature, Tensor) and temperature.ndim == 2:
        return temperature.reshape(-1).square()
    return temperature**2


def _prepared(logits: Tensor, standardize: bool) -> Tensor:
    """The logits in at least fp32 (AMP's half precision is upcast), z-scored per sample when `standardize`."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return standardize_logits(logits) if standardize else logits


def kd_per_sample(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 4.0,
                  standardize: bool = False) -> Tensor:
    """`T^2 * KL(softmax(t_i/T) || softmax(s_i/T))` for every sample i: a [B] tensor (at least float32).
    `standardize`: both logit vectors z-scored per sample first (`standardize_logits`). `temperature`
    may be a tensor, 0-dim or one per sample [B, 1] (then `T_i` for sample i; CTKD's instance-wise)."""
    log_p_student = F.log_softmax(_prepared(student_logits, standardize) / temperature, dim=1)
    log_p_teacher = F.log_softmax(_prepared(teacher_logits, standardize) / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="none", log_target=True).sum(dim=1)
    return kl * _squared_per_sample(temperature)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float | Tensor = 4.0,
            standardize: bool = False) -> Tensor:
    """Hinton's KD: `T^2 * (1/B) * sum_i KL(softmax(t_i/T) || softmax(s_i/T))`.

    Reduction: summed over classes, averaged over the batch (`batchmean`); the `T^2` factor
    keeps the gradient scale independent of the temperature. `standardize`: logit
    standardisation of both sides first (the LS paper's KD).
    """
    return kd_per_sample(student_logits, teacher_logits, temperature, standardize).mean()


def dkd_loss(logits_s: Tensor, logits_t: Tensor, labels: Tensor, alpha: float = 1.0, beta: float = 8.0,
             temperature: float | Tensor = 4.0, standardize: bool = False) -> dict[str, Tensor]:
    """Decoupled KD (Zhao et al., CVPR 2022), the arithmetic of mdistiller's `dkd_loss`.

    With `p = softmax(z / T)`: TCKD is the KL between the teacher's and the student's binary
    distributions `(p_label, 1 - p_label)`; NCKD the KL between their distributions over the
    non-label classes (softmax of `z / T - 1000 * onehot(label)`, as the reference computes it).
    Both sides are taken as log-probabilities (the binary ones as log-sum-exps): the reference's
    `log(sum p)` is -inf once p_label underflows (large logits), and a learned temperature (CTKD),
    which reaches the teacher's side too, would get a NaN gradient through a probability of 0.
    Reduction: each summed over the batch, times `T^2`, divided by B. Returns `tckd`, `nckd`
    and `total = alpha * tckd + beta * nckd`. `standardize`: logit standardisation of both
    sides first (the LS paper's DKD). The teacher's logits are detached. A per-sample temperature
    [B, 1] (CTKD's instance-wise) weights each sample's KLs by its own `T_i^2`.
    """
    logits_s, logits_t = _prepared(logits_s, standardize), _prepared(logits_t.detach(), standardize)
    label_mask = F.one_hot(labels, logits_s.shape[1]).bool()

    def binary_log_probabilities(logits: Tensor) -> Tensor:
        """log p_label and log(1 - p_label), [B, 2]."""
        log_p = F.log_softmax(logits / temperature, dim=1)
        log_rest = torch.logsumexp(log_p.masked_fill(label_mask, -torch.inf), dim=1)
        return torch.stack([log_p[label_mask], log_rest], dim=1)

    def non_target_log_probabilities(logits: Tensor) -> Tensor:
        return F.log_softmax(logits / temperature - 1000.0 * label_mask, dim=1)

    kl = partial(F.kl_div, reduction="none", log_target=True)
    tckd = kl(binary_log_probabilities(logits_s), binary_log_probabilities(logits_t)).sum(dim=1)
    nckd = kl(non_target_log_probabilities(logits_s), non_target_log_probabilities(logits_t)).sum(dim=1)
    scale = _squared_per_sample(temperature) / labels.shape[0]
    tckd, nckd = (tckd * scale).sum(), (nckd * scale).sum()
    return {"tckd": tckd, "nckd": nckd, "total": alpha * tckd + beta * nckd}


def deit_distillation_loss(logits_dist: Tensor, logits_t: Tensor, soft: bool = False,
                           temperature: float | Tensor = 1.0, standardize: bool = False) -> Tensor:
    """The distillation token's loss of DeiT (facebookresearch/deit `losses.py` DistillationLoss),
    on the student's distillation-head logits.

    Hard (DeiT's default): cross-entropy with the teacher's top class, averaged over the batch.
    Soft: `T^2 * sum KL(softmax(t/T) || softmax(s/T)) / (B * C)`: the reference divides the summed
    KL by the number of logits (PyTorch's legacy mean), not by B, so it is `kd_loss / C`.
    `standardize` (soft only): both sides z-scored first. The teacher's logits are detached.
    """
    logits_t = logits_t.detach()
    if not soft:
        return F.cross_entropy(_prepared(logits_dist, False), logits_t.argmax(dim=1))
    return kd_per_sample(logits_dist, logits_t, temperature, standardize).sum() / logits_dist.numel()


def _mean_pearson_of_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """The mean over rows of the Pearson correlation of `a`'s and `b`'s rows, as the DIST
    reference computes it: centred rows, `<a, b> / (|a| |b| + eps)`."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return ((a * b).sum(dim=1) / (torch.linalg.vector_norm(a, dim=1) * torch.linalg.vector_norm(b, dim=1) + eps)).mean()


def dist_loss(logits_s: Tensor, logits_t: Tensor, beta: float = 1.0, gamma: float = 1.0,
              temperature: float | Tensor = 1.0) -> Tensor:
    """DIST (Huang et al., NeurIPS 2022): match the relations of the predictions, not their values.

    With `P = softmax(z / T)` over classes ([B, C]): the inter-class term is `1 - mean_i
    pearson(P_s[i], P_t[i])` (each sample's class ranking), the intra-class term the same over
    the columns, `1 - mean_c pearson(P_s[:, c], P_t[:, c])` (each class's ranking of the batch's
    samples). Loss = `T^2 * (beta * inter + gamma * intra)`; a scalar (means over samples and
    classes). The Pearson correlation is the reference's (hunto/DIST_KD `dist_kd.py`): the cosine
    of the centred vectors with 1e-8 added to the product of their norms. The teacher's logits are
    detached; half-precision logits are computed in float32.

    `temperature` may be a tensor (CTKD's learned temperature): a scalar, or one per sample
    ([B, 1]), which divides that sample's logits; the `T^2` factor is then the batch mean of
    `T_i^2`, since the intra-class term couples the samples.
    """
    logits_s, logits_t = _prepared(logits_s, False), _prepared(logits_t.detach(), False)
    p_s, p_t = F.softmax(logits_s / temperature, dim=1), F.softmax(logits_t / temperature, dim=1)
    inter = 1 - _mean_pearson_of_rows(p_s, p_t)
    intra = 1 - _mean_pearson_of_rows(p_s.T, p_t.T)
    scale = torch.as_tensor(temperature, dtype=p_s.dtype, device=p_s.device).square().mean()
    return scale * (beta * inter + gamma * intra)


def _class_gram_gap(p_s: Tensor, p_t: Tensor) -> Tensor:
    """MLKD's class-level term: `||P_t^T P_t - P_s^T P_s||^2 / C` (C x C Gram matrices)."""
    return (p_t.T @ p_t - p_s.T @ p_s).pow(2).sum() / p_s.shape[1]


def _batch_gram_gap(p_s: Tensor, p_t: Tensor) -> Tensor:
    """MLKD's batch-level term: `||P_t P_t^T - P_s P_s^T||^2 / B` (B x B Gram matrices)."""
    return (p_t @ p_t.T - p_s @ p_s.T).pow(2).sum() / p_s.shape[0]


def _two_view_cross_entropy(s_weak: Tensor, s_strong: Tensor, labels: Tensor) -> Tensor:
    """The sum of both views' batch-mean cross-entropies (CRLD's and MLKD's CE term)."""
    return F.cross_entropy(s_weak, labels) + F.cross_entropy(s_strong, labels)


def mlkd_loss(s_weak: Tensor, s_strong: Tensor, t_weak: Tensor, t_strong: Tensor, labels: Tensor,
              temperatures: tuple[float | Tensor, ...] = (4.0, 3.0, 5.0, 2.0, 6.0),
              standardize: bool = False) -> dict[str, Tensor]:
    """Multi-level logit distillation (Jin et al., CVPR 2023), the arithmetic of the authors'
    reference, summed over `temperatures` (the reference: {T, 3, 5, 2, 6}, T = 4).

    Masks, from the teacher's weak-view softmax at temperature 1: `sample_mask` = top probability
    at or below its batch median (50th percentile, linear interpolation as numpy's); `class_mask`
    = the class's summed probability over the batch at or below the median over classes.
    In the reference both multiply losses already reduced to a scalar, so each acts as the
    fraction it keeps (about one half); kdistill computes the same.

    - `instance`: sum over T of `kept_samples * KD_T(s_weak, t_weak) + KD_T(s_strong, t_strong)`
      (`kd_loss`, batch mean, times `T^2`; with `standardize`, on z-scored logits as the LS
      paper's MLKD). The reference takes the strong view's terms at T = 2 and 6 from the weak
      view's logits (a copy slip, see README's deviations); here every strong term is on the
      strong view.
    - `class_level`: sum over T of `kept_classes * _class_gram_gap` on the weak view.
    - `batch_level`: sum over T of `kept_samples * _batch_gram_gap` on the weak view.
    The reference also computes the two Gram terms on the strong view but leaves them out of
    its loss; so does kdistill. Class and batch terms use the raw logits (as the reference).
    `ce` is the sum of both views' batch-mean cross-entropies.
    Returns `ce`, the three terms (unweighted) and the masks; the teacher's logits are detached.
    """
    t_weak, t_strong = _prepared(t_weak.detach(), False), _prepared(t_strong.detach(), False)
    s_weak, s_strong = _prepared(s_weak, False), _prepared(s_strong, False)
    confidence = F.softmax(t_weak, dim=1)
    top = confidence.amax(dim=1)
    sample_mask = top <= torch.quantile(top, 0.5)
    class_confidence = confidence.sum(dim=0)
    class_mask = class_confidence <= torch.quantile(class_confidence, 0.5)
    kept_samples, kept_classes = sample_mask.to(s_weak.dtype).mean(), class_mask.to(s_weak.dtype).mean()
    instance = class_level = batch_level = s_weak.new_zeros(())
    for temperature in temperatures:
        instance = instance + kept_samples * kd_loss(s_weak, t_weak, temperature, standardize) \
            + kd_loss(s_strong, t_strong, temperature, standardize)
        p_s, p_t = F.softmax(s_weak / temperature, dim=1), F.softmax(t_weak / temperature, dim=1)
        class_level = class_level + kept_classes * _class_gram_gap(p_s, p_t)
        batch_level = batch_level + kept_samples * _batch_gram_gap(p_s, p_t)
    return {"ce": _two_view_cross_entropy(s_weak, s_strong, labels), "instance": instance,
            "class_level": class_level, "batch_level": batch_level,
            "sample_mask": sample_mask, "class_mask": class_mask}


def crld_loss(
    s_weak: Tensor, s_strong: Tensor, t_weak: Tensor, t_strong: Tensor, labels: Tensor,
    temperature: float | Tensor = 4.0, weak_threshold: float = 0.9, strong_threshold: float = 0.2,
    w_ce: float = 1.0, w_within: float = 2.0, w_cross: float = 0.5, standardize: bool = False,
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
    The teacher's logits are detached: no gradient reaches them. `standardize`: the KD terms on
    z-scored logits (logit standardisation); the masks keep reading the raw teacher's confidence,
    which is what their thresholds are calibrated for.
    """
    t_weak, t_strong = t_weak.detach(), t_strong.detach()  # the teacher is a target, never trained
    weak_mask = F.softmax(t_weak.float(), dim=1).amax(dim=1) >= weak_threshold
    strong_mask = F.softmax(t_strong.float(), dim=1).amax(dim=1) >= strong_threshold
    ce = _two_view_cross_entropy(s_weak, s_strong, labels)
    kd = partial(kd_per_sample, temperature=temperature, standardize=standardize)
    within_view = (weak_mask * (kd(s_weak, t_weak) + kd(s_strong, t_strong))).mean()
    cross_view = (strong_mask * (kd(s_strong, t_weak) + kd(s_weak, t_strong))).mean()
    return {
        "ce": ce,
        "within_view": within_view,
        "cross_view": cross_view,
        "total": w_ce * ce + w_within * within_view + w_cross * cross_view,
        "weak_mask": weak_mask,
        "strong_mask": strong_mask,
    }
