"""A name -> factory table, shared by models, data sets and methods."""

from collections.abc import Callable
from typing import Generic, TypeVar

from kdistill.errors import KdistillError, unknown_name_error

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, *names: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name", "alias")`."""

        def add(entry: T) -> T:
            for name in names:
                if name in self._entries:
                    raise KdistillError(f"{self.kind} '{name}' is registered twice")
                self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise unknown_name_error(self.kind, name, self._entries) from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return sorted(self._entries)
