"""FSP (Yim et al. 2017, "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning"): the student's flow matrices between consecutive stages match
the teacher's (`kdistill.losses.fsp_loss`).

As in the benchmark, the FSP term trains only in an initialisation stage (`init_epochs`, 30 by
default): the student's layers, in training mode, at the run's learning rate held constant, the
term unweighted. Distillation then trains the student on CE (and KD with `fsp+kd`) alone.
`term_in_distillation=true` also keeps the FSP term, weighted by `w_method`, during distillation.
"""

from dataclasses import dataclass

from torch import Tensor

from kdistill.data import Batch
from kdistill.errors import KdistillError
from kdistill.losses import fsp_loss
from kdistill.methods._feature_pairs import InitStageOptions, pair_name
from kdistill.methods.base import Distiller, InitPhase, MethodContext, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@dataclass(frozen=True)
class FSPOptions(InitStageOptions):
    term_in_distillation: bool = False


@register_method("fsp")
class FSP(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 50` (used only with `term_in_distillation`).

    Takes the stem and every stage output (the benchmark's `feat[:-1]`); student and teacher need
    as many stages with the same channel counts, so FSP applies within a family of equal widths
    (e.g. resnet110 -> resnet32), not across architectures.
    """

    paper = ('Yim et al. 2017, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and '
             'Transfer Learning"')
    offers_kd_variant = True
    Options = FSPOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 50.0}

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: FSPOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        student_channels = [s.shape[1] for s in context.student_shapes.stages]
        teacher_channels = [t.shape[1] for t in context.teacher_shapes.stages]
        if student_channels != teacher_channels:
            raise KdistillError(f"method fsp cannot distil {pair_name(student, teacher)}: it needs the same stage "
                                f"channel counts, teacher has {teacher_channels}, student {student_channels}; "
                                f"use a teacher and student of equal widths")
        self.init_lr = context.lr if options.init_lr is None else options.init_lr

    def init_phase(self) -> InitPhase:
        return InitPhase(self.options.init_epochs, list(self.student.parameters()), self.init_lr)

    def init_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["image"]
        return {"fsp": fsp_loss(self.student.extract(x).stages, self.teacher_features(x).stages)}

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        return Terms({"fsp": fsp_loss(student.stages, teacher.stages)} if self.options.term_in_distillation else {})
