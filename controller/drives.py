"""From a configuration's [drive] table to a driver, and to the simulated device that stands in
for the treadmill when there is no hardware."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from treadguard.config.loading import ConfigError, LoadedConfig
from treadguard.config.schema import (
    ModbusDriveSection,
    SimulatedDriveSection,
    TrackmasterDriveSection,
)
from treadguard.drivers.base import TreadmillDriver
from treadguard.drivers.modbus_vfd import ModbusVfdDriver
from treadguard.drivers.simulated import SimulatedDriver
from treadguard.drivers.trackmaster import TrackmasterDriver
from treadguard.drivers.vfd_codec import RegisterMap, RegisterMapError
from treadguard.simulator.belt import Belt, BeltParams
from treadguard.simulator.modbus_device import (
    ModbusDeviceServer,
    SimulatedVfd,
    serve_modbus_rtu,
    serve_modbus_tcp,
)
from treadguard.simulator.trackmaster_device import TrackmasterDevice


def simulated_belt_params(drive: SimulatedDriveSection) -> BeltParams:
    return BeltParams(
        accel_mph_s=drive.accel_mph_s,
        decel_mph_s=drive.decel_mph_s,
        estop_decel_mph_s=drive.estop_decel_mph_s,
        lag_s=drive.lag_s,
        deadman_s=drive.deadman_s,
        max_mph=drive.max_mph,
        brake_wear=drive.brake_wear,
    )


def build_driver(
    loaded: LoadedConfig,
    clock: Callable[[], float],
    *,
    port: str | None = None,
    host: str | None = None,
    tcp_port: int | None = None,
) -> TreadmillDriver:
    """The configured wire driver; ``port``/``host``/``tcp_port`` override the file's address
    (a simulated device's pty or socket). A setting the driver refuses (or a register map it
    cannot read) raises ConfigError naming the field, like check-config."""
    drive = loaded.config.drive
    if isinstance(drive, SimulatedDriveSection):
        raise ValueError("the simulated drive needs a belt: use a simulated rig")
    try:
        return _wire_driver(loaded, drive, clock, port=port, host=host, tcp_port=tcp_port)
    except RegisterMapError as exc:
        raise ConfigError(loaded.path, [f"drive.register_map: {exc}"]) from exc
    except ValueError as exc:  # the driver's own argument checks name the argument first
        raise ConfigError(
            loaded.path, [field_problem("drive", set(type(drive).model_fields), exc)]
        ) from exc


def field_problem(section: str, fields: set[str], exc: Exception) -> str:
    """``section.field: message`` when the message starts with one of the section's field
    names, else ``section: message``."""
    message = str(exc)
    first = message.split(" ", 1)[0]
    return f"{section}.{first}: {message}" if first in fields else f"{section}: {message}"


def _wire_driver(
    loaded: LoadedConfig,
    drive: TrackmasterDriveSection | ModbusDriveSection,
    clock: Callable[[], float],
    *,
    port: str | None,
    host: str | None,
    tcp_port: int | None,
) -> TreadmillDriver:
    match drive:
        case TrackmasterDriveSection():
            return TrackmasterDriver(
                port or drive.port,
                baud=drive.baud,
                poll_interval_s=drive.poll_interval_s,
                ack_timeout_s=drive.ack_timeout_s,
                clock=clock,
            )
        case ModbusDriveSection():
            rmap = RegisterMap.from_toml(loaded.resolve(drive.register_map))
            return ModbusVfdDriver(
                drive.transport,
                register_map=rmap,
                mph_per_hz=drive.mph_per_hz,
                host=host or drive.host,
                port=tcp_port or drive.tcp_port,
                serial_port=port or drive.serial_port,
                baud=drive.baud,
                parity=drive.parity,
                device_id=drive.device_id,
                direction=drive.direction,
                poll_interval_s=drive.poll_interval_s,
                clock=clock,
            )


@dataclass
class Rig:
    """A treadmill for a simulated run: the belt to watch, the driver the controller uses, and
    the cable to pull. ``belt_clock_offset`` turns the belt's clock into the run's."""

    belt: Belt
    driver: TreadmillDriver
    unplug: Callable[[], None]
    plug: Callable[[], None]
    belt_clock_offset: float = 0.0
    close: Callable[[], object] = field(default=lambda: None)
    description: str = "in-process simulated drive"


def in_process_rig(loaded: LoadedConfig, clock: Callable[[], float]) -> Rig:
    drive = loaded.config.drive
    assert isinstance(drive, SimulatedDriveSection)
    belt = Belt(simulated_belt_params(drive), t0=clock())
    driver = SimulatedDriver(belt, clock)
    return Rig(belt=belt, driver=driver, unplug=driver.unplug, plug=driver.plug)


async def wire_rig(loaded: LoadedConfig, clock: Callable[[], float], origin: float) -> Rig:
    """A simulated device on a real pty or socket, and the configured driver talking to it.

    The devices keep time on the event loop's clock; ``origin`` is that clock's reading at the
    run's time 0.
    """
    drive = loaded.config.drive
    match drive:
        case TrackmasterDriveSection():
            device = TrackmasterDevice()
            path = device.open_port()
            driver = build_driver(loaded, clock, port=path)
            return Rig(
                belt=device.belt,
                driver=driver,
                unplug=device.unplug,
                plug=device.plug,
                belt_clock_offset=origin,
                close=device.aclose,
                description=f"real Trackmaster driver <-> simulated treadmill on {path}",
            )
        case ModbusDriveSection():
            rmap = RegisterMap.from_toml(loaded.resolve(drive.register_map))
            vfd = SimulatedVfd(rmap, mph_per_hz=drive.mph_per_hz, device_id=drive.device_id)
            if drive.transport == "rtu":
                server = await serve_modbus_rtu(vfd=vfd, baudrate=drive.baud, parity=drive.parity)
                assert server.path is not None
                driver = build_driver(loaded, clock, port=server.path)
                where = f"RTU on {server.path}"
                cable: _RtuCable | _TcpCable = _RtuCable(server)
            else:
                server = await serve_modbus_tcp("127.0.0.1", 0, vfd=vfd)
                driver = build_driver(loaded, clock, host=server.host, tcp_port=server.port)
                where = f"TCP on {server.host}:{server.port}"
                cable = _TcpCable(server, vfd)

            async def close() -> None:
                await cable.close()
                await vfd.close()

            return Rig(
                belt=vfd.belt,
                driver=driver,
                unplug=cable.unplug,
                plug=cable.plug,
                belt_clock_offset=origin,
                close=close,
                description=f"real Modbus driver <-> simulated VFD, {where}",
            )
        case SimulatedDriveSection():
            raise ValueError("drive.kind 'simulator' has no wire")


class _RtuCable:
    def __init__(self, server: ModbusDeviceServer) -> None:
        self.server = server
        self.unplug = server.unplug
        self.plug = server.plug

    async def close(self) -> None:
        await self.server.close()


class _TcpCable:
    """Pulling a TCP cable: the server goes away, and comes back on the same port."""

    def __init__(self, server: ModbusDeviceServer, vfd: SimulatedVfd) -> None:
        self.server: ModbusDeviceServer | None = server
        self.port = server.port
        self.vfd = vfd
        self._changing: asyncio.Task[None] | None = None

    def unplug(self) -> None:
        self._change(self._down())

    def plug(self) -> None:
        self._change(self._up())

    def _change(self, coro: Coroutine[None, None, None]) -> None:
        previous = self._changing

        async def in_order() -> None:
            if previous is not None:
                await previous
            await coro

        self._changing = asyncio.get_running_loop().create_task(in_order())

    async def _down(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.close()

    async def _up(self) -> None:
        if self.server is None and self.port is not None:
            self.server = await serve_modbus_tcp("127.0.0.1", self.port, vfd=self.vfd)

    async def close(self) -> None:
        if self._changing is not None:
            await self._changing
        await self._down()
