"""Name -> component registries that refuse duplicate names."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from invguard.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A mapping from dotted names (``inversion.whitebox``) to components.

    ``register`` refuses a name that is already taken; ``get`` names the close alternatives when a
    name is unknown.
    """

    def __init__(self, kind: str, error: type[ConfigError] = ConfigError) -> None:
        self.kind = kind
        self.error = error
        self._items: dict[str, T] = {}
        self._loaders: list[Callable[[], None]] = []

    def add_loader(self, loader: Callable[[], None]) -> None:
        """Register a function that imports the modules which fill this registry (run on first use)."""
        self._loaders.append(loader)

    def _load(self) -> None:
        while self._loaders:
            self._loaders.pop(0)()

    def register(self, name: str) -> Callable[[T], T]:
        def deco(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return deco

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._items[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, list(self._items), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise self.error(
                f"unknown {self.kind} {name!r}{hint} (known: {', '.join(sorted(self._items)) or 'none'})"
            ) from None

    def loaded_names(self) -> list[str]:
        """The names registered so far, without running the loaders (no module is imported)."""
        return sorted(self._items)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
