"""CTKD (Li et al., AAAI 2023): the learned temperature, its reversed gradient and cosine
curriculum, the global and instance-wise modules on KD / DKD / DIST, the optimizer, the per-epoch
log through the engine, recipes and published values."""

import json
import math

import pytest
import torch
from helpers import QUICK_RUN
from test_crld import make, two_view_batch

from kdistill.config.loading import load_config
from kdistill.engine import train_run
from kdistill.engine.schedule import build_optimizer
from kdistill.errors import KdistillError
from kdistill.losses import dist_loss, dkd_loss, kd_loss
from kdistill.methods import method_class
from kdistill.methods._curriculum_temperature import reversal_strength
from kdistill.methods.dkd import DKD
from kdistill.report.published import published_top1

START_TEMPERATURE = 1 + 20 / (1 + math.exp(-1))  # the reference's 1 + 20 sigmoid(1), raw initialised to 1


def reference_lambda(epoch: int, decay_max: float = 0.0, decay_min: float = -1.0, loops: int = 10) -> float:
    """The CTKD code's CosineDecay.get_value: the factor its gradient reversal multiplies by."""
    i = min(max(epoch, 0), loops)
    return (math.cos(i * math.pi / loops) + 1.0) * 0.5 * (decay_max - decay_min) + decay_min


def logits_of(distiller, batch):
    with torch.no_grad():
        return distiller.student(batch["image"]), distiller.teacher(batch["image"])


@pytest.mark.parametrize("epoch", [0, 1, 2, 5, 9, 10, 11, 240])
def test_the_curriculum_is_the_references_cosine_decay_with_its_sign_as_the_reversal(epoch):
    options = make("kd+ctkd").options
    assert reversal_strength(options, epoch) == pytest.approx(-reference_lambda(epoch), abs=1e-12)
    assert reversal_strength(options, 5) == pytest.approx(0.5)


def test_kd_ctkd_total_at_the_learned_start_temperature():
    distiller = make("kd+ctkd").eval()
    assert distiller.weights == {"w_ce": 0.1, "w_kd": 0.9, "w_method": 0.0}
    batch = two_view_batch()
    s, t = logits_of(distiller, batch)
    output = distiller(batch)
    expected = 0.1 * torch.nn.functional.cross_entropy(s, batch["label"]) + 0.9 * kd_loss(s, t, START_TEMPERATURE)
    torch.testing.assert_close(output.total, expected)
    assert output.extras["ctkd_temperature"].item() == pytest.approx(START_TEMPERATURE, rel=1e-6)
    assert output.extras["ctkd_reversal"].item() == pytest.approx(-reference_lambda(1), rel=1e-6)


@pytest.mark.parametrize("name", ["kd+ctkd", "dkd+ctkd", "dist+ctkd"])
def test_the_temperature_gets_the_reversed_gradient_and_the_student_the_ordinary_one(name):
    distiller = make(name).eval()
    epoch = 4
    distiller.on_epoch_start(epoch, 240)
    batch = two_view_batch()
    output = distiller(batch)
    output.total.backward()
    raw_grad = distiller.temperature_module.raw.grad.clone()
    student_grad = distiller.student.fc.weight.grad.clone()
    # The same loss written by hand as a function of an ordinary (unreversed) raw parameter.
    raw = torch.ones((), requires_grad=True)
    temperature = 1 + 20 * torch.sigmoid(raw)
    s = distiller.student(batch["image"])
    with torch.no_grad():
        t = distiller.teacher(batch["image"])
    options = distiller.options
    distill = {"kd+ctkd": lambda: 0.9 * kd_loss(s, t, temperature),
               "dkd+ctkd": lambda: (epoch / 20) * dkd_loss(s, t, batch["label"], 1.0, 8.0, temperature)["total"],
               "dist+ctkd": lambda: dist_loss(s, t, options.beta, options.gamma, temperature)}[name]()
    by_hand = output.weights["ce"] * torch.nn.functional.cross_entropy(s, batch["label"]) + distill
    distiller.student.zero_grad()
    by_hand.backward()
    strength = reversal_strength(options, epoch)
    assert 0 < strength < 1 and raw.grad.abs() > 0
    torch.testing.assert_close(raw_grad.reshape(()), -strength * raw.grad, rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(student_grad, distiller.student.fc.weight.grad, rtol=1e-4, atol=1e-7)


def test_the_temperature_is_in_the_optimizer_and_its_step_raises_the_distillation_loss():
    distiller = make("kd+ctkd", w_ce=0.0).train()
    distiller.on_epoch_start(10, 240)  # full reversal
    parameters = distiller.train_parameters()
    assert any(p is distiller.temperature_module.raw for p in parameters)
    assert not any(p is q for p in parameters for q in distiller.teacher.parameters())
    from kdistill.config import OptimConfig

    optimizer = build_optimizer([distiller.temperature_module.raw], OptimConfig(lr=0.5), 0.5)
    batch = two_view_batch()
    before = distiller(batch).terms["kd"]
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    assert distiller(batch).terms["kd"].item() > before.item()  # the temperature plays against the student


def test_instance_temperature_is_one_per_sample_within_its_range_and_weights_each_sample():
    distiller = make("kd+ctkd", instance_temperature=True).eval()
    batch = two_view_batch()
    s, t = logits_of(distiller, batch)
    temperature = distiller.logit_temperature(s, t)
    assert temperature.shape == (8, 1) and bool(((temperature > 1) & (temperature < 21)).all())
    assert distiller.temperature_module.raw is None
    # KD with a temperature per sample: the mean of T_i^2 KL_i, sample by sample (the reference README's loop).
    expected = sum(kd_loss(s[i:i + 1], t[i:i + 1], temperature[i].item()) for i in range(8)) / 8
    torch.testing.assert_close(distiller(batch).terms["kd"], expected)
    labels = batch["label"]
    per_sample = sum(dkd_loss(s[i:i + 1], t[i:i + 1], labels[i:i + 1], temperature=temperature[i].item())["total"]
                     for i in range(8)) / 8
    torch.testing.assert_close(dkd_loss(s, t, labels, temperature=temperature)["total"], per_sample)
    output = distiller(batch)
    assert output.extras["ctkd_temperature"].item() == pytest.approx(temperature.mean().item())


@pytest.mark.parametrize(("name", "options"), [("kd+ctkd", {}), ("dkd+ctkd", {}), ("dist+ctkd", {}),
                                               ("dkd+ctkd", {"instance_temperature": True})])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(name, options):
    distiller = make(name, **options).train()
    distiller.on_epoch_start(20, 240)
    batch = two_view_batch(16)
    optimizer = torch.optim.SGD(distiller.train_parameters(), lr=0.02, momentum=0.9)
    before = distiller(batch).total
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    assert distiller(batch).total.item() < before.item()


def test_the_option_reaches_every_logit_method_and_is_refused_without_a_logit_term():
    assert issubclass(method_class("dkd+ctkd"), DKD) and make("dkd+ctkd").options.curriculum_temperature
    batch = two_view_batch()
    for name in ("crld", "mlkd", "dcd+kd", "crld+dist"):
        output = make(name, curriculum_temperature=True, weak_threshold=0.0, strong_threshold=0.0)(batch) \
            if name.startswith("crld") else make(name, curriculum_temperature=True)(batch)
        assert output.extras["ctkd_temperature"].item() == pytest.approx(START_TEMPERATURE, rel=1e-6), name
    with pytest.raises(KdistillError, match="curriculum_temperature"):
        make("at", curriculum_temperature=True)


def test_the_temperature_is_logged_per_epoch_through_the_engine(tmp_path):
    teacher = tmp_path / "teacher"
    train_run(load_config(None, QUICK_RUN + ["epochs=1", "steps_per_epoch=2", f"out={teacher}"]))
    out = tmp_path / "run"
    train_run(load_config(None, QUICK_RUN + ["method.name=kd+ctkd", "method.reversal_epochs=2", "epochs=3",
                                             "steps_per_epoch=2", "teacher=resnet8", f"teacher_checkpoint={teacher}",
                                             f"out={out}"]))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["train/ctkd_reversal"] for line in lines] == pytest.approx([0.5, 1.0, 1.0])
    temperatures = [line["train/ctkd_temperature"] for line in lines]
    assert all(1 < value < 21 for value in temperatures) and len(set(temperatures)) == 3  # it is learned


def test_ctkd_recipes_and_published_values(run_cli):
    from test_recipes import CONFIGS

    for base in ("kd", "dkd", "dist"):
        assert len(list((CONFIGS / "cifar100" / f"{base}+ctkd").glob("*.yaml"))) == 13
    recipe = load_config(str(CONFIGS / "cifar100/dkd+ctkd/resnet56_resnet20.yaml")).method.options
    assert recipe.curriculum_temperature and not recipe.instance_temperature and recipe.beta == 2.0
    assert (recipe.temperature_min, recipe.temperature_range, recipe.reversal_epochs) == (1.0, 20.0, 10)
    assert published_top1("kd+ctkd", ("resnet56", "resnet20")) == (71.19, "CTKD")
    methods = next(line for line in run_cli("list").stdout.splitlines() if line.startswith("methods:"))
    assert {"kd+ctkd", "dkd+ctkd", "dist+ctkd"} <= set(methods.removeprefix("methods: ").split(", "))
