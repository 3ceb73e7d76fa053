"""CTKD's code (zhengli97/CTKD, RepDistiller-derived CIFAR-100 code): KD+CTKD and DKD+CTKD, and
DIST (with CTKD's temperature, or with KD) on its loop with the DIST authors' loss.

The reference side is built as its `train_student.py` builds it (the global temperature module
`Global_T` in the trainable list, one SGD over the student and the module), the epoch's
gradient-reversal value is its `CosineDecay` as the script's command sets it
(`--cosine_decay 1 --decay_max 0 --decay_min -1 --decay_loops 10`), and every step is its own
`helper.loops.train_distill`. The runs train in epoch `EPOCH` (CTKD's lambda is 0 in epoch 0
only; epoch 3 gives -0.206, a value the schedule's mirror image would not give) on both sides.

CTKD's code has no DIST: `dist+ctkd` and `dist+kd` are compared in its loop with a `--distill dist`
branch added in memory that calls the DIST authors' own loss module (hunto/DIST_KD's
`classification/lib/models/losses/dist_kd.py`, the companion reference `dist`) at the loop's
temperature, with the DIST authors' CIFAR weights (CE 1, DIST at beta = gamma = 1 under weight
2); `dist+kd` adds the loop's KD term (`-a 1`, T 4) without the temperature module. No
reference runs these two combinations: the rows show that kdistill composes the two
references' parts as they compose in this loop.

The code pins torch 1.11, whose `kl_div` gives no gradient to a target probability of 0. Since
`kl_div` became a composite of `xlogy` (torch 2.x) that gradient is 0/0: the teacher's NCKD
distribution, where DKD masks the label's logit by -1000, holds exact zeros, so the learned
temperature turns NaN after the first DKD+CTKD step. The reference runs with torch 1.11's gradient
(`kl_div_target_gradient_of_torch_1_11`; the values are unchanged to the bit).
"""

from dataclasses import dataclass, replace
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
    kl_div_target_gradient_of_torch_1_11,
    largest_difference,
    resolve,
    run_dtype,
    run_kdistill,
    stub_missing_modules,
)
from dist_reference import DISTAuthors
from torch import nn

REFERENCE = Reference("ctkd", "zhengli97/CTKD", "7d5252241259ae70d38a832371fed9697d15fc14")
EPOCH = 3  # the distillation epoch both sides train in (from 1, as the reference's loop counts)

# The branch the loop lacks: DIST's loss at the loop's temperature (learned, or --kd_T).
DIST_BRANCH = [(
    "        else:\n            raise NotImplementedError(opt.distill)\n\n        loss = opt.gamma",
    "        elif opt.distill == 'dist':\n            criterion_kd.tau = temp\n"
    "            loss_kd = criterion_kd(logit_s, logit_t)\n"
    "        else:\n            raise NotImplementedError(opt.distill)\n\n        loss = opt.gamma",
)]


@dataclass(frozen=True)
class Script:
    """One command of the reference (`scripts/run_cifar_distill.sh`) and kdistill's method for it."""

    distill: str  # --distill
    gamma: float  # -r: CE weight
    alpha: float  # -a: KD weight
    beta: float  # -b: the method's weight
    method: str  # kdistill's method
    term: str | None  # kdistill's name of the method's term (None: no such term)
    have_mlp: bool = True  # --have_mlp 1 --mlp_name global and the cosine decay flags
    overrides: tuple = ()  # kdistill options set over its recipe's, as (key, value) pairs
    recipe: str | None = None  # kdistill's recipe to start from when the method has none of its own


SCRIPTS = {
    # The script's command: -r 0.1 -a 0.9 -b 0 --kd_T 4 with the CTKD flags.
    "kd+ctkd": Script("kd", 0.1, 0.9, 0.0, "kd+ctkd", None),
    # The script's DKD line (-r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2) with the CTKD flags. kdistill
    # keeps DKD's 20-epoch warm-up (README: deviations); switched off in the second row.
    "dkd+ctkd": Script("dkd", 1.0, 0.0, 1.0, "dkd+ctkd", "dkd"),
    "dkd+ctkd (warm-up off)": Script("dkd", 1.0, 0.0, 1.0, "dkd+ctkd", "dkd", overrides=(("warmup", 0),)),
    # The DIST authors' CIFAR weights (CE 1, DIST 2 at beta = gamma = 1) on this loop.
    "dist+ctkd": Script("dist", 1.0, 0.0, 2.0, "dist+ctkd", "dist"),
    # kdistill has no dist+kd recipe: its dist recipe with dist+kd's KD weight 1.
    "dist+kd": Script("dist", 1.0, 1.0, 2.0, "dist+kd", "dist", have_mlp=False,
                      overrides=(("w_kd", 1.0),), recipe="dist"),
}


class CTKDCode:
    reference = REFERENCE
    methods = SCRIPTS
    companions = ("dist",)  # DIST's loss module, for the dist rows

    def __init__(self, path: Path, teacher: str, student: str, batch_size: int, data: Data,
                 companions: dict[str, Path] | None = None):
        self.code = ReferenceCode(path)
        self.dist_path = (companions or {}).get("dist")
        self.teacher, self.student, self.batch_size, self.data = teacher, student, batch_size, data

    def __enter__(self):
        self.code.__enter__()
        # dataset.imagenet (imported by train_student.py, never used on CIFAR) imports imgaug.
        stub_missing_modules(["imgaug", "imgaug.augmenters"])
        code = self.code
        self.models = code.load("models")
        self.zoo = code.load("distiller_zoo")
        self.temp_global = code.load("models.temp_global")
        self.script = code.load("train_student")
        self.util = code.load("helper.util")
        self.train_epoch = code.load("helper.loops", DIST_BRANCH).train_distill
        self.dist_loss = None
        if self.dist_path is not None:
            self.dist_loss = DISTAuthors.loss_module(self.dist_path)
        return self

    def __exit__(self, *exc):
        self.code.__exit__(*exc)

    def notes(self, method: str) -> dict:
        """What a row compares beyond the reference's own code (the results file keeps it)."""
        if self.methods[method].distill != "dist":
            return {}
        return {"loss_from": f"{DISTAuthors.reference.repository} ({DISTAuthors.LOSS_FILE}, submodule "
                             f"{DISTAuthors.classification.repository} @ {DISTAuthors.classification.commit[:7]})"}

    # ---- the reference side, as train_student.py builds it ----
    def build(self, script: Script) -> SimpleNamespace:
        opt = SimpleNamespace(
            distill=script.distill, gamma=script.gamma, alpha=script.alpha, beta=script.beta, kd_T=4.0,
            learning_rate=0.05, lr_decay_epochs=[150, 180, 210], lr_decay_rate=0.1, momentum=0.9,
            weight_decay=5e-4, have_mlp=int(script.have_mlp), mlp_name="global", t_start=1.0, t_end=20.0,
            cosine_decay=1, decay_max=0.0, decay_min=-1.0, decay_loops=10, dkd_alpha=1.0, dkd_beta=2.0,
            print_freq=10**9, gpu=0, multiprocessing_distributed=False, model_s=self.student,
        )
        model_t = self.models.model_dict[self.teacher](num_classes=NUM_CLASSES)
        model_s = self.models.model_dict[self.student](num_classes=NUM_CLASSES)
        mlp = self.temp_global.Global_T() if opt.have_mlp else None
        trainable_list = nn.ModuleList([model_s, mlp])
        if script.distill == "kd":
            criterion_kd = self.zoo.DistillKL()
        elif script.distill == "dkd":
            criterion_kd = self.zoo.DKDloss()
        elif script.distill == "dist":
            if self.dist_loss is None:
                raise RuntimeError("the dist rows need the DIST authors' loss: give --reference dist=PATH too")
            criterion_kd = self.dist_loss(beta=1.0, gamma=1.0, tau=opt.kd_T)
        else:
            raise ValueError(f"{self.reference.repository} has no --distill {script.distill}")
        criterion_list = nn.ModuleList([nn.CrossEntropyLoss(), self.zoo.DistillKL(), criterion_kd])
        return SimpleNamespace(opt=opt, model_s=model_s, model_t=model_t, mlp=mlp, trainable_list=trainable_list,
                               module_list=nn.ModuleList([model_s, model_t]), criterion_list=criterion_list)

    def run(self, name: str, steps: int, dtype: torch.dtype) -> Comparison:
        script = self.methods[name]
        recipe = Recipe.load(script.recipe or script.method, self.teacher, self.student, **dict(script.overrides))
        recipe = replace(recipe, method=script.method)
        torch.manual_seed(0)  # built in float32 and then converted: the same initial weights in every dtype
        with cuda_calls_as_no_ops():
            ref = self.build(script)
            ours = build_kdistill(recipe, self.student, self.teacher, self.data.labels)
        auxiliary = {"temperature_module.raw": ref.mlp.global_T} if ref.mlp is not None else {}
        with run_dtype(dtype), cuda_calls_as_no_ops():
            for module in (ref.trainable_list, ref.criterion_list, ref.model_t, ours):
                module.to(dtype)
            batches = [in_dtype(b, dtype) for b in self.data.batches(steps, self.batch_size, strong=False)]
            calibrate_batch_norm(ref.model_t, batches[:CALIBRATION_BATCHES])
            copy_weights(ref.model_s, ours.student)
            copy_weights(ref.model_t, ours.teacher)
            for path, module in auxiliary.items():
                copy_weights(module, resolve(ours, path))
            reference_steps = {"train": self.train_reference(ref, batches)}
            kdistill_steps = run_kdistill(ours, batches, [], recipe.lr, epoch=EPOCH)
        terms = {"ce": "weighted ce", "kd": "weighted kd", "total": "total"}
        if script.term:
            terms["method"] = f"weighted {script.term}"
        weights = {"student": largest_difference(ref.model_s, ours.student)}
        weights.update({path: largest_difference(module, resolve(ours, path)) for path, module in auxiliary.items()})
        return Comparison(terms, reference_steps, kdistill_steps, weights)

    def train_reference(self, ref: SimpleNamespace, batches: list[dict]) -> list[dict[str, float]]:
        """Epoch `EPOCH` of the script's main loop: its learning-rate step, the epoch's reversal
        value, then its `train_distill` over the batches (each term recorded with its weight)."""
        opt = ref.opt
        optimizer = torch.optim.SGD(ref.trainable_list.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                    weight_decay=opt.weight_decay)
        decay = self.script.CosineDecay(max_value=opt.decay_max, min_value=opt.decay_min, num_loops=opt.decay_loops)
        self.util.adjust_learning_rate(EPOCH, opt, optimizer)
        decay_value = decay.get_value(EPOCH) if opt.have_mlp else 1
        recorder = TermRecorder()
        for term, module, weight in zip(("ce", "kd", "method"), ref.criterion_list, (opt.gamma, opt.alpha, opt.beta)):
            recorder.watch(module, term, weight)
        loader = [(b["image"], b["label"]) for b in batches]
        with recorder.steps_by_backward(), kl_div_target_gradient_of_torch_1_11():
            self.train_epoch(EPOCH, loader, ref.module_list, ref.mlp, decay_value, ref.criterion_list, optimizer, opt)
        return recorder.steps
