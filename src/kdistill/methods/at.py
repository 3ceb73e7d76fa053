"""AT (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"): the student's spatial
attention maps match the teacher's at every intermediate stage (`kdistill.losses.at_loss`)."""

from dataclasses import dataclass

from kdistill.data import Batch
from kdistill.losses import at_loss
from kdistill.methods._feature_pairs import intermediate_maps, stage_pairs
from kdistill.methods.base import Distiller, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import Features


@dataclass(frozen=True)
class ATOptions(MethodOptions):
    p: float = 2.0  # power of the activations in the attention map


@register_method("at")
class AT(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 1000`.

    Summed over the stage outputs after the stem, paired from the shallowest (a network's extra
    deeper stages are left out); the larger map of a pair is pooled to the smaller size.
    """

    paper = ('Zagoruyko & Komodakis 2017, "Paying More Attention to Attention: Improving the Performance of '
             'Convolutional Neural Networks via Attention Transfer"')
    offers_kd_variant = True
    Options = ATOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1000.0}

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        pairs = stage_pairs(intermediate_maps(student), intermediate_maps(teacher))
        return Terms({"at": sum(at_loss(s, t, self.options.p) for s, t in pairs)})
