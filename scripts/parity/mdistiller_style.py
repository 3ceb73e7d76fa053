"""References built on mdistiller's engine: mdistiller itself (DKD) and the LS code
(sunshangquan/logit-standardization-KD: KD+LS, DKD+LS, MLKD).

The reference side is built as its `tools/train.py` builds it (its `CFG` defaults, the pair's
config file, the command-line rules, `distiller_dict`, `BaseTrainer.init_optimizer`) and each step
is its trainer's own `train_iter`, fed the run's batches. Its terms are what the distiller's
`forward_train` returns (already weighted), compared with kdistill's weighted terms.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from core import (
    CALIBRATION_BATCHES,
    NUM_CLASSES,
    Comparison,
    Data,
    Recipe,
    Reference,
    ReferenceCode,
    TermRecorder,
    build_kdistill,
    calibrate_batch_norm,
    copy_weights,
    cuda_calls_as_no_ops,
    in_dtype,
    largest_difference,
    resolve,
    run_dtype,
    run_kdistill,
    stub_missing_modules,
)


@dataclass(frozen=True)
class Run:
    """One method of an mdistiller-style reference."""

    distiller: str  # cfg.DISTILLER.TYPE
    config_folder: str  # configs/cifar100/<folder>/
    method: str  # kdistill's method
    terms: dict  # reference loss name -> kdistill's weighted term
    logit_stand: bool = False  # tools/train.py --logit-stand (with its --base-temp 2 --kd-weight 9)
    two_views: bool = False  # the trainer feeds (image_weak, image_strong)
    overrides: tuple = ()  # kdistill options set over its recipe's, as (key, value) pairs
    patch: tuple = ()  # (module, class, [(old, new)]): a distiller patched in memory (a known slip)
    config_file: str | None = None  # one config for every pair (else <folder>/<teacher>_<student>.yaml)
    configure: Callable | None = None  # (cfg, teacher, student, recipe): the pair's settings the command line gives
    auxiliary: Callable | None = None  # distiller -> {kdistill path: reference module}


# MLKD's strong-view instance terms at T = 2 and 6 read the weak view's logits (a copy of the
# weak-view lines); kdistill uses the strong view's (README: deviations). Corrected in memory to
# show that the rest is the same computation.
MLKD_STRONG_VIEW_SLIP = [(
    "        ) + self.kd_loss_weight * kd_loss(\n            logits_student_{view},\n"
    "            logits_teacher_{view},\n            2.0,\n{extra}        ) + self.kd_loss_weight * kd_loss(\n"
    "            logits_student_{view},\n            logits_teacher_{view},\n            6.0,\n{extra}        )\n\n"
    "        loss_cc_weak",
)]


def slip_patch(extra: str = "") -> list[tuple[str, str]]:
    return [(text.format(view="weak", extra=extra), text.format(view="strong", extra=extra))
            for (text,) in MLKD_STRONG_VIEW_SLIP]


class MDistillerStyle:
    reference: Reference
    methods: dict[str, Run]

    def __init__(self, path: Path, teacher: str, student: str, batch_size: int, data: Data):
        self.path = Path(path)
        self.code = ReferenceCode(path)
        self.teacher, self.student, self.batch_size, self.data = teacher, student, batch_size, data

    def __enter__(self):
        self.code.__enter__()
        stub_missing_modules(["tensorboardX", "wandb"])
        self.cfg_module = self.code.load("mdistiller.engine.cfg")
        self.models = self.code.load("mdistiller.models")
        self.distillers = self.code.load("mdistiller.distillers")
        self.trainers = self.code.load("mdistiller.engine.trainer")
        self.trainer_dict = self.code.load("mdistiller.engine").trainer_dict
        return self

    def __exit__(self, *exc):
        self.code.__exit__(*exc)

    def config(self, run: Run):
        """The reference's configuration as its tools/train.py makes it."""
        cfg = self.cfg_module.CFG.clone()
        if run.config_file:
            cfg.merge_from_file(str(self.path / "configs" / "cifar100" / run.config_file))
            return cfg
        folder = self.path / "configs" / "cifar100" / run.config_folder
        names = [f"{self.teacher}_{self.student}.yaml", short_config_name(self.teacher, self.student)]
        found = [folder / name for name in names if (folder / name).exists()]
        if not found:
            raise FileNotFoundError(f"{folder} has no config of {self.teacher} -> {self.student}")
        cfg.merge_from_file(str(found[0]))
        if run.logit_stand:
            self.apply_logit_stand(cfg, run)
        return cfg

    def apply_logit_stand(self, cfg, run: Run) -> None:
        raise NotImplementedError(f"{self.reference.name} has no --logit-stand")

    def run(self, name: str, steps: int, dtype: torch.dtype) -> Comparison:
        run = self.methods[name]
        recipe = Recipe.load(run.method, self.teacher, self.student, **dict(run.overrides))
        torch.manual_seed(0)  # built in float32 and then converted: the same initial weights in every dtype
        with cuda_calls_as_no_ops():
            cfg = self.config(run)
            model_dict = self.models.cifar_model_dict
            teacher = model_dict[self.teacher][0](num_classes=NUM_CLASSES)
            student = model_dict[self.student][0](num_classes=NUM_CLASSES)
            if run.configure:
                run.configure(cfg, teacher, student, recipe)
            if run.patch:
                module, class_name, patches = run.patch
                distiller_class = getattr(self.code.load(module, patches), class_name)
            else:
                distiller_class = self.distillers.distiller_dict[cfg.DISTILLER.TYPE]
            distiller = distiller_class(student, teacher, cfg)
            ours = build_kdistill(recipe, self.student, self.teacher, self.data.labels, teacher_weights=teacher)
        with run_dtype(dtype), cuda_calls_as_no_ops():
            distiller.to(dtype)
            ours.to(dtype)
            batches = [in_dtype(b, dtype) for b in self.data.batches(steps, self.batch_size, strong=run.two_views)]
            calibrate_batch_norm(teacher, batches[:CALIBRATION_BATCHES])
            copy_weights(student, ours.student)
            copy_weights(teacher, ours.teacher)
            auxiliary = run.auxiliary(distiller) if run.auxiliary else {}
            for path, module in auxiliary.items():
                copy_weights(module, resolve(ours, path))
            reference_steps = {"train": self.train_reference(cfg, distiller, batches, run)}
            kdistill_steps = run_kdistill(ours, batches, [], recipe.lr)
        terms = {**run.terms, "total": "total"}
        weights = {"student": largest_difference(student, ours.student)}
        weights.update({path: largest_difference(module, resolve(ours, path)) for path, module in auxiliary.items()})
        return Comparison(terms, reference_steps, kdistill_steps, weights)

    def train_reference(self, cfg, distiller, batches: list[dict], run: Run) -> list[dict[str, float]]:
        trainer_class = self.trainers.BaseTrainer
        trainer = SimpleNamespace(distiller=SimpleNamespace(module=distiller), cfg=cfg)
        trainer.optimizer = trainer_class.init_optimizer(trainer, cfg)
        trainer.distiller = distiller  # train_iter calls it (the run wraps it in DataParallel)
        train_iter = self.trainer_dict[cfg.SOLVER.TRAINER].train_iter
        recorder = TermRecorder()
        forward_train = distiller.forward_train

        def recording_forward_train(*args, **kwargs):
            logits, losses = forward_train(*args, **kwargs)
            for key, value in losses.items():
                recorder.current[key] = recorder.current.get(key, 0.0) + float(value.detach().mean())
            return logits, losses

        distiller.forward_train = recording_forward_train
        distiller.train()
        meters = {key: self.trainers.AverageMeter()  # "mem": the CRLD copy's trainer logs memory
                  for key in ("training_time", "data_time", "mem", "losses", "top1", "top5")}
        with recorder.steps_by_backward():
            for batch in batches:
                image = (batch["image"], batch["image_strong"]) if run.two_views else batch["image"]
                train_iter(trainer, (image, batch["label"], batch["index"]), 1, meters)
        return recorder.steps


def short_config_name(teacher: str, student: str) -> str:
    """mdistiller's own file names (res56_res20.yaml, wrn40_2_wrn_16_2.yaml, ...)."""
    def short(name: str) -> str:
        return name.replace("resnet", "res").replace("wrn_40_2", "wrn40_2") if name.startswith(("resnet", "wrn_40")) \
            else name
    return f"{short(teacher)}_{short(student)}.yaml"


MLKD_TERMS = {"loss_ce": "weighted ce", "loss_kd": "weighted mlkd_instance", "loss_cc": "weighted mlkd_class",
              "loss_bc": "weighted mlkd_batch"}


class MLKDAuthors(MDistillerStyle):
    reference = Reference("mlkd", "Jin-Ying/Multi-Level-Logit-Distillation",
                          "5ee473fcf193dfb00a0598b64d0acfe6ad58a482")
    methods = {
        "mlkd": Run("KD_ours", "ours", "mlkd", MLKD_TERMS, two_views=True),
        "mlkd (slip corrected)": Run("KD_ours", "ours", "mlkd", MLKD_TERMS, two_views=True,
                                     patch=("mdistiller.distillers.KD_ours", "KD_ours", slip_patch())),
    }


@torch.no_grad()
def reviewkd_pair(cfg, teacher, student, recipe) -> None:
    """What mdistiller's README passes on the command line for a pair other than its config's:
    the levels' channels (shallow to deep) and sizes (deep to shallow), and the
    pair's ReviewKD weight (the authors' per-pair value, which kdistill's recipe carries)."""
    probe = torch.zeros(2, 3, 32, 32)
    (_, s), (_, t) = student.eval()(probe), teacher.eval()(probe)
    s_levels = [*s["feats"][1:], s["pooled_feat"][:, :, None, None]]
    t_levels = [*t["preact_feats"][1:], t["pooled_feat"][:, :, None, None]]
    cfg.REVIEWKD.IN_CHANNELS = [f.shape[1] for f in s_levels]
    cfg.REVIEWKD.OUT_CHANNELS = [f.shape[1] for f in t_levels]
    cfg.REVIEWKD.SHAPES = [f.shape[2] for f in s_levels][::-1]
    cfg.REVIEWKD.OUT_SHAPES = [f.shape[2] for f in t_levels][::-1]
    cfg.REVIEWKD.REVIEWKD_WEIGHT = recipe.options["w_method"]


def reviewkd_fusions(distiller) -> dict:
    """mdistiller keeps its ABFs deep to shallow (`abfs[::-1]`), kdistill its fusions shallow to deep."""
    count = len(distiller.abfs)
    return {f"fusions.{level}": distiller.abfs[count - 1 - level] for level in range(count)}


@torch.no_grad()
def varied_batch_norms(cfg, teacher, student, recipe) -> None:
    """OFD reads its margins off the teacher's batch norms before each ReLU; a fresh teacher's are
    all weight 1, bias 0 (one margin for every channel). Drawn instead (seeded), weights in
    [0.2, 1.2] and biases around 0, so the margins differ per channel and both of their branches
    (the expected negative value, and -3 std where the pre-activation is rarely negative) occur."""
    generator = torch.Generator().manual_seed(0)
    for module in teacher.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.weight.copy_(0.2 + torch.rand(module.weight.shape, generator=generator))
            module.bias.copy_(torch.randn(module.bias.shape, generator=generator))


def ofd_connectors(distiller) -> dict:
    return {f"connectors.{level}": connector for level, connector in enumerate(distiller.connectors.connectors)}


# mdistiller's OFD overrides `train()` so that its teacher runs in training mode (batch-norm
# statistics of the batch, running statistics updated); kdistill keeps the teacher in eval mode
# (README: deviations). Switched off in memory as mdistiller's base `Distiller.train` does it.
OFD_TEACHER_IN_EVAL_MODE = [(
    "        for module in self.children():\n            module.train(mode)\n        return self\n",
    "        for module in self.children():\n            module.train(mode)\n        self.teacher.eval()\n"
    "        return self\n",
)]
OFD_TERMS = {"loss_ce": "weighted ce", "loss_kd": "weighted ofd"}


class MDistiller(MDistillerStyle):
    reference = Reference("mdistiller", "megvii-research/mdistiller", "a08d46f10d6102bd6e3f258ca5ac880b020ea259")
    methods = {
        "dkd": Run("DKD", "dkd", "dkd", {"loss_ce": "weighted ce", "loss_kd": "weighted dkd"}),
        "reviewkd": Run("REVIEWKD", "", "reviewkd", {"loss_ce": "weighted ce", "loss_kd": "weighted reviewkd"},
                        config_file="reviewkd.yaml", configure=reviewkd_pair, auxiliary=reviewkd_fusions),
        # ofd.yaml is resnet32x4 -> resnet8x4's; its settings (CE 1, OFD 0.001, 1x1 connectors) hold for every pair
        "ofd": Run("OFD", "", "ofd", OFD_TERMS, config_file="ofd.yaml", configure=varied_batch_norms,
                   auxiliary=ofd_connectors),
        "ofd (teacher in eval mode)": Run("OFD", "", "ofd", OFD_TERMS, config_file="ofd.yaml",
                                          configure=varied_batch_norms, auxiliary=ofd_connectors,
                                          patch=("mdistiller.distillers.OFD", "OFD", OFD_TEACHER_IN_EVAL_MODE)),
    }


LS_ARGUMENT = "            logit_stand=self.logit_stand,\n"  # the LS code's extra line in each kd_loss call


class LogitStandardization(MDistillerStyle):
    reference = Reference("lskd", "sunshangquan/logit-standardization-KD", "f6e5aa5172bad618e801163c3385322eea673754")
    BASE_TEMP, KD_WEIGHT = 2.0, 9.0  # tools/train.py's --base-temp and --kd-weight defaults
    methods = {
        "kd+ls": Run("KD", "kd", "kd+ls", {"loss_ce": "weighted ce", "loss_kd": "weighted kd"}, logit_stand=True),
        "dkd+ls": Run("DKD", "dkd", "dkd+ls", {"loss_ce": "weighted ce", "loss_kd": "weighted dkd"},
                      logit_stand=True),
        # The LS code's MLKD reads its cfg.KD (T 2, KD weight 9, also without --logit-stand); kdistill's
        # mlkd recipe follows the MLKD authors' (T 4, 0.9): set to the LS code's values here.
        "mlkd+ls": Run("MLKD", "mlkd", "mlkd", MLKD_TERMS, logit_stand=True, two_views=True,
                       overrides=(("logit_standardize", True), ("temperature", 2.0), ("w_method", 9.0)),
                       patch=("mdistiller.distillers.MLKD", "MLKD", slip_patch(LS_ARGUMENT))),
    }

    def apply_logit_stand(self, cfg, run: Run) -> None:
        """tools/train.py's --logit-stand with its default --base-temp 2 --kd-weight 9."""
        cfg.EXPERIMENT.LOGIT_STAND = True
        if run.distiller == "KD":
            cfg.KD.LOSS.KD_WEIGHT = self.KD_WEIGHT
            cfg.KD.TEMPERATURE = self.BASE_TEMP
        elif run.distiller == "DKD":
            cfg.DKD.ALPHA = cfg.DKD.ALPHA * self.KD_WEIGHT
            cfg.DKD.BETA = cfg.DKD.BETA * self.KD_WEIGHT
            cfg.DKD.T = self.BASE_TEMP
        elif run.distiller == "MLKD":
            cfg.KD.LOSS.KD_WEIGHT = self.KD_WEIGHT
            cfg.KD.TEMPERATURE = self.BASE_TEMP
