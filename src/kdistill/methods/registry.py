"""The method table: `@register_method("name")` on a Distiller subclass makes it `method.name=name`.

A class with `offers_kd_variant = True` is registered a second time as `<name>+kd`: the same
method with Hinton's KD term on (`w_kd` = 1 unless the config sets it), e.g. `dcd+kd`, `crd+kd`.
"""

from collections.abc import Callable
from dataclasses import fields, make_dataclass
from typing import Any

from kdistill.config import MethodOptions, MethodSpec
from kdistill.methods.base import Distiller
from kdistill.registry import Registry

METHODS: Registry[type[Distiller]] = Registry("method")
KD_SUFFIX = "+kd"
# The papers of what the helpers below add to a method.
KD_PAPER = 'Hinton et al. 2015, "Distilling the Knowledge in a Neural Network"'
LS_PAPER = 'Sun et al. 2024, "Logit Standardization in Knowledge Distillation"'
CTKD_PAPER = 'Li et al. 2023, "Curriculum Temperature for Knowledge Distillation"'
# The student trained on the labels alone: the baseline of every table, and what `kdistill train` runs.
TEACHER_FREE_METHOD = "vanilla"


def with_kd_term(cls: type[Distiller]) -> type[Distiller]:
    """`cls` with the KD term weighted 1 by default."""
    return type(f"{cls.__name__}PlusKD", (cls,), {"default_weights": {**cls.default_weights, "w_kd": 1.0},
                                                  "offers_kd_variant": False, "paper": f"{cls.paper} + {KD_PAPER}",
                                                  "__module__": cls.__module__})


def with_defaults(cls: type[Distiller], suffix: str, added_paper: str, weights: dict[str, float],
                  **options: Any) -> type[Distiller]:
    """`cls` (named `<cls><suffix>`) with other defaults: `weights` over `cls.default_weights`,
    `options` over its option defaults (e.g. `temperature=2.0`); its paper and `added_paper`."""
    known = {field.name for field in fields(cls.Options)}
    if unknown := set(options) - known:
        raise ValueError(f"{cls.__name__} has no options {sorted(unknown)}")
    option_fields = [(name, type(value), value) for name, value in options.items()]
    option_class = make_dataclass(f"{cls.Options.__name__}{suffix}", option_fields, bases=(cls.Options,), frozen=True)
    return type(f"{cls.__name__}{suffix}", (cls,), {"Options": option_class,
                                                    "default_weights": {**cls.default_weights, **weights},
                                                    "offers_kd_variant": False,
                                                    "paper": f"{cls.paper} + {added_paper}",
                                                    "__module__": cls.__module__})


def with_logit_standardization(cls: type[Distiller], weights: dict[str, float], **options: Any) -> type[Distiller]:
    """`cls` with logit standardisation on and the LS paper's settings as its defaults."""
    return with_defaults(cls, "LS", LS_PAPER, weights, logit_standardize=True, **options)


def with_curriculum_temperature(cls: type[Distiller], **options: Any) -> type[Distiller]:
    """`cls` with CTKD's learned temperature on (`MethodOptions.curriculum_temperature`), its weights kept."""
    return with_defaults(cls, "CTKD", CTKD_PAPER, {}, curriculum_temperature=True, **options)


def register_method(*names: str) -> Callable[[type[Distiller]], type[Distiller]]:
    def add(cls: type[Distiller]) -> type[Distiller]:
        METHODS.register(*names)(cls)
        if cls.offers_kd_variant:
            METHODS.register(*(name + KD_SUFFIX for name in names))(with_kd_term(cls))
        return cls

    return add


def method_class(name: str) -> type[Distiller]:
    return METHODS.get(name)


def method_spec(name: str, options: MethodOptions) -> MethodSpec:
    """Method `name` resolved once: its class and what it needs of a run with `options`."""
    cls = method_class(name)
    views = ("image", "image_strong") if cls.needs_strong_view else ("image",)
    return MethodSpec(name, cls, cls.needs_teacher, cls.uses_teacher_logits, cls.teacher_reads_for(options), views,
                      cls.matches_logits, cls.deploys_composite)


def list_methods() -> list[str]:
    return METHODS.names()
