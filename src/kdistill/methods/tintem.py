"""TinTeM, "Faithful Label-free Knowledge Distillation" (Teacher in the Middle): a map from the
teacher's feature space to the student's, trained only to preserve the teacher's cosine-similarity
structure (so it tends to an orthogonal map), and a student that copies the mapped features.

Label-free (`LabelFreeDistiller`): it reads only `batch["image"]`. The token sequences it compares
(`FeatureModel.tokens`) work for timm ViTs and for every other model.
"""

from dataclasses import dataclass, field

from torch import Tensor, nn

from kdistill.data import Batch
from kdistill.distributed import gather_with_grad
from kdistill.errors import KdistillError
from kdistill.losses import TINTEM_TEMPERATURES, tintem_loss
from kdistill.methods.base import DistillOutput, MethodContext, MethodOptions, Terms
from kdistill.methods.label_free import LabelFreeDistiller, token_width
from kdistill.methods.registry import register_method
from kdistill.models.base import FeatureModel


@dataclass(frozen=True)
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

    paper = '"Faithful Label-free Knowledge Distillation" (Teacher in the Middle)'
    Options = TinTeMOptions

    def __init__(self, student: FeatureModel, teacher: FeatureModel, options: TinTeMOptions, context: MethodContext):
        super().__init__(student, teacher, options, context)
        if not options.temperatures or min(options.temperatures) <= 0:
            raise KdistillError(f"method tintem: temperatures {list(options.temperatures)} must be a non-empty list "
                                "of positive numbers, e.g. [0.01, 0.05, 0.1]")
        teacher_dim = token_width(context.teacher_shapes)
        student_dim = token_width(context.student_shapes)
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
