"""Name-to-function registries shared by advantage estimators, policy losses and preference losses."""

from __future__ import annotations

from typing import Callable, TypeVar

FunctionT = TypeVar("FunctionT", bound=Callable)


class Registry(dict[str, Callable]):
    """A plain `dict` of name -> function that refuses silent overwrites and explains lookup misses.

    Args:
        kind: What the registry holds, used in error messages (e.g. "advantage estimator").
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[FunctionT], FunctionT]:
        """Return a decorator that files the decorated function under `name`.

        Raises:
            ValueError: If another function is already registered under `name`.
        """

        def decorator(function: FunctionT) -> FunctionT:
            existing = self.get(name)
            if existing is not None and existing is not function:
                raise ValueError(
                    f"{self.kind} {name!r} is already registered to {existing.__module__}.{existing.__qualname__}"
                )
            self[name] = function
            return function

        return decorator

    def lookup(self, name: str) -> Callable:
        """Return the function registered under `name`.

        Raises:
            ValueError: If `name` is unknown; the message lists the known names.
        """
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r}; expected one of {sorted(self)}")
        return self[name]
