"""A user error on one process of a ``torchrun`` job told by every process, in one line each.

Without this, a rank that stops on bad input leaves the others waiting in a collective until torchrun kills them,
and the terminal shows torchrun's report rather than the reason. :func:`on_every_rank` runs a start-up step on
every process, then all of them exchange their error lines (one ``all_gather_object``): when any rank failed,
every rank stops with a user error (exit status 2, one line): the failing rank with its own reason, rank 0 with
which ranks failed and why, the other ranks saying which rank stopped them.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch.distributed as dist

from nlseg.engine.distributed import DistInfo
from nlseg.errors import NlsegError

__all__ = ["RankFailed", "on_every_rank"]

T = TypeVar("T")


class RankFailed(NlsegError):
    """A user error on one or more processes of a distributed job."""


def on_every_rank(dist_info: DistInfo, step: Callable[[], T]) -> T:
    """``step()`` on this process; with several processes, stop all of them when any raised a user error.

    Raises:
        NlsegError: ``step``'s own error in a single process; :class:`RankFailed` in a distributed job.
    """
    if not dist_info.enabled:
        return step()
    error: NlsegError | None = None
    result = None
    try:
        result = step()
    except NlsegError as err:
        error = err
    lines: list[str | None] = [None] * dist_info.world_size
    dist.all_gather_object(lines, None if error is None else " ".join(str(error).split()))
    failed = [(rank, line) for rank, line in enumerate(lines) if line is not None]
    if not failed:
        return result
    if error is not None and not (dist_info.is_main and len(failed) > 1):
        raise RankFailed(f"rank {dist_info.rank} of {dist_info.world_size}: {lines[dist_info.rank]}") from None
    if dist_info.is_main:
        raise RankFailed("; ".join(f"rank {rank} of {dist_info.world_size} failed: {line}" for rank, line in failed))
    raise RankFailed(f"rank {dist_info.rank} of {dist_info.world_size}: stopped because rank "
                     f"{', '.join(str(rank) for rank, _ in failed)} failed")
