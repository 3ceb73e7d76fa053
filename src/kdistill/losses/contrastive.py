"""Contrastive and relational representation losses: ICD/DCD, CRD and RRD."""

import enum

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ContrastiveForm", "crd_loss", "crd_nce_loss", "dcd_loss", "rrd_loss"]


class ContrastiveForm(enum.StrEnum):
    softmax = "softmax"  # cross-entropy of each row against its diagonal
    sigmoid = "sigmoid"  # pairwise sigmoid terms, where the bias matters


def dcd_loss(z_s: Tensor, z_t: Tensor, log_scale: Tensor, bias: Tensor | float = 0.0,
             consistency_weight: float = 0.5, max_scale: float = 10.0,
             form: ContrastiveForm | str = ContrastiveForm.softmax,
             scale: Tensor | float | None = None) -> dict[str, Tensor]:
    """ICD/DCD: contrastive + consistency loss between projected student and teacher embeddings.

    `z_s`, `z_t`: [B, D] already projected (L2-normalised here). `logits = scale * z_s z_t^T +
    bias` with `scale = min(exp(log_scale), max_scale)` (or the fixed `scale` given). Row i is
    student i against every teacher sample; the positive is the diagonal.

    - contrastive, `form="softmax"` (default): cross-entropy of each row against its diagonal,
      mean over the B rows (student -> teacher only). Adding `bias` to every logit changes no
      softmax, so here it has no effect and no gradient. `form="sigmoid"`: per pair
      `-log sigmoid(label_ij * logits_ij)` (label +1 on the diagonal, -1 elsewhere), summed over
      columns and averaged over the B rows; here the bias matters.
    - consistency: `KL(Q || P)` summed over entries and divided by B, with `P = softmax(logits,
      dim=1)` (student i over teachers) and `Q = softmax(logits, dim=0).T` (teacher i over
      students), Q not detached.
    - total: contrastive + consistency_weight * consistency.

    Computed in float32 whatever the input dtype.
    """
    z_s = F.normalize(z_s.float(), dim=1)
    z_t = F.normalize(z_t.float(), dim=1)
    if scale is None:
        scale = log_scale.float().exp().clamp(max=max_scale)
    logits = scale * z_s @ z_t.T + bias
    batch = logits.shape[0]
    if ContrastiveForm(form) is ContrastiveForm.softmax:
        contrastive = F.cross_entropy(logits, torch.arange(batch, device=logits.device))
    else:
        labels = 2.0 * torch.eye(batch, device=logits.device) - 1.0
        contrastive = -F.logsigmoid(labels * logits).sum() / batch
    log_p = F.log_softmax(logits, dim=1)
    log_q = F.log_softmax(logits, dim=0).T
    consistency = (log_q.exp() * (log_q - log_p)).sum() / batch
    return {"contrastive": contrastive, "consistency": consistency,
            "total": contrastive + consistency_weight * consistency}


def crd_nce_loss(probs: Tensor, num_data: int, eps: float = 1e-7) -> Tensor:
    """CRD's NCE objective on normalised scores `probs` [B, 1 + K] (column 0 = the positive).

    With noise probability `K / num_data` per draw: `-(sum log(p_pos / (p_pos + K/N)) +
    sum log((K/N) / (p_neg + K/N))) / B`, i.e. summed over the positive and the K negatives,
    averaged over the batch (the benchmark's reduction).
    """
    noise = (probs.shape[1] - 1) / num_data
    positive, negatives = probs[:, 0], probs[:, 1:]
    log_d1 = torch.log(positive / (positive + noise + eps))
    log_d0 = torch.log(noise / (negatives + noise + eps))
    return -(log_d1.sum() + log_d0.sum()) / probs.shape[0]


def _normalisation_constant(exp_scores: Tensor, num_data: int, given: Tensor | float | None) -> Tensor:
    estimate = exp_scores.mean().detach() * num_data
    if given is None:
        return estimate
    given = torch.as_tensor(given, dtype=estimate.dtype, device=estimate.device)
    return torch.where(given > 0, given, estimate)  # a tensor choice: no host synchronisation


def crd_loss(z_s: Tensor, z_t: Tensor, bank_s: Tensor, bank_t: Tensor, sample_index: Tensor, num_data: int,
             temperature: float = 0.07, norm_s: Tensor | float | None = None,
             norm_t: Tensor | float | None = None) -> dict[str, Tensor]:
    """CRD (Tian et al. 2020): NCE between embeddings and the other side's memory bank.

    `z_s`, `z_t`: [B, D] L2-normalised embeddings; `bank_s`, `bank_t`: [N, D] memory banks (the
    student's and the teacher's); `sample_index`: [B, 1 + K] bank rows, column 0 the sample itself
    and then its K negatives. The student anchor scores `z_s` against `bank_t`, the teacher anchor
    `z_t` against `bank_s`: `exp(z . m / temperature) / norm`, where `norm` (the normalisation
    constant `mean(exp(...)) * N`) is estimated from these scores when not given or not positive
    (the method estimates it on its first batch and keeps it). Scores come from
    one `B x N` product against the whole bank with the sampled columns picked afterwards (the same
    values as gathering `B x (1+K)` rows, much faster while N is not far above K).
    Returns `student`, `teacher`, `total` (their sum) and the two `norm`s used.
    """
    exp_s = torch.exp((z_s.float() @ bank_t.float().T).gather(1, sample_index) / temperature)
    exp_t = torch.exp((z_t.float() @ bank_s.float().T).gather(1, sample_index) / temperature)
    norm_s = _normalisation_constant(exp_s, num_data, norm_s)
    norm_t = _normalisation_constant(exp_t, num_data, norm_t)
    student = crd_nce_loss(exp_s / norm_s, num_data)
    teacher = crd_nce_loss(exp_t / norm_t, num_data)
    return {"student": student, "teacher": teacher, "total": student + teacher,
            "norm_s": norm_s, "norm_t": norm_t}


def rrd_loss(z_s: Tensor, z_t: Tensor, queue: Tensor, temperature_student: float = 0.1,
             temperature_teacher: float = 0.02) -> Tensor:
    """RRD (Giakoumoglou & Stathaki, "Relational Representation Distillation"), as its reference
    code computes it: the student's and the teacher's L2-normalised embeddings `[B, D]` are scored
    against a queue of teacher embeddings `[K, D]` (which already holds this batch's, as the
    reference enqueues before scoring); the teacher's similarities, sharpened by their temperature
    and detached, are the soft targets of the student's:
    `-sum_k softmax(z_t q_k / T_t) * log_softmax(z_s q_k / T_s)`, mean over the B samples.
    The queue takes no gradient. Computed in float32 whatever the input dtype.
    """
    queue = queue.detach().float()
    targets = F.softmax(z_t.detach().float() @ queue.T / temperature_teacher, dim=1)
    log_predictions = F.log_softmax(z_s.float() @ queue.T / temperature_student, dim=1)
    return -(targets * log_predictions).sum(dim=1).mean()
