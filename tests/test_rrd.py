"""RRD: its loss against a restatement, the FIFO queue, and the method's step on a fixed batch."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import rrd_loss
from kdistill.methods import MethodContext, build_distiller
from kdistill.models import create_model

SMALL = MethodContext((3, 32, 32), num_classes=10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_is_the_cross_entropy_of_sharpened_queue_similarities(dtype):
    generator = torch.Generator().manual_seed(0)
    z_s, z_t = (F.normalize(torch.randn(3, 4, generator=generator, dtype=dtype), dim=1) for _ in range(2))
    queue = F.normalize(torch.randn(6, 4, generator=generator, dtype=dtype), dim=1)
    t_s, t_t = 0.1, 0.02
    total = 0.0
    for s_row, t_row in zip(z_s.tolist(), z_t.tolist()):
        s_scores = [sum(a * b for a, b in zip(s_row, q)) / t_s for q in queue.tolist()]
        t_scores = [sum(a * b for a, b in zip(t_row, q)) / t_t for q in queue.tolist()]
        t_max, s_max = max(t_scores), max(s_scores)
        t_norm = sum(math.exp(v - t_max) for v in t_scores)
        s_log_norm = s_max + math.log(sum(math.exp(v - s_max) for v in s_scores))
        total -= sum(math.exp(t - t_max) / t_norm * (s - s_log_norm) for t, s in zip(t_scores, s_scores))
    assert rrd_loss(z_s, z_t, queue, t_s, t_t).item() == pytest.approx(total / 3, rel=1e-5)


def build(student_name="ShuffleV1", **options):
    torch.manual_seed(1)
    teacher = create_model("resnet14", num_classes=10)
    torch.manual_seed(0)
    student = create_model(student_name, num_classes=10)
    return build_distiller({"name": "rrd", **options}, student, teacher, SMALL).train()


def test_the_queue_is_a_fifo_that_wraps_around():
    distiller = build(queue_size=5, feat_dim=4)
    assert distiller.queue.shape == (5, 4)
    torch.testing.assert_close(distiller.queue.norm(dim=0), torch.ones(4))  # the reference's initialisation
    first, second = torch.randn(4, 4), torch.randn(3, 4)
    distiller.enqueue(first)
    assert distiller.queue_position.item() == 4
    distiller.enqueue(second)  # rows 4, 0, 1
    assert distiller.queue_position.item() == 2
    torch.testing.assert_close(distiller.queue[[4, 0, 1]], second)
    torch.testing.assert_close(distiller.queue[[2, 3]], first[[2, 3]])


def test_rrd_scores_against_the_queue_holding_the_batch_and_lowers_its_loss():
    distiller = build(queue_size=64)
    assert distiller.weights == {"w_ce": 1.0, "w_kd": 0.0, "w_method": 1.0}
    assert distiller.teacher_reads == {"logits", "pooled"}
    assert not distiller.embed_t.weight.requires_grad  # takes no gradient in the reference either
    generator = torch.Generator().manual_seed(2)
    batch = {"image": torch.randn(8, 3, 32, 32, generator=generator), "label": torch.arange(8) % 10,
             "index": torch.arange(8)}
    output = distiller(batch)
    assert set(output.terms) == {"ce", "rrd"}
    with torch.no_grad():
        z_s = F.normalize(distiller.embed_s(distiller.student.extract(batch["image"]).pooled), dim=1)
        z_t = F.normalize(distiller.embed_t(distiller.teacher.extract(batch["image"]).pooled), dim=1)
    torch.testing.assert_close(distiller.queue[:8], z_t)  # this batch enqueued before scoring
    torch.testing.assert_close(output.terms["rrd"], rrd_loss(z_s, z_t, distiller.queue))

    optimizer = torch.optim.SGD(distiller.train_parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        output = distiller(batch)
        losses.append(output.terms["rrd"].item())
        optimizer.zero_grad()
        output.total.backward()
        optimizer.step()
    assert min(losses[1:]) < losses[0], losses
    assert all(p.grad is None for p in distiller.teacher.parameters())
