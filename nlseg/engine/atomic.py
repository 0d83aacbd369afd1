"""Files replaced whole or not at all: written beside their place, synced, then renamed over it.

The temporary file is ``.<name>.<random>.tmp`` in the same folder (a rename within one file system is
atomic). It is created with mode 0o666 less the user's umask, as ``open`` creates files, so a checkpoint
is as readable as any other file the user writes (``tempfile.mkstemp`` would make it 0o600).
"""
from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import IO

from nlseg.errors import OutputError

__all__ = ["disk_full", "temp_name_pattern", "write_atomic"]


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


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` comes from a full disk or quota, also when a writer wrapped that OSError in its own error
    (``torch.save`` ends in ``RuntimeError: ... unexpected pos``, with the OSError as its context)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def write_atomic(path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, sync: bool = True) -> None:
    """Replace ``path`` by what ``write(f)`` writes into a binary file, all at once.

    A failure or a kill while writing leaves the previous file at ``path`` as it was; with ``sync`` (fsync
    before the rename) a power cut does too.

    Raises:
        OutputError: the disk (or the user's quota) is full; the message says the previous file is intact.
    """
    path = Path(path)
    existed = path.exists()
    try:
        fd, tmp = _create_beside(path)
    except OSError as err:
        if disk_full(err):
            raise _no_space(path, existed) from None
        raise
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if disk_full(err):
            raise _no_space(path, existed) from None
        raise


def _no_space(path: Path, existed: bool) -> OutputError:
    free = shutil.disk_usage(path.parent).free
    kept = f"the previous {path.name} is intact" if existed else f"no {path.name} was written"
    return OutputError(f"no space left writing {path} ({free / 2**20:.1f} MiB free in {path.parent}); {kept}")
