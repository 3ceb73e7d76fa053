"""SP (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation"): the student's batch
similarity matrix of its last stage map matches the teacher's (`kdistill.losses.sp_loss`)."""

from torch import Tensor

from kdistill.losses import sp_loss
from kdistill.methods import METHODS
from kdistill.methods.base import Distiller
from kdistill.models.base import Features


@METHODS.register("sp")
class SP(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 3000`. On the last stage's map (the
    benchmark's `feat[-2]`); the two maps' shapes may differ, only the `B x B` matrices meet."""

    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 3000.0}

    def method_terms(self, student: Features, teacher: Features, batch: dict[str, Tensor],
                     extras: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"sp": sp_loss(student.stages[-1], teacher.stages[-1])}
