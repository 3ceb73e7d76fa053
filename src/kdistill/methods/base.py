"""The Distiller base: a method owns the student, the frozen teacher and its own trainable parts."""

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.losses import kd_loss
from kdistill.models.base import Features, FeatureModel, probe_features


@dataclass
class MethodOptions:
    """Options every method has; a method extends this with its own fields.

    The loss is `w_ce * CE + w_kd * KD + w_method * (method terms)`; None takes the method's
    table default (`Distiller.default_weights`).
    """

    w_ce: float | None = None
    w_kd: float | None = None
    w_method: float | None = None
    temperature: float = 4.0  # of the KD term


@dataclass
class DistillOutput:
    logits: Tensor | None  # the student's logits on the batch's main view (None: a headless student)
    losses: dict[str, Tensor] = field(default_factory=dict)  # unweighted named terms
    extras: dict[str, Tensor] = field(default_factory=dict)  # logged, not optimised (e.g. a learned scale)


@dataclass
class InitPhase:
    """A pre-training phase a method runs before distillation (e.g. AB's connectors, FT's
    paraphraser): its epochs, the parameters it trains and its constant learning rate."""

    epochs: int
    parameters: list[nn.Parameter]
    lr: float


@dataclass
class MethodContext:
    """What a method may need to know of the data to build its parts."""

    input_shape: tuple[int, int, int]  # (channels, height, width) of a training image
    num_classes: int
    train_labels: Tensor | None = None  # labels of the training split by sample index (CPU)
    lr: float = 0.05  # the run's base learning rate (an initialisation phase may derive its own)


def embedding_source(features: Features, which: str | int) -> Tensor:
    """A [B, D] vector per sample: the pooled penultimate feature, or a stage map averaged over space."""
    if which == "pooled":
        return features.pooled
    return features.stages[int(which)].mean(dim=(2, 3))


def embedding_width(model: FeatureModel, context: "MethodContext", which: str | int) -> int:
    """D of `embedding_source(model's features, which)`, read off one probe batch."""
    return embedding_source(probe_features(model, context.input_shape), which).shape[1]


class Distiller(nn.Module):
    """Base of every method. `forward(batch)` returns the student's logits and named loss terms.

    Terms named "ce" are weighted by `w_ce`, "kd" by `w_kd`, every other term by `w_method`.
    The teacher is frozen: always in eval mode, without gradient, outside the optimizer.
    """

    Options: ClassVar[type[MethodOptions]] = MethodOptions
    default_weights: ClassVar[dict[str, float]] = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}
    needs_teacher: ClassVar[bool] = True
    needs_preact: ClassVar[bool] = False  # take stage maps before their final ReLU (e.g. AB)
    needs_strong_view: ClassVar[bool] = False  # batches also carry "image_strong" (e.g. CRLD)
    uses_teacher_logits: ClassVar[bool] = True  # False: a backbone-only teacher file will do (label-free)

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, options: MethodOptions,
                 context: MethodContext):
        super().__init__()
        self.student = student
        self.options = options
        self.weights = {
            name: default if getattr(options, name) is None else float(getattr(options, name))
            for name, default in self.default_weights.items()
        }
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.teacher = teacher

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def loss_weight(self, term: str) -> float:
        if term == "ce":
            return self.weights["w_ce"]
        if term == "kd":
            return self.weights["w_kd"]
        return self.weights["w_method"]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything a checkpoint must hold: the student and the method's parts, not the teacher."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise RuntimeError(f"method state does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")

    @torch.no_grad()
    def teacher_features(self, x: Tensor, preact: bool = False) -> Features:
        return self.teacher.extract(x, preact=preact)

    def supervised_terms(self, student: Features, teacher: Features | None, labels: Tensor) -> dict[str, Tensor]:
        """CE on the labels, and KD when its weight is on: the terms most methods add to theirs."""
        terms = {}
        if self.weights["w_ce"]:
            terms["ce"] = F.cross_entropy(student.logits, labels)
        if self.weights["w_kd"] and teacher is not None:
            terms["kd"] = kd_loss(student.logits, teacher.logits, self.options.temperature)
        return terms

    def method_terms(self, student: Features, teacher: Features, batch: dict[str, Tensor],
                     extras: dict[str, Tensor]) -> dict[str, Tensor]:
        """The method's own loss terms; feature methods override only this (and may add to `extras`)."""
        return {}

    def train_parameters(self) -> list[nn.Parameter]:
        """What the distillation optimizer trains: the student and the method's parts, never the teacher."""
        return [p for p in self.parameters() if p.requires_grad]

    def init_phase(self) -> InitPhase | None:
        """The method's initialisation phase, run by the Trainer before distillation; None = none."""
        return None

    def init_terms(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Loss terms of the initialisation phase; the Trainer sums them unweighted."""
        raise NotImplementedError(f"{type(self).__name__} has no initialisation phase")

    def init_mode(self) -> None:
        """Train/eval modes during the initialisation phase (default: as in distillation)."""
        self.train()

    def forward(self, batch: dict[str, Tensor]) -> DistillOutput:
        x = batch["image"]
        student = self.student.extract(x, preact=self.needs_preact)
        teacher = self.teacher_features(x, preact=self.needs_preact) if self.teacher is not None else None
        losses = self.supervised_terms(student, teacher, batch["label"])
        extras: dict[str, Tensor] = {}
        if teacher is not None:
            losses.update(self.method_terms(student, teacher, batch, extras))
        return DistillOutput(student.logits, losses, extras)
