"""The DCD authors' code (giakoumoglou/distillers), its `imagenet/` folder: SRRL, which only that
script has (`imagenet/scripts/run_distill.sh`: `--distill srrl -c 1 -d 1 -b 1`, the folder's code
comes from DefangChen/SimKD).

The script also trains on CIFAR-100 (`--dataset cifar100`, its default) and its per-batch code,
`imagenet/utilities/loops.py: train_distill`, runs on a CPU unpatched. The reference side is built
as `imagenet/train_student.py` builds it (the `SRRL` connector in the module and trainable lists,
`nn.MSELoss` for both of its terms, SGD over the trainable list) and trained by that loop, fed the
run's batches as `(images, labels)`. Its `model_dict` lists neither resnet56 nor resnet20, but its
`models/resnet.py` defines both (RepDistiller's CIFAR ResNets): they are taken from there.
"""

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
    in_dtype,
    largest_difference,
    run_dtype,
    run_kdistill,
)
from repdistiller import Script
from torch import nn

METHODS = {"srrl": Script("srrl", 1.0, 1.0, 1.0, "srrl", "srrl")}  # -c (CE), -d (KD), -b (SRRL)


class DistillersImageNetScript:
    reference = Reference("distillers-imagenet", "giakoumoglou/distillers", "a2ee80bd7179b808df63e4264318c40ca6e2966b")
    methods = METHODS

    def __init__(self, path: Path, teacher: str, student: str, batch_size: int, data: Data):
        self.code = ReferenceCode(Path(path) / "imagenet")
        self.teacher, self.student, self.batch_size, self.data = teacher, student, batch_size, data

    def __enter__(self):
        self.code.__enter__()
        self.models = self.code.load("models")
        self.resnets = self.code.load("models.resnet")
        self.util = self.code.load("models.util")
        self.zoo = self.code.load("distillers")
        self.train_epoch = self.code.load("utilities.loops").train_distill
        return self

    def __exit__(self, *exc):
        self.code.__exit__(*exc)

    def model(self, name: str) -> nn.Module:
        factory = self.models.model_dict.get(name) or getattr(self.resnets, name)
        return factory(num_classes=NUM_CLASSES)

    def build(self, script: Script) -> SimpleNamespace:
        """As train_student.py builds it (its argument defaults, the script's weights)."""
        opt = SimpleNamespace(distill=script.distill, cls=script.gamma, div=script.alpha, beta=script.beta, kd_T=4.0,
                              learning_rate=0.05, momentum=0.9, weight_decay=5e-4, batch_size=self.batch_size,
                              dali=None, gpu=None, multiprocessing_distributed=False, print_freq=10**9)
        model_t, model_s = self.model(self.teacher), self.model(self.student)
        data = torch.randn(2, 3, 32, 32)
        model_t.eval()
        model_s.eval()
        feat_t, _ = model_t(data, is_feat=True)
        feat_s, _ = model_s(data, is_feat=True)
        connector = self.util.SRRL(s_n=feat_s[-1].shape[1], t_n=feat_t[-1].shape[1])
        module_list = nn.ModuleList([model_s, connector, model_t])
        trainable_list = nn.ModuleList([model_s, connector])
        criterion_list = nn.ModuleList([nn.CrossEntropyLoss(), self.zoo.DistillKL(opt.kd_T), nn.MSELoss()])
        return SimpleNamespace(opt=opt, model_s=model_s, model_t=model_t, connector=connector, module_list=module_list,
                               trainable_list=trainable_list, criterion_list=criterion_list)

    def run(self, name: str, steps: int, dtype: torch.dtype) -> Comparison:
        script = self.methods[name]
        recipe = Recipe.load(script.method, self.teacher, self.student)
        torch.manual_seed(0)  # built in float32 and then converted: the same initial weights in every dtype
        ref = self.build(script)
        ours = build_kdistill(recipe, self.student, self.teacher, self.data.labels)
        with run_dtype(dtype):
            for module in (ref.module_list, ref.criterion_list, ours):
                module.to(dtype)
            batches = [in_dtype(b, dtype) for b in self.data.batches(steps, self.batch_size, strong=False)]
            calibrate_batch_norm(ref.model_t, batches[:CALIBRATION_BATCHES])
            copy_weights(ref.model_s, ours.student)
            copy_weights(ref.model_t, ours.teacher)
            copy_weights(ref.connector.transfer, ours.connector)
            reference_steps = {"train": self.train_reference(ref, batches)}
            kdistill_steps = run_kdistill(ours, batches, [], recipe.lr)
        terms = {"ce": "ce", "kd": "kd", "method": script.term, "total": "total"}
        weights = {"student": largest_difference(ref.model_s, ours.student),
                   "connector": largest_difference(ref.connector.transfer, ours.connector)}
        return Comparison(terms, reference_steps, kdistill_steps, weights)

    def train_reference(self, ref: SimpleNamespace, batches: list[dict]) -> list[dict[str, float]]:
        recorder = TermRecorder()
        for term, module in zip(("ce", "kd", "method"), ref.criterion_list):
            recorder.watch(module, term)  # SRRL's two MSE calls add up to its term
        opt = ref.opt
        optimizer = torch.optim.SGD(ref.trainable_list.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                    weight_decay=opt.weight_decay)
        loader = [(batch["image"], batch["label"]) for batch in batches]
        with recorder.steps_by_backward():
            self.train_epoch(1, loader, ref.module_list, ref.criterion_list, optimizer, opt)
        return recorder.steps
