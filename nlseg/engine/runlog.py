"""What a training run writes as it goes: console lines (also in ``train.log``), ``metrics.jsonl`` records and,
with ``train.tensorboard``, TensorBoard events; on the main process only."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nlseg.errors import ConfigError

__all__ = ["RunLog", "eta"]


class RunLog:
    """Console lines (also appended to ``train.log``), ``metrics.jsonl`` records and, when
    ``train.tensorboard`` is on, TensorBoard events; on the main process only."""

    def __init__(self, work_dir: Path, enabled: bool, tensorboard: bool) -> None:
        self.enabled = enabled
        self.metrics_path = work_dir / "metrics.jsonl"
        self.text = (work_dir / "train.log").open("a") if enabled else None
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError('train.tensorboard is true but tensorboard is not installed: pip install "nlseg[tb]"') from None
            self.writer = SummaryWriter(str(work_dir / "tb"))

    def record(self, kind: str, iteration: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"kind": kind, "iter": iteration, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{kind}/{key}", value, iteration)

    def print(self, text: str, *, console: bool = True) -> None:
        if self.enabled:
            if console:
                print(text, flush=True)
            self.text.write(text + "\n")
            self.text.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.text is not None:
            self.text.close()


def eta(seconds: float) -> str:
    """``1h02m`` or ``3m05s``."""
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
