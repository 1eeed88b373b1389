"""H-14 over the Modbus wire: a tablet's stop accepted while the VFD driver is starting the belt
(the frequency command, then the run word) must not be followed by the run word.

The real daemon (``treadguard run``) drives ``treadguard sim-device modbus --tcp`` through a
TCP relay that records every write and holds the drive's answer to the first frequency command
above 0 until the daemon has answered the tablet's ``stop``: whatever the driver writes after
that, it wrote after the stop was accepted. The belt stands still throughout (no run word has
gone out when the frequency is written).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clinician import clinician, ok, sensor_user
from tests.daemon_process import ROOT, DaemonProcess, daemon_config
from tests.mosquitto import Broker
from treadguard.safety.link_limits import VFD_REQUEST_TIMEOUT_S

TM = "tm-h14-vfd"
COMMAND_WORD, FREQUENCY = 0x2000, 0x2001
WRITE_SINGLE_REGISTER = 0x06
DELTA_MAP = ROOT / "config" / "drives" / "delta-vfd-e.toml"


def is_run(word: int) -> bool:
    return word & 0b11 == 0b10  # docs/wire-protocols.md: bits 0-1, 10 run


def is_stop(word: int) -> bool:
    return word & 0b11 == 0b01


def register_writes(buffer: bytearray) -> Iterator[tuple[int, int]]:
    """(register, value) of each complete "write single register" request in ``buffer``, which
    loses the frames read; anything else is passed over."""
    while len(buffer) >= 8:
        length = struct.unpack(">H", buffer[4:6])[0]  # MBAP: unit id + PDU
        if len(buffer) < 6 + length:
            return
        pdu = bytes(buffer[7 : 6 + length])
        del buffer[: 6 + length]
        if pdu[:1] == bytes([WRITE_SINGLE_REGISTER]) and len(pdu) == 5:
            yield struct.unpack(">HH", pdu[1:5])


@pytest.fixture
def vfd_device() -> Iterator[tuple[str, int]]:
    """``treadguard sim-device modbus --tcp`` in a process of its own; yields its address."""
    command = ["sim-device", "modbus", "--tcp", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "treadguard.controller.cli", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        host, _, port = proc.stdout.readline().strip().rpartition(":")
        yield host, int(port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.asyncio
async def test_h14_no_run_word_goes_over_the_wire_after_an_accepted_stop(
    broker: Broker, vfd_device: tuple[str, int], tmp_path: Path
) -> None:
    daemon: DaemonProcess | None = None
    writes: list[tuple[float, int, int]] = []  # (time, register, value), host to drive
    watching = {"on": False}
    first_frequency = asyncio.Event()
    released = asyncio.Event()
    stop_after_release = asyncio.Event()
    relays: list[asyncio.Task[None]] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*vfd_device)

        async def host_to_drive() -> None:
            buffer = bytearray()
            while data := await reader.read(4096):
                now = time.monotonic()
                buffer += data
                for register, value in register_writes(buffer):
                    writes.append((now, register, value))
                    if watching["on"] and register == FREQUENCY and value > 0:
                        first_frequency.set()
                    if released.is_set() and register == COMMAND_WORD and is_stop(value):
                        stop_after_release.set()
                up_writer.write(data)
                await up_writer.drain()

        async def drive_to_host() -> None:
            while data := await up_reader.read(4096):
                if first_frequency.is_set() and not released.is_set():
                    await released.wait()  # the answer waits until the stop is accepted
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(host_to_drive(), drive_to_host())
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            up_writer.close()

    def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        relays.append(asyncio.create_task(relay(reader, writer)))

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        drive = (
            f'kind = "modbus"\ntransport = "tcp"\nhost = "127.0.0.1"\ntcp_port = {port}\n'
            f"register_map = '{DELTA_MAP.as_posix()}'\nmph_per_hz = 0.05"
        )
        config = daemon_config(tmp_path, broker.port, treadmill_id=TM, sensors="mqtt", drive=drive)
        daemon = DaemonProcess(config, tmp_path / "daemon.log")
        daemon.start()
        async with sensor_user(broker, TM), clinician(broker, TM) as doc:
            await doc.until(
                lambda s: s["state"] == "idle" and s["stale"] == [] and s["speed_mph"] == 0.0,
                within=20.0,
            )
            watching["on"] = True
            ok(await doc.command("start_session", user="p-h14"))
            try:
                await asyncio.wait_for(first_frequency.wait(), 15.0)
            except TimeoutError:
                log = daemon.log.read_text(errors="replace").splitlines()[-40:]
                pytest.fail(
                    f"no frequency above 0 written within 15 s of the accepted start; last "
                    f"state {doc.latest}; writes {[(r, v) for _, r, v in writes[-10:]]}; the "
                    "daemon's log ends:\n" + "\n".join(log)
                )
            held_at = time.monotonic()
            ok(await doc.command("stop"))  # the clinician's tap as the start begins
            accepted = time.monotonic()
            released.set()
            # The driver's answer to the frequency write must still be awaited, or the driver
            # has timed out (a link fault) and the test has shown nothing.
            assert accepted - held_at < VFD_REQUEST_TIMEOUT_S, (
                f"the stop took {accepted - held_at:.3f} s to be accepted, past the driver's "
                f"{VFD_REQUEST_TIMEOUT_S} s request time-out: the machine is too loaded to judge"
            )
            await asyncio.wait_for(stop_after_release.wait(), 5.0)
        late_runs = [
            round((t - accepted) * 1000, 1)
            for t, register, value in writes
            if t > accepted and register == COMMAND_WORD and is_run(value)
        ]
        assert late_runs == [], (
            f"run word written {late_runs} ms after the daemon accepted the stop, the belt "
            "standing still"
        )
    finally:
        if daemon is not None:
            daemon.stop()
        server.close()
        for task in relays:
            task.cancel()
        for task in relays:
            with contextlib.suppress(asyncio.CancelledError):
                await task
