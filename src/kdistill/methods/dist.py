"""Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher" (DIST): the
student matches the Pearson correlations of the teacher's predictions within each sample
(inter-class) and within each class across the batch (intra-class) (`kdistill.losses.dist_loss`)."""

from dataclasses import dataclass

from kdistill.data import Batch
from kdistill.losses import dist_loss, standardize_logits
from kdistill.methods.base import LOGITS_AND_POOLED, Distiller, MethodOptions, Terms
from kdistill.methods.registry import register_method, with_curriculum_temperature
from kdistill.models.base import Features

DIST_TERM = "dist"


@dataclass(frozen=True)
class DISTOptions(MethodOptions):
    # `temperature` (of MethodOptions, 4.0) is DIST's tau (CIFAR 4, ImageNet 1).
    beta: float = 2.0  # weight of the inter-class relation
    gamma: float = 2.0  # weight of the intra-class relation


@register_method("dist")
class DIST(Distiller):
    """Loss = `w_ce * CE + w_method * T^2 * (beta * inter + gamma * intra)` with the reference's
    CIFAR settings: `w_ce = 1`, beta = gamma = 2, T = 4 (its `dist_t4` loss, beta = gamma = 1,
    under KD weight 2). `dist+kd` adds Hinton's KD term (`w_kd` 1). With `logit_standardize`,
    both sides' logits are z-scored before the softmax, as for KD and DKD. `dist+ctkd`: with
    CTKD's learned temperature.
    """

    paper = 'Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher"'
    Options = DISTOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}
    matches_logits = True
    offers_kd_variant = True
    teacher_reads = LOGITS_AND_POOLED  # so a teacher cache serves it
    accepts_topk_teacher = True

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        options = self.options
        temperature = self.logit_temperature(student.logits, teacher.logits)
        logits_s, logits_t = student.logits, teacher.logits
        if options.logit_standardize:
            logits_s, logits_t = standardize_logits(logits_s.float()), standardize_logits(logits_t.float())
        return Terms({DIST_TERM: dist_loss(logits_s, logits_t, options.beta, options.gamma, temperature)})
# CTKD (Li et al., AAAI 2023): the temperature learned adversarially with its curriculum.
register_method("dist+ctkd")(with_curriculum_temperature(DIST))
