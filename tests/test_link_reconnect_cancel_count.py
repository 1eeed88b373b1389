"""The links reconnect, and the drive's last stop word is bounded, whatever the task's
cancellation count (controller/aio.py).

On Python 3.11 a ``TaskGroup`` whose child fails while the group is being left leaves its
task's ``cancelling()`` count raised, and on 3.11.0-3.11.2 (Debian 12's Python, the board's) a
later ``asyncio.timeout`` in that task then ends in ``CancelledError`` instead of
``TimeoutError``: the tablet link's back-off ended its worker "cancelled", and the daemon ran on,
deaf. These tests run on any 3.11 by giving ``asyncio.timeout`` the 3.11.2 check (a timeout is a
timeout only when no cancellation at all is pending), and first show that this reproduces the
defect, so that they cannot pass for want of it.
"""

from __future__ import annotations

import asyncio
import asyncio.timeouts
import contextlib
import time
from typing import Any

import pytest
import structlog

from tests.drive_helpers import ControlTicks
from tests.mosquitto import WAIT_S, Broker, body, tablet, text_is, untimed
from tests.test_modbus_driver import cancel_and_wait, make_driver, start_belt
from tests.test_modbus_stop_path import delayed_drive
from tests.test_mqtt_link import RUNNING, World, make_link, send
from treadguard.controller.aio import in_own_task, wait_until_set
from treadguard.controller.daemon import LinkEnded, _until_cancelled
from treadguard.controller.mqtt_link import LinkTuning, TabletLink


@pytest.fixture
def timeouts_as_in_3_11_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """``asyncio.timeout`` as Python 3.11.0-3.11.2 has it: it counts the cancellations pending
    on its task from zero, not from those already pending when it was entered (3.11.3)."""
    enter = asyncio.timeouts.Timeout.__aenter__

    async def enter_as_in_3_11_2(self: asyncio.timeouts.Timeout) -> asyncio.timeouts.Timeout:
        entered = await enter(self)
        vars(self)["_cancelling"] = 0
        return entered

    monkeypatch.setattr(asyncio.timeouts.Timeout, "__aenter__", enter_as_in_3_11_2)


class _Lost(Exception):
    pass


async def _fail_soon() -> None:
    await asyncio.sleep(0.01)
    raise _Lost


async def _connection() -> None:
    # The body does not wait: the child fails while the group is being left.
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_fail_soon())
        tg.create_task(asyncio.sleep(60))


async def _old_reconnect_loop(stop: asyncio.Event) -> int:
    """The shape the links had: a failed group, then a back-off by asyncio.timeout."""
    tries = 0
    while tries < 3:
        with contextlib.suppress(_Lost), contextlib.suppress(ExceptionGroup):
            await _connection()
        tries += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.01):
                await stop.wait()
    return tries


async def _new_reconnect_loop(stop: asyncio.Event) -> int:
    """The shape they have now: the group in a task of its own, the back-off by wait_until_set."""
    tries = 0
    while tries < 3:
        with contextlib.suppress(ExceptionGroup):
            await in_own_task(_connection(), name="connection")
        tries += 1
        # A timeout after it, in the same task, must still be a timeout.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.01):
                await stop.wait()
        assert not await wait_until_set(stop, 0.01)
    return tries


@pytest.mark.asyncio
@pytest.mark.usefixtures("timeouts_as_in_3_11_2")
async def test_the_emulated_3_11_2_ends_the_old_loop_cancelled_and_not_the_new_one() -> None:
    stop = asyncio.Event()
    old = asyncio.create_task(_old_reconnect_loop(stop))
    await asyncio.wait({old})
    assert old.cancelled()  # the defect, as the board had it
    new = asyncio.create_task(_new_reconnect_loop(stop))
    await asyncio.wait({new})
    assert not new.cancelled()
    assert new.result() == 3
    assert new.cancelling() == 0


@pytest.mark.asyncio
async def test_wait_until_set_is_set_at_once_and_ends_cancelled_when_cancelled() -> None:
    stop = asyncio.Event()
    stop.set()
    assert await wait_until_set(stop, 60.0)
    waiting = asyncio.create_task(wait_until_set(asyncio.Event(), 60.0))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # A cancellation of the caller reaches the task it runs.
    started, inner_cancelled = asyncio.Event(), asyncio.Event()

    async def inner() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            inner_cancelled.set()
            raise

    outer = asyncio.create_task(in_own_task(inner(), name="inner"))
    await started.wait()
    outer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outer
    assert inner_cancelled.is_set()


# A reconnect after a broker restart: the link's longest back-off, then the usual wait.
RECONNECT_S = LinkTuning().backoff_max_s + WAIT_S


@pytest.mark.asyncio
@pytest.mark.usefixtures("timeouts_as_in_3_11_2")
async def test_link_reconnects_after_broker_restarts_with_3_11_2_timeouts(broker: Broker) -> None:
    tm, world = "tm-3112", World(snap=RUNNING)
    p = f"treadmill/{tm}"
    async with make_link(broker, world, tm) as link:
        async with tablet(broker, f"{p}/availability") as tab:
            await tab.next(f"{p}/availability", text_is("online"))
        for restart in (1, 2):
            broker.kill()
            await asyncio.to_thread(broker.start)
            async with tablet(broker, f"{p}/availability", f"{p}/reply") as tab:
                # The link's back-off may have reached its cap while the broker came back (a
                # loaded machine restarts it slowly): online within one more back-off.
                await tab.next(f"{p}/availability", text_is("online"), within=RECONNECT_S)
                await send(tab, tm, {"id": f"after-{restart}", "type": "heartbeat"})
                reply = untimed(body(await tab.next(f"{p}/reply")))
                assert reply == {"id": f"after-{restart}", "ok": True}
            assert link.connections == 1 + restart
        assert link.worker_restarts == 0  # reconnected by its own loop, not replaced


@pytest.mark.asyncio
async def test_a_link_worker_that_ends_without_a_stop_is_logged_and_replaced(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    tm, world = "tm-worker", World()
    p = f"treadmill/{tm}"
    connect = TabletLink._connect_forever
    ends: list[str] = []

    async def ends_once(self: TabletLink) -> None:
        if not ends:
            ends.append("cancelled")
            raise asyncio.CancelledError  # as the back-off did on 3.11.2
        await connect(self)

    monkeypatch.setattr(TabletLink, "_connect_forever", ends_once)
    with structlog.testing.capture_logs() as logs:
        async with tablet(broker, f"{p}/availability") as tab, make_link(broker, world, tm) as link:
            await tab.next(f"{p}/availability", text_is("online"))
            assert link.worker_restarts == 1
    ended = [e for e in logs if e["event"] == "mqtt_worker_ended"]
    assert [(e["log_level"], e["how"]) for e in ended] == [("error", "cancelled")]


async def _returns() -> None:
    return None


async def _ends_cancelled() -> None:
    raise asyncio.CancelledError


@pytest.mark.asyncio
async def test_the_daemon_fails_loudly_when_a_link_ends_and_stops_when_it_is_cancelled() -> None:
    with pytest.raises(LinkEnded, match="returned"):
        await _until_cancelled(_returns(), "mqtt")
    ended = asyncio.create_task(_until_cancelled(_ends_cancelled(), "mqtt"))
    await asyncio.wait({ended})
    assert isinstance(ended.exception(), LinkEnded)
    running: asyncio.Task[Any] = asyncio.create_task(_until_cancelled(asyncio.sleep(60), "mqtt"))
    await asyncio.sleep(0)
    running.cancel()
    await asyncio.wait({running})
    assert running.cancelled()  # the daemon's own stop stays a stop


@pytest.mark.asyncio
@pytest.mark.usefixtures("timeouts_as_in_3_11_2")
async def test_the_drive_stop_word_on_the_way_out_is_bounded_and_recorded_with_3_11_2_timeouts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The VFD driver's last stop word runs while its cancellation is pending: a drive that never
    answers it must end in a time-out, logged, not in a CancelledError that skips the record."""
    async with delayed_drive() as (vfd, server):
        driver = make_driver(server, request_timeout_s=0.1)
        task = asyncio.create_task(driver.run())
        try:
            async with ControlTicks(driver) as ticks:
                await start_belt(driver, vfd, ticks)
            # Connected (a loaded machine may have had a poll miss its 0.1 s and the link made
            # again meanwhile): the next stop word goes through this client.
            deadline = time.monotonic() + 5.0
            while driver._client is None:  # bounded by the deadline
                assert time.monotonic() < deadline, "the driver never connected again"
                await asyncio.sleep(0.02)  # a poll of the driver's link, not a synchronisation
            client = driver._client

            async def never_answers(*_args: object, **_kwargs: object) -> None:
                await asyncio.Event().wait()

            client.write_register = never_answers  # type: ignore[method-assign,assignment]
            task.cancel()
            await asyncio.wait({task}, timeout=5.0)
            assert task.cancelled()
            assert "stop word on the way out: TimeoutError" in caplog.text
        finally:
            await cancel_and_wait(task)
