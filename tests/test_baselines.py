"""The eleven feature baselines as methods: they build their parts for any pair, train, and run
their initialisation stages through the real Trainer."""

import json

import pytest
import torch

from kdistill.config.loading import load_config
from kdistill.engine import train_run
from kdistill.engine.trainer import Trainer
from kdistill.errors import KdistillError
from kdistill.methods import MethodContext, build_distiller
from kdistill.methods._feature_pairs import conv_regressor
from kdistill.methods.ft import FT
from kdistill.models import create_model

TABLE_WEIGHTS = {"fitnet": 100.0, "at": 1000.0, "sp": 3000.0, "cc": 0.02, "vid": 1.0, "rkd": 1.0, "pkt": 30000.0,
                 "ab": 1.0, "ft": 200.0, "fsp": 50.0, "nst": 50.0}
INIT_METHODS = ("ab", "ft", "fsp")
# AB's and FSP's terms train only in their initialisation stage (the benchmark's choice).
INIT_ONLY_TERMS = ("ab", "fsp")
# 32x32 keeps ShuffleV1's last maps at 4x4: at 2x2 its batch norms see so few values that a few
# SGD steps on a fixed batch become erratic.
SMALL = MethodContext((3, 32, 32), num_classes=10)


def make_model(name, seed=0, in_chans=3):
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, in_chans=in_chans)


@pytest.fixture(scope="module")
def teacher():
    return make_model("resnet14", seed=1)


def fixed_batch(context, n=8):
    generator = torch.Generator().manual_seed(2)
    return {"image": torch.randn(n, *context.input_shape, generator=generator), "label": torch.arange(n) % 10,
            "index": torch.arange(n)}


def weighted_loss(distiller, batch):
    output = distiller(batch)
    return output.total, output.terms


def descend(parameters, loss_fn, lr, steps=3):
    """Plain SGD on a fixed batch: the loss before the first step, and the lowest after a step (a
    weight-200 term like FT's on 8 samples is not monotone over steps, but it must go down)."""
    optimizer = torch.optim.SGD(parameters, lr=lr)
    losses = []
    for _ in range(steps + 1):
        loss = loss_fn()
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return losses[0], min(losses[1:])


@pytest.mark.parametrize("suffix", ["", "+kd"])
@pytest.mark.parametrize("method", sorted(TABLE_WEIGHTS))
def test_each_baseline_trains_on_a_cross_architecture_pair_and_lowers_its_loss(method, suffix, teacher):
    # resnet14 -> ShuffleV1 differ in widths and sizes at every stage; FSP needs equal widths.
    student = make_model("resnet8" if method == "fsp" else "ShuffleV1")
    distiller = build_distiller({"name": method + suffix}, student, teacher, SMALL).train()
    assert distiller.weights == {"w_ce": 1.0, "w_kd": 1.0 if suffix else 0.0, "w_method": TABLE_WEIGHTS[method]}
    batch = fixed_batch(SMALL)

    _, terms = weighted_loss(distiller, batch)
    expected_terms = {"ce"} | ({"kd"} if suffix else set()) | (set() if method in INIT_ONLY_TERMS else {method})
    assert set(terms) == expected_terms
    assert all(torch.isfinite(value) for value in terms.values())

    trainable = [p for p in distiller.parameters() if p.requires_grad]
    first, last = descend(trainable, lambda: weighted_loss(distiller, batch)[0], lr=1e-4)
    assert last < first, (first, last)
    assert all(p.grad is None for p in distiller.teacher.parameters())

    if method in INIT_METHODS:
        phase = distiller.init_phase()
        assert phase.epochs == 30
        distiller.set_phase("init")
        distiller.init_mode()
        first, last = descend(phase.parameters, lambda: distiller(batch).total, lr=phase.lr)
        assert last < first, (first, last)


@pytest.mark.parametrize(("teacher_name", "student_name"), [
    ("resnet14", "MobileNetV2"),  # 3 intermediate stages -> 4; the student's maps are half the size
    ("MobileNetV2", "resnet8"),  # 4 -> 3; the teacher's maps are half the size
])
def test_parts_are_built_for_pairs_of_other_stage_counts_and_sizes(teacher_name, student_name):
    teacher, student = make_model(teacher_name, seed=1), make_model(student_name)
    batch = fixed_batch(SMALL, n=4)
    for method in sorted(set(TABLE_WEIGHTS) - {"fsp"}):
        options = {"name": method, "term_in_distillation": True} if method == "ab" else {"name": method}
        distiller = build_distiller(options, student, teacher, SMALL).train()
        loss, terms = weighted_loss(distiller, batch)
        assert torch.isfinite(loss) and method in terms, method
        loss.backward()
        parts = [name for name, p in distiller.named_parameters()
                 if not name.startswith(("student.", "teacher.", "paraphraser."))]
        missing = [name for name, p in distiller.named_parameters() if name in parts and p.grad is None]
        assert not missing, (method, missing)


@pytest.mark.parametrize(("student_size", "teacher_size"), [(32, 16), (16, 32), (8, 4), (7, 3), (3, 7), (4, 4)])
def test_the_regressor_maps_any_student_size_onto_the_teacher_size(student_size, teacher_size):
    regressor = conv_regressor((2, 5, student_size, student_size), (2, 3, teacher_size, teacher_size), relu=True,
                               pair="test")
    assert regressor(torch.randn(2, 5, student_size, student_size)).shape == (2, 3, teacher_size, teacher_size)


def test_fsp_refuses_a_pair_of_other_widths(teacher):
    with pytest.raises(KdistillError, match=r"fsp cannot distil teacher CifarResNet -> student ShuffleV1.*channel"):
        build_distiller({"name": "fsp"}, make_model("ShuffleV1"), teacher, SMALL)


def test_ab_and_fsp_can_keep_their_term_during_distillation(teacher):
    for method, student_name in (("ab", "ShuffleV1"), ("fsp", "resnet8")):
        distiller = build_distiller({"name": method, "term_in_distillation": True}, make_model(student_name), teacher,
                                    SMALL)
        assert set(weighted_loss(distiller, fixed_batch(SMALL))[1]) == {"ce", method}


def test_ft_paraphraser_trains_only_in_the_init_stage(teacher):
    distiller = build_distiller({"name": "ft"}, make_model("ShuffleV1"), teacher, SMALL).train()
    assert distiller.init_phase().parameters == list(distiller.paraphraser.parameters())
    weighted_loss(distiller, fixed_batch(SMALL))[0].backward()
    assert all(p.grad is None for p in distiller.paraphraser.parameters())
    assert all(p.grad is not None for p in distiller.translator.parameters())


def test_init_learning_rates_are_the_runs_unless_set(teacher):
    context = MethodContext((3, 32, 32), num_classes=10, lr=0.05)
    # The benchmark's 0.01 for FT under CIFAR ResNet / WRN students is in those recipes (test_recipes).
    assert build_distiller({"name": "ft"}, make_model("resnet8"), teacher, context).init_phase().lr == 0.05
    overridden = build_distiller({"name": "ft", "init_lr": 0.2}, make_model("resnet8"), teacher, context)
    assert overridden.init_phase().lr == 0.2
    assert build_distiller({"name": "ab"}, make_model("resnet8"), teacher, context).init_phase().lr == 0.05
    assert build_distiller({"name": "fsp"}, make_model("resnet8"), teacher, context).init_phase().lr == 0.05


def test_bad_options_name_the_fix(teacher):
    with pytest.raises(KdistillError, match=r"method 'cc': bad option .*'kernel', expected one of \[benchmark, "):
        build_distiller({"name": "cc", "form": "kernel"}, make_model("resnet8"), teacher, SMALL)
    with pytest.raises(KdistillError, match=r"expected one of \[benchmark, paper\]"):
        build_distiller({"name": "ft", "form": "kernel"}, make_model("resnet8"), teacher, SMALL)
    with pytest.raises(KdistillError, match="hint_stage 9 is out of range; use 0..3"):
        build_distiller({"name": "fitnet", "hint_stage": 9}, make_model("resnet8"), teacher, SMALL)


def test_cc_paper_form_has_no_embeddings(teacher):
    distiller = build_distiller({"name": "cc", "form": "paper"}, make_model("ShuffleV1"), teacher, SMALL)
    assert not [name for name, _ in distiller.named_parameters() if not name.startswith(("student.", "teacher."))]
    assert torch.isfinite(weighted_loss(distiller, fixed_batch(SMALL))[1]["cc"])


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """Weights of a resnet14 for the embedded set (1 channel, 10 classes); untrained is enough here."""
    path = tmp_path_factory.mktemp("teacher") / "resnet14.pth"
    torch.save(make_model("resnet14", seed=1, in_chans=1).state_dict(), path)
    return path


def quick_run(method, teacher_file, run, *overrides):
    return load_config(None, [
        "student=resnet8", "teacher=resnet14", f"teacher_checkpoint={teacher_file}", f"method.name={method}",
        "method.init_epochs=1", "data.name=embedded", "data.batch_size=8", "steps_per_epoch=2", "epochs=1",
        "progress=false", "tensorboard=false", "device=cpu", f"out={run}", *overrides,
    ])


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("method", "init_term"), [("ab", "ab"), ("ft", "ft_reconstruction"), ("fsp", "fsp")])
def test_the_init_stage_runs_first_through_the_trainer(method, init_term, teacher_file, tmp_path):
    run = tmp_path / "run"
    train_run(quick_run(method, teacher_file, run))
    metrics = read_metrics(run)
    assert [m["phase"] for m in metrics] == ["init", "train"]
    assert f"train/{init_term}" in metrics[0] and "train/ce" not in metrics[0]
    assert "train/ce" in metrics[1] and f"train/{init_term}" not in metrics[1]


def test_a_run_stopped_after_the_init_stage_resumes_without_repeating_it(teacher_file, tmp_path, monkeypatch):
    class Stopped(Exception):
        pass

    run_epoch = Trainer._run_epoch

    def stop_before_distilling(trainer, phase, *args):
        if phase.name == "train":
            raise Stopped
        run_epoch(trainer, phase, *args)

    run = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_run_epoch", stop_before_distilling)
        with pytest.raises(Stopped):
            train_run(quick_run("ft", teacher_file, run))
    paraphraser_after_init = {name: value for name, value in
                              torch.load(run / "checkpoint.pt", weights_only=True)["method"].items()
                              if name.startswith("paraphraser.")}

    init_terms = FT.init_terms
    init_batches = []

    def counted_init_terms(distiller, batch):
        init_batches.append(batch)
        return init_terms(distiller, batch)

    monkeypatch.setattr(FT, "init_terms", counted_init_terms)
    train_run(quick_run("ft", teacher_file, run, "resume=true"))
    assert not init_batches
    assert [m["phase"] for m in read_metrics(run)] == ["init", "train"]
    # Restored on resume, and left alone by distillation.
    final = torch.load(run / "checkpoint.pt", weights_only=True)["method"]
    for name, value in paraphraser_after_init.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=0)
