"""One measurement (:class:`Job`), what it found (:class:`Result`) and a table row of them (:class:`Row`).

A Job goes to its measuring process as JSON on the command line; the process prints its Result as JSON.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Job:
    """One measurement, run in its own process (``--worker`` takes it as JSON)."""

    side: str  # "nlseg" or "mmseg"
    network: str
    depth: int
    task: str  # "infer" or "train"
    lever: str  # a key of INFER_LEVERS / TRAIN_LEVERS, or "mmseg"
    size: tuple[int, int]
    batch: int
    repeats: int
    threads: int
    profile: bool = False
    device: str = "cpu"

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Job:
        fields = json.loads(text)
        return cls(**{**fields, "size": tuple(fields["size"])})


@dataclass
class Result:
    """One column's timed passes (seconds), peak MiB the pass adds, parameters (M) and GFLOPs, a profile, and the
    first (warm-up) pass's seconds, which for a compiled column include the compilation."""

    times: list[float]
    peak_mib: float
    params_m: float
    gflops: float | None = None
    profile: str | None = None
    first_s: float | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def compile_s(self) -> float | None:
        """The compilation's seconds: the first pass less a steady one (None without a first pass's time)."""
        return None if self.first_s is None else max(self.first_s - self.median, 0.0)

    def per_image(self, images: int) -> float:
        """Seconds per image over a run of ``images`` passes that compiles once: (compile + images x t) / images."""
        return self.median + (self.compile_s or 0.0) / images

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @classmethod
    def from_json(cls, text: str) -> Result:
        return cls(**json.loads(text))


@dataclass
class Row:
    """One table row: a network at a depth on a task, each column's result (None: failed or not run)."""

    network: str
    depth: int
    task: str
    results: dict[str, Result | None] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
