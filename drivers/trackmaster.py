"""The Trackmaster serial driver: a Trackmaster (or compatible) treadmill on RS-232.

One task (:meth:`TrackmasterDriver.run`) owns the port and does the I/O; the controller's calls
(:meth:`command_speed`, :meth:`status`) only change or read state and wake that task, so they
never block (drivers/base.py). :meth:`emergency_stop` is the exception: it writes ``A2`` to the
port itself, at once (SR-13).

**When** a stop, a poll or a command goes out, and when the link falls silent, is decided by the
shared sans-I/O :class:`drivers.link_policy.LinkPolicy` (SR-9); this module is the transport: it
asks the policy, writes the bytes, matches the answers and tells the policy what came back.

The wire (docs/wire-protocols.md, section 1). The treadmill's input buffer holds one command: a
second one sent before the first is processed replaces it. So exactly one ordinary command or
status request is in flight, answered or timed out before the next. A stop may be written at any
time, because a stop replacing a pending command is what we want; after it nothing else is
written until its answer arrives (or its time-out), or the next request could replace the stop.

- **Stop** (``A2``): raised by an emergency stop, a controlled stop, a fault, every new
  connection, a belt found moving while the wanted speed is 0, and the driver being cancelled;
  repeated every ``poll_interval_s``, each followed by a status read, until a read begun after
  the latest ``A2`` reports the belt stopped (``D0 31``) at 0.0 mph. A treadmill that neither
  acknowledges an ``A2`` (``B2``) nor reports standstill within the stop-confirm bound gets
  silence: nothing at all on the wire for longer than its 500 ms communication-disconnect stop
  (CDS), so that the CDS stops the belt; then one ``A2`` and one status read, and silence again
  while it still does not confirm. Every request the treadmill receives, answered or not, feeds
  its CDS: polling a treadmill that refuses the stop would keep its belt running.
- **Start**, only from confirmed standstill: ``A3`` with the start speed while stopped, ``C3`` to
  read that set speed back, ``A0`` (CDS enabled; there is no way to send ``A1``), and ``C3``
  again. A model that keeps its last set speed through a stop and resumes at it on ``A0`` would
  otherwise jump to the last session's speed; one that does not take the ``A3`` while stopped
  is never started, and one that shows another speed after ``A0`` is stopped at once.
- **Speed** (``A3``) whenever the wanted speed in tenths differs from the last one acknowledged;
  **grade** (``A4``) when asked for. Commands and polls take turns.
- **A slowing ask** (``command_speed(mph, slowing=True)``, drivers/base.py) never starts the
  belt and never raises its speed: before ``A0`` is acknowledged it ends the start as a 0 ask
  does (an ``A0`` already on the wire is followed by ``A2`` as soon as it is answered), and on a
  running belt it drops a higher speed still queued and asks at most the speed last
  acknowledged.
- **Poll** ``C0`` (belt state) and ``C1`` (actual speed) every ``poll_interval_s`` (at most
  0.1 s), which keeps the CDS fed while we live and lets it fire when we die or fall silent.

Faults (``status().fault``):

- ``drive_fault: ...``: the treadmill refused a command (``BE``/``BF``), did not know a status
  request (``DF``), answered with garbage or a wrong ack, reports 999.9 mph (emergency stop or
  its speed loop not responding), runs with CDS disabled (``D0 33``), stopped the belt by
  itself, or does not hold the start speed. A refusal is never retried.
- ``drive_link: ...``: the port cannot be opened, hangs up or fails, or an answer does not
  arrive within ``ack_timeout_s`` (at most 300 ms). The driver publishes one status carrying the
  fault and then ``status().t`` stops advancing until a valid answer arrives again. A port that
  fails is closed and reopened with capped exponential back-off (a stop raised meanwhile makes
  the next open immediate); every new connection begins with ``A2``.

Never restart on its own. Any fault disarms the driver: ``A0`` is sent again only after the
controller has seen a healthy status from a live link, then asked for a stop
(``command_speed(0)`` or ``emergency_stop()``), then asked for a speed. A speed asked for before
a fault or a lost link is forgotten, never replayed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import termios
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from serial_asyncio_fast import SerialTransport, create_serial_connection

from treadguard.drivers.base import DriveStatus
from treadguard.drivers.link_policy import Action, LinkPolicy, PolicyParams, StopCause
from treadguard.drivers.trackmaster_codec import (
    Ack,
    BeltState,
    BeltStateReply,
    CodecError,
    Command,
    ErrorAnswer,
    ErrorReply,
    Garbage,
    Response,
    ResponseDecoder,
    StatusRequest,
    StatusValue,
    UnknownStatusReply,
    describe,
    elevation_tenths,
    encode_elevation,
    encode_speed,
    encode_start,
    encode_status_request,
    encode_stop,
    speed_tenths,
)
from treadguard.safety.link_limits import (
    DRIVE_LINK_TIMEOUT_S,
    DRIVE_MAX_POLL_INTERVAL_S,
    TRACKMASTER_ACK_TIMEOUT_S,
)

# Defined once, for check-config too.
MAX_POLL_INTERVAL_S = DRIVE_MAX_POLL_INTERVAL_S
# A dead link must show within this (SR-9): the longest an answer may take.
LINK_TIMEOUT_S = DRIVE_LINK_TIMEOUT_S
# docs/wire-protocols.md: with CDS enabled the treadmill stops the belt after 500 ms without a
# request.
CDS_TIMEOUT_S = 0.5
BAUD_RATES = (4800, 9600)
# Opening a port runs in a worker thread; a USB adapter that hangs must not hang us.
_OPEN_TIMEOUT_S = 2.0
# After garbage or a wrong answer: drop input until the line has been quiet this long.
_QUIET_S = 0.02

_STOP = encode_stop()
_POLL_STATE = encode_status_request(StatusRequest.BELT_STATE)
_POLL_SPEED = encode_status_request(StatusRequest.ACTUAL_SPEED)
_READ_SET_SPEED = encode_status_request(StatusRequest.SET_SPEED)

_log = logging.getLogger("treadguard.drivers.trackmaster")

Trace = Callable[[bool, bytes], None]
_T = TypeVar("_T")


class _LinkLost(Exception):
    """The port is gone; the message is the fault."""


class _Resync(Exception):
    """The answer stream is out of step (garbage, a wrong answer); the fault is already set."""


@dataclass(frozen=True, slots=True)
class _Broken:
    message: str
    link: bool  # True: the port is gone; False: a protocol error


_Outcome = Response | _Broken


@dataclass(slots=True)
class _Pending:
    frame: bytes
    future: asyncio.Future[_Outcome]
    # A stop was written after this request: its B2 may answer it instead.
    superseded: bool = False


@dataclass(frozen=True, slots=True)
class _OwedAnswer:
    """An ``A2`` on the wire whose answer has not arrived: the policy's token for it, and the
    loop time after which it counts as unanswered."""

    token: int
    deadline: float


class _Port(asyncio.Protocol):
    def __init__(self, on_data: Callable[[bytes], None], on_lost: Callable[[str], None]) -> None:
        self._on_data = on_data
        self._on_lost = on_lost
        self.detached = False

    def data_received(self, data: bytes) -> None:
        if not self.detached:
            self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.detached:
            self._on_lost(f"port closed: {exc}" if exc is not None else "port closed")


class TrackmasterDriver:
    """A :class:`drivers.base.TreadmillDriver` for a Trackmaster treadmill on a serial port."""

    def __init__(
        self,
        port: str,
        *,
        baud: int = 4800,
        poll_interval_s: float = MAX_POLL_INTERVAL_S,
        ack_timeout_s: float = TRACKMASTER_ACK_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        min_belt_mph: float = 0.2,
        reconnect_initial_s: float = 0.05,
        reconnect_max_s: float = 1.0,
        trace: Trace | None = None,
    ) -> None:
        """``clock`` stamps statuses on the controller's monotonic clock. ``ack_timeout_s``
        bounds each answer. ``trace(sending, data)`` sees every write and every chunk read
        (diagnostics, benchmarks)."""
        _check_arguments(
            port, baud, poll_interval_s, ack_timeout_s, min_belt_mph,
            reconnect_initial_s, reconnect_max_s,
        )  # fmt: skip
        self._port_name = port
        self._baud = baud
        self._ack_timeout_s = ack_timeout_s
        self._clock = clock
        self._min_belt_mph = min_belt_mph
        self._trace = trace
        # The rules; its times are the event loop's (time.monotonic, as loop.time()).
        self._policy = LinkPolicy(
            PolicyParams(
                poll_interval_s=poll_interval_s,
                deadman_s=CDS_TIMEOUT_S,
                reconnect_initial_s=reconnect_initial_s,
                reconnect_max_s=reconnect_max_s,
            ),
            time.monotonic(),
        )

        # What the controller asked for, in tenths of a mph; 0 = stop.
        self._wanted = 0
        self._last_ask_slowing = False
        # Elevation asked for and last acknowledged, in tenths of a percent (None: not asked).
        self._wanted_elevation: int | None = None
        self._sent_elevation: int | None = None
        self._armed = False
        self._healthy_seen = False
        self._seq = 0

        # The link.
        self._transport: SerialTransport | None = None
        self._port: _Port | None = None
        self._decoder = ResponseDecoder()
        self._pending: _Pending | None = None
        self._owed: deque[_OwedAnswer] = deque()  # A2s written, answers not yet in
        self._stray_stop_acks = 0  # B2s that may still come for A2s already settled
        self._lost_reason: str | None = None
        self._needs_resync = False
        self._draining = False
        self._rx_seen = asyncio.Event()
        self._wake = asyncio.Event()
        self._live = False
        self._ever_live = False
        self._said_unreachable = False  # the first failure to reach it, said
        self._last_answer_t = 0.0  # the newest valid answer, on the controller's clock

        # What the treadmill was told and what it reports.
        self._running_sent = True  # unknown counts as running
        self._sent_tenths: int | None = None
        self._belt_state: BeltState | None = None
        self._speed_mph = 0.0

        # status() and its faults.
        self._status: DriveStatus | None = None
        self._event_fault: str | None = None
        self._event_fault_seen = False
        self._event_fault_seq = 0
        self._condition_fault: str | None = None

        # Counters for tests and diagnostics.
        self.connect_attempts = 0
        self.stop_writes = 0
        self.start_writes = 0
        self.speed_writes = 0
        self.emergency_stops = 0
        self.ignored_run_commands = 0
        # Every belt state a poll reported (C0): a state the driver faults on is gone from
        # status() by the next poll, and the doctor reads the CDS back from here.
        self.belt_states_seen: set[BeltState] = set()

    # --- the controller's side (never blocks) -------------------------------------------------

    def command_speed(self, mph: float, *, slowing: bool = False) -> None:
        if not math.isfinite(mph) or mph < 0:
            self._set_event_fault(f"drive_command: speed {mph} mph refused; stopping")
            return
        if mph < self._min_belt_mph:
            self._want_stop()
        else:
            try:
                tenths = speed_tenths(mph)
            except CodecError as exc:
                self._set_event_fault(f"drive_command: {exc}; stopping")
                return
            if self._armed and slowing and not self._runs_on_the_wire():
                # A slowing ask never starts the belt: a start not yet fully written (no A0
                # acknowledged) ends between its steps, as for a 0 ask (H-14).
                self._want_stop()
            elif self._armed:
                self._last_ask_slowing = slowing
                if slowing:
                    # Nor does it raise the speed: a higher one still queued is dropped, and
                    # what goes out is at most the speed last acknowledged (H-11).
                    tenths = min(tenths, self._slowing_cap())
                if tenths == 0:
                    self._want_stop()
                else:
                    self._wanted = tenths
                    self._policy.want(_now(), moving=True)
            else:
                # No start before the controller has seen the link healthy and asked for a stop.
                self._wanted = 0
                self._policy.want(_now(), moving=False)
                self.ignored_run_commands += 1
        self._wake.set()

    def _runs_on_the_wire(self) -> bool:
        """The treadmill acknowledged A0 since its last confirmed standstill, and no stop has
        been raised since."""
        return self._running_sent and not self._policy.stop_raised

    def _slowing_cap(self) -> int:
        """The most a slowing ask may write on a running belt: the speed last acknowledged,
        or, not known, the speed asked for before."""
        if self._sent_tenths is not None:
            return self._sent_tenths
        return self._wanted

    def command_elevation(self, percent: float) -> None:
        """Ask for this grade (0.5 % steps, A4). Not part of any stop: a grade never moves the
        belt, and one the treadmill refuses is a fault, not retried. Raises CodecError for a
        value off the 0.5 % grid or out of the 4-digit range."""
        self._wanted_elevation = elevation_tenths(percent)
        self._wake.set()

    def emergency_stop(self) -> None:
        """Write ``A2`` to the port now, ahead of anything queued (SR-13), unless the policy
        keeps the link silent; the I/O task then repeats it until the belt is stopped."""
        self.emergency_stops += 1
        self._wanted = 0
        self._arm_if_healthy()
        now = _now()
        self._policy.want(now, moving=False)
        self._policy.raise_stop(now, StopCause.EMERGENCY)
        if self._policy.next(now).action is Action.STOP:
            self._write_stop_now()
        self._wake.set()

    def status(self) -> DriveStatus | None:
        st = self._status
        if st is not None:
            if st.fault is not None and st.fault == self._event_fault:
                self._event_fault_seen = True
            if st.fault is None and self._live:
                self._healthy_seen = True
        return st

    @property
    def link_up(self) -> bool:
        return self._live

    @property
    def stopping(self) -> bool:
        """True until the treadmill has confirmed the standstill that was last asked for."""
        return self._policy.stop_raised

    @property
    def silent(self) -> bool:
        """True while the driver keeps the wire silent so that the treadmill's CDS trips."""
        return self._policy.silent

    def _write_stop_now(self) -> bool:
        """``A2`` onto the wire now, dropping whatever has not gone out yet; False: no port."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False  # no port: the stop makes the next connection due at once
        # Drop whatever has not gone out yet (our buffer, then the OS's): a command cut short
        # is refused or replaced by the treadmill, and the stop goes out next.
        transport.flush()
        serial = transport.serial
        if serial is not None:
            try:
                serial.reset_output_buffer()
            except (OSError, termios.error) as exc:
                _log.debug("could not flush the output buffer: %s", exc)
        self._write(transport, _STOP)
        pending = self._pending
        if pending is not None:
            pending.superseded = True
        return True

    # --- the I/O task -------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                try:
                    await self._step()
                except _LinkLost as exc:
                    self._port_lost(str(exc))
                except Exception as exc:
                    # Retry forever (SR-9): an unexpected error is a lost link, logged with its
                    # traceback, not the end of the driver; the stop goes out on the port that
                    # is still open before it is closed.
                    _log.exception("unexpected error on the treadmill link")
                    self._stop_on_the_way_out(StopCause.FAULT)
                    self._port_lost(f"drive_link: unexpected error: {exc!r}")
        finally:
            # Cancelled (shutdown, a crashed sibling task): the stop goes out before the port
            # closes.
            self._stop_on_the_way_out(StopCause.CLOSING)
            self._close_port()
            self._live = False

    def _stop_on_the_way_out(self, cause: StopCause) -> None:
        """``A2`` now, on the port still open, unless the link is being kept silent for the
        CDS (the closed port then keeps it silent for good). Never raises: it runs on the way
        out of an error or a cancellation."""
        try:
            self._policy.raise_stop(_now(), cause)
            if not self._policy.silent:
                self._write_stop_now()
        except Exception:
            _log.exception("could not write the stop on the way out")

    async def _step(self) -> None:
        self._wake.clear()
        if self._needs_resync:
            await self._resync()
        loop = asyncio.get_running_loop()
        now = loop.time()
        decision = self._policy.next(now, command_pending=self._command_pending())
        if (silence := self._policy.new_silence()) is not None:
            _log.warning("drive_link: %s", silence)
        try:
            match decision.action:
                case Action.CONNECT:
                    await self._connect_once()
                case Action.STOP:
                    await self._send_stop()
                case Action.POLL:
                    await self._poll()
                case Action.COMMAND:
                    await self._send_command()
                case Action.WAIT | Action.SILENT:
                    await self._sleep_until(decision.at)
        except _Resync:
            await self._resync()

    async def _sleep_until(self, at: float) -> None:
        """Until ``at`` (loop time) or an event (a stop, a command, a lost port)."""
        left = at - asyncio.get_running_loop().time()
        if left <= 0:
            return
        if math.isinf(left):
            await self._wake.wait()
            return
        try:
            async with asyncio.timeout(left):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _connect_once(self) -> None:
        """One connection attempt; a failed one is reported to the policy, which decides when
        the next is due (at once if a stop was raised while this one was under way)."""
        try:
            await self._connect()
        except _LinkLost as exc:
            self._port_lost(str(exc))

    async def _connect(self) -> None:
        self.connect_attempts += 1
        self._lost_reason = None
        self._decoder.reset()
        self._owed.clear()
        self._stray_stop_acks = 0
        loop = asyncio.get_running_loop()
        port = _Port(self._on_bytes, self._on_port_lost)
        opening = asyncio.ensure_future(
            create_serial_connection(
                loop,
                lambda: port,
                self._port_name,
                baudrate=self._baud,
                bytesize=8,
                parity="N",
                stopbits=1,
                # Two processes driving one treadmill would defeat every rule here.
                exclusive=True,
            )
        )
        try:
            async with asyncio.timeout(_OPEN_TIMEOUT_S):
                transport, _ = await asyncio.shield(opening)
        except TimeoutError as exc:
            opening.add_done_callback(_close_late_opening)
            raise _LinkLost(f"drive_link: opening {self._port_name} timed out") from exc
        except OSError as exc:  # serial.SerialException is an OSError
            raise _LinkLost(f"drive_link: cannot open {self._port_name}: {exc}") from exc
        except asyncio.CancelledError:
            opening.add_done_callback(_close_late_opening)
            raise
        self._transport, self._port = transport, port
        # Whatever the treadmill was doing, it is told to stop before anything else.
        self._needs_resync = False
        self._running_sent = True
        self._sent_tenths = None
        self._belt_state = None
        self._policy.connected(loop.time())

    def _close_port(self) -> None:
        """Close the port synchronously, so a cancelled run() leaves nothing open."""
        transport, port = self._transport, self._port
        self._transport = self._port = None
        if port is not None:
            port.detached = True
        # A transport that is already closing (the port hung up) closes its port itself;
        # a second close would race it.
        if transport is not None and not transport.is_closing():
            serial = transport.serial
            transport.abort()
            if serial is not None:
                try:
                    serial.close()
                except OSError as exc:
                    _log.debug("closing %s: %s", self._port_name, exc)
        self._owed.clear()
        self._fail_waiters(_Broken("drive_link: port closed", link=True))

    def _command_pending(self) -> bool:
        wanted_grade = self._wanted_elevation
        if wanted_grade is not None and wanted_grade != self._sent_elevation:
            return True
        if not self._armed or self._wanted == 0:
            return False
        return not self._running_sent or self._sent_tenths != self._wanted

    # --- requests -----------------------------------------------------------------------------

    async def _send_stop(self) -> None:
        answer = await self._request(_STOP)
        if isinstance(answer, ErrorReply):
            self._set_event_fault(f"drive_fault: treadmill refused stop ({_error_name(answer)})")

    async def _send_command(self) -> None:
        """One command the policy let through: a grade, the start, or a new speed."""
        wanted_grade = self._wanted_elevation
        if wanted_grade is not None and wanted_grade != self._sent_elevation:
            await self._send_elevation(wanted_grade)
        elif not self._armed or self._wanted == 0:
            return
        elif not self._running_sent:
            await self._start()
        elif self._sent_tenths != self._wanted:
            await self._send_speed(self._wanted)

    async def _start(self) -> None:
        """From confirmed standstill: the start speed first, read back, then A0, read back.

        The order matters on a model that keeps its set speed through a stop and resumes at it
        on A0: started first and corrected after, it would run towards the last session's
        speed for a round trip. The protocol's sources do not say what every model does with A3
        while stopped, so the set speed is read back (C3) before A0 and again after it: A0 goes
        out only if the set speed is at most the start speed, and a belt set faster after A0 is
        stopped at once. A model that ignores A3 while stopped and starts at its minimum is
        brought up to the start speed by the next A3."""
        tenths = self._wanted
        if not await self._send_speed(tenths) or not self._still_starting(tenths):
            return
        before = await self._set_speed_at_most(tenths, "before start")
        if before is None or not self._still_starting(tenths):
            return
        answer = await self._request(encode_start())
        if answer == Ack(Command.START):
            self._running_sent = True
            self.start_writes += 1
            self._policy.command_written(_now(), moves_belt=True)
            if self._wanted == 0 or self._policy.stop_raised:
                # A stop (a 0 or slowing ask) came while A0 was on the wire: the belt may now
                # move, so the wish for 0 raises the stop, and it goes out next, unread.
                self._policy.want(_now(), moving=False)
                return
            # What the belt now runs at; a lower one gets A3 next.
            self._sent_tenths = await self._set_speed_at_most(tenths, "after start")
            if self._last_ask_slowing and self._sent_tenths is not None:
                # A slowing ask came during the read-back: never above what the belt runs at.
                self._wanted = min(self._wanted, self._sent_tenths)
        elif isinstance(answer, ErrorReply):
            self._set_event_fault(f"drive_fault: treadmill refused start ({_error_name(answer)})")
        # A B2 instead: an emergency stop replaced the start; nothing to record.

    def _still_starting(self, tenths: int) -> bool:
        return not self._policy.stop_raised and self._armed and self._wanted == tenths

    async def _set_speed_at_most(self, tenths: int, when: str) -> int | None:
        """The set speed (C3) in tenths if it is at most ``tenths``; else a fault and None."""
        answer = await self._request(_READ_SET_SPEED)
        if answer is None or answer == Ack(Command.STOP):
            return None
        if not isinstance(answer, StatusValue):
            self._poll_failed(_READ_SET_SPEED, answer)
            return None
        if answer.raw > tenths:
            self._set_event_fault(
                f"drive_fault: treadmill set speed reads {answer.raw / 10:.1f} mph {when}, "
                f"above the {tenths / 10:.1f} mph asked for; stopping"
            )
            return None
        return answer.raw

    async def _send_speed(self, tenths: int) -> bool:
        answer = await self._request(encode_speed(tenths / 10))
        if answer == Ack(Command.SET_SPEED):
            self._sent_tenths = tenths
            self.speed_writes += 1
            self._policy.command_written(_now(), moves_belt=self._running_sent)
            return True
        if isinstance(answer, ErrorReply):
            # Never a retry loop: a refused speed is a fault and the belt is stopped.
            mph, code = tenths / 10, _error_name(answer)
            self._set_event_fault(f"drive_fault: treadmill refused speed {mph:.1f} mph ({code})")
        return False

    async def _send_elevation(self, tenths: int) -> None:
        answer = await self._request(encode_elevation(tenths / 10))
        if answer == Ack(Command.SET_ELEVATION):
            self._sent_elevation = tenths
            self._policy.command_written(_now(), moves_belt=False)
        elif isinstance(answer, ErrorReply):
            # Never a retry loop: forget the request and report it.
            self._wanted_elevation = None
            pct, code = tenths / 10, _error_name(answer)
            self._set_event_fault(f"drive_fault: treadmill refused elevation {pct:.1f} % ({code})")

    async def _poll(self) -> None:
        token = self._policy.poll_started(_now())
        seq = self._next_seq()
        state = await self._request(_POLL_STATE)
        if state is None:
            return
        if not isinstance(state, BeltStateReply):
            self._poll_failed(_POLL_STATE, state)
            return
        speed = await self._request(_POLL_SPEED)
        if speed is None:
            return
        if not isinstance(speed, StatusValue):
            self._poll_failed(_POLL_SPEED, speed)
            return
        self._take_poll(seq, token, state.state, speed)

    def _poll_failed(self, request: bytes, answer: Response) -> None:
        if answer == Ack(Command.STOP):
            return  # an emergency stop replaced the request
        name = _error_name(answer) if isinstance(answer, ErrorReply) else "DF"
        self._set_event_fault(
            f"drive_fault: treadmill answered {name} to status request {describe(request)}"
        )

    async def _request(self, frame: bytes) -> Response | None:
        """Write one request and wait for its answer; None: none came within ``ack_timeout_s``
        (the fault is set). A lost port raises _LinkLost, a protocol error _Resync."""
        await self._settle_owed()
        transport = self._check_link()
        loop = asyncio.get_running_loop()
        pending = _Pending(frame, loop.create_future())
        self._pending = pending
        self._write(transport, frame)
        deadline = loop.time() + self._ack_timeout_s
        try:
            outcome = await _wait(pending.future, deadline)
        finally:
            self._pending = None
        if outcome is None:
            self._no_answer(frame)
            return None
        if isinstance(outcome, _Broken):
            if outcome.link:
                raise _LinkLost(outcome.message)
            raise _Resync(outcome.message)
        return outcome

    async def _settle_owed(self) -> None:
        """After an ``A2`` written by emergency_stop(), write nothing until its answer (or its
        time-out): a request written now could replace the stop in the treadmill's buffer."""
        loop = asyncio.get_running_loop()
        while self._owed:
            owed = self._owed[0]
            if loop.time() >= owed.deadline:
                self._owed.popleft()
                self._no_answer(_STOP)
                continue
            self._rx_seen.clear()
            try:
                async with asyncio.timeout(owed.deadline - loop.time()):
                    await self._rx_seen.wait()
            except TimeoutError:
                pass
            self._check_link()

    def _no_answer(self, frame: bytes) -> None:
        """A request went unanswered: a link fault; the port stays open (only a port that
        fails is reopened), and the policy, told nothing, counts the stop unconfirmed."""
        partial = self._decoder.reset()
        got = f" (got only {describe(partial)})" if partial else ""
        ms = round(self._ack_timeout_s * 1000)
        now = _now()
        while self._owed and self._owed[0].deadline <= now:
            self._owed.popleft()
        self._link_down(f"drive_link: no answer to {describe(frame)} within {ms} ms{got}")

    def _check_link(self) -> SerialTransport:
        if self._lost_reason is not None:
            raise _LinkLost(self._lost_reason)
        transport = self._transport
        if transport is None or transport.is_closing():
            raise _LinkLost(f"drive_link: port {self._port_name} closed")
        return transport

    def _write(self, transport: SerialTransport, frame: bytes) -> None:
        transport.write(frame)
        if frame == _STOP:
            self.stop_writes += 1
            now = _now()
            token = self._policy.stop_written(now)
            self._owed.append(_OwedAnswer(token, now + self._ack_timeout_s))
        if self._trace is not None:
            self._trace(True, frame)

    async def _resync(self) -> None:
        """Drop input until the line is quiet (bounded), so a late answer is not taken for the
        answer to the next request."""
        self._needs_resync = False
        self._draining = True
        self._decoder.reset()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._ack_timeout_s
        try:
            while (left := deadline - loop.time()) > 0:
                self._rx_seen.clear()
                try:
                    async with asyncio.timeout(min(_QUIET_S, left)):
                        await self._rx_seen.wait()
                except TimeoutError:
                    break
        finally:
            self._draining = False
            self._decoder.reset()

    # --- bytes in -----------------------------------------------------------------------------

    def _on_bytes(self, data: bytes) -> None:
        t = self._clock()
        if self._trace is not None:
            self._trace(False, data)
        self._rx_seen.set()
        for response in self._decoder.feed(data):
            self._on_response(response, t)

    def _on_response(self, response: Response, t: float) -> None:
        pending = self._pending
        if pending is not None and pending.future.done():
            pending = None
        if response == Ack(Command.STOP) and (self._owed or self._stray_stop_acks):
            # The stop accepted; it also answers a request the stop replaced in the buffer.
            if self._owed:
                self._stop_answered(accepted=True)
            else:
                self._stray_stop_acks -= 1
            self._valid(t)
            if pending is not None and (pending.frame == _STOP or pending.superseded):
                pending.future.set_result(response)
            return
        if self._draining:
            return
        refused_stop = pending is None or pending.frame == _STOP
        if isinstance(response, ErrorReply) and refused_stop:
            if self._owed:
                self._stop_answered(accepted=False)
            elif self._stray_stop_acks and pending is None:
                self._stray_stop_acks -= 1
            else:
                self._protocol_error(response, pending)
                return
            self._valid(t)
            if pending is not None:
                pending.future.set_result(response)
            return
        if pending is not None and _answers(pending.frame[0], response):
            self._valid(t)
            pending.future.set_result(response)
            return
        self._protocol_error(response, pending)

    def _stop_answered(self, *, accepted: bool) -> None:
        """An answer to the ``A2`` on the wire. Several written back to back (emergency stops)
        replace one another in the treadmill's buffer, so one answer settles them all, as the
        newest; the B2s of any that were carried out after all are taken when they come."""
        token = self._owed[-1].token
        self._stray_stop_acks = len(self._owed) - 1
        self._owed.clear()
        self._policy.stop_answered(_now(), token, accepted)

    def _valid(self, t: float) -> None:
        self._last_answer_t = t
        if not self._live:
            self._live = self._ever_live = True

    def _protocol_error(self, response: Response, pending: _Pending | None) -> None:
        if isinstance(response, Garbage):
            what = f"garbage {describe(response.data)}"
        else:
            what = f"unexpected answer {_describe_response(response)}"
        if pending is not None:
            waiting = f" to {describe(pending.frame)}"
        else:
            waiting = " with no request outstanding"
        message = f"drive_fault: {what}{waiting}"
        if pending is not None and pending.frame == _STOP and self._owed:
            # The stop was answered, wrongly: not confirmed, and nothing more to wait for.
            self._owed.popleft()
        self._set_event_fault(message)
        if pending is not None and not pending.future.done():
            pending.future.set_result(_Broken(message, link=False))
        else:
            self._needs_resync = True
            self._wake.set()

    def _on_port_lost(self, reason: str) -> None:
        self._lost_reason = f"drive_link: {self._port_name}: {reason}"
        self._fail_waiters(_Broken(self._lost_reason, link=True))
        self._wake.set()

    def _fail_waiters(self, broken: _Broken) -> None:
        pending = self._pending
        if pending is not None and not pending.future.done():
            pending.future.set_result(broken)
        self._rx_seen.set()

    # --- state --------------------------------------------------------------------------------

    def _take_poll(self, seq: int, token: int, state: BeltState, speed: StatusValue) -> None:
        self._belt_state = state
        self.belt_states_seen.add(state)
        if speed.is_emergency:
            self._speed_mph = math.inf  # no speed known: fail closed
            self._condition_fault = (
                "drive_fault: treadmill reports 999.9 mph "
                "(emergency stop or speed control not responding)"
            )
        else:
            self._speed_mph = speed.tenths_value
            self._condition_fault = None
        self._check_belt_state(state)
        if self._condition_fault is not None:
            self._disarm()
            self._raise_stop(StopCause.FAULT)
        was_stopping = self._policy.stop_raised
        moving = state is not BeltState.STOPPED or speed.raw != 0
        self._policy.status(_now(), token, moving)
        if was_stopping and not self._policy.stop_raised:
            # Standstill confirmed by a read begun after the latest stop.
            self._running_sent = False
            self._sent_tenths = None
        if self._event_fault_seen and self._event_fault_seq < seq:
            self._event_fault = None  # shown to the controller, and healthy since
        self._publish(self._last_answer_t)

    def _check_belt_state(self, state: BeltState) -> None:
        if state is BeltState.RUNNING_WITHOUT_CDS:
            self._condition_fault = (
                "drive_fault: belt running with its communication-disconnect stop disabled (D0 33)"
            )
        elif state is BeltState.RUNNING_CDS and not self._running_sent:
            self._set_event_fault("drive_fault: belt running without a start command (D0 32)")
        elif state is BeltState.STOPPED and self._running_sent and not self._policy.stop_raised:
            # The stop button, the safety key or CDS: the treadmill stopped on its own. The
            # controller must see it and start afresh; the driver never starts it again.
            self._running_sent = False
            self._set_event_fault("drive_fault: treadmill stopped the belt by itself (D0 31)")

    def _fault(self) -> str | None:
        return self._event_fault or self._condition_fault

    def _publish(self, t: float) -> None:
        # Strictly increasing: the controller takes a status only when t has changed, and a
        # fault published mid-poll is stamped later than the answer the poll then publishes.
        previous = self._status
        if previous is not None and t <= previous.t:
            t = math.nextafter(previous.t, math.inf)
        self._status = DriveStatus(t=t, speed_mph=self._speed_mph, fault=self._fault())

    def _set_event_fault(self, fault: str) -> None:
        if fault != self._event_fault:
            _log.warning("%s", fault)
        self._event_fault = fault
        self._event_fault_seen = False
        self._event_fault_seq = self._next_seq()
        self._disarm()
        self._raise_stop(StopCause.FAULT)
        # A dead link's status must not advance: publish only while the link is up.
        if self._live:
            self._publish(self._clock())
        self._wake.set()

    def _port_lost(self, fault: str) -> None:
        self._close_port()
        self._policy.disconnected(_now())
        self._link_down(fault)

    def _link_down(self, fault: str) -> None:
        """No answers (a time-out) or no port: one status carrying the fault, then frozen."""
        was_live = self._live
        self._live = False
        self._running_sent = True
        self._sent_tenths = None
        # A grade asked for before the link was lost is not replayed on the next one.
        self._wanted_elevation = self._sent_elevation = None
        self._belt_state = None
        self._disarm()
        self._raise_stop(StopCause.FAULT)
        if was_live or (self._ever_live and self._event_fault is None):
            _log.warning("%s", fault)
            self._event_fault = fault
            self._event_fault_seen = False
            self._event_fault_seq = self._next_seq()
            # One status carrying the fault, then t stops advancing until the link is back.
            self._publish(self._clock())
        elif not (self._ever_live or self._said_unreachable):
            # Never reached since start-up: said once (the state shows no speed, and a start
            # is refused, but nothing at the log's usual level said why), then quietly.
            self._said_unreachable = True
            _log.warning("%s (the drive has not answered since start-up)", fault)
        else:
            _log.debug("%s", fault)
        self._wake.set()

    def _want_stop(self) -> None:
        self._wanted = 0
        self._arm_if_healthy()
        self._policy.want(_now(), moving=False)

    def _raise_stop(self, cause: StopCause) -> None:
        """A stop already raised and not yet confirmed is not raised again: the attempt after a
        silence stays one stop and one status read."""
        self._wanted = 0
        if not self._policy.stop_raised:
            self._policy.raise_stop(_now(), cause)
        self._wake.set()

    def _disarm(self) -> None:
        self._armed = False
        self._healthy_seen = False
        self._wanted = 0

    def _arm_if_healthy(self) -> None:
        if self._healthy_seen and self._live and self._fault() is None:
            self._armed = True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq


def _now() -> float:
    """The event loop's clock (time.monotonic on every loop asyncio ships), the policy's."""
    return time.monotonic()


# --- helpers -----------------------------------------------------------------------------------


async def _wait(future: asyncio.Future[_T], deadline: float) -> _T | None:
    """The future's result, or None if it is not done by ``deadline`` (loop time).

    The result is read after the wait whatever woke us, so an answer that arrived in the same
    loop iteration as the time-out still counts.
    """
    left = deadline - asyncio.get_running_loop().time()
    if left > 0 and not future.done():
        await asyncio.wait((future,), timeout=left)
    return future.result() if future.done() else None


def _answers(request: int, response: Response) -> bool:
    match response:
        case Ack(command=command):
            return request == command
        case ErrorReply():
            return True
        case BeltStateReply():
            return request == StatusRequest.BELT_STATE
        case StatusValue(request=answered):
            return request == answered
        case UnknownStatusReply():
            return 0xC0 <= request <= 0xCF
        case Garbage():
            return False


def _error_name(reply: ErrorReply) -> str:
    return "BE" if reply.error is ErrorAnswer.DATA_OUT_OF_RANGE else "BF"


def _describe_response(response: Response) -> str:
    match response:
        case Ack(command=command, echo=echo):
            return describe(bytes([command.ack]) + echo)
        case ErrorReply(error=error):
            return describe(bytes([error]))
        case BeltStateReply(state=state):
            return describe(bytes([StatusRequest.BELT_STATE.answer, state]))
        case StatusValue(request=request, raw=raw):
            return describe(bytes([request.answer]) + f"{raw:04d}".encode())
        case UnknownStatusReply():
            return "DF"
        case Garbage(data=data):
            return describe(data)


def _close_late_opening(opening: asyncio.Future[tuple[SerialTransport, asyncio.Protocol]]) -> None:
    """A port that finished opening after we gave up on it: close it at once."""
    if opening.cancelled() or opening.exception() is not None:
        return
    transport, _ = opening.result()
    serial = transport.serial
    transport.abort()
    if serial is not None:
        serial.close()


def _check_arguments(
    port: str,
    baud: int,
    poll_interval_s: float,
    ack_timeout_s: float,
    min_belt_mph: float,
    reconnect_initial_s: float,
    reconnect_max_s: float,
) -> None:
    if not port:
        raise ValueError("port is empty")
    if baud not in BAUD_RATES:
        raise ValueError(f"baud {baud} is not one of {BAUD_RATES}")
    if not 0 < poll_interval_s <= MAX_POLL_INTERVAL_S:
        raise ValueError(f"poll_interval_s {poll_interval_s} must be in (0, 0.1] (SR-9)")
    if not 0 < ack_timeout_s <= LINK_TIMEOUT_S:
        raise ValueError(f"ack_timeout_s {ack_timeout_s} must be in (0, {LINK_TIMEOUT_S}]")
    if not math.isfinite(min_belt_mph) or min_belt_mph <= 0:
        raise ValueError(f"min_belt_mph {min_belt_mph} must be positive")
    if not 0 < reconnect_initial_s <= reconnect_max_s:
        raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")
