"""Zhao et al., CVPR 2022, "Decoupled Knowledge Distillation": KD split into a target-class term
(TCKD) and a non-target-class term (NCKD), weighted separately (`kdistill.losses.dkd_loss`)."""

from dataclasses import dataclass

from kdistill.data import Batch
from kdistill.losses import dkd_loss
from kdistill.methods._warmup import LinearWarmup
from kdistill.methods.base import LOGITS_AND_POOLED, Distiller, MethodOptions, Terms
from kdistill.methods.registry import register_method, with_curriculum_temperature, with_logit_standardization
from kdistill.models.base import Features

DKD_TERM = "dkd"


@dataclass(frozen=True)
class DKDOptions(MethodOptions):
    # `temperature` (of MethodOptions, 4.0) is DKD's T.
    alpha: float = 1.0  # weight of TCKD
    beta: float = 8.0  # weight of NCKD (mdistiller's recipes: 2, 6 or 8 by pair)
    warmup: int = 20  # epochs over which the DKD term's weight rises linearly to w_method (0: none)


@register_method("dkd")
class DKD(LinearWarmup, Distiller):
    """Loss = `w_ce * CE + min(epoch / warmup, 1) * w_method * (alpha * TCKD + beta * NCKD)`,
    epoch counted from 1 (mdistiller's `kwargs["epoch"]`), table defaults `w_ce = 1`,
    `w_method = 1`, T = 4, alpha 1, beta 8, warm-up 20 epochs. The warm-up is part of the "dkd"
    term's weight, so the logged "dkd" is the unscaled loss; "dkd_warmup" logs the factor.
    `dkd+ls`: with logit standardisation and the LS code's settings (T 2, alpha and beta times 9).
    `dkd+ctkd`: with CTKD's learned temperature, warm-up and beta kept.
    """

    paper = 'Zhao et al. 2022, "Decoupled Knowledge Distillation"'
    Options = DKDOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}
    matches_logits = True
    teacher_reads = LOGITS_AND_POOLED  # so a teacher cache serves it
    accepts_topk_teacher = True
    warmup_term = DKD_TERM

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        options = self.options
        parts = dkd_loss(student.logits, teacher.logits, batch["label"], options.alpha, options.beta,
                         self.logit_temperature(student.logits, teacher.logits), options.logit_standardize)
        extras = {"dkd_tckd": parts["tckd"].detach(), "dkd_nckd": parts["nckd"].detach(),
                  "dkd_warmup": parts["total"].new_tensor(self.warmup_factor())}
        return Terms({DKD_TERM: parts["total"]}, extras)


# The LS code's DKD recipe (its tools/train.py with --logit-stand --base-temp 2 --kd-weight 9):
# alpha and beta each times the KD weight 9, T = 2; recipes scale the pair's beta likewise.
register_method("dkd+ls")(with_logit_standardization(DKD, {}, temperature=2.0, alpha=9.0, beta=72.0))
# CTKD (Li et al., AAAI 2023): the temperature learned adversarially with its curriculum.
register_method("dkd+ctkd")(with_curriculum_temperature(DKD))
