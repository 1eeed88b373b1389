"""Emergency stop to stop word on the wire, Modbus VFD, 20 ms line delay: clean replies next to
status reads answered with exceptions, in one run (SR-9, SR-13).

The real driver (drivers/modbus_vfd.py, its link policy) talks Modbus TCP on 127.0.0.1 to the
simulated VFD, which holds every request 20 ms before it sees and answers it. Each trial gets
the belt running the way the controller does (healthy status, stop, run), then:

- **clean**: waits a random fraction of the poll interval (so a poll is sometimes in flight);
- **exceptions**: makes the drive answer status reads (0x2100-0x2103) with exception 4 (device
  failure), waits until the driver has seen one (its fault is set: the case where a hold-off
  once kept the stop word off the wire for ever), then a random fraction of the poll interval;

then calls ``emergency_stop()`` and measures from that call to:

- **handed on**: pymodbus hands the stop frame to its socket (its trace_packet hook, called just
  before ``transport.write``, a ``send()`` on TCP): the stop word on the wire;
- **at the drive**: the simulated drive receives the stop word, after its 20 ms line delay.

Modbus carries one request at a time, so a request in flight when the trigger lands is answered
(up to 20 ms here) before the stop word goes. The old driver never wrote the stop word in the
exceptions case (a trial then times out after 2 s and is counted as such).

    .venv/bin/python benchmarks/bench_vfd_stop.py [--trials 200]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import python_speed_s, row, save, summary

from treadguard.drivers.modbus_vfd import ModbusVfdDriver
from treadguard.drivers.vfd_codec import RegisterMap, stop_word
from treadguard.simulator.belt import BeltParams
from treadguard.simulator.modbus_device import RequestRecord, SimulatedVfd, serve_modbus_tcp

ROOT = Path(__file__).resolve().parent.parent
RMAP = RegisterMap.from_toml(ROOT / "config" / "drives" / "delta-vfd-e.toml")
MPH_PER_HZ = 0.05
POLL_S = 0.1
LINE_DELAY_S = 0.02
DEVICE_FAILURE = 4
STOP = stop_word("reverse")
STOP_PDU = bytes([0x06, RMAP.command_word >> 8, RMAP.command_word & 0xFF, 0x00, STOP])
STATUS_REGISTERS = {
    RMAP.error_code,
    RMAP.status_word,
    RMAP.frequency_readback,
    RMAP.output_frequency,
}
GIVE_UP_S = 2.0
# A brisk belt: the measured path does not depend on it, and each trial's start and stop take
# a fraction of a second instead of three.
FAST_BELT = BeltParams(accel_mph_s=4.0, decel_mph_s=4.0, estop_decel_mph_s=8.0, lag_s=0.02)


@dataclass
class Marks:
    """perf_counter_ns of the first stop word seen at each point after the trigger."""

    armed: bool = False
    handed: int = 0
    at_drive: int = 0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


def hooks(vfd: SimulatedVfd, marks: Marks) -> Any:
    def on_request(record: RequestRecord, ns: int) -> None:
        is_stop = record.address == RMAP.command_word and record.values == (STOP,)
        if marks.armed and is_stop and not marks.at_drive:
            marks.at_drive = ns
            marks.arrived.set()

    vfd.on_request = on_request

    def trace(sending: bool, frame: bytes) -> bytes:
        if marks.armed and sending and STOP_PDU in frame and not marks.handed:
            marks.handed = time.perf_counter_ns()
        return frame

    return trace


async def until(predicate: Any, driver: ModbusVfdDriver, timeout_s: float = 5.0) -> None:
    """Bounded wait that reads the status, as the controller's tick would."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            driver.status()
            await asyncio.sleep(0.002)


def healthy(driver: ModbusVfdDriver) -> bool:
    st = driver.status()
    return st is not None and st.fault is None


async def run_belt(driver: ModbusVfdDriver, vfd: SimulatedVfd) -> None:
    await until(lambda: healthy(driver) and not driver.stopping, driver)
    driver.command_speed(0.0)
    driver.command_speed(1.0)
    await until(lambda: vfd.running and vfd.belt.speed_mph > 0.5, driver)


async def run_trials(n: int) -> dict[str, Any]:
    vfd = SimulatedVfd(RMAP, mph_per_hz=MPH_PER_HZ, belt_params=FAST_BELT)
    vfd.line_delay_s = LINE_DELAY_S
    server = await serve_modbus_tcp("127.0.0.1", 0, vfd=vfd)
    marks = Marks()
    assert server.port is not None
    driver = ModbusVfdDriver(
        "tcp", host="127.0.0.1", port=server.port, register_map=RMAP, mph_per_hz=MPH_PER_HZ,
        poll_interval_s=POLL_S, trace_packet=hooks(vfd, marks),
    )  # fmt: skip
    task = asyncio.create_task(driver.run())
    out: dict[str, Any] = {
        case: {"handed": [], "at_drive": [], "timeouts": 0} for case in ("clean", "exceptions")
    }
    rng = random.Random(11)
    try:
        for i in range(2 * n):
            case = "clean" if i % 2 == 0 else "exceptions"  # interleaved: same load for both
            vfd.answer_normally()
            await run_belt(driver, vfd)
            if case == "exceptions":
                vfd.answer_with_exception(DEVICE_FAILURE, writes=False, addresses=STATUS_REGISTERS)
                await until(lambda: not healthy(driver), driver)
            await asyncio.sleep(rng.uniform(0.0, POLL_S))  # a random phase of the poll cycle
            marks.handed = marks.at_drive = 0
            marks.arrived.clear()
            marks.armed = True
            t0 = time.perf_counter_ns()
            driver.emergency_stop()
            try:
                async with asyncio.timeout(GIVE_UP_S):
                    await marks.arrived.wait()
            except TimeoutError:
                out[case]["timeouts"] += 1
            else:
                out[case]["handed"].append((marks.handed - t0) / 1e6)
                out[case]["at_drive"].append((marks.at_drive - t0) / 1e6)
            marks.armed = False
            vfd.answer_normally()
            await until(lambda: vfd.belt.speed_mph == 0.0, driver)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await server.close()
        await vfd.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=200, help="per case")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    speed = python_speed_s()
    results = asyncio.run(run_trials(args.trials))
    figures: dict[str, Any] = {
        "unit": "ms",
        "trials_per_case": args.trials,
        "poll_interval_s": POLL_S,
        "line_delay_s": LINE_DELAY_S,
        "python_10M_loop_s": round(speed, 3),
    }
    for case, text in (("clean", "clean replies"), ("exceptions", "status reads -> exception 4")):
        section: dict[str, Any] = {"timeouts": results[case]["timeouts"]}
        for key, what in (("handed", "stop word on the wire"), ("at_drive", "at the drive")):
            if results[case][key]:
                section[key] = summary(results[case][key])
                print(row(f"{text}: estop -> {what}", section[key], "ms"))
        print(f"{text}: no stop word within {GIVE_UP_S} s in {section['timeouts']} trial(s)")
        figures[case] = section
    print(f"python 10M-step loop: {speed:.3f} s")
    path = save("vfd_stop", figures)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
