"""CRLD: "Cross-View Consistency Regularisation for Knowledge Distillation". Logit-only: the
student and the frozen teacher both see a weak and a strong view of every image; KD within each
view and across the views, gated per sample by the teacher's confidence (`kdistill.losses.crld_loss`).

The cross-view regulariser composes with other methods: `with_cross_view(Method)` is `Method`
with CRLD added. Its forward runs both views, returns CRLD's terms and then `Method`'s own
`method_terms` on the weak view's student and teacher features. `crld+dcd` is registered that
way, and `crld+dkd` and `crld+dist`; another combination is one line, e.g.
`METHODS.register("crld+crd")(with_cross_view(CRD))`.
Methods that replace `Distiller.distill` itself cannot be combined (an error says so).
"""

from dataclasses import dataclass, make_dataclass

from kdistill.data import Batch
from kdistill.errors import KdistillError
from kdistill.losses import crld_loss
from kdistill.methods.base import LOGITS_AND_POOLED, Distiller, DistillOutput, MethodOptions, Terms, TwoViewDistiller
from kdistill.methods.dcd import DCD
from kdistill.methods.dist import DIST
from kdistill.methods.dkd import DKD
from kdistill.methods.registry import register_method

CROSS_VIEW_TERM = "crld"


@dataclass(frozen=True)
class CRLDOptions(MethodOptions):
    # `temperature` (of MethodOptions, 4.0) is the temperature of the within- and cross-view KD.
    weak_threshold: float = 0.9  # teacher confidence (top softmax at T = 1) on the weak view
    strong_threshold: float = 0.2  # ... on the strong view
    within_view_weight: float = 2.0
    cross_view_weight: float = 0.5


@register_method("crld")
class CRLD(TwoViewDistiller):
    """CRLD. Loss = `w_ce * (CE(weak) + CE(strong)) + within_view_weight * L_wv +
    cross_view_weight * L_cv` with the paper's weights 1.0 / 2.0 / 0.5, T = 4, thresholds 0.9 / 0.2.

    Terms: "ce" is the sum of both views' CE, weighted by `w_ce` as every CE term; "crld" is
    `within_view_weight * L_wv + cross_view_weight * L_cv`, weighted by 1 (`fixed_term_weights`),
    so the weighted total is the paper's loss. `w_method` weights only the terms of a method
    combined with CRLD (the DCD term of `crld+dcd`); `w_kd` > 0 (`crld+kd`) adds Hinton's KD on
    the weak view. The unweighted L_wv, L_cv and the fractions of samples each mask keeps are
    logged. The returned logits are the student's on the weak view; at test time the student
    sees the test transform as usual.

    Needs batches with "image_strong" (`needs_strong_view`: the engine builds
    the loaders `with_strong_view`, see `kdistill.data.two_view`). The student sees the views in two
    passes, so batch-norm statistics stay per view as in the reference code.
    """

    paper = '"Cross-View Consistency Regularisation for Knowledge Distillation"'
    Options = CRLDOptions
    default_weights = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}
    matches_logits = True

    # The regulariser carries its own weights, so w_method is free for a combined method.
    fixed_term_weights = {CROSS_VIEW_TERM: 1.0}
    offers_kd_variant = True
    teacher_reads = LOGITS_AND_POOLED
    accepts_topk_teacher = True

    def distill(self, batch: Batch) -> DistillOutput:
        views, options = self.two_views(batch), self.options
        student, teacher = views.student, views.teacher
        parts = crld_loss(student.logits, views.student_strong, teacher.logits, views.teacher_strong.logits,
                          batch["label"], self.logit_temperature(student.logits, teacher.logits),
                          options.weak_threshold, options.strong_threshold, standardize=options.logit_standardize)
        losses = self.two_view_terms(views, parts["ce"])
        losses[CROSS_VIEW_TERM] = (options.within_view_weight * parts["within_view"]
                                   + options.cross_view_weight * parts["cross_view"])
        extras = {
            "crld_within_view": parts["within_view"].detach(),
            "crld_cross_view": parts["cross_view"].detach(),
            "crld_weak_kept": parts["weak_mask"].float().mean(),
            "crld_strong_kept": parts["strong_mask"].float().mean(),
        }
        own = self.method_terms(student, teacher, batch)
        extras.update(self.temperature_extras(student.logits, teacher.logits))
        return self.output(student.logits, Terms({**losses, **own.losses}, {**extras, **own.extras}))


def with_cross_view(method: type[Distiller]) -> type[Distiller]:
    """`method` with CRLD's cross-view regulariser added: its options are both sets, its table
    weights are `method`'s, its own terms are computed on the weak view's features."""
    if method.distill is not Distiller.distill:
        raise KdistillError(f"'{method.__name__}' replaces Distiller.distill, so CRLD cannot be added to it")
    options = make_dataclass(f"CRLD{method.Options.__name__}", [], bases=(CRLDOptions, method.Options), frozen=True)
    return type(f"CRLDPlus{method.__name__}", (CRLD, method), {
        "Options": options,
        "default_weights": dict(method.default_weights),
        "teacher_reads": CRLD.teacher_reads | method.teacher_reads,
        "accepts_topk_teacher": CRLD.accepts_topk_teacher and method.accepts_topk_teacher,
        "paper": f"{CRLD.paper} + {method.paper}",
        "__doc__": f"CRLD's cross-view regulariser added to {method.__name__}; see CRLD and {method.__name__}.",
    })


register_method("crld+dcd", "crld+icd")(with_cross_view(DCD))
# DKD's term on the weak view, with its warm-up. (MLKD is not combined: it already distils both
# views, and replaces Distiller.distill to do so.)
register_method("crld+dkd")(with_cross_view(DKD))
register_method("crld+dist")(with_cross_view(DIST))
