"""PKT (Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge
Transfer"): the student's cosine-kernel neighbour distributions over the batch match the teacher's
(`kdistill.losses.pkt_loss`)."""


from kdistill.data import Batch
from kdistill.losses import pkt_loss
from kdistill.methods.base import Distiller, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import Features


@register_method("pkt")
class PKT(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 30000`. On the pooled features; their
    dimensions may differ."""

    paper = 'Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer"'
    offers_kd_variant = True
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 30000.0}

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        return Terms({"pkt": pkt_loss(student.pooled, teacher.pooled)})
