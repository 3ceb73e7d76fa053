import math

import pytest
import torch

from kdistill.losses import dcd_loss
from kdistill.methods import MethodContext, build_distiller
from kdistill.models import create_model

CONTEXT = MethodContext((1, 28, 28), num_classes=10)
THREE_BY_THREE_TEACHER = torch.tensor([[1.0, 1, 0], [0, 1, 1], [1, 0, 1]])


def test_golden_identity_embeddings():
    parts = dcd_loss(torch.eye(2), torch.eye(2), torch.tensor(1.0))
    assert parts["contrastive"].item() == pytest.approx(math.log(1 + math.exp(-math.e)), abs=1e-6)
    assert parts["contrastive"].item() == pytest.approx(0.0639021, abs=1e-6)
    assert parts["consistency"].item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("bias", [0.0, 5.0])
def test_golden_three_by_three(bias):
    parts = dcd_loss(torch.eye(3), THREE_BY_THREE_TEACHER, torch.tensor(1.0), bias=bias)
    assert parts["contrastive"].item() == pytest.approx(0.763744, abs=1e-6)
    assert parts["consistency"].item() == pytest.approx(0.764533, abs=1e-6)
    assert parts["total"].item() == pytest.approx(1.146011, abs=1e-6)


def independent_dcd(z_s, z_t, scale, bias):
    """The spec's formulas, element by element, in float64."""
    z_s = z_s.double() / z_s.double().norm(dim=1, keepdim=True)
    z_t = z_t.double() / z_t.double().norm(dim=1, keepdim=True)
    n = z_s.shape[0]
    logits = [[scale * float(z_s[i] @ z_t[j]) + bias for j in range(n)] for i in range(n)]
    row = [[math.exp(logits[i][j]) / sum(math.exp(v) for v in logits[i]) for j in range(n)] for i in range(n)]
    col = [[math.exp(logits[i][j]) / sum(math.exp(logits[k][j]) for k in range(n)) for j in range(n)] for i in range(n)]
    q = [[col[j][i] for j in range(n)] for i in range(n)]  # Q = softmax(logits, dim=0).T
    contrastive = -sum(math.log(row[i][i]) for i in range(n)) / n
    consistency = sum(q[i][j] * (math.log(q[i][j]) - math.log(row[i][j])) for i in range(n) for j in range(n)) / n
    sigmoid = sum(-math.log(1 / (1 + math.exp(-(1 if i == j else -1) * logits[i][j])))
                  for i in range(n) for j in range(n)) / n
    return contrastive, consistency, sigmoid


def test_random_embeddings_against_the_formula_and_both_forms():
    generator = torch.Generator().manual_seed(3)
    z_s, z_t = torch.randn(5, 4, generator=generator), torch.randn(5, 4, generator=generator)
    log_scale, bias = torch.tensor(1.3), 0.7
    contrastive, consistency, sigmoid = independent_dcd(z_s, z_t, math.exp(1.3), bias)
    parts = dcd_loss(z_s, z_t, log_scale, bias)
    assert parts["contrastive"].item() == pytest.approx(contrastive, rel=1e-5)
    assert parts["consistency"].item() == pytest.approx(consistency, rel=1e-5)
    assert dcd_loss(z_s, z_t, log_scale, bias, form="sigmoid")["contrastive"].item() == pytest.approx(sigmoid, rel=1e-5)
    capped = dcd_loss(z_s, z_t, torch.tensor(5.0), bias)  # exp(5) > 10: the clamp applies
    assert capped["contrastive"].item() == pytest.approx(independent_dcd(z_s, z_t, 10.0, bias)[0], rel=1e-5)


def test_bias_gradient_is_zero_for_softmax_and_not_for_sigmoid():
    generator = torch.Generator().manual_seed(4)
    z_s, z_t = torch.randn(6, 8, generator=generator), torch.randn(6, 8, generator=generator)
    for form, expect_zero in (("softmax", True), ("sigmoid", False)):
        bias = torch.tensor(0.5, requires_grad=True)
        dcd_loss(z_s, z_t, torch.tensor(1.0), bias, form=form)["total"].backward()
        assert (abs(bias.grad.item()) < 1e-6) == expect_zero, (form, bias.grad)


def make_dcd(**options):
    torch.manual_seed(0)
    student = create_model("resnet8", num_classes=10, in_chans=1)
    teacher = create_model("resnet14", num_classes=10, in_chans=1)
    return build_distiller({"name": "dcd", **options}, student, teacher, CONTEXT)


def a_batch(n=6):
    generator = torch.Generator().manual_seed(5)
    return {"image": torch.randn(n, 1, 28, 28, generator=generator), "label": torch.arange(n) % 10,
            "index": torch.arange(n)}


def test_method_gradients_reach_student_projections_and_scale_not_teacher():
    distiller = make_dcd()
    output = distiller(a_batch())
    assert set(output.terms) == {"ce", "dcd"}
    output.terms["dcd"].backward()
    for module in (distiller.embed_s, distiller.embed_t, distiller.student):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert distiller.log_scale.grad.abs() > 0
    assert all(p.grad is None for p in distiller.teacher.parameters())
    assert distiller.embed_s.out_features == 128 and distiller.embed_t.in_features == 64  # resnet14 pooled


def test_scale_never_exceeds_its_clamp():
    log_scale = torch.nn.Parameter(torch.tensor(1.0))
    optimizer = torch.optim.SGD([log_scale], lr=1.0)
    for _ in range(300):  # aligned pairs: a larger scale always lowers the loss
        optimizer.zero_grad()
        dcd_loss(torch.eye(4), torch.eye(4), log_scale)["total"].backward()
        optimizer.step()
    assert log_scale.item() > math.log(10.0)  # pushed past the clamp...
    value = dcd_loss(torch.eye(4), torch.eye(4), log_scale)["total"].item()
    assert value == pytest.approx(dcd_loss(torch.eye(4), torch.eye(4), None, scale=10.0)["total"].item(), rel=1e-6)


def test_fixed_scale_and_table_weights_and_alias():
    fixed = make_dcd(learn_scale=False)
    assert not fixed.log_scale.requires_grad
    plain = make_dcd()
    assert (plain.loss_weight("ce"), plain.loss_weight("kd"), plain.loss_weight("dcd")) == (1.0, 0.0, 1.0)
    student, teacher = create_model("resnet8", 10, 1), create_model("resnet8", 10, 1)
    with_kd = build_distiller({"name": "dcd+kd"}, student, teacher, CONTEXT)
    assert set(with_kd(a_batch()).terms) == {"ce", "kd", "dcd"} and with_kd.loss_weight("kd") == 1.0
    alias = build_distiller({"name": "icd"}, student, teacher, CONTEXT)
    assert type(alias).__name__ == "DCD"


def test_dcd_lowers_its_loss_on_a_fixed_batch():
    distiller = make_dcd()
    batch = a_batch(8)
    optimizer = torch.optim.Adam([p for p in distiller.parameters() if p.requires_grad], lr=0.003)
    losses = []
    for _ in range(20):
        loss = distiller(batch).terms["dcd"]
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
