"""The Modbus VFD driver: a belt motor on a variable-frequency drive, Modbus RTU or Modbus TCP.

One task (:meth:`ModbusVfdDriver.run`) owns the link and does all the I/O; the controller's calls
(:meth:`command_speed`, :meth:`emergency_stop`, :meth:`status`) only change or read state and wake
that task, so they never block (drivers/base.py).

The link, in order of priority:

1. **Start-up** (every connection, including each reconnect): write a stop command word, then
   read 09.02 (communication fault action) and 09.03 (communication time-out). Unless the time-out
   is enabled, at most 1 s, at least twice the poll interval, and the action is a stop, the driver
   refuses to run: ``status().fault`` names the parameter and the value, and it never writes a
   run command (SR-9). It keeps polling so the controller still sees the belt.
2. **Emergency stop** (SR-13). Modbus has no way to put a frame on the wire synchronously: a
   request is a coroutine and the bus carries one request at a time (RS-485 is half duplex, and a
   drive answers requests in order). So ``emergency_stop()`` does what can be done at once - it
   drops any speed change not yet sent (the "queue" is a single latest-wins value, so there is
   nothing else to cancel) and wakes the I/O task - and "handed to the wire" means **the very
   next frame**: the stop command word goes out as soon as the one request already in flight, if
   any, is answered or times out.
3. **Stop** when the wanted speed is 0 and the drive may be running.
4. **Poll** the error code and the output frequency every ``poll_interval_s`` (at most 0.1 s),
   well inside the drive's own time-out, so the drive-side deadman stays armed but never trips on
   a healthy link (SR-9). ``status().speed_mph`` comes from the output frequency.
5. **Speed**: frequency command first, then the run command word (with the direction bits).

Faults. An exception response is ``drive_fault: ...``; a time-out, a refused connection or a
port that vanished is ``drive_link: ...``. A dead link is noticed at the next request (at most
``poll_interval_s`` away) or when its own time-out expires: within ``poll_interval_s +
request_timeout_s`` <= 0.3 s. The driver then publishes one status carrying the fault and
stops updating it, so ``status().t`` stops advancing. It reconnects forever with capped
exponential backoff, a fresh client each try (a client object that lost its link is never
reused), and each reconnect starts with the stop command word: those are the continuing stop
attempts.

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

from drivers.base import DriveStatus
from drivers.vfd_codec import (
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
from safety.link_limits import (
    DRIVE_LINK_TIMEOUT_S,
    DRIVE_MAX_POLL_INTERVAL_S,
    VFD_REQUEST_TIMEOUT_S,
)

Transport = Literal["rtu", "tcp"]
ModbusClient = AsyncModbusTcpClient | AsyncModbusSerialClient
TracePacket = Callable[[bool, bytes], bytes]
_Op = Callable[[ModbusClient], Awaitable[None]]

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
        trace_packet: TracePacket | None = None,
    ) -> None:
        """``clock`` stamps statuses on the controller's monotonic clock. ``request_timeout_s``
        bounds one request (and a connection attempt). ``trace_packet`` is handed to pymodbus,
        which calls it with each frame just before writing it (diagnostics, benchmarks)."""
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
        self._reconnect_initial_s = reconnect_initial_s
        self._reconnect_max_s = reconnect_max_s
        self._trace_packet = trace_packet
        self._read_plan = status_read_plan(register_map)

        # What the controller asked for. 0 = stop.
        self._wanted_raw = 0
        self._estop_requested = 0
        self._estop_written = 0
        # Run permission: see the module docstring ("Never restart on its own").
        self._armed = False
        self._healthy_seen = False
        # What the drive was last told on this link; None = unknown.
        self._sent_run: bool | None = None
        self._sent_freq: int | None = None
        # Link state and what status() reports.
        self._live = False
        self._ever_linked = False
        self._last_session_was_live = False
        self._status: DriveStatus | None = None
        self._speed_mph = 0.0
        self._refusal: str | None = None
        self._drive_error: str | None = None
        # Exception responses, lost links, bad commands: kept until status() has shown them.
        self._event_fault: str | None = None
        self._event_fault_seen = False
        self._next_poll_at = 0.0
        self._holdoff_until = 0.0  # writes wait after an exception response, so we do not spin
        self._wake = asyncio.Event()

        # Counters for tests and diagnostics.
        self.connect_attempts = 0
        self.stop_writes = 0
        self.run_writes = 0
        self.ignored_run_commands = 0

    # --- the controller's side (never blocks) -------------------------------------------------

    def command_speed(self, mph: float) -> None:
        if not math.isfinite(mph) or mph < 0:
            self._command_fault(f"drive_command: speed {mph} mph refused; stopping")
            return
        try:
            raw = mph_to_register(mph, self._mph_per_hz)
        except CodecError as exc:
            self._command_fault(f"drive_command: {exc}; stopping")
            return
        if raw == 0:
            self._wanted_raw = 0
            self._arm_if_healthy()
        elif self._armed:
            self._wanted_raw = raw
        else:
            # No run before the controller has seen the link healthy and commanded a stop.
            self._wanted_raw = 0
            self.ignored_run_commands += 1
        self._wake.set()

    def emergency_stop(self) -> None:
        # Drop any speed not yet sent; the I/O task writes the stop word as the next frame.
        self._wanted_raw = 0
        self._estop_requested += 1
        self._arm_if_healthy()
        self._wake.set()

    def status(self) -> DriveStatus | None:
        st = self._status
        if st is not None:
            if st.fault is not None and st.fault == self._event_fault:
                self._event_fault_seen = True
            if st.fault is None and self._live:
                self._healthy_seen = True
        return st

    # --- the I/O task -------------------------------------------------------------------------

    async def run(self) -> None:
        delay = self._reconnect_initial_s
        while True:
            client = self._new_client()
            self.connect_attempts += 1
            self._last_session_was_live = False
            try:
                await self._connect(client)
                await self._session(client)
            except _LinkLost as exc:
                self._link_lost(str(exc))
            except Exception as exc:
                # Retry forever (SR-9): an unexpected error from the Modbus stack is a lost link,
                # logged with its traceback, not the end of the driver.
                _log.exception("unexpected error on the drive link")
                self._link_lost(f"drive_link: unexpected error: {exc!r}")
            finally:
                self._live = False
                client.close()
            raise_if_cancelled()
            if self._last_session_was_live:
                delay = self._reconnect_initial_s
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reconnect_max_s)

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

    async def _connect(self, client: ModbusClient) -> None:
        problem = await connect_within(client, self._request_timeout_s * 4)
        if problem is not None:
            raise _LinkLost(f"drive_link: cannot connect to {self._where()}: {problem}")

    def _where(self) -> str:
        if self._transport == "tcp":
            return f"{self._host}:{self._port}"
        return str(self._serial_port)

    async def _session(self, client: ModbusClient) -> None:
        estops = self._estop_requested
        # Stop first (SR-11): whatever the drive was doing, it is told to stop before anything.
        if await self._write(client, self._map.command_word, stop_word(self._direction), "stop"):
            self._sent_run = False
            self._estop_written = estops
            self.stop_writes += 1
        self._refusal = await self._check_parameters(client)
        if self._refusal is not None:
            _log.error("%s", self._refusal)
            self._disarm()
        self._live = self._ever_linked = self._last_session_was_live = True
        await self._poll(client)
        while True:
            await self._step(client)

    async def _check_parameters(self, client: ModbusClient) -> str | None:
        """None if 09.02 and 09.03 make a safe drive-side deadman, else the refusal message."""
        action = await self._read_parameter(client, self._map.comm_fault_action)
        timeout = await self._read_parameter(client, self._map.comm_timeout)
        if isinstance(action, str):
            return action
        if isinstance(timeout, str):
            return timeout
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

    async def _step(self, client: ModbusClient) -> None:
        raise_if_cancelled()
        self._wake.clear()
        if not client.connected:
            raise _LinkLost(f"drive_link: connection to {self._where()} closed")
        now = asyncio.get_running_loop().time()
        op = self._next_op(now)
        if op is not None:
            await op(client)
            return
        until = self._next_poll_at
        if self._holdoff_until > now:
            until = min(until, self._holdoff_until)
        try:
            async with asyncio.timeout(max(0.0, until - now)):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _next_op(self, now: float) -> _Op | None:
        """The next request, by priority: emergency stop, stop, poll, speed."""
        may_write = now >= self._holdoff_until
        want_run = self._armed and self._wanted_raw > 0
        if may_write and self._estop_requested != self._estop_written:
            return self._write_stop
        if may_write and not want_run and self._sent_run is not False:
            return self._write_stop
        if now >= self._next_poll_at:
            return self._poll
        if may_write and want_run:
            if self._sent_freq != self._wanted_raw:
                return partial(self._write_frequency, raw=self._wanted_raw)
            if self._sent_run is not True:
                return self._write_run
        return None

    # --- requests -----------------------------------------------------------------------------

    async def _write_stop(self, client: ModbusClient) -> None:
        estops = self._estop_requested
        if await self._write(client, self._map.command_word, stop_word(self._direction), "stop"):
            self._sent_run = False
            self._estop_written = estops
            self.stop_writes += 1

    async def _write_run(self, client: ModbusClient) -> None:
        if self._refusal is not None or not self._armed:  # belt and braces: never run refused
            return
        if await self._write(client, self._map.command_word, run_word(self._direction), "run"):
            self._sent_run = True
            self.run_writes += 1

    async def _write_frequency(self, client: ModbusClient, raw: int) -> None:
        if await self._write(client, self._map.frequency_command, raw, "frequency command"):
            self._sent_freq = raw

    async def _write(self, client: ModbusClient, address: int, value: int, what: str) -> bool:
        call = partial(client.write_register, address, value, device_id=self._device_id)
        response = await self._request(call, f"writing {what} {value:#06x} to {address:#06x}")
        return not isinstance(response, str)

    async def _poll(self, client: ModbusClient) -> None:
        self._next_poll_at = asyncio.get_running_loop().time() + self._poll_interval_s
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
        self._take_poll(values[self._map.error_code], values[self._map.output_frequency])

    def _take_poll(self, error_code: int, output_frequency: int) -> None:
        if error_code:
            self._drive_error = (
                f"drive_fault: drive reports error code {error_code} "
                f"(register {self._map.error_code:#06x})"
            )
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
            self._holdoff_until = asyncio.get_running_loop().time() + self._poll_interval_s
            self._set_event_fault(fault)
            return fault
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
        self._event_fault = fault
        self._event_fault_seen = False
        self._disarm()
        self._publish()

    def _command_fault(self, fault: str) -> None:
        self._wanted_raw = 0
        self._event_fault = fault
        self._event_fault_seen = False
        self._disarm()
        # A new status only while the link is up: a dead link's status must not advance.
        if self._live:
            self._publish()
        self._wake.set()

    def _link_lost(self, fault: str) -> None:
        was_live = self._live
        self._live = False
        self._sent_run = None
        self._sent_freq = None
        self._disarm()
        if was_live or (self._ever_linked and self._event_fault is None):
            _log.warning("%s", fault)
            self._event_fault = fault
            self._event_fault_seen = False
            # One status carrying the fault, then t stops advancing until the link is back.
            self._publish()

    def _disarm(self) -> None:
        self._armed = False
        self._healthy_seen = False
        self._wanted_raw = 0

    def _arm_if_healthy(self) -> None:
        if self._healthy_seen and self._live and self._fault() is None:
            self._armed = True


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
