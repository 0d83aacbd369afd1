"""One training run at a time in a work dir: ``W/train.lock``, held with ``flock`` and holding the pid.

A second ``nlseg train`` (new, ``--resume`` or ``--overwrite``) on a work dir that a live run holds is refused
in one line naming the holder's pid, before it reads or moves anything there. A run removes the file as it
ends; the kernel releases a ``flock`` when its process dies, however it dies, so the file a killed run
leaves (with its pid) is simply taken over by the next run.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nlseg.errors import OutputError

__all__ = ["LOCK_NAME", "hold_work_dir"]

LOCK_NAME = "train.lock"


def _holder(fd: int) -> str:
    """The pid written in the lock file, as text ("unknown" while the holder has not written it yet)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 64).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


@contextmanager
def hold_work_dir(work_dir: str | os.PathLike, *, enabled: bool = True) -> Iterator[None]:
    """Hold ``work_dir``'s lock for the duration of the block (a no-op when not ``enabled``: the other
    processes of a distributed run, whose main process holds it).

    Raises:
        OutputError: a live process holds the lock; the message names its pid and the lock file.
    """
    if not enabled:
        yield
        return
    path = Path(work_dir) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise OutputError(
                f"--work-dir {work_dir} is in use by another training run (pid {pid}, lock {path}); wait for it to "
                f"end or stop it{f' (kill {pid})' if pid.isdigit() else ''}, or choose another --work-dir"
            ) from None
        if _same_file(fd, path):
            break
        os.close(fd)  # the holder we waited for removed this file as it ended: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held, so no one locks a file that is going away
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        here, opened = path.stat(), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (opened.st_dev, opened.st_ino)
