"""A name -> thing table. Tasks, optimizers, events and probes each have one."""

from .errors import SpecError


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, object] = {}

    def register(self, name: str, item=None):
        """Register `item` under `name`; usable as a decorator when `item` is omitted."""
        if item is None:
            return lambda obj: self.register(name, obj)
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[name] = item
        return item

    def get(self, name: str, path: str = ""):
        if name not in self._items:
            raise SpecError(path, f"unknown {self.kind} {name!r} (allowed: {', '.join(self.names())})")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name) -> bool:
        return name in self._items
