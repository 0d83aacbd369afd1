"""Loading a recipe: by name or path, with ``key=value`` overrides, every value checked once (its annotation,
then :data:`~nlseg.config.checks.CHECKS`); one :class:`ConfigError` line naming the file, the key and the value."""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml

from nlseg.config.checks import CHECKS, Purpose
from nlseg.config.rules import Square
from nlseg.config.schema import Config
from nlseg.errors import ConfigError
from nlseg.paths import absolute_recipe_paths
from nlseg.registry import Registry, UnknownName, did_you_mean


def config_dirs() -> list[Path]:
    """Folders searched for recipes by name: ``$NLSEG_CONFIG_DIR`` (os.pathsep-separated), then the
    recipes shipped in the package (``nlseg/configs``)."""
    dirs = [Path(p) for p in os.environ.get("NLSEG_CONFIG_DIR", "").split(os.pathsep) if p]
    return dirs + [Path(__file__).resolve().parent.parent / "configs"]


def recipes() -> Registry[Path]:
    """Every recipe file of :func:`config_dirs` by name; where two folders have a name, the first one's."""
    found: Registry[Path] = Registry("recipe")
    for folder in config_dirs():
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
            if path.stem not in found:
                found.register(path.stem, path)
    return found


def list_recipes() -> list[str]:
    """Names of the recipes found in :func:`config_dirs`."""
    return recipes().names(sort=True)


def _resolve(source: str | os.PathLike) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.is_file():  # a folder named like a recipe does not shadow it
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        return path
    try:
        return recipes().lookup(str(source))
    except UnknownName as err:
        raise ConfigError(f"{err} (searched {', '.join(map(str, config_dirs()))})") from None


@dataclass
class _Origin:
    """Where the values of some keys came from: ``--set`` when an override set each of them (or a section
    holding it), the file when none was touched, ``<file> with --set`` when both had a part."""

    source: str
    overridden: set[str] = field(default_factory=set)

    def __call__(self, *keys: str) -> str:
        if not self.overridden:
            return self.source
        whole = [any(k == o or k.startswith(o + ".") for o in self.overridden) for k in keys]
        part = [any(o.startswith(k + ".") for o in self.overridden) for k in keys]
        if all(whole):
            return "--set"
        return f"{self.source} with --set" if any(whole) or any(part) else self.source


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    keys = []
    for name, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            keys += _all_keys(hint, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _unknown_key(key: str, source: str) -> ConfigError:
    keys = _all_keys(Config)
    leaf = key.rsplit(".", 1)[-1]
    same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]  # the right key in another section
    known = keys + sorted({k.split(".")[0] + "." for k in keys if "." in k})
    close = same_leaf[:1] or difflib.get_close_matches(key if "." in key else key + ".", known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{source}: unknown config key {key!r}{hint}")


def _choice(value: Any, choices: tuple[str, ...], key: str, where: str) -> str:
    """A ``Literal`` choice; YAML reads ``off``/``no`` as False, which means ``off`` where that is a choice, and
    ``on``/``true`` as True, which means ``on`` where that is a choice (``eval.compile``)."""
    if value is False and "off" in choices:
        return "off"
    if value is True and "on" in choices:
        return "on"
    if isinstance(value, bool):
        others = [c for c in choices if c != "off"]
        raise ConfigError(f"{where}: {key} must be one of {', '.join(choices)}, got {str(value).lower()} "
                          f"(YAML reads on/yes/true as a boolean; use {' or '.join(others)})")
    if value not in choices:
        hint = did_you_mean(str(value), choices)
        raise ConfigError(f"{where}: {key} must be one of {', '.join(choices)}, got {value!r}{hint}")
    return value


def _coerce(value: Any, annotation: Any, key: str, where: str, rules: Sequence[Any] = ()) -> Any:
    """Check ``value`` against a field's annotation; ints are accepted for floats, a scalar for a ``Square`` pair.
    A float must be finite (``inf``, ``1e999`` and ``nan`` are refused, naming ``rules``, the allowed range)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        base, *rules = typing.get_args(annotation)
        if any(isinstance(r, Square) for r in rules) and isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]  # a square
        value = _coerce(value, base, key, where, rules)
        for rule in rules:
            if not rule.allows(value):
                raise ConfigError(f"{where}: {key} must be {rule}, got {value!r}")
        return value
    if origin is Literal:
        return _choice(value, typing.get_args(annotation), key, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(annotation)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: {key} must be a list, got {value!r}")
        return [_coerce(v, item, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if annotation is Any:
        return value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:
            value = float(value)  # YAML 1.1 reads "1e-2" as a string
        except ValueError:
            pass
    if annotation is float and isinstance(value, float) and not math.isfinite(value):
        allowed = " ".join(["a finite number", *map(str, rules)])
        raise ConfigError(f"{where}: {key} must be {allowed}, got {value!r}")
    if annotation in (int, float, str, bool) and not (
        isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    ):
        raise ConfigError(f"{where}: {key} must be {annotation.__name__}, got {value!r}")
    return value


def _build(cls: type, data: Any, *, prefix: str, origin: _Origin):
    if not isinstance(data, dict):
        section = prefix.rstrip(".")
        raise ConfigError(f"{origin(section)}: {section or 'the file'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise _unknown_key(f"{prefix}{key}", origin(f"{prefix}{key}"))
    values = {}
    for name, value in data.items():
        annotation, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, value, prefix=f"{key}.", origin=origin)
        else:
            values[name] = _coerce(value, annotation, key, origin(key))
    return cls(**values)


def _validated(data: dict[str, Any], origin: _Origin, purpose: Purpose) -> Config:
    """Every field's own rule, then the :data:`CHECKS` that apply to ``purpose``, in order."""
    config = _build(Config, data, prefix="", origin=origin)
    absolute_recipe_paths(config)  # ~ and $VAR expanded, and a run's config.yaml names its files from anywhere
    for check in CHECKS:
        if purpose in check.purposes:
            message = check.test(config)
            if message is not None:
                raise ConfigError(f"{origin(*check.keys)}: {message}")
    return config


def _set(tree: dict[str, Any], override: str) -> str:
    """Apply one ``key=value`` override to the recipe's nested mappings; returns the dotted key."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must read key=value, e.g. train.iters=1000")
    parts = key.strip().split(".")
    node: Any = tree
    cls: Any = Config
    for depth, part in enumerate(parts[:-1]):
        free = cls is None  # inside a free-form options mapping
        if not free:
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if part not in fields:
                raise _unknown_key(".".join(parts[: depth + 1]), "--set")
            hint = typing.get_type_hints(cls)[part]
            cls = hint if dataclasses.is_dataclass(hint) else None
            if cls is None and typing.get_origin(hint) is not dict and hint is not dict:
                raise ConfigError(f"--set: {'.'.join(parts[: depth + 1])} is not a section")
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set: {'.'.join(parts[: depth + 1])} must be a mapping, got {node!r}")
    if cls is not None and parts[-1] not in {f.name for f in dataclasses.fields(cls)}:
        raise _unknown_key(key, "--set")
    node[parts[-1]] = yaml.safe_load(text) if text.strip() else ""
    return ".".join(parts)


def load_config(
    source: str | os.PathLike, overrides: Sequence[str] = (), *, purpose: Purpose = "any"
) -> Config:
    """Load a recipe by name or path, apply ``key=value`` overrides, validate everything.

    Args:
        source: a recipe name (``nlseg list recipes``) or a YAML file path.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML (``0.01``, ``[769, 769]``, ``null``).
        purpose: ``any`` checks the recipe itself; ``eval`` also that the data set is on this machine;
            ``train`` also the device, TensorBoard and the weight files (see :data:`Purpose`).

    Raises:
        ConfigError: unknown recipe, unknown key (with the closest known key), a value of the wrong type or
            out of range, or a broken rule of :data:`CHECKS`; the message names the file or ``--set``.
    """
    path = _resolve(source)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    origin = _Origin(str(path))
    for override in overrides:
        origin.overridden.add(_set(data, override))
    return _validated(data, origin, purpose)


def validated(data: dict[str, Any], source: str) -> Config:
    """A config from nested mappings, every field's own rule and the ``any`` :data:`CHECKS` checked
    (:meth:`Config.from_dict`)."""
    return _validated(data, _Origin(source), "any")
