"""Emergency stop through the Modbus VFD driver (SR-13), Modbus TCP and Modbus RTU over a pty.

The real driver talks to the simulated VFD (pymodbus's real server, belt physics) over a socket
on 127.0.0.1 and over two raw-mode ptys joined back to back. Each trial gets the belt running,
waits a random fraction of the poll interval (so a poll is sometimes in flight when the trigger
lands; the stop then waits for its answer), calls ``emergency_stop()`` and measures from that
call to:

- **stop frame handed on**: pymodbus passes the stop frame to its transport (its trace_packet
  hook, called just before ``transport.write``). For TCP that write is a ``send()`` on the socket
  inside the same call, so this is "handed to the OS". For RTU pymodbus's serial transport
  buffers the frame and writes it when the port is next writable, so the RTU figure below it,
- **stop frame out of the pty** (RTU only): the bytes read at the far end of the pty, is the
  bound on "handed to the OS";
- **drive applied the stop**: the simulated drive's command word shows stop.

Floor, measured in the same run on the same link with the driver stopped: one pymodbus
``write_register`` round trip (request + echo). The real wire time a pty does not impose (it has
no baud rate): an RTU write-single-register request plus its echo is 16 bytes, 16.7 ms at 9600
baud 8N1 and 8.3 ms at 19200, plus the 3.5-character silences and the drive's response delay
(docs/wire-protocols.md). On a real RS-485 line add one in-flight request of that size in the
worst case.

    .venv/bin/python benchmarks/bench_modbus.py [--trials 500]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from _common import row, save, summary
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from treadguard.drivers.modbus_vfd import ModbusVfdDriver
from treadguard.drivers.vfd_codec import RegisterMap, stop_word
from treadguard.simulator.modbus_device import (
    ModbusDeviceServer,
    SimulatedVfd,
    serve_modbus_rtu,
    serve_modbus_tcp,
)

ROOT = Path(__file__).resolve().parent.parent
RMAP = RegisterMap.from_toml(ROOT / "config" / "drives" / "delta-vfd-e.toml")
MPH_PER_HZ = 0.05
POLL_S = 0.1
STOP = stop_word("reverse")
# Modbus PDU "write single register 0x2000 = stop word": the frame's payload we look for.
STOP_PDU = bytes([0x06, RMAP.command_word >> 8, RMAP.command_word & 0xFF, 0x00, STOP])
RTU_FRAME_BYTES = 8  # id, function, address (2), value (2), CRC (2)

Kind = Literal["tcp", "rtu"]


def wire_ms(n_bytes: int, baud: int) -> float:
    return n_bytes * 10 / baud * 1000.0  # 8N1: 10 bits a byte


@dataclass
class Marks:
    """perf_counter_ns of the latest stop seen at each point of the path."""

    handed: int = 0
    out_of_pty: int = 0
    applied: int = 0
    applied_event: asyncio.Event = field(default_factory=asyncio.Event)


async def serve(kind: Kind, vfd: SimulatedVfd) -> ModbusDeviceServer:
    if kind == "tcp":
        return await serve_modbus_tcp("127.0.0.1", 0, vfd=vfd)
    return await serve_modbus_rtu(vfd=vfd)


def hook(kind: Kind, server: ModbusDeviceServer, vfd: SimulatedVfd, marks: Marks) -> Any:
    def on_word(word: int, ns: int) -> None:
        if word == STOP:
            marks.applied = ns
            marks.applied_event.set()

    vfd.on_command_word = on_word
    if server.pty is not None:

        def on_bytes(data: bytes, ns: int) -> None:
            if STOP_PDU in data:
                marks.out_of_pty = ns

        server.pty.on_client_bytes = on_bytes

    def trace(sending: bool, frame: bytes) -> bytes:
        if sending and STOP_PDU in frame:
            marks.handed = time.perf_counter_ns()
        return frame

    return trace


def make_driver(kind: Kind, server: ModbusDeviceServer, trace: Any) -> ModbusVfdDriver:
    if kind == "tcp":
        assert server.port is not None
        return ModbusVfdDriver(
            "tcp", host="127.0.0.1", port=server.port, register_map=RMAP,
            mph_per_hz=MPH_PER_HZ, poll_interval_s=POLL_S, trace_packet=trace,
        )  # fmt: skip
    assert server.path is not None
    return ModbusVfdDriver(
        "rtu", serial_port=server.path, register_map=RMAP, mph_per_hz=MPH_PER_HZ,
        poll_interval_s=POLL_S, trace_packet=trace,
    )  # fmt: skip


async def until(predicate: Any, driver: ModbusVfdDriver, timeout_s: float = 5.0) -> None:
    """Bounded wait that also reads the status, as the controller's tick would."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            driver.status()
            await asyncio.sleep(0.002)


async def run_trials(kind: Kind, n: int) -> dict[str, list[float]]:
    vfd = SimulatedVfd(RMAP, mph_per_hz=MPH_PER_HZ)
    server = await serve(kind, vfd)
    marks = Marks()
    driver = make_driver(kind, server, hook(kind, server, vfd, marks))
    task = asyncio.create_task(driver.run())
    out: dict[str, list[float]] = {"handed": [], "out_of_pty": [], "applied": [], "floor": []}
    rng = random.Random(13)
    try:
        await until(lambda: (st := driver.status()) is not None and st.fault is None, driver)
        for _ in range(n):
            driver.command_speed(0.0)
            driver.command_speed(1.0)
            await until(lambda: vfd.running, driver)
            # Only places the trigger at a random phase of the poll cycle.
            await asyncio.sleep(rng.uniform(0.0, POLL_S))
            marks.applied_event.clear()
            t0 = time.perf_counter_ns()
            driver.emergency_stop()
            async with asyncio.timeout(2.0):
                await marks.applied_event.wait()
            out["handed"].append((marks.handed - t0) / 1e6)
            out["applied"].append((marks.applied - t0) / 1e6)
            if kind == "rtu":
                out["out_of_pty"].append((marks.out_of_pty - t0) / 1e6)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    try:
        out["floor"] = await floor(kind, server, n)
    finally:
        await server.close()
        await vfd.close()
    return out


async def floor(kind: Kind, server: ModbusDeviceServer, n: int) -> list[float]:
    """A bare pymodbus write_register round trip on the same link (the driver is stopped)."""
    client: AsyncModbusTcpClient | AsyncModbusSerialClient
    if kind == "tcp":
        assert server.port is not None
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port, reconnect_delay=0)
    else:
        assert server.path is not None
        client = AsyncModbusSerialClient(server.path, framer=FramerType.RTU, reconnect_delay=0)
    assert await client.connect()
    samples = []
    try:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            response = await client.write_register(RMAP.command_word, STOP, device_id=1)
            samples.append((time.perf_counter_ns() - t0) / 1e6)
            assert not response.isError()
    finally:
        client.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    figures: dict[str, Any] = {
        "unit": "ms",
        "trials": args.trials,
        "poll_interval_s": POLL_S,
        "wire_floor_ms": {
            "rtu_write_single_register_request_and_echo_bytes": 2 * RTU_FRAME_BYTES,
            "9600_baud": round(wire_ms(2 * RTU_FRAME_BYTES, 9600), 1),
            "19200_baud": round(wire_ms(2 * RTU_FRAME_BYTES, 19200), 1),
            "note": "a pty imposes no baud rate; a real RS-485 line adds this wire time, the "
            "3.5-character silences and the drive's response delay",
        },
    }
    for kind in ("tcp", "rtu"):
        results = asyncio.run(run_trials(kind, args.trials))
        label = "TCP" if kind == "tcp" else "RTU/pty"
        section: dict[str, Any] = {}
        for key, text in (
            ("handed", "estop -> stop frame handed on"),
            ("out_of_pty", "estop -> stop frame out of the pty"),
            ("applied", "estop -> drive applied the stop"),
            ("floor", "floor: write_register round trip"),
        ):
            if results[key]:
                section[key] = summary(results[key])
                print(row(f"{label}: {text}", section[key], "ms"))
        figures[kind] = section
    floor_ms = figures["wire_floor_ms"]
    print(
        f"RTU wire floor, write single register + echo (16 bytes): {floor_ms['9600_baud']} ms at "
        f"9600 baud, {floor_ms['19200_baud']} ms at 19200 (a pty imposes none)"
    )
    path = save("modbus", figures)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
