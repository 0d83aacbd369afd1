"""Files replaced whole or not at all: written beside their place, synced, then renamed over it.

The temporary file is ``.<name>.<random>.tmp`` in the same folder (a rename within one file system is
atomic). It is created with mode 0o666 less the user's umask, as ``open`` creates files, so a checkpoint
is as readable as any other file the user writes (``tempfile.mkstemp`` would make it 0o600).
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO

__all__ = ["temp_name_pattern", "write_atomic"]


def temp_name_pattern(name: str) -> str:
    """The glob of the temporary files :func:`write_atomic` makes for a file called ``name``."""
    return f".{name}.*.tmp"


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new, empty file next to ``path`` (mode 0o666 & ~umask); its descriptor and path."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Replace ``path`` by what ``write(f)`` writes into a binary file, all at once.

    A failure or a crash while writing leaves the previous file at ``path`` as it was.
    """
    path = Path(path)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
