"""The simulated Trackmaster's fault injection, seen by a plain pyserial client on a raw pty.

What the driver's stop-path tests rely on: every injected answer replaces the truth for every
request (the stop included) until cleared or its time runs out, a refused request does not take
effect, every request still feeds the CDS deadman, and the line delay holds both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial

from treadguard.simulator.belt import BeltParams
from treadguard.simulator.trackmaster_device import (
    CUT_SHORT,
    GARBAGE,
    InjectionKind,
    TrackmasterDevice,
    TrackmasterModel,
)

ROOT = Path(__file__).resolve().parents[1]
FAST_BELT = BeltParams(accel_mph_s=4.0, decel_mph_s=4.0, estop_decel_mph_s=8.0, lag_s=0.02)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


@contextlib.asynccontextmanager
async def treadmill(
    tmp_path: Path, model: TrackmasterModel | None = None, line_delay_s: float = 0.0
) -> AsyncIterator[TrackmasterDevice]:
    device = TrackmasterDevice(
        model, belt_params=FAST_BELT, link_path=tmp_path / "treadmill", line_delay_s=line_delay_s
    )
    device.open_port()
    try:
        yield device
    finally:
        await device.aclose()


def _exchange(path: str, requests: list[tuple[str, int]], timeout_s: float = 1.0) -> list[bytes]:
    """Each request (hex) and the number of answer bytes to read for it."""
    answers = []
    with serial.Serial(path, 4800, timeout=timeout_s) as port:
        for request, size in requests:
            port.write(h(request))
            answers.append(port.read(size))
    return answers


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "answer"),
    [("BE", h("BE")), ("BF", h("BF")), ("garbage", GARBAGE), ("partial", CUT_SHORT)],
)
async def test_injected_answer_replaces_every_answer_and_the_stop_is_not_carried_out(
    tmp_path: Path, kind: InjectionKind, answer: bytes
) -> None:
    async with treadmill(tmp_path) as device:
        started = await asyncio.to_thread(_exchange, device.path, [("A0", 1)])
        assert started == [h("B0")]
        await device.wait_until(lambda: device.belt.speed_mph > 0.15)
        device.inject(kind)
        got = await asyncio.to_thread(
            _exchange, device.path, [("A2", len(answer)), ("C0", len(answer))]
        )
        assert got == [answer, answer]
        assert device.running  # the refused stop did not stop the belt
        assert device.belt.speed_mph > 0.15
        device.clear_injection()
        got = await asyncio.to_thread(_exchange, device.path, [("A2", 1), ("C0", 2)])
        assert got == [h("B2"), h("D0 31")]


@pytest.mark.asyncio
async def test_silent_treadmill_answers_nothing_but_its_cds_is_fed_by_every_request(
    tmp_path: Path,
) -> None:
    """SR-9: requests a treadmill does not answer still reset its CDS: only silence trips it."""
    async with treadmill(tmp_path) as device:
        await asyncio.to_thread(_exchange, device.path, [("A0", 1)])
        device.inject("silent")

        def keep_asking() -> list[bytes]:
            got = []
            with serial.Serial(device.path, 4800, timeout=0.05) as port:
                end = time.monotonic() + 1.2
                while time.monotonic() < end:
                    port.write(h("A2"))
                    got.append(port.read(1))
            return got

        assert set(await asyncio.to_thread(keep_asking)) == {b""}
        assert device.cds_trips == []  # fed by the unanswered stops for 1.2 s
        assert device.running
        await device.wait_until(lambda: device.belt.speed_mph == 0.0, timeout_s=3)
        [trip] = device.cds_trips
        assert trip.t - trip.last_rx_t >= device.model.cds_timeout_s


@pytest.mark.asyncio
async def test_injection_for_a_while_ends_by_itself(tmp_path: Path) -> None:
    async with treadmill(tmp_path) as device:
        device.inject("BF", for_s=0.2)
        assert await asyncio.to_thread(_exchange, device.path, [("C0", 1)]) == [h("BF")]
        injection = device.injection
        assert injection is not None
        loop = asyncio.get_running_loop()
        await device.wait_until(lambda: loop.time() > injection.until)
        assert await asyncio.to_thread(_exchange, device.path, [("C0", 2)]) == [h("D0 31")]
        assert device.injection is None


@pytest.mark.asyncio
async def test_line_delay_holds_both_ways(tmp_path: Path) -> None:
    async with treadmill(tmp_path, line_delay_s=0.03) as device:
        sent = time.monotonic()
        assert await asyncio.to_thread(_exchange, device.path, [("C0", 2)]) == [h("D0 31")]
        assert time.monotonic() - sent >= 0.06


@pytest.mark.asyncio
async def test_model_that_resumes_its_last_set_speed_on_a0(tmp_path: Path) -> None:
    """A stop keeps the set speed; A0 restarts at it. With ``speed_while_stopped="store"`` an A3
    while stopped sets the speed A0 starts at; with "ignore" it is acknowledged and dropped."""
    model = TrackmasterModel(resume_last_speed=True)
    async with treadmill(tmp_path, model) as device:
        steps = [("A0", 1), ("A3 30 30 31 32", 1), ("A2", 1), ("C3", 5), ("A0", 1), ("C3", 5)]
        got = await asyncio.to_thread(_exchange, device.path, steps)
        assert got[3] == h("D3 30 30 31 32")  # kept through the stop
        assert got[5] == h("D3 30 30 31 32")  # and resumed at
        assert max(mph for _, mph in device.commanded) == pytest.approx(1.2)
        steps = [("A2", 1), ("A3 30 30 30 38", 1), ("C3", 5)]
        got = await asyncio.to_thread(_exchange, device.path, steps)
        assert got[2] == h("D3 30 30 30 38")
    ignoring = TrackmasterModel(resume_last_speed=True, speed_while_stopped="ignore")
    async with treadmill(tmp_path, ignoring) as device:
        steps = [("A0", 1), ("A3 30 30 31 32", 1), ("A2", 1), ("A3 30 30 30 38", 1), ("C3", 5)]
        got = await asyncio.to_thread(_exchange, device.path, steps)
        assert got[3] == h("B3")
        assert got[4] == h("D3 30 30 31 32")


def _first_line(proc: subprocess.Popen[str], timeout_s: float = 20.0) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            proc.kill()
            raise AssertionError("sim-device printed nothing")
    return proc.stdout.readline().strip()


def test_sim_device_cli_injects_on_start_and_toggles_on_sigusr1() -> None:
    args = ["sim-device", "trackmaster", "--inject", "BF", "--line-delay-ms", "10"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "treadguard.controller.cli", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        path = _first_line(proc)
        with serial.Serial(path, 4800, timeout=2) as port:
            port.write(h("A2"))
            assert port.read(1) == h("BF")  # the stop itself refused
            proc.send_signal(signal.SIGUSR1)  # fault off
            deadline = time.monotonic() + 10
            answer = b""
            while answer != h("B2") and time.monotonic() < deadline:
                port.write(h("A2"))
                answer = port.read(1)
            assert answer == h("B2")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def test_sim_device_cli_says_when_its_own_cds_stops_the_belt() -> None:
    """SR-9 seen from another process: a test that kills or freezes the host (the daemon under
    systemd, tests/test_install.py) reads the treadmill's own stop from its output."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "treadguard.controller.cli", "sim-device", "trackmaster"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        path = _first_line(proc)
        with serial.Serial(path, 4800, timeout=2) as port:
            port.write(h("A0"))  # start, with the CDS deadman armed
            assert port.read(1) == h("B0")
            # ... and then nothing more: the host has gone silent.
            trip, standstill = _next_lines(proc, 2, timeout_s=5.0)
            assert trip.startswith("cds_stop silent_s=0.5"), trip
            assert standstill == "standstill after cds_stop"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def _next_lines(proc: subprocess.Popen[str], count: int, timeout_s: float) -> list[str]:
    """The process's next ``count`` lines; killed (and the test failed) if they take longer."""
    assert proc.stdout is not None
    stream = proc.stdout
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(stream.readline().strip() for _ in range(count))
    )
    reader.start()
    reader.join(timeout_s)
    if reader.is_alive():
        proc.kill()  # the reader sees the end of the output and ends
        reader.join()
        raise AssertionError(f"not {count} lines within {timeout_s} s: {lines}")
    return lines
