"""What the recipe tests share: the shipped recipes, each loaded once, and the tiny stand-in inputs."""

import functools
from pathlib import Path

from kdistill.config.loading import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
RECIPES = sorted(CONFIGS.rglob("*.yaml"))


@functools.cache
def recipe_config(path: Path):
    """A recipe's resolved config, loaded once for the several tests that read it (it is read-only)."""
    return load_config(str(path))


# SemCKD's ResNet50-teacher recipes build 4096-channel projectors (the reference's design, about
# 850 M parameters): half a minute each on a CPU, for wiring the other SemCKD recipes already check.
HUGE_RECIPES = {CONFIGS / "cifar100" / "semckd" / f"ResNet50_{student}.yaml" for student in ("vgg8", "MobileNetV2")}

INPUTS = {"cifar100": (3, 32, 100), "embedded": (1, 28, 10), "imagefolder": (3, 28, 1000)}
DEIT_SIDE = 32  # a DeiT student's 16-pixel patches; it is built at that size (a fixed position embedding)


def tiny_student_options(cfg) -> tuple[int, dict]:
    """The side of the tiny stand-in images of an image-folder recipe and the student options for it."""
    if cfg.student.startswith("timm:deit_"):
        return DEIT_SIDE, {**cfg.student_options, "img_size": DEIT_SIDE}
    return INPUTS["imagefolder"][1], cfg.student_options
