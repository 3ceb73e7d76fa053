"""CRD (Tian et al. 2020, "Contrastive Representation Distillation"): NCE between student and
teacher embeddings with two memory banks and K negatives per sample (`kdistill.losses.crd_loss`)."""

import enum
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.data import Batch
from kdistill.distributed import all_gather_detached, is_distributed
from kdistill.errors import KdistillError
from kdistill.losses import crd_loss
from kdistill.methods.base import (
    LOGITS_AND_POOLED,
    Distiller,
    MethodContext,
    MethodOptions,
    Terms,
    check_feature_source,
    embedding_source,
    embedding_width,
    reads_of_feature,
)
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


class Negatives(enum.StrEnum):
    exact = "exact"  # never a sample of the anchor's class (the reference)
    any = "any"  # anything but the anchor itself


@dataclass(frozen=True)
class CRDOptions(MethodOptions):
    feat_dim: int = 128
    num_negatives: int = 16384  # K
    temperature_nce: float = 0.07
    momentum: float = 0.5  # of the memory-bank update
    negatives: Negatives = Negatives.exact
    student_feature: str = "pooled"  # "pooled" or a stage index (that map averaged over space)
    teacher_feature: str = "pooled"

    def __post_init__(self):
        check_feature_source(self.student_feature, "method.student_feature")
        check_feature_source(self.teacher_feature, "method.teacher_feature")


class NegativeSampler(nn.Module):
    """Draws K negative sample indices per anchor on the training device.

    Without replacement (random keys, top-K) while there are at least K candidates, as the
    reference draws them; with replacement otherwise (small data sets), as the reference does too.
    """

    def __init__(self, labels: Tensor, exact: bool):
        super().__init__()
        self.exact = exact
        self.register_buffer("labels", labels.long().clone(), persistent=False)
        # Samples sorted by class: class c's samples occupy one block, so "any sample but class c"
        # is an index into the rest of the order, shifted past that block.
        order = torch.argsort(self.labels, stable=True)
        counts = torch.bincount(self.labels, minlength=int(self.labels.max()) + 1)
        rank_in_order = torch.empty_like(order)
        rank_in_order[order] = torch.arange(order.numel())
        self.register_buffer("order", order, persistent=False)
        self.register_buffer("rank_in_order", rank_in_order, persistent=False)
        self.register_buffer("counts", counts, persistent=False)
        self.register_buffer("starts", torch.cumsum(counts, 0) - counts, persistent=False)
        # Fewest candidates any anchor has; a Python int, so choosing the draw never syncs the device.
        self.min_candidates = order.numel() - (int(counts.max()) if exact else 1)

    @property
    def num_data(self) -> int:
        return self.labels.numel()

    def excluded(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """Start and length of the excluded block in `order` coordinates, per anchor."""
        if self.exact:
            label = self.labels[index]
            return self.starts[label], self.counts[label]
        return self.rank_in_order[index], torch.ones_like(index)

    def forward(self, index: Tensor, k: int) -> Tensor:
        start, length = self.excluded(index)
        candidates = self.num_data - length  # per anchor
        if k <= self.min_candidates:
            keys = torch.rand(index.numel(), self.num_data, device=index.device)
            position = torch.arange(self.num_data, device=index.device)
            blocked = (position >= start[:, None]) & (position < (start + length)[:, None])
            picked = keys.masked_fill(blocked, -1.0).topk(k, dim=1).indices
        else:
            draw = (torch.rand(index.numel(), k, device=index.device) * candidates[:, None]).long()
            picked = draw + (draw >= start[:, None]) * length[:, None]
        return self.order[picked]


@register_method("crd")
class CRD(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0` (`crd`) or 1 (`crd+kd`), `w_method = 0.8`.

    Memory: two banks of N x feat_dim float32 values (CIFAR-100: 2 x 50000 x 128 x 4 B = 51 MB),
    updated with momentum from each batch's embeddings (gathered from every rank under
    torch.distributed so the banks stay identical). Negatives are drawn on the device.
    """

    paper = 'Tian et al. 2020, "Contrastive Representation Distillation"'
    offers_kd_variant = True
    Options = CRDOptions
    teacher_reads = LOGITS_AND_POOLED
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 0.8}

    @classmethod
    def teacher_reads_for(cls, options: CRDOptions) -> frozenset[str]:
        return cls.teacher_reads | reads_of_feature(options.teacher_feature)

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: CRDOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        if context.train_labels is None:
            raise KdistillError("method crd needs the training labels by sample index: use a labelled data set")
        self.embed_s = nn.Linear(embedding_width(context.student_shapes, options.student_feature), options.feat_dim)
        self.embed_t = nn.Linear(embedding_width(context.teacher_shapes, options.teacher_feature), options.feat_dim)
        self.sampler = NegativeSampler(context.train_labels, exact=options.negatives is Negatives.exact)
        num_data = self.sampler.num_data
        bound = 1.0 / math.sqrt(options.feat_dim / 3)  # the reference's uniform initialisation
        self.register_buffer("bank_s", torch.rand(num_data, options.feat_dim) * 2 * bound - bound)
        self.register_buffer("bank_t", torch.rand(num_data, options.feat_dim) * 2 * bound - bound)
        # Normalisation constants, estimated on the first batch (-1 = not yet).
        self.register_buffer("norm_s", torch.tensor(-1.0))
        self.register_buffer("norm_t", torch.tensor(-1.0))

    @torch.no_grad()
    def update_banks(self, index: Tensor, z_s: Tensor, z_t: Tensor) -> None:
        """Momentum update of the sampled rows, out of place: this step's graph still holds the
        old banks for its backward pass (one N x D copy per bank and step, cheap beside the scores)."""
        if is_distributed():
            index, z_s, z_t = (all_gather_detached(t) for t in (index, z_s, z_t))
        momentum = self.options.momentum
        for name, z in (("bank_s", z_s), ("bank_t", z_t)):
            bank = getattr(self, name)
            rows = F.normalize(bank[index] * momentum + z.to(bank.dtype) * (1 - momentum), dim=1)
            setattr(self, name, bank.index_copy(0, index, rows))

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        index = batch["index"]
        z_s = F.normalize(self.embed_s(embedding_source(student, self.options.student_feature)), dim=1)
        z_t = F.normalize(self.embed_t(embedding_source(teacher, self.options.teacher_feature)), dim=1)
        sample_index = torch.cat([index[:, None], self.sampler(index, self.options.num_negatives)], dim=1)
        parts = crd_loss(z_s, z_t, self.bank_s, self.bank_t, sample_index, self.sampler.num_data,
                         self.options.temperature_nce, self.norm_s, self.norm_t)
        with torch.no_grad():  # keeps the first batch's estimate; a plain copy, no host sync
            self.norm_s.copy_(parts["norm_s"])
            self.norm_t.copy_(parts["norm_t"])
        self.update_banks(index, z_s.detach(), z_t.detach())
        return Terms({"crd": parts["total"]})

