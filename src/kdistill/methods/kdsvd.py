"""KDSVD (Lee et al., ECCV 2018, "Self-supervised Knowledge Distillation Using Singular Value
Decomposition"), as RepDistiller's `distiller_zoo/KDSVD.py` and mdistiller's `KDSVD.py` run it: the
leading singular vectors of each stage map, sign-aligned to the teacher's, compared between
consecutive stages through a radial basis kernel (`kdistill.losses.kdsvd_loss`)."""

from dataclasses import dataclass

from kdistill.data import Batch
from kdistill.errors import KdistillError
from kdistill.losses import kdsvd_loss
from kdistill.methods._feature_pairs import intermediate_maps, pair_name
from kdistill.methods.base import LOGITS_AND_POOLED, Distiller, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel, Features


@dataclass(frozen=True)
class KDSVDOptions(MethodOptions):
    k: int = 1  # the teacher's singular vectors per stage (the student's: k + 3)


@register_method("kdsvd")
class KDSVD(Distiller):
    """Table weights (mdistiller's CIFAR-100 config): `w_ce = 1`, `w_method = 1`.

    Takes the stage outputs after the stem (the benchmark's `feat[1:-1]`); the alignment compares
    student and teacher singular vectors over channels, so the two need the same channel count at
    every stage (e.g. resnet110 -> resnet32), as FSP does.
    """

    paper = 'Lee et al. 2018, "Self-supervised Knowledge Distillation Using Singular Value Decomposition"'
    Options = KDSVDOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}
    teacher_reads = LOGITS_AND_POOLED | {"stages"}

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: KDSVDOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        student_channels = [s.shape[1] for s in intermediate_maps(context.student_shapes)]
        teacher_channels = [t.shape[1] for t in intermediate_maps(context.teacher_shapes)]
        if student_channels != teacher_channels:
            raise KdistillError(f"method kdsvd cannot distil {pair_name(student, teacher)}: it needs the same stage "
                                f"channel counts, teacher has {teacher_channels}, student {student_channels}; "
                                "use a teacher and student of equal widths")

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        return Terms({"kdsvd": kdsvd_loss(intermediate_maps(student), intermediate_maps(teacher), self.options.k)})
