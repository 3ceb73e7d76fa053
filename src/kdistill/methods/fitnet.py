"""FitNet (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"): the student's middle-stage map,
through a conv regressor to the teacher's channels and size, regresses the teacher's map of the same
stage (`kdistill.losses.fitnet_loss`). As in the benchmark, the regressor trains with the student in
one stage (no separate hint pre-training)."""

from dataclasses import dataclass

from kdistill.data import Batch
from kdistill.errors import KdistillError
from kdistill.losses import fitnet_loss
from kdistill.methods._feature_pairs import conv_regressor, pair_name
from kdistill.methods.base import Distiller, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@dataclass(frozen=True)
class FitNetOptions(MethodOptions):
    hint_stage: int = 2  # index into Features.stages (0 = stem), the benchmark's `hint_layer`


@register_method("fitnet")
class FitNet(Distiller):
    """Table weights: `w_ce = 1`, `w_kd = 0`, `w_method = 100`."""

    paper = 'Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"'
    offers_kd_variant = True
    Options = FitNetOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 100.0}

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: FitNetOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        student_stages = context.student_shapes.stages
        teacher_stages = context.teacher_shapes.stages
        stage = options.hint_stage
        if not 0 <= stage < min(len(student_stages), len(teacher_stages)):
            raise KdistillError(f"method fitnet, {pair_name(student, teacher)}: hint_stage {stage} is out of range; "
                                f"use 0..{min(len(student_stages), len(teacher_stages)) - 1}")
        self.regressor = conv_regressor(student_stages[stage].shape, teacher_stages[stage].shape, relu=True,
                                        pair=pair_name(student, teacher))

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        stage = self.options.hint_stage
        return Terms({"fitnet": fitnet_loss(self.regressor(student.stages[stage]), teacher.stages[stage])})
