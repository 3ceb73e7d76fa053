"""The method table: `@register_method("name")` on a Distiller subclass makes it `method.name=name`.

A class with `offers_kd_variant = True` is registered a second time as `<name>+kd`: the same
method with Hinton's KD term on (`w_kd` = 1 unless the config sets it), e.g. `dcd+kd`, `crd+kd`.
"""

from collections.abc import Callable

from kdistill.methods.base import Distiller
from kdistill.registry import Registry

METHODS: Registry[type[Distiller]] = Registry("method")
KD_SUFFIX = "+kd"


def with_kd_term(cls: type[Distiller]) -> type[Distiller]:
    """`cls` with the KD term weighted 1 by default."""
    return type(f"{cls.__name__}PlusKD", (cls,), {"default_weights": {**cls.default_weights, "w_kd": 1.0},
                                                  "offers_kd_variant": False, "__module__": cls.__module__})


def register_method(*names: str) -> Callable[[type[Distiller]], type[Distiller]]:
    def add(cls: type[Distiller]) -> type[Distiller]:
        METHODS.register(*names)(cls)
        if cls.offers_kd_variant:
            METHODS.register(*(name + KD_SUFFIX for name in names))(with_kd_term(cls))
        return cls

    return add


def method_class(name: str) -> type[Distiller]:
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()
