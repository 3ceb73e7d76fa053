"""Distillation methods, registered by name. Adding a method touches one file in this folder."""

import importlib
import pkgutil
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdistill.errors import KdistillError
from kdistill.methods.base import DistillOutput, Distiller, InitPhase, MethodContext, MethodOptions
from kdistill.models.base import FeatureModel
from kdistill.registry import Registry

METHODS: Registry[type[Distiller]] = Registry("method")

KD_SUFFIX = "+kd"


def _import_method_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            importlib.import_module(f"{__name__}.{module.name}")


def method_class(name: str) -> type[Distiller]:
    """The class registered as `name`; `X+kd` is method X with the KD term on (w_kd = 1 by default)."""
    if name.endswith(KD_SUFFIX) and name not in METHODS:
        base = METHODS.get(name[: -len(KD_SUFFIX)])
        if not base.needs_teacher or base.default_weights["w_kd"]:
            raise KdistillError(f"method '{name}': '{base.__name__}' already has no separate KD term to add; use '{name[:-3]}'")
        return type(f"{base.__name__}PlusKD", (base,), {"default_weights": {**base.default_weights, "w_kd": 1.0}})
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()


def parse_method_options(cls: type[Distiller], name: str, values: dict[str, Any]) -> MethodOptions:
    schema = OmegaConf.structured(cls.Options)
    try:
        return OmegaConf.to_object(OmegaConf.merge(schema, values))
    except OmegaConfBaseException as error:
        known = ", ".join(sorted(OmegaConf.to_container(schema)))
        raise KdistillError(f"method '{name}': bad option ({error.msg.splitlines()[0]}); its options are: {known}") from None


def build_distiller(method: dict[str, Any], student: FeatureModel, teacher: FeatureModel | None,
                    context: MethodContext) -> Distiller:
    """Build the method named by `method["name"]` with the rest of `method` as its options."""
    values = dict(method)
    name = values.pop("name", None)
    if not name:
        raise KdistillError("no method name: set method.name=<name> (`kdistill list` shows all)")
    cls = method_class(name)
    if cls.needs_teacher and teacher is None:
        raise KdistillError(f"method '{name}' needs a teacher: set teacher=<model> and teacher_checkpoint=<file>")
    options = parse_method_options(cls, name, values)
    return cls(student, teacher if cls.needs_teacher else None, options, context)


_import_method_modules()

__all__ = ["METHODS", "Distiller", "DistillOutput", "InitPhase", "MethodContext", "MethodOptions", "build_distiller", "list_methods", "method_class"]
