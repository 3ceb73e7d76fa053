"""SP (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation"): the student's batch
similarity matrix of its last stage map matches the teacher's (`kdistill.losses.sp_loss`)."""


from kdistill.data import Batch
from kdistill.losses import sp_loss
from kdistill.methods.base import Distiller, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import Features


@register_method("sp")
class SP(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 3000`. On the last stage's map (the
    benchmark's `feat[-2]`); the two maps' shapes may differ, only the `B x B` matrices meet."""

    paper = 'Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation"'
    offers_kd_variant = True
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 3000.0}

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        return Terms({"sp": sp_loss(student.stages[-1], teacher.stages[-1])})
