"""Every shipped recipe loads, and builds its models and method on a tiny input."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from kdistill.engine.setup import default_lr, load_config
from kdistill.methods import MethodContext, build_distiller, method_class
from kdistill.models import create_model

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = sorted(CONFIGS.rglob("*.yaml"))
CIFAR100_TRAIN_SIZE = 50000


def test_every_table_pair_has_every_recipe():
    methods = {"vanilla", "kd", "dcd", "dcd+kd", "crd", "crd+kd"}
    for method in methods:
        assert len(list((CONFIGS / "cifar100" / method).glob("*.yaml"))) == 13, method
    assert len(list((CONFIGS / "cifar100" / "teachers").glob("*.yaml"))) == 6


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            cache[name] = create_model(name, num_classes=100, in_chans=3)
        return cache[name]

    return get


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_builds_and_runs_one_forward(recipe, models):
    cfg = load_config(str(recipe))
    method = OmegaConf.to_container(cfg.method)
    cls = method_class(method["name"])
    teacher = models(cfg.teacher) if cls.needs_teacher else None
    context = MethodContext((3, 32, 32), 100, torch.arange(CIFAR100_TRAIN_SIZE) % 100)
    distiller = build_distiller(method, models(cfg.student), teacher, context)
    batch = {"image": torch.randn(2, 3, 32, 32), "label": torch.tensor([0, 1]), "index": torch.tensor([0, 1])}
    with torch.no_grad():
        output = distiller.eval()(batch)  # eval mode: batch-norm statistics of the shared models stay put
    assert output.logits.shape == (2, 100)
    assert all(torch.isfinite(v) for v in output.losses.values())
    expected_lr = 0.01 if cfg.student in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05
    assert default_lr(cfg) == expected_lr
