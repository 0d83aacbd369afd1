"""The measured blocks of a Markdown file: find them by their markers, replace one, write the file atomically.

A block is everything between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->``, each marker on a line of its
own; blocks do not nest and a name appears once per file.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

__all__ = ["MARKER", "begin", "end", "find_blocks", "replace_block", "rewrite_block"]

MARKER = re.compile(r"^<!-- (/?)bench:([A-Za-z0-9_.-]+) -->[ \t]*$", re.MULTILINE)


def begin(name: str) -> str:
    return f"<!-- bench:{name} -->"


def end(name: str) -> str:
    return f"<!-- /bench:{name} -->"


def find_blocks(text: str, where: str = "the text") -> dict[str, tuple[int, int]]:
    """Each block's name -> (start, stop) of its content: from after its begin marker to its end marker.

    Raises ValueError, naming ``where`` and the line, for an end without a begin, a begin without its end, a
    block inside another, or a name used twice.
    """
    blocks: dict[str, tuple[int, int]] = {}
    open_name, open_at, open_line = None, 0, 0
    for match in MARKER.finditer(text):
        closing, name = match.group(1) == "/", match.group(2)
        line = text.count("\n", 0, match.start()) + 1
        if not closing:
            if open_name is not None:
                raise ValueError(f"{where}:{line}: {begin(name)} inside block {open_name!r} (opened line {open_line})")
            if name in blocks:
                raise ValueError(f"{where}:{line}: block {name!r} appears twice")
            open_name, open_at, open_line = name, match.end(), line
        elif open_name != name:
            raise ValueError(f"{where}:{line}: {end(name)} without {begin(name)} before it")
        else:
            blocks[name] = (open_at, match.start())
            open_name = None
    if open_name is not None:
        raise ValueError(f"{where}:{open_line}: {begin(open_name)} has no {end(open_name)}")
    return blocks


def replace_block(text: str, name: str, body: str, where: str = "the text") -> str:
    """``text`` with block ``name``'s content replaced by ``body`` (a blank line on each side); KeyError if absent."""
    blocks = find_blocks(text, where)
    if name not in blocks:
        raise KeyError(f"{where} has no block {begin(name)}")
    start, stop = blocks[name]
    return text[:start] + "\n\n" + body.strip("\n") + "\n\n" + text[stop:]


def rewrite_block(path: Path, name: str, body: str) -> None:
    """Replace block ``name`` of the file at ``path`` with ``body``: written to a temporary file in the same
    folder, then renamed over the original, so a reader never sees half a file."""
    path = Path(path)
    text = replace_block(path.read_text(), name, body, str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
