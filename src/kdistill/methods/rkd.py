"""RKD (Park et al. 2019, "Relational Knowledge Distillation"): distance and angle relations among
the batch's pooled features (`kdistill.losses.rkd_loss`)."""

from dataclasses import dataclass

from kdistill.data import Batch
from kdistill.losses import rkd_loss
from kdistill.methods.base import Distiller, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import Features


@dataclass(frozen=True)
class RKDOptions(MethodOptions):
    distance_weight: float = 25.0
    angle_weight: float = 50.0


@register_method("rkd")
class RKD(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 1` (times distance 25 and angle 50 inside
    the term). On the pooled features; their dimensions may differ."""

    paper = 'Park et al. 2019, "Relational Knowledge Distillation"'
    offers_kd_variant = True
    Options = RKDOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        options = self.options
        return Terms({"rkd": rkd_loss(student.pooled, teacher.pooled, options.distance_weight, options.angle_weight)})
