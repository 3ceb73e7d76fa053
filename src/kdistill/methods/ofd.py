"""OFD (Heo et al., ICCV 2019, "A Comprehensive Overhaul of Feature Distillation"), as mdistiller's
`distillers/OFD.py` implements it: the student's pre-ReLU stage maps, through a conv + BN connector
to the teacher's channels, approach the teacher's pre-ReLU maps under the partial L2 distance
(`kdistill.losses.ofd_loss`), with per-channel margins read off the teacher's batch norms before
each stage's ReLU (`kdistill.losses.ofd_margin`).
"""

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.data import Batch
from kdistill.losses import ofd_loss, ofd_margin
from kdistill.methods._feature_pairs import intermediate_maps
from kdistill.methods.base import LOGITS_AND_POOLED, Distiller, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@dataclass(frozen=True)
class OFDOptions(MethodOptions):
    connector_kernel_size: int = 1  # mdistiller's OFD.CONNECTOR.KERNEL_SIZE


def connector(student_channels: int, teacher_channels: int, kernel_size: int) -> nn.Sequential:
    """Conv (no bias, He-normal over fan-out as mdistiller initialises it) + BN to the teacher's channels."""
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * teacher_channels)))
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_channels))


@register_method("ofd")
class OFD(Distiller):
    """Loss = `w_ce * CE + w_method * sum_i ofd_loss(connector_i(s_i), pool(t_i), margin_i) / 2^(L-1-i)`
    over the `L` deepest stages both networks have (mdistiller's `_align_list`), shallow to deep, the
    teacher's map average-pooled to the student's size; mdistiller's CIFAR-100 weights `w_ce = 1`,
    `w_method = 0.001`."""

    paper = 'Heo et al. 2019, "A Comprehensive Overhaul of Feature Distillation"'
    Options = OFDOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 0.001}
    needs_preact = True
    teacher_reads = LOGITS_AND_POOLED | {"preact"}

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: OFDOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        student_maps = intermediate_maps(context.student_shapes)
        teacher_maps = intermediate_maps(context.teacher_shapes)
        self.levels = min(len(student_maps), len(teacher_maps))
        pairs = zip(student_maps[-self.levels:], teacher_maps[-self.levels:])
        self.connectors = nn.ModuleList(connector(s.shape[1], t.shape[1], options.connector_kernel_size)
                                        for s, t in pairs)
        # Derived from the (already loaded) teacher at every build, so not saved with the run's state.
        for level, norm in enumerate(teacher.preact_batch_norms()[-self.levels:]):
            self.register_buffer(f"margin{level}", ofd_margin(norm.weight, norm.bias), persistent=False)

    def margins(self) -> list[Tensor]:
        return [getattr(self, f"margin{level}") for level in range(self.levels)]

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        student_maps = intermediate_maps(student, preact=True)[-self.levels:]
        teacher_maps = intermediate_maps(teacher, preact=True)[-self.levels:]
        loss = sum(ofd_loss(connect(s), F.adaptive_avg_pool2d(t, s.shape[-2:]), margin) / 2 ** (self.levels - 1 - i)
                   for i, (connect, s, t, margin) in enumerate(zip(self.connectors, student_maps, teacher_maps,
                                                                     self.margins())))
        return Terms({"ofd": loss})
