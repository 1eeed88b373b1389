"""The Trackmaster driver against the simulated treadmill over real raw-mode ptys (SR-9, SR-13).

Nothing is mocked: the driver opens the pty with pyserial-asyncio-fast, the simulated treadmill
reads the master end and answers through the shared codec. Expected bytes are typed from
docs/wire-protocols.md, section 1. Waiting is on the device's change notifications
(``wait_until``) or, for driver state that has no event, a bounded poll with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import serial

from tests.drive_helpers import ControlTicks, eventually, status_of
from treadguard.drivers.trackmaster import TrackmasterDriver
from treadguard.drivers.trackmaster_codec import Command, CommandFrame
from treadguard.simulator.belt import BeltParams
from treadguard.simulator.trackmaster_device import TrackmasterDevice, TrackmasterModel

ROOT = Path(__file__).resolve().parents[1]
# A brisk belt so a test reaches speed and standstill in a fraction of a second.
FAST_BELT = BeltParams(accel_mph_s=4.0, decel_mph_s=4.0, estop_decel_mph_s=8.0, lag_s=0.02)
# docs/wire-protocols.md: the communication-disconnect stop fires after 500 ms of silence.
CDS_S = 0.5
DETECT_S = 0.3  # the driver must report a dead link within this
MARGIN_S = 0.25  # scheduling slack on a loaded 2-core machine

A0, A1, A2, A3 = 0xA0, 0xA1, 0xA2, 0xA3


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# --- fixtures and helpers ------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def treadmill(
    tmp_path: Path, model: TrackmasterModel | None = None
) -> AsyncIterator[TrackmasterDevice]:
    device = TrackmasterDevice(model, belt_params=FAST_BELT, link_path=tmp_path / "treadmill")
    device.open_port()
    try:
        yield device
    finally:
        await device.aclose()


@contextlib.asynccontextmanager
async def running(driver: TrackmasterDriver) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(driver.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def healthy(driver: TrackmasterDriver) -> bool:
    st = driver.status()
    return st is not None and st.fault is None


def faulted(driver: TrackmasterDriver, prefix: str = "") -> bool:
    st = driver.status()
    return st is not None and st.fault is not None and st.fault.startswith(prefix)


def speeds_sent(device: TrackmasterDevice) -> list[bytes]:
    return [
        r.request.data
        for r in device.received
        if isinstance(r.request, CommandFrame) and r.request.command is Command.SET_SPEED
    ]


async def start_belt(
    driver: TrackmasterDriver, device: TrackmasterDevice, ticks: ControlTicks, mph: float = 1.0
) -> None:
    """Bring the belt up the way the controller does: a stop while idle, then the speed."""
    ticks.target = 0.0
    await eventually(lambda: healthy(driver), "a healthy status")
    seen = ticks.ticks
    await eventually(lambda: ticks.ticks >= seen + 2, "two ticks asking for a stop")
    ticks.target = mph
    await device.wait_until(lambda: device.running and device.belt.speed_mph > mph - 0.05)


def make_driver(device: TrackmasterDevice, **options: object) -> TrackmasterDriver:
    return TrackmasterDriver(device.path, **options)  # type: ignore[arg-type]


# --- normal operation ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_start_speed_stop_with_cds_never_a1(tmp_path: Path) -> None:
    """SR-9: the belt starts with A0 (CDS enabled) and the link is polled well inside 500 ms."""
    async with treadmill(tmp_path) as device:
        driver = make_driver(device)
        async with running(driver), ControlTicks(driver) as ticks:
            driver.command_speed(1.0)  # before the controller has seen the link: ignored
            await eventually(lambda: healthy(driver), "a healthy status")
            assert driver.ignored_run_commands >= 1
            assert device.rx[:1] == h("A2")  # whatever the treadmill did, it is stopped first

            await start_belt(driver, device, ticks, 1.0)
            assert device.cds
            assert speeds_sent(device) == [b"0010"]
            # The start speed first, read back (C3), then A0 and the read-back again.
            start = device.rx.index(A0)
            assert device.rx[start - 6 : start + 2] == h("A3 30 30 31 30 C3 A0 C3")

            ticks.target = 1.2
            await device.wait_until(lambda: device.belt.speed_mph > 1.15)
            assert speeds_sent(device) == [b"0010", b"0012"]
            await eventually(lambda: status_of(driver).speed_mph == pytest.approx(1.2), "1.2 mph")

            ticks.target = 0.0
            await device.wait_until(lambda: not device.running and device.belt.speed_mph == 0)
            await eventually(lambda: status_of(driver).speed_mph == 0.0, "standstill reported")

        assert A1 not in device.rx
        assert driver.start_writes == 1
        # The link was never silent for long: CDS never fired and requests came often.
        assert device.cds_trips == []
        times = [r.t for r in device.received]
        assert max(b - a for a, b in itertools.pairwise(times)) < CDS_S / 2


@pytest.mark.asyncio
async def test_elevation_in_half_percent_steps_and_a_refused_grade_is_a_fault(
    tmp_path: Path,
) -> None:
    """A4 with the grade x10 in 4 ASCII digits (docs/wire-protocols.md): 2.5 % is A4 30 30 32 35.
    A grade the treadmill refuses (BE) is a fault, sent once, never retried."""
    async with treadmill(tmp_path) as device:
        driver = make_driver(device)
        async with running(driver), ControlTicks(driver):
            await eventually(lambda: healthy(driver), "a healthy status")
            driver.command_elevation(2.5)
            await device.wait_until(lambda: device.set_elevation_pct == 2.5)
            assert h("A4 30 30 32 35") in device.rx
            with pytest.raises(ValueError, match=r"0\.5 %"):
                driver.command_elevation(2.3)  # off the 0.5 % grid: refused, never rounded
            driver.command_elevation(40.0)  # beyond this model's 25 %: BE
            await eventually(
                lambda: "refused elevation 40.0 %" in (status_of(driver).fault or ""),
                "the refusal reported",
            )
            assert device.rx.count(h("A4 30 34 30 30")) == 1
            assert not device.running  # a grade never moves the belt


@pytest.mark.asyncio
async def test_speed_below_minimum_stops_and_restart_needs_a0(tmp_path: Path) -> None:
    async with treadmill(tmp_path) as device:
        driver = make_driver(device)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 0.8)
            assert speeds_sent(device) == [b"0008"]
            ticks.target = 0.1  # below min_belt_mph (0.2): a stop, not A3 0001
            await device.wait_until(lambda: not device.running and device.belt.speed_mph == 0)
            await eventually(lambda: status_of(driver).speed_mph == 0.0, "standstill reported")
            ticks.target = 0.8
            await device.wait_until(lambda: device.running and device.belt.speed_mph > 0.75)
        assert device.rx.count(A0) == 2
        assert speeds_sent(device) == [b"0008", b"0008"]


@pytest.mark.asyncio
async def test_split_answers_are_reassembled(tmp_path: Path) -> None:
    """Answers arriving a byte at a time (a slow line, a USB adapter's packets) are fine."""
    async with treadmill(tmp_path) as device:
        device.split_replies = True
        driver = make_driver(device)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            await eventually(lambda: status_of(driver).speed_mph == pytest.approx(1.0), "1.0 mph")
            assert healthy(driver)


# --- emergency stop (SR-13) ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_emergency_stop_preempts_a_queued_command_and_reaches_the_device_first(
    tmp_path: Path,
) -> None:
    """SR-13: A2 is written during emergency_stop(), ahead of a speed change waiting for the
    request in flight; the speed change is never sent."""
    # A slow treadmill keeps each request in its input buffer for 50 ms.
    model = TrackmasterModel(processing_delay_s=0.05)
    async with treadmill(tmp_path, model) as device:
        driver = make_driver(device, ack_timeout_s=0.25)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            ticks.target = 1.0
            await device.wait_until(lambda: device.pending_request is not None)
            in_flight = device.pending_request
            mark = len(device.rx)
            writes = driver.stop_writes

            driver.command_speed(1.2)  # queued behind the request in flight
            driver.emergency_stop()
            ticks.target = 0.0
            # Handed to the port before emergency_stop() returned.
            assert driver.stop_writes == writes + 1

            await device.wait_until(lambda: device.belt.speed_mph == 0.0)
            await eventually(lambda: not driver.stopping, "the stop confirmed")

        assert device.rx[mark : mark + 1] == h("A2"), "the stop was the next byte on the wire"
        assert A3 not in device.rx[mark:]
        assert b"0012" not in speeds_sent(device)
        # The stop either replaced the request waiting in the treadmill's buffer or followed it.
        assert in_flight in device.replaced or any(a.request == in_flight for a in device.answered)
        assert healthy(driver)


@pytest.mark.asyncio
async def test_emergency_stop_is_repeated_until_the_belt_is_stopped(tmp_path: Path) -> None:
    async with treadmill(tmp_path) as device:
        driver = make_driver(device)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            mark = len(device.rx)
            # The first A2 is lost on the line (the device drops it); later ones stop the belt.
            device.unplug()
            driver.emergency_stop()
            ticks.target = 0.0
            await eventually(lambda: A2 in device.dropped, "the first stop lost")
            device.plug()
            await device.wait_until(lambda: device.belt.speed_mph == 0.0)
            await eventually(lambda: not driver.stopping, "the stop confirmed")
        assert A2 in device.rx[mark:]
        assert A0 not in device.rx[mark:]


# --- refusals and bad answers ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_refused_speed_is_a_fault_without_retries(tmp_path: Path) -> None:
    """BE to a speed: a clear fault and a stop, never a retry loop, although the controller
    here keeps asking for the same speed."""
    async with treadmill(tmp_path, TrackmasterModel(max_speed_mph=1.0)) as device:
        driver = make_driver(device)
        async with running(driver), ControlTicks(driver) as ticks:
            ticks.target = 0.0
            await eventually(lambda: healthy(driver), "a healthy status")
            seen = ticks.ticks
            await eventually(lambda: ticks.ticks >= seen + 2, "two stop ticks")
            ticks.target = 1.2
            await eventually(lambda: faulted(driver), "the refusal")
            assert status_of(driver).fault == "drive_fault: treadmill refused speed 1.2 mph (BE)"
            await device.wait_until(lambda: not device.running and device.belt.speed_mph == 0)
            # Many more polls later, still exactly one A3 and one A0.
            polls = len(device.received)
            await device.wait_until(lambda: len(device.received) > polls + 20)
        assert device.rx.count(A3) == 1
        assert device.rx.count(A0) == 0  # the start speed is set before A0: refused, no start
        assert driver.ignored_run_commands > 0


@pytest.mark.asyncio
async def test_illegal_command_answer_is_a_fault(tmp_path: Path) -> None:
    async with treadmill(tmp_path) as device:
        device.override_reply(A0, h("BF"))
        driver = make_driver(device)
        async with running(driver), ControlTicks(driver) as ticks:
            ticks.target = 0.0
            await eventually(lambda: healthy(driver), "a healthy status")
            seen = ticks.ticks
            await eventually(lambda: ticks.ticks >= seen + 2, "two stop ticks")
            ticks.target = 1.0
            await eventually(lambda: faulted(driver), "the refusal")
            assert status_of(driver).fault == "drive_fault: treadmill refused start (BF)"
            await device.wait_until(lambda: not device.running and device.belt.speed_mph == 0)
        assert device.rx.count(A0) == 1


@pytest.mark.asyncio
async def test_garbage_is_a_fault_and_the_link_recovers(tmp_path: Path) -> None:
    async with treadmill(tmp_path) as device:
        driver = make_driver(device)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            device.override_reply(0xC0, h("55 AA"))
            await eventually(lambda: faulted(driver, "drive_fault: garbage 55 AA"), "a fault")
            await device.wait_until(lambda: not device.running and device.belt.speed_mph == 0)
            # Shown to the controller, then healthy again on the same link; no restart.
            await eventually(lambda: healthy(driver), "healthy again")
            assert driver.connect_attempts == 1
            assert device.rx.count(A0) == 1


@pytest.mark.asyncio
async def test_wrong_ack_is_a_fault(tmp_path: Path) -> None:
    async with treadmill(tmp_path) as device:
        device.override_reply(A3, h("B4"))  # B4 (elevation) for a speed command
        driver = make_driver(device)
        async with running(driver), ControlTicks(driver) as ticks:
            ticks.target = 0.0
            await eventually(lambda: healthy(driver), "a healthy status")
            seen = ticks.ticks
            await eventually(lambda: ticks.ticks >= seen + 2, "two stop ticks")
            ticks.target = 1.0
            await eventually(lambda: faulted(driver), "a fault")
            assert status_of(driver).fault == (
                "drive_fault: unexpected answer B4 to A3 30 30 31 30"
            )
            await device.wait_until(lambda: not device.running and device.belt.speed_mph == 0)
        assert device.rx.count(A3) == 1


@pytest.mark.asyncio
async def test_partial_answer_is_a_link_fault(tmp_path: Path) -> None:
    async with treadmill(tmp_path) as device:
        driver = make_driver(device)
        async with running(driver):
            await eventually(lambda: healthy(driver), "a healthy status")
            device.override_reply(0xC1, h("D1 30 30"))  # cut short: the rest never comes
            await eventually(lambda: faulted(driver), "a fault")
            fault = status_of(driver).fault
            assert fault == "drive_link: no answer to C1 within 200 ms (got only D1 30 30)"


@pytest.mark.asyncio
async def test_cds_disabled_belt_is_a_fault_and_is_stopped(tmp_path: Path) -> None:
    async with treadmill(tmp_path) as device:
        driver = make_driver(device)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            device.cds = False  # the treadmill now reports D0 33
            await eventually(lambda: faulted(driver), "a fault")
            assert "D0 33" in (status_of(driver).fault or "")
            await device.wait_until(lambda: not device.running and device.belt.speed_mph == 0)
        assert device.rx.count(A0) == 1


@pytest.mark.asyncio
async def test_speed_999_9_is_a_fault(tmp_path: Path) -> None:
    async with treadmill(tmp_path) as device:
        driver = make_driver(device)
        async with running(driver):
            await eventually(lambda: healthy(driver), "a healthy status")
            device.report_emergency = True
            await eventually(lambda: faulted(driver), "a fault")
            st = status_of(driver)
            assert "999.9" in (st.fault or "")
            assert st.speed_mph == float("inf")  # no speed known: fail closed


@pytest.mark.asyncio
async def test_treadmill_stopping_by_itself_is_a_fault_and_no_restart(tmp_path: Path) -> None:
    async with treadmill(tmp_path) as device:
        driver = make_driver(device)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            device.press_stop()  # the stop button on the treadmill
            await eventually(lambda: faulted(driver), "a fault")
            assert "stopped the belt by itself" in (status_of(driver).fault or "")
            polls = len(device.received)
            await device.wait_until(lambda: len(device.received) > polls + 20)
            assert not device.running
        assert device.rx.count(A0) == 1


def test_constructor_refuses_unsafe_settings() -> None:
    with pytest.raises(ValueError, match="poll_interval_s"):
        TrackmasterDriver("/dev/null", poll_interval_s=0.2)
    with pytest.raises(ValueError, match="baud"):
        TrackmasterDriver("/dev/null", baud=19200)
    with pytest.raises(ValueError, match="ack_timeout_s"):
        TrackmasterDriver("/dev/null", ack_timeout_s=0.5)


# --- the drive-side deadman (SR-9) --------------------------------------------------------------


CONTROLLER_SCRIPT = """
import asyncio, sys
from treadguard.drivers.trackmaster import TrackmasterDriver

async def main() -> None:
    driver = TrackmasterDriver(sys.argv[1])
    asyncio.get_running_loop().create_task(driver.run())
    target = 0.0
    while True:  # a minimal controller: stop until the drive is healthy, then 1.0 mph
        st = driver.status()
        driver.command_speed(target)
        if st is not None and st.fault is None:
            target = 1.0
        await asyncio.sleep(0.05)

asyncio.run(main())
"""


@pytest.mark.asyncio
async def test_cds_stops_the_belt_when_the_controller_process_is_sigkilled(
    tmp_path: Path,
) -> None:
    script = tmp_path / "controller.py"
    script.write_text(CONTROLLER_SCRIPT)
    async with treadmill(tmp_path) as device:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, str(script), device.path, cwd=ROOT, env=env
        )
        try:
            await device.wait_until(
                lambda: device.running and device.belt.speed_mph > 0.95, timeout_s=30
            )
            assert device.cds
        finally:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        killed_at = asyncio.get_running_loop().time()
        # 500 ms of silence, then 1.0 mph at 4 mph/s: about 0.75 s, bounded generously.
        await device.wait_until(lambda: device.belt.speed_mph == 0.0, timeout_s=5)
        stopped_after = asyncio.get_running_loop().time() - killed_at
    assert proc.returncode == -signal.SIGKILL
    [trip] = device.cds_trips
    assert CDS_S <= trip.t - trip.last_rx_t < CDS_S + MARGIN_S
    assert stopped_after < CDS_S + 1.0 / FAST_BELT.decel_mph_s + 1.0


# --- lost link (SR-9) ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_port_closed_faults_within_300_ms_and_reconnect_never_restarts(
    tmp_path: Path,
) -> None:
    """The treadmill's port vanishes (USB adapter pulled) and comes back on a new pty."""
    async with treadmill(tmp_path) as device:
        driver = make_driver(device, reconnect_max_s=0.2)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            loop = asyncio.get_running_loop()
            pulled_at = loop.time()
            device.close_port()
            await eventually(lambda: faulted(driver, "drive_link"), "drive_link fault")
            assert loop.time() - pulled_at < DETECT_S + MARGIN_S
            frozen = status_of(driver).t

            # The belt stops on CDS; the driver keeps trying to reach it, t does not advance.
            await device.wait_until(lambda: device.belt.speed_mph == 0.0)
            attempts = driver.connect_attempts
            await eventually(lambda: driver.connect_attempts >= attempts + 3, "reconnect tries")
            assert status_of(driver).t == frozen

            mark = len(device.rx)
            device.open_port()  # a new pty behind the same stable name
            await eventually(lambda: healthy(driver), "healthy after reconnect")
            # The controller here still asks for 1.0 mph: the belt must not start.
            polls = len(device.received)
            await device.wait_until(lambda: len(device.received) > polls + 20)
            assert device.rx[mark : mark + 1] == h("A2")  # a new link begins with a stop
            assert A0 not in device.rx[mark:]
            assert not device.running
            assert device.belt.speed_mph == 0.0
            assert ticks.target == 1.0


@pytest.mark.asyncio
async def test_cable_cut_faults_within_300_ms_stops_continue_no_restart(tmp_path: Path) -> None:
    """The line goes silent (cable cut, port still open): time-outs, then reconnect attempts
    that each begin with a stop."""
    async with treadmill(tmp_path) as device:
        driver = make_driver(device, reconnect_max_s=0.2)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            loop = asyncio.get_running_loop()
            cut_at = loop.time()
            device.unplug()
            await eventually(lambda: faulted(driver, "drive_link"), "drive_link fault")
            assert loop.time() - cut_at < DETECT_S + MARGIN_S

            await eventually(lambda: device.dropped.count(A2) >= 3, "repeated stop attempts")
            await device.wait_until(lambda: device.belt.speed_mph == 0.0)
            assert len(device.cds_trips) == 1

            mark = len(device.rx)
            device.plug()
            await eventually(lambda: healthy(driver), "healthy after the cable is back")
            polls = len(device.received)
            await device.wait_until(lambda: len(device.received) > polls + 20)
            assert A0 not in device.rx[mark:]
            assert not device.running
            assert ticks.target == 1.0


@pytest.mark.asyncio
async def test_missing_port_at_start_is_retried_until_it_appears(tmp_path: Path) -> None:
    device = TrackmasterDevice(belt_params=FAST_BELT, link_path=tmp_path / "treadmill")
    driver = make_driver(device)
    async with running(driver):
        await eventually(lambda: driver.connect_attempts >= 2, "open attempts")
        assert driver.status() is None  # never linked: nothing to report yet
        device.open_port()
        try:
            await eventually(lambda: healthy(driver), "a healthy status")
        finally:
            await device.aclose()


# --- an independent client ------------------------------------------------------------------------

# (request, expected answer) typed from docs/wire-protocols.md; None = check the Dx prefix and 4
# digits.
TABLE: list[tuple[str, str | None]] = [
    ("C0", "D0 31"),
    ("A9 30 31 35 30", "B9"),  # weight 150
    ("A9 30 30 31 30", "BE"),  # 10: below the model's limit
    ("A0", "B0"),
    ("C0", "D0 32"),
    ("A3 30 30 31 32", "B3"),
    ("C3", "D3 30 30 31 32"),
    ("A3 31 32 30 31", "BE"),  # 120.1 mph
    ("A4 30 30 32 35", "B4"),
    ("C4", "D4 30 30 32 35"),
    ("A4 30 30 32 37", "BE"),  # 2.7 %: not a 0.5 % step
    ("A4 30 32 35 35", "BE"),  # 25.5 %: above 25 %
    ("A5 30 31 32 35", "B5"),
    ("A6 30 33", "B6"),
    ("C8", "D8 30 30 30 33"),
    ("A7 30 32", "B7"),
    ("C9", "D9 30 30 30 32"),
    ("CA", "DA 30 31 35 30"),
    ("C1", None),
    ("C2", None),
    ("C5", None),
    ("C6", None),
    ("C7", None),
    ("CB", None),
    ("CC", None),
    ("CD", None),
    ("A8", "B8"),
    ("AC", "BC"),  # echo on
    ("A3 30 30 31 30", "B3 30 30 31 30"),
    ("A6 30 34", "B6 30 34"),
    ("A2", "B2"),
    ("AC", "BC"),  # echo off
    ("A3 30 30 31 30", "B3"),
    ("AB", "BB"),
    ("AA", "BA"),
    ("A1", "B1"),  # recognised by the treadmill (the driver never sends it)
    ("C0", "D0 33"),
    ("A2", "B2"),
    ("C0", "D0 31"),
    ("AD", "BF"),
    ("AF", "BF"),
    ("35", "BF"),
    ("CE", "DF"),
    ("CF", "DF"),
]


def _client_session(path: str) -> list[tuple[str, bytes]]:
    answers = []
    with serial.Serial(path, 4800, timeout=1.0) as port:
        for request, expected in TABLE:
            port.write(h(request))
            size = len(h(expected)) if expected is not None else 5
            answers.append((request, port.read(size)))
        port.timeout = 0.1
        answers.append(("(nothing more)", port.read(16)))
    return answers


@pytest.mark.asyncio
async def test_plain_pyserial_client_gets_byte_exact_answers(tmp_path: Path) -> None:
    async with treadmill(tmp_path) as device:
        answers = await asyncio.to_thread(_client_session, device.path)
    for (request, expected), (_, got) in zip(TABLE, answers, strict=False):
        if expected is not None:
            assert got == h(expected), f"{request}: {got.hex(' ')}"
        else:
            assert got[:1] == bytes([h(request)[0] + 0x10]), request
            assert got[1:].isdigit(), f"{request}: {got.hex(' ')}"
            assert len(got) == 5
    assert answers[-1] == ("(nothing more)", b"")  # one answer per request, nothing extra


def _ask_belt_state(path: str) -> bytes:
    with serial.Serial(path, 4800, timeout=1.0) as port:
        port.write(h("C0"))
        return port.read(2)


@pytest.mark.asyncio
async def test_served_device_prints_its_path_first_and_exits_on_sigterm() -> None:
    """What ``treadguard sim-device trackmaster`` will run: serve_trackmaster()."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "treadguard.simulator.trackmaster_device",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            path = (await proc.stdout.readline()).decode().strip()
        assert path.startswith("/dev/pts/")
        assert await asyncio.to_thread(_ask_belt_state, path) == h("D0 31")
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
