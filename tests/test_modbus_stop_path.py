"""The Modbus VFD driver's stop path under faults (SR-9, SR-11, SR-13).

The real driver against the simulated VFD on a real TCP socket, every request 20 ms late, with
the drive answering exceptions, ignoring writes, started from its keypad, or cut off. The belt
must stop in each case: by our stop word, or, when the drive refuses it, by the drive's own
communication time-out once the driver has fallen silent.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from tests.drive_helpers import ControlTicks, eventually, status_of
from tests.test_modbus_driver import (
    DEADMAN_S,
    RMAP,
    STOP_REVERSE,
    cancel_and_wait,
    faulted,
    healthy,
    make_driver,
    make_vfd,
    running,
    serve,
    start_belt,
)
from treadguard.drivers.modbus_vfd import ModbusVfdDriver
from treadguard.simulator.modbus_device import ModbusDeviceServer, RequestRecord, SimulatedVfd

LINE_DELAY_S = 0.02
STATUS_REGISTERS = {
    RMAP.error_code,
    RMAP.status_word,
    RMAP.frequency_readback,
    RMAP.output_frequency,
}
DEVICE_FAILURE = 4
WRITE_SINGLE_REGISTER = 6


def stop_words(vfd: SimulatedVfd, since: float = -1.0) -> list[RequestRecord]:
    """Every stop word the drive received after ``since``, applied or not."""
    return [
        r
        for r in vfd.request_log
        if r.t > since
        and r.function_code == WRITE_SINGLE_REGISTER
        and r.address == RMAP.command_word
        and r.values == (STOP_REVERSE,)
    ]


@contextlib.asynccontextmanager
async def delayed_drive() -> AsyncIterator[tuple[SimulatedVfd, ModbusDeviceServer]]:
    vfd = make_vfd()
    vfd.line_delay_s = LINE_DELAY_S
    server = await serve("tcp", vfd)
    try:
        yield vfd, server
    finally:
        await server.close()
        await vfd.close()


# --- exception replies ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sr9_sr13_emergency_stop_reaches_a_vfd_answering_status_reads_with_exceptions() -> (
    None
):
    """Status reads answered with exception 4: the stop word still goes out at once, is
    repeated, and the belt stops. (Before: each failed poll renewed a write hold-off, so no
    stop word was ever written and the polls kept the drive's time-out fed.)"""
    async with delayed_drive() as (vfd, server):
        driver = make_driver(server)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, vfd, ticks)
            vfd.answer_with_exception(DEVICE_FAILURE, writes=False, addresses=STATUS_REGISTERS)
            await eventually(lambda: faulted(driver, "drive_fault:"), "the exception reply")
            asked = time.monotonic()
            driver.emergency_stop()
            await vfd.wait_until(lambda: len(stop_words(vfd, asked)) >= 1, timeout_s=1.0)
            first = stop_words(vfd, asked)[0]
            assert first.applied
            # Repeated while no status can confirm standstill.
            await vfd.wait_until(lambda: len(stop_words(vfd, asked)) >= 5, timeout_s=3.0)
            await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=3.0)
            assert not vfd.running
            assert vfd.comm_timeout_trips == []  # our stop word stopped it, not the deadman
    # The very next frame: at most the request already in flight goes before the stop word.
    after = [r for r in vfd.request_log if r.t > asked]
    assert first in after[:2]


@pytest.mark.asyncio
async def test_sr9_a_vfd_refusing_the_stop_gets_silence_and_its_deadman_stops_the_belt() -> None:
    """Writes refused with exception 4 while reads answer: past the stop-confirm bound the
    driver falls silent, the drive's communication time-out trips and stops the belt. (Before:
    the driver polled it forever and the belt ran on.)"""
    async with delayed_drive() as (vfd, server):
        driver = make_driver(server)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, vfd, ticks)
            vfd.answer_with_exception(DEVICE_FAILURE, reads=False)
            asked = time.monotonic()
            driver.emergency_stop()
            await vfd.wait_until(lambda: vfd.comm_timeout_trips != [], timeout_s=3.0)
            [trip] = vfd.comm_timeout_trips
            assert trip.stopped
            await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=3.0)
            # Nothing fed the deadman past the bound: the last request came within the
            # stop-confirm bound (plus the request then in flight) of the stop being asked for.
            assert trip.last_request_t - asked < 0.3 + 2 * LINE_DELAY_S + 0.1
            assert stop_words(vfd, asked)  # it was asked, and refused
            assert all(not r.applied for r in stop_words(vfd, asked))
            # After the silence: one stop and one status read; the belt is at rest by now, so
            # the status confirms the stop and the polls resume.
            silent_from = trip.last_request_t
            await eventually(lambda: not driver.stopping, "standstill read after the silence")
            retry_at = next(r.t for r in vfd.request_log if r.t > silent_from)
            assert retry_at - silent_from >= DEADMAN_S
            assert not vfd.running
            assert driver.silences >= 1


# --- the stop is repeated until standstill ------------------------------------------------------


@pytest.mark.asyncio
async def test_sr9_stop_word_repeated_until_a_drive_ignoring_writes_obeys() -> None:
    """A drive on keypad command source answers the stop word but does not stop: the driver
    repeats it while the link is up, and the belt stops once the drive obeys. (Before: the stop
    word was written once.)"""
    async with delayed_drive() as (vfd, server):
        driver = make_driver(server)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, vfd, ticks)
            vfd.ignore_writes(for_s=0.8)
            asked = time.monotonic()
            ticks.target = 0.0  # a controlled stop
            await eventually(lambda: time.monotonic() > asked + 0.5, "time ignoring the stop")
            assert vfd.running  # the drive ignored the stop so far
            await vfd.wait_until(lambda: not vfd.running, timeout_s=3.0)
            await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=3.0)
            assert len(stop_words(vfd, asked)) >= 4
            assert any(r.applied for r in stop_words(vfd, asked))
            # Standstill read back: the repetition ends.
            await eventually(lambda: not driver.stopping, "the stop confirmed by standstill")
            settled = time.monotonic()
            await eventually(lambda: time.monotonic() > settled + 0.5, "half a second more")
            assert stop_words(vfd, settled + LINE_DELAY_S * 3) == []


@pytest.mark.asyncio
async def test_sr9_a_vfd_accepting_every_stop_but_never_stopping_gets_silence() -> None:
    """A drive that answers every stop word and never applies it (keypad command source, for
    good): past the standstill bound (4 s) the driver falls silent, so that the drive's own
    communication time-out trips and stops the belt. (Before: the accepted stop words were
    repeated for ever and fed that time-out; the belt ran on.)"""
    async with delayed_drive() as (vfd, server):
        driver = make_driver(server)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, vfd, ticks)
            vfd.ignore_writes()
            asked = time.monotonic()
            driver.emergency_stop()
            await vfd.wait_until(lambda: vfd.comm_timeout_trips != [], timeout_s=8.0)
            [trip] = vfd.comm_timeout_trips
            assert trip.stopped
            await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=3.0)
            # Stop words until the standstill bound, each accepted, none applied; then silence.
            words = stop_words(vfd, asked)
            assert len(words) >= 10
            assert not any(r.applied for r in words)
            assert trip.last_request_t - asked < 4.0 + 2 * LINE_DELAY_S + 0.2
            assert driver.silences >= 1


@pytest.mark.asyncio
async def test_sr9_a_belt_started_from_the_keypad_while_we_want_zero_gets_the_stop() -> None:
    async with delayed_drive() as (vfd, server):
        driver = make_driver(server)
        async with running(driver), ControlTicks(driver) as ticks:
            ticks.target = 0.0
            await eventually(lambda: healthy(driver), "a healthy status")
            await eventually(lambda: status_of(driver).speed_mph == 0.0, "standstill read")
            started = time.monotonic()
            vfd.start_from_keypad(1.0)
            await vfd.wait_until(lambda: len(stop_words(vfd, started)) >= 1, timeout_s=2.0)
            await vfd.wait_until(lambda: not vfd.running, timeout_s=2.0)
            await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=3.0)
            assert status_of(driver).fault is None


# --- every way out writes the stop word (SR-9, SR-11) ---------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("estop_first", [True, False])
async def test_sr9_sr11_a_cancelled_driver_writes_the_stop_word_on_its_way_out(
    estop_first: bool,
) -> None:
    """The shutdown bound path (emergency_stop(), then cancel at once) and a plain cancel
    mid-session: the stop word reaches the drive before run() ends, and the belt stops by it,
    not by the drive's deadman."""
    async with delayed_drive() as (vfd, server):
        driver = make_driver(server)
        task = asyncio.create_task(driver.run())
        try:
            async with ControlTicks(driver) as ticks:
                await start_belt(driver, vfd, ticks)
            asked = time.monotonic()
            if estop_first:
                driver.emergency_stop()
            task.cancel()
            async with asyncio.timeout(2):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            assert task.cancelled()
            # Written before run() ended; it reaches the drive after the line delay.
            await vfd.wait_until(lambda: stop_words(vfd, asked) != [], timeout_s=1.0)
            [stop] = stop_words(vfd, asked)
            assert stop.applied
            await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=3.0)
            assert vfd.comm_timeout_trips == []
        finally:
            await cancel_and_wait(task)


@pytest.mark.asyncio
async def test_sr9_sr11_a_crashed_sibling_task_the_stop_word_still_reaches_the_drive() -> None:
    """The daemon's TaskGroup: the control task fails, says emergency_stop() on its way out,
    and the group cancels the driver in the same moment."""

    crashed: list[float] = []

    async def control(driver: ModbusVfdDriver, vfd: SimulatedVfd) -> None:
        try:
            async with ControlTicks(driver) as ticks:
                await start_belt(driver, vfd, ticks)
            crashed.append(time.monotonic())
            raise RuntimeError("the control loop crashed")
        except BaseException:
            driver.emergency_stop()
            raise

    async def daemon(driver: ModbusVfdDriver, vfd: SimulatedVfd) -> None:
        async with asyncio.timeout(10), asyncio.TaskGroup() as tg:
            tg.create_task(driver.run())
            tg.create_task(control(driver, vfd))

    async with delayed_drive() as (vfd, server):
        driver = make_driver(server)
        with pytest.raises(ExceptionGroup):
            await daemon(driver, vfd)
        [crash] = crashed
        # Written before run() ended; it reaches the drive after the line delay.
        await vfd.wait_until(lambda: stop_words(vfd, crash) != [], timeout_s=1.0)
        assert all(stop.applied for stop in stop_words(vfd, crash))
        await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=3.0)
        assert vfd.comm_timeout_trips == []


@pytest.mark.asyncio
async def test_sr9_a_reconnect_backoff_does_not_delay_a_stop() -> None:
    """A 3 s reconnect back-off: an emergency stop asked for during it connects at once."""
    vfd = make_vfd()
    vfd.line_delay_s = LINE_DELAY_S
    server = await serve("tcp", vfd)
    port = server.port
    try:
        driver = make_driver(server, reconnect_initial_s=3.0, reconnect_max_s=3.0)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, vfd, ticks)
            await server.close()
            await eventually(lambda: faulted(driver, "drive_link:"), "the link fault")
            attempts = driver.connect_attempts
            server = await serve("tcp", vfd, port=port or 0)
            asked = time.monotonic()
            driver.emergency_stop()
            await vfd.wait_until(lambda: len(stop_words(vfd, asked)) >= 1, timeout_s=5.0)
            assert stop_words(vfd, asked)[0].t - asked < 2.0  # well inside the 3 s back-off
            assert driver.connect_attempts == attempts + 1
    finally:
        await server.close()
        await vfd.close()


# --- the simulated drive's fault injection itself -----------------------------------------------


@pytest.mark.asyncio
async def test_simulated_vfd_exceptions_for_a_while_then_normal_answers() -> None:
    from pymodbus.client import AsyncModbusTcpClient

    async with delayed_drive() as (vfd, server):
        vfd.answer_with_exception(2, writes=False, addresses={RMAP.output_frequency}, for_s=0.3)
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port or 0, timeout=1)
        await client.connect()
        try:
            began = time.monotonic()
            bad = await client.read_holding_registers(RMAP.error_code, count=4, device_id=1)
            assert time.monotonic() - began >= LINE_DELAY_S
            assert bad.isError()
            assert bad.exception_code == 2
            ok = await client.read_holding_registers(RMAP.error_code, count=1, device_id=1)
            assert not ok.isError()  # a register the rule does not name
            await eventually(lambda: time.monotonic() > began + 0.35, "the rule's end")
            again = await client.read_holding_registers(RMAP.error_code, count=4, device_id=1)
            assert not again.isError()
            vfd.ignore_writes()
            written = await client.write_register(RMAP.command_word, 0b10_0010, device_id=1)
            assert not written.isError()
            assert not vfd.running  # answered, not applied
            assert not vfd.request_log[-1].applied
        finally:
            client.close()


@pytest.mark.asyncio
async def test_sr9_an_exception_in_the_driver_writes_the_stop_word_before_reconnecting() -> None:
    """An unexpected exception inside the driver's I/O task (here while taking a poll): the stop
    word goes out on the connection still open, before it is closed and a new one made."""
    sent: list[tuple[int, bytes]] = []

    def trace(sending: bool, frame: bytes) -> bytes:
        if sending:  # with the connection it went out on
            sent.append((driver.connect_attempts, frame))
        return frame

    async with delayed_drive() as (vfd, server):
        driver = make_driver(server, trace_packet=trace)
        async with running(driver), ControlTicks(driver) as ticks:
            await start_belt(driver, vfd, ticks)
            attempts = driver.connect_attempts
            take_poll = driver._take_poll
            mark = 0

            def crash(error_code: int, output_frequency: int) -> None:
                nonlocal mark
                mark = len(sent)
                driver._take_poll = take_poll  # type: ignore[method-assign]
                raise RuntimeError("injected")

            driver._take_poll = crash  # type: ignore[method-assign]
            await eventually(lambda: driver.connect_attempts > attempts, "the reconnect")
            await vfd.wait_until(lambda: vfd.belt.speed_mph == 0.0, timeout_s=3.0)
    # TCP frame: 7-byte MBAP header, then the PDU "write single register 0x2000 = stop word".
    stop_pdu = bytes([WRITE_SINGLE_REGISTER, 0x20, 0x00, 0x00, STOP_REVERSE])
    assert (attempts, stop_pdu) in [(n, frame[7:]) for n, frame in sent[mark:]]
