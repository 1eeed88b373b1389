"""What the driver tests share: a stand-in for the controller's tick, and bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from treadguard.drivers.base import DriveStatus, TreadmillDriver


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """A bounded poll for a driver condition that has no event of its own to await."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.005)


def status_of(driver: TreadmillDriver) -> DriveStatus:
    st = driver.status()
    assert st is not None
    return st


class ControlTicks:
    """What controller/control.py does to a driver on each 20 Hz tick: read the status, then
    command the target speed. A test changes ``target`` (and ``slowing``, the flag the
    controller passes with a decision that slows the belt); nothing here latches on a fault, so
    it is the worst case for "never restart on its own": it keeps asking for the old speed."""

    def __init__(self, driver: TreadmillDriver, target: float = 0.0) -> None:
        self.driver = driver
        self.target = target
        self.slowing = False
        self.ticks = 0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        while True:
            self.driver.status()
            self.driver.command_speed(self.target, slowing=self.slowing)
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
