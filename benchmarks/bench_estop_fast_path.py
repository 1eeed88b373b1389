"""Emergency-stop fast path in real time (SR-13), next to a tick-polled baseline.

The real controller runs under asyncio with its 20 Hz control loop, driving the simulated belt
through the in-process driver. Each trial starts a session (its countdown arms the stop inputs),
waits a random fraction of a tick period so the trigger lands at a random tick phase, then
delivers a fall reading the way a sensor callback would, and measures from the moment the input
is delivered to the moment the driver's emergency_stop() is called:

- fast path: the input goes to Controller.submit at once, as the product does;
- baseline: the input is queued and handled at the next 20 Hz tick, as a polled design would.

Both kinds of trial are interleaved in one run so they share the machine's noise.

    .venv/bin/python benchmarks/bench_estop_fast_path.py [--trials 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from pathlib import Path

from _common import row, save, summary

from treadguard.config.loading import load_config
from treadguard.controller.control import Controller
from treadguard.controller.logs import configure_logging
from treadguard.controller.loop import ScaledClock, run_control_loop
from treadguard.drivers.simulated import SimulatedDriver
from treadguard.safety.core import SafetyCore
from treadguard.safety.decisions import State
from treadguard.safety.inputs import (
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    Input,
    Reset,
    StartSession,
)
from treadguard.simulator.belt import Belt, BeltParams

ROOT = Path(__file__).resolve().parent.parent


class TimedDriver(SimulatedDriver):
    """Records perf_counter_ns when the emergency stop reaches the driver."""

    stop_ns = 0
    stopped: asyncio.Event

    def emergency_stop(self) -> None:
        self.stop_ns = time.perf_counter_ns()
        super().emergency_stop()
        self.stopped.set()


class TickPolledController(Controller):
    """The baseline: sensor inputs wait in a queue for the next control tick."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.queued: list[Input] = []

    def tick(self):  # type: ignore[no-untyped-def]
        queued, self.queued = self.queued, []
        for inp in queued:
            self.submit(inp)
        return super().tick()


async def trials(n: int) -> dict[str, list[float]]:
    loop = asyncio.get_running_loop()
    clock = ScaledClock(loop, 1.0)
    loaded = load_config(ROOT / "config" / "sim.toml")
    cfg = loaded.config
    period = 1.0 / cfg.control.tick_hz
    belt = Belt(BeltParams(), t0=clock.time())
    driver = TimedDriver(belt, clock.time)
    driver.stopped = asyncio.Event()
    core = SafetyCore(
        cfg.safety,
        loaded.programs,
        default_program="first_session",
        t0=clock.time(),
        commissioned_until=math.inf,
    )
    controller = TickPolledController(core, driver, clock)
    results: dict[str, list[float]] = {"fast_path": [], "tick_polled": []}
    fallen = False  # what the simulated fall sensor senses, reported every 100 ms

    def fresh_inputs() -> None:
        t = clock.time()
        for hand in Hand:
            controller.submit(GripReading(t, hand, True))
        controller.submit(FallReading(t, fallen))
        controller.submit(Heartbeat(t))

    async def sensors() -> None:
        while True:
            fresh_inputs()
            await asyncio.sleep(0.1)

    async with asyncio.TaskGroup() as tg:
        control = tg.create_task(run_control_loop(controller, clock, period))
        sensing = tg.create_task(sensors())
        # Let the drive answer once before the first start.
        await asyncio.sleep(3 * period)
        kinds = ["fast_path", "tick_polled"] * n
        random.Random(7).shuffle(kinds)
        for kind in kinds:
            fresh_inputs()
            decision = controller.submit(StartSession(clock.time(), "bench"))
            assert core.state is State.COUNTDOWN, decision
            # A random phase within the tick period; this sleep only places the trigger.
            await asyncio.sleep(random.uniform(0.0, period))
            driver.stopped.clear()
            t0 = time.perf_counter_ns()
            fallen = True
            fall = FallReading(clock.time(), True)
            if kind == "fast_path":
                controller.submit(fall)
            else:
                controller.queued.append(fall)
            async with asyncio.timeout(1.0):
                await driver.stopped.wait()
            results[kind].append((driver.stop_ns - t0) / 1e6)
            fallen = False
            controller.submit(FallReading(clock.time(), False))
            reply = controller.submit(Reset(clock.time())).reply
            # mypy keeps the narrowing of the assert above; the state has moved on since
            assert core.state is State.IDLE, (reply, core.latch)  # type: ignore[comparison-overlap]
        control.cancel()
        sensing.cancel()
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=1000)
    args = parser.parse_args()
    configure_logging("warning")
    results = asyncio.run(trials(args.trials))
    fast, polled = summary(results["fast_path"]), summary(results["tick_polled"])
    print(row("fast path: trigger -> stop issued", fast, "ms"))
    print(row("tick-polled baseline (20 Hz)", polled, "ms"))
    ratio = {k: polled[k] / fast[k] for k in ("p50", "p99")}
    print(f"baseline / fast path: p50 {ratio['p50']:.0f}x, p99 {ratio['p99']:.0f}x")
    path = save(
        "estop_fast_path",
        {
            "unit": "ms",
            "fast_path": fast,
            "tick_polled": polled,
            "ratio": ratio,
            "target_p99_ms": 1.0,
        },
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
