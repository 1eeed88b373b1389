"""The Trackmaster serial driver: a Trackmaster (or compatible) treadmill on RS-232.

One task (:meth:`TrackmasterDriver.run`) owns the port and does the I/O; the controller's calls
(:meth:`command_speed`, :meth:`status`) only change or read state and wake that task, so they
never block (drivers/base.py). :meth:`emergency_stop` is the exception: it writes ``A2`` to the
port itself, at once.

The wire (PROTOCOLS.md section 1). The treadmill's input buffer holds one command: a second one
sent before the first is processed replaces it. So exactly one ordinary command or status
request is in flight, answered or timed out before the next. A stop may be written at any time,
because a stop replacing a pending command is what we want; after it nothing else is written
until its ``B2`` arrives, or the next request could replace the stop.

What the task sends, by priority:

1. **Stop** (``A2``) while the belt must be brought to standstill (a stop or emergency stop was
   asked for, a fault, every new connection), again every ``poll_interval_s`` until a poll
   begun after the latest stop reports the belt stopped (``D0 31``) at 0.0 mph.
2. **Start** (``A0``: CDS enabled; there is no way to send ``A1``) when the wanted speed is at
   least ``min_belt_mph`` and the belt is stopped, then **speed** (``A3``) whenever the wanted
   speed in tenths differs from the last one acknowledged.
3. **Poll** ``C0`` (belt state) and ``C1`` (actual speed) every ``poll_interval_s`` (at most
   0.1 s). The treadmill's communication-disconnect stop (CDS) stops the belt after 500 ms of
   silence; polling keeps it fed while we live and lets it fire when we die (SR-9).

Faults (``status().fault``):

- ``drive_fault: ...``: the treadmill refused a command (``BE``/``BF``), did not know a status
  request (``DF``), answered with garbage or a wrong ack, reports 999.9 mph (emergency stop or
  its speed loop not responding), runs with CDS disabled (``D0 33``), or stopped the belt by
  itself. A refusal is never retried.
- ``drive_link: ...``: the port cannot be opened, hangs up or fails, an answer does not arrive
  within ``ack_timeout_s``, or no valid answer arrives for 300 ms. The driver publishes one
  status carrying the fault and then ``status().t`` stops advancing until the link is back. It
  closes the port and reopens it forever with capped exponential backoff; every new
  connection begins with ``A2``: those are the continuing stop attempts.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from serial_asyncio_fast import SerialTransport, create_serial_connection

from drivers.base import DriveStatus
from drivers.trackmaster_codec import (
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
from safety.link_limits import (
    DRIVE_LINK_TIMEOUT_S,
    DRIVE_MAX_POLL_INTERVAL_S,
    TRACKMASTER_ACK_TIMEOUT_S,
)

# Defined once, for check-config too.
MAX_POLL_INTERVAL_S = DRIVE_MAX_POLL_INTERVAL_S
# A dead link must show within this (SR-9): no valid answer for this long is a lost link.
LINK_TIMEOUT_S = DRIVE_LINK_TIMEOUT_S
BAUD_RATES = (4800, 9600)
# Opening a port runs in a worker thread; a USB adapter that hangs must not hang us.
_OPEN_TIMEOUT_S = 2.0
# After garbage or a wrong answer: drop input until the line has been quiet this long.
_QUIET_S = 0.02

_STOP = encode_stop()
_POLL_STATE = encode_status_request(StatusRequest.BELT_STATE)
_POLL_SPEED = encode_status_request(StatusRequest.ACTUAL_SPEED)

_log = logging.getLogger("treadguard.drivers.trackmaster")

Trace = Callable[[bool, bytes], None]
_T = TypeVar("_T")


class _LinkLost(Exception):
    """The link is gone; the message is the fault."""


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
    # An emergency stop was written after this request: a B2 may answer it instead.
    superseded: bool = False


@dataclass(slots=True)
class _StopState:
    """Sequence numbers (not times, so ties cannot happen) of the stop bookkeeping."""

    must_stop: bool = True
    raised: int = 0  # when the latest need to stop arose
    written: int = -1  # when A2 was last written
    written_at: float = -math.inf  # loop time of that write, for the resend cadence
    ack: asyncio.Future[None] | None = None  # B2 still owed for an A2 written by emergency_stop()
    ack_deadline: float = 0.0
    # B2s owed to A2s written by emergency_stop() are taken as valid answers until then.
    stray_until: float = -math.inf


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
        self._poll_interval_s = poll_interval_s
        self._ack_timeout_s = ack_timeout_s
        self._clock = clock
        self._min_belt_mph = min_belt_mph
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._trace = trace

        # What the controller asked for, in tenths of a mph; 0 = stop.
        self._wanted = 0
        # Elevation asked for and last acknowledged, in tenths of a percent (None: not asked).
        self._wanted_elevation: int | None = None
        self._sent_elevation: int | None = None
        self._armed = False
        self._healthy_seen = False
        self._stop = _StopState()
        self._seq = 0

        # The link.
        self._transport: SerialTransport | None = None
        self._port: _Port | None = None
        self._decoder = ResponseDecoder()
        self._pending: _Pending | None = None
        self._lost_reason: str | None = None
        self._needs_resync = False
        self._draining = False
        self._rx_seen = asyncio.Event()
        self._wake = asyncio.Event()
        self._live = False
        self._ever_live = False
        self._session_live = False
        self._last_valid_at = 0.0  # loop time of the newest valid answer
        self._last_answer_t = 0.0  # the same moment on the controller's clock
        self._next_poll_at = 0.0

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

    # --- the controller's side (never blocks) -------------------------------------------------

    def command_speed(self, mph: float) -> None:
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
            if self._armed:
                self._wanted = tenths
            else:
                # No start before the controller has seen the link healthy and asked for a stop.
                self._wanted = 0
                self.ignored_run_commands += 1
        self._wake.set()

    def command_elevation(self, percent: float) -> None:
        """Ask for this grade (0.5 % steps, A4). Not part of any stop: a grade never moves the
        belt, and one the treadmill refuses is a fault, not retried. Raises CodecError for a
        value off the 0.5 % grid or out of the 4-digit range."""
        self._wanted_elevation = elevation_tenths(percent)
        self._wake.set()

    def emergency_stop(self) -> None:
        """Write ``A2`` to the port now, ahead of anything queued (SR-13); the I/O task then
        repeats it until the treadmill reports the belt stopped."""
        self.emergency_stops += 1
        self._wanted = 0
        self._arm_if_healthy()
        self._raise_stop()
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
        return self._stop.must_stop

    def _write_stop_now(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return  # no port: the next connection begins with a stop
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
        loop = asyncio.get_running_loop()
        stop = self._stop
        if stop.ack is None or stop.ack.done():
            stop.ack = loop.create_future()
            stop.ack_deadline = loop.time() + self._ack_timeout_s

    # --- the I/O task -------------------------------------------------------------------------

    async def run(self) -> None:
        delay = self._reconnect_initial_s
        try:
            while True:
                self._session_live = False
                try:
                    await self._connect()
                    await self._session()
                except _LinkLost as exc:
                    self._link_lost(str(exc))
                except Exception as exc:
                    # Retry forever (SR-9): an unexpected error is a lost link, logged with its
                    # traceback, not the end of the driver.
                    _log.exception("unexpected error on the treadmill link")
                    self._link_lost(f"drive_link: unexpected error: {exc!r}")
                finally:
                    self._close_port()
                if self._session_live:
                    delay = self._reconnect_initial_s
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._reconnect_max_s)
        finally:
            self._close_port()
            self._live = False

    async def _connect(self) -> None:
        self.connect_attempts += 1
        self._lost_reason = None
        self._decoder.reset()
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
        self._fail_waiters(_Broken("drive_link: port closed", link=True))

    async def _session(self) -> None:
        loop = asyncio.get_running_loop()
        self._last_valid_at = loop.time()
        self._next_poll_at = 0.0
        self._needs_resync = False
        # Whatever the treadmill was doing, it is told to stop before anything else.
        self._running_sent = True
        self._belt_state = None
        self._raise_stop()
        while True:
            await self._step()

    async def _step(self) -> None:
        self._wake.clear()
        self._check_link()
        if self._needs_resync:
            await self._resync()
        await self._settle_stop_ack()
        loop = asyncio.get_running_loop()
        now = loop.time()
        op = self._next_op(now)
        if op is not None:
            try:
                await op()
            except _Resync:
                await self._resync()
            return
        try:
            async with asyncio.timeout(max(0.0, self._next_due() - now)):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _next_op(self, now: float) -> Callable[[], Awaitable[None]] | None:
        """The next request, by priority: stop, start, speed, poll.

        Start and speed go out only when the wanted speed changes, so they cannot starve the
        polls; the other way round, a slow treadmill whose poll cycle fills the poll interval
        would never get a command.
        """
        stop = self._stop
        if stop.must_stop and (
            stop.written < stop.raised or now - stop.written_at >= self._poll_interval_s
        ):
            return self._send_stop
        command = self._next_command()
        if command is not None:
            return command
        if now >= self._next_poll_at:
            return self._poll
        return None

    def _next_command(self) -> Callable[[], Awaitable[None]] | None:
        if self._stop.must_stop:
            return None
        wanted_grade = self._wanted_elevation
        if wanted_grade is not None and wanted_grade != self._sent_elevation:
            return self._send_elevation
        if not self._armed or self._wanted == 0:
            return None
        if not self._running_sent:
            return self._send_start
        if self._sent_tenths != self._wanted:
            return self._send_speed
        return None

    def _next_due(self) -> float:
        due = self._next_poll_at
        if self._stop.must_stop:
            due = min(due, self._stop.written_at + self._poll_interval_s)
        return due

    # --- requests -----------------------------------------------------------------------------

    async def _send_stop(self) -> None:
        answer = await self._request(_STOP)
        if isinstance(answer, ErrorReply):
            self._set_event_fault(f"drive_fault: treadmill refused stop ({_error_name(answer)})")

    async def _send_start(self) -> None:
        answer = await self._request(encode_start())
        if answer == Ack(Command.START):
            self._running_sent = True
            self._sent_tenths = None
            self.start_writes += 1
        elif isinstance(answer, ErrorReply):
            self._set_event_fault(f"drive_fault: treadmill refused start ({_error_name(answer)})")
        # A B2 instead: an emergency stop replaced the start; nothing to record.

    async def _send_speed(self) -> None:
        tenths = self._wanted
        answer = await self._request(encode_speed(tenths / 10))
        if answer == Ack(Command.SET_SPEED):
            self._sent_tenths = tenths
            self.speed_writes += 1
        elif isinstance(answer, ErrorReply):
            # Never a retry loop: a refused speed is a fault and the belt is stopped.
            mph, code = tenths / 10, _error_name(answer)
            self._set_event_fault(f"drive_fault: treadmill refused speed {mph:.1f} mph ({code})")

    async def _send_elevation(self) -> None:
        tenths = self._wanted_elevation
        assert tenths is not None
        answer = await self._request(encode_elevation(tenths / 10))
        if answer == Ack(Command.SET_ELEVATION):
            self._sent_elevation = tenths
        elif isinstance(answer, ErrorReply):
            # Never a retry loop: forget the request and report it.
            self._wanted_elevation = None
            pct, code = tenths / 10, _error_name(answer)
            self._set_event_fault(f"drive_fault: treadmill refused elevation {pct:.1f} % ({code})")

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        self._next_poll_at = loop.time() + self._poll_interval_s
        seq = self._next_seq()
        state = await self._request(_POLL_STATE)
        if not isinstance(state, BeltStateReply):
            self._poll_failed(_POLL_STATE, state)
            return
        speed = await self._request(_POLL_SPEED)
        if not isinstance(speed, StatusValue):
            self._poll_failed(_POLL_SPEED, speed)
            return
        self._take_poll(seq, state.state, speed)

    def _poll_failed(self, request: bytes, answer: Response) -> None:
        if answer == Ack(Command.STOP):
            return  # an emergency stop replaced the request
        name = _error_name(answer) if isinstance(answer, ErrorReply) else "DF"
        self._set_event_fault(
            f"drive_fault: treadmill answered {name} to status request {describe(request)}"
        )

    async def _request(self, frame: bytes) -> Response:
        """Write one request and wait for its answer; a lost link or a protocol error raises."""
        await self._settle_stop_ack()
        transport = self._check_link()
        loop = asyncio.get_running_loop()
        pending = _Pending(frame, loop.create_future())
        self._pending = pending
        self._write(transport, frame)
        sent_at = loop.time()
        ack_deadline = sent_at + self._ack_timeout_s
        link_deadline = self._last_valid_at + LINK_TIMEOUT_S
        try:
            outcome = await _wait(pending.future, min(ack_deadline, link_deadline))
        finally:
            self._pending = None
        if outcome is None:
            raise _LinkLost(self._timeout_message(frame, ack_deadline <= link_deadline))
        if isinstance(outcome, _Broken):
            if outcome.link:
                raise _LinkLost(outcome.message)
            raise _Resync(outcome.message)
        return outcome

    def _timeout_message(self, frame: bytes, ack: bool) -> str:
        partial = self._decoder.reset()
        got = f" (got only {describe(partial)})" if partial else ""
        if ack:
            ms = round(self._ack_timeout_s * 1000)
            return f"drive_link: no answer to {describe(frame)} within {ms} ms{got}"
        ms = round(LINK_TIMEOUT_S * 1000)
        return f"drive_link: no valid answer from the treadmill for {ms} ms{got}"

    async def _settle_stop_ack(self) -> None:
        """After an A2 written by emergency_stop(), write nothing until its B2: a request
        written now could replace the stop in the treadmill's one-command buffer."""
        stop = self._stop
        ack = stop.ack
        if ack is None:
            return
        if not ack.done():
            await _wait(ack, stop.ack_deadline)
        stop.ack = None
        self._check_link()
        if not ack.done():
            ms = round(self._ack_timeout_s * 1000)
            raise _LinkLost(f"drive_link: no answer to emergency stop A2 within {ms} ms")

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
            self._stop_written()
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
        stop_ack = response == Ack(Command.STOP)
        if stop_ack:
            self._take_stop_ack()
        if self._draining:
            return
        pending = self._pending
        if pending is not None and _is_answer(pending, response, stop_ack):
            self._valid(t)
            pending.future.set_result(response)
            return
        if stop_ack and asyncio.get_running_loop().time() <= self._stop.stray_until:
            self._valid(t)  # the answer to an A2 written by emergency_stop()
            return
        self._protocol_error(response, pending)

    def _take_stop_ack(self) -> None:
        ack = self._stop.ack
        if ack is not None and not ack.done():
            ack.set_result(None)

    def _valid(self, t: float) -> None:
        self._last_valid_at = asyncio.get_running_loop().time()
        self._last_answer_t = t
        if not self._live:
            self._live = self._ever_live = self._session_live = True

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
        self._take_stop_ack()

    # --- state --------------------------------------------------------------------------------

    def _take_poll(self, seq: int, state: BeltState, speed: StatusValue) -> None:
        self._belt_state = state
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
            self._raise_stop_if_moving()
        stop = self._stop
        confirmed = state is BeltState.STOPPED and speed.raw == 0
        if stop.must_stop and confirmed and stop.raised <= stop.written < seq:
            stop.must_stop = False
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
        elif state is BeltState.STOPPED and self._running_sent and not self._stop.must_stop:
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
        self._raise_stop_if_moving()
        # A dead link's status must not advance: publish only while the link is up.
        if self._live:
            self._publish(self._clock())
        self._wake.set()

    def _link_lost(self, fault: str) -> None:
        was_live = self._live
        self._live = False
        self._running_sent = True
        self._sent_tenths = None
        # A grade asked for before the link was lost is not replayed on the next one.
        self._wanted_elevation = self._sent_elevation = None
        self._belt_state = None
        self._disarm()
        self._raise_stop()
        if was_live or (self._ever_live and self._event_fault is None):
            _log.warning("%s", fault)
            self._event_fault = fault
            self._event_fault_seen = False
            self._event_fault_seq = self._next_seq()
            # One status carrying the fault, then t stops advancing until the link is back.
            self._publish(self._clock())
        else:
            _log.debug("%s", fault)

    def _want_stop(self) -> None:
        self._wanted = 0
        self._arm_if_healthy()
        self._raise_stop_if_moving()

    def _raise_stop_if_moving(self) -> None:
        if self._stop.must_stop:
            return
        moving = (
            self._running_sent
            or self._belt_state is not BeltState.STOPPED
            or self._speed_mph != 0.0
        )
        if moving:
            self._raise_stop()

    def _raise_stop(self) -> None:
        self._wanted = 0
        self._stop.must_stop = True
        self._stop.raised = self._next_seq()
        self._wake.set()

    def _stop_written(self) -> None:
        loop = asyncio.get_running_loop()
        stop = self._stop
        stop.written = self._next_seq()
        stop.written_at = loop.time()
        stop.stray_until = stop.written_at + self._ack_timeout_s

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


def _is_answer(pending: _Pending, response: Response, stop_ack: bool) -> bool:
    if pending.future.done():
        return False
    # A B2 answers a request that an emergency stop replaced in the treadmill's buffer.
    return _answers(pending.frame[0], response) or (stop_ack and pending.superseded)


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
