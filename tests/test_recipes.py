"""Every shipped recipe loads, and builds its models and method on a tiny input."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from kdistill.engine.setup import load_config
from kdistill.methods import MethodContext, build_distiller, method_class
from kdistill.models import create_model

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = sorted(CONFIGS.rglob("*.yaml"))
CIFAR100_TRAIN_SIZE = 50000


def test_every_table_pair_has_every_recipe():
    methods = {"vanilla", "kd", "dcd", "dcd+kd", "crd", "crd+kd", "crld",
               "fitnet", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "nst",
               "dkd", "dkd+ls", "kd+ls", "mlkd", "crld+dkd"}
    for method in methods:
        assert len(list((CONFIGS / "cifar100" / method).glob("*.yaml"))) == 13, method
    # FSP needs equal stage widths: the tables' six pairs of one family and width.
    assert len(list((CONFIGS / "cifar100" / "fsp").glob("*.yaml"))) == 6
    assert len(list((CONFIGS / "cifar100" / "teachers").glob("*.yaml"))) == 6
    for method in ("crld", "dkd"):
        assert {p.stem for p in (CONFIGS / "imagenet" / method).glob("*.yaml")} == {"resnet34_resnet18",
                                                                                  "resnet50_mobilenetv1_100"}


def test_logit_family_recipes_carry_the_references_per_pair_settings():
    def method_of(path: str) -> dict:
        return OmegaConf.to_container(load_config(str(CONFIGS / path)).method)

    # mdistiller's DKD beta by pair; the LS code scales it (and alpha) by its KD weight 9.
    assert [method_of(f"cifar100/dkd/{pair}.yaml")["beta"] for pair in
            ("resnet32x4_resnet8x4", "resnet56_resnet20", "vgg13_vgg8")] == [8.0, 2.0, 6.0]
    assert method_of("cifar100/crld+dkd/resnet110_resnet32.yaml")["beta"] == 2.0
    dkd_ls = method_of("cifar100/dkd+ls/wrn_40_2_wrn_16_2.yaml")
    assert (dkd_ls["alpha"], dkd_ls["beta"], dkd_ls["temperature"]) == (9.0, 54.0, 2.0) and dkd_ls["logit_standardize"]
    assert method_of("imagenet/dkd/resnet50_mobilenetv1_100.yaml") | {"beta": 0} == method_of(
        "imagenet/dkd/resnet34_resnet18.yaml") | {"beta": 0}
    assert method_of("imagenet/dkd/resnet34_resnet18.yaml")["temperature"] == 1.0
    # MLKD's authors' learning rates and epochs.
    mlkd = {pair: load_config(str(CONFIGS / f"cifar100/mlkd/{pair}.yaml"))
            for pair in ("resnet32x4_resnet8x4", "resnet32x4_ShuffleV2", "vgg13_MobileNetV2")}
    assert [(cfg.optim.lr, cfg.epochs) for cfg in mlkd.values()] == [(0.025, 240), (0.01, 480), (0.0025, 480)]


# (channels, side, classes) of a tiny stand-in input per data set; 28 suits /14 ViT patches.
INPUTS = {"cifar100": (3, 32, 100), "embedded": (1, 28, 10), "imagefolder": (3, 28, 1000)}


@pytest.fixture(scope="module")
def models():
    cache = {}

    def get(name, in_chans, num_classes, options):
        key = (name, in_chans, num_classes, repr(sorted(options.items())))
        if key not in cache:
            torch.manual_seed(0)
            cache[key] = create_model(name, num_classes=num_classes, in_chans=in_chans, **options)
        return cache[key]

    return get


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_builds_and_runs_one_forward(recipe, models):
    cfg = load_config(str(recipe))
    method = OmegaConf.to_container(cfg.method)
    cls = method_class(method["name"])
    chans, side, classes = INPUTS[cfg.data.name]
    student = models(cfg.student, chans, classes, OmegaConf.to_container(cfg.student_options))
    teacher_options = OmegaConf.to_container(cfg.teacher_options)
    teacher = models(cfg.teacher, chans, classes, teacher_options) if cls.needs_teacher else None
    context = MethodContext((chans, side, side), classes, torch.arange(CIFAR100_TRAIN_SIZE) % classes, cfg.optim.lr)
    distiller = build_distiller(method, student, teacher, context)
    batch = {"image": torch.randn(2, chans, side, side), "label": torch.tensor([0, 1]), "index": torch.tensor([0, 1])}
    if cls.needs_strong_view:
        batch["image_strong"] = torch.randn(2, chans, side, side)
    with torch.no_grad():
        output = distiller.eval()(batch)  # eval mode: batch-norm statistics of the shared models stay put
    assert output.logits is None or output.logits.shape == (2, classes)
    assert output.terms and all(torch.isfinite(v) for v in output.terms.values())
    if cfg.data.name == "cifar100" and cfg.method.name != "mlkd":  # the tables' learning rates (MLKD: its own)
        expected_lr = 0.01 if cfg.student in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05
        assert cfg.optim.lr == expected_lr
        if method["name"] == "ft":  # the benchmark trains the paraphraser at 0.01 under CIFAR ResNet/WRN students
            small_init = cfg.student.startswith(("resnet", "wrn_"))
            assert distiller.init_phase().lr == (0.01 if small_init else expected_lr)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_weights_are_the_methods_defaults_unless_the_recipe_says_why(recipe):
    cfg = load_config(str(recipe))
    defaults = method_class(cfg.method["name"]).default_weights
    written = {key: cfg.method[key] for key in defaults if key in cfg.method}
    assert written, "a recipe writes its weights out"
    departures = sorted(key for key, value in written.items() if value != defaults[key])
    for key in departures:
        assert cfg.note and key in cfg.note, f"{key}={written[key]} differs from the default {defaults[key]}: say why in note"
