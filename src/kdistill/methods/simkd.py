"""SimKD (Chen et al. 2022, "Knowledge Distillation with the Reused Teacher Classifier"): the
student's last stage map goes through a bottleneck projector onto the teacher's last map (feature
MSE, `kdistill.losses.simkd_loss`), and the student predicts through the teacher's frozen
classifier. The deployed student is that whole path (`ReusedClassifierStudent`): every evaluation
and export loads it, never the student's own head.

Defaults as the reference code's CIFAR recipe (DefangChen/SimKD; giakoumoglou/distillers
imagenet/): projector factor 2, `-c 0 -d 0 -b 1` (no CE, no KD, feature MSE weight 1)."""

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.data import Batch
from kdistill.errors import KdistillError
from kdistill.losses import simkd_loss
from kdistill.methods._feature_pairs import pair_name, reused_classifier_name
from kdistill.methods.base import Distiller, DistillOutput, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features
from kdistill.models.checkpoint import classifier_name


@dataclass(frozen=True)
class SimKDOptions(MethodOptions):
    factor: int = 2  # the projector's bottleneck: teacher channels // factor


class SimKDProjector(nn.Module):
    """The paper's projector: 1x1 conv to `C_t // factor`, 3x3 conv, 1x1 conv to `C_t`, each with
    BN and ReLU (no conv bias). A student map larger than the teacher's is first average-pooled to
    the teacher's size (`pooled_size`), as the reference aligns them."""

    def __init__(self, student_channels: int, teacher_channels: int, factor: int,
                 pooled_size: tuple[int, int] | None):
        super().__init__()
        middle = teacher_channels // factor
        self.pooled_size = pooled_size
        self.layers = nn.Sequential(
            nn.Conv2d(student_channels, middle, kernel_size=1, bias=False), nn.BatchNorm2d(middle),
            nn.ReLU(inplace=True),
            nn.Conv2d(middle, middle, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(middle),
            nn.ReLU(inplace=True),
            nn.Conv2d(middle, teacher_channels, kernel_size=1, bias=False), nn.BatchNorm2d(teacher_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, student_map: Tensor) -> Tensor:
        if self.pooled_size is not None:
            student_map = F.adaptive_avg_pool2d(student_map, self.pooled_size)
        return self.layers(student_map)


def predict_through(classifier: nn.Module, projected: Tensor) -> tuple[Tensor, Tensor]:
    """(logits, pooled feature) of a projected map: global average pool, then the teacher's classifier."""
    pooled = projected.mean(dim=(2, 3))
    return classifier(pooled), pooled


class ReusedClassifierStudent(FeatureModel):
    """SimKD's deployed student: the student's backbone, the projector and the teacher's classifier.
    Its pooled feature is the projected map's (the classifier's input); its stages are the backbone's."""

    def __init__(self, backbone: FeatureModel, projector: SimKDProjector, classifier: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.classifier = classifier
        self.num_classes = classifier.out_features

    def extract(self, x: Tensor, preact: bool = False) -> Features:
        features = self.backbone.extract(x, preact=preact)
        logits, pooled = predict_through(self.classifier, self.projector(features.stages[-1]))
        return Features(logits, features.stages, pooled, features.preact)


@register_method("simkd")
class SimKD(Distiller):
    """Weights: `w_ce = 0`, `w_kd = 0`, `w_method = 1` (the reference's CIFAR and ImageNet runs).
    CE and KD, when weighted on, read the student's own head, as the reference computes them; with
    both off that head is unused and frozen (the deployed student predicts through the teacher's)."""

    paper = 'Chen et al. 2022, "Knowledge Distillation with the Reused Teacher Classifier"'
    Options = SimKDOptions
    default_weights = {"w_ce": 0.0, "w_kd": 0.0, "w_method": 1.0}
    teacher_reads = frozenset({"logits", "stages"})
    deploys_composite = True

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: SimKDOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        pair = pair_name(student, teacher)
        if options.factor < 1:
            raise KdistillError(f"method simkd: factor={options.factor} must be a positive integer (the paper uses 2)")
        _, s_channels, s_height, s_width = context.student_shapes.stages[-1].shape
        _, t_channels, t_height, t_width = context.teacher_shapes.stages[-1].shape
        self.classifier_name = reused_classifier_name(teacher, t_channels, "simkd", pair)
        if t_channels // options.factor < 1:
            raise KdistillError(f"method simkd, {pair}: factor={options.factor} leaves no channel of the teacher's "
                                f"{t_channels}; lower method.factor")
        pooled_size = (t_height, t_width) if s_height > t_height else None
        self.projector = SimKDProjector(s_channels, t_channels, options.factor, pooled_size)
        own_head = classifier_name(student)
        if own_head is not None and not (self.weights["w_ce"] or self.weights["w_kd"]):
            student.get_submodule(own_head).requires_grad_(False)

    def teacher_classifier(self) -> nn.Module:
        return self.teacher.get_submodule(self.classifier_name)

    def deployed_student(self) -> FeatureModel:
        return ReusedClassifierStudent(self.student, self.projector, self.teacher_classifier())

    def distill(self, batch: Batch) -> DistillOutput:
        student = self.student.extract(batch["image"])
        teacher = self.teacher_view(batch)
        projected = self.projector(student.stages[-1])
        logits, _ = predict_through(self.teacher_classifier(), projected)
        losses = self.supervised_terms(student, teacher, batch["label"])
        losses["simkd"] = simkd_loss(projected, teacher.stages[-1])
        return self.output(logits, Terms(losses))
