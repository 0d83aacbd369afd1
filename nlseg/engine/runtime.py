"""Process-wide settings for a command that owns its process (the ``nlseg`` command line).

:func:`keep_freed_memory` tells glibc's ``malloc`` to keep freed memory for the next allocation. By default
glibc maps each block over its ``mmap`` threshold (at most 32 MiB) fresh from the kernel and unmaps it when it
is freed, so every activation map that large is page-faulted and zeroed again on every pass: about 1 GiB per
forward pass of a dilated ResNet-50 at 512 x 1024, 5-10 % of the pass's time on a CPU
(docs/efficiency.md, "Where the rest of the time goes"). The cost: the process keeps the memory of its
largest pass until it exits, instead of returning it between passes.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["KEEP_HEAP_ENV", "keep_freed_memory"]

KEEP_HEAP_ENV = "NLSEG_KEEP_HEAP"
"""Environment variable: ``0`` leaves glibc's allocator as it is."""

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` serve large blocks from its heap and keep freed ones (no ``mmap``/``munmap`` per
    large tensor, no trimming). Whether it applied: only on Linux with glibc, and not with ``NLSEG_KEEP_HEAP=0``.
    """
    if os.environ.get(KEEP_HEAP_ENV, "1").strip() == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
        return False  # not glibc (musl has no mallopt tunables)
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
