"""The controller: feeds the safety core and carries out its decisions on the driver.

Everything here is synchronous and non-blocking, so the same code runs under asyncio in real
time and under the simulator's virtual clock. Inputs that can stop the belt (grip, fall, an
estop command) are handled the moment they arrive: :meth:`Controller.submit` asks the core and,
on an emergency stop, calls the driver before it returns (SR-13). Time-based rules (the grip
debounce, a sensor going silent) get a timer at the exact time the core says they fall due, so
they do not wait for the next 20 Hz tick either.

What hears of the core's events (the journal, the MQTT link, the daemon's policies) is attached
with :meth:`Controller.subscribe`, in the order it is to hear them, and each listener runs under
its own guard: one that raises is logged (at most once a second) and skips neither the
listeners after it nor the deadline timer, and never reaches the input's sender (SR-15).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from treadguard.drivers.base import DriveStatus, TreadmillDriver, failure_of
from treadguard.safety.core import SafetyCore
from treadguard.safety.decisions import Decision, Event, EventType, State
from treadguard.safety.inputs import DriveFeedback, Input, Tick


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
# Decides, before any listener hears of it, whether an event is delivered now (True) or held
# back (a refusal the daemon's coalescer counts instead, SR-14).
EventGate = Callable[[Event], bool]
LISTENER_LOG_EVERY_S = 1.0


@dataclass
class _Listener:
    name: str
    call: EventListener
    failures: int = 0
    logged_t: float = float("-inf")


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
        self._listeners: list[_Listener] = []
        self.gate: EventGate | None = None
        self._gate_health = _Listener("gate", lambda _ev: None)  # its failures, for the log
        self.stops: list[StopIssued] = []
        self._log = logger if logger is not None else structlog.get_logger("treadguard")
        self._deadline: float | None = None
        self._deadline_handle: TimerHandle | None = None
        self._last_status_t: float | None = None
        # The status the last tick read (the journal's top speed takes it from here rather
        # than asking the driver again).
        self.last_status: DriveStatus | None = None
        # Why the belt is held stopped whatever the core decides (a stop whose handling
        # failed), or None.
        self.held_stopped: str | None = None

    def hold_stopped(self, why: str) -> None:
        """A stop or estop whose handling failed: the core may never have heard of it, and its
        next decision could drive the belt again. Fail closed: an emergency stop now, and 0
        commanded on every input from now on, whatever the core decides, until the core
        itself is idle and wants 0. A core that never heard of the stop still runs its
        session; the held belt disagrees with it, SR-10's feedback check latches a fault, and
        the clinician's reset brings it back to idle. A core already idle, wanting 0 (the
        failure came before it acted), needs no hold: only a new accepted start moves it."""
        self.driver.emergency_stop()
        if self.core.state is State.IDLE and self.core.commanded == 0.0:
            return
        self.held_stopped = why

    def submit(self, event: Input) -> Decision:
        """Hand one input to the core and act on its decision at once."""
        decision = self.core.handle(event)
        if self.core.unchanged and self.held_stopped is None:
            # A reading or status that changed nothing but its stamp: the driver already has
            # this speed and the armed deadline is still the earliest (most inputs of a
            # session are these).
            return decision
        if decision.emergency_stop:
            self.driver.emergency_stop()
            issued = self.timers.time()
            latch = self.core.latch
            assert latch is not None
            self.stops.append(StopIssued(latch.cause.value, latch.since, issued))
        elif self.held_stopped is not None:
            self.driver.command_speed(0.0)
            if decision.state is State.IDLE and decision.speed_mph == 0.0:
                self._log.warning("held_stop_released", why=self.held_stopped)
                self.held_stopped = None
        else:
            # A decision whose target is below the speed it asks slows the belt: the driver
            # must not start a belt or raise a speed on its behalf (a start or a higher speed
            # it has queued would otherwise go out after the stop, H-11, H-14).
            slowing = decision.target_mph < decision.speed_mph
            self.driver.command_speed(decision.speed_mph, slowing=slowing)
        for ev in decision.events:
            self._publish(ev)
        self._arm_deadline()
        return decision

    def tick(self) -> Decision:
        """The periodic control tick: read the drive, let time pass in the core."""
        decision = None
        self.last_status = status = self.driver.status()
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

    def subscribe(self, listener: EventListener, *, name: str | None = None) -> None:
        """Attach a listener; listeners hear each event in the order they were attached."""
        label = name if name is not None else getattr(listener, "__qualname__", repr(listener))
        self._listeners.append(_Listener(label, listener))

    def publish(self, ev: Event) -> None:
        """Deliver one event to every listener, each under its own guard. For events that do
        not come from the core (a refusal made before it); the gate is not asked."""
        self._log.info(ev.type.value, t=round(ev.t, 3), **ev.fields)
        for listener in self._listeners:
            try:
                listener.call(ev)
            except Exception as exc:  # SR-15: the next listener and the deadline timer go on
                self._listener_failed(listener, ev, exc)

    def _publish(self, ev: Event) -> None:
        if ev.type in (EventType.ESTOP, EventType.FAULT) and self.stops:
            ev = Event(ev.type, ev.t, {**ev.fields, "stop_latency_ms": self.stops[-1].latency_ms})
        if self.gate is not None:
            try:
                deliver = self.gate(ev)
            except Exception as exc:  # a gate that fails holds nothing back
                self._listener_failed(self._gate_health, ev, exc)
                deliver = True
            if not deliver:
                return
        self.publish(ev)

    def _listener_failed(self, listener: _Listener, ev: Event, exc: Exception) -> None:
        listener.failures += 1
        now = self.timers.time()
        if now - listener.logged_t >= LISTENER_LOG_EVERY_S:
            listener.logged_t = now
            self._log.error(
                "listener_failed",
                listener=listener.name,
                on_event=ev.type.value,
                failures=listener.failures,
                error=repr(exc),
                traceback="".join(traceback.format_exception(exc)),
            )

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
