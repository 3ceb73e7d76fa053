"""Distillation methods, registered by name (`registry`). Adding a method touches one file in this folder."""

import importlib
import pkgutil
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from kdistill.config import MethodConfig
from kdistill.errors import KdistillError
from kdistill.methods.base import Distiller, DistillOutput, InitPhase, MethodContext, MethodOptions, Terms
from kdistill.methods.registry import (
    METHODS,
    TEACHER_FREE_METHOD,
    list_methods,
    method_class,
    method_spec,
    register_method,
)
from kdistill.models.base import FeatureModel, probe_shapes

_NOT_METHOD_MODULES = {"base", "registry"}


def _import_method_modules() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_METHOD_MODULES and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def parse_method_options(name: str, values: Mapping[str, Any]) -> MethodOptions:
    """The Options of method `name` from a config's method section (without its "name")."""
    cls = method_class(name)
    schema = OmegaConf.structured(cls.Options)
    try:
        return OmegaConf.to_object(OmegaConf.merge(schema, dict(values)))
    except OmegaConfBaseException as error:
        known = ", ".join(sorted(OmegaConf.to_container(schema)))
        reason = error.msg.splitlines()[0]
        raise KdistillError(f"method '{name}': bad option ({reason}); its options are: {known}") from None


def resolve_method(section: Mapping[str, Any]) -> MethodConfig:
    """A config's method section (`{"name": ..., <options>}`) resolved once: the name, the
    method's parsed Options and its `MethodSpec`."""
    values = dict(section)
    name = values.pop("name", MethodConfig.name)
    if not name:
        raise KdistillError("no method name: set method.name=<name> (`kdistill list` shows all)")
    options = parse_method_options(str(name), values)
    return MethodConfig(str(name), options, method_spec(str(name), options))


def build_distiller(method: MethodConfig | Mapping[str, Any], student: FeatureModel, teacher: FeatureModel | None,
                    context: MethodContext) -> Distiller:
    """The method's Distiller, from a loaded configuration's `method` or a method section
    (`{"name": "kd", "temperature": 2.0}`); the teacher is dropped for a method that runs none."""
    if isinstance(method, Mapping):
        method = resolve_method(method)
    elif method.spec is None:  # a hand-built MethodConfig
        method = MethodConfig(method.name, method.options, method_spec(method.name, method.options))
    spec = method.spec
    if spec.needs_teacher and teacher is None:
        raise KdistillError(f"method '{spec.name}' needs a teacher: set teacher=<model> and teacher_checkpoint=<file>")
    teacher = teacher if spec.needs_teacher else None
    context = replace(context, student_shapes=probe_shapes(student, context.input_shape),
                      teacher_shapes=None if teacher is None else probe_shapes(teacher, context.input_shape))
    return spec.distiller(student, teacher, method.options, context)


_import_method_modules()

__all__ = ["METHODS", "TEACHER_FREE_METHOD", "Distiller", "DistillOutput", "InitPhase", "MethodContext",
           "MethodOptions", "Terms", "build_distiller", "list_methods", "method_class", "method_spec",
           "parse_method_options", "register_method", "resolve_method"]
