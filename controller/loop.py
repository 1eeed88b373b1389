"""The real-time side: the asyncio control loop and a clock that may run faster than the wall.

``ScaledClock`` gives the controller seconds of "scenario time" on top of asyncio's monotonic
clock. At scale 1 (the daemon, the benchmarks) it is the wall clock; a demo may play at 10x.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol


class ScaledClock:
    def __init__(self, loop: asyncio.AbstractEventLoop, scale: float = 1.0) -> None:
        if scale <= 0:
            raise ValueError("scale must be positive")
        self._loop = loop
        self.scale = scale
        self._wall0 = loop.time()

    @property
    def origin(self) -> float:
        """The event loop's clock at this clock's 0."""
        return self._wall0

    def time(self) -> float:
        return (self._loop.time() - self._wall0) * self.scale

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        return self._loop.call_at(self._wall0 + when / self.scale, callback, *args)

    def wall_delay(self, seconds: float) -> float:
        return seconds / self.scale


class LoopHealth:
    """How late the control ticks come: each tick's lag behind the period, the worst so far,
    how many were more than two periods late, and whether ``late_ticks_to_stop`` such ticks
    came within ``window_periods`` periods (``overrun``, for the caller to act on and clear).

    A window rather than "in a row": after a late tick the loop runs the next one at once (it
    skips what it missed rather than bursting), and that catch-up tick comes on time however
    badly the loop is being held up.
    """

    def __init__(
        self, period_s: float, *, late_ticks_to_stop: int, window_periods: int = 20
    ) -> None:
        self.period_s = period_s
        self.late_ticks_to_stop = late_ticks_to_stop
        self.window_s = window_periods * period_s
        self.last_lag_s = 0.0
        self.max_lag_s = 0.0
        self.late_ticks = 0
        self.overrun = False
        self._recent_late: deque[float] = deque()
        self._last_t: float | None = None

    def observe(self, t: float) -> None:
        if self._last_t is not None:
            lag = max(0.0, t - self._last_t - self.period_s)
            self.last_lag_s = lag
            self.max_lag_s = max(self.max_lag_s, lag)
            if lag > 2 * self.period_s:
                self.late_ticks += 1
                self._recent_late.append(t)
                while self._recent_late[0] < t - self.window_s:
                    self._recent_late.popleft()
                if len(self._recent_late) >= self.late_ticks_to_stop:
                    self.overrun = True
                    self._recent_late.clear()
        self._last_t = t

    def as_json(self) -> dict[str, float | int]:
        return {
            "lag_ms": round(self.last_lag_s * 1e3, 2),
            "max_lag_ms": round(self.max_lag_s * 1e3, 2),
            "late_ticks": self.late_ticks,
        }


class Ticking(Protocol):
    """What the loop drives: the Controller, or the daemon, which watches each tick too."""

    def tick(self) -> object: ...


async def run_control_loop(controller: Ticking, clock: ScaledClock, period_s: float) -> None:
    """Tick every ``period_s`` on deadlines (not sleep-after-work, which would drift).

    A tick that falls more than a period behind is skipped rather than run in a burst.
    """
    next_t = clock.time()
    while True:
        controller.tick()
        next_t += period_s
        now = clock.time()
        if now - next_t > period_s:
            next_t = now
        await asyncio.sleep(clock.wall_delay(max(0.0, next_t - now)))
