"""Paths as a user writes them: ``~`` and ``$VAR`` expanded everywhere a path is read.

A shell expands ``~`` only at the start of a word (not in ``--work-dir=~/runs``, not in quotes) and never
inside a YAML recipe, so nlseg expands both itself: in every path argument of the command line
(:func:`path_arg`) and in every path field of a recipe (:data:`RECIPE_PATHS`, made absolute as well, so that
a run's ``config.yaml`` names the same files from any folder).
"""
from __future__ import annotations

import os
from typing import Any

__all__ = ["RECIPE_PATHS", "absolute_path", "absolute_recipe_paths", "expand_path"]

RECIPE_PATHS: tuple[str, ...] = ("data.root", "model.pretrained_backbone", "model.init_from")
"""The recipe fields that name files or folders."""

OR_NAMES: tuple[str, ...] = ("model.pretrained_backbone",)
"""The path fields that may hold a name instead (a published weights file, ``nlseg list weights``): a bare word
that names no file there stays as written."""


def expand_path(text: str) -> str:
    """``~``, ``~user``, ``$VAR`` and ``${VAR}`` expanded (an unset variable is left as written)."""
    return os.path.expanduser(os.path.expandvars(text))


def absolute_path(text: str) -> str:
    """:func:`expand_path`, then absolute against the current folder (``..`` folded, links not resolved)."""
    return os.path.abspath(expand_path(text))


def absolute_recipe_paths(cfg: Any) -> None:
    """Make every set field of :data:`RECIPE_PATHS` of a loaded recipe absolute (:func:`absolute_path`), in place."""
    for key in RECIPE_PATHS:
        section_name, name = key.split(".")
        section = getattr(cfg, section_name)
        value = getattr(section, name)
        if value and not (key in OR_NAMES and _bare_word(value)):
            setattr(section, name, absolute_path(value))


def _bare_word(text: str) -> bool:
    """No folder in it, no ``~`` or ``$``, and no such file here: a name, not a path."""
    seps = (os.sep, os.altsep or os.sep)
    return not any(c in text for c in (*seps, "~", "$")) and not os.path.exists(text)

