"""TinTeM, "Faithful Label-free Knowledge Distillation" (Teacher in the Middle): a map from the
teacher's feature space to the student's, trained only to preserve the teacher's cosine-similarity
structure (so it tends to an orthogonal map), and a student that copies the mapped features.

Label-free: these methods read only `batch["image"]`, so they run on unlabelled images. The token
sequences they compare (`token_sequence`) work for timm ViTs and for every other model.
"""

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.distributed import gather_with_grad
from kdistill.errors import KdistillError
from kdistill.losses import TINTEM_TEMPERATURES, tintem_loss
from kdistill.methods.registry import register_method
from kdistill.data import Batch
from kdistill.methods.base import Distiller, DistillOutput, MethodContext, MethodOptions, Terms
from kdistill.models.adapters import TimmModel
from kdistill.models.base import FeatureModel, probe_features


@dataclass
class TokenSequence:
    tokens: Tensor  # [B, 1 + N, D]: a CLS token, then N position tokens in row-major grid order
    grid: tuple[int, int]  # (height, width) of the position tokens
    logits: Tensor | None  # the model's logits when reading the tokens computed them, else None


def reads_vit_tokens(model: FeatureModel) -> bool:
    """Whether the model gives a ViT token sequence (timm models with a class token)."""
    return isinstance(model, TimmModel) and getattr(model.model, "cls_token", None) is not None


def token_sequence(model: FeatureModel, x: Tensor) -> TokenSequence:
    """The token sequence a label-free method compares.

    timm ViTs: the final-normed tokens (`TimmModel.tokens`), CLS first, register tokens dropped.
    Other models (zoo, timm or torchvision CNNs): the pooled feature as the CLS token, then the
    positions of the last stage map. Where the pooled feature's width differs from the map's
    channels (e.g. MobileNetV2 and ShuffleNetV2, whose pooled feature comes after a further
    layer), the map averaged over its positions is the CLS token instead, so that one map (the
    method's LayerNorm + Linear) can take every token.
    """
    if reads_vit_tokens(model):
        tokens = model.tokens(x)
        return TokenSequence(tokens, _vit_grid(tokens.shape[1] - 1, x.shape[-2], x.shape[-1]), None)
    features = model.extract(x)
    last_map = features.stages[-1]
    cls = features.pooled if features.pooled.shape[1] == last_map.shape[1] else last_map.mean(dim=(2, 3))
    positions = last_map.flatten(2).transpose(1, 2)
    return TokenSequence(torch.cat([cls[:, None], positions], dim=1), tuple(last_map.shape[-2:]), features.logits)


def _vit_grid(num_patches: int, image_height: int, image_width: int) -> tuple[int, int]:
    """The patch grid of a ViT: `num_patches` tokens in the image's aspect ratio."""
    height = round(math.sqrt(num_patches * image_height / image_width))
    if height == 0 or num_patches % height:
        raise KdistillError(f"{num_patches} patch tokens do not tile a {image_height}x{image_width} image: "
                            "use a ViT whose patches tile the input")
    return height, num_patches // height


def token_width(model: FeatureModel, input_shape: tuple[int, int, int]) -> int:
    """Width of `token_sequence`'s tokens: the channels of the last stage map (for a timm ViT,
    `forward_intermediates` gives its last block's tokens as a map of the embedding width)."""
    return probe_features(model, input_shape).stages[-1].shape[1]


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
            teacher = token_sequence(self.teacher, x)
        student = token_sequence(self.student, x)
        return student, resize_token_grid(teacher.tokens, teacher.grid, student.grid)


@dataclass
class TinTeMOptions(MethodOptions):
    temperatures: list[float] = field(default_factory=lambda: list(TINTEM_TEMPERATURES))
    # Under torch.distributed, the CLS-CLS (global) term compares the CLS tokens of every rank.
    gather_global: bool = True


@register_method("tintem")
class TinTeM(LabelFreeDistiller):
    """Optimises `L_local + L_global + L_fea + L_tok` (`kdistill.losses.tintem_loss`; `w_method` = 1).

    The map `head` is LayerNorm(d_t) then Linear(d_t -> d_s). The two SNE terms train only the
    map, the two cosine terms only the student. Where the teacher's token grid differs from the
    student's, the teacher's position tokens are resized (bilinear) to the student's grid before
    the map, so every term compares tokens of one grid.
    """

    Options = TinTeMOptions

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: TinTeMOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        if not options.temperatures or min(options.temperatures) <= 0:
            raise KdistillError(f"method tintem: temperatures {list(options.temperatures)} must be a non-empty list "
                                "of positive numbers, e.g. [0.01, 0.05, 0.1]")
        teacher_dim = token_width(teacher, context.input_shape)
        student_dim = token_width(student, context.input_shape)
        self.head = nn.Sequential(nn.LayerNorm(teacher_dim), nn.Linear(teacher_dim, student_dim))

    def loss_parts(self, x: Tensor) -> tuple[dict[str, Tensor], Tensor | None]:
        """`tintem_loss`'s terms on the images `x`, and the student's logits (None for ViTs)."""
        student, teacher_tokens = self.token_sequences(x)
        mapped_tokens = self.head(teacher_tokens)
        teacher_cls, mapped_cls = teacher_tokens[:, 0], mapped_tokens[:, 0]
        if self.options.gather_global:
            teacher_cls, mapped_cls = gather_with_grad(teacher_cls), gather_with_grad(mapped_cls)
        parts = tintem_loss(student.tokens, teacher_tokens, mapped_tokens, tuple(self.options.temperatures),
                            batch_teacher_cls=teacher_cls, batch_mapped_cls=mapped_cls)
        return parts, student.logits

    def distill(self, batch: Batch) -> DistillOutput:
        parts, logits = self.loss_parts(batch["image"])
        extras = {f"tintem_{name}": parts[name].detach() for name in ("local", "global", "feature", "token")}
        return self.output(logits, Terms({"tintem": parts["total"]}, extras))
