"""Logit-based losses."""

import torch.nn.functional as F
from torch import Tensor

__all__ = ["kd_loss"]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton's KD: `T^2 * (1/B) * sum_i KL(softmax(t_i/T) || softmax(s_i/T))`.

    Reduction: summed over classes, averaged over the batch (`batchmean`); the `T^2` factor
    keeps the gradient scale independent of the temperature.
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2
