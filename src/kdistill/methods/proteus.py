"""Proteus ("Accessing Vision Foundation Models at ImageNet-level Costs"), the label-free baseline
of the TinTeM paper: the student's features are mapped to the teacher's space and regressed onto the
teacher's features with mean squared error.

Features: the token sequences of `FeatureModel.tokens` (timm ViTs: the
final-normed CLS and patch tokens; CNNs: the pooled feature and the last stage map's positions).
As in Proteus, two maps, each LayerNorm(d_s) then Linear(d_s -> d_t): `token_head` on the CLS token
and `feature_head` on the patch tokens; the token level compares the mapped CLS token, the feature
level the whole mapped sequence (CLS and patches together, as the reference's code). Proteus' third,
patch level regresses the tokens of masked patches and needs masked inputs; it is left out.
"""

import torch
from torch import Tensor, nn

from kdistill.data import Batch
from kdistill.losses import proteus_loss
from kdistill.methods.base import DistillOutput, MethodContext, MethodOptions, Terms
from kdistill.methods.label_free import LabelFreeDistiller, token_width
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel


@register_method("proteus")
class Proteus(LabelFreeDistiller):
    """Optimises `MSE(CLS) + MSE(CLS and patch tokens)` (`kdistill.losses.proteus_loss`; `w_method` = 1).

    Where the teacher's token grid differs from the student's, the teacher's position tokens are
    resized (bilinear) to the student's grid.
    """

    paper = '"Accessing Vision Foundation Models at ImageNet-level Costs" (Proteus), as the TinTeM paper compares it'
    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: MethodOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        teacher_dim = token_width(context.teacher_shapes)
        student_dim = token_width(context.student_shapes)
        self.token_head = nn.Sequential(nn.LayerNorm(student_dim), nn.Linear(student_dim, teacher_dim))
        self.feature_head = nn.Sequential(nn.LayerNorm(student_dim), nn.Linear(student_dim, teacher_dim))

    def loss_parts(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """`proteus_loss`'s terms on the images `x`, and the student's logits (None for ViTs)."""
        student, teacher_tokens = self.token_sequences(x)
        mapped = torch.cat([self.token_head(student.tokens[:, :1]), self.feature_head(student.tokens[:, 1:])], dim=1)
        return proteus_loss(mapped, teacher_tokens), student.logits

    def distill(self, batch: Batch) -> DistillOutput:
        parts, logits = self.loss_parts(batch["image"])
        extras = {f"proteus_{name}": parts[name].detach() for name in ("token", "feature")}
        return self.output(logits, Terms({"proteus": parts["total"]}, extras))
