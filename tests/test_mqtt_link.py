"""The tablet link against a real Mosquitto on a free port (docs/tablet-contract.md; SR-12
tablet link, SR-15 bad input): replies, retained and duplicate commands, availability and the
Will, a broker killed and restarted, and the state published at least every 500 ms while the
belt moves.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, MutableMapping
from contextlib import suppress
from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import structlog.testing

from tests.mosquitto import WAIT_S, Broker, Login, Tablet, body, tablet, text_is, untimed
from treadguard.contract.mqtt import default_prefix
from treadguard.controller.mqtt_link import (
    DEFAULT_TUNING,
    REFUSALS_LOGGED_PER_S,
    LinkHooks,
    LinkTuning,
    TabletLink,
)
from treadguard.controller.mqtt_settings import BrokerSettings, TlsSettings
from treadguard.safety.core import SessionView, Snapshot
from treadguard.safety.decisions import (
    ACCEPTED,
    Event,
    EventType,
    RefusalCode,
    Refused,
    Reply,
    State,
)
from treadguard.safety.inputs import EStop, Hand, Heartbeat, TabletCommand

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- helpers

IDLE = Snapshot(
    state=State.IDLE,
    commanded_mph=0.0,
    target_mph=0.0,
    belt_mph=0.0,
    session=None,
    grip={Hand.LEFT: True, Hand.RIGHT: True},
    fall=False,
    stale=(),
    latched=None,
    countdown_s=None,
)
RUNNING = replace(
    IDLE,
    state=State.RUNNING,
    commanded_mph=0.8,
    target_mph=0.8,
    belt_mph=0.8,
    session=SessionView("1", "u7", "reverse_walking", 10.0, 300.0, 290.0, None, None),
)


@dataclass
class World:
    """What the controller would be: records commands, answers them, holds the snapshot."""

    snap: Snapshot = IDLE
    commands: list[TabletCommand] = field(default_factory=list)
    reply: Reply = ACCEPTED

    def execute(self, command: TabletCommand) -> Reply:
        self.commands.append(command)
        return self.reply

    def snapshot(self) -> Snapshot:
        return self.snap


def make_link(
    broker: Broker,
    world: World,
    tm: str,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: TlsSettings | None = None,
    buffer: int = DEFAULT_TUNING.buffer,
    before_publish: Callable[[], None] | None = None,
    journal_marks: Callable[[], tuple[int, float]] | None = None,
) -> TabletLink:
    return TabletLink(
        tm,
        BrokerSettings(
            host="127.0.0.1",
            port=broker.port,
            prefix=default_prefix(tm),
            username=username,
            password=password,
            tls=tls,
        ),
        LinkHooks(
            execute=world.execute,
            snapshot=world.snapshot,
            now=time.monotonic,
            to_unix=lambda t: t + 1_764_000_000.0,
            before_publish=before_publish,
            journal_marks=journal_marks,
        ),
        LinkTuning(backoff_max_s=0.5, buffer=buffer),
    )


async def send(tab: Tablet, tm: str, obj: object, *, retain: bool = False) -> None:
    await tab.publish(f"treadmill/{tm}/cmd", json.dumps(obj).encode(), retain=retain)


# ----------------------------------------------------------------------------- tests


@pytest.mark.asyncio
async def test_sr15_command_reply_and_event_over_a_real_broker(broker: Broker) -> None:
    tm, world = "tm-reply", World()
    p = f"treadmill/{tm}"
    async with (
        tablet(broker, f"{p}/reply", f"{p}/availability", f"{p}/events") as tab,
        make_link(broker, world, tm) as link,
    ):
        online = await tab.next(f"{p}/availability", text_is("online"))
        assert online.retain
        await send(tab, tm, {"id": "h1", "type": "heartbeat"})
        reply = await tab.next(f"{p}/reply")
        assert untimed(body(reply)) == {"id": "h1", "ok": True}
        assert not reply.retain
        assert reply.qos == 1
        assert len(world.commands) == 1
        assert isinstance(world.commands[0], Heartbeat)

        await tab.publish(f"{p}/cmd", b"{not json")
        bad = body(await tab.next(f"{p}/reply"))
        assert isinstance(bad, dict)
        assert bad["id"] is None
        assert bad["ok"] is False
        assert bad["error"]["code"] == "invalid_json"

        link.on_event(Event(EventType.RESET, t=5.0, fields={"cleared": "fall"}))
        event = await tab.next(f"{p}/events")
        got = body(event)
        assert isinstance(got, dict)
        assert isinstance(got.pop("event_id"), str)
        assert got == {"type": "reset", "ts": 1_764_000_005.0, "cleared": "fall"}
        assert event.qos == 1
        assert not event.retain
    assert len(world.commands) == 1


@pytest.mark.asyncio
async def test_sr15_retained_command_is_refused_not_run(broker: Broker) -> None:
    tm, world = "tm-retained", World()
    p = f"treadmill/{tm}"
    async with tablet(broker, f"{p}/reply", f"{p}/availability") as tab:
        # One retained command waiting on the broker before the link connects...
        await send(tab, tm, {"id": "old", "type": "estop"}, retain=True)
        async with make_link(broker, world, tm):
            first = body(await tab.next(f"{p}/reply"))
            assert first["id"] == "old"
            assert first["error"]["code"] == "not_allowed"
            assert "retained" in first["error"]["message"]
            await tab.next(f"{p}/availability", text_is("online"))
            # ...and one published retained while the link listens.
            await send(tab, tm, {"id": "live", "type": "estop"}, retain=True)
            live = body(await tab.next(f"{p}/reply"))
            assert live["id"] == "live"
            assert live["error"]["code"] == "not_allowed"
            # Clearing the retained command is not a command: no reply; the next reply is
            # the one to the heartbeat that follows.
            await tab.publish(f"{p}/cmd", b"", retain=True)
            await send(tab, tm, {"id": "hb", "type": "heartbeat"})
            assert untimed(body(await tab.next(f"{p}/reply"))) == {"id": "hb", "ok": True}
    assert [type(c) for c in world.commands] == [Heartbeat]


@pytest.mark.asyncio
async def test_sr15_duplicate_id_gets_the_original_reply_and_runs_once(broker: Broker) -> None:
    tm, world = "tm-dup", World()
    p = f"treadmill/{tm}"
    async with (
        tablet(broker, f"{p}/reply", f"{p}/availability") as tab,
        make_link(broker, world, tm),
    ):
        await tab.next(f"{p}/availability", text_is("online"))
        await send(tab, tm, {"id": "same", "type": "heartbeat"})
        await send(tab, tm, {"id": "same", "type": "heartbeat"})
        first = body(await tab.next(f"{p}/reply"))
        second = body(await tab.next(f"{p}/reply"))
    assert untimed(first) == untimed(second) == {"id": "same", "ok": True}
    assert len(world.commands) == 1


CHILD = """
import asyncio, os, sys, time
sys.path.insert(0, sys.argv[3])
from treadguard.controller.mqtt_link import TabletLink
from treadguard.contract.mqtt import default_prefix
from treadguard.controller.mqtt_link import LinkHooks, TabletLink
from treadguard.controller.mqtt_settings import BrokerSettings
from treadguard.safety.core import Snapshot
from treadguard.safety.decisions import ACCEPTED, State
from treadguard.safety.inputs import Hand

SNAP = Snapshot(State.IDLE, 0.0, 0.0, 0.0, None, {Hand.LEFT: True, Hand.RIGHT: True}, False,
                (), None, None)

async def main() -> None:
    broker = BrokerSettings(host="127.0.0.1", port=int(sys.argv[2]),
                            prefix=default_prefix(sys.argv[1]),
                            username=os.environ.get("TEST_MQTT_USERNAME"),
                            password=os.environ.get("TEST_MQTT_PASSWORD"), tls=None)
    hooks = LinkHooks(execute=lambda c: ACCEPTED, snapshot=lambda: SNAP,
                      now=time.monotonic, to_unix=lambda t: t)
    async with TabletLink(sys.argv[1], broker, hooks):
        await asyncio.Event().wait()

asyncio.run(main())
"""


def spawn_link_process(
    tm: str, port: int, log_path: Path, login: Login | None = None
) -> subprocess.Popen[bytes]:
    """A TabletLink in a process of its own, to be killed; ``login``: its username/password."""
    account = {}
    if login is not None:
        account = {"TEST_MQTT_USERNAME": login["username"], "TEST_MQTT_PASSWORD": login["password"]}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD, tm, str(port), str(ROOT)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **account},
        )


@pytest.mark.asyncio
async def test_sr12_availability_online_retained_and_offline_by_will_on_kill(
    broker: Broker, tmp_path: Path
) -> None:
    tm = "tm-will"
    p = f"treadmill/{tm}"
    child = spawn_link_process(tm, broker.port, tmp_path / "child.log")
    try:
        async with tablet(broker, f"{p}/availability") as tab:
            await tab.next(f"{p}/availability", text_is("online"))
        # A tablet that connects later finds "online" retained.
        async with tablet(broker, f"{p}/availability") as tab:
            online = await tab.next(f"{p}/availability")
            assert online.payload == b"online"
            assert online.retain
            child.send_signal(signal.SIGKILL)  # no clean shutdown: the broker sends the Will
            offline = await tab.next(f"{p}/availability", text_is("offline"))
            assert offline.retain
        async with tablet(broker, f"{p}/availability") as tab:
            assert (await tab.next(f"{p}/availability")).payload == b"offline"
    finally:
        child.kill()
        child.wait(timeout=WAIT_S)


@pytest.mark.asyncio
async def test_clean_shutdown_publishes_offline_explicitly(broker: Broker) -> None:
    tm, world = "tm-clean", World()
    p = f"treadmill/{tm}"
    async with tablet(broker, f"{p}/availability") as tab:
        async with make_link(broker, world, tm):
            await tab.next(f"{p}/availability", text_is("online"))
        # A clean DISCONNECT discards the Will: "offline" must have been said explicitly.
        offline = await tab.next(f"{p}/availability", text_is("offline"))
        assert offline.retain


@pytest.mark.asyncio
async def test_sr12_broker_killed_and_restarted_link_reconnects_by_itself(
    broker: Broker,
) -> None:
    tm, world = "tm-restart", World(snap=RUNNING)
    p = f"treadmill/{tm}"
    async with make_link(broker, world, tm) as link:
        async with tablet(broker, f"{p}/availability", f"{p}/state") as tab:
            await tab.next(f"{p}/availability", text_is("online"))
            await tab.next(f"{p}/state")
        assert link.connections == 1
        for restart in (1, 2):
            broker.kill()  # no persistence: the retained messages die with it
            await asyncio.to_thread(broker.start)
            async with tablet(broker, f"{p}/availability", f"{p}/state") as tab:
                online = await tab.next(f"{p}/availability", text_is("online"))
                state = body(await tab.next(f"{p}/state"))
                assert state["state"] == "running"
                assert link.connections == 1 + restart
                assert online.retain
                # And it works: commands are answered on the new connection.
                await tab.subscribe(f"{p}/reply")
                await send(tab, tm, {"id": f"after-{restart}", "type": "heartbeat"})
                reply = body(await tab.next(f"{p}/reply"))
                assert untimed(reply) == {"id": f"after-{restart}", "ok": True}


@pytest.mark.asyncio
async def test_state_retained_and_published_at_least_every_500ms_while_moving(
    broker: Broker,
) -> None:
    tm, world = "tm-state", World(snap=RUNNING)
    p = f"treadmill/{tm}"
    async with make_link(broker, world, tm) as link:
        async with tablet(broker, f"{p}/state") as tab:
            arrivals: list[float] = []
            for _ in range(8):
                message = await tab.next(f"{p}/state")
                arrivals.append(time.monotonic())
                assert message.retain
                state = body(message)
                assert state["state"] == "running"
                assert state["speed_mph"] == 0.8
            gaps = [b - a for a, b in pairwise(arrivals[1:])]
            assert max(gaps) <= 0.5, gaps

            # A change goes out at once, not at the next period.
            world.snap = IDLE
            link.state_changed()
            idle = await tab.next(f"{p}/state", lambda m: body(m)["state"] == "idle")
            assert idle.retain
        # A tablet that connects later gets the newest state, retained.
        async with tablet(broker, f"{p}/state") as tab:
            message = await tab.next(f"{p}/state")
            assert message.retain
            assert body(message)["state"] == "idle"


@pytest.mark.asyncio
async def test_cancelling_run_publishes_offline(broker: Broker) -> None:
    tm, world = "tm-cancel", World()
    p = f"treadmill/{tm}"
    link = make_link(broker, world, tm)
    async with tablet(broker, f"{p}/availability") as tab:
        task = asyncio.create_task(link.run(), name="link")
        await tab.next(f"{p}/availability", text_is("online"))
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        assert (await tab.next(f"{p}/availability", text_is("offline"))).retain


@pytest.mark.asyncio
async def test_buffers_are_bounded_and_never_block_the_controller(broker: Broker) -> None:
    tm, world = "tm-flood", World()
    broker.kill()  # nowhere to publish: everything must stay in bounded buffers
    async with make_link(broker, world, tm, buffer=16) as link:
        for n in range(1000):
            link.on_event(Event(EventType.GRIP_WARNING, t=float(n), fields={"hand": "left"}))
            link.state_changed()
        assert link.dropped_events == 1000 - 16
        assert not link.connected


@pytest.mark.asyncio
async def test_cancelling_run_ends_it_even_while_it_publishes(broker: Broker) -> None:
    """A cancellation that lands while a publication completes is swallowed by Python 3.11's
    wait_for inside aiomqtt; run() must end all the same, every time."""
    tm, world = "tm-cancel-busy", World(snap=RUNNING)
    p = f"treadmill/{tm}"
    async with tablet(broker, f"{p}/availability") as tab:
        for attempt in range(20):
            link = make_link(broker, world, tm)
            task = asyncio.create_task(link.run(), name=f"link-{attempt}")
            await tab.next(f"{p}/availability", text_is("online"))
            for n in range(50):  # keep the outbox publishing when the cancellation lands
                link.on_event(Event(EventType.GRIP_WARNING, t=float(n), fields={"hand": "left"}))
            await asyncio.sleep(0.001 * attempt)  # a different moment each time, not a sync
            task.cancel()
            async with asyncio.timeout(WAIT_S):
                with suppress(asyncio.CancelledError):
                    await task
            assert task.done()
            await tab.next(f"{p}/availability", text_is("offline"))


@pytest.mark.asyncio
async def test_sr13_sr15_a_flood_of_commands_leaves_none_unanswered(broker: Broker) -> None:
    """Commands are handled as they are read, never queued: with an outbox of 16, a burst of
    900 commands with estops and stops in it. Every stop and estop is run and answered ok;
    every other command is answered, with its own reply or ``rate_limited`` (then not run)."""
    tm, world = "tm-burst", World()
    p = f"treadmill/{tm}"
    async with (
        tablet(broker, f"{p}/reply", f"{p}/availability") as tab,
        make_link(broker, world, tm, buffer=16) as link,
    ):
        await tab.next(f"{p}/availability", text_is("online"))
        burst = [{"id": f"f{n}", "type": "heartbeat"} for n in range(900)]
        for n in range(0, 900, 100):
            burst.insert(n + 50, {"id": f"halt-{n}", "type": "estop" if n % 200 else "stop"})
        await asyncio.gather(*(send(tab, tm, command) for command in burst))
        replies: dict[str, dict[str, object]] = {}
        async with asyncio.timeout(WAIT_S * 4):
            while len(replies) < len(burst):
                reply = body(await tab.next(f"{p}/reply"))
                assert isinstance(reply, dict)
                # Refusals waiting together are coalesced: "ids" lists what one answers.
                for command_id in reply.get("ids", [reply["id"]]):
                    assert command_id not in replies, reply  # one answer per command
                    replies[command_id] = reply
    limited = [r for r in replies.values() if not r["ok"]]
    assert all(r["error"]["code"] == "rate_limited" for r in limited)  # type: ignore[index]
    assert all(replies[c["id"]]["ok"] for c in burst if c["type"] in ("stop", "estop"))
    assert limited, "the flood did fill the outbox"
    assert link.rate_limited == len(limited)
    assert len(world.commands) == len(burst) - len(limited)  # a refused command is not run
    assert [type(c) for c in world.commands].count(EStop) == 4
    assert link.dropped_replies == 0


@pytest.mark.asyncio
async def test_sr14_nothing_goes_out_before_a_sync_has_covered_its_records(
    broker: Broker,
) -> None:
    """journal_marks (records written, records on disk): an event, a reply and the state
    queued while the disk is behind wait for it; the link is told when a sync ends
    (state_changed) and they go out, in order. Meanwhile the link runs on: an event queued
    before the records fell behind goes out at once."""
    tm, world = "tm-sync", World()
    p = f"treadmill/{tm}"
    marks = [0, 0]  # written, durable
    link = make_link(broker, world, tm, journal_marks=lambda: (marks[0], marks[1]))
    async with (
        tablet(broker, f"{p}/state", f"{p}/events", f"{p}/reply") as tab,
        link,
    ):
        await tab.next(f"{p}/state")
        link.on_event(Event(EventType.RESET, t=1.0, fields={"n": 1}))
        assert body(await tab.next(f"{p}/events"))["n"] == 1  # on disk: goes out
        marks[0] = 1  # the estop's record, written, not yet synced
        link.on_event(Event(EventType.ESTOP, t=2.0, fields={"cause": "grip_lost"}))
        world.snap = replace(IDLE, state=State.ESTOP)
        link.state_changed()
        await send(tab, tm, {"id": "r1", "type": "heartbeat"})
        # A window, not a synchronisation: within it nothing of the above may arrive.
        for topic in ("events", "state", "reply"):
            with pytest.raises(TimeoutError):
                await tab.next(f"{p}/{topic}", within=0.3)
        assert world.commands  # the command itself ran at once
        marks[1] = 1  # the sync ends
        link.state_changed()
        assert body(await tab.next(f"{p}/events"))["type"] == "estop"
        assert body(await tab.next(f"{p}/state"))["state"] == "estop"
        assert untimed(body(await tab.next(f"{p}/reply"))) == {"id": "r1", "ok": True}


@pytest.mark.asyncio
async def test_sr14_states_go_out_while_records_keep_coming_faster_than_syncs(
    broker: Broker,
) -> None:
    """Records written all the time (a client sending refused commands, each journaled) and
    each sync covering only those before it: the state never waits for all of them, only for
    those it shows; each sync lets out the newest state it covers."""
    tm, world = "tm-starve", World()
    p = f"treadmill/{tm}"
    marks = [1, 0]  # written, durable: always one record behind
    link = make_link(broker, world, tm, journal_marks=lambda: (marks[0], marks[1]))

    async def syncs() -> None:
        while True:
            await asyncio.sleep(0.05)  # the disk's pace, not a synchronisation
            marks[1], marks[0] = marks[0], marks[0] + 1
            world.snap = replace(RUNNING, belt_mph=0.8 + marks[1] / 1000)
            link.state_changed()

    async with tablet(broker, f"{p}/state") as tab, link:
        pacing = asyncio.create_task(syncs())
        try:
            speeds: set[float] = set()
            async with asyncio.timeout(5.0):
                while len(speeds) < 5:
                    speeds.add(body(await tab.next(f"{p}/state"))["speed_mph"])
        finally:
            pacing.cancel()
        assert len(speeds) >= 5


@pytest.mark.asyncio
async def test_sr14_a_reply_never_overtakes_the_state_its_command_caused_while_syncs_lag(
    broker: Broker,
) -> None:
    """Records keep coming and each sync is one behind: the reply to an estop still comes
    after a state that shows it (the state goes out first, as without a journal)."""
    tm = "tm-overtake"
    p = f"treadmill/{tm}"
    marks = [1, 0]  # written, durable

    class Stopping(World):
        def execute(self, command: TabletCommand) -> Reply:
            marks[0] += 1  # its record
            self.snap = replace(IDLE, state=State.ESTOP)
            return super().execute(command)

    world = Stopping(snap=RUNNING)
    link = make_link(broker, world, tm, journal_marks=lambda: (marks[0], marks[1]))

    async def syncs() -> None:
        while True:
            await asyncio.sleep(0.05)  # the disk's pace, not a synchronisation
            marks[1], marks[0] = marks[0], marks[0] + 1
            link.state_changed()

    async with (
        tablet(broker, f"{p}/availability") as tab,
        aiomqtt.Client("127.0.0.1", broker.port) as watcher,
        link,
    ):
        await tab.next(f"{p}/availability", text_is("online"))
        # One subscriber for both: messages come in the order they were published.
        await watcher.subscribe(f"{p}/state", qos=1)
        await watcher.subscribe(f"{p}/reply", qos=1)
        pacing = asyncio.create_task(syncs())
        try:
            await send(tab, tm, {"id": "e1", "type": "estop"})
            seen: list[str] = []
            async with asyncio.timeout(5.0):
                async for message in watcher.messages:
                    got = body(message)
                    assert isinstance(got, dict)
                    if str(message.topic).endswith("/reply") and got.get("id") == "e1":
                        break
                    if str(message.topic).endswith("/state"):
                        seen.append(str(got["state"]))
        finally:
            pacing.cancel()
        assert "estop" in seen, seen


@pytest.mark.asyncio
async def test_sr14_the_journal_commits_before_a_state_goes_out(broker: Broker) -> None:
    """before_publish (the journal's commit) runs before the state is read and published: a
    state the tablet has, like a latched stop, is already on disk."""
    tm, world = "tm-commit", World()
    p = f"treadmill/{tm}"
    committed: list[State] = []
    link = make_link(broker, world, tm, before_publish=lambda: committed.append(world.snap.state))
    async with tablet(broker, f"{p}/state") as tab, link:
        await tab.next(f"{p}/state")
        world.snap = RUNNING
        link.state_changed()
        running = await tab.next(f"{p}/state", lambda m: body(m)["state"] == "running")
        assert running.retain
    assert State.RUNNING in committed


async def _logged_within(
    logs: list[MutableMapping[str, Any]], event: str, within: float
) -> list[MutableMapping[str, Any]]:
    """The captured lines of ``event``, once there is one, polled for up to ``within`` s."""
    async with asyncio.timeout(within):
        while True:
            lines = [line for line in logs if line["event"] == event]
            if lines:
                return lines
            await asyncio.sleep(0.05)  # polling a list the link appends to


@pytest.mark.asyncio
async def test_sr15_a_flood_that_ends_inside_its_second_still_has_its_number_logged(
    broker: Broker,
) -> None:
    """Refusals past the log's budget of a second are told as a number once that second is
    over, even when nothing comes after them to carry it: a flood that stops inside its second
    is not left half told."""
    tm = "tm-log-tail"
    world = World(reply=Refused(RefusalCode.OUT_OF_RANGE, "2.5 mph is above the limit"))
    p = f"treadmill/{tm}"
    burst = REFUSALS_LOGGED_PER_S + 7
    with structlog.testing.capture_logs() as logs:
        async with (
            tablet(broker, f"{p}/reply", f"{p}/availability") as tab,
            make_link(broker, world, tm) as link,
        ):
            await tab.next(f"{p}/availability", text_is("online"))
            await asyncio.gather(
                *(
                    send(tab, tm, {"id": f"r{n}", "type": "set_speed", "mph": 2.5})
                    for n in range(burst)
                )
            )
            answered: set[str] = set()
            async with asyncio.timeout(WAIT_S):
                while len(answered) < burst:
                    reply = body(await tab.next(f"{p}/reply"))
                    assert isinstance(reply, dict)
                    answered.update(reply.get("ids", [reply["id"]]))
            told = await _logged_within(logs, "mqtt_commands_refused_not_logged", 3.0)
            assert link.rate_limited == 0  # each was refused by the core, not for the rate
    one_by_one = [line for line in logs if line["event"] == "mqtt_command_refused"]
    assert len(one_by_one) + sum(int(str(line["count"])) for line in told) == burst
    assert len(one_by_one) <= REFUSALS_LOGGED_PER_S * len(told)


@pytest.mark.asyncio
async def test_sr15_handler_failures_past_the_first_of_a_second_are_told_as_a_number(
    broker: Broker,
) -> None:
    """A handler that fails on every command: its traceback once a second, and the number of
    failures not logged once that second is over, even if the failures stop inside it."""
    tm = "tm-fail-tail"
    world = World()
    p = f"treadmill/{tm}"
    burst = 6

    def broken(command: TabletCommand) -> Reply:
        raise RuntimeError("the controller is broken")

    world.execute = broken  # type: ignore[method-assign]
    with structlog.testing.capture_logs() as logs:
        async with (
            tablet(broker, f"{p}/reply", f"{p}/availability") as tab,
            make_link(broker, world, tm),
        ):
            await tab.next(f"{p}/availability", text_is("online"))
            await asyncio.gather(
                *(send(tab, tm, {"id": f"b{n}", "type": "heartbeat"}) for n in range(burst))
            )
            for _ in range(burst):
                reply = body(await tab.next(f"{p}/reply"))
                assert isinstance(reply, dict)
                assert reply["error"]["code"] == "internal_error"
            told = await _logged_within(logs, "handler_failures_not_logged", 3.0)
    with_trace = [line for line in logs if line["event"] == "command_failed"]
    assert with_trace
    assert all("RuntimeError" in str(line["traceback"]) for line in with_trace)
    assert all(line["failed"] == "command_failed" for line in told)
    assert len(with_trace) + sum(int(str(line["count"])) for line in told) == burst
