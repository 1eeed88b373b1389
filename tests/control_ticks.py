"""A stand-in for the controller's 20 Hz tick, for driver tests."""

from __future__ import annotations

import asyncio
import contextlib

from drivers.base import TreadmillDriver


class ControlTicks:
    """What controller/control.py does to a driver on each 20 Hz tick: read the status, then
    command the target speed. A test changes ``target``; nothing here latches on a fault, so
    it is the worst case for "never restart on its own": it keeps asking for the old speed."""

    def __init__(self, driver: TreadmillDriver, target: float = 0.0) -> None:
        self.driver = driver
        self.target = target
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self.driver.status()
            self.driver.command_speed(self.target)
            self.ticks += 1
            await asyncio.sleep(0.05)  # the tick period, not a wait for something

    async def __aenter__(self) -> ControlTicks:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
