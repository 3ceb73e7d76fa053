"""Every shipped recipe loads with its references' settings; the feature baselines' and the ImageNet
recipes train one step (the per-recipe forward is test_recipe_forward.py)."""

import dataclasses
import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from recipes import CONFIGS, HUGE_RECIPES, RECIPES, ROOT, recipe_config, tiny_student_options

from kdistill.config.loading import load_config
from kdistill.data import build_loaders
from kdistill.engine.schedule import build_optimizer
from kdistill.methods import MethodContext, build_distiller, list_methods, method_class
from kdistill.models import create_model
from kdistill.models.cifar_teachers import CIFAR100_TEACHERS


def _load_script(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_recipes = _load_script(ROOT / "scripts" / "make_recipes.py")  # the recipe generator (not an installed module)


def test_every_registered_method_has_its_recipes_or_says_why_not():
    """The recipe generator's method table and the registry agree: a new method gets its recipes
    (one line of scripts/make_recipes.py) or a reason there why it has none."""
    registered = set(list_methods())
    with_recipes, without = set(make_recipes.CIFAR100_METHODS), set(make_recipes.NO_CIFAR100_RECIPES)
    assert registered - with_recipes - without == set()
    assert (with_recipes | without) - registered == set() and not with_recipes & without
    for method in with_recipes:
        pairs = make_recipes.CIFAR100_METHOD_PAIRS.get(method, make_recipes.CIFAR100_PAIRS)
        assert {p.stem for p in (CONFIGS / "cifar100" / method).glob("*.yaml")} == \
            {f"{teacher}_{student}" for teacher, student in pairs}, method
    # FSP needs equal stage widths: the tables' six pairs of one family and width.
    assert len(list((CONFIGS / "cifar100" / "fsp").glob("*.yaml"))) == 6
    # KDSVD aligns singular vectors over channels: the same six pairs.
    assert {p.name for p in (CONFIGS / "cifar100" / "kdsvd").glob("*.yaml")} == \
        {p.name for p in (CONFIGS / "cifar100" / "fsp").glob("*.yaml")}
    assert len(list((CONFIGS / "cifar100" / "teachers").glob("*.yaml"))) == 6
    for method in ("crld", "dkd", "dcd", "dcd+kd", "kd", "crd", "dist", "simkd"):
        assert {p.stem for p in (CONFIGS / "imagenet" / method).glob("*.yaml")} == {"resnet34_resnet18",
                                                                                  "resnet50_mobilenetv1_100"}


def test_logit_family_recipes_carry_the_references_per_pair_settings():
    def method_of(path: str) -> dict:
        return dataclasses.asdict(load_config(str(CONFIGS / path)).method.options)

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


def test_reviewkd_recipes_carry_the_authors_per_pair_weights():
    def weight_and_warmup(pair: str) -> tuple[float, int]:
        options = load_config(str(CONFIGS / f"cifar100/reviewkd/{pair}.yaml")).method.options
        return options.w_method, options.warmup

    # dvlab-research/ReviewKD CIFAR-100/script/reviewKD.sh (5.0 also in mdistiller's reviewkd.yaml).
    assert [weight_and_warmup(pair) for pair in ("resnet32x4_resnet8x4", "resnet32x4_ShuffleV2", "resnet56_resnet20",
                                                 "resnet110_resnet32", "vgg13_vgg8")] == \
        [(5.0, 20), (8.0, 20), (0.6, 20), (1.0, 20), (1.0, 20)]


def test_cifar100_recipes_take_the_published_teachers_in_one_step():
    # teacher_pretrained: mdistiller's archive, fetched once into the cache; no path to prepare.
    recipes = [recipe_config(path) for path in sorted((CONFIGS / "cifar100").rglob("*.yaml"))]
    with_teacher = [cfg for cfg in recipes if cfg.teacher is not None]
    assert len(with_teacher) > 300
    assert all(cfg.teacher_pretrained and cfg.teacher_checkpoint is None and cfg.teacher in CIFAR100_TEACHERS
               for cfg in with_teacher)


def test_dcd_imagenet_recipes_have_the_reference_settings():
    # giakoumoglou/distillers imagenet/README.md: batch 256, 120 epochs, lr 0.1 x0.1 at 30/60/90, wd 1e-4.
    for method, w_kd in (("dcd", 0.0), ("dcd+kd", 1.0), ("kd", 1.0)):
        cfg = load_config(str(CONFIGS / "imagenet" / method / "resnet34_resnet18.yaml"))
        assert (cfg.data.batch_size, cfg.epochs, cfg.optim.lr, cfg.optim.weight_decay) == (256, 120, 0.1, 1e-4)
        assert list(cfg.schedule.milestones) == [30, 60, 90] and cfg.schedule.gamma == 0.1
        assert (cfg.method.options.w_ce, cfg.method.options.w_kd) == (1.0, w_kd) and cfg.teacher_pretrained
        assert cfg.teacher == "tv:resnet34:IMAGENET1K_V1" and cfg.student == "tv:resnet18"


def test_label_free_vit_recipes_have_the_reference_settings():
    for method in ("tintem", "proteus"):
        cfg = load_config(str(CONFIGS / "imagenet" / method / "vit_small14_vit_tiny14.yaml"))
        assert (cfg.data.train_transform, cfg.data.repeated_augment, cfg.data.random_erasing) == ("deit", 3, 0.25)
        assert (cfg.data.rand_augment, cfg.data.interpolation) == ("rand-m9-mstd0.5-inc1", "bicubic")
        assert (cfg.schedule.warmup_lr, cfg.schedule.min_lr, cfg.schedule.warmup_epochs) == (1e-6, 1e-5, 5)
        assert cfg.student_options["init_values"] == 1.0 and cfg.student_options["patch_size"] == 14
        assert (cfg.optim.name, cfg.optim.weight_decay, cfg.data.batch_size, cfg.epochs) == ("adamw", 0.05, 1024, 300)


def test_deit_recipe_has_deits_settings():
    # facebookresearch/deit main.py's defaults and its README's DeiT-S command (4 x 256 images).
    cfg = load_config(str(CONFIGS / "imagenet" / "deit" / "regnety160_deit_small.yaml"))
    assert (cfg.teacher, cfg.student) == ("timm:regnety_160.deit_in1k", "timm:deit_small_distilled_patch16_224")
    assert cfg.teacher_pretrained and cfg.student_options == {"drop_path_rate": 0.1}
    options = cfg.method.options
    assert (options.distillation, options.label_smoothing, options.w_ce, options.w_method) == ("hard", 0.1, 0.5, 0.5)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.model_no_weight_decay) == \
        ("adamw", 5e-4 * cfg.data.batch_size / 512, 0.05, True)
    assert (cfg.data.batch_size, cfg.epochs, cfg.schedule.name, cfg.schedule.warmup_epochs) == (1024, 300, "cosine", 5)
    assert (cfg.schedule.warmup_lr, cfg.schedule.min_lr, cfg.precision) == (1e-6, 1e-5, "fp16")
    assert (cfg.data.train_transform, cfg.data.repeated_augment, cfg.data.random_erasing) == ("deit", 3, 0.25)
    assert "mixup" in cfg.note and "CutMix" in cfg.note


# (channels, side, classes) of a tiny stand-in input per data set; 28 suits /14 ViT patches.
# The mdistiller feature baselines' recipes (trainable fusion blocks and connectors, margins, SVDs)
# and the DCD authors' code base's (projectors, reused teacher classifiers, a queue, stage attention).
FEATURE_BASELINE_RECIPES = sorted(path for method in ("reviewkd", "ofd", "kdsvd", "simkd", "srrl", "rrd", "rrd+kd",
                                                      "semckd")
                                  for path in (CONFIGS / "cifar100" / method).glob("*.yaml")
                                  if path not in HUGE_RECIPES)


@pytest.mark.parametrize("recipe", FEATURE_BASELINE_RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_feature_baseline_recipe_trains_one_step(recipe):
    cfg = recipe_config(recipe)
    torch.manual_seed(0)
    student, teacher = create_model(cfg.student), create_model(cfg.teacher)
    # A quarter of the pixels (4x faster); SemCKD sizes its attention by the batch.
    context = MethodContext((3, 16, 16), 100, None, cfg.optim.lr, batch_size=4)
    distiller = build_distiller(cfg.method, student, teacher, context).train()
    distiller.on_epoch_start(20, cfg.epochs)  # past ReviewKD's warm-up
    optimizer = build_optimizer(distiller.train_parameters(), cfg.optim, cfg.optim.lr, owner=distiller)
    before = [p.detach().clone() for p in student.parameters()]
    batch = {"image": torch.randn(4, 3, 16, 16), "label": torch.arange(4), "index": torch.arange(4)}
    output = distiller(batch)
    output.total.backward()
    optimizer.step()
    own_term = cfg.method.name.removesuffix("+kd")
    supervised = {name for name in ("ce", "kd") if distiller.weights[f"w_{name}"]}
    assert torch.isfinite(output.total) and set(output.terms) == supervised | {own_term}
    assert any(not torch.equal(old, new) for old, new in zip(before, student.parameters()))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_weights_are_the_methods_defaults_unless_the_recipe_says_why(recipe):
    cfg = recipe_config(recipe)
    defaults = method_class(cfg.method.name).default_weights
    options = cfg.method.options  # a weight the recipe leaves out is None (the default)
    written = {key: getattr(options, key) for key in defaults if getattr(options, key) is not None}
    assert written, "a recipe writes its weights out"
    departures = sorted(key for key, value in written.items() if value != defaults[key])
    for key in departures:
        why = f"{key}={written[key]} differs from the default {defaults[key]}: say why in note"
        assert cfg.note and key in cfg.note, why


def test_every_recipe_writes_each_seed_into_its_own_folder():
    """Each recipe's `out` ends in seed${seed}, which resolves per seed (shown on one recipe: loading
    every recipe twice costs half a minute)."""
    for recipe in RECIPES:
        written = yaml.safe_load(recipe.read_text())["out"]
        assert written.endswith("/seed${seed}") and recipe_config(recipe).out == written[:-7] + "0", recipe
    folders = {seed: load_config(str(RECIPES[0]), [f"seed={seed}"]).out for seed in (0, 1)}
    assert folders[1] == folders[0][:-1] + "1" and folders[0].endswith("/seed0")


def test_the_readme_names_teacher_files_in_one_layout():
    """Every shared-teacher file the README names lies in the benchmark's save/models/ layout."""
    readme = (CONFIGS.parent / "README.md").read_text()
    teacher_files = re.findall(r"[\w/.]*\w_vanilla/ckpt_epoch_240\.pth", readme)  # named paths, not <arch>_...
    assert teacher_files and all(path.startswith("save/models/") for path in teacher_files), teacher_files
    assert "pip install kdistill[slurm]" not in readme  # from a clone: pip install -e ".[slurm]"


IMAGENET_RECIPES = sorted((CONFIGS / "imagenet").rglob("*.yaml"))


def write_tiny_image_folder(root: Path, classes: int = 2, per_class: int = 4) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for label in range(classes):
            (root / split / f"c{label}").mkdir(parents=True)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (36, 44, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{label}" / f"{k}.png")


@pytest.mark.parametrize("recipe", IMAGENET_RECIPES, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_imagenet_recipe_trains_one_step_on_a_tiny_image_folder(recipe, tmp_path):
    """The recipe's own data pipeline, method and optimizer, one step, on a 2-class folder of tiny
    images (the teacher random: its weights would be a download)."""
    write_tiny_image_folder(tmp_path)
    side, student_options = tiny_student_options(load_config(str(recipe)))
    cfg = load_config(str(recipe), [f"data.root={tmp_path}", "data.batch_size=2", f"data.image_size={side}",
                                    "data.num_workers=0", "device=cpu"])
    cls = method_class(cfg.method.name)
    loaders = build_loaders(cfg.data, torch.device("cpu"), seed=0, with_strong_view=cls.needs_strong_view)
    classes = loaders.info.num_classes
    torch.manual_seed(0)
    student = create_model(cfg.student, num_classes=classes, **student_options)
    teacher = create_model(cfg.teacher, num_classes=classes, **cfg.teacher_options)
    context = MethodContext((3, side, side), classes, loaders.train.labels, cfg.optim.lr)
    distiller = build_distiller(cfg.method, student, teacher, context).train()
    optimizer = build_optimizer(distiller.train_parameters(), cfg.optim, cfg.optim.lr, owner=distiller)
    before = [p.detach().clone() for p in student.parameters()]
    loss = distiller(next(iter(loaders.train))).total
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(old, new) for old, new in zip(before, student.parameters()))
