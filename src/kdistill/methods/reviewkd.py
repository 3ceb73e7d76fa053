"""ReviewKD (Chen et al., CVPR 2021, "Distilling Knowledge via Knowledge Review"), as mdistiller's
`distillers/ReviewKD.py` implements it: the student's stage maps and pooled feature, fused from the
deepest to the shallowest by attention-based fusion (ABF) blocks, each level then mapped to the
teacher's channels and size and compared with the teacher's pre-ReLU map of that level by the
hierarchical context loss (`kdistill.losses.hcl_loss`).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.data import Batch
from kdistill.errors import KdistillError
from kdistill.losses import hcl_loss
from kdistill.methods._feature_pairs import intermediate_maps, pair_name
from kdistill.methods._warmup import LinearWarmup
from kdistill.methods.base import LOGITS_AND_POOLED, Distiller, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features

REVIEWKD_TERM = "reviewkd"
MAX_MID_CHANNELS = 512  # the fusion width: the student's pooled width, at most this (mdistiller's min(512, .))


@dataclass(frozen=True)
class ReviewKDOptions(MethodOptions):
    warmup: int = 20  # epochs over which the ReviewKD term's weight rises linearly to w_method (0: none)


class AttentionFusion(nn.Module):
    """One ABF block: a 1x1 conv + BN to the fusion width; where a deeper level's fused map comes
    in, it is resized (nearest) to this level and the two are mixed by two attention maps (a 1x1
    conv + sigmoid over both); the result, resized (nearest) to the teacher's size where it differs,
    goes on to the shallower level and through a 3x3 conv + BN to the teacher's channels."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False),
                                    nn.BatchNorm2d(mid_channels))
        self.output = nn.Sequential(nn.Conv2d(mid_channels, out_channels, kernel_size=3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, kernel_size=1), nn.Sigmoid()) if fuse else None
        for conv in (self.reduce[0], self.output[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)

    def forward(self, x: Tensor, deeper: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(this level's output at the teacher's shape, the fused map handed to the shallower level)."""
        x = self.reduce(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, size=x.shape[-2:], mode="nearest")
            gates = self.attention(torch.cat([x, deeper], dim=1))
            x = x * gates[:, 0:1] + deeper * gates[:, 1:2]
        if tuple(x.shape[-2:]) != out_size:
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.output(x), x


def review_levels(features: Features, preact: bool = False) -> list[Tensor]:
    """The maps ReviewKD reviews, shallow to deep: the stage outputs after the stem (pre-ReLU with
    `preact`), then the pooled feature as a 1x1 map."""
    return [*intermediate_maps(features, preact), features.pooled[:, :, None, None]]


@register_method("reviewkd")
class ReviewKD(LinearWarmup, Distiller):
    """Loss = `w_ce * CE + min(epoch / warmup, 1) * w_method * hcl_loss(fused student, teacher)`,
    mdistiller's defaults `w_ce = 1`, `w_method = 1`, warm-up 20 epochs (the recipes carry the
    authors' per-pair `w_method`). The per-level channels and sizes (mdistiller's IN_CHANNELS,
    OUT_CHANNELS, SHAPES, OUT_SHAPES) are read off the two models: the student's stage outputs
    after the stem and its pooled feature in, the teacher's pre-ReLU stage outputs and pooled
    feature out; student and teacher need as many stages."""

    paper = 'Chen et al. 2021, "Distilling Knowledge via Knowledge Review"'
    Options = ReviewKDOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}
    needs_preact = True  # the teacher's pre-ReLU maps (the student's post-ReLU ones are compared)
    teacher_reads = LOGITS_AND_POOLED | {"preact"}
    warmup_term = REVIEWKD_TERM

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: ReviewKDOptions,
                 context: MethodContext):
        super().__init__(student, teacher, options, context)
        student_levels = review_levels(context.student_shapes)
        teacher_levels = review_levels(context.teacher_shapes)
        if len(student_levels) != len(teacher_levels):
            raise KdistillError(f"method reviewkd cannot distil {pair_name(student, teacher)}: it pairs stage by "
                                f"stage, the teacher has {len(teacher_levels) - 1} stages, the student "
                                f"{len(student_levels) - 1}; use a teacher and student with as many stages")
        mid_channels = min(MAX_MID_CHANNELS, student_levels[-1].shape[1])
        last = len(student_levels) - 1
        self.fusions = nn.ModuleList(AttentionFusion(s.shape[1], mid_channels, t.shape[1], fuse=level < last)
                                     for level, (s, t) in enumerate(zip(student_levels, teacher_levels)))
        self.out_sizes = [tuple(t.shape[-2:]) for t in teacher_levels]

    def review(self, student_levels: list[Tensor]) -> list[Tensor]:
        """The fused student maps, shallow to deep, each at its teacher level's shape."""
        outputs, deeper = [], None
        for fusion, x, size in reversed(list(zip(self.fusions, student_levels, self.out_sizes))):
            out, deeper = fusion(x, deeper, size)
            outputs.append(out)
        return outputs[::-1]

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        fused = self.review(review_levels(student))
        loss = hcl_loss(fused, review_levels(teacher, preact=True))
        return Terms({REVIEWKD_TERM: loss}, {"reviewkd_warmup": loss.new_tensor(self.warmup_factor())})
