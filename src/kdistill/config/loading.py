"""Load a run configuration: typed defaults, then a YAML file, then `key=value` overrides.

This sits above `kdistill.methods` (it parses the method section with the method registry) and
below `engine` and `eval`, which both load configurations; `kdistill.config` itself stays a leaf
that the data layer can import. The keys outside the method section are checked before the method
registry (and torch) is imported, so a mistyped key is reported at once.
"""

import dataclasses
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdistill.config import RunConfig
from kdistill.config.reference import close_keys
from kdistill.config.yaml_file import read_yaml_mapping
from kdistill.errors import KdistillError, missing_path_hint

CONFIG_KEYS_HINT = "`kdistill config` lists every key"


def _upgrade_retired_keys(values: dict[str, Any]) -> dict[str, Any]:
    """Read a config.yaml of an earlier kdistill: `data.strong_view` is now derived from the method
    (dropped), and `amp: true` (CUDA autocast with a loss scaler) is now `precision: fp16`."""
    values = dict(values)
    if isinstance(values.get("data"), dict):
        values["data"] = {key: value for key, value in values["data"].items() if key != "strong_view"}
    if values.pop("amp", None) is True:
        values.setdefault("precision", "fp16")
    return values


def _user_values(config_file: str | None, overrides: list[str]) -> dict[str, Any]:
    """The YAML file merged with the overrides, untyped (checked against RunConfig afterwards)."""
    values: Any = {}
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise KdistillError(f"config file '{config_file}' not found{missing_path_hint(config_file)}: give the "
                                "path of a YAML recipe")
        values = _upgrade_retired_keys(read_yaml_mapping(path))
    for override in overrides:
        if "=" not in override:
            raise KdistillError(f"override '{override}' is not key=value (e.g. epochs=10, method.name=kd)")
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(values), OmegaConf.from_dotlist(list(overrides))))


def _check_values(cfg: RunConfig) -> None:
    if cfg.epochs < 1:
        raise KdistillError(f"epochs={cfg.epochs}: a run needs at least one epoch; set epochs=N with N >= 1")
    if cfg.steps_per_epoch is not None and cfg.steps_per_epoch < 1:
        raise KdistillError(f"steps_per_epoch={cfg.steps_per_epoch} is below 1: set steps_per_epoch=N >= 1, "
                            "or leave it unset for whole epochs")
    rates = {"optim.lr": cfg.optim.lr, "schedule.warmup_lr": cfg.schedule.warmup_lr,
             "schedule.min_lr": cfg.schedule.min_lr}
    weights = {f"method.{name}": getattr(cfg.method.options, name) for name in ("w_ce", "w_kd", "w_method")}
    for key, value in {**rates, **weights}.items():
        if value is not None and value < 0:
            what = "learning rate" if key in rates else "loss weight"
            raise KdistillError(f"{key}={value}: a {what} cannot be negative; set {key} to a value >= 0")
    if cfg.device != "auto":
        import torch  # here, not at the top: a key error is reported before torch is imported

        try:
            torch.device(cfg.device)
        except RuntimeError:
            raise KdistillError(f"unknown device '{cfg.device}': use device=auto, cpu, cuda or cuda:N") from None


def load_config(config_file: str | None = None, overrides: list[str] = ()) -> RunConfig:
    """The resolved, read-only configuration; unknown keys, bad values and unknown method
    options are one-line errors (KdistillError)."""
    try:
        values = _user_values(config_file, overrides)
        method = values.pop("method", None) or {}
        if not isinstance(method, dict):
            raise KdistillError(f"method={method!r} is not a section: set method.name=<name> and method.<option>=...")
        schema = OmegaConf.structured(RunConfig)
        cfg = OmegaConf.to_object(OmegaConf.merge(schema, values))
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None) or ""
        message = error.msg.splitlines()[0]
        close = close_keys(key) if "not in" in message else []  # an unknown key, not a bad value
        hint = f"did you mean {', '.join(close)}? ({CONFIG_KEYS_HINT})" if close else CONFIG_KEYS_HINT
        raise KdistillError(f"config key '{key}' is invalid ({message}); {hint}") from None
    from kdistill.methods import resolve_method  # the method registry imports every method, and torch

    cfg = _teacher_from_run_folder(dataclasses.replace(cfg, method=resolve_method(method)))
    _check_values(cfg)
    return cfg


def _teacher_from_run_folder(cfg: RunConfig) -> RunConfig:
    """A method that needs a teacher, `teacher=` left out and `teacher_checkpoint=` a run folder:
    the teacher is the model that run trained (with its builder options), as its config.yaml says."""
    if not cfg.method.spec.needs_teacher or cfg.teacher is not None or cfg.teacher_checkpoint is None:
        return cfg
    from kdistill.run_folder import RunFolder

    run = RunFolder(cfg.teacher_checkpoint)
    if not run.is_run():
        return cfg
    saved = run.read_config()
    return dataclasses.replace(cfg, teacher=saved["student"],
                               teacher_options=dict(cfg.teacher_options or saved.get("student_options") or {}))
