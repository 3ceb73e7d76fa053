"""SemCKD: its loss against a restatement, the attention over stage pairs, the method's step."""

import pytest
import torch

from kdistill.errors import KdistillError
from kdistill.losses import semckd_loss
from kdistill.methods import MethodContext, build_distiller
from kdistill.methods.semckd import stage_projector
from kdistill.models import create_model

BATCH = 8
SMALL = MethodContext((3, 32, 32), num_classes=10, batch_size=BATCH)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_weights_each_samples_pair_errors_by_its_attention(dtype):
    generator = torch.Generator().manual_seed(0)
    shapes = [[(2, 3, 4, 4), (2, 5, 2, 2)], [(2, 3, 2, 2), (2, 5, 2, 2)]]  # student stage i x teacher stage j
    projected = [[torch.randn(shape, generator=generator, dtype=dtype) for shape in row] for row in shapes]
    targets = [[torch.randn(shape, generator=generator, dtype=dtype) for shape in row] for row in shapes]
    attention = torch.softmax(torch.randn(2, 2, 2, generator=generator, dtype=dtype), dim=-1)
    total = 0.0
    for b in range(2):
        for i in range(2):
            for j in range(2):
                differences = (projected[i][j][b] - targets[i][j][b]).flatten().tolist()
                total += attention[b, i, j].item() * sum(d * d for d in differences) / len(differences)
    assert semckd_loss(projected, targets, attention).item() == pytest.approx(total / (2 * 2), rel=1e-6)


def test_stage_projector_has_the_references_shape():
    projector = stage_projector(16, 32)
    convs = 16 * 64 + 9 * 64 * 64 + 64 * 32
    assert sum(p.numel() for p in projector.parameters()) == convs + 2 * (64 + 64)
    assert projector(torch.randn(2, 16, 4, 4)).shape == (2, 32, 4, 4)


def build(**options):
    torch.manual_seed(1)
    teacher = create_model("resnet14", num_classes=10)
    torch.manual_seed(0)
    student = create_model("ShuffleV1", num_classes=10)
    return build_distiller({"name": "semckd", **options}, student, teacher, SMALL).train()


def fixed_batch(n=BATCH):
    generator = torch.Generator().manual_seed(2)
    return {"image": torch.randn(n, 3, 32, 32, generator=generator), "label": torch.arange(n) % 10,
            "index": torch.arange(n)}


def test_semckd_attends_over_every_stage_pair_and_lowers_its_loss():
    distiller = build()
    assert distiller.weights == {"w_ce": 1.0, "w_kd": 1.0, "w_method": 400.0}
    batch = fixed_batch()
    student_maps = distiller.student.extract(batch["image"]).stages[1:]
    teacher_maps = distiller.teacher.extract(batch["image"]).stages[1:]
    attention = distiller.attention(student_maps, teacher_maps)
    assert attention.shape == (BATCH, len(student_maps), len(teacher_maps))
    torch.testing.assert_close(attention.sum(dim=-1), torch.ones(BATCH, len(student_maps)))
    assert distiller.queries[0].hidden.in_features == BATCH and distiller.queries[0].out.out_features == BATCH // 4

    optimizer = torch.optim.SGD(distiller.train_parameters(), lr=1e-4)
    losses = []
    for _ in range(4):
        output = distiller(batch)
        assert set(output.terms) == {"ce", "kd", "semckd"}
        losses.append(output.total.item())
        optimizer.zero_grad()
        output.total.backward()
        optimizer.step()
    assert min(losses[1:]) < losses[0], losses
    assert distiller.queries[0].hidden.weight.grad is not None  # the attention is trained through the loss
    assert all(p.grad is None for p in distiller.teacher.parameters())


def test_semckd_needs_its_batch_size():
    distiller = build()
    with pytest.raises(KdistillError, match="built for batches of 8 samples and got 4"):
        distiller(fixed_batch(4))
    with pytest.raises(KdistillError, match="sizes its attention by the training batch"):
        build_distiller({"name": "semckd"}, create_model("resnet8", num_classes=10),
                        create_model("resnet14", num_classes=10), MethodContext((3, 32, 32), 10))
