"""The real-time side: the asyncio control loop and a clock that may run faster than the wall.

``ScaledClock`` gives the controller seconds of "scenario time" on top of asyncio's monotonic
clock. At scale 1 (the daemon, the benchmarks) it is the wall clock; a demo may play at 10x.
"""

from __future__ import annotations

import asyncio
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
