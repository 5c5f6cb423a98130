"""One registry mechanism for everything a config names: models, sources, methods, evaluators.

A config says `name='resnet'` plus keyword arguments; the registry turns that into an object and
turns every mistake (unknown name, unknown or missing argument) into an error that names the
mistake and the closest valid choices, before any compute is spent.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Generic, Mapping, TypeVar

from vision_jax.errors import ConfigError

T = TypeVar("T")


def closest(word: str, choices) -> str:
    """A short 'did you mean' hint for error messages."""
    matches = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


def options_of(section) -> dict:
    """A config section naming a factory (`name=...` plus its options) as the factory's keyword arguments."""
    return {k: v for k, v in section.items() if k != "name"}


class Registry(Generic[T]):
    """Maps names to factories (classes or functions)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._factories: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._factories[name] = factory
            return factory

        return decorator

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, name: str) -> Callable[..., T]:
        if name not in self._factories:
            raise ConfigError(
                f"Unknown {self.kind} {name!r}.{closest(name, self._factories)} "
                f"Known {self.kind}s: {', '.join(self.names())}."
            )
        return self._factories[name]

    def option_names(self, name: str) -> tuple[str, ...] | None:
        """The keyword arguments the factory `name` takes (None: it takes any, via **kwargs)."""
        params = inspect.signature(self.get(name)).parameters
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return None
        return tuple(n for n, p in params.items()
                     if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    def build(self, name: str, kwargs: Mapping[str, Any] | None = None, **extra: Any) -> T:
        """Calls the factory, checking config-given `kwargs` against its signature first.

        `extra` holds arguments the framework passes (not from the config), such as rngs.
        """
        factory = self.get(name)
        kwargs = dict(kwargs or {})
        check_kwargs(factory, kwargs, f"{self.kind} {name!r}", passed_by_framework=extra)
        return factory(**kwargs, **extra)


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], what: str, passed_by_framework=()) -> None:
    """Raises a clear error if `kwargs` do not fit `fn`'s signature."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if n not in passed_by_framework and n != "self"
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in accepted:
            raise ConfigError(
                f"{what} has no option {key!r}.{closest(key, accepted)} "
                f"Its options are: {', '.join(accepted) or '(none)'}."
            )
    missing = [n for n in accepted if params[n].default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"{what} needs option(s) {', '.join(missing)}; set them in the config.")
