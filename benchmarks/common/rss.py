"""The process's resident set from ``/proc/self/status`` (Linux): read it, and reset its high-water mark."""
from __future__ import annotations

import ctypes
import gc

__all__ = ["reset_peak_rss", "status_kib"]


def status_kib(key: str) -> int:
    """A ``/proc/self/status`` figure in KiB (``VmRSS``: resident now; ``VmHWM``: its high-water mark)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def reset_peak_rss() -> int:
    """Return freed heap to the system (``malloc_trim``), reset the high-water mark; the resident set in KiB."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return status_kib("VmRSS")
