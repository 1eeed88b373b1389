"""A simulated Modbus I/O module: the contacts of grip and fall sensors as discrete inputs, on
pymodbus's own server, over Modbus TCP or RTU on a pty.

Discrete inputs and coils are two tables of ``size`` bits each, as on a real module, so a
reader that confuses them reads the wrong contact; addresses past ``size`` answer "illegal
data address". (pymodbus's simulator keeps one bit table for both; the answer to every read is
filled in from the right one here, before pymodbus sends it.) ``freeze()`` makes the module
stop answering with its connection still open (a hung module), ``close()`` takes it off the
wire.
"""

from __future__ import annotations

import asyncio
import time
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from treadguard.simulator.modbus_device import PtyLink

_BITS_PER_REGISTER = 16
_READ_COILS = 1


class SimulatedIoModule:
    def __init__(self, *, device_id: int = 1, size: int = 32) -> None:
        if size % _BITS_PER_REGISTER:
            raise ValueError(f"size must be a multiple of {_BITS_PER_REGISTER}")
        self.device_id = device_id
        self.size = size
        self.inputs = [False] * size
        self.coils = [False] * size
        # When each read arrived (time.monotonic()), for tests of how readings are stamped.
        self.request_times: list[float] = []
        self._answering = asyncio.Event()
        self._answering.set()

    def set(self, address: int, on: bool, table: str = "discrete_input") -> None:
        (self.inputs if table == "discrete_input" else self.coils)[address] = on

    @property
    def requests(self) -> int:
        return len(self.request_times)

    def freeze(self) -> None:
        """Stop answering (requests wait, unanswered, until thaw())."""
        self._answering.clear()

    def thaw(self) -> None:
        self._answering.set()

    def sim_device(self) -> SimDevice:
        registers = self.size // _BITS_PER_REGISTER
        return SimDevice(
            id=self.device_id,
            simdata=[SimData(0, count=registers, datatype=DataType.BITS)],
            use_bit_addressing=True,
            action=self._on_request,
        )

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus calls this before it answers; the registers hold the bits, 16 to each."""
        arrived = time.monotonic()
        await self._answering.wait()
        self.request_times.append(arrived)
        if address >= self.size:
            return ExcCodes.ILLEGAL_ADDRESS
        bits = self.coils if function_code == _READ_COILS else self.inputs
        for k in range(len(registers)):
            first = (start_address + k) * _BITS_PER_REGISTER
            if first >= self.size:
                break
            word = bits[first : first + _BITS_PER_REGISTER]
            registers[k] = sum(1 << bit for bit, on in enumerate(word) if on)
        return None


class IoModuleServer:
    def __init__(
        self,
        module: SimulatedIoModule,
        server: ModbusTcpServer | ModbusSerialServer,
        *,
        port: int | None = None,
        pty: PtyLink | None = None,
    ) -> None:
        self.module = module
        self.port = port
        self.pty = pty
        self._server = server

    @property
    def path(self) -> str | None:
        return self.pty.path if self.pty is not None else None

    async def close(self) -> None:
        self.module.thaw()  # a frozen request must not hold the shutdown up
        await self._server.shutdown()  # type: ignore[no-untyped-call]
        if self.pty is not None:
            self.pty.close()


async def serve_io_module_tcp(
    module: SimulatedIoModule, host: str = "127.0.0.1", port: int = 0
) -> IoModuleServer:
    """Port 0 picks a free port (see ``.port``)."""
    server = ModbusTcpServer(module.sim_device(), framer=FramerType.SOCKET, address=(host, port))
    await server.serve_forever(background=True)
    listener = cast(asyncio.Server, server.transport)
    return IoModuleServer(module, server, port=int(listener.sockets[0].getsockname()[1]))


async def serve_io_module_rtu(
    module: SimulatedIoModule, *more: SimulatedIoModule
) -> IoModuleServer:
    """On a pty pair: ``.path`` is the serial port to open. Several modules (device ids of
    their own) share the one bus, as on RS-485."""
    link = PtyLink()
    devices = [m.sim_device() for m in (module, *more)]
    server = ModbusSerialServer(
        devices if more else devices[0],
        framer=FramerType.RTU,
        port=link.server_path,
        baudrate=19200,
    )
    try:
        await server.serve_forever(background=True)
    except BaseException:
        link.close()
        raise
    return IoModuleServer(module, server, pty=link)
