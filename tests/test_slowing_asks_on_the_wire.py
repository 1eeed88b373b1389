"""H-11, H-14 at the drivers: an ask that slows the belt (``command_speed(mph, slowing=True)``,
what the controller passes with a stop's decisions and a lower speed) never starts a belt that
is not running on the wire and never raises the speed the drive was last told.

Each driver runs against its simulated device over a real pty or socket. The device holds the
answer to a request the driver has written, so that the next move (a higher speed, the rest of a
start) is queued in the driver at a moment the test chooses; then comes the slowing ask, and the
answer is let go. What goes over the wire after that is compared with what the ask allows.
Nothing is timed: each test waits for a request on the wire that can only come after the step
under test (a status poll after it, a stop word, a lower speed).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.drive_helpers import ControlTicks, eventually
from tests.test_modbus_driver import (
    KINDS,
    RUN_REVERSE,
    STOP_REVERSE,
    Kind,
    simulated_drive,
)
from tests.test_modbus_driver import healthy as vfd_healthy
from tests.test_modbus_driver import make_driver as make_vfd_driver
from tests.test_modbus_driver import running as vfd_running
from tests.test_modbus_driver import start_belt as vfd_start_belt
from tests.test_trackmaster_driver import (
    A0,
    A2,
    A3,
    healthy,
    make_driver,
    running,
    speeds_sent,
    start_belt,
    treadmill,
)
from treadguard.drivers.modbus_vfd import ModbusVfdDriver
from treadguard.drivers.trackmaster import _READ_SET_SPEED, TrackmasterDriver
from treadguard.drivers.trackmaster_codec import StatusQuery, StatusRequest
from treadguard.simulator.modbus_device import RequestRecord, SimulatedVfd
from treadguard.simulator.trackmaster_device import TrackmasterDevice, TrackmasterModel

# The longest answer each driver waits for: the hold must not turn into a link fault.
TM_ACK_TIMEOUT_S = 0.3
VFD_REQUEST_TIMEOUT_S = 0.2
FREQUENCY = 0x2001  # the Delta map's frequency command
COMMAND_WORD = 0x2000


# --- the Trackmaster ---------------------------------------------------------------------------


def belt_polls(device: TrackmasterDevice, since: int) -> int:
    """``C0`` (belt state) requests the treadmill received after ``device.received[since]``."""
    return sum(
        1
        for r in device.received[since:]
        if isinstance(r.request, StatusQuery) and r.request.request is StatusRequest.BELT_STATE
    )


async def armed_at_standstill(driver: TrackmasterDriver) -> None:
    """The controller's idle: a healthy status seen, a stop asked, the connection's A2 done."""
    await eventually(lambda: healthy(driver) and not driver.stopping, "an idle, healthy link")
    driver.command_speed(0.0)


@pytest.mark.asyncio
async def test_h14_trackmaster_a_slowing_ask_during_a_start_stops_it_before_a0(
    tmp_path: Path,
) -> None:
    """The stop's first decision arrives while the start's A3 awaits its answer: the start
    becomes a stop, A0 never goes out, the belt never moves."""
    async with treadmill(tmp_path) as device:
        driver = make_driver(device, ack_timeout_s=TM_ACK_TIMEOUT_S)

        def hold_at_a3(data: bytes, _t: float) -> None:
            if A3 in data:
                device.hold_replies()

        async with running(driver):
            await armed_at_standstill(driver)
            device.on_rx = hold_at_a3
            driver.command_speed(0.2)  # the ramp's first ask: the start begins with A3 0002
            await device.wait_until(lambda: device.holding > 0)
            since = len(device.received)
            mark = len(device.rx)
            driver.command_speed(0.2, slowing=True)  # the stop's decision, held at 0.2
            device.on_rx = None
            device.release_replies()
            # The start is A3, C3, A0, C3 in one go; a status poll comes only after it.
            await device.wait_until(lambda: belt_polls(device, since) >= 2)
            assert A0 not in device.rx[mark:], "A0 (start) written after the slowing ask"
            assert not device.running
            assert device.belt.speed_mph == 0.0
            assert healthy(driver)


@pytest.mark.asyncio
async def test_h14_trackmaster_a_slowing_ask_while_a0_is_on_the_wire_stops_the_belt_next(
    tmp_path: Path,
) -> None:
    """The stop's first decision arrives while A0 awaits its answer: A2 is the very next
    request after the answer, not the set-speed read-back or a poll that finds the belt
    moving."""
    async with treadmill(tmp_path) as device:
        driver = make_driver(device, ack_timeout_s=TM_ACK_TIMEOUT_S)

        def hold_at_a0(data: bytes, _t: float) -> None:
            if A0 in data:
                device.hold_replies()

        async with running(driver):
            await armed_at_standstill(driver)
            device.on_rx = hold_at_a0
            driver.command_speed(0.2)  # the ramp's first ask: A3, C3, then A0
            await device.wait_until(lambda: device.holding > 0)
            assert device.rx[-1:] == bytes([A0])
            mark = len(device.rx)
            driver.command_speed(0.2, slowing=True)  # the stop's decision, held at 0.2
            device.on_rx = None
            device.release_replies()
            await device.wait_until(lambda: A2 in device.rx[mark:])
            assert device.rx[mark : mark + 1] == bytes([A2]), "A2 first after A0's answer"
            await device.wait_until(lambda: not device.running and device.belt.speed_mph == 0)
            await eventually(lambda: not driver.stopping, "the stop confirmed")
            assert A0 not in device.rx[mark:]


@pytest.mark.asyncio
async def test_h11_trackmaster_a_slowing_ask_drops_a_higher_speed_still_queued(
    tmp_path: Path,
) -> None:
    """A speed-up (1.1 mph) waits behind a request in flight when the stop's held decision asks
    for the same 1.1: the driver last wrote 1.0, so 1.1 never goes out; the ramp's lower asks
    still do."""
    async with treadmill(tmp_path) as device:
        driver = make_driver(device, ack_timeout_s=TM_ACK_TIMEOUT_S)
        async with running(driver):
            async with ControlTicks(driver) as ticks:
                await start_belt(driver, device, ticks, 1.0)
            await eventually(lambda: speeds_sent(device)[-1:] == [b"0010"], "1.0 mph written")
            device.hold_replies()
            await device.wait_until(lambda: device.holding > 0)  # a request awaits its answer
            since = len(device.received) - 1
            driver.command_speed(1.1)  # the ramp up: queued behind the request in flight
            driver.command_speed(1.1, slowing=True)  # the stop's decision, held at 1.1
            sent = len(speeds_sent(device))
            device.release_replies()
            # Polls and commands take turns: a second poll begins after the queued command.
            await device.wait_until(lambda: belt_polls(device, since) >= 2)
            assert speeds_sent(device)[sent:] == [], "a higher speed written after the stop"
            assert device.set_speed_mph == pytest.approx(1.0)

            driver.command_speed(0.9, slowing=True)  # the ramp down goes out
            await device.wait_until(lambda: device.set_speed_mph == pytest.approx(0.9))
            assert speeds_sent(device)[sent:] == [b"0009"]
            assert healthy(driver)


# --- the Modbus VFD ----------------------------------------------------------------------------


def writes_since(vfd: SimulatedVfd, since: int, address: int) -> list[int]:
    return [
        rec.values[0]
        for rec in list(vfd.request_log)[since:]
        if rec.values is not None and rec.address == address
    ]


async def vfd_armed_at_standstill(driver: ModbusVfdDriver) -> None:
    await eventually(lambda: vfd_healthy(driver) and not driver.stopping, "an idle, healthy link")
    driver.command_speed(0.0)


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_h14_vfd_a_slowing_ask_during_a_start_stops_it_before_the_run_word(
    kind: Kind,
) -> None:
    """The stop's first decision arrives while the start's frequency write awaits its answer:
    the run word never goes out; the stop word does."""
    async with simulated_drive(kind) as (vfd, server):
        driver = make_vfd_driver(server, request_timeout_s=VFD_REQUEST_TIMEOUT_S)

        def hold_at_frequency(request: RequestRecord, _ns: int) -> None:
            if request.address == FREQUENCY and request.values is not None:
                vfd.hold_answers()

        async with vfd_running(driver):
            await vfd_armed_at_standstill(driver)
            vfd.on_request = hold_at_frequency
            since = len(vfd.request_log)
            driver.command_speed(0.05)  # the ramp's first ask: the start writes 1.00 Hz
            await vfd.wait_until(lambda: vfd.holding > 0, 5)
            assert writes_since(vfd, since, FREQUENCY) == [100]
            driver.command_speed(0.05, slowing=True)  # the stop's decision, held
            vfd.on_request = None
            vfd.release_answers()
            await vfd.wait_until(lambda: writes_since(vfd, since, COMMAND_WORD) != [], 5)
            assert writes_since(vfd, since, COMMAND_WORD)[0] == STOP_REVERSE
            await eventually(lambda: not driver.stopping, "the stop confirmed")
            assert RUN_REVERSE not in writes_since(vfd, since, COMMAND_WORD)
            assert writes_since(vfd, since, FREQUENCY) == [100]
            assert not vfd.running
            assert vfd.belt.speed_mph == 0.0


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_h14_vfd_a_slowing_ask_while_the_run_word_is_on_the_wire_stops_it_next(
    kind: Kind,
) -> None:
    """The stop's first decision arrives while the run word awaits its answer: the stop word
    is the very next write after it."""
    async with simulated_drive(kind) as (vfd, server):
        driver = make_vfd_driver(server, request_timeout_s=VFD_REQUEST_TIMEOUT_S)

        def hold_at_run(word: int, _ns: int) -> None:
            if word == RUN_REVERSE:
                vfd.hold_answers()

        async with vfd_running(driver):
            await vfd_armed_at_standstill(driver)
            vfd.on_command_word = hold_at_run
            since = len(vfd.request_log)
            driver.command_speed(0.05)  # the ramp's first ask: 1.00 Hz, then the run word
            await vfd.wait_until(lambda: vfd.holding > 0, 5)
            assert writes_since(vfd, since, COMMAND_WORD) == [RUN_REVERSE]
            after_run = len(vfd.request_log)
            driver.command_speed(0.05, slowing=True)  # the stop's decision, held
            vfd.on_command_word = None
            vfd.release_answers()
            await vfd.wait_until(lambda: not vfd.running, 5)
            writes = [r for r in list(vfd.request_log)[after_run:] if r.values is not None]
            assert (writes[0].address, writes[0].values) == (COMMAND_WORD, (STOP_REVERSE,))
            await eventually(lambda: not driver.stopping, "the stop confirmed")
            assert writes_since(vfd, after_run, FREQUENCY) == []


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", KINDS)
async def test_h11_vfd_a_slowing_ask_drops_a_higher_frequency_still_queued(kind: Kind) -> None:
    """A speed-up (1.1 mph) waits behind a request in flight when the stop's held decision asks
    for the same 1.1: the drive was last told 1.0 mph (20 Hz), so 22 Hz never goes out; the
    ramp's lower asks still do."""
    async with simulated_drive(kind) as (vfd, server):
        driver = make_vfd_driver(server, request_timeout_s=VFD_REQUEST_TIMEOUT_S)
        async with vfd_running(driver):
            async with ControlTicks(driver) as ticks:
                await vfd_start_belt(driver, vfd, ticks)
            vfd.hold_answers()
            since = len(vfd.request_log)
            await vfd.wait_until(lambda: vfd.holding > 0, 5)  # one in flight
            driver.command_speed(1.1)  # the ramp up: queued behind the request in flight
            driver.command_speed(1.1, slowing=True)  # the stop's decision, held at 1.1
            vfd.release_answers()
            # Polls and commands take turns: a poll begun after the queued command's turn.
            polls = vfd.requests
            await vfd.wait_until(lambda: vfd.requests >= polls + 2, 5)
            assert writes_since(vfd, since, FREQUENCY) == [], "a higher speed after the stop"
            assert vfd.frequency_command == 2000

            driver.command_speed(0.9, slowing=True)  # the ramp down goes out
            await vfd.wait_until(lambda: vfd.frequency_command == 1800, 5)
            assert writes_since(vfd, since, FREQUENCY) == [1800]
            assert vfd.running


@pytest.mark.asyncio
async def test_h11_trackmaster_a_slowing_ask_during_the_read_back_after_a0_never_raises_the_belt(
    tmp_path: Path,
) -> None:
    """A model that acknowledges A3 while stopped without taking it starts at its minimum on
    A0 (0.5 mph); the driver reads the set speed back after A0 and would bring the belt up to
    the 1.0 asked with the next A3. The stop's held decision (1.0, slowing) arrives while that
    read-back awaits its answer: the belt runs at 0.5, so 1.0 must never go out after it."""
    model = TrackmasterModel(min_speed_mph=0.5, speed_while_stopped="ignore")
    async with treadmill(tmp_path, model) as device:
        driver = make_driver(device, ack_timeout_s=TM_ACK_TIMEOUT_S)
        seen_a0 = False

        def hold_at_read_back_after_a0(data: bytes, _t: float) -> None:
            nonlocal seen_a0
            if A0 in data:
                seen_a0 = True
            elif seen_a0 and _READ_SET_SPEED in data:
                device.hold_replies()

        async with running(driver):
            await armed_at_standstill(driver)
            device.on_rx = hold_at_read_back_after_a0
            driver.command_speed(1.0)  # a start at 1.0: A3 (ignored while stopped), C3, A0, C3
            await device.wait_until(lambda: device.holding > 0)
            assert device.running
            assert device.set_speed_mph == pytest.approx(0.5)
            sent = len(speeds_sent(device))
            since = len(device.received)
            driver.command_speed(1.0, slowing=True)  # the stop's decision, held at 1.0
            device.on_rx = None
            device.release_replies()
            await device.wait_until(lambda: belt_polls(device, since) >= 2)
            assert speeds_sent(device)[sent:] == [], "a higher speed written after the stop"
            assert device.set_speed_mph == pytest.approx(0.5)
