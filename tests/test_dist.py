"""DIST (Huang et al., NeurIPS 2022): the loss against an independent restatement (float32 and
float64), the method, its compositions (logit standardisation, CRLD, KD), a training step."""

import math

import pytest
import torch
from test_crld import make, two_view_batch

from kdistill.losses import crld_loss, dist_loss, kd_loss, standardize_logits
from kdistill.methods import method_class
from kdistill.methods.dist import DIST
from kdistill.report.published import published_top1


def random_logits(rows: int, classes: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(rows, classes, generator=generator, dtype=torch.float64).to(dtype),
            3 * torch.randn(rows, classes, generator=generator, dtype=torch.float64).to(dtype))


def pearson(xs: list[float], ys: list[float], eps: float = 1e-8) -> float:
    """The reference's correlation of two vectors, in Python floats: centred, then
    sum(x y) / (|x| |y| + eps)."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    cx, cy = [x - mx for x in xs], [y - my for y in ys]
    dot = sum(a * b for a, b in zip(cx, cy, strict=True))
    return dot / (math.sqrt(sum(a * a for a in cx)) * math.sqrt(sum(b * b for b in cy)) + eps)


def dist_restated(s: torch.Tensor, t: torch.Tensor, beta: float, gamma: float, temperature: float) -> float:
    """The paper's formula sample by sample and class by class, in Python floats."""
    def softmax(row):
        exps = [math.exp(v / temperature) for v in row]
        return [e / sum(exps) for e in exps]

    p_s, p_t = [softmax(row) for row in s.double().tolist()], [softmax(row) for row in t.double().tolist()]
    rows, classes = len(p_s), len(p_s[0])
    inter = 1 - sum(pearson(p_s[i], p_t[i]) for i in range(rows)) / rows
    intra = 1 - sum(pearson([p_s[i][c] for i in range(rows)], [p_t[i][c] for i in range(rows)])
                    for c in range(classes)) / classes
    return temperature**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("beta", "gamma", "temperature", "rows", "classes"),
                         [(1.0, 1.0, 1.0, 6, 7), (2.0, 2.0, 4.0, 8, 10), (0.5, 3.0, 2.0, 5, 100)])
def test_dist_loss_against_an_independent_restatement(dtype, beta, gamma, temperature, rows, classes):
    s, t = random_logits(rows, classes, dtype)
    ours = dist_loss(s, t, beta, gamma, temperature)
    assert ours.dtype == dtype
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    assert ours.item() == pytest.approx(dist_restated(s, t, beta, gamma, temperature), rel=tolerance, abs=tolerance)


def test_dist_loss_is_zero_for_equal_predictions_and_ignores_a_per_sample_logit_shift():
    s, t = random_logits(6, 7, torch.float64)
    shifted = t + torch.linspace(-5, 5, 6, dtype=torch.float64)[:, None]  # softmax ignores a per-row shift
    # Zero up to the reference's eps: 1e-8 against squared norms of centred probabilities
    # (~1e-2), times T^2 (beta + gamma).
    assert dist_loss(shifted, t, 2.0, 2.0, 4.0).item() == pytest.approx(0.0, abs=1e-4)
    assert dist_loss(s, t, 2.0, 2.0, 4.0).item() > 0.1
    # Only the intra-class term with beta = 0, only the inter-class one with gamma = 0; they add up.
    inter, intra = dist_loss(s, t, 1.0, 0.0, 4.0), dist_loss(s, t, 0.0, 1.0, 4.0)
    torch.testing.assert_close(dist_loss(s, t, 2.0, 3.0, 4.0), 2 * inter + 3 * intra)


def test_dist_loss_sends_no_gradient_to_the_teacher_and_computes_half_logits_in_float32():
    s, t = random_logits(4, 5, torch.float64)
    s, t = s.requires_grad_(), t.clone().requires_grad_()
    dist_loss(s, t, 2.0, 2.0, 4.0).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
    half = dist_loss(s.detach().half(), t.detach().half(), 2.0, 2.0, 4.0)
    assert half.dtype == torch.float32


def test_dist_loss_takes_a_per_sample_temperature():
    s, t = random_logits(5, 6, torch.float64)
    same = torch.full((5, 1), 3.0, dtype=torch.float64)
    torch.testing.assert_close(dist_loss(s, t, 2.0, 2.0, same), dist_loss(s, t, 2.0, 2.0, 3.0))
    varied = torch.linspace(1.0, 5.0, 5, dtype=torch.float64)[:, None]
    p_s, p_t = torch.softmax(s / varied, dim=1), torch.softmax(t / varied, dim=1)
    # inter/intra of the per-sample softened predictions, times the batch mean of T_i^2
    inter = 1 - sum(pearson(a.tolist(), b.tolist()) for a, b in zip(p_s, p_t, strict=True)) / 5
    intra = 1 - sum(pearson(a.tolist(), b.tolist()) for a, b in zip(p_s.T, p_t.T, strict=True)) / 6
    expected = varied.square().mean().item() * (2 * inter + 2 * intra)
    assert dist_loss(s, t, 2.0, 2.0, varied).item() == pytest.approx(expected, rel=1e-12)


# --- the method -------------------------------------------------------------------------------


def logits_of(distiller, batch):
    with torch.no_grad():
        return distiller.student(batch["image"]), distiller.teacher(batch["image"])


def test_dist_method_total_and_defaults():
    distiller = make("dist").eval()
    options = distiller.options
    assert (options.beta, options.gamma, options.temperature) == (2.0, 2.0, 4.0)
    assert distiller.weights == {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}
    batch = two_view_batch()
    s, t = logits_of(distiller, batch)
    output = distiller(batch)
    assert set(output.terms) == {"ce", "dist"}
    expected = torch.nn.functional.cross_entropy(s, batch["label"]) + dist_loss(s, t, 2.0, 2.0, 4.0)
    torch.testing.assert_close(output.total, expected)


def test_dist_with_logit_standardisation_kd_and_crld():
    batch = two_view_batch()
    distiller = make("dist", logit_standardize=True).eval()
    s, t = logits_of(distiller, batch)
    expected = dist_loss(standardize_logits(s), standardize_logits(t), 2.0, 2.0, 4.0)
    torch.testing.assert_close(distiller(batch).terms["dist"], expected)
    assert not torch.allclose(expected, dist_loss(s, t, 2.0, 2.0, 4.0))
    with_kd = make("dist+kd").eval()
    assert with_kd.weights["w_kd"] == 1.0 and issubclass(method_class("dist+kd"), DIST)
    torch.testing.assert_close(with_kd(batch).terms["kd"], kd_loss(s, t, 4.0))
    crld = make("crld+dist", weak_threshold=0.0, strong_threshold=0.0).eval()
    assert issubclass(method_class("crld+dist"), DIST) and method_class("crld+dist").teacher_reads == DIST.teacher_reads
    output = crld(batch)
    assert set(output.terms) == {"ce", "crld", "dist"}
    torch.testing.assert_close(output.terms["dist"], dist_loss(s, t, 2.0, 2.0, 4.0))
    with torch.no_grad():
        strong = crld.student(batch["image_strong"]), crld.teacher(batch["image_strong"])
    parts = crld_loss(s, strong[0], t, strong[1], batch["label"], weak_threshold=0.0, strong_threshold=0.0)
    torch.testing.assert_close(output.terms["crld"], 2.0 * parts["within_view"] + 0.5 * parts["cross_view"])


@pytest.mark.parametrize("name", ["dist", "crld+dist"])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(name):
    distiller = make(name).train()
    batch = two_view_batch(16)
    optimizer = torch.optim.SGD([p for p in distiller.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    before = distiller(batch)
    optimizer.zero_grad()
    before.total.backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    optimizer.step()
    after = distiller(batch)
    assert after.total.item() < before.total.item()
    assert after.terms["dist"].item() < before.terms["dist"].item()


def test_published_dist_values_and_kdistill_list(run_cli):
    assert published_top1("dist", ("resnet32x4", "resnet8x4")) == (76.31, "DIST")
    assert published_top1("dist", ("wrn_40_2", "wrn_16_2")) is None  # not among its authors' pairs
    methods = next(line for line in run_cli("list").stdout.splitlines() if line.startswith("methods:"))
    assert {"dist", "dist+kd", "crld+dist"} <= set(methods.removeprefix("methods: ").split(", "))


def test_dist_recipes_carry_the_references_settings():
    from test_recipes import CONFIGS

    from kdistill.config.loading import load_config

    cifar = load_config(str(CONFIGS / "cifar100/dist/resnet32x4_resnet8x4.yaml")).method.options
    assert (cifar.beta, cifar.gamma, cifar.temperature, cifar.w_ce, cifar.w_method) == (2.0, 2.0, 4.0, 1.0, 1.0)
    imagenet = load_config(str(CONFIGS / "imagenet/dist/resnet34_resnet18.yaml"))
    assert (imagenet.method.options.beta, imagenet.method.options.temperature) == (2.0, 1.0)
    assert (imagenet.optim.lr, imagenet.epochs, imagenet.data.batch_size) == (0.1, 100, 256)
