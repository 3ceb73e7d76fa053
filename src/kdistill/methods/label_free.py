"""The base of the label-free methods (TinTeM, Proteus): no CE, no KD, the student and teacher
compared as token sequences (`FeatureModel.tokens`: ViT tokens, or a CNN's last map as tokens).

Label-free: these methods read only `batch["image"]`, so they run on unlabelled images.
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from kdistill.errors import KdistillError
from kdistill.methods.base import Distiller, MethodContext, MethodOptions
from kdistill.models.base import FeatureModel, TokenSequence


def resize_token_grid(tokens: Tensor, grid: tuple[int, int], target_grid: tuple[int, int]) -> Tensor:
    """`tokens` [B, 1 + N, D] with its position tokens resized (bilinear) from `grid` to
    `target_grid`; the CLS token is kept as it is."""
    if tuple(grid) == tuple(target_grid):
        return tokens
    cls, positions = tokens[:, :1], tokens[:, 1:]
    as_map = positions.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)
    resized = F.interpolate(as_map, size=target_grid, mode="bilinear", align_corners=False)
    return torch.cat([cls, resized.flatten(2).transpose(1, 2)], dim=1)


class LabelFreeDistiller(Distiller):
    """Base of the label-free methods: no CE, no KD, one weight (`w_method`) on the method's loss.

    `forward` reads only `batch["image"]`. Its logits are the student's when reading its tokens
    computed them (CNNs), else None (ViTs): they serve only the Trainer's training accuracy,
    which a label-free run has no labels for.
    """

    default_weights: ClassVar[dict[str, float]] = {"w_ce": 0.0, "w_kd": 0.0, "w_method": 1.0}
    uses_teacher_logits = False  # a backbone-only teacher file (e.g. DINOv2) will do

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: MethodOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        if self.weights["w_ce"] or self.weights["w_kd"]:
            raise KdistillError(f"{type(self).__name__} is label-free and has no CE or KD term: "
                                "leave w_ce and w_kd unset (or 0), and use the method without '+kd'")

    def token_sequences(self, x: Tensor) -> tuple[TokenSequence, Tensor]:
        """The student's token sequence, and the teacher's tokens (no gradient) on the student's grid."""
        with torch.no_grad():
            teacher = self.teacher.tokens(x)
        student = self.student.tokens(x)
        return student, resize_token_grid(teacher.tokens, teacher.grid, student.grid)


def token_width(shapes) -> int:
    """Width of a model's tokens, from its probed shapes (`MethodContext`): the channels of the
    last stage map (for a timm ViT, `forward_intermediates` gives its last block's tokens as a map
    of the embedding width)."""
    return shapes.stages[-1].shape[1]
