"""RepDistiller (HobbitLong/RepDistiller, the CRD benchmark): KD, FitNet, AT, SP, CC, VID, RKD, PKT,
AB, FT, FSP, NST, CRD, CRD+KD, KDSVD, and each feature method with KD (its README's `-a 1`).

The reference side is built as its `train_student.py` builds it (criteria, auxiliary modules,
trainable list, SGD over it; the initialisation stage of AB, FT and FSP through its
`helper.pretrain.init`) and trained by its own `helper.loops.train_distill`, fed the run's
batches as its data loader would yield them; the loss weights are those of its
`scripts/run_cifar_distill.sh`.
"""

from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
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
    current,
    in_dtype,
    largest_difference,
    resolve,
    run_dtype,
    run_kdistill,
)
from torch import nn

REFERENCE = Reference("repdistiller", "HobbitLong/RepDistiller", "b84f547c5db6a35318d4671d7d5c4de74c822403")
SMALL_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")  # train_student.py: --learning_rate 0.01
NCE_K = 4096  # --nce_k (the reference's 16384 needs a larger data set than a CPU run wants)

# The loops cast the input to float32 (`input.float()`); in a float64 run it keeps the run's dtype.
TO_RUN_DTYPE = [("input = input.float()", "input = input.to(torch.get_default_dtype())")]


@dataclass(frozen=True)
class Script:
    distill: str  # --distill
    gamma: float  # -r: CE weight
    alpha: float  # -a: KD weight
    beta: float  # -b: the method's weight
    method: str  # kdistill's method
    term: str | None  # kdistill's name of the method's term in distillation (None: no such term)
    init_term: str | None = None  # ... in the initialisation stage
    recipe: str | None = None  # the method whose kdistill recipe is run as `method` (None: `method`'s own)


SCRIPTS = {
    "kd": Script("kd", 0.1, 0.9, 0.0, "kd", None),
    "fitnet": Script("hint", 1.0, 0.0, 100.0, "fitnet", "fitnet"),
    "at": Script("attention", 1.0, 0.0, 1000.0, "at", "at"),
    "sp": Script("similarity", 1.0, 0.0, 3000.0, "sp", "sp"),
    "cc": Script("correlation", 1.0, 0.0, 0.02, "cc", "cc"),
    "vid": Script("vid", 1.0, 0.0, 1.0, "vid", "vid"),
    "rkd": Script("rkd", 1.0, 0.0, 1.0, "rkd", "rkd"),
    "pkt": Script("pkt", 1.0, 0.0, 30000.0, "pkt", "pkt"),
    "ab": Script("abound", 1.0, 0.0, 1.0, "ab", None, "ab"),
    "ft": Script("factor", 1.0, 0.0, 200.0, "ft", "ft", "ft_reconstruction"),
    "fsp": Script("fsp", 1.0, 0.0, 50.0, "fsp", None, "fsp"),
    "nst": Script("nst", 1.0, 0.0, 50.0, "nst", "nst"),
    "crd": Script("crd", 1.0, 0.0, 0.8, "crd", "crd"),
    "crd+kd": Script("crd", 1.0, 1.0, 0.8, "crd+kd", "crd"),
    # Not in the benchmark's script (no weight given): kdistill's recipe weight, mdistiller's CE 1, KDSVD 1.
    "kdsvd": Script("kdsvd", 1.0, 0.0, 1.0, "kdsvd", "kdsvd"),
}
# "Combining a distillation objective with KD is simply done by setting -a as a non-zero value" (its
# README: -a 1, the method's -b). kdistill has no recipe of these (no table reports them): the
# method's recipe runs as `<method>+kd`, without its `w_kd: 0`, so the KD weight is the one
# `<method>+kd` defaults to.
SCRIPTS.update({f"{name}+kd": replace(SCRIPTS[name], alpha=1.0, method=f"{name}+kd", recipe=name)
                for name in ("fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst")})


class RepDistiller:
    reference = REFERENCE
    methods = SCRIPTS

    def __init__(self, path: Path, teacher: str, student: str, batch_size: int, data: Data):
        self.code = ReferenceCode(path)
        self.teacher, self.student, self.batch_size, self.data = teacher, student, batch_size, data

    def __enter__(self):
        self.code.__enter__()
        code = self.code
        self.models = code.load("models")
        self.util = code.load("models.util")
        self.zoo = code.load("distiller_zoo")
        self.crd = code.load("crd.criterion")
        self.train_epoch = code.load("helper.loops", TO_RUN_DTYPE).train_distill
        self.pretrain = code.load("helper.pretrain", TO_RUN_DTYPE)
        return self

    def __exit__(self, *exc):
        self.code.__exit__(*exc)

    def notes(self, method: str) -> dict:
        """Where kdistill's settings of a row come from when the method has no recipe of its own."""
        script = self.methods[method]
        if script.recipe is None:
            return {}
        return {"kdistill_recipe": f"configs/cifar100/{script.recipe}/{self.teacher}_{self.student}.yaml run as "
                                   f"{script.method} (its w_kd left out: {script.method}'s default)"}

    # ---- the reference side, as train_student.py builds it ----
    def options(self, script: Script) -> SimpleNamespace:
        """train_student.py's arguments (`opt`) for the method's command."""
        return SimpleNamespace(
            distill=script.distill, gamma=script.gamma, alpha=script.alpha, beta=script.beta, kd_T=4.0,
            learning_rate=0.01 if self.student in SMALL_LR_STUDENTS else 0.05, momentum=0.9, weight_decay=5e-4,
            feat_dim=128, nce_k=NCE_K, nce_t=0.07, nce_m=0.5,
            hint_layer=2, mode="exact", init_epochs=1, print_freq=10**9, model_s=self.student,
        )

    def model(self, name: str) -> nn.Module:
        return self.models.model_dict[name](num_classes=NUM_CLASSES)

    def build(self, script: Script) -> SimpleNamespace:
        opt = self.options(script)
        model_t, model_s = self.model(self.teacher), self.model(self.student)
        data = torch.randn(2, 3, 32, 32)
        model_t.eval()
        model_s.eval()
        feat_t, _ = model_t(data, is_feat=True)
        feat_s, _ = model_s(data, is_feat=True)
        module_list, trainable_list = nn.ModuleList([model_s]), nn.ModuleList([model_s])
        aux = {}  # reference auxiliary module -> kdistill attribute path (filled per method)
        init_modules, criterion_init = None, None
        distill, zoo, util = script.distill, self.zoo, self.util
        if distill == "kd":
            criterion_kd = zoo.DistillKL(opt.kd_T)
        elif distill == "hint":
            criterion_kd = zoo.HintLoss()
            regress_s = util.ConvReg(feat_s[opt.hint_layer].shape, feat_t[opt.hint_layer].shape)
            module_list.append(regress_s)
            trainable_list.append(regress_s)
            aux["regressor"] = regress_s
        elif distill == "crd":
            opt.s_dim, opt.t_dim, opt.n_data = feat_s[-1].shape[1], feat_t[-1].shape[1], len(self.data.labels)
            criterion_kd = self.crd.CRDLoss(opt)
            module_list.extend([criterion_kd.embed_s, criterion_kd.embed_t])
            trainable_list.extend([criterion_kd.embed_s, criterion_kd.embed_t])
            contrast = criterion_kd.contrast  # its banks are buffers: read when used (`.to(dtype)` replaces them)
            aux.update({"embed_s": criterion_kd.embed_s, "embed_t": criterion_kd.embed_t,
                        "bank_s": lambda: contrast.memory_v1, "bank_t": lambda: contrast.memory_v2})
        elif distill == "attention":
            criterion_kd = zoo.Attention()
        elif distill == "nst":
            criterion_kd = zoo.NSTLoss()
        elif distill == "similarity":
            criterion_kd = zoo.Similarity()
        elif distill == "rkd":
            criterion_kd = zoo.RKDLoss()
        elif distill == "pkt":
            criterion_kd = zoo.PKT()
        elif distill == "kdsvd":
            criterion_kd = zoo.KDSVD()
        elif distill == "correlation":
            criterion_kd = zoo.Correlation()
            embed_s = util.LinearEmbed(feat_s[-1].shape[1], opt.feat_dim)
            embed_t = util.LinearEmbed(feat_t[-1].shape[1], opt.feat_dim)
            module_list.extend([embed_s, embed_t])
            trainable_list.extend([embed_s, embed_t])
            aux.update({"embed_s": embed_s, "embed_t": embed_t})
        elif distill == "vid":
            s_n = [f.shape[1] for f in feat_s[1:-1]]
            t_n = [f.shape[1] for f in feat_t[1:-1]]
            criterion_kd = nn.ModuleList([zoo.VIDLoss(s, t, t) for s, t in zip(s_n, t_n)])
            trainable_list.append(criterion_kd)
            for i, vid in enumerate(criterion_kd):
                aux[f"regressors.{i}"] = vid.regressor
                aux[f"raw_variances.{i}"] = vid.log_scale
        elif distill == "abound":
            connector = util.Connector([f.shape for f in feat_s[1:-1]], [f.shape for f in feat_t[1:-1]])
            init_modules = nn.ModuleList([connector, model_s.get_feat_modules()])
            criterion_kd = criterion_init = zoo.ABLoss(len(feat_s[1:-1]))
            module_list.append(connector)
            aux["connectors"] = connector
        elif distill == "factor":
            paraphraser = util.Paraphraser(feat_t[-2].shape)
            translator = util.Translator(feat_s[-2].shape, feat_t[-2].shape)
            init_modules = nn.ModuleList([paraphraser])
            criterion_init = nn.MSELoss()
            criterion_kd = zoo.FactorTransfer()
            module_list.extend([translator, paraphraser])
            trainable_list.append(translator)
            aux.update({"paraphraser": paraphraser, "translator": translator})
        elif distill == "fsp":
            criterion_kd = criterion_init = zoo.FSP([s.shape for s in feat_s[:-1]], [t.shape for t in feat_t[:-1]])
            init_modules = nn.ModuleList([model_s.get_feat_modules()])
        else:
            criterion_kd = self.build_other(distill, opt, feat_s, feat_t, module_list, trainable_list, aux)
        criterion_list = nn.ModuleList([nn.CrossEntropyLoss(), zoo.DistillKL(opt.kd_T), criterion_kd])
        return SimpleNamespace(opt=opt, model_s=model_s, model_t=model_t, module_list=module_list,
                               trainable_list=trainable_list, criterion_list=criterion_list, aux=aux,
                               init_modules=init_modules, criterion_init=criterion_init)

    def build_other(self, distill, opt, feat_s, feat_t, module_list, trainable_list, aux) -> nn.Module:
        """The criterion of a method the base script lacks (in a derived code base)."""
        raise ValueError(f"{self.reference.repository} has no --distill {distill}")

    def recipe(self, script: Script) -> Recipe:
        """kdistill's recipe for the method and pair (CRD with the run's number of negatives)."""
        recipe = Recipe.load(script.recipe or script.method, self.teacher, self.student,
                             **({"num_negatives": NCE_K} if script.distill == "crd" else {}))
        if script.recipe is None:
            return recipe
        return replace(recipe, method=script.method,
                       options={key: value for key, value in recipe.options.items() if key != "w_kd"})

    def run(self, name: str, steps: int, dtype: torch.dtype) -> Comparison:
        script = self.methods[name]
        recipe = self.recipe(script)
        torch.manual_seed(0)  # built in float32 and then converted: the same initial weights in every dtype
        with cuda_calls_as_no_ops():
            ref = self.build(script)
            ours = build_kdistill(recipe, self.student, self.teacher, self.data.labels, self.batch_size)
        with run_dtype(dtype), cuda_calls_as_no_ops():
            for module in (ref.module_list, ref.criterion_list, ref.model_t, ours):
                module.to(dtype)
            if script.distill == "crd":  # its constants, as a build in this dtype holds them (0.07 is not a float32)
                opt = ref.opt
                ref.criterion_list[2].contrast.params.copy_(torch.tensor([opt.nce_k, opt.nce_t, -1, -1, opt.nce_m]))
            batches = [in_dtype(b, dtype) for b in self.data.batches(steps, self.batch_size, strong=False)]
            calibrate_batch_norm(ref.model_t, batches[:CALIBRATION_BATCHES])
            copy_weights(ref.model_s, ours.student)
            copy_weights(ref.model_t, ours.teacher)
            for path, module in ref.aux.items():
                copy_weights(current(module), resolve(ours, path))
            negatives = self.contrast_indices(batches) if script.distill == "crd" else None
            reference_steps = self.train_reference(ref, batches, negatives)
            if negatives is not None:  # hand the reference's negatives to kdistill's sampler
                queue = iter(negatives)
                ours.sampler.forward = lambda index, k: torch.from_numpy(next(queue)[:, 1:])
            init_batches = batches if ref.init_modules is not None else []
            kdistill_steps = run_kdistill(ours, batches, init_batches, recipe.lr)
        terms = {"ce": "ce", "kd": "kd", "total": "total"}
        if script.term:
            terms["method"] = script.term
        if script.init_term:
            terms["init"] = script.init_term
        return Comparison(terms, reference_steps, kdistill_steps, self.weight_differences(ref, ours))

    def weight_differences(self, ref: SimpleNamespace, ours: nn.Module) -> dict[str, dict]:
        """The largest difference per trained module after the run (`largest_difference`)."""
        weights = {"student": largest_difference(ref.model_s, ours.student)}
        weights.update({path: largest_difference(current(module), resolve(ours, path))
                        for path, module in ref.aux.items()})
        return weights

    def contrast_indices(self, batches: list[dict]) -> list[np.ndarray]:
        """Per batch, what the reference's `CIFAR100InstanceSample` (mode exact) yields as
        `contrast_idx`: the sample's index, then K negatives drawn from the other classes (with
        replacement when a class's complement has fewer than K samples)."""
        labels = self.data.labels.numpy()
        others = [np.flatnonzero(labels != c) for c in range(NUM_CLASSES)]
        rng = np.random.default_rng(self.data.seed)
        drawn = []
        for batch in batches:
            rows = []
            for index, label in zip(batch["index"].tolist(), batch["label"].tolist()):
                candidates = others[label]
                negatives = rng.choice(candidates, NCE_K, replace=len(candidates) < NCE_K)
                rows.append(np.hstack([[index], negatives]))
            drawn.append(np.stack(rows).astype(np.int64))
        return drawn

    def loader(self, batches: list[dict], negatives: list[np.ndarray] | None) -> list[tuple]:
        """The batches as the reference's data loader yields them (CIFAR100Instance: with the
        sample indices; with the negatives for CRD)."""
        return [(b["image"], b["label"], b["index"]) if negatives is None else
                (b["image"], b["label"], b["index"], torch.from_numpy(n)) for b, n in
                zip(batches, negatives or [None] * len(batches))]

    def train_reference(self, ref: SimpleNamespace, batches: list[dict],
                        negatives: list[np.ndarray] | None) -> dict[str, list[dict[str, float]]]:
        opt = ref.opt
        loader = self.loader(batches, negatives)
        record = {}
        if ref.init_modules is not None:
            recorder = TermRecorder()
            recorder.watch(ref.criterion_init, "init")
            logger = SimpleNamespace(log_value=lambda *args: None)
            with recorder.steps_by_backward():
                self.pretrain.init(ref.model_s, ref.model_t, ref.init_modules, ref.criterion_init, loader, logger, opt)
            record["init"] = recorder.steps
        optimizer = torch.optim.SGD(ref.trainable_list.parameters(), lr=opt.learning_rate, momentum=opt.momentum,
                                    weight_decay=opt.weight_decay)
        module_list = nn.ModuleList([*ref.module_list, ref.model_t])
        recorder = TermRecorder()
        for term, module in zip(("ce", "kd"), ref.criterion_list):
            recorder.watch(module, term)
        criterion_kd = ref.criterion_list[2]
        for module in (criterion_kd if isinstance(criterion_kd, nn.ModuleList) else [criterion_kd]):
            recorder.watch(module, "method")
        with recorder.steps_by_backward():
            self.train_epoch(1, loader, module_list, ref.criterion_list, optimizer, opt)
        record["train"] = recorder.steps
        return record

