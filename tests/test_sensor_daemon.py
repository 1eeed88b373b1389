"""The daemon with wired sensor inputs: grips and a fall sensor on a Modbus I/O module (the
simulated module on pymodbus's server, on a socket), and a GPIO chip that is not there. The
clinician's view over a real Mosquitto (SR-3, SR-4, SR-5, SR-8)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio

from tests.clinician import SESSION_WAIT_S, Clinician, clinician, refused
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker
from tests.periodic import elsewhere
from treadguard.simulator.modbus_io import IoModuleServer, SimulatedIoModule, serve_io_module_tcp

GRIP_LEFT, GRIP_RIGHT, FALL = 0, 1, 2


def modbus_input(role: str, address: int, port: int, active: str) -> str:
    return (
        f'[[sensors.inputs]]\nrole = "{role}"\nkind = "modbus"\ntransport = "tcp"\n'
        f'host = "127.0.0.1"\ntcp_port = {port}\ndevice_id = 4\naddress = {address}\n'
        f'active = "{active}"\npoll_interval_s = 0.02\n\n'
    )


def ready(state: dict[str, Any]) -> bool:
    """The wired sensors read, and settled: both hands on, no fall."""
    return bool(
        state["stale"] == []
        and state["grip"] == {"left": True, "right": True}
        and not state["fall"]
    )


class ModuleOfItsOwn:
    """The simulated I/O module, served on an event loop of its own thread, as a device is a
    machine of its own: a test process busy with its clients (CI runs several at once) never
    leaves it silent, which the daemon would rightly take as stale sensors. What the test does
    to it is handed to that loop."""

    def __init__(self, module: SimulatedIoModule, loop: asyncio.AbstractEventLoop) -> None:
        self._module, self._loop = module, loop

    def set(self, address: int, on: bool) -> None:
        self._loop.call_soon_threadsafe(self._module.set, address, on)

    def freeze(self) -> None:
        self._loop.call_soon_threadsafe(self._module.freeze)

    def thaw(self) -> None:
        self._loop.call_soon_threadsafe(self._module.thaw)


@pytest_asyncio.fixture
async def io_module() -> AsyncIterator[tuple[ModuleOfItsOwn, IoModuleServer]]:
    module = SimulatedIoModule(device_id=4)
    # The user holds both grips; the fall sensor is normally closed (high while clear), so a
    # cut wire reads as a fall.
    module.set(GRIP_LEFT, True)
    module.set(GRIP_RIGHT, True)
    module.set(FALL, True)
    async with elsewhere("io-module") as there:
        server = await there.run(serve_io_module_tcp(module))
        try:
            yield ModuleOfItsOwn(module, there.loop), server
        finally:
            await there.run(server.close())


@asynccontextmanager
async def running_on_the_module(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, port: int, tm: str
) -> AsyncIterator[Clinician]:
    """The daemon with grips and fall on the I/O module at ``port``, and a clinician whose
    session runs once the sensors have settled."""
    inputs = (
        modbus_input("grip_left", GRIP_LEFT, port, "high")
        + modbus_input("grip_right", GRIP_RIGHT, port, "high")
        + modbus_input("fall", FALL, port, "low")
    )
    make_daemon(treadmill_id=tm, sensors=None, extra=inputs)
    async with clinician(broker, tm) as doc:
        await doc.until(ready, within=5.0)
        await doc.start_running(f"u-{tm}", program="first_session")
        yield doc


@pytest.mark.asyncio
async def test_sr4_grips_released_on_the_io_module_stop_the_belt(
    make_daemon: Callable[..., DaemonProcess],
    broker: Broker,
    io_module: tuple[ModuleOfItsOwn, IoModuleServer],
) -> None:
    module, server = io_module
    assert server.port is not None
    async with running_on_the_module(make_daemon, broker, server.port, "tm-io") as doc:
        module.set(GRIP_LEFT, False)
        module.set(GRIP_RIGHT, False)
        event = await doc.event("estop")
        assert event["cause"] == "grip_lost"
        state = await doc.state(lambda s: s["state"] == "estop", within=5.0)
        assert state["latched"]["cause"] == "grip_lost"


@pytest.mark.asyncio
async def test_sr5_a_fall_on_a_normally_closed_contact_stops_the_belt(
    make_daemon: Callable[..., DaemonProcess],
    broker: Broker,
    io_module: tuple[ModuleOfItsOwn, IoModuleServer],
) -> None:
    module, server = io_module
    assert server.port is not None
    async with running_on_the_module(make_daemon, broker, server.port, "tm-fall") as doc:
        module.set(FALL, False)  # the contact opens: low is "fallen" for this wiring
        event = await doc.event("estop")
        assert event["cause"] == "fall"


@pytest.mark.asyncio
async def test_sr8_an_io_module_that_stops_answering_stops_the_belt(
    make_daemon: Callable[..., DaemonProcess],
    broker: Broker,
    io_module: tuple[ModuleOfItsOwn, IoModuleServer],
) -> None:
    module, server = io_module
    assert server.port is not None
    async with running_on_the_module(make_daemon, broker, server.port, "tm-hung") as doc:
        module.freeze()
        event = await doc.event("estop")
        assert event["cause"] == "sensor_stale"  # the fall sensor went silent, not a fall
        state = await doc.state(lambda s: s["state"] == "estop", within=5.0)
        assert set(state["stale"]) == {"grip_left", "grip_right", "fall"}
        assert "no answer from 127.0.0.1" in state["sensor_problems"]["fall"]
        module.thaw()
        await doc.until(lambda s: s["stale"] == [] and "sensor_problems" not in s, within=5.0)


@pytest.mark.asyncio
async def test_sr3_a_gpio_chip_that_is_not_there_refuses_the_start_and_says_why(
    make_daemon: Callable[..., DaemonProcess],
    broker: Broker,
    io_module: tuple[ModuleOfItsOwn, IoModuleServer],
) -> None:
    _, server = io_module
    assert server.port is not None
    inputs = (
        '[[sensors.inputs]]\nrole = "grip_left"\nkind = "gpio"\nchip = "/dev/gpiochip-none"\n'
        'line = 17\nactive = "low"\nbias = "pull_up"\n\n'
        + modbus_input("grip_right", GRIP_RIGHT, server.port, "high")
        + modbus_input("fall", FALL, server.port, "low")
    )
    make_daemon(treadmill_id="tm-nochip", sensors=None, extra=inputs)
    async with clinician(broker, "tm-nochip") as doc:
        state = await doc.until(lambda s: "sensor_problems" in s, within=SESSION_WAIT_S)
        assert state["sensor_problems"] == {
            "grip_left": "cannot request lines 17 of /dev/gpiochip-none: "
            "[Errno 2] No such file or directory"
        }
        assert "grip_left" in state["stale"]
        message = refused(await doc.command("start_session", user="u-x"), "preconditions_unmet")
        assert "grip_left" in message or "left" in message
