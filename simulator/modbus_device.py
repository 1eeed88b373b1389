"""A simulated variable-frequency drive behind pymodbus's real Modbus server.

The far side of the Modbus driver's wire (docs/wire-protocols.md, section 2): the Delta VFD-E
register map (or any map from config/drives/), belt physics from :mod:`simulator.belt`, and the
drive's own communication time-out. When no request arrives for the 09.03 time-out, the drive
applies its 09.02 action: a stop action stops the belt; "keep running" keeps it moving - the
unsafe configuration the driver must refuse at start-up.

Two transports, both pymodbus's own server classes so any standard client can talk to it:

- Modbus TCP on a host and port (port 0 picks a free one; ``.port`` tells which);
- Modbus RTU on a pty. A pty has one path (the slave) and an unnamed master, but here both ends
  want a path: pymodbus's serial server opens a port by name, and so does the driver. So the
  simulator joins two raw-mode ptys back to back, as ``socat pty,raw pty,raw`` would: the server
  opens one slave, ``.path`` is the other, and the device copies bytes between the two masters.
  That copy is also where a test can pull the cable (``unplug()``).

Fault injection (SR-9 tests, benchmarks): the drive can answer chosen registers, or all, with a
Modbus exception for a while or for ever (:meth:`SimulatedVfd.answer_with_exception`), delay every
answer by a line delay (``line_delay_s``), hold every answer until a test releases it
(:meth:`SimulatedVfd.hold_answers`), and ignore writes (answer them, apply nothing: a drive
whose command source is its keypad; :meth:`SimulatedVfd.ignore_writes`). Every request, answered
with an exception or not, is proof of life for the communication time-out, as on a real drive:
that is why a host that keeps polling a drive that refuses its stop keeps the belt running.

The CLI (``treadguard sim-device modbus --tcp HOST:PORT | --rtu``) is wired elsewhere; it needs
:func:`serve_modbus_tcp` / :func:`serve_modbus_rtu`, ``.path`` and ``close()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import math
import os
import time
import tty
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, cast

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from treadguard.drivers.vfd_codec import (
    COMM_TIMEOUT_UNIT_S,
    FAULT_RESET_WORD,
    STOP_ACTIONS,
    CodecError,
    CommFaultAction,
    Direction,
    RegisterMap,
    decode_command_word,
    register_to_mph,
    status_word,
)
from treadguard.simulator.belt import Belt, BeltParams

DEFAULT_REGISTER_MAP = (
    Path(__file__).resolve().parent.parent / "config" / "drives" / "delta-vfd-e.toml"
)

# How often the drive's own clock runs the physics and checks its communication time-out.
_TICK_S = 0.01
# Write single/multiple coil(s)/register(s): pymodbus calls the action twice for these.
_WRITE_FUNCTIONS = frozenset({5, 6, 15, 16})
# 09.03 accepts 0.0-120.0 s on a Delta *(verify)*.
_COMM_TIMEOUT_MAX_RAW = 1200


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One command word the drive accepted, with when it arrived on the drive's clock."""

    t: float
    word: int


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the drive saw it: when (after the line delay), what, and the exception
    it was answered with (None: a normal answer)."""

    t: float
    function_code: int
    address: int
    count: int
    values: tuple[int, ...] | None  # what a write asked for; None for a read
    exception: int | None
    applied: bool  # False: an exception or an ignored write; the drive did not act on it


@dataclass(frozen=True, slots=True)
class ExceptionRule:
    """Answer matching requests with ``code`` until ``until`` (drive clock)."""

    code: int
    reads: bool
    writes: bool
    addresses: frozenset[int] | None  # None: every register
    until: float

    def matches(self, now: float, address: int, count: int, write: bool) -> bool:
        if now >= self.until or not (self.writes if write else self.reads):
            return False
        if self.addresses is None:
            return True
        return any(a in self.addresses for a in range(address, address + count))


@dataclass(frozen=True, slots=True)
class CommTimeoutTrip:
    """The drive's communication time-out fired: when, after which last request, what it did."""

    t: float
    last_request_t: float
    action: int
    stopped: bool


class SimulatedVfd:
    """The drive itself: registers, belt and time-out; independent of the transport serving it.

    It keeps running while a server is closed and reopened (the drive was not powered off, only
    its link was cut). Read its state through the attributes, not through Modbus: every Modbus
    request is proof of life for the drive's time-out.
    """

    def __init__(
        self,
        register_map: RegisterMap | None = None,
        *,
        comm_fault_action: int = int(CommFaultAction.WARN_AND_RAMP_TO_STOP),
        comm_timeout: int = 5,
        mph_per_hz: float = 0.05,
        max_frequency: int = 6000,
        belt_params: BeltParams | None = None,
        device_id: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.register_map = register_map or RegisterMap.from_toml(DEFAULT_REGISTER_MAP)
        self.comm_fault_action = comm_fault_action  # 09.02, raw
        self.comm_timeout = comm_timeout  # 09.03, 0.1 s units, 0 = disabled
        self.mph_per_hz = mph_per_hz
        self.max_frequency = max_frequency  # 0.01 Hz units
        self.device_id = device_id
        self._clock = clock
        # The VFD's time-out below is this drive's deadman; the belt's own one is switched off.
        params = replace(belt_params or BeltParams(), deadman_s=math.inf)
        self.belt = Belt(params, t0=clock())
        self.running = False
        self.direction: Direction = "forward"
        self.frequency_command = 0
        self.error_code = 0
        self.comm_warning = False  # the keypad's cE10 after a "warn" action
        self.last_request_t = clock()
        self.requests = 0
        self.command_log: deque[CommandRecord] = deque(maxlen=100_000)
        self.request_log: deque[RequestRecord] = deque(maxlen=100_000)
        self.comm_timeout_trips: list[CommTimeoutTrip] = []
        # Fault injection.
        self.line_delay_s = 0.0  # every request waits this long before the drive sees it
        self.exception_rules: list[ExceptionRule] = []
        self.ignore_writes_until = -math.inf  # drive clock
        # Set: requests are answered; clear (hold_answers()): each waits until it is set again.
        self._answering = asyncio.Event()
        self._answering.set()
        self._held_requests = 0
        # Called with (word, perf_counter_ns()) when a command word is applied (benchmarks).
        self.on_command_word: Callable[[int, int], None] | None = None
        # Called with (record, perf_counter_ns()) for every request the drive sees (benchmarks).
        self.on_request: Callable[[RequestRecord, int], None] | None = None
        self._silence_handled = False
        self._changed = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the drive's own clock (physics and time-out). Needs a running event loop."""
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(
                self._tick_forever(), name="simulated-vfd-ticker"
            )

    async def close(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None

    # --- what tests look at -------------------------------------------------------------------

    @property
    def output_frequency(self) -> int:
        return round(self.belt.speed_mph / self.mph_per_hz * 100)

    @property
    def commanded_words(self) -> list[int]:
        return [rec.word for rec in self.command_log]

    def answer_with_exception(
        self,
        code: int = int(ExcCodes.DEVICE_FAILURE),
        *,
        reads: bool = True,
        writes: bool = True,
        addresses: set[int] | frozenset[int] | None = None,
        for_s: float = math.inf,
    ) -> None:
        """From now, answer reads and/or writes touching ``addresses`` (None: any register)
        with exception ``code``, for ``for_s`` seconds (default: for ever). A refused write is
        not applied. Rules add up; :meth:`answer_normally` clears them."""
        try:
            ExcCodes(code)
        except ValueError:
            known = ", ".join(str(int(c)) for c in ExcCodes)
            raise ValueError(f"exception code {code} is not one of {known}") from None
        rule = ExceptionRule(
            code=code,
            reads=reads,
            writes=writes,
            addresses=None if addresses is None else frozenset(addresses),
            until=self._clock() + for_s,
        )
        self.exception_rules.append(rule)

    def answer_normally(self) -> None:
        self.exception_rules.clear()

    def ignore_writes(self, for_s: float = math.inf) -> None:
        """Answer writes as if applied, but apply none (command source on the keypad), for
        ``for_s`` seconds (default: for ever). ``for_s=0`` obeys writes again."""
        self.ignore_writes_until = self._clock() + for_s

    def hold_answers(self) -> None:
        """From now on every request is carried out (and logged) but its answer waits until
        :meth:`release_answers`: a slow line back to the host, at a moment a test chooses."""
        self._answering.clear()

    def release_answers(self) -> None:
        """The answers held go out, in order, and new ones at once."""
        self._answering.set()

    @property
    def holding(self) -> int:
        """How many requests are waiting for :meth:`release_answers`."""
        return self._held_requests

    def start_from_keypad(self, mph: float) -> None:
        """Someone runs the belt from the drive's own keypad."""
        now = self._clock()
        self.frequency_command = round(mph / self.mph_per_hz * 100)
        self.running = True
        self.belt.host_command(now, self._commanded_mph())
        self._notify()

    def inject_error(self, code: int) -> None:
        """Trip the drive with this error code (0x2100); the belt coasts to a stop."""
        self.error_code = code
        self._stop(self._clock())

    async def wait_until(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        """Wait for a condition on the drive's state; re-checked after every request and tick."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await self._changed.wait()

    # --- the drive's clock --------------------------------------------------------------------

    async def _tick_forever(self) -> None:
        while True:
            self.tick(self._clock())
            await asyncio.sleep(_TICK_S)

    def tick(self, now: float) -> None:
        self.belt.advance(now)
        self._check_comm_timeout(now)
        self._notify()

    def _check_comm_timeout(self, now: float) -> None:
        if self.comm_timeout <= 0 or self._silence_handled:
            return
        if now - self.last_request_t <= self.comm_timeout * COMM_TIMEOUT_UNIT_S:
            return
        self._silence_handled = True
        stops = self.comm_fault_action in {int(a) for a in STOP_ACTIONS}
        was_running = self.running
        if stops:
            # Ramp and coast both use the belt's normal deceleration: the belt model has no
            # free-wheeling mode, and either way the belt comes to rest.
            self._stop(now)
        else:
            self.comm_warning = self.comm_fault_action == CommFaultAction.WARN_AND_KEEP_RUNNING
        if was_running:
            trip = CommTimeoutTrip(now, self.last_request_t, self.comm_fault_action, stops)
            self.comm_timeout_trips.append(trip)

    def _stop(self, now: float) -> None:
        self.running = False
        self.belt.host_command(now, 0.0)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # --- Modbus side --------------------------------------------------------------------------

    def sim_device(self) -> SimDevice:
        """pymodbus's device description: the map's registers, the rest answer 'illegal address'."""
        rmap = self.register_map
        readonly = {
            rmap.error_code,
            rmap.status_word,
            rmap.frequency_readback,
            rmap.output_frequency,
        }
        simdata = [
            SimData(address=a, datatype=DataType.REGISTERS, readonly=a in readonly)
            for a in sorted(rmap.addresses().values())
        ]
        return SimDevice(id=self.device_id, simdata=simdata, action=self._on_request)

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this on every access, before it answers; it may edit ``registers``."""
        if set_values is None and function_code in _WRITE_FUNCTIONS:
            # The server reading back the write it has just applied, to echo it: part of the
            # same request, already delayed, logged and counted.
            self._refresh(registers, start_address)
            return None
        if self.line_delay_s > 0:
            await asyncio.sleep(self.line_delay_s)
        now = self._clock()
        self.belt.advance(now)
        # Any request addressed to the drive, even one it refuses, resets its time-out.
        self.last_request_t = now
        self._silence_handled = False
        self.requests += 1
        write = set_values is not None
        result = self._injected_exception(now, address, count, write)
        applied = result is None
        if set_values is not None and result is None:
            if now < self.ignore_writes_until:
                applied = False
            else:
                for offset, value in enumerate(set_values):
                    result = self._write(address + offset, int(value), now)
                    if result is not None:
                        applied = False
                        break
        self.request_log.append(
            RequestRecord(
                t=now,
                function_code=function_code,
                address=address,
                count=count,
                values=None if set_values is None else tuple(int(v) for v in set_values),
                exception=None if result is None else int(result),
                applied=applied,
            )
        )
        if self.on_request is not None:
            self.on_request(self.request_log[-1], time.perf_counter_ns())
        self._refresh(registers, start_address)
        self._notify()
        if not self._answering.is_set():
            # Carried out and logged; only its answer waits (a slow line back to the host).
            self._held_requests += 1
            try:
                await self._answering.wait()
            finally:
                self._held_requests -= 1
        return result

    def _injected_exception(
        self, now: float, address: int, count: int, write: bool
    ) -> ExcCodes | None:
        for rule in self.exception_rules:
            if rule.matches(now, address, count, write):
                return ExcCodes(rule.code)
        return None

    def _write(self, address: int, value: int, now: float) -> ExcCodes | None:
        rmap = self.register_map
        if address == rmap.command_word:
            return self._write_command_word(value, now)
        if address == rmap.frequency_command:
            return self._write_frequency(value, now)
        if address == rmap.fault_reset:
            if value & FAULT_RESET_WORD:
                self.error_code = 0
            return None
        if address == rmap.comm_fault_action:
            if value not in {int(a) for a in CommFaultAction}:
                return ExcCodes.ILLEGAL_VALUE
            self.comm_fault_action = value
            return None
        if address == rmap.comm_timeout:
            if not 0 <= value <= _COMM_TIMEOUT_MAX_RAW:
                return ExcCodes.ILLEGAL_VALUE
            self.comm_timeout = value
            return None
        return ExcCodes.ILLEGAL_ADDRESS

    def _write_command_word(self, word: int, now: float) -> ExcCodes | None:
        try:
            cmd = decode_command_word(word)
        except CodecError:
            return ExcCodes.ILLEGAL_VALUE
        if cmd.direction is not None:
            self.direction = cmd.direction
        if cmd.run is True and self.error_code == 0:
            self.running = True
            self.belt.host_command(now, self._commanded_mph())
        elif cmd.run is False:
            self._stop(now)
        self.command_log.append(CommandRecord(now, word))
        if self.on_command_word is not None:
            self.on_command_word(word, time.perf_counter_ns())
        return None

    def _write_frequency(self, value: int, now: float) -> ExcCodes | None:
        if value > self.max_frequency:
            return ExcCodes.ILLEGAL_VALUE
        self.frequency_command = value
        if self.running:
            self.belt.host_command(now, self._commanded_mph())
        return None

    def _commanded_mph(self) -> float:
        return register_to_mph(self.frequency_command, self.mph_per_hz)

    def _refresh(self, registers: list[int], start_address: int) -> None:
        rmap = self.register_map
        values = {
            rmap.command_word: None,  # keeps the last word written, as a real drive reads back
            rmap.error_code: self.error_code,
            rmap.status_word: status_word(
                running=self.running, moving=self.belt.speed_mph > 0, direction=self.direction
            ),
            rmap.frequency_readback: self.frequency_command,
            rmap.output_frequency: min(self.output_frequency, 0xFFFF),
            rmap.comm_fault_action: self.comm_fault_action,
            rmap.comm_timeout: self.comm_timeout,
        }
        for address, value in values.items():
            if value is not None:
                registers[address - start_address] = value


# --- pty link for RTU ---------------------------------------------------------------------------


class PtyLink:
    """Two raw-mode ptys joined back to back: ``server_path`` <-> ``path``.

    Each side's slave stays open here too, so that a side closing its port does not leave the
    master reading EIO in a loop; closing the link hangs both ports up, like a USB adapter pulled.
    """

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server_master, self._server_slave = _raw_pty()
        self._client_master, self._client_slave = _raw_pty()
        self.server_path = os.ttyname(self._server_slave)
        self.path = os.ttyname(self._client_slave)
        self.plugged = True
        # Called with (bytes, perf_counter_ns()) for bytes arriving from the client (benchmarks).
        self.on_client_bytes: Callable[[bytes, int], None] | None = None
        self._closed = False
        self._loop.add_reader(self._client_master, self._pump, True)
        self._loop.add_reader(self._server_master, self._pump, False)

    def _pump(self, from_client: bool) -> None:
        src, dst = (
            (self._client_master, self._server_master)
            if from_client
            else (self._server_master, self._client_master)
        )
        try:
            data = os.read(src, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # no slave open at the moment; nothing to copy
                return
            raise
        if from_client and self.on_client_bytes is not None:
            self.on_client_bytes(data, time.perf_counter_ns())
        if self.plugged:
            # A full buffer on the far side loses bytes, as an overrun UART would.
            with contextlib.suppress(BlockingIOError):
                os.write(dst, data)

    def unplug(self) -> None:
        """Pull the cable: bytes in either direction are lost until plug()."""
        self.plugged = False

    def plug(self) -> None:
        self.plugged = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._client_master)
        self._loop.remove_reader(self._server_master)
        for fd in (
            self._client_master,
            self._server_master,
            self._client_slave,
            self._server_slave,
        ):
            with contextlib.suppress(OSError):
                os.close(fd)


def _raw_pty() -> tuple[int, int]:
    master, slave = os.openpty()
    # Raw on both ends, or the line discipline rewrites bytes such as 0x03, 0x0D and 0x11.
    tty.setraw(master)
    tty.setraw(slave)
    os.set_blocking(master, False)
    return master, slave


# --- servers -------------------------------------------------------------------------------------


class ModbusDeviceServer:
    """A running simulated drive: ``vfd``, ``belt``, the address (``host``/``port``) or pty
    ``path``, and ``close()``."""

    def __init__(
        self,
        vfd: SimulatedVfd,
        server: ModbusTcpServer | ModbusSerialServer,
        *,
        transport: Literal["tcp", "rtu"],
        owns_vfd: bool,
        host: str | None = None,
        port: int | None = None,
        pty: PtyLink | None = None,
    ) -> None:
        self.vfd = vfd
        self.transport = transport
        self.host = host
        self.port = port
        self.pty = pty
        self._server = server
        self._owns_vfd = owns_vfd

    @property
    def belt(self) -> Belt:
        return self.vfd.belt

    @property
    def path(self) -> str | None:
        """The serial port a client opens (RTU only)."""
        return self.pty.path if self.pty is not None else None

    def unplug(self) -> None:
        """RTU: pull the cable; the server and the drive keep running."""
        if self.pty is None:
            raise RuntimeError("unplug() needs an RTU server; close() a TCP server instead")
        self.pty.unplug()

    def plug(self) -> None:
        if self.pty is None:
            raise RuntimeError("plug() needs an RTU server")
        self.pty.plug()

    async def close(self) -> None:
        """Stop serving (closes client connections); stops the drive too if it was made here."""
        await self._server.shutdown()  # type: ignore[no-untyped-call]
        if self.pty is not None:
            self.pty.close()
        if self._owns_vfd:
            await self.vfd.close()

    async def __aenter__(self) -> ModbusDeviceServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_modbus_tcp(
    host: str = "127.0.0.1", port: int = 0, *, vfd: SimulatedVfd | None = None
) -> ModbusDeviceServer:
    """Serve a simulated drive on Modbus TCP; port 0 picks a free port (see ``.port``).

    Pass ``vfd`` to serve an existing drive again (a restarted link); otherwise one is made with
    safe defaults (09.02 = ramp to stop, 09.03 = 0.5 s) and closed with the server.
    """
    owns = vfd is None
    drive = vfd if vfd is not None else SimulatedVfd()
    drive.start()
    server = ModbusTcpServer(drive.sim_device(), framer=FramerType.SOCKET, address=(host, port))
    await server.serve_forever(background=True)
    listener = cast(asyncio.Server, server.transport)
    bound_port = int(listener.sockets[0].getsockname()[1])
    return ModbusDeviceServer(
        drive, server, transport="tcp", owns_vfd=owns, host=host, port=bound_port
    )


async def serve_modbus_rtu(
    *,
    vfd: SimulatedVfd | None = None,
    baudrate: int = 19200,
    parity: str = "N",
) -> ModbusDeviceServer:
    """Serve a simulated drive on Modbus RTU over a pty; ``.path`` is the port to open.

    A pty ignores the baud rate and parity: bytes arrive as fast as the kernel copies them, so
    timings measured here are a floor, not what a real RS-485 line gives.
    """
    owns = vfd is None
    drive = vfd if vfd is not None else SimulatedVfd()
    drive.start()
    link = PtyLink()
    server = ModbusSerialServer(
        drive.sim_device(),
        framer=FramerType.RTU,
        port=link.server_path,
        baudrate=baudrate,
        parity=parity,
    )
    try:
        await server.serve_forever(background=True)
    except BaseException:
        link.close()
        raise
    return ModbusDeviceServer(drive, server, transport="rtu", owns_vfd=owns, pty=link)
