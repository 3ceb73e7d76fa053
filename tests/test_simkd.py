"""SimKD: its loss, its projector, its training step, and the deployed student (student +
projector + the teacher's classifier) that a run saves and every evaluation loads."""

import json

import pytest
import torch
from helpers import QUICK_RUN, run_kdistill, write_mnist_format

from kdistill.config.loading import load_config
from kdistill.data import DATASETS
from kdistill.engine import train_run
from kdistill.eval.common import load_evaluation, resolve_target
from kdistill.losses import simkd_loss
from kdistill.methods import MethodContext, build_distiller
from kdistill.methods.simkd import SimKDProjector
from kdistill.models import create_model

SMALL = MethodContext((3, 32, 32), num_classes=10)


def make_model(name, seed=0, in_chans=3):
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, in_chans=in_chans)


def fixed_batch(n=8):
    generator = torch.Generator().manual_seed(2)
    return {"image": torch.randn(n, *SMALL.input_shape, generator=generator), "label": torch.arange(n) % 10,
            "index": torch.arange(n)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_loss_is_the_mean_squared_error_against_the_teacher_map_pooled_by_blocks(dtype):
    generator = torch.Generator().manual_seed(0)
    projected = torch.randn(2, 3, 2, 2, generator=generator, dtype=dtype)
    teacher = torch.randn(2, 3, 4, 4, generator=generator, dtype=dtype)
    total, count = 0.0, 0
    for b in range(2):
        for c in range(3):
            for i in range(2):
                for j in range(2):
                    block = teacher[b, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].tolist()
                    target = sum(sum(row) for row in block) / 4
                    total += (projected[b, c, i, j].item() - target) ** 2
                    count += 1
    assert simkd_loss(projected, teacher).item() == pytest.approx(total / count, rel=1e-6)
    assert simkd_loss(projected, projected).item() == 0.0


def test_projector_has_the_papers_bottleneck_and_pools_a_larger_student_map():
    projector = SimKDProjector(64, 256, factor=2, pooled_size=(4, 4))
    middle = 128
    convs = 64 * middle + 9 * middle * middle + middle * 256  # no conv bias
    norms = 2 * (middle + middle + 256)
    assert sum(p.numel() for p in projector.parameters()) == convs + norms
    out = projector(torch.randn(2, 64, 8, 8))
    assert out.shape == (2, 256, 4, 4) and (out >= 0).all()


def test_simkd_lowers_its_loss_and_predicts_through_the_teachers_classifier():
    teacher, student = make_model("resnet14", seed=1), make_model("ShuffleV1")
    distiller = build_distiller({"name": "simkd"}, student, teacher, SMALL).train()
    assert distiller.weights == {"w_ce": 0.0, "w_kd": 0.0, "w_method": 1.0}
    assert not distiller.teacher_reads <= {"logits", "pooled"}  # reads the last map: no teacher cache
    batch = fixed_batch()
    trainable = distiller.train_parameters()
    assert not any(p is student.linear.weight for p in trainable)  # its own head is unused, frozen
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    losses = []
    for _ in range(4):
        output = distiller(batch)
        assert set(output.terms) == {"simkd"}
        losses.append(output.total.item())
        optimizer.zero_grad()
        output.total.backward()
        optimizer.step()
    assert min(losses[1:]) < losses[0], losses
    assert all(p.grad is None for p in distiller.teacher.parameters())

    distiller.eval()
    deployed = distiller.deployed_student()
    with torch.no_grad():
        logits = distiller(batch).logits
        features = deployed.extract(batch["image"])
        projected = distiller.projector(student.extract(batch["image"]).stages[-1])
        by_hand = teacher.fc(projected.mean(dim=(2, 3)))
    torch.testing.assert_close(features.logits, logits)
    torch.testing.assert_close(logits, by_hand)
    assert features.pooled.shape == (8, teacher.fc.in_features)


def test_a_simkd_run_is_evaluated_through_the_teachers_classifier(tmp_path):
    teacher_file = tmp_path / "resnet14.pth"
    torch.save(make_model("resnet14", seed=1, in_chans=1).state_dict(), teacher_file)
    source = DATASETS.get("embedded")(None, False)
    def first_64(split):
        return split.images[:64, 0].numpy(), split.labels[:64].numpy()

    small = write_mnist_format(tmp_path / "small", first_64(source.train), first_64(source.test))
    run = tmp_path / "simkd"
    cfg = load_config(None, QUICK_RUN + ["data.name=mnist", f"data.root={small}", "teacher=resnet14",
                                         f"teacher_checkpoint={teacher_file}", "method.name=simkd", "epochs=1",
                                         "steps_per_epoch=2", f"out={run}"])
    results = train_run(cfg)
    weights = torch.load(run / "student_last.pth", weights_only=True)["model"]
    assert any(key.startswith("projector.") for key in weights) and "classifier.weight" in weights

    evaluated = run_kdistill("eval", str(run))
    assert evaluated.returncode == 0, evaluated.stderr
    report = json.loads((run / "eval_last.json").read_text())
    assert report["top1"] == pytest.approx(results.top1_last)
    knn = run_kdistill("knn", str(run), "--k", "5", "progress=false")
    assert knn.returncode == 0, knn.stderr

    # The evaluations' student predicts as the trained distiller does, not through its own head.
    evaluation = load_evaluation(resolve_target(str(run), []), teacher="none")
    loaded = evaluation.models["student"].model
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    student, teacher = create_model("resnet8", num_classes=10, in_chans=1), create_model("resnet14", num_classes=10,
                                                                                           in_chans=1)
    teacher.load_state_dict(torch.load(teacher_file, weights_only=True))
    distiller = build_distiller({"name": "simkd"}, student, teacher, MethodContext((1, 28, 28), 10))
    distiller.load_trainable_state_dict(state["method"])
    distiller.eval()
    batch = next(iter(evaluation.loaders.test))
    with torch.no_grad():
        expected = distiller(batch).logits
        torch.testing.assert_close(loaded(batch["image"]), expected)
        assert not torch.allclose(student(batch["image"]), expected)
