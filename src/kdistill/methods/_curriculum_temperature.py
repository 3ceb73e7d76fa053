"""CTKD's learnable temperature (Li et al., AAAI 2023, "Curriculum Temperature for Knowledge
Distillation"; reference zhengli97/CTKD `models/temp_global.py`, `train_student.py`): a temperature
trained to maximise the distillation loss the student minimises, through a gradient reversal whose
strength follows an easy-to-hard cosine curriculum over the first epochs."""

import math

import torch
from torch import Tensor, nn

from kdistill.config import MethodOptions


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `-strength`."""

    @staticmethod
    def forward(ctx, x: Tensor, strength: float) -> Tensor:
        ctx.strength = strength
        return x.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return -ctx.strength * grad, None


def reversal_strength(options: MethodOptions, epoch: int) -> float:
    """The reversal's lambda in distillation epoch `epoch` (from 1): the reference's CosineDecay,
    `start + (end - start) * (1 - cos(pi * min(epoch, E) / E)) / 2` over E = `reversal_epochs`
    (its CIFAR script: 0 -> 1 over 10 epochs, so lambda = 0.024 in epoch 1 and 1 from epoch 10)."""
    if options.reversal_epochs <= 0:
        return options.reversal_end
    progress = min(max(epoch, 0), options.reversal_epochs) / options.reversal_epochs
    rise = (1 - math.cos(math.pi * progress)) / 2
    return options.reversal_start + (options.reversal_end - options.reversal_start) * rise


class CurriculumTemperature(nn.Module):
    """T = `temperature_min + temperature_range * sigmoid(raw)`, with the gradient reaching `raw`
    reversed and scaled by the curriculum's lambda.

    Global (the reference's Global_T): `raw` is one parameter, initialised to 1 as the reference
    does (T = 1 + 20 sigmoid(1) = 15.6 at the start); the temperature is a 0-dim tensor.
    Instance-wise (`instance_temperature`): `raw` is a 2-layer MLP of the concatenated teacher and
    student logits of each sample (the paper's instance-wise module; detached: the module learns
    only through its own reversed gradient), a [B, 1] tensor.
    """

    def __init__(self, options: MethodOptions, num_classes: int, hidden: int = 256):
        super().__init__()
        self.minimum, self.range = options.temperature_min, options.temperature_range
        if options.instance_temperature:
            self.raw = None
            self.mlp = nn.Sequential(nn.Linear(2 * num_classes, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        else:
            self.raw = nn.Parameter(torch.ones(1))
            self.mlp = None

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, strength: float) -> Tensor:
        if self.mlp is None:
            raw = self.raw.reshape(())
        else:
            inputs = torch.cat([teacher_logits.detach(), student_logits.detach()], dim=1)
            raw = self.mlp(inputs.float()).float()
        return self.minimum + self.range * torch.sigmoid(_ReverseGradient.apply(raw, strength))
