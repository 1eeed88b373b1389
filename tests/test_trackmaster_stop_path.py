"""The Trackmaster driver's stop path, through the real driver against the simulated treadmill on
a raw-mode pty with line delay (SR-9, SR-11, SR-13).

A treadmill that does not confirm a stop (it answers BE or BF to everything, the stop included,
answers garbage or frames cut short, or answers nothing) is given silence after the stop-confirm
bound, so that its own communication-disconnect stop (CDS) trips: every request it receives,
answered or not, resets that deadman. The stop goes out on every way out of the driver (a
cancelled task, a crashed sibling, the shutdown bound), is never delayed by a reconnect back-off,
and is repeated until the treadmill reports standstill. A start never commands more than the
start speed, even on a model that resumes at its last set speed on A0.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.drive_helpers import ControlTicks, eventually, status_of
from tests.test_trackmaster_driver import FAST_BELT, faulted, healthy, running, start_belt
from treadguard.drivers.trackmaster import TrackmasterDriver
from treadguard.drivers.trackmaster_codec import BeltState, Command, CommandFrame, StatusValue
from treadguard.simulator.trackmaster_device import (
    InjectionKind,
    Received,
    TrackmasterDevice,
    TrackmasterModel,
)

LINE_DELAY_S = 0.02  # each way
CDS_S = 0.5  # docs/wire-protocols.md: the treadmill's communication-disconnect stop
CONFIRM_S = 0.3  # SR-9: the stop-confirm bound
POLL_S = 0.1
MARGIN_S = 0.25  # scheduling slack on a loaded 2-core machine


@contextlib.asynccontextmanager
async def treadmill(
    tmp_path: Path, model: TrackmasterModel | None = None
) -> AsyncIterator[TrackmasterDevice]:
    device = TrackmasterDevice(
        model, belt_params=FAST_BELT, link_path=tmp_path / "treadmill", line_delay_s=LINE_DELAY_S
    )
    device.open_port()
    try:
        yield device
    finally:
        await device.aclose()


def is_stop(r: Received) -> bool:
    return isinstance(r.request, CommandFrame) and r.request.command is Command.STOP


def bursts(received: list[Received], gap_s: float) -> list[list[Received]]:
    """Requests grouped into bursts separated by at least ``gap_s`` of nothing on the wire."""
    out: list[list[Received]] = []
    for r in received:
        if out and r.t - out[-1][-1].t < gap_s:
            out[-1].append(r)
        else:
            out.append([r])
    return out


async def watch(device: TrackmasterDevice, seconds: float) -> None:
    """Let the session run on for ``seconds`` of the treadmill's clock (an observation window,
    not a wait for a condition)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    await device.wait_until(lambda: loop.time() >= end, timeout_s=seconds + 5)


# --- a treadmill that does not confirm the stop (SR-9) -------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["BF", "BE", "garbage", "partial", "silent"])
async def test_sr9_unconfirmed_stop_gets_silence_so_the_cds_stops_the_belt(
    tmp_path: Path, kind: InjectionKind
) -> None:
    """SR-9: mid-session at 0.8 mph the treadmill starts answering ``kind`` to everything, the
    stop included, and carries nothing out. Past the stop-confirm bound the driver falls silent
    (no A2, no poll) for longer than the CDS time-out, the CDS trips and the belt stops; each
    later attempt is one stop and one status read, then silence again. The fault is reported
    and the belt is never started again, though the controller keeps asking for 0.8 mph."""
    loop = asyncio.get_running_loop()
    async with treadmill(tmp_path) as device:
        driver = TrackmasterDriver(device.path)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 0.8)
            starts = device.received_commands(Command.START)
            injected_at = loop.time()
            device.inject(kind)
            await eventually(lambda: faulted(driver), "the fault reported")
            await device.wait_until(lambda: device.belt.speed_mph == 0.0, timeout_s=10)
            stopped_after = loop.time() - injected_at
            await watch(device, 2.0)
            assert faulted(driver)
            after = [r for r in device.received if r.t >= injected_at]
            # The treadmill answers again: the link recovers, the belt stays stopped.
            device.clear_injection()
            await eventually(lambda: healthy(driver), "healthy again", timeout_s=5)
            polls = len(device.received)
            await device.wait_until(lambda: len(device.received) > polls + 20)
            assert ticks.target == 0.8

    [trip] = device.cds_trips
    assert trip.t - trip.last_rx_t >= CDS_S
    # Detected at the next poll, silent from the bound on, then CDS and the deceleration.
    bound = POLL_S + 2 * LINE_DELAY_S + CONFIRM_S + CDS_S + 0.8 / FAST_BELT.decel_mph_s
    assert stopped_after < bound + MARGIN_S
    groups = bursts(after, CDS_S)
    first, *retries = groups
    # Requests only until the stop-confirm bound, then none for at least the CDS time-out.
    assert first[-1].t - injected_at < POLL_S + 2 * LINE_DELAY_S + CONFIRM_S + MARGIN_S
    assert retries, "a stop attempt after the silence"
    for attempt in retries:
        # One stop and one status read, then silence again.
        assert sum(map(is_stop, attempt)) == 1, attempt
        assert attempt[-1].t - attempt[0].t < CONFIRM_S + MARGIN_S
    assert device.received_commands(Command.START) == starts  # never started again


# --- never restart, never more than the start speed (SR-3, SR-9) ----------------------------------


async def end_a_session_at(
    driver: TrackmasterDriver, device: TrackmasterDevice, ticks: ControlTicks, mph: float
) -> None:
    await start_belt(driver, device, ticks, mph)
    ticks.target = 0.0
    await device.wait_until(lambda: not device.running and device.belt.speed_mph == 0.0)
    await eventually(lambda: not driver.stopping, "the stop confirmed")
    seen = ticks.ticks
    await eventually(lambda: ticks.ticks >= seen + 2, "two stop ticks")


@pytest.mark.asyncio
async def test_sr9_start_never_commands_more_than_the_start_speed_on_a_resuming_model(
    tmp_path: Path,
) -> None:
    """SR-9: a model that keeps its set speed through a stop and resumes at it on A0 (the last
    session ended at 1.2 mph): a new start at 0.8 mph never commands more than 0.8 mph. The
    driver sets the speed (A3) while stopped, reads it back (C3), then starts (A0), and reads it
    back again."""
    model = TrackmasterModel(resume_last_speed=True)
    async with treadmill(tmp_path, model) as device:
        driver = TrackmasterDriver(device.path)
        async with running(driver), ControlTicks(driver) as ticks:
            await end_a_session_at(driver, device, ticks, 1.2)
            assert device.set_speed_mph == pytest.approx(1.2)  # kept through the stop
            mark = len(device.commanded)
            device.belt.max_speed_mph = 0.0
            ticks.target = 0.8
            await device.wait_until(lambda: device.running and device.belt.speed_mph > 0.75)
            await watch(device, 0.3)
            assert healthy(driver)
        second = [mph for _, mph in device.commanded[mark:]]
    assert second
    assert max(second) == pytest.approx(0.8)
    assert device.belt.max_speed_mph < 1.2 - 0.05


@pytest.mark.asyncio
async def test_sr9_no_start_when_the_treadmill_does_not_take_the_start_speed(
    tmp_path: Path,
) -> None:
    """SR-9: a resuming model that acknowledges A3 while stopped but keeps its old set speed
    (1.2 mph): the read-back (C3) shows it, the driver reports a fault and never sends A0. (Its
    first session started at the model's minimum and was brought up by A3 after A0.)"""
    model = TrackmasterModel(resume_last_speed=True, speed_while_stopped="ignore")
    async with treadmill(tmp_path, model) as device:
        driver = TrackmasterDriver(device.path)
        async with running(driver), ControlTicks(driver) as ticks:
            await end_a_session_at(driver, device, ticks, 1.2)
            starts = device.received_commands(Command.START)
            ticks.target = 0.8
            await eventually(lambda: faulted(driver, "drive_fault"), "the fault reported")
            assert "set speed" in (status_of(driver).fault or "")
            polls = len(device.received)
            await device.wait_until(lambda: len(device.received) > polls + 20)
        assert device.received_commands(Command.START) == starts
        assert not device.running


# --- the stop on every way out (SR-9, SR-11) --------------------------------------------------


def stopped_by_our_a2(device: TrackmasterDevice) -> bool:
    return device.belt.speed_mph == 0.0 and device.cds_trips == [] and not device.running


@pytest.mark.asyncio
async def test_sr9_sr11_a_cancelled_driver_writes_a2_before_its_port_closes(tmp_path: Path) -> None:
    """SR-9, SR-11: cancelling run() (the daemon cancels its driver at shutdown) writes A2
    before the port closes; the belt is stopped by that stop, not 500 ms later by the CDS."""
    async with treadmill(tmp_path) as device:
        driver = TrackmasterDriver(device.path)
        task = asyncio.create_task(driver.run())
        async with ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
        mark = len(device.received)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await device.wait_until(lambda: device.belt.speed_mph == 0.0, timeout_s=5)
        assert any(is_stop(r) for r in device.received[mark:])
        assert stopped_by_our_a2(device)


class Crash(Exception):
    pass


@pytest.mark.asyncio
async def test_sr9_a_crashed_sibling_task_stops_the_belt_through_the_cancelled_driver(
    tmp_path: Path,
) -> None:
    """SR-9: the daemon's TaskGroup: a sibling task crashes, the group cancels the driver's
    task at once; nobody else calls emergency_stop(). A2 still reaches the treadmill."""
    async with treadmill(tmp_path) as device:
        driver = TrackmasterDriver(device.path)
        crash = asyncio.Event()
        mark = 0

        async def sibling() -> None:
            await crash.wait()
            raise Crash

        async def control() -> None:
            nonlocal mark
            async with ControlTicks(driver) as ticks:
                await start_belt(driver, device, ticks, 1.0)
                mark = len(device.received)
                crash.set()
                await asyncio.Event().wait()

        async def daemon() -> None:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(driver.run())
                tg.create_task(control())
                tg.create_task(sibling())

        with pytest.raises(ExceptionGroup) as raised:
            await daemon()
        assert raised.group_contains(Crash)
        await device.wait_until(lambda: device.belt.speed_mph == 0.0, timeout_s=5)
        assert any(is_stop(r) for r in device.received[mark:])
        assert stopped_by_our_a2(device)


@pytest.mark.asyncio
async def test_sr9_shutdown_bound_emergency_stop_then_cancel_at_once(tmp_path: Path) -> None:
    """SR-9, SR-11: the shutdown bound calls emergency_stop() and cancels the driver in the
    same breath: the A2 is on the wire and stops the belt."""
    async with treadmill(tmp_path) as device:
        driver = TrackmasterDriver(device.path)
        task = asyncio.create_task(driver.run())
        async with ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
        mark = len(device.received)
        driver.emergency_stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await device.wait_until(lambda: device.belt.speed_mph == 0.0, timeout_s=5)
        assert any(is_stop(r) for r in device.received[mark:])
        assert stopped_by_our_a2(device)


@pytest.mark.asyncio
async def test_sr9_a_stop_raised_during_the_reconnect_back_off_is_not_delayed_by_it(
    tmp_path: Path,
) -> None:
    """SR-9: with the port gone long enough for the back-off to reach 2 s, the port comes back
    and an emergency stop is raised: the next open is at once and A2 is written within a
    fraction of the back-off."""
    loop = asyncio.get_running_loop()
    async with treadmill(tmp_path) as device:
        driver = TrackmasterDriver(device.path, reconnect_max_s=2.0)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            device.close_port()
            await eventually(lambda: faulted(driver, "drive_link"), "drive_link fault")
            attempts = driver.connect_attempts
            # 0.05 + 0.1 + 0.2 + 0.4 + 0.8 s: the next wait is 1.6 s or more.
            await eventually(
                lambda: driver.connect_attempts >= attempts + 5, "the back-off grown", 10
            )
            device.open_port()
            mark = len(device.received)
            raised_at = loop.time()
            driver.emergency_stop()
            await device.wait_until(lambda: any(map(is_stop, device.received[mark:])))
            assert loop.time() - raised_at < POLL_S + LINE_DELAY_S + MARGIN_S


# --- repeated until standstill (SR-9) ---------------------------------------------------------


@pytest.mark.asyncio
async def test_sr9_stop_is_repeated_until_standstill_and_a_moving_belt_gets_a2_again(
    tmp_path: Path,
) -> None:
    """SR-9: stops answered B2 but not carried out (the treadmill acknowledges and runs on) are
    repeated every poll interval while the belt is reported moving; once it stops, the stops
    end. A belt then found moving while we want 0 (started from its own panel) gets A2 again."""
    async with treadmill(tmp_path) as device:
        driver = TrackmasterDriver(device.path)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            # Acknowledge the stops with B2 but carry none out: the belt runs on.
            before = device.received_commands(Command.STOP)
            device.ignore_stop = True
            ticks.target = 0.0
            await eventually(
                lambda: device.received_commands(Command.STOP) >= before + 4, "repeated A2"
            )
            assert device.running
            assert device.cds_trips == []  # accepted stops keep the link talking
            device.ignore_stop = False
            await device.wait_until(lambda: device.belt.speed_mph == 0.0 and not device.running)
            await eventually(lambda: not driver.stopping, "standstill confirmed")
            stops = device.received_commands(Command.STOP)
            polls = len(device.received)
            await device.wait_until(lambda: len(device.received) > polls + 10)
            assert device.received_commands(Command.STOP) == stops  # no stop after standstill

            # The belt is started from the treadmill's own panel while we want 0.
            device.press_start()
            await device.wait_until(lambda: device.received_commands(Command.STOP) > stops)
            await device.wait_until(lambda: device.belt.speed_mph == 0.0 and not device.running)


@pytest.mark.asyncio
async def test_sr13_back_to_back_emergency_stops_are_all_written_and_settle_cleanly(
    tmp_path: Path,
) -> None:
    """SR-13: three emergency stops in one breath each write A2 at once; the treadmill may
    answer one (the others replaced in its buffer) or all: either way the driver takes the
    answers as valid, confirms standstill and reports no fault."""
    async with treadmill(tmp_path) as device:
        driver = TrackmasterDriver(device.path)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            writes = driver.stop_writes
            for _ in range(3):
                driver.emergency_stop()
            ticks.target = 0.0
            assert driver.stop_writes == writes + 3
            await device.wait_until(lambda: device.belt.speed_mph == 0.0 and not device.running)
            await eventually(lambda: not driver.stopping, "the stop confirmed")
            assert healthy(driver)


@pytest.mark.asyncio
async def test_sr9_an_exception_in_the_driver_writes_a2_before_the_port_is_reopened(
    tmp_path: Path,
) -> None:
    """SR-9: an unexpected exception inside the driver's I/O task (here while taking a poll)
    writes A2 on the port still open, then reconnects; the belt is stopped by that stop."""
    sent: list[tuple[int, bytes]] = []
    async with treadmill(tmp_path) as device:
        driver = TrackmasterDriver(
            device.path, trace=lambda out, data: sent.append((driver.connect_attempts, data))
        )
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, device, ticks, 1.0)
            attempts = driver.connect_attempts
            take_poll = driver._take_poll
            mark = 0

            def crash(seq: int, token: int, state: BeltState, speed: StatusValue) -> None:
                nonlocal mark
                mark = len(sent)
                driver._take_poll = take_poll  # type: ignore[method-assign]
                raise RuntimeError("injected")

            driver._take_poll = crash  # type: ignore[method-assign]
            await device.wait_until(lambda: device.belt.speed_mph == 0.0)
            assert stopped_by_our_a2(device)
            await eventually(lambda: driver.connect_attempts > attempts, "the reconnect")
        # Written on the connection that failed, before the port was closed and reopened.
        assert (attempts, bytes([Command.STOP])) in sent[mark:]
