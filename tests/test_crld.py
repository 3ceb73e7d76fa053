"""CRLD: the loss against the spec's golden values and an independent formula, the method and
its composition with DCD, and a short real run."""

import json
import math

import pytest
import torch
from helpers import QUICK_RUN

from kdistill.config.loading import load_config
from kdistill.engine import train_run
from kdistill.errors import KdistillError
from kdistill.losses import crld_loss
from kdistill.methods import MethodContext, build_distiller, method_class
from kdistill.methods.base import Distiller, DistillOutput
from kdistill.methods.crld import with_cross_view
from kdistill.models import create_model

CONTEXT = MethodContext((1, 28, 28), num_classes=10)
# The spec's example (section CRLD).
S_WEAK = torch.tensor([[2.0, 0, -1], [0.5, 0.2, 0.1]])
S_STRONG = torch.tensor([[1.0, 0.5, 0], [0, 1, 0]])
T_WEAK = torch.tensor([[6.0, 0, 0], [1, 0, 0]])
T_STRONG = torch.tensor([[3.0, 1, 0], [0, 0.5, 0]])
LABELS = torch.tensor([0, 1])


def test_golden_values_of_the_spec():
    parts = crld_loss(S_WEAK, S_STRONG, T_WEAK, T_STRONG, LABELS)
    assert parts["weak_mask"].tolist() == [True, False] and parts["strong_mask"].tolist() == [True, True]
    assert parts["ce"].item() == pytest.approx(1.290830, abs=1e-6)
    assert parts["within_view"].item() == pytest.approx(0.934583, abs=1e-6)
    assert parts["cross_view"].item() == pytest.approx(1.838935, abs=1e-6)
    assert parts["total"].item() == pytest.approx(4.079463, abs=1e-6)


def softmax(row: list[float], temperature: float = 1.0) -> list[float]:
    exps = [math.exp(v / temperature) for v in row]
    return [e / sum(exps) for e in exps]


def kd_of_sample(student: list[float], teacher: list[float], temperature: float) -> float:
    """`T^2 KL(softmax(t/T) || softmax(s/T))` of one sample, written out."""
    p_t, p_s = softmax(teacher, temperature), softmax(student, temperature)
    return temperature**2 * sum(p * (math.log(p) - math.log(q)) for p, q in zip(p_t, p_s, strict=True))


def independent_crld(s_weak, s_strong, t_weak, t_strong, labels, temperature, weak_threshold, strong_threshold):
    """The spec's formulas, sample by sample, in Python floats: (ce, within_view, cross_view, masks)."""
    s_weak, s_strong, t_weak, t_strong = (x.double().tolist() for x in (s_weak, s_strong, t_weak, t_strong))
    batch = len(labels)
    ce = sum(-math.log(softmax(s_weak[i])[y]) - math.log(softmax(s_strong[i])[y])
             for i, y in enumerate(labels.tolist())) / batch
    weak_mask = [max(softmax(t)) >= weak_threshold for t in t_weak]
    strong_mask = [max(softmax(t)) >= strong_threshold for t in t_strong]
    within = sum(kd_of_sample(s_weak[i], t_weak[i], temperature) + kd_of_sample(s_strong[i], t_strong[i], temperature)
                 for i in range(batch) if weak_mask[i]) / batch
    cross = sum(kd_of_sample(s_strong[i], t_weak[i], temperature) + kd_of_sample(s_weak[i], t_strong[i], temperature)
                for i in range(batch) if strong_mask[i]) / batch
    return ce, within, cross, weak_mask, strong_mask


def test_terms_divide_by_the_whole_batch_when_the_masks_keep_one_sample():
    # Sample 0's teacher is sure on both views (top softmax 0.99), samples 1-3 are not (< 0.7).
    t_weak = torch.tensor([[8.0, 0, 0], [1, 0, 0], [0, 0.5, 0], [0, 0, 0]])
    t_strong = torch.tensor([[7.0, 0, 0], [0.5, 0, 0], [0, 1, 0], [0.2, 0, 0.1]])
    generator = torch.Generator().manual_seed(0)
    s_weak, s_strong = torch.randn(4, 3, generator=generator), torch.randn(4, 3, generator=generator)
    labels = torch.tensor([0, 0, 1, 2])
    parts = crld_loss(s_weak, s_strong, t_weak, t_strong, labels, strong_threshold=0.9)
    assert parts["weak_mask"].tolist() == parts["strong_mask"].tolist() == [True, False, False, False]
    s_w, s_s, t_w, t_s = (x[0].tolist() for x in (s_weak, s_strong, t_weak, t_strong))
    within_of_sample_0 = kd_of_sample(s_w, t_w, 4.0) + kd_of_sample(s_s, t_s, 4.0)
    cross_of_sample_0 = kd_of_sample(s_s, t_w, 4.0) + kd_of_sample(s_w, t_s, 4.0)
    assert parts["within_view"].item() == pytest.approx(within_of_sample_0 / 4, rel=1e-5)  # not / 1
    assert parts["cross_view"].item() == pytest.approx(cross_of_sample_0 / 4, rel=1e-5)


@pytest.mark.parametrize("temperature, weak_threshold, strong_threshold",
                         [(4.0, 0.9, 0.2), (2.0, 0.5, 0.6), (1.0, 0.0, 0.0)])
def test_random_logits_against_the_formula_with_every_option(temperature, weak_threshold, strong_threshold):
    generator = torch.Generator().manual_seed(int(10 * temperature))
    s_weak, s_strong = torch.randn(6, 5, generator=generator), torch.randn(6, 5, generator=generator)
    t_weak, t_strong = 3 * torch.randn(6, 5, generator=generator), 3 * torch.randn(6, 5, generator=generator)
    labels = torch.randint(0, 5, (6,), generator=generator)
    ce, within, cross, weak_mask, strong_mask = independent_crld(
        s_weak, s_strong, t_weak, t_strong, labels, temperature, weak_threshold, strong_threshold)
    parts = crld_loss(s_weak, s_strong, t_weak, t_strong, labels, temperature, weak_threshold, strong_threshold,
                      w_ce=0.7, w_within=3.0, w_cross=0.25)
    assert parts["weak_mask"].tolist() == weak_mask and parts["strong_mask"].tolist() == strong_mask
    assert sum(weak_mask) + sum(strong_mask) > 0  # the case exercises the KD terms
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["within_view"].item() == pytest.approx(within, rel=1e-5, abs=1e-7)
    assert parts["cross_view"].item() == pytest.approx(cross, rel=1e-5, abs=1e-7)
    assert parts["total"].item() == pytest.approx(0.7 * ce + 3.0 * within + 0.25 * cross, rel=1e-5)


def test_the_loss_sends_no_gradient_to_the_teacher_logits():
    s_weak, s_strong = S_WEAK.clone().requires_grad_(), S_STRONG.clone().requires_grad_()
    t_weak, t_strong = T_WEAK.clone().requires_grad_(), T_STRONG.clone().requires_grad_()
    crld_loss(s_weak, s_strong, t_weak, t_strong, LABELS)["total"].backward()
    assert t_weak.grad is None and t_strong.grad is None
    assert s_weak.grad.abs().sum() > 0 and s_strong.grad.abs().sum() > 0


# --- the method -----------------------------------------------------------------------------


def make(name: str, **options) -> Distiller:
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10, in_chans=1)
    teacher = create_model("resnet14", num_classes=10, in_chans=1)
    return build_distiller({"name": name, **options}, student, teacher, CONTEXT)


def two_view_batch(n: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    image = torch.randn(n, 1, 28, 28, generator=generator)
    strong = image + 0.5 * torch.randn(n, 1, 28, 28, generator=generator)
    return {"image": image, "image_strong": strong, "label": torch.arange(n) % 10, "index": torch.arange(n)}


def weighted_total(distiller: Distiller, output: DistillOutput) -> torch.Tensor:
    """What the Trainer optimises."""
    return output.total


def test_trainer_total_is_the_spec_loss_of_both_views_with_the_options():
    options = {"temperature": 2.0, "weak_threshold": 0.0, "strong_threshold": 0.05, "within_view_weight": 3.0,
               "cross_view_weight": 0.25, "w_ce": 2.0}
    distiller = make("crld", **options).eval()  # eval: the views' logits below are recomputed alike
    batch = two_view_batch()
    output = distiller(batch)
    assert set(output.terms) == {"ce", "crld"} and torch.equal(output.logits, distiller.student(batch["image"]))
    with torch.no_grad():
        logits = [model(batch[view]) for model in (distiller.student, distiller.teacher)
                  for view in ("image", "image_strong")]
    expected = crld_loss(*logits, batch["label"], 2.0, 0.0, 0.05, w_ce=2.0, w_within=3.0, w_cross=0.25)
    assert expected["strong_mask"].any()
    torch.testing.assert_close(weighted_total(distiller, output), expected["total"])
    assert output.extras["crld_weak_kept"].item() == 1.0


def test_table_defaults_and_the_kd_suffix():
    distiller = make("crld")
    options = distiller.options
    assert (options.temperature, options.weak_threshold, options.strong_threshold) == (4.0, 0.9, 0.2)
    assert (options.within_view_weight, options.cross_view_weight, distiller.loss_weight("ce")) == (2.0, 0.5, 1.0)
    assert distiller.loss_weight("crld") == 1.0 and type(distiller).needs_strong_view
    with_kd = make("crld+kd")
    assert set(with_kd(two_view_batch()).terms) == {"ce", "kd", "crld"} and with_kd.loss_weight("kd") == 1.0


def test_teacher_gets_no_gradient_and_stays_in_eval_mode():
    distiller = make("crld", weak_threshold=0.0, strong_threshold=0.0).train()
    output = distiller(two_view_batch())
    weighted_total(distiller, output).backward()
    assert not distiller.teacher.training
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in distiller.student.parameters())


def test_a_batch_without_strong_view_is_refused_with_the_fix():
    batch = two_view_batch()
    del batch["image_strong"]
    with pytest.raises(KdistillError, match="with_strong_view=True"):
        make("crld")(batch)


def test_crld_plus_dcd_adds_the_dcd_term_of_the_weak_view():
    combined = make("crld+dcd", proj_dim=16).eval()
    assert method_class("crld+icd") is method_class("crld+dcd") and combined.options.proj_dim == 16
    assert combined.options.within_view_weight == 2.0 and combined.loss_weight("dcd") == 1.0
    batch = two_view_batch()
    output = combined(batch)
    assert set(output.terms) == {"ce", "crld", "dcd"} and "dcd_contrastive" in output.extras
    plain_dcd = make("dcd", proj_dim=16).eval()
    plain_dcd.load_trainable_state_dict(combined.trainable_state_dict())
    torch.testing.assert_close(output.terms["dcd"], plain_dcd(batch).terms["dcd"])
    on_strong_view = plain_dcd({**batch, "image": batch["image_strong"]}).terms["dcd"]
    assert not torch.allclose(output.terms["dcd"], on_strong_view)
    plain_crld = make("crld").eval()
    torch.testing.assert_close(output.terms["crld"], plain_crld(batch).terms["crld"])


def test_a_method_that_replaces_distill_cannot_take_the_regulariser():
    class OwnDistill(Distiller):
        def distill(self, batch):
            raise AssertionError

    with pytest.raises(KdistillError, match="replaces Distiller.distill"):
        with_cross_view(OwnDistill)


@pytest.mark.parametrize("name", ["crld", "crld+dcd"])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(name):
    # Thresholds 0: every sample passes both masks, so every term is exercised.
    distiller = make(name, weak_threshold=0.0, strong_threshold=0.0).train()
    batch = two_view_batch(16)
    optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    before = weighted_total(distiller, distiller(batch))
    optimizer.zero_grad()
    before.backward()
    optimizer.step()
    after = weighted_total(distiller, distiller(batch))
    assert after.item() < before.item()


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    train_run(load_config(None, QUICK_RUN + ["epochs=1", "steps_per_epoch=2", f"out={out}"]))
    return out


def test_short_run_through_the_engine(teacher_run, tmp_path):
    out = tmp_path / "crld"
    overrides = QUICK_RUN + ["method.name=crld", "epochs=1", "steps_per_epoch=2", "teacher=resnet8",
                             f"teacher_checkpoint={teacher_run}", f"out={out}"]
    results = train_run(load_config(None, overrides))
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert results.method == "crld" and results.top1_last == metrics["test/top1"]
    for key in ("train/ce", "train/crld", "train/crld_within_view", "train/crld_cross_view", "train/crld_weak_kept"):
        assert math.isfinite(metrics[key]), key
    assert metrics["train/loss"] == pytest.approx(metrics["train/ce"] + metrics["train/crld"], rel=1e-5)
    # A kept rate is a fraction of the 2 steps x 32 samples: a whole number of 64ths.
    for key in ("train/crld_weak_kept", "train/crld_strong_kept"):
        assert metrics[key] * 64 == pytest.approx(round(metrics[key] * 64), abs=1e-4), key
