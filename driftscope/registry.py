"""One generic registry for everything that is chosen by name (algorithms, datasets, models, metrics).

A :class:`Registry` maps names to items in registration order. Looking up an unknown name raises a
one-line :class:`~driftscope.errors.ConfigError` that names the nearest valid name (by
:func:`difflib.get_close_matches`) and every choice, so a typo on the command line or in a config
file explains itself. Torch-free: registries are read while parsing arguments.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from collections.abc import Iterator
from typing import Generic, TypeVar

from driftscope.errors import ConfigError

T = TypeVar("T")

__all__ = ["Registry", "checking_names", "names_unchecked", "nearest"]

# False while configs are built without checking names against the registries: a stored config
# (a run file describes itself, whatever code made it) or one naming a user's own model/dataset
_CHECKING: contextvars.ContextVar[bool] = contextvars.ContextVar("checking_names", default=True)


@contextlib.contextmanager
def names_unchecked(unchecked: bool = True) -> Iterator[None]:
    """Inside this block (``unchecked`` True), configs are built without checking dataset, model
    and algorithm names against the registries (an unknown algorithm's params stay a dict)."""
    token = _CHECKING.set(_CHECKING.get() and not unchecked)
    try:
        yield
    finally:
        _CHECKING.reset(token)


def checking_names() -> bool:
    """Whether names are checked against the registries now (see :func:`names_unchecked`)."""
    return _CHECKING.get()


def nearest(name: str, choices: tuple[str, ...] | list[str]) -> str | None:
    """The valid name closest to ``name`` ignoring case (difflib ratio >= 0.6), or None."""
    folded = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(folded), n=1, cutoff=0.6)
    return folded[close[0]] if close else None


class Registry(Generic[T]):
    """Named items of one kind, in registration order.

    >>> r = Registry[int]("number"); r.register("one", 1)
    1
    >>> r.get("one")
    1
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        """Add ``item`` under ``name`` and return it; a name can be registered once."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string (got {name!r})")
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[name] = item
        return item

    def unregister(self, name: str) -> T:
        """Remove and return ``name`` (a plug-in unloaded, a test cleaning up after itself)."""
        if name not in self._items:
            raise KeyError(name)
        return self._items.pop(name)

    def get(self, name: str) -> T:
        """The item registered as ``name``; an unknown name is a :class:`ConfigError`."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise ConfigError(self.unknown_message(name)) from None

    def check(self, name: object) -> None:
        """An unknown name is a :class:`ConfigError`, unless names are not being checked
        (:func:`names_unchecked`: a stored config, a user's own objects)."""
        if checking_names() and name not in self._items:
            raise ConfigError(self.unknown_message(name))

    def unknown_message(self, name: object) -> str:
        """'unknown algorithm 'fedavgg': did you mean 'fedavg'? choose one of fedavg, ...'."""
        guess = nearest(name, self.names()) if isinstance(name, str) else None
        hint = f" did you mean '{guess}'?" if guess else ""
        return f"unknown {self.kind} '{name}':{hint} choose one of {', '.join(self.names())}"

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
