"""Jin et al., CVPR 2023, "Multi-Level Logit Distillation": instance-, class- and batch-level
alignment of teacher and student predictions at several temperatures, on a weak and a strong view
of every image (`kdistill.losses.mlkd_loss`)."""

from dataclasses import dataclass, field

from kdistill.data import Batch
from kdistill.losses import mlkd_loss
from kdistill.methods.base import LOGITS_AND_POOLED, DistillOutput, MethodOptions, Terms, TwoViewDistiller
from kdistill.methods.registry import register_method


@dataclass(frozen=True)
class MLKDOptions(MethodOptions):
    # `temperature` (of MethodOptions, 4.0) is the first of the temperatures; these are the others.
    extra_temperatures: list[float] = field(default_factory=lambda: [3.0, 5.0, 2.0, 6.0])


@register_method("mlkd")
class MLKD(TwoViewDistiller):
    """Loss = `w_ce * (CE(weak) + CE(strong)) + w_method * (instance + class_level + batch_level)`
    with the reference's weights `w_ce = 0.1`, `w_method = 0.9` (its CE and KD weights) and
    temperatures {T, 3, 5, 2, 6}, T = 4. The reference's KD weight multiplies all three levels,
    so here they are the method's terms ("mlkd_instance", "mlkd_class", "mlkd_batch"); the
    fractions of samples and classes its masks keep are logged. With `logit_standardize`, the
    instance level runs on z-scored logits (the LS paper's MLKD; its recipe: T 2, `w_method` 9).

    Needs batches with "image_strong" (`needs_strong_view`). The student and the teacher see
    the views in separate passes; the returned logits are the student's on the weak view.
    """

    paper = 'Jin et al. 2023, "Multi-Level Logit Distillation"'
    Options = MLKDOptions
    default_weights = {"w_ce": 0.1, "w_kd": 0.0, "w_method": 0.9}
    matches_logits = True
    teacher_reads = LOGITS_AND_POOLED  # so a teacher cache (both views) serves it
    accepts_topk_teacher = True

    def distill(self, batch: Batch) -> DistillOutput:
        views, options = self.two_views(batch), self.options
        student = views.student
        temperature = self.logit_temperature(student.logits, views.teacher.logits)
        parts = mlkd_loss(student.logits, views.student_strong, views.teacher.logits, views.teacher_strong.logits,
                          batch["label"], (temperature, *options.extra_temperatures), options.logit_standardize)
        losses = self.two_view_terms(views, parts["ce"])
        losses.update({"mlkd_instance": parts["instance"], "mlkd_class": parts["class_level"],
                       "mlkd_batch": parts["batch_level"]})
        extras = {"mlkd_samples_kept": parts["sample_mask"].float().mean(),
                  "mlkd_classes_kept": parts["class_mask"].float().mean(),
                  **self.temperature_extras(student.logits, views.teacher.logits)}
        return self.output(student.logits, Terms(losses, extras))
