"""What a recipe field allows, written in its annotation: ``Range``, ``Length``, ``Square``, ``Ascending``,
``Pattern`` and the usual aliases (``PositiveInt``, ``Size``, ``Device``, ...); :func:`nlseg.config.field_rules`
lists every key's."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated


@dataclass(frozen=True)
class Range:
    """A number between ``low`` and ``high`` (None: unbounded on that side); ``*_open`` excludes the bound."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value: float) -> bool:
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'<' if self.high_open else '<='} {self.high:g}"


@dataclass(frozen=True)
class Length:
    """A list of ``least`` to ``most`` items (None: any number)."""

    least: int
    most: int | None = None

    def allows(self, value: list) -> bool:
        return len(value) >= self.least and (self.most is None or len(value) <= self.most)

    def __str__(self) -> str:
        if self.most == self.least:
            return f"a list of {self.least}"
        return f"a list of at least {self.least}" if self.most is None else f"a list of {self.least} to {self.most}"


@dataclass(frozen=True)
class Square:
    """An (H, W) pair; a single number means a square."""

    def allows(self, value: list) -> bool:
        return len(value) == 2

    def __str__(self) -> str:
        return "[H, W] or one number for a square"


@dataclass(frozen=True)
class Ascending:
    """A ``[low, high]`` range with ``low <= high``."""

    def allows(self, value: list) -> bool:
        return all(a <= b for a, b in zip(value, value[1:]))

    def __str__(self) -> str:
        return "[low, high] with low <= high"


@dataclass(frozen=True)
class Pattern:
    """A string matching ``regex`` in full; ``text`` says it in words."""

    regex: str
    text: str

    def allows(self, value: str) -> bool:
        return re.fullmatch(self.regex, value) is not None

    def __str__(self) -> str:
        return self.text


PositiveInt = Annotated[int, Range(1)]
NonNegativeInt = Annotated[int, Range(0)]
PositiveFloat = Annotated[float, Range(0, low_open=True)]
NonNegativeFloat = Annotated[float, Range(0)]
Size = Annotated[list[PositiveInt], Square()]
"""(H, W) in pixels; a single number means a square."""
Device = Annotated[str, Pattern(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")]
