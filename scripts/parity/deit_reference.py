"""facebookresearch/deit: DeiT's distillation through the distillation token, hard and soft.

The reference side is built as its `main.py` builds it for the command
`python main.py --model deit_tiny_distilled_patch16_224 --input-size 32 --batch-size 16
--teacher-model regnetx_002 --distillation-type hard --mixup 0 --cutmix 0 --unscale-lr` (its own
argument parser; every other setting its default, unmodified):
- the student: models.py's `deit_tiny_distilled_patch16_224` (its `DistilledVisionTransformer` on
  timm's ViT: width 192, depth 12, 3 heads, 16-px patches, which its builder fixes: a 2x2 grid at
  32 px) with main.py's arguments (drop path 0.1);
- the teacher: timm's RegNetX-200MF with main.py's `create_model` arguments (a RegNet, as the
  paper's teacher), random weights whose batch-norm statistics are set from 4 batches and whose
  classifier is scaled to a trained teacher's logit spread, copied to kdistill's (in place of
  `--teacher-path`);
- the criterion: main.py's `DistillationLoss` around its base criterion (label smoothing 0.1 when
  mixup is off);
- the optimizer: timm's `create_optimizer` on the student (AdamW, lr 5e-4, weight decay 0.05 but
  none on biases, norms and the model's `no_weight_decay()`: the position embedding and the class
  and distillation tokens), and timm's `NativeScaler` (it disables itself without CUDA, as
  autocast does);
- every step: its `engine.train_one_epoch`.
Mixup and CutMix are off (kdistill has neither), `--unscale-lr` keeps the base rate (the linear
scaling would give 5e-4 x 16 / 512), no schedule runs on either side, and main.py's model EMA (an
evaluation copy the step never reads) is not kept.

kdistill's side: method `deit` with its defaults (alpha 0.5, tau 1, label smoothing 0.1: DeiT's) and
the reference's distillation type, student `timm:deit_tiny_distilled_patch16_224` and teacher
`timm:regnetx_002` at 32 px (drop path 0.1 as the reference), `optim.name=adamw` at the reference's lr
and weight decay with `optim.model_no_weight_decay=true` (the student's `no_weight_decay()` names
exempt, as timm's `create_optimizer`), as the `deit` recipe sets them. One row keeps kdistill's default
AdamW groups (that key false: the position embedding and tokens decayed), the one difference left
between a default `deit` run and DeiT's `main.py`.
Every weight is copied by name. Both sides reseed torch's generator before each step, so their
drop-path draws are the same.

Patched in memory: `torch.cuda.synchronize()` in the loop (no CUDA); models.py's `register_model`
(the reference's models would replace timm's `deit_*` entries, which kdistill's side builds); and
main.py's imports of `augment` (it imports a helper timm 1.x no longer has; only data loading uses
it) and of `models_v2` (more registrations).

Recorded: the reference's base term by a hook on its base criterion, its distillation term kept on
its criterion by one added line (in memory: the criterion returns only the total), and the total
at `backward`.
"""

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from core import (
    CALIBRATION_BATCHES,
    NUM_CLASSES,
    Comparison,
    Data,
    Reference,
    ReferenceCode,
    TermRecorder,
    calibrate_batch_norm,
    copy_weights,
    in_dtype,
    largest_difference,
    run_dtype,
    run_kdistill,
)
from cospress import copy_by_name, largest_named_difference
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer
from timm.utils import NativeScaler
from torch import nn

from kdistill.config import OptimConfig
from kdistill.methods import Distiller, MethodContext, build_distiller
from kdistill.models import create_model

IMAGE_SIZE = 32
STUDENT, TEACHER = "deit_tiny_distilled_patch16_224", "regnetx_002"
COMMAND = ["--model", STUDENT, "--input-size", str(IMAGE_SIZE), "--teacher-model", TEACHER,
           "--teacher-path", "copied-weights", "--mixup", "0", "--cutmix", "0", "--unscale-lr"]
# The random teacher's logits (std 0.08 after its batch-norm calibration) scaled to a trained
# one's spread (std about 3), so the soft target is not uniform.
TEACHER_LOGIT_SCALE = 40.0
DRAW_SEED = 1000  # the generator's seed before step i is DRAW_SEED + i, on both sides

NO_CUDA_SYNC = [("torch.cuda.synchronize()", "pass")]
# The criterion returns only its total: the distillation term is kept on the module as well.
KEEP_DISTILLATION_TERM = [("        loss = base_loss * (1 - self.alpha) + distillation_loss * self.alpha",
                           "        self.distillation_term = distillation_loss.detach()\n"
                           "        loss = base_loss * (1 - self.alpha) + distillation_loss * self.alpha")]
NO_REGISTRY = [("from timm.models.registry import register_model",
                "def register_model(builder):  # parity: timm's registry keeps its own deit_* models\n"
                "    return builder")]
MAIN_IMPORTS = [("from augment import new_data_aug_generator\n", ""), ("import models_v2\n", "")]


@dataclass(frozen=True)
class Row:
    """One comparison: the distillation type, and kdistill's weight-decay groups (the reference's are
    always its own: no decay on the student's `no_weight_decay()` names)."""

    distillation: str  # hard | soft, both sides
    model_no_weight_decay: bool = True  # kdistill's optim.model_no_weight_decay (false: its default)

    def argv(self) -> list[str]:
        return [*COMMAND, "--batch-size", "{batch_size}", "--distillation-type", self.distillation]


ROWS = {
    "deit": Row("hard"),
    "deit soft": Row("soft"),
    "deit (kdistill's default AdamW groups)": Row("hard", model_no_weight_decay=False),
}


class SeededSteps(list):
    """A run's batches; torch's generator is reseeded before each is handed out (the step's
    random draws: drop path), the same way on both sides."""

    def __iter__(self):
        for index, item in enumerate(super().__iter__()):
            torch.manual_seed(DRAW_SEED + index)
            yield item


class DeiTCode:
    reference = Reference("deit", "facebookresearch/deit", "7e160fe43f0252d17191b71cbb5826254114ea5b")
    methods = ROWS

    def __init__(self, path: Path, teacher: str, student: str, batch_size: int, data: Data):
        self.code = ReferenceCode(path)
        self.batch_size, self.data = batch_size, data  # the CIFAR pair does not apply (module docstring)

    def __enter__(self):
        self.code.__enter__()
        self.models = self.code.load("models", NO_REGISTRY)
        self.losses = self.code.load("losses", KEEP_DISTILLATION_TERM)  # before engine.py imports it
        self.engine = self.code.load("engine", NO_CUDA_SYNC)
        self.main = self.code.load("main", MAIN_IMPORTS)
        return self

    def __exit__(self, *exc):
        self.code.__exit__(*exc)

    def notes(self, method: str) -> dict:
        """The pair this reference runs instead of the CIFAR one (module docstring)."""
        row = ROWS[method]
        return {"pair": f"{TEACHER} -> {STUDENT}, {IMAGE_SIZE} px",
                "reference_command": "python main.py " + " ".join(self.arguments_for(row)),
                "kdistill_settings": f"method.label_smoothing=0.1 optim.model_no_weight_decay="
                                     f"{str(row.model_no_weight_decay).lower()}"}

    def arguments_for(self, row: Row) -> list[str]:
        return [part.format(batch_size=self.batch_size) for part in row.argv()]

    # ---- the reference side, as main.py builds it ----
    def build_reference(self, row: Row):
        args = self.main.get_args_parser().parse_args(self.arguments_for(row))
        # main.py's create_model call, on models.py's builder itself (not registered: module docstring)
        student = getattr(self.models, args.model)(pretrained=False, num_classes=NUM_CLASSES, drop_rate=args.drop,
                                                   drop_path_rate=args.drop_path, img_size=args.input_size)
        teacher = timm.create_model(args.teacher_model, pretrained=False, num_classes=NUM_CLASSES, global_pool="avg")
        return args, student, teacher

    def reference_criterion(self, args, teacher: nn.Module) -> nn.Module:
        """main.py's criterion with mixup off."""
        base = LabelSmoothingCrossEntropy(smoothing=args.smoothing) if args.smoothing else nn.CrossEntropyLoss()
        return self.losses.DistillationLoss(base, teacher, args.distillation_type, args.distillation_alpha,
                                            args.distillation_tau)

    # ---- kdistill's side ----
    def build_kdistill(self, args, row: Row) -> tuple[Distiller, OptimConfig]:
        student = create_model(f"timm:{STUDENT}", NUM_CLASSES, img_size=IMAGE_SIZE, drop_path_rate=args.drop_path)
        teacher = create_model(f"timm:{TEACHER}", NUM_CLASSES)
        optim = OptimConfig(name="adamw", lr=args.lr, weight_decay=args.weight_decay,
                            model_no_weight_decay=row.model_no_weight_decay)
        context = MethodContext((3, IMAGE_SIZE, IMAGE_SIZE), NUM_CLASSES, self.data.labels, optim.lr)
        distiller = build_distiller({"name": "deit", "distillation": row.distillation,
                                     "temperature": args.distillation_tau}, student, teacher, context)
        alpha = args.distillation_alpha
        if (distiller.weights["w_ce"], distiller.weights["w_method"]) != (1 - alpha, alpha):
            raise RuntimeError(f"kdistill's weights {distiller.weights} are not the reference's alpha {alpha}")
        if distiller.options.label_smoothing != args.smoothing:  # kdistill's default is DeiT's
            raise RuntimeError(f"kdistill's label smoothing {distiller.options.label_smoothing} is not the "
                               f"reference's {args.smoothing}")
        return distiller, optim

    def run(self, name: str, steps: int, dtype: torch.dtype) -> Comparison:
        row = ROWS[name]
        torch.manual_seed(0)  # built in float32 and then converted: the same initial weights in every dtype
        args, student, teacher = self.build_reference(row)
        ours, optim = self.build_kdistill(args, row)
        with run_dtype(dtype):
            for module in (student, teacher, ours):
                module.to(dtype)
            batches = [in_dtype(b, dtype) for b in self.data.batches(steps, self.batch_size, strong=False)]
            calibrate_batch_norm(teacher, batches[:CALIBRATION_BATCHES])
            with torch.no_grad():
                teacher.get_classifier().weight.mul_(TEACHER_LOGIT_SCALE)
            copy_by_name(student, ours.student.model)
            copy_weights(teacher, ours.teacher.model)
            reference_steps = {"train": self.train_reference(args, student, teacher, batches)}
            kdistill_steps = run_kdistill(ours, SeededSteps(batches), [], optim.lr, optim=optim)
        terms = {"ce": "weighted ce", "deit": "weighted deit", "total": "total"}
        weights = {"student": largest_named_difference(student, ours.student.model),
                   "teacher": largest_difference(teacher, ours.teacher.model)}
        return Comparison(terms, reference_steps, kdistill_steps, weights)

    def train_reference(self, args, student: nn.Module, teacher: nn.Module,
                        batches: list[dict]) -> list[dict[str, float]]:
        """main.py's criterion, optimizer and loss scaler, then its `train_one_epoch` over the batches."""
        teacher.eval()
        criterion = self.reference_criterion(args, teacher)
        optimizer = create_optimizer(args, student)
        recorder = TermRecorder()
        recorder.watch(criterion.base_criterion, "ce", 1 - args.distillation_alpha)

        def record_distillation_term(module, inputs, output):
            recorder.current["deit"] = args.distillation_alpha * float(module.distillation_term)

        recorder.handles.append(criterion.register_forward_hook(record_distillation_term))
        loader = SeededSteps((b["image"], b["label"]) for b in batches)
        with recorder.steps_by_backward():
            self.engine.train_one_epoch(student, criterion, loader, optimizer, torch.device("cpu"), 0, NativeScaler(),
                                        args.clip_grad, None, None, set_training_mode=args.train_mode, args=args)
        return recorder.steps
