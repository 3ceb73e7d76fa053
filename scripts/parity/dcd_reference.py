"""The DCD authors' code (giakoumoglou/distillers, `cifar/`): DCD, DCD+KD, RRD and RRD+KD.

The code base is RepDistiller's with more methods, so its runner is RepDistiller's. At the
commit measured, `cifar/train_student.py` has no `--distill dcd` branch (the README gives the
command; the branch was in the authors' earlier root-level `train_student.py`, e.g. commit
1b842ab, whose imports no longer resolve). The branch is restored in memory exactly as that
commit wires it: `DCDLoss` on the pooled features, its `embed_s`, `embed_t` and `params` (the
learnable scale and bias) trained with the student.

ICD, the paper's first form ("Invariant Consistency for Knowledge Distillation"; kdistill's `icd`,
an alias of `dcd`), is no longer in the code either: `ICDLoss` (distillers/ICD.py) and its
`--distill icd` branch were last in the root-level code at commit 2f95cea (ICD.py deleted by
7d31ca6; a copy in cifar/distillers/, 1c0e48d to e8e2215, was never imported, its script lines
commented out). Its loss is read from that commit of the clone's history, in memory, and wired as
that commit's `train_student.py` wires it: on the pooled features, `embed_s`, `embed_t` and
`params` trained with the student, `-a 0 -b 1` and `-a 1 -b 1` with KD (its script).
"""

import subprocess
from pathlib import Path
from types import ModuleType

from core import Reference, stub_missing_modules
from repdistiller import TO_RUN_DTYPE, RepDistiller, Script
from torch import nn

# The training step's branch of `--distill dcd` (commit 1b842ab) and of `--distill icd` (2f95cea).
DCD_TRAIN_BRANCH = [(
    "        else:\n            raise NotImplementedError(opt.distill)\n\n        loss = opt.gamma",
    "        elif opt.distill in ('dcd', 'icd'):\n            loss_kd = criterion_kd(feat_s[-1], feat_t[-1])\n"
    "        else:\n            raise NotImplementedError(opt.distill)\n\n        loss = opt.gamma",
)]


RRD_QUEUE = 16384  # --nce_k
ICD_COMMIT = "2f95ceabb1a9e5546a191aef30d4425d1464d736"  # the last commit with `--distill icd`
ICD_FILE = "distillers/ICD.py"


def module_at_commit(clone: Path, commit: str, path: str) -> ModuleType:
    """The module `path` of the clone's `commit`, read from its history and run in memory."""
    shown = subprocess.run(["git", "-C", str(clone), "show", f"{commit}:{path}"], capture_output=True, text=True)
    if shown.returncode:
        raise RuntimeError(f"{clone}: no {path} at {commit} ({shown.stderr.strip()}): a clone with its history?")
    module = ModuleType(Path(path).stem)
    exec(compile(shown.stdout, f"{commit[:7]}:{path}", "exec"), module.__dict__)
    return module


class DistillersDCD(RepDistiller):
    reference = Reference("distillers", "giakoumoglou/distillers", "a2ee80bd7179b808df63e4264318c40ca6e2966b")
    methods = {  # README and scripts/run_cifar_distill.sh: -a 0 -b 1, and -a 1 -b 1 with KD
        "dcd": Script("dcd", 1.0, 0.0, 1.0, "dcd", "dcd"),
        "dcd+kd": Script("dcd", 1.0, 1.0, 1.0, "dcd+kd", "dcd"),
        "rrd": Script("rrd", 1.0, 0.0, 1.0, "rrd", "rrd"),
        "rrd+kd": Script("rrd", 1.0, 1.0, 1.0, "rrd+kd", "rrd"),
        # kdistill's icd is its dcd: no recipe of its own (make_recipes.py), DCD's is run as icd.
        "icd": Script("icd", 1.0, 0.0, 1.0, "icd", "dcd", recipe="dcd"),
        "icd+kd": Script("icd", 1.0, 1.0, 1.0, "icd+kd", "dcd", recipe="dcd+kd"),
    }

    def __init__(self, path, *args):
        super().__init__(path / "cifar", *args)
        self.clone = Path(path)

    def notes(self, method: str) -> dict:
        notes = super().notes(method)
        if self.methods[method].distill == "icd":
            notes["reference_loss"] = f"{ICD_FILE} at {ICD_COMMIT} (the clone's history)"
        return notes

    def __enter__(self):
        self.code.__enter__()
        stub_missing_modules(["torch.utils.tensorboard"])
        code = self.code
        self.models = code.load("models")
        self.util = code.load("models.util")
        self.zoo = code.load("distillers")
        self.train_epoch = code.load("train_student", TO_RUN_DTYPE + DCD_TRAIN_BRANCH).train
        return self

    def build_other(self, distill, opt, feat_s, feat_t, module_list, trainable_list, aux) -> nn.Module:
        opt.s_dim, opt.t_dim = feat_s[-1].shape[1], feat_t[-1].shape[1]
        if distill == "rrd":  # train_student.py's defaults: a FIFO queue of 16384, temperatures 0.1 / 0.02
            opt.memory_type, opt.nce_k, opt.nce_t_s, opt.nce_t_t = "fifo", RRD_QUEUE, 0.1, 0.02
            criterion_kd = self.zoo.RRDLoss(opt)
            module_list.extend([criterion_kd.embed_s, criterion_kd.embed_t])
            trainable_list.extend([criterion_kd.embed_s, criterion_kd.embed_t])
            memory = criterion_kd.memory  # its queue is a buffer: read when used (`.to(dtype)` replaces it)
            aux.update({"embed_s": criterion_kd.embed_s, "embed_t": criterion_kd.embed_t,
                        "queue": lambda: memory.queue})
            return criterion_kd
        if distill == "icd":
            criterion_kd = module_at_commit(self.clone, ICD_COMMIT, ICD_FILE).ICDLoss(opt)
        elif distill == "dcd":
            criterion_kd = self.zoo.DCDLoss(opt)
        else:
            return super().build_other(distill, opt, feat_s, feat_t, module_list, trainable_list, aux)
        parts = [criterion_kd.embed_s, criterion_kd.embed_t, criterion_kd.params]
        module_list.extend(parts)
        trainable_list.extend(parts)
        aux.update({"embed_s": criterion_kd.embed_s, "embed_t": criterion_kd.embed_t,
                    "log_scale": criterion_kd.params.tau, "bias": criterion_kd.params.b})
        return criterion_kd
