"""A drive fault is cleared only by a status after it that reports none (SR-6, SR-3, SR-9):
the controller and the safety core over the real Modbus driver, against the simulated VFD on a
real TCP socket. The drive's error code register is set, the fault latches, a reset is refused
while the drive still reports the code, then accepted once it no longer does, and a new start
moves the belt again."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator

import pytest

from tests.drive_helpers import eventually
from tests.test_modbus_driver import ROOT, make_driver, make_vfd, running, serve
from treadguard.config.loading import load_programs
from treadguard.controller.control import Controller
from treadguard.controller.loop import ScaledClock
from treadguard.safety.core import SafetyCore
from treadguard.safety.decisions import Accepted, Cause, Refused, State
from treadguard.safety.inputs import FallReading, GripReading, Hand, Heartbeat, Reset, StartSession
from treadguard.safety.limits import STANDSTILL_MPH, SafetyLimits

PROGRAMS = load_programs(ROOT / "config" / "programs")


@contextlib.asynccontextmanager
async def controlled(controller: Controller, clock: ScaledClock) -> AsyncIterator[None]:
    """The daemon's loop in small: every 50 ms a tick, a user holding on, a tablet present."""

    async def loop() -> None:
        while True:
            t = clock.time()
            for hand in Hand:
                controller.submit(GripReading(t, hand, True))
            controller.submit(FallReading(t, False))
            controller.submit(Heartbeat(t))
            controller.tick()
            await asyncio.sleep(0.05)  # the tick period, not a synchronisation

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.asyncio
async def test_sr6_sr3_reset_refused_while_the_vfd_reports_its_error_code() -> None:
    clock = ScaledClock(asyncio.get_running_loop())
    vfd = make_vfd()
    server = await serve("tcp", vfd)
    driver = make_driver(server, clock=clock.time)
    core = SafetyCore(
        SafetyLimits(),
        PROGRAMS,
        default_program="first_session",
        t0=clock.time(),
        commissioned_until=math.inf,
    )
    controller = Controller(core, driver, clock)

    def start() -> None:
        reply = controller.submit(StartSession(clock.time(), "pat")).reply
        assert isinstance(reply, Accepted), reply

    def reset() -> Accepted | Refused | None:
        return controller.submit(Reset(clock.time())).reply

    def at_standstill() -> bool:
        return core.snapshot().belt_mph <= STANDSTILL_MPH

    try:
        async with running(driver), controlled(controller, clock):
            await eventually(lambda: core.state is State.IDLE and at_standstill(), "standstill")
            start()
            await vfd.wait_until(lambda: vfd.running and vfd.belt.speed_mph > 0.5, timeout_s=10)

            vfd.inject_error(7)
            await eventually(lambda: core.state is State.FAULT, "the fault latched")
            latch = core.latch
            assert latch is not None
            assert latch.cause is Cause.DRIVE_FAULT
            await eventually(at_standstill, "the belt at standstill")
            # Fresh statuses keep coming, at standstill, each still reporting the code.
            t_fault = core.now
            await eventually(lambda: core.now > t_fault + 0.5, "half a second of statuses")
            refusal = reset()
            assert isinstance(refusal, Refused), refusal
            assert "fault" in refusal.message
            assert vfd.error_code == 7

            vfd.error_code = 0  # the drive's fault is cleared at the drive
            await eventually(lambda: isinstance(reset(), Accepted), "the reset accepted")
            assert core.state is State.IDLE
            start()
            await vfd.wait_until(lambda: vfd.running and vfd.belt.speed_mph > 0.5, timeout_s=10)
            # mypy keeps the narrowing of the assert above; the state has moved on since
            assert core.state is State.RUNNING  # type: ignore[comparison-overlap]
    finally:
        await server.close()
        await vfd.close()
