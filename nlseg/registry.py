"""The one registry type: models, blocks, data sets and recipes are each a :class:`Registry` of named things.

A registry refuses a duplicate name, answers an unknown one with the closest match and the names it holds,
lists its names, and describes the keyword options of a registered callable from its signature. It imports
nothing of nlseg, so every layer can hold or read one.

The package's registries are instances here (:data:`MODELS`, :data:`BLOCKS`, :data:`DATASETS`, :data:`WEIGHTS`),
each with the ``location`` of the module that fills it: the first read imports that module (as mmengine's
registries do), so the recipe checks in :mod:`nlseg.config` ask a registry for names and option signatures
without importing the models or the data sets themselves.
"""
from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Generic, TypeVar

__all__ = ["BLOCKS", "DATASETS", "MODELS", "WEIGHTS", "Registry", "UnknownName", "did_you_mean", "keyword_options"]

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
        location: the module that registers the things (imported on the first read, not on a registration).
    """

    def __init__(self, kind: str, items: Mapping[str, T] | None = None, *, location: str | None = None) -> None:
        self.kind = kind
        self.location = location
        self._items: dict[str, T] = {}
        for name, item in (items or {}).items():
            self.register(name, item)

    @property
    def _filled(self) -> dict[str, T]:
        """The things, once the ``location`` module (which registers them) has been imported."""
        if self.location is not None:
            location, self.location = self.location, None
            importlib.import_module(location)
        return self._items

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
        if name not in self._filled:
            raise UnknownName(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; "
                f"registered {self.kind}s: {', '.join(self._items)}"
            )
        return self._items[name]

    def close(self, name: str, n: int = 3) -> list[str]:
        """Up to ``n`` registered names that look like ``name`` (case aside), closest first."""
        lowered = {known.lower(): known for known in self._filled}
        return [lowered[m] for m in difflib.get_close_matches(str(name).lower(), lowered, n=n, cutoff=0.5)]

    def names(self, *, sort: bool = False) -> list[str]:
        """The registered names, in registration order or sorted."""
        return sorted(self._filled) if sort else list(self._filled)

    def __getitem__(self, name: str) -> T:
        return self.lookup(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._filled)

    def __len__(self) -> int:
        return len(self._filled)

    def __contains__(self, name: object) -> bool:
        return name in self._filled


MODELS: Registry[Any] = Registry("model", location="nlseg.models")
"""Segmentation models by name: :class:`nlseg.models.zoo.ZooEntry` (the model table, with builders and paper figures)."""
BLOCKS: Registry[Any] = Registry("block", location="nlseg.blocks")
"""Context blocks by name, for ``nlseg.create_block``."""
DATASETS: Registry[Any] = Registry("data set", location="nlseg.data")
"""Data set classes by name (their class attributes say what they are: ``classes``, ``splits``, ``requires_root``)."""
WEIGHTS: Registry[Any] = Registry("weights file", location="nlseg.backbones.hub")
"""Published backbone weights by name (:mod:`nlseg.backbones.hub`)."""
