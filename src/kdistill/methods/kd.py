"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network": match softened teacher logits."""

from kdistill.methods.base import Distiller
from kdistill.methods.registry import register_method


@register_method("kd")
class KD(Distiller):
    """CE + KD with the tables' weights `w_ce = 0.1`, `w_kd = 0.9`, T = 4 (`kdistill.losses.kd_loss`)."""

    default_weights = {"w_ce": 0.1, "w_kd": 0.9, "w_method": 0.0}
