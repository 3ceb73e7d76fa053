"""ReviewKD: hcl_loss against a loop restatement (float32 and float64, maps of 8, 4, 2 and 1 pixels),
the fusion blocks' shapes against the authors' per-pair lists, the warm-up, the loss going down."""

import pytest
import torch
from helpers import term_over_steps

from kdistill.errors import KdistillError
from kdistill.losses import hcl_loss
from kdistill.methods import MethodContext, build_distiller
from kdistill.models import create_model
from kdistill.report.published import published_top1


def fixed(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def block_mean(f, size):
    """`f` averaged over `size` x `size` equal blocks, position by position."""
    k = f.shape[-1] // size
    rows = [[f[:, :, y * k:(y + 1) * k, x * k:(x + 1) * k].mean(dim=(2, 3)) for x in range(size)]
            for y in range(size)]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def hcl_by_hand(students, teachers):
    """The hierarchical context loss restated: weights 1, 1/2, 1/4, 1/8 over full, 4x4, 2x2, 1x1,
    a level kept only when strictly smaller than the map, each pair normalised by its weights."""
    total = 0.0
    for s, t in zip(students, teachers):
        height = s.shape[2]
        terms = [(1.0, ((s - t) ** 2).sum() / s.numel())]
        for size in (4, 2, 1):
            if size < height:
                diff = block_mean(s, size) - block_mean(t, size)
                terms.append((2.0 ** -len(terms), (diff ** 2).sum() / diff.numel()))
        total = total + sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    return total


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hcl_loss_equals_the_restatement_on_maps_of_8_4_2_and_1_pixels(dtype):
    shapes = [(3, 5, 8, 8), (3, 7, 4, 4), (3, 6, 2, 2), (3, 9, 1, 1)]
    students = [fixed(*shape, seed=i, dtype=dtype) for i, shape in enumerate(shapes)]
    teachers = [fixed(*shape, seed=10 + i, dtype=dtype) for i, shape in enumerate(shapes)]
    value = hcl_loss(students, teachers)
    assert value.dtype == dtype
    expected = hcl_by_hand([s.double() for s in students], [t.double() for t in teachers])
    assert value.item() == pytest.approx(expected.item(), rel=1e-6 if dtype == torch.float32 else 1e-12)


def test_hcl_loss_of_one_pixel_maps_is_their_mse_and_of_two_pixel_maps_adds_the_pooled_half():
    s, t = fixed(2, 3, 1, 1), fixed(2, 3, 1, 1, seed=1)
    assert hcl_loss([s], [t]).item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    s, t = fixed(2, 3, 2, 2), fixed(2, 3, 2, 2, seed=1)
    pooled = ((s.mean(dim=(2, 3)) - t.mean(dim=(2, 3))) ** 2).mean()
    assert hcl_loss([s], [t]).item() == pytest.approx(((((s - t) ** 2).mean() + pooled / 2) / 1.5).item(), rel=1e-6)


def test_hcl_loss_refuses_maps_of_different_shapes():
    with pytest.raises(ValueError, match="equal shapes at pair 0"):
        hcl_loss([fixed(2, 3, 4, 4)], [fixed(2, 4, 4, 4)])


def build(teacher: str, student: str, **options):
    torch.manual_seed(0)
    return build_distiller({"name": "reviewkd", **options}, create_model(student), create_model(teacher),
                           MethodContext((3, 32, 32), 100))


def test_fusion_blocks_have_the_authors_channels_and_sizes():
    # The ReviewKD code's lists for resnet32x4 -> ShuffleV2 and ResNet50 -> MobileNetV2 (shallow to deep).
    for teacher, student, in_channels, out_channels, out_sizes, mid in (
            ("resnet32x4", "ShuffleV2", [116, 232, 464, 1024], [64, 128, 256, 256], [32, 16, 8, 1], 512),
            ("ResNet50", "MobileNetV2", [12, 16, 48, 160, 1280], [256, 512, 1024, 2048, 2048], [32, 16, 8, 4, 1], 512),
            ("resnet56", "resnet20", [16, 32, 64, 64], [16, 32, 64, 64], [32, 16, 8, 1], 64)):
        distiller = build(teacher, student)
        assert [f.reduce[0].in_channels for f in distiller.fusions] == in_channels
        assert [f.output[0].out_channels for f in distiller.fusions] == out_channels
        assert [f.reduce[0].out_channels for f in distiller.fusions] == [mid] * len(in_channels)
        assert distiller.out_sizes == [(size, size) for size in out_sizes]
        # Only the deepest level (the pooled feature) has nothing deeper to fuse.
        assert [f.attention is None for f in distiller.fusions] == [False] * (len(in_channels) - 1) + [True]


def test_the_term_warms_up_over_20_epochs():
    distiller = build("resnet8", "resnet8")
    distiller.on_epoch_start(5, 240)
    assert distiller.loss_weight("reviewkd") == pytest.approx(5 / 20)
    distiller.on_epoch_start(30, 240)
    assert distiller.loss_weight("reviewkd") == 1.0 and distiller.loss_weight("ce") == 1.0
    assert build("resnet8", "resnet8", warmup=0).loss_weight("reviewkd") == 1.0


def test_a_pair_with_unequal_stage_counts_is_one_clear_error():
    with pytest.raises(KdistillError, match="teacher has 4 stages, the student 3"):
        build("vgg8", "resnet8")


def test_reviewkd_loss_goes_down_on_a_fixed_batch():
    distiller = build("resnet8", "resnet8", w_ce=0.0)
    distiller.on_epoch_start(20, 240)
    batch = {"image": fixed(8, 3, 32, 32), "label": torch.arange(8), "index": torch.arange(8)}
    losses = term_over_steps(distiller, batch, "reviewkd", lr=0.05)
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])) and losses[-1] < 0.95 * losses[0], losses


def test_published_values_come_from_the_dkd_tables():
    assert published_top1("reviewkd", ("resnet32x4", "resnet8x4")) == (75.63, "DKD-baselines")
    assert published_top1("reviewkd", ("resnet32x4", "ShuffleV2")) == (77.78, "DKD-baselines")
    assert published_top1("reviewkd", ("resnet110", "resnet20")) is None  # not in the tables
