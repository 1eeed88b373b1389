"""A simulated Trackmaster treadmill on a pty: the far side of the Trackmaster driver's wire.

It answers the whole command and status table of docs/wire-protocols.md (section 1) byte for
byte, through the same codec the driver uses (:mod:`drivers.trackmaster_codec`), and moves a
:class:`simulator.belt.Belt`. The behaviour that matters for safety is modelled:

- **CDS**: after ``A0`` the belt's deadman is armed; when no byte arrives for 500 ms the belt
  decelerates and stops, the elevation goes back to 0 % and the treadmill reports "stopped"
  (a restart needs a new ``A0``). After ``A1`` there is no deadman: a dead host leaves the belt
  running, which is why the driver never sends ``A1``.
- **One-command input buffer**: a request is processed ``processing_delay_s`` after it arrives;
  one that arrives before then replaces the one waiting (``replaced`` lists the losers).
- **Model limits**: data out of range is answered ``BE``, an unknown command ``BF``, an unknown
  status request ``DF``; the echo flag (``AC``) sends a command's data back after its ack.
- **Set speed across a stop**: by default a stop clears the set speed and ``A3`` while stopped
  sets the speed the next ``A0`` starts at. ``TrackmasterModel(resume_last_speed=True)`` is a
  model that keeps its set speed through a stop and resumes at it on ``A0``;
  ``speed_while_stopped="ignore"`` makes it acknowledge ``A3`` while stopped without taking it.
- **CDS off in the treadmill's own setup**: ``TrackmasterModel(starts_with_cds=False)`` is a
  treadmill whose ``A0`` (and its own start button) starts the belt without the deadman: it
  reports ``D0 33`` while running, and a host that falls silent leaves the belt running.

Fault injection, switchable at run time for a while or for ever (:meth:`inject`): answer
``garbage``, ``partial`` frames, ``BE`` or ``BF`` to every request (the stop included), or stay
``silent``. A request answered so does not take effect (``execute=True`` lets it), but it still
reaches the treadmill and so still feeds the CDS deadman: only a host that falls silent lets the
CDS stop a treadmill that refuses its stop. ``line_delay_s`` delays every byte both ways;
``hold_replies()`` keeps every reply back until ``release_replies()`` (the host's next move
while an answer is outstanding, at a moment a test chooses).

The port is a pty in raw mode. ``open_port()`` makes a fresh one; ``close_port()`` closes it,
which the host sees as a hang-up, like a USB adapter pulled out (the slave path disappears).
``unplug()``/``plug()`` keep the pty but lose every byte in both directions, like a cut cable.
Because a new pty gets a new ``/dev/pts/N``, ``link_path`` gives the port a stable name (a
symlink, as udev gives ``/dev/treadmill``) that follows the device across restarts.

:func:`serve_trackmaster` is the body of ``treadguard sim-device trackmaster``: it prints the
port path on its first line, then a line each time its CDS deadman stops the belt
(``cds_stop silent_s=... belt_mph=...``) and one when the belt stands still after it
(``standstill after cds_stop``), and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import signal
import sys
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TextIO

from treadguard.drivers.trackmaster_codec import (
    DIGITS_MAX,
    EMERGENCY_TENTHS,
    BeltState,
    Command,
    CommandFrame,
    ErrorAnswer,
    MalformedCommand,
    Request,
    RequestDecoder,
    StatusQuery,
    StatusRequest,
    UnknownCommand,
    encode_ack,
    encode_belt_state,
    encode_error,
    encode_status_value,
    encode_unknown_status,
)
from treadguard.simulator.belt import Belt, BeltParams

# The treadmill's own clock: physics, the CDS deadman and the totals advance this often.
_TICK_S = 0.01
# Split replies go out one byte at a time, this far apart, so the host reads them in pieces.
_SPLIT_GAP_S = 0.002
_MPH_TO_M_PER_MIN = 26.8224
_LB_TO_KG = 0.45359237


@dataclass(frozen=True)
class TrackmasterModel:
    """The treadmill model's limits and timing (the simulator's defaults, not a real model's)."""

    min_speed_mph: float = 0.2  # A0 starts the belt at least this fast
    max_speed_mph: float = 12.0
    max_elevation_pct: float = 25.0
    elevation_rate_pct_s: float = 1.0
    max_protocol: int = 20
    max_stage: int = 30
    min_weight: int = 50
    max_weight: int = 500
    cds_timeout_s: float = 0.5
    processing_delay_s: float = 0.002
    # A model that keeps its set speed through a stop and restarts at it on A0.
    resume_last_speed: bool = False
    # What A3 does while the belt is stopped: "store" sets the speed A0 starts at; "ignore"
    # acknowledges it and keeps the old set speed.
    speed_while_stopped: Literal["store", "ignore"] = "store"
    # False: the CDS is off in the treadmill's own setup (a service setting, its firmware), so
    # A0 starts the belt without its deadman, as A1 would (the belt reports D0 33).
    starts_with_cds: bool = True


InjectionKind = Literal["garbage", "partial", "BE", "BF", "silent"]
INJECTION_KINDS: tuple[InjectionKind, ...] = ("garbage", "partial", "BE", "BF", "silent")
# Bytes that start no frame the host knows.
GARBAGE = bytes.fromhex("55 AA")
# The start of a speed answer whose remaining digits never come.
CUT_SHORT = bytes.fromhex("D1 30 30")


@dataclass(frozen=True)
class Injection:
    """What the treadmill answers instead of the truth, from ``since`` until ``until``."""

    kind: InjectionKind
    since: float
    until: float = math.inf
    execute: bool = False  # the request still takes effect although its answer is wrong


@dataclass(frozen=True)
class Received:
    t: float
    request: Request


@dataclass(frozen=True)
class Answered:
    t: float
    request: Request
    reply: bytes


@dataclass(frozen=True)
class CdsTrip:
    """A communication-disconnect stop: when it fired and when the last byte had arrived."""

    t: float
    last_rx_t: float


class TrackmasterDevice:
    """A simulated Trackmaster treadmill. Needs a running event loop from ``open_port()`` on."""

    def __init__(
        self,
        model: TrackmasterModel | None = None,
        *,
        belt_params: BeltParams | None = None,
        link_path: str | Path | None = None,
        line_delay_s: float = 0.0,
    ) -> None:
        self.model = model or TrackmasterModel()
        self._belt_params = belt_params or BeltParams()
        self._link_path = Path(link_path) if link_path is not None else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.belt = Belt(self._belt_params)

        # Treadmill state.
        self.running = False
        self.cds = False
        self.echo = False
        self.set_speed_mph = 0.0
        self.set_elevation_pct = 0.0
        self.elevation_pct = 0.0
        self.time_limit_min = 0.0
        self.protocol = 0
        self.stage = 0
        self.weight_lb = 150
        self.total_time_s = 0.0
        self.stage_time_s = 0.0
        self.distance_mi = 0.0
        self.calories_kcal = 0.0
        self._auto_stopping = False
        self._seen_trips = 0

        # Fault injection.
        self.report_emergency = False  # C1/C3 answer 999.9
        self.split_replies = False
        self.ignore_stop = False  # A2 is acknowledged (B2) but the belt runs on
        self.plugged = True
        # Replies held back (hold_replies()) until release_replies(); None: none held.
        self._held: list[bytes] | None = None
        self._overrides: dict[int, deque[bytes]] = {}
        self.injection: Injection | None = None
        if not (math.isfinite(line_delay_s) and line_delay_s >= 0):
            raise ValueError(f"line_delay_s {line_delay_s} must be a finite number >= 0")
        self.line_delay_s = line_delay_s  # every byte, both ways

        # What happened on the wire, for tests.
        self.rx = bytearray()
        self.dropped = bytearray()  # bytes that arrived while unplugged
        self.received: list[Received] = []
        self.answered: list[Answered] = []
        self.replaced: list[Request] = []
        self.cds_trips: list[CdsTrip] = []
        self.last_rx_t: float | None = None
        # (time, mph) of every speed the treadmill itself set its belt to.
        self.commanded: list[tuple[float, float]] = []
        # Called with each chunk read from the host and the loop time (benchmarks).
        self.on_rx: Callable[[bytes, float], None] | None = None
        # Told, in a line of text, what the treadmill did by itself: its CDS deadman stopping
        # the belt, and the belt standing still after it (sim-device prints these, so that a
        # test in another process can see the drive's own stop).
        self.on_own_stop: Callable[[str], None] | None = None
        self._awaiting_standstill = False

        self._master: int | None = None
        self._slave: int | None = None
        self._pty_path: str | None = None
        self._decoder = RequestDecoder()
        self._slot: Request | None = None
        self._process_handle: asyncio.TimerHandle | None = None
        self._split_handles: list[asyncio.TimerHandle] = []
        self._line_handles: list[asyncio.TimerHandle] = []
        self._physics: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()

    # --- the port ---------------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """The port a host opens: ``link_path`` if given, else the current pty's slave."""
        if self._link_path is not None:
            return str(self._link_path)
        if self._pty_path is None:
            raise RuntimeError("the device has no port open")
        return self._pty_path

    @property
    def pty_path(self) -> str | None:
        return self._pty_path

    @property
    def is_open(self) -> bool:
        return self._master is not None

    def open_port(self) -> str:
        """Open a fresh raw pty and serve on it; returns :attr:`path`."""
        if self._master is not None:
            raise RuntimeError("the port is already open")
        loop = self._ensure_started()
        master, slave = os.openpty()
        # Raw on both ends, or the line discipline rewrites bytes such as 0x03, 0x0D and 0x11.
        tty.setraw(master)
        tty.setraw(slave)
        os.set_blocking(master, False)
        # The device keeps the slave open too, so a host closing its port is not a hang-up here.
        self._master, self._slave = master, slave
        self._pty_path = os.ttyname(slave)
        self._decoder.reset()
        loop.add_reader(master, self._on_readable)
        if self._link_path is not None:
            tmp = self._link_path.with_name(self._link_path.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self._pty_path)
            tmp.replace(self._link_path)
        return self.path

    def close_port(self) -> None:
        """Close the pty: the host's port hangs up and the path disappears. The belt runs on."""
        if self._link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link_path.unlink()
        master, slave = self._master, self._slave
        self._master = self._slave = None
        self._pty_path = None
        if master is not None and self._loop is not None:
            self._loop.remove_reader(master)
        for fd in (master, slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._drop_pending_work()

    def unplug(self) -> None:
        """Cut the cable: bytes in both directions are lost until :meth:`plug`."""
        self.plugged = False
        self._drop_pending_work()

    def plug(self) -> None:
        self.plugged = True

    async def aclose(self) -> None:
        """Close the port and stop the treadmill's clock."""
        self.close_port()
        task, self._physics = self._physics, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> TrackmasterDevice:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _ensure_started(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            self.belt = Belt(self._params(cds=False), t0=loop.time())
        if self._physics is None:
            self._physics = loop.create_task(self._run_physics(), name="trackmaster-device")
        return loop

    def _drop_pending_work(self) -> None:
        for handle in (*self._split_handles, *self._line_handles):
            handle.cancel()
        self._split_handles.clear()
        self._line_handles.clear()
        if self._process_handle is not None:
            self._process_handle.cancel()
            self._process_handle = None
        self._slot = None
        self._decoder.reset()

    # --- fault injection and observation --------------------------------------------------------

    def override_reply(self, code: int, reply: bytes) -> None:
        """Answer the next request starting with byte ``code`` with ``reply`` instead (the
        request still takes effect): a wrong ack, garbage, a frame cut short."""
        self._overrides.setdefault(code, deque()).append(reply)

    def inject(
        self, kind: InjectionKind, *, for_s: float | None = None, execute: bool = False
    ) -> None:
        """From now on (for ``for_s`` seconds, or for ever) answer every request with ``kind``:
        ``garbage`` (bytes that are no frame), ``partial`` (a frame cut short that never ends),
        ``BE``/``BF`` (refused, the stop included) or ``silent`` (no answer). The request does
        not take effect unless ``execute``; it feeds the CDS deadman either way."""
        if kind not in INJECTION_KINDS:
            raise ValueError(f"unknown injection {kind!r}; one of {', '.join(INJECTION_KINDS)}")
        now = self._now()
        until = math.inf if for_s is None else now + for_s
        self.injection = Injection(kind, now, until, execute)
        self._notify()

    def clear_injection(self) -> None:
        self.injection = None
        self._notify()

    def _active_injection(self, now: float) -> Injection | None:
        injection = self.injection
        if injection is not None and now >= injection.until:
            self.injection = injection = None
        return injection

    def hold_replies(self) -> None:
        """From now on keep every reply back (the requests are still carried out), until
        :meth:`release_replies`: a slow line or a busy treadmill, at a moment a test chooses."""
        if self._held is None:
            self._held = []

    @property
    def holding(self) -> int:
        """How many replies are held back, waiting for :meth:`release_replies`."""
        return len(self._held) if self._held is not None else 0

    def release_replies(self) -> None:
        """Send the replies held back, in order, and answer normally from now on."""
        held, self._held = self._held, None
        for reply in held or ():
            self._send(reply)

    def press_stop(self) -> None:
        """The treadmill's own stop button."""
        self._stop(self._now(), emergency=True)

    def press_start(self) -> None:
        """The treadmill's own start button: the belt starts with CDS enabled (unless the
        model's setup has it off)."""
        self._start(self._now(), cds=self.model.starts_with_cds)
        self._notify()

    @property
    def belt_state(self) -> BeltState:
        if not self.running:
            return BeltState.STOPPED
        return BeltState.RUNNING_CDS if self.cds else BeltState.RUNNING_WITHOUT_CDS

    @property
    def pending_request(self) -> Request | None:
        """The request in the input buffer, received but not processed yet."""
        return self._slot

    def received_commands(self, command: Command) -> int:
        return sum(
            1
            for r in self.received
            if isinstance(r.request, CommandFrame | MalformedCommand)
            and r.request.command is command
        )

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
        """Wait for a condition on the device, re-checked whenever its state changes."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                changed = self._changed
                await changed.wait()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- bytes in, answers out -----------------------------------------------------------------

    def _on_readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # no slave open; cannot happen while we hold one
                return
            raise
        if not data:
            return
        if self.on_rx is not None:
            self.on_rx(data, self._now())
        if not self.plugged:
            self.dropped += data
            return
        if self.line_delay_s > 0:
            self._later(self.line_delay_s, self._arrive, data)
        else:
            self._arrive(data)

    def _arrive(self, data: bytes) -> None:
        """Bytes reach the treadmill's UART (after the line delay)."""
        if not self.plugged:
            self.dropped += data
            return
        now = self._now()
        self.rx += data
        for request in self._decoder.feed(data):
            # Every command or status request received is proof of life for the CDS, whether
            # it is carried out or not.
            self.last_rx_t = now
            self.belt.host_poll(now)
            self.received.append(Received(now, request))
            self._buffer(request)
        self._notify()

    def _later(self, delay_s: float, callback: Callable[[bytes], None], data: bytes) -> None:
        assert self._loop is not None
        handles = self._line_handles
        handles[:] = [h for h in handles if not h.cancelled() and h.when() > self._loop.time()]
        handles.append(self._loop.call_later(delay_s, callback, data))

    def _buffer(self, request: Request) -> None:
        """The one-command input buffer: a newer request overwrites one still waiting."""
        if self._slot is not None:
            self.replaced.append(self._slot)
        self._slot = request
        if self._process_handle is None and self._loop is not None:
            self._process_handle = self._loop.call_later(
                self.model.processing_delay_s, self._process
            )

    def _process(self) -> None:
        self._process_handle = None
        request, self._slot = self._slot, None
        if request is None:
            return
        now = self._now()
        self.belt.advance(now)
        injection = self._active_injection(now)
        if injection is not None:
            truth = self._answer(request, now) if injection.execute else b""
            reply = _injected_reply(injection.kind, truth)
        else:
            reply = self._answer(request, now)
        queued = self._overrides.get(_first_byte(request))
        if queued:
            reply = queued.popleft()
        self._send(reply)
        self.answered.append(Answered(now, request, reply))
        self._notify()

    def _send(self, reply: bytes) -> None:
        if not reply or not self.plugged:
            return
        if self._held is not None:
            self._held.append(reply)
            return
        if not self.split_replies or len(reply) == 1:
            self._write(reply)
            return
        self._write(reply[:1])
        assert self._loop is not None
        for i in range(1, len(reply)):
            handle = self._loop.call_later(_SPLIT_GAP_S * i, self._write, reply[i : i + 1])
            self._split_handles.append(handle)

    def _write(self, data: bytes) -> None:
        if self.line_delay_s > 0:
            self._later(self.line_delay_s, self._write_now, data)
        else:
            self._write_now(data)

    def _write_now(self, data: bytes) -> None:
        if self._master is None or not self.plugged:
            return
        # A host that does not read fills the pty; the rest is lost, as on an overrun UART.
        with contextlib.suppress(BlockingIOError):
            os.write(self._master, data)

    def _answer(self, request: Request, now: float) -> bytes:
        match request:
            case CommandFrame():
                return self._command(request, now)
            case StatusQuery():
                return self._status_answer(request)
            case MalformedCommand():
                return encode_error(ErrorAnswer.DATA_OUT_OF_RANGE)
            case UnknownCommand():
                return encode_error(ErrorAnswer.ILLEGAL_COMMAND)

    # --- commands ------------------------------------------------------------------------------

    def _command(self, frame: CommandFrame, now: float) -> bytes:
        handler = _HANDLERS[frame.command]
        error = handler(self, frame.number, now)
        if error is not None:
            return encode_error(error)
        return encode_ack(frame.command, frame.data if self.echo else b"")

    def _start_cds(self, _: int, now: float) -> ErrorAnswer | None:
        self._start(now, cds=self.model.starts_with_cds)
        return None

    def _start_without_cds(self, _: int, now: float) -> ErrorAnswer | None:
        self._start(now, cds=False)
        return None

    def _start(self, now: float, *, cds: bool) -> None:
        self.cds = cds
        self.belt.params = self._params(cds=cds)
        self.running = True
        self._auto_stopping = False
        self.set_speed_mph = max(self.set_speed_mph, self.model.min_speed_mph)
        self._command_belt(now, self.set_speed_mph)

    def _stop_command(self, _: int, now: float) -> ErrorAnswer | None:
        if not self.ignore_stop:
            self._stop(now, emergency=True)
        return None

    def _stop(self, now: float, *, emergency: bool) -> None:
        self.running = False
        self._auto_stopping = False
        if not self.model.resume_last_speed:
            self.set_speed_mph = 0.0
        if emergency:
            self.belt.host_emergency_stop(now)
            self.commanded.append((now, 0.0))
        else:
            self._command_belt(now, 0.0)

    def _command_belt(self, now: float, mph: float) -> None:
        self.belt.host_command(now, mph)
        self.commanded.append((now, mph))

    def _set_speed(self, raw: int, now: float) -> ErrorAnswer | None:
        if raw > round(self.model.max_speed_mph * 10):
            return ErrorAnswer.DATA_OUT_OF_RANGE
        if not self.running and self.model.speed_while_stopped == "ignore":
            return None
        self.set_speed_mph = raw / 10
        if self.running and not self._auto_stopping:
            self._command_belt(now, self.set_speed_mph)
        return None

    def _set_elevation(self, raw: int, _: float) -> ErrorAnswer | None:
        if raw > round(self.model.max_elevation_pct * 10) or raw % 5:
            return ErrorAnswer.DATA_OUT_OF_RANGE
        self.set_elevation_pct = raw / 10
        return None

    def _set_time(self, raw: int, _: float) -> ErrorAnswer | None:
        self.time_limit_min = raw / 10
        return None

    def _set_protocol(self, raw: int, _: float) -> ErrorAnswer | None:
        if raw > self.model.max_protocol:
            return ErrorAnswer.DATA_OUT_OF_RANGE
        self.protocol = raw
        return None

    def _set_stage(self, raw: int, _: float) -> ErrorAnswer | None:
        if raw > self.model.max_stage:
            return ErrorAnswer.DATA_OUT_OF_RANGE
        self.stage = raw
        self.stage_time_s = 0.0
        return None

    def _reset_totals(self, _: int, __: float) -> ErrorAnswer | None:
        self.distance_mi = self.total_time_s = self.calories_kcal = 0.0
        return None

    def _set_weight(self, raw: int, _: float) -> ErrorAnswer | None:
        if not self.model.min_weight <= raw <= self.model.max_weight:
            return ErrorAnswer.DATA_OUT_OF_RANGE
        self.weight_lb = raw
        return None

    def _auto_stop(self, _: int, now: float) -> ErrorAnswer | None:
        self._to_minimum(now)
        self._auto_stopping = self.running
        return None

    def _auto_cool_down(self, _: int, now: float) -> ErrorAnswer | None:
        self._to_minimum(now)
        return None

    def _to_minimum(self, now: float) -> None:
        self.set_elevation_pct = 0.0
        if self.running:
            self.set_speed_mph = self.model.min_speed_mph
            self._command_belt(now, self.set_speed_mph)

    def _toggle_echo(self, _: int, __: float) -> ErrorAnswer | None:
        self.echo = not self.echo
        return None

    # --- status --------------------------------------------------------------------------------

    def _status_answer(self, query: StatusQuery) -> bytes:
        request = query.request
        if request is None:
            return encode_unknown_status()
        if request is StatusRequest.BELT_STATE:
            return encode_belt_state(self.belt_state)
        return encode_status_value(request, min(DIGITS_MAX, max(0, self._status_raw(request))))

    def _status_raw(self, request: StatusRequest) -> int:
        speeds = (StatusRequest.ACTUAL_SPEED, StatusRequest.SET_SPEED)
        if self.report_emergency and request in speeds:
            return EMERGENCY_TENTHS
        values: dict[StatusRequest, float] = {
            StatusRequest.ACTUAL_SPEED: self.belt.speed_mph * 10,
            StatusRequest.ACTUAL_ELEVATION: self.elevation_pct * 10,
            StatusRequest.SET_SPEED: self.set_speed_mph * 10,
            StatusRequest.SET_ELEVATION: self.set_elevation_pct * 10,
            StatusRequest.STAGE_TIME: self.stage_time_s / 6,  # minutes and tenths
            StatusRequest.TOTAL_TIME: self.total_time_s / 6,
            StatusRequest.DISTANCE: self.distance_mi * 10,
            StatusRequest.PROTOCOL: self.protocol,
            StatusRequest.STAGE: self.stage,
            StatusRequest.WEIGHT: self.weight_lb,
            StatusRequest.CALORIES: self.calories_kcal,
            StatusRequest.VO2: self._vo2() * 10,
            StatusRequest.METS: self._vo2() / 3.5 * 10,
        }
        return round(values[request])

    def _vo2(self) -> float:
        """ml/kg/min by the ACSM walking equation: rest plus horizontal plus vertical work."""
        m_per_min = self.belt.speed_mph * _MPH_TO_M_PER_MIN
        return 3.5 + 0.1 * m_per_min + 1.8 * m_per_min * self.elevation_pct / 100

    # --- the treadmill's own clock --------------------------------------------------------------

    async def _run_physics(self) -> None:
        last = self._now()
        while True:
            await asyncio.sleep(_TICK_S)
            now = self._now()
            self.tick(now, now - last)
            last = now

    def tick(self, now: float, dt: float) -> None:
        self.belt.advance(now)
        if self.belt.deadman_trips != self._seen_trips:
            self._seen_trips = self.belt.deadman_trips
            self._cds_stop(now)
        if self._awaiting_standstill and self.belt.speed_mph <= 0.0:
            self._awaiting_standstill = False
            if self.on_own_stop is not None:
                self.on_own_stop("standstill after cds_stop")
        if self._auto_stopping and self._at_minimum():
            self._stop(now, emergency=False)
        self._move_elevation(dt)
        self._add_totals(dt)
        self._notify()

    def _at_minimum(self) -> bool:
        return self.elevation_pct == 0.0 and self.belt.speed_mph <= self.model.min_speed_mph + 0.05

    def _cds_stop(self, now: float) -> None:
        # Belt has already set its command to 0 and decelerates; the treadmill forgets the run.
        trip = CdsTrip(now, self.last_rx_t if self.last_rx_t is not None else 0.0)
        self.cds_trips.append(trip)
        if self.on_own_stop is not None:
            self.on_own_stop(
                f"cds_stop silent_s={trip.t - trip.last_rx_t:.2f} "
                f"belt_mph={self.belt.speed_mph:.2f}"
            )
            self._awaiting_standstill = True
        self.running = False
        self._auto_stopping = False
        if not self.model.resume_last_speed:
            self.set_speed_mph = 0.0
        self.set_elevation_pct = 0.0
        self.commanded.append((now, 0.0))

    def _move_elevation(self, dt: float) -> None:
        step = self.model.elevation_rate_pct_s * dt
        error = self.set_elevation_pct - self.elevation_pct
        self.elevation_pct = (
            self.set_elevation_pct
            if abs(error) <= step
            else self.elevation_pct + math.copysign(step, error)
        )

    def _add_totals(self, dt: float) -> None:
        if self.belt.speed_mph <= 0.0:
            return
        self.total_time_s += dt
        self.stage_time_s += dt
        self.distance_mi += self.belt.speed_mph * dt / 3600
        kcal_per_min = self._vo2() * self.weight_lb * _LB_TO_KG / 1000 * 5
        self.calories_kcal += kcal_per_min * dt / 60

    def _params(self, *, cds: bool) -> BeltParams:
        deadman = self.model.cds_timeout_s if cds else math.inf
        return replace(self._belt_params, deadman_s=deadman)

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0


_Handler = Callable[[TrackmasterDevice, int, float], ErrorAnswer | None]
_HANDLERS: dict[Command, _Handler] = {
    Command.START: TrackmasterDevice._start_cds,
    Command.START_WITHOUT_CDS: TrackmasterDevice._start_without_cds,
    Command.STOP: TrackmasterDevice._stop_command,
    Command.SET_SPEED: TrackmasterDevice._set_speed,
    Command.SET_ELEVATION: TrackmasterDevice._set_elevation,
    Command.SET_TIME: TrackmasterDevice._set_time,
    Command.SET_PROTOCOL: TrackmasterDevice._set_protocol,
    Command.SET_STAGE: TrackmasterDevice._set_stage,
    Command.RESET_TOTALS: TrackmasterDevice._reset_totals,
    Command.SET_WEIGHT: TrackmasterDevice._set_weight,
    Command.AUTO_STOP: TrackmasterDevice._auto_stop,
    Command.AUTO_COOL_DOWN: TrackmasterDevice._auto_cool_down,
    Command.TOGGLE_ECHO: TrackmasterDevice._toggle_echo,
}


def _injected_reply(kind: InjectionKind, truth: bytes) -> bytes:
    match kind:
        case "garbage":
            return GARBAGE
        case "partial":
            return truth[:-1] if len(truth) > 1 else CUT_SHORT
        case "BE":
            return encode_error(ErrorAnswer.DATA_OUT_OF_RANGE)
        case "BF":
            return encode_error(ErrorAnswer.ILLEGAL_COMMAND)
        case "silent":
            return b""


def _first_byte(request: Request) -> int:
    match request:
        case CommandFrame() | MalformedCommand():
            return int(request.command)
        case StatusQuery() | UnknownCommand():
            return request.code


async def serve_trackmaster(
    *,
    model: TrackmasterModel | None = None,
    belt_params: BeltParams | None = None,
    link_path: str | Path | None = None,
    line_delay_s: float = 0.0,
    inject: InjectionKind | None = None,
    inject_after_s: float = 0.0,
    inject_for_s: float | None = None,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve a simulated treadmill: print the port path as the first line of ``out`` (stdout),
    then serve until SIGTERM/SIGINT (or until ``stop`` is set), and close the port.

    ``inject`` turns a fault on ``inject_after_s`` after the port opens, for ``inject_for_s``
    (None: for ever); SIGUSR1 turns the same fault on (or off again) at any time."""
    if inject is not None and inject not in INJECTION_KINDS:
        raise ValueError(f"unknown injection {inject!r}; one of {', '.join(INJECTION_KINDS)}")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    async with TrackmasterDevice(
        model, belt_params=belt_params, link_path=link_path, line_delay_s=line_delay_s
    ) as device:
        kind = inject

        def toggle() -> None:
            if device.injection is not None:
                device.clear_injection()
            elif kind is not None:
                device.inject(kind, for_s=inject_for_s)

        stream = out or sys.stdout
        device.on_own_stop = lambda line: print(line, file=stream, flush=True)
        print(device.open_port(), file=stream, flush=True)
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, toggle)
        timer = loop.call_later(inject_after_s, toggle) if kind is not None else None
        try:
            await stop.wait()
        finally:
            if timer is not None:
                timer.cancel()
            for sig in (*signals, signal.SIGUSR1):
                loop.remove_signal_handler(sig)


if __name__ == "__main__":
    asyncio.run(serve_trackmaster())
