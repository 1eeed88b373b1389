"""What the daemon publishes across broker outages (SR-14) and under floods (SR-15).

The link and the real daemon against a real Mosquitto that is stopped and started again on the
same port; the tablets keep a persistent MQTT session (a fixed client id, no clean start, a
session expiry), so the broker holds QoS 1 events for them while they are away. The broker
here saves its sessions when it stops (``persistence``), as a broker restarted on purpose does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, closing, suppress
from pathlib import Path
from typing import Any

import pytest

from tests.clinician import clinician, sensor_user
from tests.daemon_process import DaemonProcess, daemon_config
from tests.mosquitto import (
    WAIT_S,
    Broker,
    Tablet,
    body,
    have_mosquitto,
    shipped_queue_limits,
    tablet,
    text_is,
)
from tests.test_mqtt_link import World, make_link
from treadguard.safety.decisions import Event, EventType

SESSION_EXPIRY_S = 600


@pytest.fixture
def persistent_broker(tmp_path: Path) -> Iterator[Broker]:
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed (scripts/test installs it)")
    b = Broker(tmp_path, persistence=True)
    b.start()
    try:
        yield b
    finally:
        b.kill()


def session_tablet(
    broker: Broker, client_id: str, *topics: str
) -> contextlib.AbstractAsyncContextManager[Tablet]:
    """A tablet with a persistent session: the broker keeps its subscriptions and holds QoS 1
    messages for it while it is away. ``topics`` are subscribed to (once is enough)."""
    return tablet(broker, *topics, session=(client_id, SESSION_EXPIRY_S))


async def until(condition: Callable[[], bool], within: float = WAIT_S) -> None:
    """Wait, bounded, for a condition of this process's own objects."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - a condition of another process, or of paho's
            await asyncio.sleep(0.01)  # a poll period, not a synchronisation


async def collect(
    tab: Tablet, topic: str, last: Callable[[dict[str, Any]], bool], within: float = WAIT_S
) -> list[dict[str, Any]]:
    """Every message on ``topic``, in order, up to and including the first that is ``last``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        while not seen or not last(seen[-1]):
            message = body(await tab.next(topic))
            assert isinstance(message, dict)
            seen.append(message)
    return seen


# ----------------------------------------------------------------------------- the link


@pytest.mark.asyncio
async def test_sr14_events_raised_offline_go_out_once_each_oldest_first_bounded_and_counted(
    persistent_broker: Broker,
) -> None:
    """While the broker is away the outbox keeps at most ``buffer`` events: past that a new
    one is dropped, but an estop takes the place of the oldest other one; every drop is
    counted in the state. After the restart each kept event goes out once, oldest first."""
    broker, tm, world = persistent_broker, "tm-offline", World()
    p = f"treadmill/{tm}"
    topics = (f"{p}/events", f"{p}/state", f"{p}/availability")
    async with make_link(broker, world, tm, buffer=4) as link:
        async with session_tablet(broker, "tablet-offline", *topics) as tab:
            await tab.next(f"{p}/availability", text_is("online"))
            link.on_event(Event(EventType.RESET, t=1.0))
            first = body(await tab.next(f"{p}/events", lambda m: body(m)["type"] == "reset"))
            assert isinstance(first, dict)
            await until(lambda: link.published == 1)  # acknowledged: never sent again
            broker.stop()
            await until(lambda: not link.connected)
        for n in range(5):  # g4 finds the outbox full
            link.on_event(Event(EventType.GRIP_WARNING, t=10.0 + n, fields={"n": n}))
        link.on_event(Event(EventType.ESTOP, t=20.0, fields={"cause": "fall"}))  # g0 goes
        link.on_event(Event(EventType.GRIP_WARNING, t=21.0, fields={"n": 5}))
        assert link.dropped_events == 3
        await asyncio.to_thread(broker.start)
        async with session_tablet(broker, "tablet-offline") as tab:  # no new subscription
            await tab.next(f"{p}/state", lambda m: body(m)["events_dropped"] == 3)
            # The four kept, acknowledged: the outbox has room again (raised while it is still
            # full, the marker below would itself be dropped, as designed, and never arrive).
            await until(lambda: link.published == 5)
            link.on_event(Event(EventType.RESET, t=30.0))  # the last: nothing comes after it
            arrived = await collect(tab, f"{p}/events", lambda e: e["ts"] == 1_764_000_030.0)
    # The broker may hand the first reset over again (QoS 1: the tablet's PUBACK for it can be
    # lost with the broker's stop); a tablet knows it by its event_id and shows it once.
    arrived = [e for e in arrived if e["event_id"] != first["event_id"]]
    ids = [e.pop("event_id") for e in arrived]
    assert len(set(ids)) == len(ids)  # each event has its own id
    assert arrived == [
        {"type": "grip_warning", "ts": 1_764_000_011.0, "n": 1},
        {"type": "grip_warning", "ts": 1_764_000_012.0, "n": 2},
        {"type": "grip_warning", "ts": 1_764_000_013.0, "n": 3},
        {"type": "estop", "ts": 1_764_000_020.0, "cause": "fall"},
        {"type": "reset", "ts": 1_764_000_030.0},
    ]
    assert link.published == 6


# ----------------------------------------------------------------------------- the daemon


def journal_count(path: Path, event_type: str) -> int:
    if not path.exists():
        return 0
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)) as db:
        row = db.execute("SELECT COUNT(*) FROM events WHERE type = ?", (event_type,)).fetchone()
    return int(row[0])


ROUNDS = 5  # the defect showed in 1 run of 3: five in a row do not all miss it by chance


@pytest.mark.asyncio
async def test_sr14_daemon_estop_raised_while_the_broker_is_down_reaches_a_tablet_once(
    persistent_broker: Broker, tmp_path: Path
) -> None:
    """The real daemon, its sensors over MQTT. A session starts, the broker goes down, the
    sensors' silence makes an emergency stop (sensor_stale) while it is down; the broker comes
    back. A tablet that was connected before, with a persistent session, gets that estop event
    exactly once - five times in a row."""
    broker, tm = persistent_broker, "tm-outage"
    p = f"treadmill/{tm}"
    journal = tmp_path / f"journal-{tm}.sqlite"
    daemon = DaemonProcess(
        daemon_config(tmp_path, broker.port, treadmill_id=tm, sensors="mqtt"), tmp_path / "d.log"
    )
    daemon.start()
    tablet_id = f"tablet-{uuid.uuid4().hex[:8]}"
    try:
        for round_ in range(ROUNDS + 1):
            async with (
                session_tablet(broker, tablet_id, f"{p}/events") as tab,
                sensor_user(broker, tm),
                clinician(broker, tm) as doc,
            ):
                if True:
                    await doc.until(lambda s: s["stale"] == [], within=10.0)
                    if round_ > 0:  # the estop raised while the broker was down, once
                        await doc.reset_when_allowed()
                        events = await collect(tab, f"{p}/events", lambda e: e["type"] == "reset")
                        estops = [e for e in events if e["type"] == "estop"]
                        assert len(estops) == 1, (round_, events)
                        assert estops[0]["cause"] == "sensor_stale"
                    if round_ == ROUNDS:
                        break
                    await doc.until(lambda s: s["state"] == "idle", within=10.0)
                    # Running: a sensor going silent during the countdown only aborts the start.
                    await doc.start_running(f"u-{round_}")
                    estops_before = journal_count(journal, "estop")
                    broker.stop()  # the tablet's session is saved with the broker

                    def one_more_estop(before: int = estops_before) -> bool:
                        return journal_count(journal, "estop") > before

                    await until(one_more_estop)
            await asyncio.to_thread(broker.start)
        assert daemon.alive()
    finally:
        daemon.stop()


FLOOD = 6000  # commands, from one client, as fast as it can publish them
FLOOD_ANSWERED_S = 20.0  # the bound on the whole flood being answered, on a loaded machine


@pytest.mark.asyncio
async def test_sr15_daemon_flood_every_command_answered_stop_and_estop_never_refused(
    tmp_path: Path,
) -> None:
    """The real daemon, one client publishing 6,000 commands at once with a stop or an estop
    every 200. Every stop and estop gets its own reply, never ``rate_limited``; every other
    command gets its reply or a ``rate_limited`` refusal (refusals waiting together come in
    one reply that lists their ``ids``); nothing is left unanswered."""
    tm = "tm-flood-all"
    p = f"treadmill/{tm}"
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed (scripts/test installs it)")
    # The shipped broker's queue limits (config/mosquitto/treadguard.conf): with them, no
    # command is dropped on its way to the daemon, and no reply on its way back to a client
    # that publishes 6,000 commands before it reads a reply.
    broker = Broker(tmp_path, "allow_anonymous true\n" + shipped_queue_limits())
    broker.start()
    daemon = DaemonProcess(
        daemon_config(tmp_path, broker.port, treadmill_id=tm), tmp_path / "d.log"
    )
    daemon.start()
    try:
        await flood(broker, p)
    finally:
        daemon.stop()
        broker.kill()


async def flood(broker: Broker, p: str) -> None:
    commands: list[dict[str, Any]] = []
    for n in range(FLOOD):
        kind = ("stop", "estop")[n // 200 % 2] if n % 200 == 100 else "heartbeat"
        commands.append({"id": f"c{n}", "type": kind} if n % 7 else {"id": f"c{n}", "type": "?"})
    answers: dict[str, dict[str, Any]] = {}
    async with session_tablet(broker, f"flood-{uuid.uuid4().hex[:8]}", f"{p}/reply") as tab:
        async with tablet_online(broker, p):
            pass
        paho = tab.client._client  # publish without waiting for each PUBACK, as a flood does
        for command in commands:
            assert paho.publish(f"{p}/cmd", json.dumps(command).encode(), qos=1).rc == 0
        with suppress(TimeoutError):
            async with asyncio.timeout(FLOOD_ANSWERED_S):
                while len(answers) < FLOOD:
                    reply = body(await tab.next(f"{p}/reply", within=FLOOD_ANSWERED_S))
                    assert isinstance(reply, dict)
                    for command_id in reply.get("ids", [reply["id"]]):
                        assert command_id not in answers, reply  # one answer per command
                        answers[command_id] = reply
    unanswered = [c["id"] for c in commands if c["id"] not in answers]
    assert not unanswered, (len(unanswered), unanswered[:20])
    for command in commands:
        reply = answers[command["id"]]
        if command["type"] in ("stop", "estop"):
            assert "ids" not in reply
            assert reply["ok"] or reply["error"]["code"] != "rate_limited", reply
    assert answers["c300"]["ok"] is True  # an estop is carried out every time (SR-12)
    assert any(not r["ok"] and r["error"]["code"] == "rate_limited" for r in answers.values())


@asynccontextmanager
async def tablet_online(broker: Broker, p: str) -> AsyncIterator[None]:
    """Until the daemon has said "online" (it is subscribed to its commands by then)."""
    async with session_tablet(broker, f"probe-{uuid.uuid4().hex[:8]}", f"{p}/availability") as t:
        await t.next(f"{p}/availability", text_is("online"), within=10.0)
        yield
