"""SRRL: its loss against a restatement, and the method's step on a fixed batch."""

import pytest
import torch
import torch.nn.functional as F

from kdistill.losses import srrl_loss
from kdistill.methods import MethodContext, build_distiller
from kdistill.models import create_model

SMALL = MethodContext((3, 32, 32), num_classes=10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_is_the_two_mean_squared_errors_summed(dtype):
    generator = torch.Generator().manual_seed(0)
    projected, teacher = (torch.randn(3, 5, generator=generator, dtype=dtype) for _ in range(2))
    regressed, teacher_logits = (torch.randn(3, 4, generator=generator, dtype=dtype) for _ in range(2))

    def mean_square(a, b):
        values = [(x - y) ** 2 for row_a, row_b in zip(a.tolist(), b.tolist()) for x, y in zip(row_a, row_b)]
        return sum(values) / len(values)

    expected = mean_square(projected, teacher) + mean_square(regressed, teacher_logits)
    assert srrl_loss(projected, teacher, regressed, teacher_logits).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="logits of equal shapes"):
        srrl_loss(projected, teacher, regressed, teacher_logits[:, :3])


def test_srrl_regresses_through_the_teachers_classifier_and_lowers_its_loss():
    torch.manual_seed(1)
    teacher = create_model("resnet14", num_classes=10)
    torch.manual_seed(0)
    student = create_model("ShuffleV1", num_classes=10)
    distiller = build_distiller({"name": "srrl"}, student, teacher, SMALL).train()
    assert distiller.weights == {"w_ce": 1.0, "w_kd": 1.0, "w_method": 1.0}
    assert distiller.teacher_reads == {"logits", "pooled"}
    generator = torch.Generator().manual_seed(2)
    batch = {"image": torch.randn(8, 3, 32, 32, generator=generator), "label": torch.arange(8) % 10,
             "index": torch.arange(8)}

    output = distiller(batch)
    assert set(output.terms) == {"ce", "kd", "srrl"}
    with torch.no_grad():
        student_features, teacher_features = student.extract(batch["image"]), teacher.extract(batch["image"])
        projected = distiller.connector(student_features.pooled[:, :, None, None]).flatten(1)
        expected = (F.mse_loss(projected, teacher_features.pooled)
                    + F.mse_loss(teacher.fc(projected), teacher_features.logits))
    torch.testing.assert_close(output.terms["srrl"], expected)

    optimizer = torch.optim.SGD(distiller.train_parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        total = distiller(batch).total
        losses.append(total.item())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    assert min(losses[1:]) < losses[0], losses
    assert all(p.grad is None for p in teacher.parameters())
