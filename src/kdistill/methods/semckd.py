"""SemCKD (Chen et al., AAAI 2021, "Cross-Layer Distillation with Semantic Calibration"): every
student stage is projected onto every teacher stage, and a per-sample attention over the teacher
stages, computed from the stages' batch similarity matrices, weights the pairs' feature MSEs
(`kdistill.losses.semckd_loss`).

As the reference code (giakoumoglou/distillers imagenet/, from DefangChen/SimKD and
DefangChen/SemCKD) runs it on CIFAR-100: the stage outputs after the stem (`feat[1:-1]`),
attention scale 1 (`--soft`), query/key embeddings to batch/4, `-c 1 -d 1 -b 400` (CE 1, KD 1
at T 4, SemCKD 400). The query and key embeddings read a B x B similarity matrix, so they are
sized by the training batch: every training batch must have that size (kdistill's training
loaders drop the last partial batch; the reference skips it).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.data import Batch
from kdistill.errors import KdistillError
from kdistill.losses import semckd_loss
from kdistill.methods._feature_pairs import intermediate_maps, pair_name
from kdistill.methods.base import Distiller, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@dataclass(frozen=True)
class SemCKDOptions(MethodOptions):
    attention_scale: float = 1.0  # the reference's --soft: energies are divided by it
    embed_factor: int = 4  # query/key embeddings have batch_size // embed_factor dimensions


class SimilarityEmbedding(nn.Module):
    """A stage's B x B similarity rows to a query or key: linear to 2d, ReLU, linear to d, L2
    normalisation (the reference's MLPEmbed as its forward uses it)."""

    def __init__(self, batch_size: int, width: int):
        super().__init__()
        self.hidden = nn.Linear(batch_size, 2 * width)
        self.out = nn.Linear(2 * width, width)

    def forward(self, similarity: Tensor) -> Tensor:
        out = self.out(F.relu(self.hidden(similarity)))
        return out / out.norm(dim=1, keepdim=True)


def stage_projector(student_channels: int, teacher_channels: int) -> nn.Sequential:
    """The reference's Proj: 1x1 conv to 2 C_t, BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv to C_t (no bias)."""
    middle = 2 * teacher_channels
    return nn.Sequential(
        nn.Conv2d(student_channels, middle, kernel_size=1, bias=False), nn.BatchNorm2d(middle), nn.ReLU(inplace=True),
        nn.Conv2d(middle, middle, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(middle), nn.ReLU(inplace=True),
        nn.Conv2d(middle, teacher_channels, kernel_size=1, bias=False),
    )


def batch_similarity(stage: Tensor) -> Tensor:
    """`[B, B]`: inner products of the samples' flattened maps."""
    flat = stage.flatten(1)
    return flat @ flat.T


def aligned(student_map: Tensor, teacher_map: Tensor) -> tuple[Tensor, Tensor]:
    """Both maps at the smaller of the two heights, as the reference pools them (square sizes)."""
    s_height, t_height = student_map.shape[2], teacher_map.shape[2]
    if s_height > t_height:
        return F.adaptive_avg_pool2d(student_map, (t_height, t_height)), teacher_map
    return student_map, F.adaptive_avg_pool2d(teacher_map, (s_height, s_height))


@register_method("semckd")
class SemCKD(Distiller):
    """Weights: `w_ce = 1`, `w_kd = 1`, `w_method = 400` (the reference's CIFAR-100 script)."""

    paper = 'Chen et al. 2021, "Cross-Layer Distillation with Semantic Calibration"'
    Options = SemCKDOptions
    default_weights = {"w_ce": 1.0, "w_kd": 1.0, "w_method": 400.0}
    teacher_reads = frozenset({"logits", "stages"})

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: SemCKDOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        pair = pair_name(student, teacher)
        batch_size = context.batch_size
        if batch_size is None:
            raise KdistillError("method semckd sizes its attention by the training batch: build it with "
                                "MethodContext(batch_size=...) (runs do so from data.batch_size)")
        width = batch_size // options.embed_factor
        if width < 1 or options.attention_scale <= 0:
            raise KdistillError(f"method semckd, {pair}: data.batch_size={batch_size} // embed_factor="
                                f"{options.embed_factor} must be at least 1 and attention_scale positive")
        self.batch_size = batch_size
        s_channels = [shape.shape[1] for shape in intermediate_maps(context.student_shapes)]
        t_channels = [shape.shape[1] for shape in intermediate_maps(context.teacher_shapes)]
        self.queries = nn.ModuleList(SimilarityEmbedding(batch_size, width) for _ in s_channels)
        self.keys = nn.ModuleList(SimilarityEmbedding(batch_size, width) for _ in t_channels)
        self.projectors = nn.ModuleList(nn.ModuleList(stage_projector(s, t) for t in t_channels) for s in s_channels)

    def attention(self, student_maps: list[Tensor], teacher_maps: list[Tensor]) -> Tensor:
        """`[B, S, T]`: each sample's softmax over teacher stages of query . key / attention_scale."""
        queries = torch.stack([embed(batch_similarity(m)) for embed, m in zip(self.queries, student_maps)], dim=1)
        keys = torch.stack([embed(batch_similarity(m)) for embed, m in zip(self.keys, teacher_maps)], dim=2)
        return F.softmax(torch.bmm(queries, keys) / self.options.attention_scale, dim=-1)

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        student_maps, teacher_maps = intermediate_maps(student), intermediate_maps(teacher)
        if student_maps[0].shape[0] != self.batch_size:
            raise KdistillError(f"method semckd was built for batches of {self.batch_size} samples and got "
                                f"{student_maps[0].shape[0]}: keep data.batch_size as the run was started")
        projected, targets = [], []
        for student_map, projectors in zip(student_maps, self.projectors):
            pairs = [aligned(student_map, teacher_map) for teacher_map in teacher_maps]
            projected.append([project(source) for project, (source, _) in zip(projectors, pairs)])
            targets.append([target for _, target in pairs])
        return Terms({"semckd": semckd_loss(projected, targets, self.attention(student_maps, teacher_maps))})
