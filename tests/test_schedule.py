import math

import pytest
import torch

from kdistill.config import OptimConfig, ScheduleConfig
from kdistill.engine.schedule import build_optimizer, build_scheduler, idle_schedule_warning, lr_factor
from kdistill.errors import KdistillError


def test_step_schedule_is_the_tables_recipe():
    cfg = ScheduleConfig()  # x0.1 at 150, 180, 210 of 240
    steps = 10
    assert lr_factor(149 * steps + 9, steps, 240, cfg) == 1.0
    assert lr_factor(150 * steps, steps, 240, cfg) == pytest.approx(0.1)
    assert lr_factor(180 * steps, steps, 240, cfg) == pytest.approx(0.01)
    assert lr_factor(239 * steps, steps, 240, cfg) == pytest.approx(0.001)


def test_a_step_schedule_that_cannot_act_is_warned_about():
    """A milestone acts when an epoch index (from 0) reaches it: milestone 5 within 6 epochs, not 5."""
    steps = 10
    assert lr_factor(5 * steps, steps, 6, ScheduleConfig(milestones=(5,))) == pytest.approx(0.1)
    assert idle_schedule_warning(ScheduleConfig(milestones=(5,)), 6, 0.05) is None
    assert "none within epochs=5: it stays 0.05" in idle_schedule_warning(ScheduleConfig(milestones=(5, 9)), 5, 0.05)
    assert idle_schedule_warning(ScheduleConfig(name="cosine"), 5, 0.05) is None
    assert idle_schedule_warning(ScheduleConfig(milestones=()), 5, 0.05) is None


def test_cosine_with_warmup_and_floor():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=2, min_lr=0.01)
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = build_optimizer(params, OptimConfig(), lr=0.1)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=5, epochs=12, base_lr=0.1)
    lrs = []
    for _ in range(60):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1 / 10)  # first of 10 warm-up steps
    assert lrs[9] == pytest.approx(0.1)
    halfway = 10 + 25  # five epochs into the ten cosine epochs
    assert lrs[halfway] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] > 0.01 and lrs[-1] < 0.0101


def test_sgd_defaults_and_bad_names():
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(), lr=0.05)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.05, 0.9, 5e-4)
    with pytest.raises(KdistillError, match="optim.name='rmsprop' is not one of: sgd, adamw"):
        OptimConfig(name="rmsprop")
    with pytest.raises(KdistillError, match="schedule.name='poly' is not one of: step, cosine"):
        ScheduleConfig(name="poly")


def test_warmup_from_an_absolute_lr_reaches_the_base_rate():
    cfg = ScheduleConfig(name="cosine", warmup_epochs=2, warmup_lr=1e-6, min_lr=1e-5)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(), lr=5e-4)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=5, epochs=12, base_lr=5e-4)
    lrs = []
    for _ in range(60):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-6)  # timm's warmup_lr at the first step
    assert lrs[5] == pytest.approx(1e-6 + (5e-4 - 1e-6) * 5 / 10)  # linear per step
    assert lrs[10] == pytest.approx(5e-4)  # the cosine starts at the base rate ...
    assert 1e-5 < lrs[-1] < 1.1e-5  # ... and ends just above its floor


def test_adamw_groups_leave_biases_and_1d_tensors_undecayed_as_timms_helper():
    timm_optim = pytest.importorskip("timm.optim")
    import timm

    model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, init_values=1.0,
                              num_classes=10)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, OptimConfig(name="adamw", weight_decay=0.05), lr=1e-3)
    decayed = [p for group in optimizer.param_groups if group["weight_decay"] > 0 for p in group["params"]]
    undecayed = [p for group in optimizer.param_groups if group["weight_decay"] == 0 for p in group["params"]]
    names = {id(p): name for name, p in model.named_parameters()}
    assert all(p.ndim > 1 for p in decayed) and not any(names[id(p)].endswith(".bias") for p in decayed)
    assert any(names[id(p)].endswith(".gamma") for p in undecayed)  # LayerScale is 1-D
    timm_groups = timm_optim.param_groups_weight_decay(model, weight_decay=0.05)
    timm_decayed = [p for group in timm_groups if group["weight_decay"] > 0 for p in group["params"]]
    assert len(decayed) == len(timm_decayed) and {id(p) for p in decayed} == {id(p) for p in timm_decayed}
    assert len(decayed) + len(undecayed) == len(params)
    sgd = build_optimizer(params, OptimConfig(), lr=0.1)  # SGD keeps one group: the tables' code
    assert len(sgd.param_groups) == 1 and sgd.param_groups[0]["weight_decay"] == 5e-4


def test_model_no_weight_decay_also_exempts_what_a_wrapped_timm_student_lists():
    """A DeiT student inside a distiller: with the key, AdamW's groups are timm's create_optimizer's
    on the bare timm model (position embedding and both tokens exempt, read under the distiller's
    own parameter names); without it, those tensors are decayed (the TinTeM authors' groups)."""
    from test_crld import CONTEXT
    from timm.optim import param_groups_weight_decay

    from kdistill.methods import build_distiller
    from kdistill.models import create_model

    torch.manual_seed(0)
    student = create_model("timm:deit_tiny_distilled_patch16_224", num_classes=10, in_chans=1, img_size=28,
                           patch_size=7, depth=1, embed_dim=32, num_heads=2)
    distiller = build_distiller({"name": "deit"}, student, create_model("resnet8", num_classes=10, in_chans=1),
                                CONTEXT)
    params, vit = distiller.train_parameters(), student.model
    tokens = {id(vit.pos_embed), id(vit.cls_token), id(vit.dist_token)}
    assert {"pos_embed", "cls_token", "dist_token"} <= set(vit.no_weight_decay())

    def undecayed(cfg: OptimConfig) -> set[int]:
        groups = build_optimizer(params, cfg, lr=1e-3, owner=distiller).param_groups
        assert sum(len(group["params"]) for group in groups) == len(params)
        return {id(p) for group in groups if group["weight_decay"] == 0 for p in group["params"]}

    with_key = undecayed(OptimConfig(name="adamw", weight_decay=0.05, model_no_weight_decay=True))
    without = undecayed(OptimConfig(name="adamw", weight_decay=0.05))
    timm_groups = param_groups_weight_decay(vit, 0.05, no_weight_decay_list=vit.no_weight_decay())
    assert with_key == {id(p) for group in timm_groups if group["weight_decay"] == 0 for p in group["params"]}
    assert with_key - without == tokens and not tokens & without
    assert without == {id(p) for p in params if p.ndim <= 1}
    with pytest.raises(KdistillError, match="optim.model_no_weight_decay shapes AdamW's .* set optim.name=adamw"):
        OptimConfig(model_no_weight_decay=True)
