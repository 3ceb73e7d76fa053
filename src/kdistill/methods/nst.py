"""NST (Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer"):
squared MMD with a polynomial kernel between the student's and the teacher's normalised channel
maps at every intermediate stage (`kdistill.losses.nst_loss`)."""


from kdistill.data import Batch
from kdistill.losses import nst_loss
from kdistill.methods._feature_pairs import intermediate_maps, stage_pairs
from kdistill.methods.base import Distiller, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import Features


@register_method("nst")
class NST(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 50`.

    Summed over the stage outputs after the stem, paired from the shallowest (a network's extra
    deeper stages are left out); the larger map of a pair is pooled to the smaller size.
    """

    paper = 'Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer"'
    offers_kd_variant = True
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 50.0}

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        pairs = stage_pairs(intermediate_maps(student), intermediate_maps(teacher))
        return Terms({"nst": sum(nst_loss(s, t) for s, t in pairs)})
