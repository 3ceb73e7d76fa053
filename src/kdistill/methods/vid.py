"""VID (Ahn et al. 2019, "Variational Information Distillation for Knowledge Transfer"): at every
intermediate stage, a regressor predicts the mean of a Gaussian over the teacher's map from the
student's map, with a learned variance per teacher channel; the term is the teacher map's negative
log-likelihood (`kdistill.losses.vid_loss`)."""

import math
from dataclasses import dataclass

import torch
from torch import nn

from kdistill.data import Batch
from kdistill.losses import vid_loss
from kdistill.losses.feature import pool_to_common_size
from kdistill.methods._feature_pairs import intermediate_maps, stage_pairs
from kdistill.methods.base import Distiller, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@dataclass(frozen=True)
class VIDOptions(MethodOptions):
    init_variance: float = 5.0
    eps: float = 1e-5  # variance floor


def _regressor(in_channels: int, out_channels: int) -> nn.Sequential:
    """Three 1x1 convs with ReLUs between, as wide as the teacher's map (the authors' regressor)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1, bias=False),
    )


@register_method("vid")
class VID(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 1`.

    Summed over the stage outputs after the stem, paired from the shallowest (a network's extra
    deeper stages are left out). The larger map of a pair is pooled to the smaller size before
    the regressor. The regressors and variances train with the student.
    """

    paper = 'Ahn et al. 2019, "Variational Information Distillation for Knowledge Transfer"'
    offers_kd_variant = True
    Options = VIDOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: VIDOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        pairs = stage_pairs(intermediate_maps(context.student_shapes),
                            intermediate_maps(context.teacher_shapes))
        self.regressors = nn.ModuleList(_regressor(s.shape[1], t.shape[1]) for s, t in pairs)
        # softplus(raw) + eps = init_variance at the start.
        raw_init = math.log(math.expm1(options.init_variance - options.eps))
        self.raw_variances = nn.ParameterList(nn.Parameter(torch.full((t.shape[1],), raw_init)) for _, t in pairs)

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        terms = []
        pairs = stage_pairs(intermediate_maps(student), intermediate_maps(teacher))
        for (s, t), regressor, raw_variance in zip(pairs, self.regressors, self.raw_variances):
            s, t = pool_to_common_size(s, t)
            terms.append(vid_loss(regressor(s), t, raw_variance, self.options.eps))
        return Terms({"vid": sum(terms)})
