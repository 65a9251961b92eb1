"""Small shared types: the MISSING sentinel and the injectable clock."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Final, Literal

__all__ = ["MISSING", "Clock", "Missing", "wall_clock"]


class Missing(enum.Enum):
    """Type of :data:`MISSING`: "no value", so that ``None`` can be cached."""

    MISSING = enum.auto()

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> Literal[False]:
        return False


MISSING: Final = Missing.MISSING

Clock = Callable[[], float]
"""Returns the current wall-clock time in seconds (like :func:`time.time`)."""

wall_clock: Clock = time.time
