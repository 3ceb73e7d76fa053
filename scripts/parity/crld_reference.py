"""CRLD's reference code, as a public copy of the authors' mdistiller-based code holds it:
scx-822/CRLD-main at c9d6657 (the authors' own repository could not be fetched here).

That copy could only be read file by file, so the PATH given is a local reconstruction: a clone
of mdistiller at a08d46f (the code base the copy is built on) with the copy's files the run
executes written over it verbatim (`mdistiller/distillers/CRLD.py`, `mdistiller/engine/`,
`mdistiller/models/cifar/resnet.py`, `configs/cifar100/crld/res56_res20.yaml`); its
`RECONSTRUCTION.md` lists them, its `SOURCE_COMMIT` names the copy's commit. The reference side
is built as the copy's `tools/train_crld.py` builds it (the pair's config over `CFG`, the `CRLD`
distiller, `BaseTrainer.init_optimizer`) and each step is its `CRLDTrainer.train_iter`, fed
kdistill's weak and strong views.

The copy's configs hold only `crld` (and `crld_proto`, whose distiller is not in the copy), so
`crld+dkd`, `crld+dist` and the `+ls` variants have no reference to run against.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from core import Reference
from mdistiller_style import MDistillerStyle, Run

# The copy's trainer reads CUDA's memory counters in every step (for its log line only).
CUDA_MEMORY_COUNTERS = [
    ("torch.cuda.reset_peak_memory_stats(device='cuda')", "None"),
    ("torch.cuda.max_memory_allocated(device='cuda')", "0"),
]

# A randomly initialised teacher is never confident (top softmax ~0.05 over 100 classes), so both
# of CRLD's masks (confidence >= 0.9 on the weak view, >= 0.2 on the strong one) would drop every
# sample and its KD terms would be zero on both sides. The teacher's classifier is scaled on the
# reference side before its weights are copied: the weak mask then keeps 20-60% of each batch. The
# strong mask keeps every sample at 0.2; a second row sets the strong threshold to 0.8 on both
# sides, where it keeps part of each batch too.
TEACHER_LOGIT_SCALE = 12.0
PARTIAL_STRONG_THRESHOLD = 0.8


@dataclass(frozen=True)
class ReconstructedReference(Reference):
    """A reference rebuilt from a public copy's files: its commit is the one `SOURCE_COMMIT` names."""

    def check(self, path: Path) -> str:
        marker = Path(path) / "SOURCE_COMMIT"
        commit = marker.read_text().strip() if marker.exists() else "unknown (no SOURCE_COMMIT)"
        note = "" if commit == self.commit else f"  (expected {self.commit}: results may differ)"
        print(f"{self.name}: a reconstruction of {self.repository} at {commit}{note}")
        return commit


@torch.no_grad()
def confident_teacher(cfg, teacher, student, recipe) -> None:
    teacher.fc.weight.mul_(TEACHER_LOGIT_SCALE)
    teacher.fc.bias.mul_(TEACHER_LOGIT_SCALE)


def partial_strong_mask(cfg, teacher, student, recipe) -> None:
    """The confident teacher, and the copy's strong threshold set as kdistill's row sets it."""
    confident_teacher(cfg, teacher, student, recipe)
    cfg.CRLD.TAU_S = PARTIAL_STRONG_THRESHOLD


# The copy returns its terms weighted (CE 1 over both views, within-view 2, cross-view 0.5);
# kdistill's "crld" term is the two KD terms together and logs each unweighted.
CRLD_TERMS = {"loss_ce": "weighted ce", "loss_kd": "weighted crld",
              "within_view": "crld_within_view", "cross_view": "crld_cross_view"}


class CRLDCopy(MDistillerStyle):
    reference = ReconstructedReference("crld", "scx-822/CRLD-main (a copy of the authors' code)",
                                       "c9d665706f7d8b3598ab8033f0d467ed006037f5")
    methods = {
        "crld": Run("CRLD", "crld", "crld", CRLD_TERMS, two_views=True, configure=confident_teacher,
                    patch=("mdistiller.distillers.CRLD", "CRLD", ())),
        f"crld (strong threshold {PARTIAL_STRONG_THRESHOLD})": Run(
            "CRLD", "crld", "crld", CRLD_TERMS, two_views=True, configure=partial_strong_mask,
            patch=("mdistiller.distillers.CRLD", "CRLD", ()),
            overrides=(("strong_threshold", PARTIAL_STRONG_THRESHOLD),)),
    }

    def __enter__(self):
        super().__enter__()
        self.trainers = self.code.load("mdistiller.engine.trainer", CUDA_MEMORY_COUNTERS)
        self.trainer_dict = {key: getattr(self.trainers, trainer.__name__)
                             for key, trainer in self.trainer_dict.items()}
        return self

    def train_reference(self, cfg, distiller, batches: list[dict], run: Run) -> list[dict[str, float]]:
        """The copy's steps, with its two KD terms also summed and unweighted (the weights 2 and
        0.5 divide exactly) to meet kdistill's terms."""
        steps = super().train_reference(cfg, distiller, batches, run)
        for step in steps:
            step["loss_kd"] = step["loss_kd_wv"] + step["loss_kd_cv"]
            step["within_view"] = step["loss_kd_wv"] / cfg.CRLD.WV_WEIGHT
            step["cross_view"] = step["loss_kd_cv"] / cfg.CRLD.CV_WEIGHT
        return steps
