"""SRRL (Yang et al., ICLR 2021, "Knowledge Distillation via Softmax Regression Representation
Learning"): the student's pooled feature through a connector (1x1 conv, BN, ReLU) regresses the
teacher's pooled feature, and the teacher's frozen classifier applied to it regresses the teacher's
logits (`kdistill.losses.srrl_loss`). The student keeps its own head for prediction.

Defaults as the reference code (giakoumoglou/distillers imagenet/, from DefangChen/SimKD) runs it
on CIFAR-100: `-c 1 -d 1 -b 1` (CE 1, KD 1 at T 4, SRRL 1)."""

from torch import nn

from kdistill.data import Batch
from kdistill.losses import srrl_loss
from kdistill.methods._feature_pairs import pair_name, reused_classifier_name
from kdistill.methods.base import LOGITS_AND_POOLED, Distiller, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@register_method("srrl")
class SRRL(Distiller):
    """Weights: `w_ce = 1`, `w_kd = 1`, `w_method = 1`. Reads only the teacher's logits and pooled
    feature (its classifier's weights come from the teacher model), so a teacher cache serves it."""

    paper = 'Yang et al. 2021, "Knowledge Distillation via Softmax Regression Representation Learning"'
    default_weights = {"w_ce": 1.0, "w_kd": 1.0, "w_method": 1.0}
    teacher_reads = LOGITS_AND_POOLED

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: MethodOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        s_width = context.student_shapes.pooled.shape[1]
        t_width = context.teacher_shapes.pooled.shape[1]
        self.classifier_name = reused_classifier_name(teacher, t_width, "srrl", pair_name(student, teacher))
        # A 1x1 conv and BatchNorm2d on the [B, D, 1, 1] pooled feature, as the reference's connector.
        self.connector = nn.Sequential(nn.Conv2d(s_width, t_width, kernel_size=1, bias=False),
                                       nn.BatchNorm2d(t_width), nn.ReLU(inplace=True))

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        projected = self.connector(student.pooled[:, :, None, None]).flatten(1)
        regressed_logits = self.teacher.get_submodule(self.classifier_name)(projected)
        return Terms({"srrl": srrl_loss(projected, teacher.pooled, regressed_logits, teacher.logits)})
