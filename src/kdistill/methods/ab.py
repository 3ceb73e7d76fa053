"""AB (Heo et al. 2019, "Knowledge Transfer via Distillation of Activation Boundaries Formed by
Hidden Neurons"): the student's pre-ReLU maps, through connectors to the teacher's shapes, learn
which of the teacher's neurons are on (`kdistill.losses.ab_loss`).

As in the benchmark, the AB term trains only in an initialisation stage (`init_epochs`, 30 by
default): the connectors and the student's layers, with the student in training mode and the
run's learning rate held constant, the term unweighted. Distillation then trains the student on
CE (and KD with `ab+kd`) alone. `term_in_distillation=true` also keeps the AB term, weighted by
`w_method`, during distillation (the connectors then train with the student).
"""

from dataclasses import dataclass

from torch import Tensor, nn

from kdistill.data import Batch
from kdistill.losses import ab_loss
from kdistill.methods._feature_pairs import (
    InitStageOptions,
    conv_regressor,
    intermediate_maps,
    pair_name,
    stage_pairs,
)
from kdistill.methods.base import Distiller, InitPhase, MethodContext, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@dataclass(frozen=True)
class ABOptions(InitStageOptions):
    margin: float = 1.0
    term_in_distillation: bool = False


@register_method("ab")
class AB(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 1` (used only with `term_in_distillation`).

    Takes the pre-ReLU stage outputs after the stem, paired from the shallowest (a network's extra
    deeper stages are left out). A connector is the identity where a pair's channels and size
    already agree, else a conv + BN to the teacher's shape.
    """

    paper = 'Heo et al. 2019, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons"'
    offers_kd_variant = True
    Options = ABOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}
    needs_preact = True

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: ABOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        pairs = stage_pairs(intermediate_maps(context.student_shapes),
                            intermediate_maps(context.teacher_shapes))
        self.connectors = nn.ModuleList(
            nn.Identity() if s.shape[1:] == t.shape[1:]
            else conv_regressor(s.shape, t.shape, relu=False, pair=pair_name(student, teacher))
            for s, t in pairs
        )
        self.init_lr = context.lr if options.init_lr is None else options.init_lr

    def ab_term(self, student: Features, teacher: Features) -> Tensor:
        pairs = stage_pairs(intermediate_maps(student, preact=True), intermediate_maps(teacher, preact=True))
        connected = [connector(s) for connector, (s, _) in zip(self.connectors, pairs)]
        return ab_loss(connected, [t for _, t in pairs], self.options.margin)

    def init_phase(self) -> InitPhase:
        return InitPhase(self.options.init_epochs, [*self.connectors.parameters(), *self.student.parameters()],
                         self.init_lr)

    def init_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["image"]
        return {"ab": self.ab_term(self.student.extract(x, preact=True), self.teacher_features(x, preact=True))}

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        return Terms({"ab": self.ab_term(student, teacher)} if self.options.term_in_distillation else {})
