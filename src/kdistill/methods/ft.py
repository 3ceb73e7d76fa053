"""FT (Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor Transfer"):
a paraphraser compresses the teacher's last stage map into a factor; a translator maps the
student's last stage map to a factor of the same width, which matches the teacher's
(`kdistill.losses.ft_loss`).

As in the benchmark, an initialisation stage (`init_epochs`, 30 by default) first trains the
paraphraser alone to reconstruct the teacher's map (mean squared error), at a constant learning
rate `init_lr` (default: the run's learning rate; the benchmark's 0.01 for CIFAR ResNet and WRN
students is in their recipes). During distillation the paraphraser is frozen: it is evaluated without gradient, so the
optimizer never changes it; the translator trains with the student.
"""

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.data import Batch
from kdistill.losses import ReferenceForm, ft_loss
from kdistill.methods._feature_pairs import InitStageOptions
from kdistill.methods.base import Distiller, InitPhase, MethodContext, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@dataclass(frozen=True)
class FTOptions(InitStageOptions):
    rate: float = 0.5  # factor channels = int(rate * teacher channels), the paper's k
    form: ReferenceForm = ReferenceForm.benchmark  # the factor distance (see kdistill.losses.ft_loss)


def _conv_stack(channels: list[int], conv: type[nn.Module], batch_norm: bool) -> nn.Sequential:
    """3x3 (transposed) convs of stride 1 through `channels`, each followed by (BN and) LeakyReLU(0.1)."""
    layers = []
    for in_channels, out_channels in itertools.pairwise(channels):
        layers.append(conv(in_channels, out_channels, kernel_size=3, stride=1, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        layers.append(nn.LeakyReLU(0.1, inplace=True))
    return nn.Sequential(*layers)


class Paraphraser(nn.Module):
    """Encoder to the factor and decoder back to the teacher's map, without BN (the benchmark's)."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        self.encoder = _conv_stack([channels, channels, factor_channels, factor_channels], nn.Conv2d, batch_norm=False)
        self.decoder = _conv_stack([factor_channels, factor_channels, channels, channels], nn.ConvTranspose2d,
                                   batch_norm=False)


@register_method("ft")
class FT(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 200`. On the last stage's maps (the
    benchmark's `feat[-2]`); the larger factor is pooled to the smaller size."""

    paper = 'Kim et al. 2018, "Paraphrasing Complex Network: Network Compression via Factor Transfer"'
    offers_kd_variant = True
    Options = FTOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 200.0}

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: FTOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        student_channels = context.student_shapes.stages[-1].shape[1]
        teacher_channels = context.teacher_shapes.stages[-1].shape[1]
        factor_channels = int(teacher_channels * options.rate)
        self.paraphraser = Paraphraser(teacher_channels, factor_channels)
        self.translator = _conv_stack([student_channels, student_channels, factor_channels, factor_channels],
                                      nn.Conv2d, batch_norm=True)
        self.init_lr = context.lr if options.init_lr is None else options.init_lr

    def init_phase(self) -> InitPhase:
        return InitPhase(self.options.init_epochs, list(self.paraphraser.parameters()), self.init_lr)

    def init_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        target = self.teacher_features(batch["image"]).stages[-1]
        reconstruction = self.paraphraser.decoder(self.paraphraser.encoder(target))
        return {"ft_reconstruction": F.mse_loss(reconstruction.float(), target.float())}

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        with torch.no_grad():
            teacher_factor = self.paraphraser.encoder(teacher.stages[-1])
        return Terms({"ft": ft_loss(self.translator(student.stages[-1]), teacher_factor, self.options.form)})
