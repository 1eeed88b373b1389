"""Two sources on one sensor (SR-8, SR-16): readings that change faster than any hand can.

A forged "held" published on a grip sensor's topic next to the real sensor's "released" makes
the sensor's readings alternate at the rate of the two streams together; the released time in
between can be too short for SR-4's count to reach its debounce. A hand on a handrail cannot
do that: the fastest alternating hand movements people manage are about 5 a second, and a
rehab patient holding a rail is far slower. So more than ``MAX_CHANGES`` changes of value
within ``WINDOW_S`` (6 changes in half a second: 6 grasp-release cycles a second) is taken as
two sources disagreeing, and the sensor counts as unsafe (grip lost, or fall) until its readings
have not changed for ``SETTLE_S``. Two streams at the 10 Hz of a sensor's reports change value
20 times a second, well past the bound; a forger slow enough to stay under it leaves the real
"released" standing most of the time, and SR-4's count stops the belt.

Pure: times arrive as arguments (the monotonic clock at arrival).
"""

from __future__ import annotations

from collections import deque

WINDOW_S = 0.5
MAX_CHANGES = 5
SETTLE_S = 2.0


class FlipGuard:
    """One sensor's readings in arrival order; :meth:`update` says whether the sensor is now
    to be taken as unsafe because its readings disagree."""

    def __init__(
        self,
        *,
        window_s: float = WINDOW_S,
        max_changes: int = MAX_CHANGES,
        settle_s: float = SETTLE_S,
    ) -> None:
        self._window_s = window_s
        self._max_changes = max_changes
        self._settle_s = settle_s
        self._last: bool | None = None
        self._changes: deque[float] = deque()
        self._last_change: float | None = None
        self.disagreeing = False

    def update(self, arrival: float, value: bool) -> bool:
        if self._last is not None and value != self._last:
            self._changes.append(arrival)
            self._last_change = arrival
        self._last = value
        while self._changes and self._changes[0] < arrival - self._window_s:
            self._changes.popleft()
        if len(self._changes) > self._max_changes:
            self.disagreeing = True
        elif (
            self.disagreeing
            and self._last_change is not None
            and arrival - self._last_change >= self._settle_s
        ):
            self.disagreeing = False
        return self.disagreeing

    @staticmethod
    def describe() -> str:
        return (
            f"readings change faster than a hand can (more than {MAX_CHANGES} changes within "
            f"{WINDOW_S:g} s): two sources on one sensor? unsafe until steady for {SETTLE_S:g} s"
        )
