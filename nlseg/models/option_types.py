"""Model option values against the types their builders declare: ``rectify=banana`` is refused by name.

A builder's keyword-only parameters, and the fields of :class:`~nlseg.models.base.BackboneOptions`, carry
annotations (``bool``, ``int``, ``tuple[int, ...] | None``, ``type[nn.Module]``, ...). A recipe's values
come from YAML or ``--set``, so they are plain Python values; :func:`option_error` says in one line which
one does not fit its annotation, before any model is built.
"""
from __future__ import annotations

import collections.abc
import functools
import math
import types
import typing
from typing import Any

from nlseg.models.base import BackboneOptions
from nlseg.models.registry import model_options
from nlseg.models.zoo import zoo_entry

__all__ = ["describe", "matches", "option_error", "option_types"]


@functools.lru_cache(maxsize=None)
def option_types(name: str) -> dict[str, Any]:
    """The annotation of every option of model ``name`` (``typing.Any`` where a builder declares none)."""
    builder = zoo_entry(name).builder
    func = builder.func if isinstance(builder, functools.partial) else builder
    hints = typing.get_type_hints(BackboneOptions) | typing.get_type_hints(func)
    return {key: hints.get(key, Any) for key in model_options(name)}


def matches(value: Any, annotation: Any) -> bool:
    """Whether a plain value (as YAML gives it) fits ``annotation``; an annotation not understood here fits all."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is Any:
        return True
    if annotation is type(None) or annotation is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is str:
        return isinstance(value, str)
    if origin is type:
        return isinstance(value, type) and (not args or not isinstance(args[0], type) or issubclass(value, args[0]))
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return all(matches(v, args[0]) for v in value) if args else True
    return True


def describe(annotation: Any) -> str:
    """``annotation`` as a reader of a recipe thinks of it: "true or false", "an integer", "a list of integers or null"."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (tuple, list, collections.abc.Sequence):
        inner = describe(args[0]) if args else "values"
        return "a list of " + inner.removeprefix("an ").removeprefix("a ") + "s"
    if origin is type:
        return f"a class ({args[0].__name__ if args and isinstance(args[0], type) else 'type'})"
    plain = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", type(None): "null"}
    return plain.get(annotation, getattr(annotation, "__name__", str(annotation)))


def option_error(name: str, key: str, value: Any) -> str | None:
    """One line when ``value`` does not fit the annotation of option ``key`` of model ``name``; None when it does."""
    annotation = option_types(name)[key]
    if matches(value, annotation):
        return None
    return f"model.options.{key} of {name} must be {describe(annotation)}, got {value!r}"
