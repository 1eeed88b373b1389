"""An in-process driver for a simulated belt: no wire, the same interface as a real driver.

It depends only on the small :class:`SimulatedBelt` protocol, so the drivers package does not
import the simulator. Fault injection, for scenarios: ``unplug()`` cuts the link (commands are
lost and the status stops updating, exactly what the controller sees when a cable is pulled);
``report_fault()`` makes every status carry a drive fault; ``ignore_writes()`` makes the drive
answer polls but act on no command, a stop included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from treadguard.drivers.base import DriveStatus


class SimulatedBelt(Protocol):
    def host_command(self, t: float, mph: float) -> None: ...

    def host_emergency_stop(self, t: float) -> None: ...

    def host_poll(self, t: float) -> float: ...


class SimulatedDriver:
    def __init__(self, belt: SimulatedBelt, clock: Callable[[], float]) -> None:
        self._belt = belt
        self._clock = clock
        self._status: DriveStatus | None = None
        self._linked = True
        self._fault: str | None = None
        self._ignores_writes = False
        self.commanded_mph = 0.0
        # The speed last handed to the belt: a slowing ask never goes above it.
        self.told_mph = 0.0
        self.emergency_stops = 0

    def command_speed(self, mph: float, *, slowing: bool = False) -> None:
        if slowing:
            # drivers/base.py: never a start, never a higher speed on a slowing ask.
            mph = min(mph, self.told_mph)
        self.commanded_mph = mph
        if self._linked and not self._ignores_writes:
            self.told_mph = mph
            self._belt.host_command(self._clock(), mph)

    def emergency_stop(self) -> None:
        self.commanded_mph = 0.0
        self.emergency_stops += 1
        if self._linked and not self._ignores_writes:
            self.told_mph = 0.0
            self._belt.host_emergency_stop(self._clock())

    def status(self) -> DriveStatus | None:
        if self._linked:
            t = self._clock()
            self._status = DriveStatus(t=t, speed_mph=self._belt.host_poll(t), fault=self._fault)
        return self._status

    async def run(self) -> None:
        # Nothing to do in the background: every call reaches the belt directly.
        await asyncio.Event().wait()

    def unplug(self) -> None:
        self._linked = False

    def plug(self) -> None:
        self._linked = True

    def report_fault(self, detail: str | None) -> None:
        """Every status from now on carries ``detail`` as the drive's fault (None: healthy)."""
        self._fault = detail

    def ignore_writes(self, ignore: bool) -> None:
        self._ignores_writes = ignore
