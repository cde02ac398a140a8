"""One registry pattern for defenses, attacks and judges: a decorator next to each class.

    @DEFENSES.register("sld-weak", preset="weak")
    @DEFENSES.register("sld-max", preset="max")
    class SafeLatentDiffusion(GuidanceDefense): ...

A name maps to the decorated object and the keyword arguments given with it. Registering a
name twice is refused; looking up an unknown name raises ConfigError listing the known ones.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

from conceptguard.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> (object, keyword arguments)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._entries: dict[str, tuple[T, dict[str, Any]]] = {}

    def register(self, name: str, **kwargs: Any) -> Callable[[T], T]:
        """Decorator: register the decorated object under `name` with `kwargs` for building it."""
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.what} {name!r} is registered twice "
                                 f"({self._entries[name][0]!r} and {obj!r})")
            self._entries[name] = (obj, dict(kwargs))
            return obj
        return add

    def get(self, name: str) -> tuple[T, dict[str, Any]]:
        """The object and keyword arguments registered under `name`."""
        if name not in self._entries:
            raise ConfigError(f"unknown {self.what} {name!r}; known: {', '.join(self.names())}")
        obj, kwargs = self._entries[name]
        return obj, dict(kwargs)

    def check(self, name: str) -> str:
        self.get(name)
        return name

    def names(self) -> tuple[str, ...]:
        """Every registered name, sorted (registration order depends on import order)."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
