"""CC (Peng et al. 2019, "Correlation Congruence for Knowledge Distillation") on the pooled features
(`kdistill.losses.cc_loss`).

The default is the benchmark's variant, which the table weight was tuned for: both pooled features
are embedded linearly to `feat_dim` and the term couples consecutive samples' embedding gaps.
`form=paper` is the paper's: Gaussian-kernel correlation matrices (Taylor order `order`, `gamma`)
of the L2-normalised pooled features themselves, with no embeddings to train; the table weight
0.02 was not tuned for it.
"""

from dataclasses import dataclass

from torch import nn

from kdistill.data import Batch
from kdistill.losses import ReferenceForm, cc_loss
from kdistill.methods.base import Distiller, MethodContext, MethodOptions, Terms, embedding_width
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@dataclass(frozen=True)
class CCOptions(MethodOptions):
    form: ReferenceForm = ReferenceForm.benchmark
    feat_dim: int = 128  # embedding size of the benchmark form
    gamma: float = 0.4  # kernel width of the paper form
    order: int = 2  # Taylor order of the paper form


@register_method("cc")
class CC(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 0.02`."""

    paper = 'Peng et al. 2019, "Correlation Congruence for Knowledge Distillation"'
    offers_kd_variant = True
    Options = CCOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 0.02}

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: CCOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        if options.form is ReferenceForm.benchmark:
            student_dim = embedding_width(context.student_shapes, "pooled")
            teacher_dim = embedding_width(context.teacher_shapes, "pooled")
            self.embed_s = nn.Linear(student_dim, options.feat_dim)
            self.embed_t = nn.Linear(teacher_dim, options.feat_dim)

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        if self.options.form is ReferenceForm.benchmark:
            return Terms({"cc": cc_loss(self.embed_s(student.pooled), self.embed_t(teacher.pooled))})
        options = self.options
        return Terms({"cc": cc_loss(student.pooled, teacher.pooled, ReferenceForm.paper, options.gamma, options.order)})
