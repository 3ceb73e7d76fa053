"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network": match softened teacher logits."""

from kdistill.methods.base import LOGITS_AND_POOLED, Distiller
from kdistill.methods.registry import KD_PAPER, register_method, with_curriculum_temperature, with_logit_standardization


@register_method("kd")
class KD(Distiller):
    """CE + KD with the tables' weights `w_ce = 0.1`, `w_kd = 0.9`, T = 4 (`kdistill.losses.kd_loss`).
    `kd+ls`: with logit standardisation and the LS paper's settings (T 2, `w_kd` 9, `w_ce` 0.1).
    `kd+ctkd`: with CTKD's learned temperature (`Distiller.logit_temperature`)."""

    paper = KD_PAPER
    default_weights = {"w_ce": 0.1, "w_kd": 0.9, "w_method": 0.0}
    matches_logits = True
    teacher_reads = LOGITS_AND_POOLED
    accepts_topk_teacher = True


# The LS paper's KD recipe: base temperature 2, KD weight 9, CE weight 0.1.
register_method("kd+ls")(with_logit_standardization(KD, {"w_ce": 0.1, "w_kd": 9.0}, temperature=2.0))
# CTKD (Li et al., AAAI 2023): the temperature learned adversarially with its curriculum.
register_method("kd+ctkd")(with_curriculum_temperature(KD))
