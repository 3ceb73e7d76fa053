"""The parity tool's shared core, without any reference clone:
`PYTHONPATH=src python -m pytest -q -n 0 scripts/parity/test_core.py`."""

import contextlib
import copy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from kdistill.config import OptimConfig
from kdistill.methods import MethodContext, build_distiller
from kdistill.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core import (  # noqa: E402
    Comparison,
    Data,
    Recipe,
    TermRecorder,
    build_kdistill,
    copy_weights,
    kl_div_target_gradient_of_torch_1_11,
    largest_difference,
    learning_rates_scaled,
    run_dtype,
    run_kdistill,
    step_differences,
)
from cospress import copy_by_name, largest_named_difference, merged  # noqa: E402
from dcd_reference import DistillersDCD, module_at_commit  # noqa: E402
from deit_reference import ROWS, DeiTCode, SeededSteps  # noqa: E402
from repdistiller import SCRIPTS, RepDistiller  # noqa: E402


def test_copy_weights_matches_by_order_and_shape_and_differences_are_measured():
    torch.manual_seed(0)
    source = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    target = nn.Sequential()
    target.add_module("conv", nn.Conv2d(3, 4, 3))
    target.add_module("bn", nn.BatchNorm2d(4))
    pairs = copy_weights(source, target)
    assert ("0.weight", "conv.weight") in pairs and ("1.running_var", "bn.running_var") in pairs
    assert largest_difference(source, target)["difference"] == 0.0
    with torch.no_grad():
        source.get_submodule("1").running_var.fill_(40.0)
        target.bn.running_var.fill_(40.0)
        target.bn.running_var[2] += 2.0  # a large tensor: relative to its scale, 2 / 40
        target.conv.bias[1] += 0.1  # a small one: absolute, so this is the worst
    worst = largest_difference(source, target)
    assert worst["tensor"] == "0.bias" and worst["difference"] == pytest.approx(0.1)
    with torch.no_grad():
        target.conv.bias[1] -= 0.1
    assert largest_difference(source, target)["difference"] == pytest.approx(2.0 / 40.0)


def test_copy_weights_refuses_a_shape_mismatch():
    try:
        copy_weights(nn.Linear(3, 4), nn.Linear(4, 3))
    except RuntimeError as error:
        assert "does not fit" in str(error)
    else:
        raise AssertionError("a mismatch was copied")


def test_batches_are_keyed_views_and_repeat():
    data = Data.synthetic(300, seed=0)
    first, second = data.batches(3, 8, strong=True), data.batches(3, 8, strong=True)
    assert all(torch.equal(a["image"], b["image"]) and torch.equal(a["image_strong"], b["image_strong"])
               for a, b in zip(first, second))
    assert first[0]["image"].shape == (8, 3, 32, 32) and not torch.equal(first[0]["image"], first[0]["image_strong"])


def test_step_differences_and_comparison_take_the_worst_term_per_step():
    reference = {"train": [{"ce": 1.0, "total": 2.0}, {"ce": 1.0, "total": 2.0}]}
    ours = {"train": [{"ce": 1.0, "total": 2.0}, {"ce": 1.1, "total": 2.0}]}
    assert step_differences(reference, ours, {"ce": "ce", "total": "total"}) == pytest.approx([0.0, 0.1 / 1.1])
    comparison = Comparison({"ce": "ce", "total": "total"}, reference, ours,
                            {"student": {"difference": 3e-5, "absolute": 3e-5, "tensor": "w"}})
    assert comparison.step1_relative == 0.0 and comparison.largest_weight == 3e-5


def test_a_side_that_turned_nan_differs_without_bound():
    nan = float("nan")
    reference = {"train": [{"total": 2.0}, {"total": nan}]}
    ours = {"train": [{"total": 2.0}, {"total": 2.0}]}
    assert step_differences(reference, ours, {"total": "total"}) == [0.0, float("inf")]
    source, target = nn.Linear(2, 2), nn.Linear(2, 2)
    copy_weights(source, target)
    with torch.no_grad():
        source.bias[0] = nan
    assert largest_difference(source, target) == {"difference": float("inf"), "absolute": float("inf"),
                                                  "tensor": "bias"}


def test_recorder_reads_criteria_and_closes_steps_at_backward():
    criterion, weight = nn.MSELoss(), nn.Parameter(torch.tensor(2.0))
    recorder = TermRecorder()
    recorder.watch(criterion, "mse")
    recorder.watch(criterion, "weighted mse", 3.0)
    with recorder.steps_by_backward():
        for _ in range(2):
            (3 * criterion(weight, torch.tensor(0.0))).backward()
    assert recorder.steps == [{"mse": 4.0, "weighted mse": 12.0, "total": 12.0}] * 2


def test_float64_runs_keep_float64_through_float_casts():
    with run_dtype(torch.float64):
        assert torch.zeros(2).dtype == torch.float64 and torch.zeros(2).float().dtype == torch.float64
        assert torch.zeros(2, dtype=torch.float16).float().dtype == torch.float32
    assert torch.zeros(2).float().dtype == torch.float32


def test_kl_div_keeps_its_values_and_drops_the_target_gradient_of_zero_probabilities():
    """DKD's masked teacher distribution holds exact zeros; their gradient is 0/0 in today's torch."""
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    temperature = torch.tensor(3.0, requires_grad=True)
    target = torch.softmax(logits / temperature - torch.tensor([1000.0, 0.0, 0.0]), dim=1)
    inputs = torch.log_softmax(logits.flip(1), dim=1)
    assert target[0, 0] == 0
    kl_div = nn.functional.kl_div
    plain = kl_div(inputs, target, reduction="sum")
    with kl_div_target_gradient_of_torch_1_11():
        masked = nn.KLDivLoss(reduction="sum")(inputs, target)
    assert torch.equal(plain, masked)
    assert torch.autograd.grad(plain, temperature, retain_graph=True)[0].isnan()
    by_hand = (target[0, 1:] * (target[0, 1:].log() - inputs[0, 1:])).sum()  # the zero entry left out
    gradient = torch.autograd.grad(masked, temperature, retain_graph=True)[0]
    assert gradient == pytest.approx(torch.autograd.grad(by_hand, temperature)[0])
    assert nn.functional.kl_div is kl_div


def test_kdistill_side_records_the_logged_extras_with_the_terms():
    torch.manual_seed(0)
    distiller = build_distiller({"name": "tintem"}, create_model("resnet8"), create_model("resnet8"),
                                MethodContext((3, 32, 32), 100))
    batches = Data.synthetic(8, seed=0).batches(2, 4, strong=False)
    steps = run_kdistill(distiller, batches, [], 1e-3, optim=OptimConfig(name="adamw", weight_decay=0.05))["train"]
    assert len(steps) == 2
    parts = [steps[0][f"tintem_{name}"] for name in ("local", "global", "feature", "token")]
    assert sum(parts) == pytest.approx(steps[0]["tintem"]) and steps[0]["total"] == steps[0]["tintem"]


def test_cospress_configs_merge_as_hydra_layers_and_vits_pair_by_name():
    assert merged({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}, "b": 1}
    theirs = nn.Module()
    theirs.mask_token, theirs.norm = nn.Parameter(torch.zeros(4)), nn.LayerNorm(4)
    ours = nn.Module()
    ours.norm, ours.head = nn.LayerNorm(4), nn.Linear(4, 2)
    with torch.no_grad():
        theirs.norm.weight.fill_(3.0)
    copy_by_name(theirs, ours)  # mask_token and the head have no counterpart, by design
    assert torch.equal(ours.norm.weight, theirs.norm.weight)
    assert largest_named_difference(theirs, ours)["difference"] == 0.0
    ours.extra = nn.Linear(4, 4)
    with pytest.raises(RuntimeError, match="no counterpart"):
        copy_by_name(theirs, ours)


def test_kdistill_builds_its_method_around_the_reference_teachers_weights():
    torch.manual_seed(0)
    reference_teacher = create_model("resnet8", num_classes=100)
    with torch.no_grad():
        for norm in reference_teacher.preact_batch_norms():
            norm.weight.fill_(0.5)
            norm.bias.fill_(2.0)
    labels = torch.arange(100)
    ofd = build_kdistill(Recipe("ofd", {}, 0.05), "resnet8", "resnet8", labels, teacher_weights=reference_teacher)
    assert largest_difference(reference_teacher, ofd.teacher)["difference"] == 0.0
    # OFD's margins are read off the teacher's batch norms when it is built: the copied ones
    # (weight 0.5, bias 2: the -3 std branch), not a fresh teacher's (weight 1, bias 0).
    assert all(torch.allclose(margin, torch.full_like(margin, -1.5)) for margin in ofd.margins())



def test_rows_without_a_recipe_of_their_own_run_a_recipe_with_the_references_weights():
    labels = torch.arange(100)
    for runner_class, expected in ((RepDistiller, 11), (DistillersDCD, 2)):
        runner = runner_class(Path("."), "resnet56", "resnet20", 16, None)  # the pair's recipes; no clone read
        borrowed = {name: script for name, script in runner.methods.items() if script.recipe is not None}
        assert len(borrowed) == expected
        for name, script in borrowed.items():
            recipe = runner.recipe(script)
            assert (recipe.method, recipe.lr) == (name, runner.recipe(runner.methods[script.recipe]).lr)
            # The script's -r, -a, -b are the weights kdistill's distiller (built on small models) uses.
            distiller = build_kdistill(recipe, "resnet8", "resnet14", labels)
            assert distiller.weights == {"w_ce": script.gamma, "w_kd": script.alpha, "w_method": script.beta}, name
    assert all(script.alpha == 1.0 and SCRIPTS[script.recipe].alpha == 0.0
               for script in SCRIPTS.values() if script.recipe is not None)


def test_a_module_is_read_from_a_commit_of_the_clones_history(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "loss.py").write_text("WEIGHT = 2\n")
    git("add", "-A")
    git("commit", "-qm", "add")
    first = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    git("rm", "-q", "lib/loss.py")
    git("commit", "-qm", "delete")
    assert module_at_commit(tmp_path, first.strip(), "lib/loss.py").WEIGHT == 2
    with pytest.raises(RuntimeError, match="no lib/loss.py at"):
        module_at_commit(tmp_path, "HEAD", "lib/loss.py")


def test_seeded_steps_give_each_step_the_same_draws_on_every_pass():
    steps = SeededSteps(["a", "b"])
    first = [(item, torch.rand(3)) for item in steps]
    second = [(item, torch.rand(3)) for item in steps]
    assert [item for item, _ in first] == ["a", "b"] and len(steps) == 2
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, second))
    assert not torch.equal(first[0][1], first[1][1])


def test_deit_kdistill_side_is_the_reference_commands_settings():
    """kdistill's side of the DeiT rows (built without the clone): its weights are DeiT's alpha,
    the student a distilled ViT at 32 px with the command's drop path, its label smoothing DeiT's, and
    its AdamW's rate, decay and exemptions those of DeiT's optimizer but in the default-groups row."""
    args = SimpleNamespace(drop_path=0.1, lr=5e-4, weight_decay=0.05, distillation_tau=1.0, distillation_alpha=0.5,
                           smoothing=0.1)
    runner = DeiTCode(Path("."), "", "", 4, Data.synthetic(8, seed=0))
    distiller, optim = runner.build_kdistill(args, ROWS["deit soft"])
    assert distiller.options.distillation == "soft" and distiller.student.has_distillation_token
    assert distiller.options.label_smoothing == 0.1
    assert distiller.student.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert (optim.name, optim.lr, optim.weight_decay, optim.model_no_weight_decay) == ("adamw", 5e-4, 0.05, True)
    assert not runner.build_kdistill(args, ROWS["deit (kdistill's default AdamW groups)"])[1].model_no_weight_decay
    with pytest.raises(RuntimeError, match="alpha"):
        runner.build_kdistill(SimpleNamespace(**{**vars(args), "distillation_alpha": 0.3}), ROWS["deit"])
    with pytest.raises(RuntimeError, match="label smoothing 0.1 is not the reference's 0.0"):
        runner.build_kdistill(SimpleNamespace(**{**vars(args), "smoothing": 0.0}), ROWS["deit"])


def test_scaled_learning_rates_step_as_optimizers_built_at_the_scaled_rates():
    torch.manual_seed(0)
    scaled, built_scaled = nn.Linear(4, 3), nn.Linear(4, 3)
    copy_weights(scaled, built_scaled)
    optimizer = torch.optim.SGD(scaled.parameters(), lr=0.5, momentum=0.9, weight_decay=5e-4)
    reference = torch.optim.SGD(built_scaled.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    inputs = torch.randn(5, 4)
    for step in range(3):
        if step == 2:  # a rate the loop sets between steps (a schedule) is scaled too
            optimizer.param_groups[0]["lr"], reference.param_groups[0]["lr"] = 0.25, 0.025
        for model, each in ((scaled, optimizer), (built_scaled, reference)):
            each.zero_grad()
            model(inputs).square().sum().backward()
            with learning_rates_scaled(0.1) if model is scaled else contextlib.nullcontext():
                each.step()
    assert largest_difference(scaled, built_scaled)["difference"] < 1e-7
    assert largest_difference(scaled, nn.Linear(4, 3))["difference"] > 1e-3  # they did move
    assert optimizer.param_groups[0]["lr"] == 0.25  # the group keeps its own rate between steps
    with learning_rates_scaled(0.1):
        pass
    optimizer.step()  # the hooks are gone with the context
    assert optimizer.param_groups[0]["lr"] == 0.25


def test_kdistill_side_measures_how_far_each_trained_module_moved():
    torch.manual_seed(0)
    distiller = build_distiller({"name": "fitnet"}, create_model("resnet8"), create_model("resnet8"),
                                MethodContext((3, 32, 32), 100))
    student, regressor = copy.deepcopy(distiller.student), copy.deepcopy(distiller.regressor)
    batches = Data.synthetic(8, seed=0).batches(2, 4, strong=False)
    steps = run_kdistill(distiller, batches, [], 0.05)
    moved = steps.movement
    assert set(moved) == {"student", "student buffers", "regressor", "regressor buffers"}  # not the teacher
    for module, before in (("student", student), ("regressor", regressor)):
        for tensor, after in getattr(distiller, module).named_parameters():
            before_tensor = before.get_parameter(tensor)
            by_hand = (after - before_tensor).abs().max().item() / max(1.0, before_tensor.abs().max().item())
            assert by_hand <= moved[module]["difference"]
            if tensor == moved[module]["tensor"]:
                assert by_hand == pytest.approx(moved[module]["difference"])
    assert moved["student buffers"]["tensor"].endswith(("running_mean", "running_var"))
    comparison = Comparison({"total": "total"}, {"train": steps["train"]}, steps, {})
    assert comparison.largest_movement == max(moved["student"]["difference"], moved["regressor"]["difference"]) > 0
