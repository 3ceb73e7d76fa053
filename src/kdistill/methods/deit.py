"""Touvron et al., ICML 2021, "Training data-efficient image transformers & distillation through
attention" (DeiT): a ViT student with a distillation token, whose head learns from the teacher
while the class token's head learns from the labels (`kdistill.losses.deit_distillation_loss`)."""

import enum
from dataclasses import dataclass

import torch.nn.functional as F

from kdistill.data import Batch
from kdistill.errors import KdistillError
from kdistill.losses import deit_distillation_loss
from kdistill.methods.base import LOGITS_AND_POOLED, Distiller, DistillOutput, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel

DEIT_TERM = "deit"


class DeiTTarget(enum.StrEnum):
    hard = "hard"  # cross-entropy with the teacher's top class
    soft = "soft"  # KL to the teacher's softened distribution at `temperature`


@dataclass(frozen=True)
class DeiTOptions(MethodOptions):
    distillation: DeiTTarget = DeiTTarget.hard
    temperature: float = 1.0  # DeiT's tau, of the soft target
    # Of the class head's cross-entropy with the labels: DeiT's 0.1 (its main.py without mixup; 0: none).
    label_smoothing: float = 0.1

    def __post_init__(self):
        if not 0.0 <= self.label_smoothing < 1.0:
            raise KdistillError(f"method.label_smoothing={self.label_smoothing} is outside [0, 1): "
                                "use DeiT's 0.1, or 0 for none")


@register_method("deit")
class DeiT(Distiller):
    """Loss = `w_ce * CE(class head, labels) + w_method * L(distillation head, teacher)` with
    DeiT's alpha 0.5: `w_ce = w_method = 0.5` (its `(1 - alpha) * base + alpha * distillation`).
    L is the hard (the teacher's argmax as the label, DeiT's best) or the soft target
    (`method.distillation=soft`, tau = `temperature` 1). The CE has DeiT's label smoothing
    (`label_smoothing` 0.1: torch's `cross_entropy(label_smoothing=)`, which is what DeiT's timm
    `LabelSmoothingCrossEntropy` computes). The student must be a DeiT distilled
    ViT (`timm:deit_*_distilled_*`); its logits, in training and every evaluation and export, are
    the mean of the two heads', as DeiT evaluates.
    """

    paper = 'Touvron et al. 2021, "Training data-efficient image transformers & distillation through attention"'
    Options = DeiTOptions
    default_weights = {"w_ce": 0.5, "w_kd": 0.0, "w_method": 0.5}
    matches_logits = True  # the soft target compares logits (standardisation and CTKD reach it)
    teacher_reads = LOGITS_AND_POOLED  # so a teacher cache serves it

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, options: DeiTOptions,
                 context: MethodContext):
        if not student.has_distillation_token:
            raise KdistillError(f"method deit needs a student with a distillation token, not {type(student).__name__}"
                                ": use a timm DeiT distilled ViT, e.g. student=timm:deit_tiny_distilled_patch16_224")
        if options.w_kd:
            raise KdistillError("method deit has no KD term (its distillation head learns from the teacher): "
                                "drop method.w_kd")
        if options.distillation is DeiTTarget.hard and (options.logit_standardize or options.curriculum_temperature):
            raise KdistillError("method.logit_standardize and method.curriculum_temperature act on the soft target "
                                "only: set method.distillation=soft or drop them")
        super().__init__(student, teacher, options, context)

    def distill(self, batch: Batch) -> DistillOutput:
        student, class_logits, distillation_logits = self.student.extract_heads(batch["image"])
        teacher = self.teacher_view(batch)
        options = self.options
        soft = options.distillation is DeiTTarget.soft
        temperature = self.logit_temperature(distillation_logits, teacher.logits)
        losses = {"ce": F.cross_entropy(class_logits, batch["label"], label_smoothing=options.label_smoothing),
                  DEIT_TERM: deit_distillation_loss(distillation_logits, teacher.logits, soft, temperature,
                                                    options.logit_standardize)}
        extras = self.temperature_extras(distillation_logits, teacher.logits)
        return self.output(student.logits, Terms(losses, extras))
