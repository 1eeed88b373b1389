"""Grip and fall contacts on Modbus devices: discrete inputs or coils of I/O modules (or of a
drive with digital inputs), polled over Modbus RTU or TCP.

One :class:`ModbusInputPoller` per link (a serial bus, or a TCP host and port) reads all of its
points every ``poll_interval_s``, one request per device and table (the smallest range that
holds them): a serial port opens once, so the devices of one RS-485 bus share one client. Each
complete poll is a fresh reading, stamped with the time its first request went out. A device
that stops answering, answers with an exception or with something other than what was asked,
or drops the connection gives no reading: the safety core's time-out makes its sensors stale
(SR-8), and the poller reconnects with capped backoff, a fresh client each try (as the drive
driver does). On RS-485 it first waits a quiet line of one time-out, so that a late answer to
the request that failed is not taken for the answer to the next.

The levels passed on are the bits as read (True = on): polarity and debounce are applied by
:mod:`drivers.input_filter`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pymodbus import FramerType, ModbusException
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from treadguard.drivers.modbus_vfd import connect_within, raise_if_cancelled
from treadguard.safety.link_limits import MODBUS_MAX_BITS_PER_READ

_log = logging.getLogger("treadguard.drivers.modbus_inputs")

Table = Literal["discrete_input", "coil"]
LevelCallback = Callable[[int, float, bool], None]  # (index of the point, time, bit is on)


# What each table's read answers with: pymodbus does not check that an answer is the one the
# request asked for, and on RS-485 a late answer can pass for the next request's.
_FUNCTION_CODE: dict[Table, int] = {"coil": 1, "discrete_input": 2}


@dataclass(frozen=True, slots=True)
class ModbusPoint:
    device_id: int
    table: Table
    address: int


@dataclass(frozen=True, slots=True)
class ModbusLink:
    transport: Literal["rtu", "tcp"]
    host: str | None = None
    tcp_port: int = 502
    serial_port: str | None = None
    baud: int = 19200
    parity: Literal["N", "E", "O"] = "N"

    def where(self) -> str:
        return f"{self.host}:{self.tcp_port}" if self.transport == "tcp" else str(self.serial_port)


class _NoReading(Exception):
    """This poll gave no reading; the message says why."""


class ModbusInputPoller:
    def __init__(
        self,
        link: ModbusLink,
        points: Sequence[ModbusPoint],
        on_level: LevelCallback,
        *,
        poll_interval_s: float,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
        reconnect_max_s: float = 1.0,
    ) -> None:
        if not points:
            raise ValueError("no points to read")
        if link.transport == "tcp" and not link.host:
            raise ValueError("Modbus TCP needs a host")
        if link.transport == "rtu" and not link.serial_port:
            raise ValueError("Modbus RTU needs a serial port")
        self.link = link
        self._points = list(points)
        self._on_level = on_level
        self._poll_interval_s = poll_interval_s
        self._timeout_s = timeout_s
        self._clock = clock
        self._reconnect_max_s = reconnect_max_s
        self._problem: str | None = None
        self.polls = 0  # complete polls, for tests and diagnostics
        # One request per device and table:
        # (device id, table, first address, count, [(point index, offset)]).
        self._plan: list[tuple[int, Table, int, int, list[tuple[int, int]]]] = []
        groups = sorted({(p.device_id, p.table) for p in self._points})
        for device_id, table in groups:
            wanted = [
                (i, p.address)
                for i, p in enumerate(self._points)
                if (p.device_id, p.table) == (device_id, table)
            ]
            first = min(a for _, a in wanted)
            count = max(a for _, a in wanted) - first + 1
            if count > MODBUS_MAX_BITS_PER_READ:  # check-config says so too
                raise ValueError(
                    f"{table} addresses span {count}, more than one read "
                    f"({MODBUS_MAX_BITS_PER_READ})"
                )
            members = [(i, a - first) for i, a in wanted]
            self._plan.append((device_id, table, first, count, members))

    @property
    def problem(self) -> str | None:
        return self._problem

    async def run(self) -> None:
        delay = min(0.05, self._reconnect_max_s)
        while True:
            client = self._new_client()
            polled = False
            try:
                await self._connect(client)
                while True:
                    await self._poll(client)
                    polled = True
                    delay = min(0.05, self._reconnect_max_s)
                    await asyncio.sleep(self._poll_interval_s)
            except _NoReading as exc:
                self._set_problem(str(exc))
            except Exception as exc:
                # An unexpected error from the Modbus stack is no reading, then a reconnect:
                # never the end of the poller.
                _log.exception("unexpected error reading inputs on %s", self.link.where())
                self._set_problem(f"unexpected error on {self.link.where()}: {exc!r}")
            finally:
                client.close()
            raise_if_cancelled()
            pause = 0.0 if polled else delay
            if self.link.transport == "rtu":
                pause = max(pause, self._timeout_s)  # a quiet line: a late answer dies with it
            await asyncio.sleep(pause)
            if not polled:
                delay = min(delay * 2, self._reconnect_max_s)

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # retries=0: an unanswered poll is no reading, not something to hide behind a retry.
        link = self.link
        if link.transport == "tcp":
            assert link.host is not None
            return AsyncModbusTcpClient(
                link.host, port=link.tcp_port, timeout=self._timeout_s, retries=0,
                reconnect_delay=0,
            )  # fmt: skip
        assert link.serial_port is not None
        return AsyncModbusSerialClient(
            link.serial_port, framer=FramerType.RTU, baudrate=link.baud, parity=link.parity,
            timeout=self._timeout_s, retries=0, reconnect_delay=0,
        )  # fmt: skip

    async def _connect(self, client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> None:
        problem = await connect_within(client, self._timeout_s * 4)
        if problem is not None:
            raise _NoReading(f"cannot connect to {self.link.where()}: {problem}")

    async def _poll(self, client: AsyncModbusTcpClient | AsyncModbusSerialClient) -> None:
        t = self._clock()  # when the request left: the reading is at least this old
        levels: dict[int, bool] = {}
        for device_id, table, first, count, members in self._plan:
            device = f"{self.link.where()} device {device_id}"
            read = client.read_discrete_inputs if table == "discrete_input" else client.read_coils
            try:
                response = await read(first, count=count, device_id=device_id)
            except (ModbusException, OSError, TimeoutError) as exc:
                raise _NoReading(f"no answer from {device}: {exc}") from exc
            raise_if_cancelled()
            if response.isError():
                raise _NoReading(
                    f"{device} refused reading {count} {table}(s) at {first}: {response}"
                )
            if response.function_code != _FUNCTION_CODE[table] or response.dev_id != device_id:
                raise _NoReading(
                    f"{device} answered function {response.function_code} of device "
                    f"{response.dev_id} to a read of {table}s: not this request's answer"
                )
            bits = response.bits
            # Bits come in whole bytes: exactly the count rounded up to eight.
            if len(bits) != (count + 7) // 8 * 8:
                raise _NoReading(f"{device} answered {len(bits)} bits to a read of {count}")
            for index, offset in members:
                levels[index] = bool(bits[offset])
        self.polls += 1
        if self._problem is not None:
            _log.warning("modbus inputs on %s answer again", self.link.where())
            self._problem = None
        for index in range(len(self._points)):
            self._on_level(index, t, levels[index])

    def _set_problem(self, problem: str) -> None:
        if problem != self._problem:
            _log.error("modbus inputs: %s", problem)
        self._problem = problem
