"""The controller: feeds the safety core and carries out its decisions on the driver.

Everything here is synchronous and non-blocking, so the same code runs under asyncio in real
time and under the simulator's virtual clock. Inputs that can stop the belt (grip, fall, an
estop command) are handled the moment they arrive: :meth:`Controller.submit` asks the core and,
on an emergency stop, calls the driver before it returns (SR-13). Time-based rules (the grip
debounce, a sensor going silent) get a timer at the exact time the core says they fall due, so
they do not wait for the next 20 Hz tick either.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from drivers.base import TreadmillDriver, failure_of
from safety.core import SafetyCore
from safety.decisions import Decision, Event, EventType
from safety.inputs import DriveFeedback, Input, Tick


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Timers(Protocol):
    """The part of an asyncio event loop the controller needs (VirtualLoop has it too)."""

    def time(self) -> float: ...

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle: ...


@dataclass(frozen=True)
class StopIssued:
    """An emergency stop handed to the driver: when its cause arose and when the stop went."""

    cause: str
    trigger_t: float
    issued_t: float

    @property
    def latency_ms(self) -> float:
        return max(0.0, (self.issued_t - self.trigger_t) * 1000.0)


EventListener = Callable[[Event], None]


class Controller:
    def __init__(
        self,
        core: SafetyCore,
        driver: TreadmillDriver,
        timers: Timers,
        *,
        logger: Any = None,
    ) -> None:
        self.core = core
        self.driver = driver
        self.timers = timers
        self.listeners: list[EventListener] = []
        self.stops: list[StopIssued] = []
        self._log = logger if logger is not None else structlog.get_logger("treadguard")
        self._deadline: float | None = None
        self._deadline_handle: TimerHandle | None = None
        self._last_status_t: float | None = None

    def submit(self, event: Input) -> Decision:
        """Hand one input to the core and act on its decision at once."""
        decision = self.core.handle(event)
        if decision.emergency_stop:
            self.driver.emergency_stop()
            issued = self.timers.time()
            latch = self.core.latch
            assert latch is not None
            self.stops.append(StopIssued(latch.cause.value, latch.since, issued))
        else:
            self.driver.command_speed(decision.speed_mph)
        for ev in decision.events:
            self._publish(ev)
        self._arm_deadline()
        return decision

    def tick(self) -> Decision:
        """The periodic control tick: read the drive, let time pass in the core."""
        decision = None
        status = self.driver.status()
        if status is not None and status.t != self._last_status_t:
            self._last_status_t = status.t
            # Every status with its health: one that still reports the fault keeps it from
            # counting as cleared (SR-6), and none counts as a healthy drive (SR-3).
            fault = None if status.fault is None else failure_of(status.fault)
            decision = self.submit(
                DriveFeedback(
                    t=status.t, speed_mph=status.speed_mph, fault=fault, detail=status.fault or ""
                )
            )
        now = self.timers.time()
        if decision is not None and self.core.now >= now:
            return decision  # feedback as fresh as the tick has already let time pass
        return self.submit(Tick(t=now))

    def _publish(self, ev: Event) -> None:
        if ev.type in (EventType.ESTOP, EventType.FAULT) and self.stops:
            ev = Event(ev.type, ev.t, {**ev.fields, "stop_latency_ms": self.stops[-1].latency_ms})
        self._log.info(ev.type.value, t=round(ev.t, 3), **ev.fields)
        for listener in self.listeners:
            listener(ev)

    def _arm_deadline(self) -> None:
        due = self.core.next_deadline()
        if due is None or (self._deadline is not None and self._deadline <= due):
            # The timer already armed wakes the core no later than needed; it re-arms then.
            # (Each sensor reading pushes its staleness deadline on: re-arming every time
            # would churn a timer per input.)
            return
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
        self._deadline = due
        self._deadline_handle = self.timers.call_at(due, self._on_deadline, due)

    def _on_deadline(self, due: float) -> None:
        self._deadline = None
        self._deadline_handle = None
        # The core is told the time the rule fell due; a late timer shows up as stop latency.
        self.submit(Tick(t=due))
