"""Trackmaster emergency stop over a real pty (SR-13): trigger -> A2 handed to the OS -> B2 back.

The real driver (:class:`drivers.trackmaster.TrackmasterDriver`) polls the simulated treadmill
(:mod:`simulator.trackmaster_device`) over a raw-mode pty pair, both in this process and loop.
Each trial waits a random fraction of the poll interval, so the trigger lands at a random phase
of the poll cycle (sometimes with a status request in flight, which the stop pre-empts), then:

- ``handed to the OS``: from just before ``emergency_stop()`` to its return; by then ``A2`` has
  gone through ``transport.write`` into the kernel (the driver writes it synchronously);
- ``B2 received``: from the same trigger to the moment the driver's port reads the treadmill's
  ``B2`` (the driver's trace hook, called from ``data_received``).

A pty imposes no baud rate: bytes cross it as fast as the kernel copies them. On a real RS-232
line at 4800 baud 8N1 each byte takes 2.08 ms on the wire (docs/wire-protocols.md), so
``A2`` out and ``B2`` back add at least 4.17 ms, plus the treadmill's own processing time,
which is not known and not modelled here unless ``--processing-delay-ms`` is given.

Then, with ``--line-delay-ms`` (20) on every byte both ways and the belt at 0.8 mph, in one run
(``--stop-trials``, 20 each): how soon the belt is at standstill after an emergency stop on a
treadmill that carries it out, and after the treadmill starts answering ``BF`` to everything,
the stop included (SR-9: the driver falls silent after the 0.3 s stop-confirm bound and the
treadmill's own 500 ms CDS stops the belt). The simulated belt decelerates at its default
0.8 mph/s (3 mph/s on a stop it carries out).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_trackmaster.py [--trials 500]
        [--processing-delay-ms 0] [--stop-trials 20] [--line-delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import select
import tempfile
import time
import tty
from collections.abc import Callable
from pathlib import Path

from _common import row, save, summary

from treadguard.drivers.trackmaster import TrackmasterDriver
from treadguard.simulator.trackmaster_device import TrackmasterDevice, TrackmasterModel

BYTE_MS = {4800: 10 / 4800 * 1000, 9600: 10 / 9600 * 1000}  # 8N1: 10 bits a byte
POLL_S = 0.1
STOP_ACK = 0xB2


class StopTimer:
    """Timestamps the first B2 the driver reads after a trigger."""

    def __init__(self) -> None:
        self.armed = False
        self.ack_ns = 0
        self.acked = asyncio.Event()

    def trace(self, sending: bool, data: bytes) -> None:
        if not sending and self.armed and STOP_ACK in data:
            self.ack_ns = time.perf_counter_ns()
            self.armed = False
            self.acked.set()


async def until(predicate: Callable[[], bool], timeout_s: float) -> None:
    """A bounded poll for driver state that has no event of its own."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not reached")
        await asyncio.sleep(0.002)


async def trials(n: int, processing_delay_s: float) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"handed_to_os": [], "b2_received": []}
    timer = StopTimer()
    model = TrackmasterModel(processing_delay_s=processing_delay_s)
    with tempfile.TemporaryDirectory() as tmp:
        async with TrackmasterDevice(model, link_path=Path(tmp) / "treadmill") as device:
            device.open_port()
            driver = TrackmasterDriver(device.path, poll_interval_s=POLL_S, trace=timer.trace)
            task = asyncio.create_task(driver.run())
            try:
                await until(lambda: driver.status() is not None and not driver.stopping, 5.0)
                rng = random.Random(7)
                for _ in range(n):
                    # Only places the trigger at a random phase of the poll cycle.
                    await asyncio.sleep(rng.uniform(0.0, POLL_S))
                    timer.acked.clear()
                    timer.armed = True
                    t0 = time.perf_counter_ns()
                    driver.emergency_stop()
                    t1 = time.perf_counter_ns()
                    async with asyncio.timeout(1.0):
                        await timer.acked.wait()
                    results["handed_to_os"].append((t1 - t0) / 1e6)
                    results["b2_received"].append((timer.ack_ns - t0) / 1e6)
                    # Let the driver confirm the standstill so stray stops do not overlap.
                    await until(lambda: not driver.stopping, 2.0)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return results


async def _at_speed(device: TrackmasterDevice, driver: TrackmasterDriver, mph: float) -> None:
    """Bring the belt up as the controller's 20 Hz tick does: read the status, ask for 0 until
    the link is healthy and at standstill, then for ``mph`` (again on every tick, so a fault on
    the way up is recovered from as the controller would)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20.0
    stop_ticks = 0  # ticks asking for 0 since the status was last seen healthy
    while device.belt.speed_mph <= mph - 0.05:
        if loop.time() > deadline:
            raise TimeoutError("the belt did not reach speed")
        st = driver.status()
        healthy = st is not None and st.fault is None and not driver.stopping
        stop_ticks = stop_ticks + 1 if healthy else 0
        driver.command_speed(mph if stop_ticks > 2 else 0.0)
        await asyncio.sleep(0.05)  # the tick period, not a wait for something


async def stop_trial(refused: bool, line_delay_s: float) -> tuple[float, float | None]:
    """Seconds from the emergency stop to the belt at standstill, and (refused) from the stop
    to the last request before the silence that let the CDS trip."""
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as tmp:
        device = TrackmasterDevice(link_path=Path(tmp) / "treadmill", line_delay_s=line_delay_s)
        async with device:
            device.open_port()
            driver = TrackmasterDriver(device.path, poll_interval_s=POLL_S)
            task = asyncio.create_task(driver.run())
            try:
                await _at_speed(device, driver, 0.8)
                if refused:
                    device.inject("BF")  # the stop included, carried out never
                t0 = loop.time()
                driver.emergency_stop()
                await device.wait_until(lambda: device.belt.speed_mph == 0.0, 10.0)
                stopped = loop.time() - t0
                if not refused:
                    return stopped, None
                trip = device.cds_trips[0].t
                return stopped, max(r.t for r in device.received if r.t < trip) - t0
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def stop_trials(n: int, line_delay_s: float) -> dict[str, list[float]]:
    results: dict[str, list[float]] = {"carried_out": [], "refused_bf": [], "silence_after": []}
    for _ in range(n):
        stopped, _ = await stop_trial(False, line_delay_s)
        results["carried_out"].append(stopped)
    for _ in range(n):
        stopped, last = await stop_trial(True, line_delay_s)
        results["refused_bf"].append(stopped)
        assert last is not None
        results["silence_after"].append(last)
    return results


def pty_one_byte_floor(n: int) -> list[float]:
    """1 byte written to a raw pty's slave and read from its master, same thread (ms)."""
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    samples = []
    try:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            os.write(slave, b"\xa2")
            select.select([master], [], [], 1.0)
            os.read(master, 16)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        os.close(master)
        os.close(slave)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=500)
    parser.add_argument("--processing-delay-ms", type=float, default=0.0)
    parser.add_argument("--stop-trials", type=int, default=20)
    parser.add_argument("--line-delay-ms", type=float, default=20.0)
    args = parser.parse_args()
    # The refused stops below are faults on purpose; their warnings are not the result.
    logging.getLogger("treadguard").setLevel(logging.ERROR)
    delay_s = args.processing_delay_ms / 1000
    results = asyncio.run(trials(args.trials, delay_s))
    handed, acked = summary(results["handed_to_os"]), summary(results["b2_received"])
    floor = summary(pty_one_byte_floor(args.trials))
    wire = {
        f"{baud}_baud": {"byte_ms": ms, "a2_plus_b2_ms": 2 * ms} for baud, ms in BYTE_MS.items()
    }
    print(row("trigger -> A2 handed to the OS", handed, "ms"))
    print(row("trigger -> B2 received (over a pty)", acked, "ms"))
    print(row("pty floor: 1 byte slave -> master", floor, "ms"))
    stops = asyncio.run(stop_trials(args.stop_trials, args.line_delay_ms / 1000))
    carried, refused = summary(stops["carried_out"]), summary(stops["refused_bf"])
    silent_from = summary(stops["silence_after"])
    print(f"from 0.8 mph, {args.line_delay_ms:.0f} ms line delay each way:")
    print(row("estop carried out -> standstill", carried, "s"))
    print(row("estop refused (BF) -> standstill by CDS", refused, "s"))
    print(row("estop refused (BF) -> last request", silent_from, "s"))
    print(
        f"simulated treadmill processing delay: {args.processing_delay_ms:.1f} ms "
        "(a real treadmill's is unknown)"
    )
    print(
        f"wire-time floor a pty does not impose: 4800 baud 8N1 = {BYTE_MS[4800]:.2f} ms a byte, "
        f"A2 + B2 = {2 * BYTE_MS[4800]:.2f} ms; 9600 baud: A2 + B2 = {2 * BYTE_MS[9600]:.2f} ms"
    )
    path = save(
        "trackmaster",
        {
            "unit": "ms",
            "transport": "raw pty pair (no baud rate imposed)",
            "processing_delay_ms": args.processing_delay_ms,
            "poll_interval_s": POLL_S,
            "trigger_to_a2_handed_to_os": handed,
            "trigger_to_b2_received": acked,
            "pty_one_byte_floor": floor,
            "wire_time_floor": wire,
            "line_delay_ms": args.line_delay_ms,
            "stop_carried_out_to_standstill_s": carried,
            "stop_refused_bf_to_standstill_s": refused,
            "bf_injected_to_last_request_s": silent_from,
        },
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
