"""The Distiller base: a method owns the student, the frozen teacher and its own trainable parts."""

from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdistill.config import TEACHER_CACHE_FIELDS, MethodOptions
from kdistill.data.batch import Batch
from kdistill.errors import KdistillError
from kdistill.losses import kd_loss
from kdistill.methods._curriculum_temperature import CurriculumTemperature, reversal_strength
from kdistill.models.base import FeatureModel, Features


@dataclass
class Terms:
    """Named loss terms of a batch (unweighted) and values logged beside them (not optimised)."""

    losses: dict[str, Tensor]
    extras: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class DistillOutput:
    """What a Distiller returns for a batch: the Trainer only calls `backward` on `total`."""

    logits: Tensor | None  # the student's logits on the batch's main view (None: a headless student)
    terms: dict[str, Tensor]  # unweighted named terms (fp32)
    weights: dict[str, float]  # the weight of each term
    total: Tensor  # sum of weight * term: the loss that is optimised
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
    batch_size: int | None = None  # training samples per step and process (SemCKD sizes its attention by it)
    # Feature shapes of student and teacher as shape-only (meta) tensors, probed once by `build_distiller`.
    student_shapes: Features | None = None
    teacher_shapes: Features | None = None


LOGITS_AND_POOLED = TEACHER_CACHE_FIELDS  # what logit- and embedding-level methods read of the teacher


class TeacherOutputs(Protocol):
    """A store of the teacher's outputs that stands in for running it (the teacher cache; the
    Trainer prepares its epochs)."""

    def read(self, index: Tensor, view: str) -> Features:
        """Logits and pooled feature of the samples `index` [B] on `view` ("image", "image_strong")."""


def check_feature_source(which: str, key: str) -> None:
    """A `*_feature` option names "pooled" or a stage index: one line at load otherwise."""
    if which != "pooled" and not which.lstrip("-").isdigit():
        raise KdistillError(f"{key}={which!r} is not a feature: use pooled or a stage index (0, 1, ..., -1)")


def reads_of_feature(which: str) -> frozenset[str]:
    """The teacher's Features fields that `embedding_source(features, which)` reads."""
    return frozenset({"pooled"}) if which == "pooled" else frozenset({"stages"})


def embedding_source(features: Features, which: str | int) -> Tensor:
    """A [B, D] vector per sample: the pooled penultimate feature, or a stage map averaged over space."""
    if which == "pooled":
        return features.pooled
    return features.stages[int(which)].mean(dim=(2, 3))


def embedding_width(shapes: Features, which: str | int) -> int:
    """D of `embedding_source(features, which)`, read off a model's probed shapes (`MethodContext`)."""
    return embedding_source(shapes, which).shape[1]


class Distiller(nn.Module):
    """Base of every method. `forward(batch)` returns the student's logits, the named loss terms,
    their weights and the weighted total (`DistillOutput`).

    Terms named "ce" are weighted by `w_ce`, "kd" by `w_kd`, a term in `fixed_term_weights` by
    its fixed weight, every other term by `w_method`. The teacher is frozen: always in eval
    mode, without gradient, outside the optimizer. In a method's initialisation phase (`phase ==
    "init"`) the same `forward` returns the phase's terms, each weighted 1.
    """

    Options: ClassVar[type[MethodOptions]] = MethodOptions
    default_weights: ClassVar[dict[str, float]] = {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}
    fixed_term_weights: ClassVar[dict[str, float]] = {}  # terms that carry their own weights
    needs_teacher: ClassVar[bool] = True
    needs_preact: ClassVar[bool] = False  # take stage maps before their final ReLU (e.g. AB)
    needs_strong_view: ClassVar[bool] = False  # batches also carry "image_strong" (e.g. CRLD)
    uses_teacher_logits: ClassVar[bool] = True  # False: a backbone-only teacher file will do (label-free)
    offers_kd_variant: ClassVar[bool] = False  # register "<name>+kd": this method with Hinton's KD term on
    matches_logits: ClassVar[bool] = False  # its own terms compare teacher and student logits (KD, DKD, CRLD, ...)
    # Which fields of the teacher's Features the method reads; a teacher cache holds "logits" and "pooled".
    teacher_reads: ClassVar[frozenset[str]] = LOGITS_AND_POOLED | {"stages", "preact"}
    # Its teacher terms take logits rebuilt from the compact teacher cache (`teacher_cache_topk`):
    # the top-K exact, the other classes sharing the rest's probability mass evenly; no pooled feature.
    accepts_topk_teacher: ClassVar[bool] = False
    # The run's student is more than `student` (e.g. SimKD's predicts through a projector and the
    # teacher's classifier): loading a trained student builds the method to get its architecture.
    deploys_composite: ClassVar[bool] = False
    # The paper the method comes from, as 'Authors year, "Title"' (`kdistill list`, the README's table).
    paper: ClassVar[str] = ""

    @classmethod
    def teacher_reads_for(cls, options: MethodOptions) -> frozenset[str]:
        """What the method reads of the teacher with these options (e.g. a stage map when an
        option picks one); resolved once into the run's MethodSpec."""
        return cls.teacher_reads

    def __init__(self, student: FeatureModel, teacher: FeatureModel | None, options: MethodOptions,
                 context: MethodContext):
        super().__init__()
        self.student = student
        self.options = options
        self.weights = {
            name: default if getattr(options, name) is None else float(getattr(options, name))
            for name, default in self.default_weights.items()
        }
        for option in ("logit_standardize", "curriculum_temperature"):
            if getattr(options, option) and not (self.matches_logits or self.weights["w_kd"]):
                raise KdistillError(f"method.{option}=true does nothing for '{type(self).__name__}': it has no "
                                    "logit-matching term; turn the KD term on (method.w_kd) or drop the option")
        # CTKD's learned temperature (`logit_temperature`); trained with the student, so in the optimizer.
        self.temperature_module = (CurriculumTemperature(options, context.num_classes)
                                   if options.curriculum_temperature else None)
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.teacher = teacher
        self.teacher_outputs: TeacherOutputs | None = None  # set: read the teacher's outputs instead of running it
        self.phase = "train"
        self.epoch, self.epochs = 1, 1  # where training stands (`on_epoch_start`)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def loss_weight(self, term: str) -> float:
        if term in self.fixed_term_weights:
            return self.fixed_term_weights[term]
        if term == "ce":
            return self.weights["w_ce"]
        if term == "kd":
            return self.weights["w_kd"]
        return self.weights["w_method"]

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called by the Trainer before each distillation epoch (`epoch` counted from 1, also
        after a resume), so a method can schedule its terms (e.g. a warm-up) by epoch."""
        self.epoch, self.epochs = epoch, epochs

    def set_phase(self, phase: str) -> None:
        """"init" (the method's initialisation phase) or "train" (distillation): what `forward` computes."""
        self.phase = phase

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Everything a checkpoint must hold: the student and the method's parts, not the teacher."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise KdistillError(f"the saved state does not fit this run's student and method (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]}): resume with the configuration the run was started with")

    def deployed_student(self) -> FeatureModel:
        """The model the run evaluates every epoch and saves as its student (`student_*.pth`): the
        student, unless the method predicts through parts of its own (`deploys_composite`)."""
        return self.student

    def strong_view(self, batch: Batch) -> Tensor:
        """The batch's strong view, for methods with `needs_strong_view`; a clear error without one."""
        if "image_strong" not in batch:
            raise KdistillError(f"method '{type(self).__name__}' needs batches with a strong view ('image_strong'): "
                                "build the loaders with with_strong_view=True")
        return batch["image_strong"]

    def logit_temperature(self, student_logits: Tensor, teacher_logits: Tensor) -> float | Tensor:
        """The temperature of the logit-matching terms: `options.temperature`, or with
        `curriculum_temperature` CTKD's learned one (a 0-dim tensor, or [B, 1] per sample), whose
        gradient is reversed with this epoch's curriculum strength. Every call on the same logits
        gives the same value, and the gradients of all the terms that use it reach the module."""
        if self.temperature_module is None:
            return self.options.temperature
        return self.temperature_module(student_logits, teacher_logits, reversal_strength(self.options, self.epoch))

    def temperature_extras(self, student_logits: Tensor, teacher_logits: Tensor) -> dict[str, Tensor]:
        """CTKD's temperature (batch mean) and reversal strength, logged per epoch; none without it."""
        if self.temperature_module is None:
            return {}
        with torch.no_grad():
            temperature = self.logit_temperature(student_logits, teacher_logits).mean()
        return {"ctkd_temperature": temperature, "ctkd_reversal": temperature.new_tensor(
            reversal_strength(self.options, self.epoch))}

    def teacher_features(self, x: Tensor, preact: bool = False) -> Features:
        """The frozen teacher's features of `x`, computed without autograd bookkeeping. Inference
        tensors cannot be saved for a backward pass, so the student's graph gets ordinary copies."""
        with torch.inference_mode():
            features = self.teacher.extract(x, preact=preact)
        return features.map(torch.Tensor.clone)

    def teacher_view(self, batch: Batch, view: str = "image") -> Features:
        """The teacher's features of one view of the batch, from `teacher_outputs` when the run has them."""
        if self.teacher_outputs is not None:
            return self.teacher_outputs.read(batch["index"], view)
        return self.teacher_features(batch[view], preact=self.needs_preact)

    def supervised_terms(self, student: Features, teacher: Features | None, labels: Tensor) -> dict[str, Tensor]:
        """CE on the labels, and KD when its weight is on: the terms most methods add to theirs."""
        terms = {"ce": F.cross_entropy(student.logits, labels)} if self.weights["w_ce"] else {}
        return {**terms, **self.kd_term(student, teacher)}

    def kd_term(self, student: Features, teacher: Features | None) -> dict[str, Tensor]:
        """Hinton's KD term when its weight is on (`X+kd` methods), else nothing."""
        if not self.weights["w_kd"] or teacher is None:
            return {}
        temperature = self.logit_temperature(student.logits, teacher.logits)
        return {"kd": kd_loss(student.logits, teacher.logits, temperature, self.options.logit_standardize)}

    def method_terms(self, student: Features, teacher: Features, batch: Batch) -> Terms:
        """The method's own loss terms; feature methods override only this."""
        return Terms({})

    def train_parameters(self) -> list[nn.Parameter]:
        """What the distillation optimizer trains: the student and the method's parts, never the teacher."""
        return [p for p in self.parameters() if p.requires_grad]

    def init_phase(self) -> InitPhase | None:
        """The method's initialisation phase, run by the Trainer before distillation; None = none."""
        return None

    def init_terms(self, batch: Batch) -> dict[str, Tensor]:
        """Loss terms of the initialisation phase, each weighted 1."""
        raise NotImplementedError(f"{type(self).__name__} has no initialisation phase")

    def init_mode(self) -> None:
        """Train/eval modes during the initialisation phase (default: as in distillation)."""
        self.train()

    def output(self, logits: Tensor | None, terms: Terms, weights: dict[str, float] | None = None) -> DistillOutput:
        """The DistillOutput of `terms`: each in fp32, its weight (`loss_weight` unless given) and the total."""
        losses = {name: value.float() for name, value in terms.losses.items()}
        weights = {name: self.loss_weight(name) for name in losses} if weights is None else weights
        total = sum((weights[name] * value for name, value in losses.items()), torch.zeros((), device=_device_of(self)))
        return DistillOutput(logits, losses, weights, total, terms.extras)

    def distill(self, batch: Batch) -> DistillOutput:
        """One distillation step's output. Feature methods override `method_terms` only;
        methods with their own views or inputs (CRLD, label-free) override this."""
        x = batch["image"]
        student = self.student.extract(x, preact=self.needs_preact)
        teacher = self.teacher_view(batch) if self.teacher is not None else None
        losses = self.supervised_terms(student, teacher, batch["label"])
        if teacher is None:
            return self.output(student.logits, Terms(losses))
        own = self.method_terms(student, teacher, batch)
        extras = {**own.extras, **self.temperature_extras(student.logits, teacher.logits)}
        return self.output(student.logits, Terms({**losses, **own.losses}, extras))

    def forward(self, batch: Batch) -> DistillOutput:
        if self.phase == "init":
            terms = self.init_terms(batch)
            return self.output(None, Terms(terms), weights=dict.fromkeys(terms, 1.0))
        return self.distill(batch)


@dataclass
class TwoViews:
    """What a two-view method computes on a batch: the student's and the teacher's outputs on the
    weak view (the batch's "image") and on the strong view ("image_strong")."""

    student: Features  # on the weak view
    student_strong: Tensor  # logits on the strong view
    teacher: Features
    teacher_strong: Features


class TwoViewDistiller(Distiller):
    """Base of the methods that distil on a weak and a strong view of every image (CRLD, MLKD).

    The student sees the views in two passes, so batch-norm statistics stay per view as in the
    reference codes. Their losses compute CE over both views, so `two_view_terms` adds only KD
    (on the weak view, when `w_kd` > 0) to it: CE is computed once.
    """

    needs_strong_view = True

    def two_views(self, batch: Batch) -> TwoViews:
        student = self.student.extract(batch["image"], preact=self.needs_preact)
        return TwoViews(student, self.student(self.strong_view(batch)), self.teacher_view(batch),
                        self.teacher_view(batch, "image_strong"))

    def two_view_terms(self, views: TwoViews, both_views_ce: Tensor) -> dict[str, Tensor]:
        """CE (summed over the two views, from the method's loss) and Hinton's KD on the weak view."""
        return {"ce": both_views_ce, **self.kd_term(views.student, views.teacher)}


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
