import math

import pytest
import torch

from kdistill.config import OptimConfig, ScheduleConfig
from kdistill.engine.schedule import build_optimizer, build_scheduler, lr_factor
from kdistill.errors import KdistillError


def test_step_schedule_is_the_tables_recipe():
    cfg = ScheduleConfig()  # x0.1 at 150, 180, 210 of 240
    steps = 10
    assert lr_factor(149 * steps + 9, steps, 240, cfg) == 1.0
    assert lr_factor(150 * steps, steps, 240, cfg) == pytest.approx(0.1)
    assert lr_factor(180 * steps, steps, 240, cfg) == pytest.approx(0.01)
    assert lr_factor(239 * steps, steps, 240, cfg) == pytest.approx(0.001)


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
    with pytest.raises(KdistillError, match="optim.name"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(name="rmsprop"), lr=0.1)
    with pytest.raises(KdistillError, match="schedule.name"):
        lr_factor(0, 1, 1, ScheduleConfig(name="poly"))
