"""Distillation methods, registered by name (`registry`). Adding a method touches one file in this folder."""

import importlib
import pkgutil
from dataclasses import replace
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdistill.errors import KdistillError
from kdistill.methods.base import Distiller, DistillOutput, InitPhase, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import METHODS, list_methods, method_class, register_method
from kdistill.models.base import FeatureModel, probe_shapes

_NOT_METHOD_MODULES = {"base", "registry"}


def _import_method_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_METHOD_MODULES and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def parse_method_options(name: str, values: dict[str, Any]) -> MethodOptions:
    """The Options of method `name` from a config's method section (without its "name")."""
    cls = method_class(name)
    schema = OmegaConf.structured(cls.Options)
    try:
        return OmegaConf.to_object(OmegaConf.merge(schema, values))
    except OmegaConfBaseException as error:
        known = ", ".join(sorted(OmegaConf.to_container(schema)))
        reason = error.msg.splitlines()[0]
        raise KdistillError(f"method '{name}': bad option ({reason}); its options are: {known}") from None


def build_distiller(method: dict[str, Any], student: FeatureModel, teacher: FeatureModel | None,
                    context: MethodContext) -> Distiller:
    """Build the method named by `method["name"]` with the rest of `method` as its options."""
    values = dict(method)
    name = values.pop("name", None)
    if not name:
        raise KdistillError("no method name: set method.name=<name> (`kdistill list` shows all)")
    return distiller_from_options(name, parse_method_options(name, values), student, teacher, context)


def distiller_from_options(name: str, options: MethodOptions, student: FeatureModel, teacher: FeatureModel | None,
                           context: MethodContext) -> Distiller:
    """Build method `name` with its parsed options (a loaded configuration's `method`)."""
    cls = method_class(name)
    if cls.needs_teacher and teacher is None:
        raise KdistillError(f"method '{name}' needs a teacher: set teacher=<model> and teacher_checkpoint=<file>")
    teacher = teacher if cls.needs_teacher else None
    context = replace(context, student_shapes=probe_shapes(student, context.input_shape),
                      teacher_shapes=None if teacher is None else probe_shapes(teacher, context.input_shape))
    return cls(student, teacher, options, context)


_import_method_modules()

__all__ = ["METHODS", "Distiller", "DistillOutput", "InitPhase", "MethodContext", "MethodOptions", "Terms",
           "build_distiller", "distiller_from_options", "list_methods", "method_class", "parse_method_options",
           "register_method"]
