"""ICD / DCD: "Invariant Consistency for Knowledge Distillation", later "Discriminative and
Consistent Representation Distillation". A contrastive loss between projected student and teacher
embeddings with a learnable scale (and bias), plus a KL consistency term (`kdistill.losses.dcd_loss`).
"""

from dataclasses import dataclass

import torch
from torch import nn

from kdistill.data import Batch
from kdistill.distributed import gather_with_grad
from kdistill.losses import ContrastiveForm, dcd_loss
from kdistill.methods.base import (
    LOGITS_AND_POOLED,
    Distiller,
    MethodContext,
    MethodOptions,
    Terms,
    check_feature_source,
    embedding_source,
    embedding_width,
    reads_of_feature,
)
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@dataclass(frozen=True)
class DCDOptions(MethodOptions):
    proj_dim: int = 128
    learn_scale: bool = True
    # log of the initial scale (a multiplier, i.e. an inverse temperature): exp(1) = 2.718.
    log_scale_init: float = 1.0
    max_scale: float = 10.0
    # With learn_scale=false the scale is fixed to 1/temperature. The reference code sets the
    # multiplier itself to 0.07 in that mode, which looks like a slip; we use 1/0.07.
    fixed_temperature: float = 0.07
    consistency_weight: float = 0.5
    form: ContrastiveForm = ContrastiveForm.softmax  # sigmoid: pairwise sigmoid terms, where the bias matters
    student_feature: str = "pooled"  # "pooled" or a stage index (that map averaged over space)
    teacher_feature: str = "pooled"
    gather_negatives: bool = True  # under torch.distributed, contrast against the global batch

    def __post_init__(self):
        check_feature_source(self.student_feature, "method.student_feature")
        check_feature_source(self.teacher_feature, "method.teacher_feature")


@register_method("dcd", "icd")
class DCD(Distiller):
    """Table weights: `w_ce = 1`, `w_method = 1`, `w_kd = 0` (`dcd`) or 1 (`dcd+kd`, T = 4).

    Negatives are the other samples of the batch (no memory bank). The reference code sees only
    the local batch under data parallelism; by default we gather student and teacher embeddings
    from every rank so the task is the single-device one (`gather_negatives`).
    """

    paper = ('"Invariant Consistency for Knowledge Distillation", later "Discriminative and Consistent '
             'Representation Distillation"')
    offers_kd_variant = True
    Options = DCDOptions
    teacher_reads = LOGITS_AND_POOLED
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}

    @classmethod
    def teacher_reads_for(cls, options: DCDOptions) -> frozenset[str]:
        return cls.teacher_reads | reads_of_feature(options.teacher_feature)

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: DCDOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        self.embed_s = nn.Linear(embedding_width(context.student_shapes, options.student_feature), options.proj_dim)
        self.embed_t = nn.Linear(embedding_width(context.teacher_shapes, options.teacher_feature), options.proj_dim)
        # Both scalars are trained with the student and get the same weight decay (as in the paper's code).
        self.log_scale = nn.Parameter(torch.tensor(options.log_scale_init), requires_grad=options.learn_scale)
        self.bias = nn.Parameter(torch.tensor(0.0))

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        z_s = self.embed_s(embedding_source(student, self.options.student_feature))
        z_t = self.embed_t(embedding_source(teacher, self.options.teacher_feature))
        if self.options.gather_negatives:
            z_s, z_t = gather_with_grad(z_s), gather_with_grad(z_t)
        fixed_scale = None if self.options.learn_scale else 1.0 / self.options.fixed_temperature
        parts = dcd_loss(z_s, z_t, self.log_scale, self.bias, self.options.consistency_weight,
                         self.options.max_scale, self.options.form, scale=fixed_scale)
        return Terms({"dcd": parts["total"]}, extras={"dcd_contrastive": parts["contrastive"].detach(),
                                                     "dcd_consistency": parts["consistency"].detach()})
