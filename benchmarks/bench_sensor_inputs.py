"""How soon a wired sensor's change reaches the controller: a grip released on a Modbus I/O
module (pymodbus's real server on 127.0.0.1, the real poller, the SensorHub with its filter),
and on a GPIO line through the reader's edge path.

Modbus: each trial waits a random fraction of the poll interval, flips the grip's bit in the
simulated module and measures until the hub submits the released reading. Expected: about half
a poll interval plus one request's round trip; at most a poll interval plus one. The floor in
the same run: one read_discrete_inputs round trip with the same client library.

GPIO: there is no GPIO chip on this machine, so the reader runs against the tests' stand-in for
libgpiod's line request (a pipe as its descriptor, as an edge makes the kernel's readable), with
a poll interval of 60 s so that only the edge path can deliver. This measures our part, the
event loop's wake-up and the read; a real chip adds the kernel's edge report (microseconds).

    .venv/bin/python benchmarks/bench_sensor_inputs.py [--trials 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path
from typing import Any

from _common import python_speed_s, row, save, summary

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pymodbus.client import AsyncModbusTcpClient

from tests.test_sensor_gpio import Opener
from treadguard.config.schema import GpioInputSection, ModbusInputSection
from treadguard.controller.sensors import SensorHub
from treadguard.drivers.gpio_inputs import GpioChipInputs, GpioLine
from treadguard.safety.inputs import FallReading, GripReading, Sensor
from treadguard.simulator.modbus_io import SimulatedIoModule, serve_io_module_tcp


class Watch:
    """The hub's submissions; wakes a waiter when the grip reading becomes ``want``."""

    def __init__(self) -> None:
        self.want: bool | None = None
        self.at: float | None = None
        self.seen = asyncio.Event()

    def __call__(self, reading: GripReading | FallReading) -> None:
        if isinstance(reading, GripReading) and reading.held == self.want and self.at is None:
            self.at = time.perf_counter()
            self.seen.set()

    def expect(self, held: bool) -> None:
        self.want, self.at = held, None
        self.seen.clear()


async def modbus_trials(trials: int, poll_s: float) -> dict[str, Any]:
    module = SimulatedIoModule(device_id=1)
    module.set(0, True)
    server = await serve_io_module_tcp(module)
    entry = ModbusInputSection(
        kind="modbus", role=Sensor.GRIP_LEFT, transport="tcp", host="127.0.0.1",
        tcp_port=server.port or 0, address=0, active="high", debounce_ms=0,
        poll_interval_s=poll_s,
    )  # fmt: skip
    watch = Watch()
    hub = SensorHub([entry], watch)
    tasks = [asyncio.create_task(run) for run in hub.build_sources(time.monotonic)]
    latencies: list[float] = []
    try:
        held = True
        watch.expect(held)
        await asyncio.wait_for(watch.seen.wait(), 5.0)
        for _ in range(trials):
            await asyncio.sleep(random.uniform(0, poll_s))  # a random phase of the poll
            held = not held
            watch.expect(held)
            t0 = time.perf_counter()
            module.set(0, held)
            await asyncio.wait_for(watch.seen.wait(), 5.0)
            assert watch.at is not None
            latencies.append((watch.at - t0) * 1e3)
        # The floor: one read of the same bit, same library, same server.
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port or 0)
        await client.connect()
        floor: list[float] = []
        for _ in range(trials):
            t0 = time.perf_counter()
            await client.read_discrete_inputs(0, count=1, device_id=1)
            floor.append((time.perf_counter() - t0) * 1e3)
        client.close()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.close()
    return {"poll_interval_ms": poll_s * 1e3, "change": summary(latencies), "floor": summary(floor)}


async def gpio_trials(trials: int) -> dict[str, Any]:
    opener = Opener([False])
    entry = GpioInputSection(
        kind="gpio", role=Sensor.GRIP_LEFT, line=17, active="low", bias="pull_up", debounce_ms=0
    )
    watch = Watch()
    hub = SensorHub([entry], watch)
    names = ["grip_left"]

    def on_level(index: int, t: float, high: bool) -> None:
        hub.level(names[index], t, high)

    reader = GpioChipInputs(
        "/dev/gpiochip-standin", [GpioLine(17)], on_level, poll_interval_s=60.0,
        open_request=opener,
    )  # fmt: skip
    task = asyncio.create_task(reader.run())
    latencies: list[float] = []
    try:
        watch.expect(True)
        await asyncio.wait_for(watch.seen.wait(), 5.0)
        held = True
        for _ in range(trials):
            await asyncio.sleep(random.uniform(0, 0.005))
            held = not held
            watch.expect(held)
            t0 = time.perf_counter()
            opener.levels[0] = not held  # active low: held pulls the line low
            opener.requests[-1].edge(17, rising=not held)
            await asyncio.wait_for(watch.seen.wait(), 5.0)
            assert watch.at is not None
            latencies.append((watch.at - t0) * 1e3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return {"edge": summary(latencies)}


async def main_async(trials: int) -> dict[str, Any]:
    figures: dict[str, Any] = {"python_10M_loop_s": python_speed_s(), "trials": trials}
    for poll_s in (0.05, 0.02):
        figures[f"modbus_tcp_poll_{int(poll_s * 1e3)}ms"] = await modbus_trials(trials, poll_s)
    figures["gpio_edge_standin"] = await gpio_trials(trials)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    figures = asyncio.run(main_async(args.trials))
    print(f"10M-step Python loop: {figures['python_10M_loop_s'] * 1e3:.0f} ms")
    for key in ("modbus_tcp_poll_50ms", "modbus_tcp_poll_20ms"):
        section = figures[key]
        print(row(f"{key}: bit flipped -> reading", section["change"], "ms"))
        print(row(f"{key}: floor, one read round trip", section["floor"], "ms"))
    print(row("gpio edge (stand-in): edge -> reading", figures["gpio_edge_standin"]["edge"], "ms"))
    print(f"saved {save('sensor_inputs', figures)}")


if __name__ == "__main__":
    main()
