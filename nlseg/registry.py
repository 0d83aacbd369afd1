"""The one registry type: models, blocks, data sets and recipes are each a :class:`Registry` of named things.

A registry refuses a duplicate name, answers an unknown one with the closest match and the names it holds,
lists its names, and describes the keyword options of a registered callable from its signature. It imports
nothing of nlseg, so every layer (the recipe schema included) can hold or read one.
"""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["Registry", "UnknownName", "did_you_mean", "keyword_options"]

T = TypeVar("T")


class UnknownName(ValueError, KeyError):
    """A name no registry entry has: a ``ValueError`` for callers, a ``KeyError`` for ``Mapping`` semantics."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known`` to ``name``, or an empty string."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def keyword_options(builder: Callable[..., Any], *, skip: Iterable[str] = ()) -> dict[str, inspect.Parameter]:
    """The parameters of ``builder`` a caller may pass by keyword, by name, less those in ``skip``.

    Raises:
        TypeError: ``builder`` takes ``*args`` or ``**kwargs`` (a typo in an option would pass unseen).
    """
    params = inspect.signature(builder).parameters
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in params.values()):
        name = getattr(builder, "__name__", repr(builder))
        raise TypeError(f"{name} takes *args/**kwargs; registered builders need explicit options so typos fail")
    skip = set(skip)
    return {name: p for name, p in params.items() if name not in skip and p.kind is not p.POSITIONAL_ONLY}


class Registry(Mapping[str, T], Generic[T]):
    """Named things of one kind, in registration order.

    Args:
        kind: what a thing is called in messages ("model", "block", "data set", "recipe").
        items: things to register at once, by name.
    """

    def __init__(self, kind: str, items: Mapping[str, T] | None = None) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        for name, item in (items or {}).items():
            self.register(name, item)

    def register(self, name: str, item: T) -> T:
        """Add ``item`` as ``name`` and return it.

        Raises:
            ValueError: ``name`` is already registered.
        """
        if name in self._items:
            known = ", ".join(self._items)
            raise ValueError(f"{self.kind} {name!r} is already registered; registered {self.kind}s: {known}")
        self._items[name] = item
        return item

    def lookup(self, name: str) -> T:
        """The thing registered as ``name``.

        Raises:
            UnknownName: (a ValueError) the message gives the closest match and every registered name.
        """
        if name not in self._items:
            raise UnknownName(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; "
                f"registered {self.kind}s: {', '.join(self._items)}"
            )
        return self._items[name]

    def names(self, *, sort: bool = False) -> list[str]:
        """The registered names, in registration order or sorted."""
        return sorted(self._items) if sort else list(self._items)

    def __getitem__(self, name: str) -> T:
        return self.lookup(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
