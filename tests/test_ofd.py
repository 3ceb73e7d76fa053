"""OFD: the partial L2 and the margins against entry-by-entry restatements (float32 and float64),
the batch norms before each stage's ReLU in every zoo family, the level weights, the loss going down."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import term_over_steps

from kdistill.errors import KdistillError
from kdistill.losses import ofd_loss, ofd_margin
from kdistill.methods import MethodContext, build_distiller
from kdistill.models import create_model
from kdistill.report.published import published_top1


def fixed(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def partial_l2_by_hand(source, target, margin):
    """The three cases written out entry by entry, summed, then divided by the batch size."""
    total = 0.0
    batch, channels, height, width = source.shape
    for b in range(batch):
        for c in range(channels):
            m = float(margin[c])
            for y in range(height):
                for x in range(width):
                    s, t = float(source[b, c, y, x]), float(target[b, c, y, x])
                    if s > m and t <= m:
                        total += (s - m) ** 2
                    if s > t and m < t <= 0:
                        total += (s - t) ** 2
                    if t > 0:
                        total += (s - t) ** 2
    return total / batch


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ofd_loss_equals_the_entrywise_restatement(dtype):
    source, target = fixed(3, 4, 3, 5, dtype=dtype), fixed(3, 4, 3, 5, seed=1, dtype=dtype)
    margin = torch.tensor([-0.5, -1.5, 0.3, -0.1])  # a positive margin too: its first and third cases overlap
    value = ofd_loss(source, target, margin)
    assert value.dtype == dtype
    assert value.item() == pytest.approx(partial_l2_by_hand(source, target, margin.to(dtype)), rel=1e-6)
    assert torch.equal(ofd_loss(source, target, margin.view(1, -1, 1, 1)), value)


def test_ofd_loss_is_zero_where_student_and_teacher_both_stay_below_the_margin():
    target = torch.full((2, 1, 2, 2), -3.0)
    assert ofd_loss(torch.full((2, 1, 2, 2), -2.0), target, torch.tensor([-1.0])).item() == 0.0
    # Above the margin, the student is pulled to the margin, not to the teacher.
    assert ofd_loss(torch.full((2, 1, 2, 2), 1.0), target, torch.tensor([-1.0])).item() == pytest.approx(4 * 4.0)


def test_ofd_margin_is_the_mean_of_the_negative_part_or_minus_three_std():
    weight = torch.tensor([1.0, -2.0, 0.5, 1.0])
    bias = torch.tensor([0.0, 1.0, -0.3, 4.0])  # the last: P(x < 0) = Phi(-4) < 0.001
    expected = []
    for s, m in zip(weight.abs().tolist(), bias.tolist()):
        below = 0.5 * (1 + math.erf(-m / s / math.sqrt(2)))
        density = math.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
        expected.append(m - s * density / below if below > 0.001 else -3 * s)
    assert ofd_margin(weight, bias).tolist() == pytest.approx(expected, rel=1e-6)
    assert expected[0] == pytest.approx(-math.sqrt(2 / math.pi)) and expected[3] == -3.0


# Zoo models whose batch norm's output is the whole pre-ReLU map at every stage (no residual sum).
WHOLE_MAP_NORMS = {"vgg8", "wrn_16_1"}


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "ResNet50", "MobileNetV2", "ShuffleV1"])
def test_every_zoo_family_names_the_batch_norm_before_each_stage_relu(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    norms = model.preact_batch_norms()
    outputs = []
    handles = [norm.register_forward_hook(lambda module, args, out: outputs.append(out)) for norm in norms]
    with torch.no_grad():
        preacts = model.extract(fixed(2, 3, 32, 32), preact=True).preact[1:]
    for handle in handles:
        handle.remove()
    assert len(norms) == len(preacts) and all(isinstance(norm, torch.nn.BatchNorm2d) for norm in norms)
    # Each ran once in the forward pass, at its stage's shape; the WRN's also once more for `preact`.
    by_norm = {id(norm): [out for out in outputs if out.shape[1] == norm.num_features] for norm in norms}
    for norm, preact in zip(norms, preacts):
        assert any(out.shape == preact.shape for out in by_norm[id(norm)]), name
    if name in WHOLE_MAP_NORMS:
        for norm, preact in zip(norms, preacts):
            assert any(torch.equal(out, preact) for out in by_norm[id(norm)]), name


def test_a_teacher_without_named_batch_norms_is_one_clear_error():
    with pytest.raises(KdistillError, match="model ShuffleV2 does not name the batch norm before each stage's ReLU"):
        build("ShuffleV2", "resnet8")


def build(teacher: str, student: str, **options):
    torch.manual_seed(0)
    return build_distiller({"name": "ofd", **options}, create_model(student), create_model(teacher),
                           MethodContext((3, 32, 32), 100))


def test_levels_are_weighted_by_halves_towards_the_shallowest_and_margins_come_from_the_teacher():
    distiller = build("vgg13", "MobileNetV2").eval()  # four levels; MobileNetV2's maps are smaller
    teacher_norms = distiller.teacher.preact_batch_norms()
    for norm, margin in zip(teacher_norms, distiller.margins()):
        torch.testing.assert_close(margin, ofd_margin(norm.weight, norm.bias))
    x = fixed(2, 3, 32, 32)
    with torch.no_grad():
        student = distiller.student.extract(x, preact=True)
        teacher = distiller.teacher.extract(x, preact=True)
        expected = 0.0
        for level, weight in enumerate((1 / 8, 1 / 4, 1 / 2, 1)):
            s, t = student.preact[level + 1], teacher.preact[level + 1]
            connected = distiller.connectors[level](s)
            expected += weight * ofd_loss(connected, F.adaptive_avg_pool2d(t, s.shape[-2:]),
                                          distiller.margins()[level]).item()
        value = distiller.method_terms(student, teacher, {}).losses["ofd"].item()
    assert value == pytest.approx(expected, rel=1e-6)
    assert distiller.loss_weight("ofd") == 0.001 and distiller.loss_weight("ce") == 1.0


def test_ofd_loss_goes_down_on_a_fixed_batch():
    distiller = build("resnet8", "resnet8", w_ce=0.0)  # the table weight 0.001
    batch = {"image": fixed(8, 3, 32, 32), "label": torch.arange(8), "index": torch.arange(8)}
    losses = term_over_steps(distiller, batch, "ofd", lr=0.01)
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])) and losses[-1] < 0.95 * losses[0], losses


def test_published_values_come_from_the_dkd_tables():
    assert published_top1("ofd", ("resnet32x4", "resnet8x4")) == (74.95, "DKD-baselines")
    assert published_top1("ofd", ("resnet32x4", "ShuffleV2")) == (76.82, "DKD-baselines")
    assert published_top1("ofd", ("ResNet50", "vgg8")) is None  # not in the tables
