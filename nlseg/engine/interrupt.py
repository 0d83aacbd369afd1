"""Stopping a training run cleanly: SIGTERM and Ctrl-C save at the next iteration boundary, a second signal stops
at once, and the DataLoader workers leave the signals to the main process and are shut down whatever ends the loop.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from nlseg.engine.distributed import DistInfo

__all__ = ["StopSignals", "TrainingInterrupted", "ignore_stop_signals", "stop_workers"]


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start: leave Ctrl-C and SIGTERM to the main process, which stops cleanly."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def stop_workers(run: Any) -> None:
    """Shut the DataLoader workers of ``run`` (a :class:`nlseg.engine.trainer.Run`) down now, whatever ended the loop.

    They ignore SIGTERM (:func:`ignore_stop_signals`), so the interpreter's exit, which terminates and then
    joins them, would wait forever for workers left running after an error; shutting the iterator down
    sends them the end-of-work sentinel instead (PyTorch has no public call for it).
    """
    batches, run.batches = run.batches, iter(())
    shutdown = getattr(batches, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()


class TrainingInterrupted(Exception):
    """SIGTERM or Ctrl-C stopped training; ``last.pt`` holds the iteration named in the message.

    Attributes:
        exit_status: 128 + the signal number (143 for SIGTERM, 130 for SIGINT), the command's exit status.
    """

    def __init__(self, message: str, exit_status: int) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class StopSignals:
    """While active, SIGINT and SIGTERM only note the signal; training stops at the next iteration
    boundary after saving. A second signal stops at once (the last checkpoint stays). The previous
    handlers are restored on exit. Outside the main thread signals cannot be caught and are left alone."""

    def __init__(self, last_path: Path) -> None:
        self.last_path = last_path
        self.signum: int | None = None
        self.saved_iteration = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _note(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise TrainingInterrupted(
                f"interrupted again by {signal.Signals(signum).name}; stopped without saving; {self.last_path} "
                f"holds iteration {self.saved_iteration}", 128 + signum
            )
        self.signum = signum

    def requested(self, dist_info: DistInfo, device: torch.device) -> int | None:
        """The signal that asks to stop, agreed by every process (they must stop at the same iteration)."""
        if not dist_info.enabled:
            return self.signum
        flag = torch.tensor(self.signum or 0, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag) or None
