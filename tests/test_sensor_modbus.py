"""Grip and fall contacts on a Modbus I/O module: the poller against pymodbus's own server
(the simulated module), over a TCP socket and over RTU on a pty (SR-8: a module that stops
answering gives no readings)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from tests.drive_helpers import eventually
from treadguard.drivers.modbus_inputs import ModbusInputPoller, ModbusLink, ModbusPoint
from treadguard.simulator.modbus_io import (
    IoModuleServer,
    SimulatedIoModule,
    serve_io_module_rtu,
    serve_io_module_tcp,
)

WAIT_S = 3.0  # bound on every wait; the polls come every 20 ms


class Levels:
    """What the poller reported, with a wait for a condition on it."""

    def __init__(self) -> None:
        self.readings: list[tuple[int, float, bool]] = []
        self.latest: dict[int, bool] = {}
        self._changed = asyncio.Event()

    def __call__(self, index: int, t: float, high: bool) -> None:
        self.readings.append((index, t, high))
        self.latest[index] = high
        self._changed.set()

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(WAIT_S):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


@pytest_asyncio.fixture
async def module() -> AsyncIterator[tuple[SimulatedIoModule, IoModuleServer]]:
    io = SimulatedIoModule(device_id=3)
    server = await serve_io_module_tcp(io)
    yield io, server
    await server.close()


async def run_poller(poller: ModbusInputPoller) -> asyncio.Task[None]:
    return asyncio.create_task(poller.run())


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    async with asyncio.timeout(WAIT_S):
        await asyncio.gather(task, return_exceptions=True)


def tcp_poller(port: int, points: list[ModbusPoint], levels: Levels) -> ModbusInputPoller:
    return ModbusInputPoller(
        ModbusLink("tcp", host="127.0.0.1", tcp_port=port),
        points,
        levels,
        poll_interval_s=0.02,
        timeout_s=0.1,
        reconnect_max_s=0.2,
    )


@pytest.mark.asyncio
async def test_discrete_inputs_and_coils_are_read_each_from_its_own_table(
    module: tuple[SimulatedIoModule, IoModuleServer],
) -> None:
    io, server = module
    assert server.port is not None
    levels = Levels()
    points = [
        ModbusPoint(3, "discrete_input", 0),
        ModbusPoint(3, "discrete_input", 5),
        ModbusPoint(3, "coil", 5),
    ]
    io.set(5, True, "discrete_input")
    io.set(5, False, "coil")
    task = await run_poller(tcp_poller(server.port, points, levels))
    try:
        await levels.until(lambda: levels.latest == {0: False, 1: True, 2: False})
        io.set(0, True)
        io.set(5, False)
        io.set(5, True, "coil")
        await levels.until(lambda: levels.latest == {0: True, 1: False, 2: True})
    finally:
        await stop(task)


@pytest.mark.asyncio
async def test_sr8_a_reading_is_stamped_when_its_request_left(
    module: tuple[SimulatedIoModule, IoModuleServer],
) -> None:
    """Each poll's reading carries a time from before its request reached the module and
    after the previous request did: never the (later) time its answer arrived."""
    io, server = module
    assert server.port is not None
    levels = Levels()
    poller = tcp_poller(server.port, [ModbusPoint(3, "discrete_input", 1)], levels)
    task = await run_poller(poller)
    try:
        await levels.until(lambda: len(levels.readings) >= 10)
    finally:
        await stop(task)
    arrivals = io.request_times
    for k, (_, t, _) in enumerate(levels.readings[:10]):
        assert t <= arrivals[k]
        if k:
            assert t > arrivals[k - 1]


@pytest.mark.asyncio
async def test_sr8_a_hung_module_gives_no_readings_and_says_why(
    module: tuple[SimulatedIoModule, IoModuleServer],
) -> None:
    io, server = module
    assert server.port is not None
    levels = Levels()
    poller = tcp_poller(server.port, [ModbusPoint(3, "discrete_input", 0)], levels)
    task = await run_poller(poller)
    try:
        await levels.until(lambda: poller.polls >= 3)
        io.freeze()
        frozen_at = len(levels.readings)
        await eventually(lambda: poller.problem is not None, "the poller to report a problem")
        assert poller.problem is not None
        assert "no answer from 127.0.0.1" in poller.problem
        # At most the poll already answered when the module hung; none after.
        assert len(levels.readings) <= frozen_at + 1
        io.thaw()
        await levels.until(lambda: len(levels.readings) > frozen_at + 3)
        assert poller.problem is None
    finally:
        await stop(task)


@pytest.mark.asyncio
async def test_sr8_a_module_taken_off_the_network_is_reconnected() -> None:
    io = SimulatedIoModule(device_id=3)
    server = await serve_io_module_tcp(io)
    assert server.port is not None
    port = server.port
    levels = Levels()
    poller = tcp_poller(port, [ModbusPoint(3, "discrete_input", 2)], levels)
    task = await run_poller(poller)
    try:
        await levels.until(lambda: poller.polls >= 2)
        await server.close()
        await eventually(lambda: poller.problem is not None, "the poller to report a problem")
        io.set(2, True)
        server = await serve_io_module_tcp(io, port=port)
        await levels.until(lambda: levels.latest.get(0) is True)
        assert poller.problem is None
    finally:
        await stop(task)
        await server.close()


@pytest.mark.asyncio
async def test_an_address_the_module_does_not_have_is_a_problem_not_a_reading(
    module: tuple[SimulatedIoModule, IoModuleServer],
) -> None:
    io, server = module
    assert server.port is not None
    levels = Levels()
    poller = tcp_poller(server.port, [ModbusPoint(3, "discrete_input", io.size + 4)], levels)
    task = await run_poller(poller)
    try:
        await eventually(lambda: poller.problem is not None, "the poller to report a problem")
        assert poller.problem is not None
        assert "refused reading 1 discrete_input(s) at 36" in poller.problem
        assert levels.readings == []
    finally:
        await stop(task)


@pytest.mark.asyncio
async def test_rtu_two_modules_on_one_bus_share_one_port() -> None:
    first, second = SimulatedIoModule(device_id=2), SimulatedIoModule(device_id=5)
    server = await serve_io_module_rtu(first, second)
    assert server.path is not None
    levels = Levels()
    poller = ModbusInputPoller(
        ModbusLink("rtu", serial_port=server.path),
        [ModbusPoint(2, "discrete_input", 1), ModbusPoint(5, "discrete_input", 1)],
        levels,
        poll_interval_s=0.02,
        timeout_s=0.1,
    )
    task = await run_poller(poller)
    try:
        second.set(1, True)
        await levels.until(lambda: levels.latest == {0: False, 1: True})
        first.set(1, True)
        second.set(1, False)
        await levels.until(lambda: levels.latest == {0: True, 1: False})
        assert poller.problem is None
    finally:
        await stop(task)
        await server.close()
