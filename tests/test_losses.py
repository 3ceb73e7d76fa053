import math

import pytest
import torch

from kdistill.losses import kd_loss


def test_kd_loss_hand_computed_temperature_1():
    # softmax([0,1]) = [a, b] with a = 1/(1+e); KL(p_t || p_s) with p_s its mirror = (b - a) * ln(b / a) = (b - a) * 1.
    a, b = 1 / (1 + math.e), math.e / (1 + math.e)
    student = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    teacher = torch.tensor([[0.0, 1.0], [5.0, 5.0]])  # second sample: both uniform, KL 0
    expected = (b - a) * 1.0 / 2  # batch mean over 2 samples
    assert kd_loss(student, teacher, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_hand_computed_temperature_4():
    # logits/T = [0.25, 0] vs [0, 0.25]: KL = (sigmoid(.25) - sigmoid(-.25)) * 0.25, times T^2 = 16.
    sig = 1 / (1 + math.exp(-0.25))
    expected = 16 * (sig - (1 - sig)) * 0.25
    value = kd_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), temperature=4.0)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.497412, abs=1e-6)


def test_kd_loss_matches_direct_formula_and_zero_on_equal_logits():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(8, 10, generator=generator, dtype=torch.float64)
    teacher = torch.randn(8, 10, generator=generator, dtype=torch.float64)
    temperature = 3.0
    p_t = torch.softmax(teacher / temperature, 1)
    p_s = torch.softmax(student / temperature, 1)
    direct = temperature**2 * (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    assert kd_loss(student, teacher, temperature).item() == pytest.approx(direct.item(), rel=1e-5)
    assert kd_loss(teacher, teacher, temperature).item() == pytest.approx(0.0, abs=1e-6)


def test_kd_loss_gradient_reaches_student_only():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5)
    kd_loss(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    # d/ds of T^2 KL at temperature T is T * (p_s - p_t) / B.
    temperature = 4.0
    expected = temperature * (torch.softmax(student / temperature, 1) - torch.softmax(teacher / temperature, 1)) / 4
    torch.testing.assert_close(student.grad, expected.detach(), rtol=1e-5, atol=1e-6)
