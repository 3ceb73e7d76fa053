"""Every shipped recipe builds its models and method and runs one forward on a tiny input (its own
file, so the parallel test run can give it a worker of its own)."""

import pytest
import torch
from recipes import CONFIGS, HUGE_RECIPES, INPUTS, RECIPES, recipe_config, tiny_student_options

from kdistill.methods import MethodContext, build_distiller, method_class
from kdistill.models import create_model

CIFAR100_TRAIN_SIZE = 50000


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


@pytest.mark.parametrize("recipe", [path for path in RECIPES if path not in HUGE_RECIPES],
                         ids=lambda p: str(p.relative_to(CONFIGS)))
def test_recipe_builds_and_runs_one_forward(recipe, models):
    cfg = recipe_config(recipe)
    cls = method_class(cfg.method.name)
    chans, side, classes = INPUTS[cfg.data.name]
    student_options = cfg.student_options
    if cfg.data.name == "imagefolder":
        side, student_options = tiny_student_options(cfg)
    student = models(cfg.student, chans, classes, student_options)
    teacher = models(cfg.teacher, chans, classes, cfg.teacher_options) if cls.needs_teacher else None
    samples = 4  # SemCKD's attention embeds batch_size // 4 dimensions
    context = MethodContext((chans, side, side), classes, torch.arange(CIFAR100_TRAIN_SIZE) % classes, cfg.optim.lr,
                            batch_size=samples)
    distiller = build_distiller(cfg.method, student, teacher, context)
    batch = {"image": torch.randn(samples, chans, side, side), "label": torch.arange(samples),
             "index": torch.arange(samples)}
    if cls.needs_strong_view:
        batch["image_strong"] = torch.randn(samples, chans, side, side)
    with torch.no_grad():
        output = distiller.eval()(batch)  # eval mode: batch-norm statistics of the shared models stay put
    assert output.logits is None or output.logits.shape == (samples, classes)
    assert output.terms and all(torch.isfinite(v) for v in output.terms.values())
    if cfg.data.name == "cifar100" and cfg.method.name != "mlkd":  # the tables' learning rates (MLKD: its own)
        expected_lr = 0.01 if cfg.student in ("MobileNetV2", "ShuffleV1", "ShuffleV2") else 0.05
        assert cfg.optim.lr == expected_lr
        if cfg.method.name == "ft":  # the benchmark trains the paraphraser at 0.01 under CIFAR ResNet/WRN students
            small_init = cfg.student.startswith(("resnet", "wrn_"))
            assert distiller.init_phase().lr == (0.01 if small_init else expected_lr)
