"""How much of a flood the log takes: at most so many lines a window, and past that their
number, told once the window has ended (SR-15: a flood must not flood the log, and nothing it
did goes untold).

The number is told when the window ends, not when the next line comes: a flood that stops
inside its window leaves nothing after it to carry the count. So the owner asks :meth:`due`
on every tick of its loop, and once more when it stops.

Pure: the caller passes its clock's time.
"""

from __future__ import annotations

import math

WINDOW_S = 1.0


class LogBudget:
    def __init__(self, per_window: int, window_s: float = WINDOW_S) -> None:
        if per_window < 1 or not window_s > 0:
            raise ValueError("a log budget lets at least one line a window through")
        self.per_window = per_window
        self.window_s = window_s
        self._start = -math.inf
        self._logged = 0
        self._held = 0

    def admit(self, now: float) -> bool:
        """Whether this one is logged; if not, it is counted. A window that has ended must be
        closed with :meth:`due` first, or its count goes into the next window's."""
        if not now - self._start < self.window_s:
            self._start, self._logged = now, 0
        if self._logged < self.per_window:
            self._logged += 1
            return True
        self._held += 1
        return False

    def due(self, now: float) -> int:
        """How many were not logged in a window that has ended by ``now`` (0 if none, or the
        window still runs); told once."""
        if self._held == 0 or now - self._start < self.window_s:
            return 0
        held, self._held = self._held, 0
        return held

    def flush(self) -> int:
        """Stopping: how many were not logged, the window ended or not; told once."""
        held, self._held = self._held, 0
        return held
