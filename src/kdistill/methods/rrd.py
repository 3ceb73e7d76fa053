"""RRD (Giakoumoglou & Stathaki, "Relational Representation Distillation"): student and teacher
pooled features embedded (linear, L2-normalised) and scored against a FIFO queue of teacher
embeddings; the teacher's sharpened similarity distribution is the student's target
(`kdistill.losses.rrd_loss`).

Defaults of the reference code (giakoumoglou/distillers, cifar/train_student.py and its scripts):
`memory_type=fifo`, queue of `nce_k = 16384`, `feat_dim = 128`, student temperature
`nce_t_s = 0.1`, teacher temperature `nce_t_t = 0.02`; `-a 0 -b 1` (CE 1, RRD 1), `rrd+kd` adds KD 1.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.data import Batch
from kdistill.distributed import all_gather_detached
from kdistill.errors import KdistillError
from kdistill.losses import rrd_loss
from kdistill.methods.base import LOGITS_AND_POOLED, Distiller, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@dataclass(frozen=True)
class RRDOptions(MethodOptions):
    feat_dim: int = 128
    queue_size: int = 16384  # the reference's nce_k
    temperature_student: float = 0.1  # nce_t_s
    temperature_teacher: float = 0.02  # nce_t_t


@register_method("rrd")
class RRD(Distiller):
    """Weights: `w_ce = 1`, `w_kd = 0` (`rrd`) or 1 (`rrd+kd`), `w_method = 1`.

    The queue (K x feat_dim float32, 8 MB at the defaults) and its write position are buffers, so
    a resume continues with the same queue. Under torch.distributed every rank enqueues the
    teacher embeddings of the global batch, so the queues stay identical."""

    paper = 'Giakoumoglou & Stathaki 2024, "Relational Representation Distillation"'
    offers_kd_variant = True
    Options = RRDOptions
    teacher_reads = LOGITS_AND_POOLED
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: RRDOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        if options.queue_size < 1 or options.feat_dim < 1:
            raise KdistillError(f"method rrd: queue_size={options.queue_size} and feat_dim={options.feat_dim} must "
                                "be positive (the reference uses 16384 and 128)")
        self.embed_s = nn.Linear(context.student_shapes.pooled.shape[1], options.feat_dim)
        # The teacher's embedding takes no gradient in the reference (its similarities are detached),
        # so it keeps its initial values: frozen here, the same values, and no unused parameter for DDP.
        self.embed_t = nn.Linear(context.teacher_shapes.pooled.shape[1], options.feat_dim).requires_grad_(False)
        # Gaussian entries normalised over the queue's length (dim 0), as the reference initialises it.
        self.register_buffer("queue", F.normalize(torch.randn(options.queue_size, options.feat_dim), dim=0))
        self.register_buffer("queue_position", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, z_t: Tensor) -> Tensor:
        """The queue with `z_t` (gathered from every rank) written over its oldest rows, out of
        place; the write position moves on. Wraps around the end, so any batch size fits."""
        z_t = all_gather_detached(z_t.detach().float())[-self.queue.shape[0]:]  # the newest K when more
        rows = (self.queue_position + torch.arange(z_t.shape[0], device=z_t.device)) % self.queue.shape[0]
        self.queue = self.queue.index_copy(0, rows, z_t)
        self.queue_position.copy_((self.queue_position + z_t.shape[0]) % self.queue.shape[0])
        return self.queue

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        z_s = F.normalize(self.embed_s(student.pooled), dim=1)
        z_t = F.normalize(self.embed_t(teacher.pooled), dim=1)
        queue = self.enqueue(z_t)  # before scoring, as the reference does
        return Terms({"rrd": rrd_loss(z_s, z_t, queue, self.options.temperature_student,
                                      self.options.temperature_teacher)})
