"""The DIST authors' code (hunto/DIST_KD): DIST on CIFAR-100.

Its training code is the submodule `classification` (hunto/image_classification_sota, at the commit
DIST_KD pins): clone with `--recurse-submodules`. The reference side is built as its
`tools/train.py` builds it for the README's command (`tools/dist_train.sh 1
configs/strategies/distill/dist_cifar.yaml cifar_resnet20 --teacher-model cifar_resnet56`): its
own argument parser with that config, `KDLoss` (CE 1 + 2 x DIST at beta = gamma = 1, tau 4),
`build_optimizer` and `build_scheduler`, and every step is its own `train_epoch`. What a
single-process CPU run needs is patched in memory: the meters' all-reduce across ranks is off,
and the student is not wrapped in DistributedDataParallel.
"""

import importlib.util
import subprocess
import sys
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
    run_dtype,
    run_kdistill,
)

SINGLE_PROCESS = [("AverageMeter(dist=True)", "AverageMeter(dist=False)")]
CONFIG = "configs/strategies/distill/dist_cifar.yaml"
EPOCH = 3  # the distillation epoch (from 1; the reference counts from 0): the learning rate is flat in it


class DISTAuthors:
    reference = Reference("dist", "hunto/DIST_KD", "2418f18b1fedd7c2646a7b1b9a27d5c674c2170b")
    classification = Reference("dist classification", "hunto/image_classification_sota",
                               "d9662f7df68fe46b973c4580b7c9b896cedcd301")
    LOSS_FILE = "classification/lib/models/losses/dist_kd.py"
    methods = {"dist": "dist"}  # kdistill's method -> its recipe

    def __init__(self, path: Path, teacher: str, student: str, batch_size: int, data: Data):
        self.path = Path(path)
        self.classification.check(self.path / "classification")
        self.code = ReferenceCode(self.path / "classification")
        self.teacher, self.student, self.batch_size, self.data = teacher, student, batch_size, data

    @classmethod
    def loss_module(cls, path: Path) -> type:
        """The DIST loss class of a clone (loaded alone: other code bases use it inside their loops)."""
        file = Path(path) / cls.LOSS_FILE
        if not file.exists():
            raise FileNotFoundError(f"{file} is missing: clone {cls.reference.repository} with --recurse-submodules")
        head = subprocess.run(["git", "-C", str(file.parent), "rev-parse", "HEAD"], capture_output=True, text=True)
        if head.stdout.strip() != cls.classification.commit:
            print(f"{file}: expected {cls.classification.repository} at {cls.classification.commit}")
        spec = importlib.util.spec_from_file_location("dist_authors_loss", file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.DIST

    def __enter__(self):
        self.code.__enter__()
        self.train = self.code.load("tools.train", SINGLE_PROCESS)
        self.args_module = self.code.load("lib.utils.args")
        self.kd_loss = self.code.load("lib.models.losses.kd_loss")
        self.builder = self.code.load("lib.models.builder")
        return self

    def __exit__(self, *exc):
        self.code.__exit__(*exc)

    def arguments(self) -> SimpleNamespace:
        """tools/train.py's arguments for the README's command, as its parser gives them."""
        argv = ["train.py", "-c", str(self.code.root / CONFIG), "--model", f"cifar_{self.student}",
                "--teacher-model", f"cifar_{self.teacher}", "--experiment", "parity"]
        saved, sys.argv = sys.argv, argv
        try:
            args, _ = self.args_module.parse_args()
        finally:
            sys.argv = saved
        args.num_classes, args.input_shape = NUM_CLASSES, (3, 32, 32)  # what build_dataloader sets for cifar100
        return args

    def run(self, name: str, steps: int, dtype: torch.dtype) -> Comparison:
        recipe = Recipe.load(self.methods[name], self.teacher, self.student)
        torch.manual_seed(0)  # built in float32 and then converted: the same initial weights in every dtype
        args = self.arguments()
        with cuda_calls_as_no_ops():
            student = self.builder.build_model(args, args.model)
            teacher = self.builder.build_model(args, args.teacher_model)  # the checkpoint: copied below
            ours = build_kdistill(recipe, self.student, self.teacher, self.data.labels)
        with run_dtype(dtype), cuda_calls_as_no_ops():
            for module in (student, teacher, ours):
                module.to(dtype)
            batches = [in_dtype(b, dtype) for b in self.data.batches(steps, self.batch_size, strong=False)]
            calibrate_batch_norm(teacher, batches[:CALIBRATION_BATCHES])
            copy_weights(student, ours.student)
            copy_weights(teacher, ours.teacher)
            reference_steps = {"train": self.train_reference(args, student, teacher, batches)}
            kdistill_steps = run_kdistill(ours, batches, [], recipe.lr, epoch=EPOCH)
        terms = {"ce": "weighted ce", "dist": "weighted dist", "total": "total"}
        weights = {"student": largest_difference(student, ours.student)}
        return Comparison(terms, reference_steps, kdistill_steps, weights)

    def train_reference(self, args, student, teacher, batches: list[dict]) -> list[dict[str, float]]:
        """main()'s loss, optimizer and scheduler, then its `train_epoch` over the batches."""
        loss_fn = self.kd_loss.KDLoss(student, teacher, torch.nn.CrossEntropyLoss(), args.kd, args.student_module,
                                      args.teacher_module, args.ori_loss_weight, args.kd_loss_weight)
        optimizer = self.train.build_optimizer(
            args.opt, student, args.lr, eps=args.opt_eps, momentum=args.momentum, weight_decay=args.weight_decay,
            filter_bias_and_bn=not args.opt_no_filter, nesterov=not args.sgd_no_nesterov, sort_params=args.dyrep)
        steps_per_epoch = len(batches)  # train_epoch steps the scheduler by len(loader)
        scheduler = self.train.build_scheduler(
            args.sched, optimizer, args.warmup_epochs * steps_per_epoch, args.warmup_lr,
            args.decay_epochs * steps_per_epoch, args.decay_rate, args.epochs * steps_per_epoch,
            steps_per_epoch=steps_per_epoch, decay_by_epoch=args.decay_by_epoch, min_lr=args.min_lr)
        scheduler.step((EPOCH - 1) * steps_per_epoch)  # where the epoch starts, as after a resume
        recorder = TermRecorder()
        recorder.watch(loss_fn.ori_loss, "ce", args.ori_loss_weight)
        recorder.watch(loss_fn.kd_loss, "dist", args.kd_loss_weight)
        loader = [(b["image"], b["label"]) for b in batches]
        with recorder.steps_by_backward():
            self.train.train_epoch(args, EPOCH - 1, student, None, loader, optimizer, loss_fn, scheduler)
        return recorder.steps
