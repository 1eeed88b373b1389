"""The Modbus VFD driver: a belt motor on a variable-frequency drive, Modbus RTU or Modbus TCP.

One task (:meth:`ModbusVfdDriver.run`) owns the link and does all the I/O; the controller's calls
(:meth:`command_speed`, :meth:`emergency_stop`, :meth:`status`) only change or read state and wake
that task, so they never block (drivers/base.py).

What goes on the wire, and when, is decided by the shared link policy (drivers/link_policy.py,
SR-9, SR-13); this module only does the I/O the policy asks for:

- **Stop** (the stop command word): on every new connection, an emergency stop, a controlled stop
  (wanted speed 0 while the belt may move), a fault, a status showing the belt moving while the
  wanted speed is 0 (started from the keypad), and on the way out of :meth:`run`. It goes out as
  the very next frame - no hold-off or back-off delays it - and is repeated every
  ``poll_interval_s`` until a status read begun after the latest stop word shows the output
  frequency at 0. Modbus has no way to put a frame on the wire synchronously (a request is a
  coroutine, and the bus carries one request at a time), so "at once" means after the request
  already in flight, if any.
- **Silence**: a drive that neither accepts the stop word nor reports standstill within 0.3 s
  gets no request at all for its own communication time-out (09.03, read at link-up) plus a
  margin, so that its time-out trips and stops the belt; our polls must never keep it fed.
- **Poll** the error code and the output frequency every ``poll_interval_s`` (at most 0.1 s),
  well inside the drive's own time-out (SR-9). ``status().speed_mph`` comes from the output
  frequency.
- **Speed**: frequency command first, then the run command word (with the direction bits).
- **A slowing ask** (``command_speed(mph, slowing=True)``, drivers/base.py) never starts the
  belt and never raises its speed: before a run word has been answered it ends the start as a 0
  ask does (the stop word goes out next), and on a running belt it drops a higher frequency
  still queued and asks at most the frequency last written.

Start-up (every connection): the stop word first, then 09.02 (communication fault action) and
09.03 (communication time-out) are read. Unless the time-out is enabled, at most 1 s, at least
twice the poll interval, and the action is a stop, the driver refuses to run: ``status().fault``
names the parameter and the value, and it never writes a run command (SR-9). It keeps polling
so the controller still sees the belt.

Faults. An exception response is ``drive_fault: ...``; a time-out, a refused connection or a
port that vanished is ``drive_link: ...``. A dead link is noticed at the next request (at most
``poll_interval_s`` away) or when its own time-out expires: within ``poll_interval_s +
request_timeout_s`` <= 0.3 s. The driver then publishes one status carrying the fault and
stops updating it, so ``status().t`` stops advancing. It reconnects forever with capped
exponential backoff (cut short by a stop asked for meanwhile), a fresh client each try (a client
object that lost its link is never reused), and each reconnect starts with the stop word.

Every way out. When :meth:`run` is cancelled (shutdown, a crashed sibling task in the daemon's
TaskGroup), or an unexpected exception breaks a session, the stop word goes out on the link
still open, bounded by the request time-out, before the task ends or the link is closed (SR-9,
SR-11); unless the link is silent, when the drive's own time-out is already doing it.

Never restart on its own. Any fault, a lost link, or a refusal disarms the driver: a run
command is written again only after the controller has seen a healthy status from the new
link, then asked for a stop (``command_speed(0)`` or ``emergency_stop()``), then asked for a
speed above 0. An old run command is never replayed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Literal

from pymodbus import FramerType, ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU

from treadguard.drivers.base import DriveStatus
from treadguard.drivers.link_policy import (
    STOP_CONFIRM_S,
    Action,
    LinkPolicy,
    PolicyParams,
    StopCause,
)
from treadguard.drivers.vfd_codec import (
    COMM_TIMEOUT_MAX_RAW,
    COMM_TIMEOUT_UNIT_S,
    CodecError,
    Direction,
    DriveConfigError,
    RegisterMap,
    check_comm_fault_action,
    check_comm_timeout,
    check_poll_margin,
    mph_to_register,
    parameter_label,
    register_to_mph,
    run_word,
    status_read_plan,
    stop_word,
)
from treadguard.safety.link_limits import (
    DRIVE_LINK_TIMEOUT_S,
    DRIVE_MAX_POLL_INTERVAL_S,
    VFD_REQUEST_TIMEOUT_S,
)

Transport = Literal["rtu", "tcp"]
ModbusClient = AsyncModbusTcpClient | AsyncModbusSerialClient
TracePacket = Callable[[bool, bytes], bytes]

# SR-9 wants the drive's time-out well inside 1 s; a dead link must show within 300 ms.
# Defined once, for check-config too.
MAX_POLL_INTERVAL_S = DRIVE_MAX_POLL_INTERVAL_S
MAX_DETECTION_S = DRIVE_LINK_TIMEOUT_S

_log = logging.getLogger("treadguard.drivers.modbus_vfd")


class _LinkLost(Exception):
    """The link is gone (time-out, closed connection, vanished port); the message is the fault."""


def raise_if_cancelled() -> None:
    """Python 3.11's asyncio.wait_for (which pymodbus awaits each answer with) can swallow a
    cancellation that races with the answer arriving; the task then runs on with its cancel
    request still counted. Honour it, so a cancelled driver always stops."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def connect_within(
    client: AsyncModbusTcpClient | AsyncModbusSerialClient, timeout_s: float
) -> str | None:
    """Connect, bounded by ``timeout_s``; None when connected, else why not (shared by the
    drive's driver and the sensor inputs' poller)."""
    try:
        async with asyncio.timeout(timeout_s):
            ok = await client.connect()
    except (TimeoutError, OSError) as exc:
        return str(exc) or type(exc).__name__
    return None if ok else "refused"


def _exception_text(code: int) -> str:
    try:
        return f"{code} ({ExcCodes(code).name.lower().replace('_', ' ')})"
    except ValueError:
        return str(code)


class ModbusVfdDriver:
    """A :class:`drivers.base.TreadmillDriver` for a VFD on Modbus RTU or Modbus TCP."""

    def __init__(
        self,
        transport: Transport,
        *,
        register_map: RegisterMap,
        mph_per_hz: float,
        host: str | None = None,
        port: int = 502,
        serial_port: str | None = None,
        baud: int = 19200,
        parity: Literal["N", "E", "O"] = "N",
        device_id: int = 1,
        direction: Direction = "reverse",
        poll_interval_s: float = MAX_POLL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        request_timeout_s: float = VFD_REQUEST_TIMEOUT_S,
        reconnect_initial_s: float = 0.05,
        reconnect_max_s: float = 1.0,
        stop_confirm_s: float = STOP_CONFIRM_S,
        trace_packet: TracePacket | None = None,
    ) -> None:
        """``clock`` stamps statuses on the controller's monotonic clock. ``request_timeout_s``
        bounds one request (and a connection attempt). ``stop_confirm_s``: how long a stop may
        go unconfirmed before the link falls silent (SR-9). ``trace_packet`` is handed to
        pymodbus, which calls it with each frame just before writing it (diagnostics,
        benchmarks)."""
        _check_arguments(
            transport, host, serial_port, device_id, direction, mph_per_hz, parity,
            poll_interval_s, request_timeout_s, reconnect_initial_s, reconnect_max_s,
        )  # fmt: skip
        self._transport: Transport = transport
        self._host = host
        self._port = port
        self._serial_port = serial_port
        self._baud = baud
        self._parity = parity
        self._device_id = device_id
        self._map = register_map
        self._mph_per_hz = mph_per_hz
        self._direction: Direction = direction
        self._poll_interval_s = poll_interval_s
        self._clock = clock
        self._request_timeout_s = request_timeout_s
        self._trace_packet = trace_packet
        self._read_plan = status_read_plan(register_map)
        # Until 09.03 has been read, assume the longest time-out SR-9 accepts: a silence then
        # lasts long enough for any drive the driver would run.
        self._policy = LinkPolicy(
            PolicyParams(
                poll_interval_s=poll_interval_s,
                deadman_s=COMM_TIMEOUT_MAX_RAW * COMM_TIMEOUT_UNIT_S,
                stop_confirm_s=stop_confirm_s,
                reconnect_initial_s=reconnect_initial_s,
                reconnect_max_s=reconnect_max_s,
            ),
            _now(),
        )

        # What the controller asked for. 0 = stop.
        self._wanted_raw = 0
        # Run permission: see the module docstring ("Never restart on its own").
        self._armed = False
        self._healthy_seen = False
        # What the drive was last told on this link; None = unknown.
        self._sent_run: bool | None = None
        self._sent_freq: int | None = None
        # Link state and what status() reports.
        self._client: ModbusClient | None = None
        self._parameters_checked = False
        self._live = False
        self._ever_linked = False
        self._said_unreachable = False  # the first failure to reach it, said
        self._status: DriveStatus | None = None
        self._speed_mph = 0.0
        self._refusal: str | None = None
        self._drive_error: str | None = None
        # Exception responses, lost links, bad commands: kept until status() has shown them.
        self._event_fault: str | None = None
        self._event_fault_seen = False
        self._wake = asyncio.Event()

        # Counters for tests and diagnostics.
        self.connect_attempts = 0
        self.run_writes = 0
        self.ignored_run_commands = 0

    # --- the controller's side (never blocks) -------------------------------------------------

    def command_speed(self, mph: float, *, slowing: bool = False) -> None:
        if not math.isfinite(mph) or mph < 0:
            self._command_fault(f"drive_command: speed {mph} mph refused; stopping")
            return
        try:
            raw = mph_to_register(mph, self._mph_per_hz)
        except CodecError as exc:
            self._command_fault(f"drive_command: {exc}; stopping")
            return
        if raw == 0 or (slowing and self._armed and not self._runs_on_the_wire()):
            # A slowing ask never starts the belt: a start not yet fully written (no run word
            # answered) becomes the stop a 0 ask is (H-14).
            self._wanted_raw = 0
            self._arm_if_healthy()
        elif self._armed:
            if slowing and self._sent_freq is not None:
                # Nor does it raise the speed: a higher frequency still queued is dropped, and
                # what goes out is at most the frequency last written (H-11).
                raw = min(raw, self._sent_freq)
            self._wanted_raw = raw
        else:
            # No run before the controller has seen the link healthy and commanded a stop.
            self._wanted_raw = 0
            self.ignored_run_commands += 1
        self._policy.want(_now(), moving=self._wanted_raw > 0)
        self._wake.set()

    def _runs_on_the_wire(self) -> bool:
        """The drive answered a run word since its last stop word, and no stop has been raised
        since."""
        return self._sent_run is True and not self._policy.stop_raised

    def emergency_stop(self) -> None:
        # Drop any speed not yet sent; the stop word is the next frame on the wire.
        self._wanted_raw = 0
        self._arm_if_healthy()
        now = _now()
        self._policy.want(now, moving=False)
        self._policy.raise_stop(now, StopCause.EMERGENCY)
        self._wake.set()

    def status(self) -> DriveStatus | None:
        st = self._status
        if st is not None:
            if st.fault is not None and st.fault == self._event_fault:
                self._event_fault_seen = True
            if st.fault is None and self._live:
                self._healthy_seen = True
        return st

    # --- what tests and diagnostics see --------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """True while a stop is raised: until a status read after the latest stop word showed
        the belt at standstill."""
        return self._policy.stop_raised

    @property
    def silent(self) -> bool:
        return self._policy.silent

    @property
    def silences(self) -> int:
        return self._policy.silences

    @property
    def stop_writes(self) -> int:
        """Stop words put on the wire (accepted by the drive or not)."""
        return self._policy.stop_writes

    # --- the I/O task -------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await self._step()
        except asyncio.CancelledError:
            await self._last_stop(StopCause.CLOSING)
            raise
        finally:
            self._drop_client()

    async def _step(self) -> None:
        raise_if_cancelled()
        self._wake.clear()
        client = self._client
        if client is not None and not client.connected:
            self._lose_link(f"drive_link: connection to {self._where()} closed")
            return
        now = _now()
        decision = self._policy.next(now, command_pending=self._command_pending())
        if (silence := self._policy.new_silence()) is not None:
            _log.warning("drive_link: %s", silence)
        action = decision.action
        if action in (Action.WAIT, Action.SILENT):
            try:
                async with asyncio.timeout(max(0.0, decision.at - now)):
                    await self._wake.wait()
            except TimeoutError:
                pass
            return
        try:
            if action is Action.CONNECT:
                await self._connect()
            else:
                assert client is not None
                if action is Action.STOP:
                    await self._write_stop(client)
                elif action is Action.POLL:
                    await self._poll(client)
                else:
                    await self._write_command(client)
        except _LinkLost as exc:
            self._lose_link(str(exc))
        except Exception as exc:
            # Retry forever (SR-9): an unexpected error is a lost link, logged with its
            # traceback, not the end of the driver; the stop word first, on the link still open.
            _log.exception("unexpected error on the drive link")
            await self._last_stop(StopCause.FAULT)
            self._lose_link(f"drive_link: unexpected error: {exc!r}")

    def _new_client(self) -> ModbusClient:
        # retries=0: one time-out is a fault (SR-9), a retry would hide it. reconnect_delay=0:
        # reconnection is ours, with a fresh client each try.
        if self._transport == "tcp":
            assert self._host is not None
            return AsyncModbusTcpClient(
                self._host,
                port=self._port,
                timeout=self._request_timeout_s,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._trace_packet,
                trace_connect=self._on_connection_change,
            )
        assert self._serial_port is not None
        return AsyncModbusSerialClient(
            self._serial_port,
            framer=FramerType.RTU,
            baudrate=self._baud,
            parity=self._parity,
            timeout=self._request_timeout_s,
            retries=0,
            reconnect_delay=0,
            trace_packet=self._trace_packet,
            trace_connect=self._on_connection_change,
        )

    def _on_connection_change(self, connected: bool) -> None:
        # A closed socket or a vanished port: wake the I/O task so it notices before the next poll.
        if not connected:
            self._wake.set()

    async def _connect(self) -> None:
        client = self._new_client()
        self._client = client
        self.connect_attempts += 1
        problem = await connect_within(client, self._request_timeout_s * 4)
        if problem is not None:
            raise _LinkLost(f"drive_link: cannot connect to {self._where()}: {problem}")
        self._parameters_checked = False
        self._sent_run = self._sent_freq = None
        # Whatever the drive was doing, it is told to stop before anything else (SR-11).
        self._policy.connected(_now())

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        self._live = False
        if client is not None:
            client.close()

    def _where(self) -> str:
        if self._transport == "tcp":
            return f"{self._host}:{self._port}"
        return str(self._serial_port)

    async def _last_stop(self, cause: StopCause) -> None:
        """On the way out of the task or of a broken session (cancellation, an unexpected
        error): the stop word on the link still open, bounded, whatever was going on. Never
        raises: what brought us here must go on."""
        client = self._client
        policy = self._policy
        if client is None or not client.connected or policy.silent:
            return
        now = _now()
        policy.raise_stop(now, cause)
        token = policy.stop_written(now)
        word = stop_word(self._direction)
        try:
            # A request cut short by the cancellation may still be answered; pymodbus takes
            # the next request regardless, and the stop word is written at once. Bounded by
            # asyncio.wait, never asyncio.timeout: this runs while a cancellation is pending,
            # and on Python 3.11.0-3.11.2 asyncio.timeout then ends in CancelledError, not
            # TimeoutError, and the stop's answer would go unrecorded.
            write = asyncio.ensure_future(
                client.write_register(self._map.command_word, word, device_id=self._device_id)
            )
            await asyncio.wait({write}, timeout=self._request_timeout_s * 2)
            if not write.done():
                write.cancel()
                raise TimeoutError("no answer to the stop word within the time-out")
            accepted = not write.result().isError()
        except Exception as exc:
            _log.warning("drive_link: stop word on the way out: %r", exc)
            accepted = False
        policy.stop_answered(_now(), token, accepted)

    async def _check_parameters(self, client: ModbusClient) -> str | None:
        """None if 09.02 and 09.03 make a safe drive-side deadman, else the refusal message."""
        action = await self._read_parameter(client, self._map.comm_fault_action)
        timeout = await self._read_parameter(client, self._map.comm_timeout)
        if isinstance(action, str):
            return action
        if isinstance(timeout, str):
            return timeout
        if timeout > 0:
            # The silence after an unconfirmed stop must outlast the drive's own time-out.
            self._policy.set_deadman(timeout * COMM_TIMEOUT_UNIT_S)
        try:
            check_comm_timeout(timeout, self._map.comm_timeout)
            check_poll_margin(timeout, self._poll_interval_s, self._map.comm_timeout)
            check_comm_fault_action(action, self._map.comm_fault_action)
        except DriveConfigError as exc:
            return f"drive_config: {exc}"
        return None

    async def _read_parameter(self, client: ModbusClient, address: int) -> int | str:
        label = parameter_label(address)
        what = f"reading parameter {label} (register {address:#06x})"
        call = partial(client.read_holding_registers, address, count=1, device_id=self._device_id)
        response = await self._request(call, what)
        if isinstance(response, str):
            return f"drive_config: cannot check parameter {label}: {response}; refusing to run"
        return int(response.registers[0])

    def _command_pending(self) -> bool:
        if not (self._armed and self._wanted_raw > 0 and self._refusal is None):
            return False
        return self._sent_freq != self._wanted_raw or self._sent_run is not True

    # --- requests -----------------------------------------------------------------------------

    async def _write_stop(self, client: ModbusClient) -> None:
        token = self._policy.stop_written(_now())
        accepted = await self._write(
            client, self._map.command_word, stop_word(self._direction), "stop"
        )
        if accepted:
            self._sent_run = False
        self._policy.stop_answered(_now(), token, accepted)

    async def _write_command(self, client: ModbusClient) -> None:
        """The next step towards the wanted speed: the frequency, then the run word."""
        raw = self._wanted_raw
        if self._sent_freq != raw:
            self._policy.command_written(_now())
            if await self._write(client, self._map.frequency_command, raw, "frequency command"):
                self._sent_freq = raw
            return
        if self._refusal is not None or not self._armed:  # belt and braces: never run refused
            return
        self._policy.command_written(_now())
        if await self._write(client, self._map.command_word, run_word(self._direction), "run"):
            self._sent_run = True
            self.run_writes += 1

    async def _write(self, client: ModbusClient, address: int, value: int, what: str) -> bool:
        call = partial(client.write_register, address, value, device_id=self._device_id)
        response = await self._request(call, f"writing {what} {value:#06x} to {address:#06x}")
        return not isinstance(response, str)

    async def _poll(self, client: ModbusClient) -> None:
        if not self._parameters_checked:
            self._refusal = await self._check_parameters(client)
            self._parameters_checked = True
            if self._refusal is not None:
                _log.error("%s", self._refusal)
                self._disarm()
            self._live = self._ever_linked = True
        token = self._policy.poll_started(_now())
        values: dict[int, int] = {}
        for address, count in self._read_plan:
            call = partial(
                client.read_holding_registers, address, count=count, device_id=self._device_id
            )
            response = await self._request(call, f"reading {count} register(s) at {address:#06x}")
            if isinstance(response, str):
                return
            if len(response.registers) != count:
                self._set_event_fault(
                    f"drive_fault: {len(response.registers)} registers answered for {count} "
                    f"read at {address:#06x}"
                )
                return
            values.update((address + i, int(v)) for i, v in enumerate(response.registers))
        output_frequency = values[self._map.output_frequency]
        self._take_poll(values[self._map.error_code], output_frequency)
        self._policy.status(_now(), token, moving=output_frequency != 0)

    def _take_poll(self, error_code: int, output_frequency: int) -> None:
        if error_code:
            error = (
                f"drive_fault: drive reports error code {error_code} "
                f"(register {self._map.error_code:#06x})"
            )
            if error != self._drive_error:
                self._policy.raise_stop(_now(), StopCause.FAULT)
            self._drive_error = error
            self._disarm()
        else:
            self._drive_error = None
            if self._event_fault is not None and self._event_fault_seen:
                self._event_fault = None
        self._speed_mph = register_to_mph(output_frequency, self._mph_per_hz)
        self._publish()

    async def _request(
        self, call: Callable[[], Awaitable[ModbusPDU]], what: str
    ) -> ModbusPDU | str:
        """One request. An exception response becomes a drive_fault (returned as its text);
        no answer becomes a lost link (raised)."""
        try:
            # pymodbus bounds the wait itself; this outer bound only guards against it not doing so.
            async with asyncio.timeout(self._request_timeout_s * 2):
                response = await call()
            raise_if_cancelled()
        except TimeoutError as exc:
            raise_if_cancelled()
            raise _LinkLost(f"drive_link: no answer {what} within the time-out") from exc
        except (ModbusException, OSError) as exc:
            raise _LinkLost(f"drive_link: {what}: {exc}") from exc
        if response.isError():
            fault = (
                f"drive_fault: exception response {_exception_text(response.exception_code)} {what}"
            )
            # Commands wait a moment after a refusal, so we do not spin; a stop never waits.
            self._policy.refused(_now())
            self._set_event_fault(fault)
            return fault
        self._policy.answered(_now())
        return response

    # --- state --------------------------------------------------------------------------------

    def _fault(self) -> str | None:
        # The newest news first: a lost link or an exception response, then a refusal.
        return self._event_fault or self._refusal or self._drive_error

    def _publish(self) -> None:
        self._status = DriveStatus(t=self._clock(), speed_mph=self._speed_mph, fault=self._fault())

    def _set_event_fault(self, fault: str) -> None:
        if fault != self._event_fault:
            _log.warning("%s", fault)
            # A new fault raises the stop (once: a fault repeated by every poll must not turn
            # the repetition into a stream).
            self._policy.raise_stop(_now(), StopCause.FAULT)
        self._event_fault = fault
        self._event_fault_seen = False
        self._disarm()
        self._publish()

    def _command_fault(self, fault: str) -> None:
        self._wanted_raw = 0
        self._event_fault = fault
        self._event_fault_seen = False
        self._disarm()
        self._policy.raise_stop(_now(), StopCause.FAULT)
        # A new status only while the link is up: a dead link's status must not advance.
        if self._live:
            self._publish()
        self._wake.set()

    def _lose_link(self, fault: str) -> None:
        was_live = self._live
        self._drop_client()
        self._sent_run = None
        self._sent_freq = None
        self._disarm()
        self._policy.disconnected(_now())
        if was_live or (self._ever_linked and self._event_fault is None):
            _log.warning("%s", fault)
            self._event_fault = fault
            self._event_fault_seen = False
            # One status carrying the fault, then t stops advancing until the link is back.
            self._publish()
        elif not (self._ever_linked or self._said_unreachable):
            # Never reached since start-up: said once (the state shows no speed, and a start
            # is refused, but nothing at the log's usual level said why), then quietly.
            self._said_unreachable = True
            _log.warning("%s (the drive has not answered since start-up)", fault)
        else:
            _log.debug("%s", fault)

    def _disarm(self) -> None:
        self._armed = False
        self._healthy_seen = False
        self._wanted_raw = 0

    def _arm_if_healthy(self) -> None:
        if self._healthy_seen and self._live and self._fault() is None:
            self._armed = True


def _now() -> float:
    """The link policy's clock (the I/O task's waits are computed on it too)."""
    return time.monotonic()


def _check_arguments(
    transport: str,
    host: str | None,
    serial_port: str | None,
    device_id: int,
    direction: str,
    mph_per_hz: float,
    parity: str,
    poll_interval_s: float,
    request_timeout_s: float,
    reconnect_initial_s: float,
    reconnect_max_s: float,
) -> None:
    if transport not in ("rtu", "tcp"):
        raise ValueError(f"transport must be 'rtu' or 'tcp', not {transport!r}")
    if transport == "tcp" and not host:
        raise ValueError("transport 'tcp' needs host")
    if transport == "rtu" and not serial_port:
        raise ValueError("transport 'rtu' needs serial_port")
    if not 1 <= device_id <= 247:
        raise ValueError(f"device_id {device_id} is outside 1..247")
    if direction not in ("forward", "reverse"):
        raise ValueError(f"direction must be 'forward' or 'reverse', not {direction!r}")
    if parity not in ("N", "E", "O"):
        raise ValueError(f"parity must be 'N', 'E' or 'O', not {parity!r}")
    if not math.isfinite(mph_per_hz) or mph_per_hz <= 0:
        raise ValueError(f"mph_per_hz {mph_per_hz} must be positive")
    if not 0 < poll_interval_s <= MAX_POLL_INTERVAL_S:
        raise ValueError(f"poll_interval_s {poll_interval_s} must be in (0, 0.1] (SR-9)")
    if request_timeout_s <= 0 or poll_interval_s + request_timeout_s > MAX_DETECTION_S + 1e-9:
        raise ValueError(
            f"request_timeout_s {request_timeout_s} must be positive and, with the poll interval, "
            f"at most {MAX_DETECTION_S} s, so a dead link shows within {MAX_DETECTION_S} s"
        )
    if not 0 < reconnect_initial_s <= reconnect_max_s:
        raise ValueError("need 0 < reconnect_initial_s <= reconnect_max_s")
