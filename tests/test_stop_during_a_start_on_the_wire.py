"""H-14 over the Trackmaster wire: a tablet's stop accepted while the driver is starting the belt
(A3 with the start speed, C3, A0, C3) must not be followed by the A0 that starts it.

The real daemon (``treadguard run``) drives ``treadguard sim-device trackmaster`` through a pty
relay that records every byte and holds the treadmill's answer to the first A3 until the daemon
has answered the tablet's ``stop``: whatever the driver writes after that, it wrote after the
stop was accepted. The belt stands still throughout (the A3 is written while it is stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import termios
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clinician import clinician, ok, sensor_user
from tests.daemon_process import ROOT, DaemonProcess, daemon_config
from tests.mosquitto import Broker

TM = "tm-h14"
A0, A3 = 0xA0, 0xA3
# After the first A3 (the ramp at 0.2 mph, the driver's lowest belt speed), the stop comes when
# the ramp asks about 0.22 mph: the stop's decision keeps that, and the ramp down from it stays
# at or above 0.2 mph (the driver's "run") for about 50 ms more.
STOP_AFTER_S = 0.1


def _raw(fd: int) -> None:
    tty.setraw(fd)
    attrs = termios.tcgetattr(fd)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


@pytest.fixture
def trackmaster_device() -> Iterator[str]:
    """``treadguard sim-device trackmaster`` in a process of its own; yields its pty."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "treadguard.controller.cli", "sim-device", "trackmaster"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.asyncio
async def test_h14_no_start_goes_over_the_wire_after_an_accepted_stop(
    broker: Broker, trackmaster_device: str, tmp_path: Path
) -> None:
    daemon: DaemonProcess | None = None
    loop = asyncio.get_running_loop()
    host_writes: list[tuple[float, bytes]] = []
    first_a3 = asyncio.Event()
    released = asyncio.Event()
    held: list[bytes] = []
    fds: list[int] = []
    try:
        dev_fd = os.open(trackmaster_device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        master, slave = os.openpty()
        fds += [dev_fd, master, slave]
        for fd in (dev_fd, master, slave):
            _raw(fd)
        os.set_blocking(master, False)
        started = {"a0": False}

        def from_host() -> None:
            try:
                data = os.read(master, 4096)
            except OSError:
                return
            host_writes.append((time.monotonic(), data))
            if A3 in data and not started["a0"]:
                first_a3.set()
            if A0 in data:
                started["a0"] = True
            with contextlib.suppress(OSError):
                os.write(dev_fd, data)

        def from_device() -> None:
            try:
                data = os.read(dev_fd, 4096)
            except OSError:
                return
            if first_a3.is_set() and not released.is_set():
                held.append(data)
                return
            os.write(master, data)

        loop.add_reader(master, from_host)
        loop.add_reader(dev_fd, from_device)
        drive = f'kind = "trackmaster"\nport = "{os.ttyname(slave)}"\nbaud = 4800'
        config = daemon_config(tmp_path, broker.port, treadmill_id=TM, sensors="mqtt", drive=drive)
        daemon = DaemonProcess(config, tmp_path / "daemon.log")
        daemon.start()
        async with sensor_user(broker, TM), clinician(broker, TM) as doc:
            await doc.until(
                lambda s: s["state"] == "idle" and s["stale"] == [] and s["speed_mph"] == 0.0,
                within=20.0,
            )
            first_a3.clear()
            started["a0"] = False
            ok(await doc.command("start_session", user="p-h14"))
            await asyncio.wait_for(first_a3.wait(), 15.0)
            await asyncio.sleep(STOP_AFTER_S)  # the moment of the clinician's tap
            ok(await doc.command("stop"))
            accepted = time.monotonic()
            released.set()
            if held:
                os.write(master, b"".join(held))
            await asyncio.sleep(1.0)  # an observation window for what goes out next
        late_starts = [
            round((t - accepted) * 1000, 1)
            for t, data in host_writes
            if t > accepted and A0 in data
        ]
        assert late_starts == [], (
            f"A0 (start) written {late_starts} ms after the daemon accepted the stop, the belt "
            "standing still"
        )
    finally:
        for fd in fds[:2]:
            loop.remove_reader(fd)
        if daemon is not None:
            daemon.stop()
        for fd in fds:
            os.close(fd)
