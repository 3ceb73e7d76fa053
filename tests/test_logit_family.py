"""The logit family CRLD composes with: DKD, logit standardisation (LS) and MLKD — each loss
against hand values and an independent float64 restatement, the methods, the warm-up through a
resumed run, and the composition crld+dkd."""

import json
import math

import numpy as np
import pytest
import torch
from helpers import QUICK_RUN
from test_crld import (  # the CRLD tests' tiny distiller and two-view batch
    make,
    two_view_batch,
)

from kdistill.config.loading import load_config
from kdistill.engine import train_run
from kdistill.errors import KdistillError
from kdistill.losses import (
    dkd_loss,
    kd_loss,
    kd_per_sample,
    mlkd_loss,
    standardize_logits,
)
from kdistill.methods import method_class
from kdistill.methods.base import Distiller
from kdistill.methods.dkd import DKD
from kdistill.report.published import published_top1


def random_logits(rows: int = 6, classes: int = 7, seed: int = 0, scale: float = 3.0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    student = scale * torch.randn(rows, classes, generator=generator, dtype=torch.float64)
    teacher = scale * torch.randn(rows, classes, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (rows,), generator=generator)
    return student, teacher, labels


# --- restatements, written from the papers' definitions (not from the code under test) --------


def z_score(z: torch.Tensor) -> torch.Tensor:
    centred = z - z.sum(dim=1, keepdim=True) / z.shape[1]
    unbiased_std = (centred.pow(2).sum(dim=1, keepdim=True) / (z.shape[1] - 1)).sqrt()
    return centred / (unbiased_std + 1e-7)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row."""
    return (p * (p.log() - q.log())).sum(dim=1)


def dkd_restated(s, t, labels, alpha, beta, temperature, standardize):
    if standardize:
        s, t = z_score(s), z_score(t)
    p_s, p_t = torch.softmax(s / temperature, dim=1), torch.softmax(t / temperature, dim=1)
    tckd = nckd = 0.0
    for i, label in enumerate(labels.tolist()):
        b_s = torch.stack([p_s[i, label], 1 - p_s[i, label]])[None]
        b_t = torch.stack([p_t[i, label], 1 - p_t[i, label]])[None]
        others = [c for c in range(s.shape[1]) if c != label]
        q_s, q_t = p_s[i, others], p_t[i, others]
        tckd = tckd + kl(b_t, b_s)[0]
        nckd = nckd + kl((q_t / q_t.sum())[None], (q_s / q_s.sum())[None])[0]
    scale = temperature**2 / len(labels)
    return alpha * tckd * scale + beta * nckd * scale


# --- logit standardisation ------------------------------------------------------------------


def test_standardize_logits_by_hand():
    # row 1: mean 2, unbiased std 1; row 2: mean 0, unbiased std sqrt(8 / 2) = 2
    z = torch.tensor([[1.0, 2.0, 3.0], [-2.0, 0.0, 2.0]])
    expected = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0]]) / torch.tensor([[1 + 1e-7], [2 + 1e-7]])
    torch.testing.assert_close(standardize_logits(z), expected)


def test_ls_kd_by_hand():
    # Teacher [1, 2, 3] -> [-1, 0, 1]; student [0, 0, 3]: mean 1, unbiased std sqrt(3)
    # -> [-1, -1, 2] / sqrt(3) (both up to the 1e-7 of the denominator).
    s, t = torch.tensor([[0.0, 0.0, 3.0]]), torch.tensor([[1.0, 2.0, 3.0]])
    temperature = 2.0
    p_t = torch.softmax(torch.tensor([-1.0, 0.0, 1.0]) / temperature, dim=0)
    p_s = torch.softmax(torch.tensor([-1.0, -1.0, 2.0]) / math.sqrt(3) / temperature, dim=0)
    expected = temperature**2 * (p_t * (p_t / p_s).log()).sum()
    torch.testing.assert_close(kd_loss(s, t, temperature, standardize=True), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_ls_losses_ignore_a_per_sample_shift_and_positive_scale(side):
    s, t, labels = random_logits()
    generator = torch.Generator().manual_seed(1)
    shift = 10 * torch.randn(s.shape[0], 1, generator=generator, dtype=torch.float64)
    scale = 0.2 + 5 * torch.rand(s.shape[0], 1, generator=generator, dtype=torch.float64)
    moved = (s, scale * t + shift) if side == "teacher" else (scale * s + shift, t)
    for standardize in (True, False):
        kd_pair = kd_loss(*moved, 3.0, standardize), kd_loss(s, t, 3.0, standardize)
        dkd_pair = [dkd_loss(*logits, labels, 1.0, 8.0, 3.0, standardize)["total"] for logits in (moved, (s, t))]
        if standardize:
            torch.testing.assert_close(*kd_pair, rtol=1e-6, atol=1e-9)
            torch.testing.assert_close(*dkd_pair, rtol=1e-6, atol=1e-9)
        else:  # without LS the loss does depend on the logits' scale
            assert not torch.allclose(*kd_pair) and not torch.allclose(*dkd_pair)


# --- DKD ------------------------------------------------------------------------------------


def test_dkd_by_hand():
    # One sample, T = 1, label 0. Student uniform over 3 classes; teacher p = (1/2, 3/8, 1/8).
    # TCKD = KL((1/2, 1/2) || (1/3, 2/3)) = 0.5 ln 1.125; NCKD = KL((3/4, 1/4) || (1/2, 1/2)).
    s = torch.zeros(1, 3)
    t = torch.tensor([[0.5, 0.375, 0.125]]).log()
    parts = dkd_loss(s, t, torch.tensor([0]), alpha=1.0, beta=8.0, temperature=1.0)
    tckd, nckd = 0.5 * math.log(1.125), 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert parts["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert parts["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    assert parts["total"].item() == pytest.approx(tckd + 8 * nckd, rel=1e-5)


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize(("alpha", "beta", "temperature"), [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (9.0, 72.0, 2.0)])
def test_dkd_against_a_float64_restatement_with_gradients(standardize, alpha, beta, temperature):
    s, t, labels = random_logits()
    s = s.requires_grad_()
    ours = dkd_loss(s, t, labels, alpha, beta, temperature, standardize)["total"]
    theirs = dkd_restated(s, t, labels, alpha, beta, temperature, standardize)
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(ours, s)[0], torch.autograd.grad(theirs, s)[0],
                               rtol=1e-7, atol=1e-10)


def test_dkd_stays_finite_where_the_label_probability_underflows():
    # p_label = e^-400: 0 in float32, where the reference's log(sum p) is -inf; float64 holds it.
    s, t, labels = torch.tensor([[0.0, 400.0, 1.0]]), torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([0])
    ours = dkd_loss(s, t, labels, temperature=1.0)["total"]
    torch.testing.assert_close(ours.double(), dkd_restated(s.double(), t.double(), labels, 1.0, 8.0, 1.0, False))


def test_dkd_identity_kd_is_tckd_plus_weighted_nckd_per_sample():
    s, t, labels = random_logits(rows=5)
    temperature = 4.0
    p_t = torch.softmax(t / temperature, dim=1)
    kd = kd_per_sample(s, t, temperature)
    for i in range(len(labels)):  # a batch of one: the sums over the batch are the sample's terms
        parts = dkd_loss(s[i:i + 1], t[i:i + 1], labels[i:i + 1], temperature=temperature)
        decomposed = parts["tckd"] + (1 - p_t[i, labels[i]]) * parts["nckd"]
        torch.testing.assert_close(kd[i], decomposed, rtol=1e-9, atol=1e-12)
    # Over a batch the identity holds only per sample: the batch's NCKD is not weighted per sample.
    parts = dkd_loss(s, t, labels, temperature=temperature)
    batch_weight = (1 - p_t[torch.arange(len(labels)), labels]).mean()
    assert not torch.allclose(kd.mean(), parts["tckd"] + batch_weight * parts["nckd"])


@pytest.mark.parametrize("loss", ["dkd", "mlkd"])
def test_no_gradient_reaches_the_teacher_logits(loss):
    s, t, labels = random_logits()
    s, t = s.requires_grad_(), t.clone().requires_grad_()
    if loss == "dkd":
        total = dkd_loss(s, t, labels, standardize=True)["total"]
    else:
        parts = mlkd_loss(s, s * 0.5, t, t * 0.7, labels, standardize=True)
        total = parts["instance"] + parts["class_level"] + parts["batch_level"]
    total.backward()
    assert t.grad is None and s.grad.abs().sum() > 0


# --- MLKD -----------------------------------------------------------------------------------


def mlkd_restated(s_weak, s_strong, t_weak, t_strong, temperatures, standardize):
    """The reference's arithmetic term by term (numpy percentile masks, explicit loops)."""
    confidence = torch.softmax(t_weak, dim=1)
    top = confidence.max(dim=1).values
    kept_samples = float(np.mean(top.numpy() <= np.percentile(top.numpy(), 50)))
    class_sum = confidence.sum(dim=0)
    kept_classes = float(np.mean(class_sum.numpy() <= np.percentile(class_sum.numpy(), 50)))

    def kd(s, t, temperature):
        if standardize:
            s, t = z_score(s), z_score(t)
        return temperature**2 * kl(torch.softmax(t / temperature, dim=1), torch.softmax(s / temperature, dim=1)).mean()

    instance = class_level = batch_level = 0.0
    batch, classes = s_weak.shape
    for temperature in temperatures:
        instance = instance + kept_samples * kd(s_weak, t_weak, temperature) + kd(s_strong, t_strong, temperature)
        p_s, p_t = torch.softmax(s_weak / temperature, dim=1), torch.softmax(t_weak / temperature, dim=1)
        class_gap = sum((p_t[:, a] @ p_t[:, b] - p_s[:, a] @ p_s[:, b]) ** 2
                        for a in range(classes) for b in range(classes))
        batch_gap = sum((p_t[i] @ p_t[j] - p_s[i] @ p_s[j]) ** 2 for i in range(batch) for j in range(batch))
        class_level = class_level + kept_classes * class_gap / classes
        batch_level = batch_level + kept_samples * batch_gap / batch
    return instance, class_level, batch_level, kept_samples, kept_classes


@pytest.mark.parametrize("standardize", [False, True])
@pytest.mark.parametrize("rows", [5, 6])  # odd and even batches: the median interpolates on even ones
def test_mlkd_against_an_independent_restatement(standardize, rows):
    s_weak, t_weak, labels = random_logits(rows=rows, classes=5, seed=2)
    s_strong, t_strong, _ = random_logits(rows=rows, classes=5, seed=3)
    temperatures = (4.0, 3.0, 5.0, 2.0, 6.0)
    parts = mlkd_loss(s_weak, s_strong, t_weak, t_strong, labels, temperatures, standardize)
    instance, class_level, batch_level, kept_samples, kept_classes = mlkd_restated(
        s_weak, s_strong, t_weak, t_strong, temperatures, standardize)
    torch.testing.assert_close(parts["instance"], instance, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(parts["class_level"], class_level, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(parts["batch_level"], batch_level, rtol=1e-9, atol=1e-12)
    assert parts["sample_mask"].float().mean().item() == pytest.approx(kept_samples)
    assert parts["class_mask"].float().mean().item() == pytest.approx(kept_classes)
    ce = torch.nn.functional.cross_entropy(s_weak, labels) + torch.nn.functional.cross_entropy(s_strong, labels)
    torch.testing.assert_close(parts["ce"], ce)


# --- the methods ----------------------------------------------------------------------------


def logits_of(distiller: Distiller, batch) -> list[torch.Tensor]:
    """Student and teacher logits of the weak, then the strong view (eval mode: as in forward)."""
    with torch.no_grad():
        return [model(batch[view]) for model in (distiller.student, distiller.teacher)
                for view in ("image", "image_strong")]


def test_dkd_warmup_factor_and_total():
    distiller = make("dkd").eval()
    batch = two_view_batch()
    s_weak, _, t_weak, _ = logits_of(distiller, batch)
    dkd = dkd_loss(s_weak, t_weak, batch["label"])["total"]
    ce = torch.nn.functional.cross_entropy(s_weak, batch["label"])
    for epoch, factor in [(1, 1 / 20), (10, 0.5), (19, 19 / 20), (20, 1.0), (240, 1.0)]:
        distiller.on_epoch_start(epoch, 240)
        output = distiller(batch)
        assert output.weights["dkd"] == pytest.approx(factor)
        assert output.extras["dkd_warmup"].item() == pytest.approx(factor)
        torch.testing.assert_close(output.terms["dkd"], dkd)
        torch.testing.assert_close(output.total, ce + factor * dkd)
    assert make("dkd", warmup=0).loss_weight("dkd") == 1.0


def test_dkd_table_defaults_and_the_ls_variants():
    options = make("dkd").options
    assert (options.alpha, options.beta, options.temperature, options.warmup, options.logit_standardize) == \
        (1.0, 8.0, 4.0, 20, False)
    dkd_ls = make("dkd+ls")
    assert (dkd_ls.options.alpha, dkd_ls.options.beta, dkd_ls.options.temperature) == (9.0, 72.0, 2.0)
    assert dkd_ls.options.logit_standardize and dkd_ls.weights["w_ce"] == 1.0
    kd_ls = make("kd+ls")
    assert kd_ls.options.logit_standardize and kd_ls.options.temperature == 2.0
    assert (kd_ls.weights["w_ce"], kd_ls.weights["w_kd"]) == (0.1, 9.0)
    assert make("kd+ls", logit_standardize=False).options.logit_standardize is False


@pytest.mark.parametrize("name", ["kd", "dcd+kd", "kd+ls"])
def test_logit_standardize_option_reaches_the_kd_term(name):
    batch = two_view_batch()
    distiller = make(name, logit_standardize=True).eval()
    s_weak, _, t_weak, _ = logits_of(distiller, batch)
    expected = kd_loss(s_weak, t_weak, distiller.options.temperature, standardize=True)
    torch.testing.assert_close(distiller(batch).terms["kd"], expected)
    assert not torch.allclose(expected, kd_loss(s_weak, t_weak, distiller.options.temperature))


def test_logit_standardize_option_reaches_crld_and_its_compositions():
    from kdistill.losses import crld_loss

    batch = two_view_batch()
    for name in ("crld", "crld+dkd"):
        distiller = make(name, logit_standardize=True, weak_threshold=0.0, strong_threshold=0.0).eval()
        parts = crld_loss(*logits_of(distiller, batch), batch["label"], weak_threshold=0.0, strong_threshold=0.0,
                          standardize=True)
        expected = 2.0 * parts["within_view"] + 0.5 * parts["cross_view"]
        torch.testing.assert_close(distiller(batch).terms["crld"], expected)


def test_logit_standardize_on_a_method_without_logit_terms_is_refused():
    with pytest.raises(KdistillError, match="logit_standardize"):
        make("at", logit_standardize=True)
    make("at+kd", logit_standardize=True)  # its KD term takes it


def test_mlkd_method_total_and_terms():
    distiller = make("mlkd").eval()
    assert type(distiller).needs_strong_view and distiller.weights == {"w_ce": 0.1, "w_kd": 0.0, "w_method": 0.9}
    batch = two_view_batch()
    output = distiller(batch)
    parts = mlkd_loss(*logits_of(distiller, batch)[:1], *logits_of(distiller, batch)[1:], batch["label"])
    expected = 0.1 * parts["ce"] + 0.9 * (parts["instance"] + parts["class_level"] + parts["batch_level"])
    torch.testing.assert_close(output.total, expected)
    assert set(output.terms) == {"ce", "mlkd_instance", "mlkd_class", "mlkd_batch"}
    assert output.extras["mlkd_samples_kept"].item() == 0.5  # 8 samples, median between the middle two


def test_crld_plus_dkd_adds_the_dkd_term_of_the_weak_view():
    combined = make("crld+dkd").eval()
    assert issubclass(method_class("crld+dkd"), DKD) and combined.options.beta == 8.0
    batch = two_view_batch()
    output = combined(batch)
    assert set(output.terms) == {"ce", "crld", "dkd"} and output.weights["dkd"] == pytest.approx(1 / 20)
    s_weak, _, t_weak, _ = logits_of(combined, batch)
    torch.testing.assert_close(output.terms["dkd"], dkd_loss(s_weak, t_weak, batch["label"])["total"])


@pytest.mark.parametrize("name", ["crld+dkd", "dkd", "mlkd"])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(name):
    options = {"weak_threshold": 0.0, "strong_threshold": 0.0} if name.startswith("crld") else {}
    distiller = make(name, **options).train()
    distiller.on_epoch_start(20, 240)  # past the warm-up: the DKD term at full weight
    batch = two_view_batch(16)
    optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    before = distiller(batch).total
    optimizer.zero_grad()
    before.backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    optimizer.step()
    assert distiller(batch).total.item() < before.item()


# --- the warm-up through the engine, across a resume ------------------------------------------


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    train_run(load_config(None, QUICK_RUN + ["epochs=1", "steps_per_epoch=2", f"out={out}"]))
    return out


class Killed(Exception):
    pass


def test_warmup_follows_the_epoch_across_a_resume(teacher_run, tmp_path, monkeypatch):
    out = tmp_path / "dkd"
    overrides = QUICK_RUN + ["method.name=dkd", "method.warmup=4", "epochs=3", "steps_per_epoch=2",
                             "teacher=resnet8", f"teacher_checkpoint={teacher_run}", f"out={out}"]
    original = DKD.on_epoch_start

    def killed_before_epoch_3(self, epoch, epochs):
        if epoch == 3:  # epoch 2's resume state is saved: a kill here is a kill between epochs
            raise Killed
        original(self, epoch, epochs)

    monkeypatch.setattr(DKD, "on_epoch_start", killed_before_epoch_3)
    with pytest.raises(Killed):
        train_run(load_config(None, overrides))
    monkeypatch.undo()
    results = train_run(load_config(None, overrides + ["resume=true"]))
    assert results.method == "dkd"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["train/dkd_warmup"] for line in lines] == pytest.approx([0.25, 0.5, 0.75])


@pytest.mark.parametrize("name", ["mlkd", "crld+dkd", "kd+ls"])
def test_short_run_through_the_engine(teacher_run, tmp_path, name):
    out = tmp_path / "run"
    overrides = QUICK_RUN + [f"method.name={name}", "epochs=1", "steps_per_epoch=2", "teacher=resnet8",
                             f"teacher_checkpoint={teacher_run}", f"out={out}"]
    assert train_run(load_config(None, overrides)).method == name
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    terms = {"mlkd": ["ce", "mlkd_instance", "mlkd_class", "mlkd_batch"], "crld+dkd": ["ce", "crld", "dkd"],
             "kd+ls": ["ce", "kd"]}[name]
    assert all(math.isfinite(metrics[f"train/{term}"]) for term in terms)


# --- published numbers beside measured ones ---------------------------------------------------


def test_published_values_and_their_sources():
    assert published_top1("dkd", ("resnet32x4", "resnet8x4")) == (76.32, "DKD")
    assert published_top1("dkd", ("resnet110", "resnet20")) == (71.06, "LS")
    assert published_top1("icd+kd", ("wrn_40_2", "ShuffleV1")) == published_top1("dcd+kd", ("wrn_40_2", "ShuffleV1")) \
        == (76.39, "ICD")
    assert published_top1("mlkd", ("vgg13", "MobileNetV2")) == (70.57, "MLKD")
    assert published_top1("kd+ls", ("ResNet50", "vgg8")) is None  # the LS paper has no such column
    assert published_top1("kd", ("wrn_40_2", "wrn_16_2"), dataset="cifar10") is None


def test_report_published_through_the_cli(tmp_path, run_cli):
    from test_report import write_run

    runs = tmp_path / "runs"
    write_run(runs / "teacher", "vanilla", "wrn_40_2", None, 75.00)
    write_run(runs / "student", "vanilla", "wrn_16_2", None, 73.00)
    write_run(runs / "kd_s0", "kd", "wrn_16_2", "wrn_40_2", 74.82, seed=0)
    write_run(runs / "kd_s1", "kd", "wrn_16_2", "wrn_40_2", 75.02, seed=1)
    write_run(runs / "dkd", "dkd", "wrn_16_2", "wrn_40_2", 76.00)
    write_run(runs / "crld", "crld", "wrn_16_2", "wrn_40_2", 76.50)  # no published CRLD value here
    result = run_cli("report", str(runs), "--published", "--out", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    assert "| kd | 74.92 / 74.92 [ICD] (+0.00) |" in result.stdout
    assert "| dkd | 76.00 / 76.23 [DKD] (-0.23) |" in result.stdout
    assert "| teacher | 75.00 / 75.61 [ICD] (-0.61) |" in result.stdout
    assert "| crld | " not in result.stdout.split("measured / published")[1]
    assert "- [DKD] Zhao et al., CVPR 2022" in result.stdout and "[MLKD]" not in result.stdout
    assert "[DKD]" in (tmp_path / "report" / "table.md").read_text()
    plain = run_cli("report", str(runs), "--out", str(tmp_path / "plain"))
    assert plain.returncode == 0 and "measured / published" not in plain.stdout


def test_kdistill_list_shows_the_logit_family(run_cli):
    result = run_cli("list")
    methods = next(line for line in result.stdout.splitlines() if line.startswith("methods:"))
    assert {"dkd", "dkd+ls", "kd+ls", "mlkd", "crld+dkd"} <= set(methods.removeprefix("methods: ").split(", "))
