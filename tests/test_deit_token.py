"""The DeiT distillation token (Touvron et al., ICML 2021): the loss against the reference's
formulation (float32 and float64), the distilled ViT adapter (shapes, parameters, both heads'
mean as its logits, as timm's own inference), the method, a short run and its evaluation
through the real entry point. A tiny ViT (one block, width 32) keeps each test to seconds."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import QUICK_RUN, run_kdistill
from test_crld import CONTEXT

from kdistill.config.loading import load_config
from kdistill.engine import train_run
from kdistill.errors import KdistillError
from kdistill.losses import deit_distillation_loss
from kdistill.methods import build_distiller
from kdistill.models import create_model
from kdistill.models.checkpoint import save_model_weights

STUDENT = "timm:deit_tiny_distilled_patch16_224"
TINY_VIT = {"img_size": 28, "patch_size": 7, "depth": 1, "embed_dim": 32, "num_heads": 2}
# The same tiny ViT on the 12-pixel images of a quick run (`helpers.QUICK_RUN` + data.image_size=12).
TINY_VIT_RUN = [f"student={STUDENT}", "data.image_size=12", "student_options.img_size=12",
                "student_options.patch_size=4", "student_options.depth=1", "student_options.embed_dim=32",
                "student_options.num_heads=2"]


def tiny_student(seed: int = 0):
    torch.manual_seed(seed)
    return create_model(STUDENT, num_classes=10, in_chans=1, **TINY_VIT)


def make(**options):
    torch.manual_seed(1)
    teacher = create_model("resnet8", num_classes=10, in_chans=1)
    return build_distiller({"name": "deit", **options}, tiny_student(), teacher, CONTEXT)


def batch(n: int = 8) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    return {"image": torch.randn(n, 1, 28, 28, generator=generator), "label": torch.arange(n) % 10,
            "index": torch.arange(n)}


# --- the loss -----------------------------------------------------------------------------------


def reference_soft(s: torch.Tensor, t: torch.Tensor, tau: float) -> torch.Tensor:
    """DeiT's DistillationLoss, soft: summed KL with log targets, times tau^2, over numel."""
    kl = F.kl_div(F.log_softmax(s / tau, dim=1), F.log_softmax(t / tau, dim=1), reduction="sum", log_target=True)
    return kl * tau * tau / s.numel()


def hard_restated(s: torch.Tensor, t: torch.Tensor) -> float:
    """-log softmax(s_i)[argmax t_i], averaged, sample by sample."""
    total = 0.0
    for s_row, t_row in zip(s.double().tolist(), t.double().tolist(), strict=True):
        target = max(range(len(t_row)), key=t_row.__getitem__)
        total += -(s_row[target] - torch.tensor(s_row, dtype=torch.float64).logsumexp(0).item())
    return total / len(s)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_the_loss_against_the_references_formulation(dtype, tau):
    generator = torch.Generator().manual_seed(0)
    s = (3 * torch.randn(6, 7, generator=generator, dtype=torch.float64)).to(dtype)
    t = (3 * torch.randn(6, 7, generator=generator, dtype=torch.float64)).to(dtype)
    tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-14}
    soft = deit_distillation_loss(s, t, soft=True, temperature=tau)
    assert soft.dtype == dtype
    torch.testing.assert_close(soft, reference_soft(s, t, tau), **tolerance)
    hard = deit_distillation_loss(s, t)
    assert hard.item() == pytest.approx(hard_restated(s, t), rel=tolerance["rtol"])


def smoothed_ce_restated(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> float:
    """DeiT's (timm's) LabelSmoothingCrossEntropy, sample by sample: (1 - eps) times the label's
    negative log-probability plus eps times the mean over classes of every class's, averaged."""
    total = 0.0
    for row, label in zip(logits.double().tolist(), labels.tolist(), strict=True):
        log_norm = torch.tensor(row, dtype=torch.float64).logsumexp(0).item()
        negative_logs = [log_norm - value for value in row]
        total += (1 - smoothing) * negative_logs[label] + smoothing * sum(negative_logs) / len(row)
    return total / len(logits)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torchs_label_smoothing_is_deits(dtype):
    """The class head's CE (torch's `cross_entropy(label_smoothing=)`) is DeiT's smoothed CE."""
    from timm.loss import LabelSmoothingCrossEntropy  # what DeiT's main.py builds

    generator = torch.Generator().manual_seed(4)
    logits = (3 * torch.randn(6, 7, generator=generator, dtype=torch.float64)).to(dtype)
    labels = torch.tensor([0, 3, 6, 2, 2, 5])
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    for smoothing in (0.1, 0.3):
        ours = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        assert ours.dtype == dtype
        assert ours.item() == pytest.approx(smoothed_ce_restated(logits, labels, smoothing), rel=rtol)
        torch.testing.assert_close(ours, LabelSmoothingCrossEntropy(smoothing)(logits, labels), rtol=rtol, atol=0)
    assert F.cross_entropy(logits, labels, label_smoothing=0.1).item() != pytest.approx(
        smoothed_ce_restated(logits, labels, 0.0), rel=1e-3)


def test_the_loss_sends_no_gradient_to_the_teacher():
    s, t = torch.randn(4, 5, requires_grad=True), torch.randn(4, 5, requires_grad=True)
    (deit_distillation_loss(s, t) + deit_distillation_loss(s, t, soft=True)).backward()
    assert t.grad is None and s.grad.abs().sum() > 0


# --- the distilled ViT adapter --------------------------------------------------------------------


def test_the_distilled_vit_shapes_parameters_and_logits_are_timms():
    import timm

    student = tiny_student()
    torch.manual_seed(0)
    reference = timm.create_model(STUDENT.removeprefix("timm:"), num_classes=10, in_chans=1, **TINY_VIT)
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in reference.parameters())
    assert student.has_distillation_token and not create_model("resnet8", num_classes=10).has_distillation_token
    x = batch()["image"]
    student.eval()
    features, class_logits, distillation_logits = student.extract_heads(x)
    assert class_logits.shape == distillation_logits.shape == features.logits.shape == (8, 10)
    assert features.pooled.shape == (8, 32) and features.stages[-1].shape == (8, 32, 4, 4)
    # Evaluation and export read forward / extract: the mean of both heads, as timm's own inference.
    reference.load_state_dict(student.model.state_dict())
    reference.eval()
    torch.testing.assert_close(student(x), reference(x))
    torch.testing.assert_close(student.extract(x).logits, (class_logits + distillation_logits) / 2)
    assert not torch.allclose(class_logits, distillation_logits)
    with pytest.raises(KdistillError, match="no distillation token"):
        create_model("resnet8", num_classes=10).extract_heads(x)


# --- the method -------------------------------------------------------------------------------------


def test_each_head_learns_from_its_target_and_the_logits_are_their_mean():
    distiller = make().eval()
    assert distiller.weights == {"w_ce": 0.5, "w_kd": 0.0, "w_method": 0.5}
    assert distiller.options.label_smoothing == 0.1  # DeiT's
    data = batch()
    output = distiller(data)
    _, class_logits, distillation_logits = distiller.student.extract_heads(data["image"])
    with torch.no_grad():
        teacher_top = distiller.teacher(data["image"]).argmax(dim=1)
    assert output.terms["ce"].item() == pytest.approx(smoothed_ce_restated(class_logits, data["label"], 0.1),
                                                      rel=1e-5)
    unsmoothed = make(label_smoothing=0.0).eval()(data).terms["ce"]
    torch.testing.assert_close(unsmoothed, F.cross_entropy(class_logits, data["label"]))
    torch.testing.assert_close(output.terms["deit"], F.cross_entropy(distillation_logits, teacher_top))
    torch.testing.assert_close(output.total, 0.5 * output.terms["ce"] + 0.5 * output.terms["deit"])
    torch.testing.assert_close(output.logits, (class_logits + distillation_logits) / 2)
    output.terms["deit"].backward()  # the teacher's term reaches the distillation head, not the class head
    head, head_dist = distiller.student.model.head, distiller.student.model.head_dist
    assert head.weight.grad is None and head_dist.weight.grad.abs().sum() > 0


def test_the_soft_target():
    distiller = make(distillation="soft").eval()
    assert distiller.options.temperature == 1.0
    data = batch()
    _, _, distillation_logits = distiller.student.extract_heads(data["image"])
    with torch.no_grad():
        teacher_logits = distiller.teacher(data["image"])
    torch.testing.assert_close(distiller(data).terms["deit"], reference_soft(distillation_logits, teacher_logits, 1.0))


@pytest.mark.parametrize("options", [{}, {"distillation": "soft"}])
def test_one_training_step_lowers_the_loss_on_a_fixed_batch(options):
    distiller = make(**options).train()
    data = batch(16)
    optimizer = torch.optim.SGD(distiller.train_parameters(), lr=0.05, momentum=0.9)
    before = distiller(data).total
    optimizer.zero_grad()
    before.backward()
    assert all(p.grad is None for p in distiller.teacher.parameters())
    optimizer.step()
    assert distiller(data).total.item() < before.item()


def test_bad_settings_are_one_line_errors():
    teacher = create_model("resnet8", num_classes=10, in_chans=1)
    with pytest.raises(KdistillError, match="distillation token.*deit_tiny_distilled"):
        build_distiller({"name": "deit"}, create_model("resnet8", num_classes=10, in_chans=1), teacher, CONTEXT)
    with pytest.raises(KdistillError, match="no KD term"):
        make(w_kd=1.0)
    with pytest.raises(KdistillError, match="soft target only"):
        make(logit_standardize=True)
    with pytest.raises(KdistillError, match=r"label_smoothing=1.0 is outside \[0, 1\)"):
        make(label_smoothing=1.0)
    make(distillation="soft", curriculum_temperature=True)  # CTKD's temperature on the soft target


# --- through the engine and the CLI -----------------------------------------------------------------


def test_a_run_trains_and_its_evaluation_uses_both_heads(tmp_path):
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pth"
    save_model_weights(create_model("resnet8", num_classes=10, in_chans=1), teacher)
    out = tmp_path / "run"
    results = train_run(load_config(None, QUICK_RUN + TINY_VIT_RUN + [
        "method.name=deit", "epochs=1", "steps_per_epoch=2", "teacher=resnet8", f"teacher_checkpoint={teacher}",
        "optim.name=adamw", "optim.model_no_weight_decay=true", "optim.lr=0.001", f"out={out}"]))
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"train/ce", "train/deit"} <= set(metrics)
    evaluated = run_kdistill("eval", str(out), "progress=false", "device=cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    assert f"top-1 {results.top1_last:.2f}" in evaluated.stdout  # the run's own test top-1, from the heads' mean
    exported = run_kdistill("export", str(out), "progress=false")  # timm's own model, checked against kdistill's
    assert exported.returncode == 0 and "top-1 agrees on 32/32" in exported.stdout, exported.stderr
    # The saved student is the whole distilled ViT; loaded, its logits are the mean of both heads.
    student = create_model(STUDENT, num_classes=10, in_chans=1, **{**TINY_VIT, "img_size": 12, "patch_size": 4})
    student.load_state_dict(torch.load(out / "student_last.pth", weights_only=True)["model"])
    x = torch.randn(3, 1, 12, 12)
    _, class_logits, distillation_logits = student.eval().extract_heads(x)
    torch.testing.assert_close(student(x), (class_logits + distillation_logits) / 2)


def test_kdistill_list_shows_deit(run_cli):
    methods = next(line for line in run_cli("list").stdout.splitlines() if line.startswith("methods:"))
    assert "deit" in methods.removeprefix("methods: ").split(", ")
