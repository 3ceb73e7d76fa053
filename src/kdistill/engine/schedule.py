"""Optimizer and learning-rate schedule of a run (the tables' recipe by default)."""

import fnmatch
import math
from collections.abc import Iterable

import torch
from torch import nn

from kdistill.config import OptimConfig, OptimName, ScheduleConfig, ScheduleName


def listed_no_weight_decay(module: nn.Module) -> list[nn.Parameter]:
    """The parameters the models within `module` list in their `no_weight_decay()` (timm's
    convention: names relative to the listing model, matched as shell patterns as timm's
    `param_groups_weight_decay` does), so a model wrapped in a distiller is read under its own names.
    A listing model answers for all its submodules, as timm's create_optimizer asks only the model."""
    listing = getattr(module, "no_weight_decay", None)
    if callable(listing):
        patterns = listing()
        return [p for name, p in module.named_parameters()
                if any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]
    return [p for child in module.children() for p in listed_no_weight_decay(child)]


def weight_decay_groups(params: list[nn.Parameter], weight_decay: float,
                        exempt: Iterable[nn.Parameter] = ()) -> list[dict]:
    """timm's parameter groups (`timm.optim.param_groups_weight_decay`): no weight decay on
    biases and other tensors of at most one dimension (norm weights, LayerScale, scalars), nor on
    `exempt` (timm's `no_weight_decay_list`)."""
    exempt_ids = {id(p) for p in exempt}
    no_decay = [p for p in params if p.ndim <= 1 or id(p) in exempt_ids]
    decay = [p for p in params if p.ndim > 1 and id(p) not in exempt_ids]
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]
    return [group for group in groups if group["params"]]


def build_optimizer(params: list[nn.Parameter], cfg: OptimConfig, lr: float,
                    owner: nn.Module | None = None) -> torch.optim.Optimizer:
    """SGD: every trainable tensor gets the same weight decay, as in the tables' reference code
    (this includes DCD's log_scale and bias, as the method's spec says). AdamW: timm's groups
    (`weight_decay_groups`), as the ViT recipes' reference code (timm's optimizer factory) uses;
    with `cfg.model_no_weight_decay`, also none on what the models within `owner` (the module
    holding `params`: the distiller) list in their `no_weight_decay()`."""
    if cfg.name is OptimName.sgd:
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.nesterov)
    if cfg.model_no_weight_decay and owner is None:
        raise ValueError("optim.model_no_weight_decay needs the module holding the parameters (owner=)")
    exempt = listed_no_weight_decay(owner) if cfg.model_no_weight_decay else []
    return torch.optim.AdamW(weight_decay_groups(list(params), cfg.weight_decay, exempt), lr=lr)


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg: ScheduleConfig, floor: float = 0.0,
              warmup_start: float | None = None) -> float:
    """Multiplier of the base learning rate at optimizer step `step` (counted from 0).

    Warm-up rises linearly per step: from `warmup_start` at step 0 when given (timm's
    warmup_lr, relative to the base rate), else from 1/(warm-up steps); `step` then decays by
    `gamma` at each milestone epoch, as an epoch-wise MultiStepLR does; `cosine` anneals per step
    from 1 down to `floor`.
    """
    epoch_float = step / steps_per_epoch
    if epoch_float < cfg.warmup_epochs:
        warmup_steps = cfg.warmup_epochs * steps_per_epoch
        if warmup_start is None:
            return (step + 1) / warmup_steps
        return warmup_start + (1.0 - warmup_start) * step / warmup_steps
    if cfg.name is ScheduleName.step:
        passed = sum(1 for milestone in cfg.milestones if int(epoch_float) >= milestone)
        return cfg.gamma**passed
    progress = (epoch_float - cfg.warmup_epochs) / max(epochs - cfg.warmup_epochs, 1e-12)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def idle_schedule_warning(cfg: ScheduleConfig, epochs: int, lr: float) -> str | None:
    """The line to print when the step schedule cannot act on the run: every milestone at or beyond
    `epochs` (the rate would stay `lr` to the end, as a 240-epoch recipe's milestones do in a short run)."""
    if cfg.name is not ScheduleName.step or not cfg.milestones or min(cfg.milestones) < epochs:
        return None
    milestones = ", ".join(map(str, cfg.milestones))
    return (f"schedule.name=step decays the learning rate at epochs {milestones}, none within epochs={epochs}: "
            f"it stays {lr:g} to the end; for a short run set schedule.name=cosine (or schedule.milestones=[...])")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps_per_epoch: int,
                    epochs: int, base_lr: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Stepped once per optimizer step; `min_lr` (the cosine floor) and `warmup_lr` are absolute."""
    floor = cfg.min_lr / base_lr if base_lr else 0.0
    warmup_start = cfg.warmup_lr / base_lr if cfg.warmup_lr is not None and base_lr else None
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, epochs, cfg, floor, warmup_start))
