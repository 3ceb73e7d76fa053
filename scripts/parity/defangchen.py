"""Defang Chen's code bases, both RepDistiller's CIFAR-100 framework with their own methods:
DefangChen/SimKD (SimKD: the teacher's classifier reused on the projected student map; it also has
SemCKD, as the DCD authors' code base took it over) and DefangChen/SemCKD (SemCKD: cross-layer
attention).

Their runners are RepDistiller's: the reference side is built as each `train_student.py` builds
it (its `--distill simkd` / `semckd` branch, the auxiliary module in the trainable list, one SGD
over that list) and trained by each repository's own `helper.loops.train_distill`, fed the run's
batches as its CIFAR-100 loader yields them (image, label); the loss weights are those of each
repository's CIFAR script. SimKD's `models.model_dict` lists no resnet56 or resnet20, but its
`models/resnet.py` defines both: they are built from there.

kdistill freezes SimKD's student's own classifier, which no term reads (README: deviations); the
reference keeps it in the optimizer, where weight decay shrinks it. The row "simkd (own head
frozen in the reference)" freezes it in the reference too, in memory, to show that the rest is the
same computation.

SemCKD at the scripts' learning rate (0.05) diverges in this setting (random teacher, noise images,
batch 16: the loss grows a million-fold within 5 to 7 steps and overflows by step 10) on both sides
alike; the rows "lr 0.01 on both sides" (the scripts' rate for MobileNet and ShuffleNet students)
compare 10 steps that stay finite.
"""

from dataclasses import dataclass, replace
from types import SimpleNamespace

from core import NUM_CLASSES, Recipe, Reference, largest_difference
from repdistiller import RepDistiller, Script
from torch import nn


@dataclass(frozen=True)
class DefangScript(Script):
    own_head_frozen: bool = False  # the reference's student classifier frozen, as kdistill freezes it
    lr: float | None = None  # both sides' learning rate instead of the command's and the recipe's


class DefangChenCode(RepDistiller):
    """What both code bases share beyond RepDistiller's: their loops take (image, label) batches
    and read a few more arguments (no `input.float()` to patch), and both have SemCKD's
    cross-layer attention (`SelfA`), built with different arguments and part names."""

    patches: dict[str, list[tuple[str, str]]] = {}  # module -> (old, new): loaded first, patched in memory

    def __enter__(self):
        self.code.__enter__()
        code = self.code
        for module, patches in self.patches.items():
            code.load(module, patches)
        self.models = code.load("models")
        self.util = code.load("models.util")
        self.zoo = code.load("distiller_zoo")
        self.train_epoch = code.load("helper.loops").train_distill
        return self

    def recipe(self, script: DefangScript) -> Recipe:
        recipe = super().recipe(script)
        return recipe if script.lr is None else replace(recipe, lr=script.lr)

    def options(self, script: DefangScript) -> SimpleNamespace:
        opt = super().options(script)
        if script.lr is not None:
            opt.learning_rate = script.lr
        # A one-process CPU run: no DALI loader, no device id, no DDP; the batch size SemCKD's
        # attention is sized by (and its loop checks).
        opt.dali, opt.gpu, opt.multiprocessing_distributed = None, None, False
        opt.batch_size = self.batch_size
        return opt

    def loader(self, batches: list[dict], negatives) -> list[tuple]:
        return [(b["image"], b["label"]) for b in batches]

    def build_other(self, distill, opt, feat_s, feat_t, module_list, trainable_list, aux) -> nn.Module:
        if distill != "semckd":
            return super().build_other(distill, opt, feat_s, feat_t, module_list, trainable_list, aux)
        s_n = [f.shape[1] for f in feat_s[1:-1]]
        t_n = [f.shape[1] for f in feat_t[1:-1]]
        attention = self.cross_layer_attention(opt, s_n, t_n)
        module_list.append(attention)
        trainable_list.append(attention)
        # kdistill's parts by name: SelfA registers them in another order (and SimKD's also has unused ones).
        for i in range(len(s_n)):
            aux[f"queries.{i}"] = self.embedding(attention, "query", i)
            for j in range(len(t_n)):
                aux[f"projectors.{i}.{j}"] = getattr(attention, f"regressor{i}{j}")
        for j in range(len(t_n)):
            aux[f"keys.{j}"] = self.embedding(attention, "key", j)
        return self.zoo.SemCKDLoss()

    def cross_layer_attention(self, opt: SimpleNamespace, s_n: list[int], t_n: list[int]) -> nn.Module:
        """train_student.py's `SelfA(...)` of the semckd branch."""
        raise NotImplementedError

    def embedding(self, attention: nn.Module, role: str, index: int) -> nn.Module:
        """The query or key embedding `index` of `attention` (role: "query" or "key")."""
        raise NotImplementedError


class DefangChenSimKD(DefangChenCode):
    reference = Reference("simkd", "DefangChen/SimKD", "2b389c31ed7779aea31e7aaf0bb0f2d8b6ac2f01")
    methods = {  # scripts/run_distill.sh: --distill simkd -c 0 -d 0 -b 1 (factor 2, the default),
        # --distill semckd -c 1 -d 1 -b 400 (attention scale 1, the default)
        "simkd": DefangScript("simkd", 0.0, 0.0, 1.0, "simkd", "simkd"),
        "simkd (own head frozen in the reference)": DefangScript("simkd", 0.0, 0.0, 1.0, "simkd", "simkd",
                                                                 own_head_frozen=True),
        "semckd (SimKD's code)": DefangScript("semckd", 1.0, 1.0, 400.0, "semckd", "semckd"),
        "semckd (SimKD's code, lr 0.01 on both sides)": DefangScript("semckd", 1.0, 1.0, 400.0, "semckd", "semckd",
                                                                     lr=0.01),
    }

    def options(self, script: DefangScript) -> SimpleNamespace:
        opt = super().options(script)
        opt.cls, opt.div, opt.factor, opt.soft = script.gamma, script.alpha, 2, 1.0  # -c -d -f -s
        return opt

    def model(self, name: str) -> nn.Module:
        if name in self.models.model_dict:
            return super().model(name)
        return getattr(self.code.load("models.resnet"), name)(num_classes=NUM_CLASSES)

    def build(self, script: DefangScript) -> SimpleNamespace:
        ref = super().build(script)
        if script.own_head_frozen:
            ref.model_s.fc.requires_grad_(False)  # no gradient: SGD leaves it as kdistill does
        return ref

    def build_other(self, distill, opt, feat_s, feat_t, module_list, trainable_list, aux) -> nn.Module:
        if distill != "simkd":
            return super().build_other(distill, opt, feat_s, feat_t, module_list, trainable_list, aux)
        projector = self.util.SimKD(s_n=feat_s[-2].shape[1], t_n=feat_t[-2].shape[1], factor=opt.factor)
        module_list.append(projector)
        trainable_list.append(projector)
        aux["projector"] = projector
        return nn.MSELoss()

    def cross_layer_attention(self, opt, s_n, t_n) -> nn.Module:
        return self.util.SelfA(opt.batch_size, s_n, t_n, opt.soft)

    def embedding(self, attention, role, index) -> nn.Module:
        # Its MLPEmbed also builds a `regressor` that forward never reads (README: deviations).
        mlp = getattr(attention, f"{role}_{index}")
        return nn.ModuleList([mlp.linear1, mlp.linear2])

    def weight_differences(self, ref: SimpleNamespace, ours: nn.Module) -> dict[str, dict]:
        """SimKD's student's own classifier apart from the rest of it: only the classifier is
        expected to differ while kdistill freezes it and the reference's weight decay shrinks it."""
        weights = super().weight_differences(ref, ours)
        if ref.opt.distill != "simkd":
            return weights
        del weights["student"]

        def without_head(model: nn.Module) -> nn.ModuleList:
            return nn.ModuleList(module for name, module in model.named_children() if name != "fc")

        weights["student (without its classifier)"] = largest_difference(without_head(ref.model_s),
                                                                         without_head(ours.student))
        weights["student classifier"] = largest_difference(ref.model_s.fc, ours.student.fc)
        return weights


# Its accuracy metric views a transposed slice (`correct[:k].view(-1)`), which torch has refused
# since 1.7 (SimKD's copy reads `.reshape(-1)`): as SimKD's, for a current torch.
ACCURACY_ON_CURRENT_TORCH = [("correct[:k].view(-1)", "correct[:k].reshape(-1)")]


class DefangChenSemCKD(DefangChenCode):
    reference = Reference("semckd", "DefangChen/SemCKD", "ebe5db190d87f3e493a5fdf04a808ef3179486dc")
    methods = {  # scripts/run_cifar_distill.sh and README: --distill semckd -r 1 -a 1 -b 400
        "semckd": DefangScript("semckd", 1.0, 1.0, 400.0, "semckd", "semckd"),
        "semckd (lr 0.01 on both sides)": DefangScript("semckd", 1.0, 1.0, 400.0, "semckd", "semckd", lr=0.01),
    }
    patches = {"helper.util": ACCURACY_ON_CURRENT_TORCH}

    def cross_layer_attention(self, opt, s_n, t_n) -> nn.Module:
        return self.util.SelfA(len(s_n), len(t_n), opt.batch_size, s_n, t_n)

    def embedding(self, attention, role, index) -> nn.Module:
        return getattr(attention, f"{role}_weight{index}")
