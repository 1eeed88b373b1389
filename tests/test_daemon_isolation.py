"""The command path of the real daemon over a real Mosquitto: what no command, however strange
or however often sent, may do (SR-12, SR-14, SR-15, SR-16, SR-11).

- a start whose user name holds a lone surrogate is answered, the link stays up and an estop
  sent right after it is carried out, idle and mid-session (SR-15, SR-12, SR-13);
- a failure nobody foresaw while handling a command is answered ``internal_error``, journaled
  and logged, and the daemon carries on (SR-15);
- an estop whose id was used before stops the belt again (SR-12);
- a wall clock stepped an hour either way mid-session loses no stamped heartbeat (SR-16);
- a flood of refused commands is coalesced in the journal and stops no session (SR-14);
- commands that arrive during a shutdown are answered (SR-11).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.clinician import (
    STANDSTILL_MPH,
    Clinician,
    clinician,
    ok,
    refused,
)
from tests.daemon_process import ROOT, DaemonProcess
from tests.mosquitto import Broker, body
from tests.periodic import pause, periodic
from treadguard.controller.wallclock import STEP_FILE_ENV

SURROGATES = ["\ud800", "u\udfff-17", "\udc00\udbffx"]  # lone, lone, a pair reversed


def journal_rows(broker: Broker, tm: str, kind: str) -> list[dict[str, Any]]:
    path = broker.workdir / f"journal-{tm}.sqlite"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT fields FROM events WHERE type = ? ORDER BY id", (kind,))
        return [json.loads(r[0]) for r in rows.fetchall()]


async def estop_is_carried_out(doc: Clinician) -> None:
    ok(await doc.command("estop"))
    assert (await doc.event("estop"))["cause"] == "remote_estop"
    await doc.state(lambda s: s["state"] == "estop", within=5.0)


def assert_never_reconnected(daemon: DaemonProcess, doc: Clinician) -> None:
    log = daemon.log_text()
    assert log.count('"mqtt_connected"') == 1, log[-3000:]
    assert "mqtt_disconnected" not in log
    assert not [m for m in doc.tab.drain(f"{doc.p}/availability") if m.payload == b"offline"]


# ----------------------------------------------------------------------------- SR-15


@pytest.mark.asyncio
async def test_sr15_sr12_a_user_name_with_a_lone_surrogate_is_refused_and_the_link_stays_up(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """SR-15: a start whose user holds a lone surrogate (valid JSON) is answered
    ``invalid_command``; the daemon does not lose its broker connection, and an estop sent
    right behind it is carried out (SR-12, SR-13). Idle, and again mid-session."""
    tm = "tm-surrogate"
    daemon = make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        for user in SURROGATES:
            message = refused(await doc.command("start_session", user=user), "invalid_command")
            assert "user" in message
        await estop_is_carried_out(doc)
        await doc.reset_when_allowed()

        await doc.start_running("u-31", program="first_session")
        bad = [uuid.uuid4().hex for _ in SURROGATES]
        for command_id, user in zip(bad, SURROGATES, strict=True):
            payload = {"id": command_id, "type": "start_session", "user": user}
            await doc.raw(json.dumps(payload).encode())
        await doc.raw(json.dumps({"id": "right-behind", "type": "estop"}).encode())
        for command_id in bad:
            refused(await doc.reply_to(command_id), "invalid_command")
        ok(await doc.reply_to("right-behind"))
        stopped = await doc.state(
            lambda s: s["state"] == "estop" and s["speed_mph"] <= STANDSTILL_MPH, within=5.0
        )
        assert stopped["latched"]["cause"] == "remote_estop"
        assert_never_reconnected(daemon, doc)
    assert daemon.alive()
    refusals = journal_rows(broker, tm, "command_refused")
    assert any(r["code"] == "invalid_command" for r in refusals)


SITECUSTOMIZE = '''
"""Test-only, in the daemon's process: the journal's history lookup fails, for the user
"boom", with an exception nobody wrote a handler for."""
from treadguard.controller import journal

_has_history = journal.Journal.has_history


def has_history(self, user, *args, **kwargs):
    if user == "boom":
        raise LookupError("an unforeseen failure in the journal")
    return _has_history(self, user, *args, **kwargs)


journal.Journal.has_history = has_history
_record = journal.Journal.record


def record(self, event, ts):
    if event.fields.get("user") == "boom-record":
        raise LookupError("an unforeseen failure while recording")
    return _record(self, event, ts)


journal.Journal.record = record
'''


def plant(tmp_path: Path) -> dict[str, str]:
    """The environment that puts SITECUSTOMIZE into the daemon's process."""
    where = tmp_path / "plant"
    where.mkdir()
    (where / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return {"PYTHONPATH": f"{where}:{ROOT}"}


@pytest.mark.asyncio
async def test_sr15_an_unforeseen_failure_while_handling_a_command_is_answered_internal_error(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    """SR-15: a failure nobody wrote a handler for (the journal raising an unexpected type,
    planted in the daemon's process through ``sitecustomize``) is answered ``internal_error``,
    journaled and logged; the link stays up, the loop ticks on, a session still runs and an
    estop still stops it."""
    tm = "tm-unforeseen"
    daemon = make_daemon(treadmill_id=tm, env=plant(tmp_path))
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        ids = [uuid.uuid4().hex for _ in range(3)]
        for command_id in ids:
            payload = {"id": command_id, "type": "start_session", "user": "boom"}
            await doc.raw(json.dumps(payload).encode())
        for command_id in ids:
            message = refused(await doc.reply_to(command_id), "internal_error")
            assert "LookupError" in message
        event = await doc.event("command_refused")
        assert (event["command"], event["code"]) == ("start_session", "internal_error")
        await doc.start_running("u-32", program="first_session")
        await estop_is_carried_out(doc)
        assert_never_reconnected(daemon, doc)
    log = daemon.log_text()
    # Logged once a second at most; the others of that second as their number, once it is over.
    assert log.count('"event": "command_failed"') == 1
    assert '"count": 2, "total": 3, "event": "handler_failures_not_logged"' in log
    assert "LookupError: an unforeseen failure in the journal" in log  # with its traceback
    assert daemon.alive()
    refusals = journal_rows(broker, tm, "command_refused")
    assert next(r["code"] for r in refusals if r["command"] == "start_session") == "internal_error"


@pytest.mark.asyncio
async def test_sr14_sr15_an_unforeseen_failure_of_the_journal_listener_is_a_journal_fault(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    """SR-14, SR-15: the journal's listener failing in a way nobody foresaw (planted as above)
    neither raises into the controller nor lets the session run unrecorded: it is a journal
    fault, latched, and the belt does not run; the link and the daemon carry on."""
    tm = "tm-unforeseen-record"
    daemon = make_daemon(treadmill_id=tm, env=plant(tmp_path))
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        await doc.command("start_session", user="boom-record")
        state = await doc.state(lambda s: s["latched"] is not None, within=5.0)
        assert (state["latched"]["kind"], state["latched"]["cause"]) == ("fault", "journal")
        message = refused(await doc.command("start_session", user="u-39"), "latched")
        assert "journal" in message
        still = await doc.until(lambda s: s["speed_mph"] <= STANDSTILL_MPH, within=5.0)
        assert still["state"] == "fault"
        assert_never_reconnected(daemon, doc)
    assert "LookupError: an unforeseen failure while recording" in daemon.log_text()
    assert daemon.alive()


# ----------------------------------------------------------------------------- SR-12


@pytest.mark.asyncio
async def test_sr12_an_estop_with_a_reused_id_stops_the_belt_again(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """SR-12 (amended): a tablet whose E-STOP button always sends the same id. Pressed, reset,
    a new session, pressed again: the second press stops the belt too."""
    tm = "tm-fixed-id"
    make_daemon(treadmill_id=tm)
    press = json.dumps({"id": "tablet-estop", "type": "estop"}).encode()
    async with clinician(broker, tm) as doc:
        for user in ("u-33", "u-34"):
            await doc.start_running(user, program="first_session")
            await doc.raw(press)
            ok(await doc.reply_to("tablet-estop"))
            assert (await doc.event("estop"))["cause"] == "remote_estop"
            stopped = await doc.state(
                lambda s: s["state"] == "estop" and s["speed_mph"] <= STANDSTILL_MPH, within=5.0
            )
            assert stopped["latched"]["cause"] == "remote_estop"
            await doc.reset_when_allowed()
            await doc.state(lambda s: s["state"] == "idle", within=5.0)


@pytest.mark.asyncio
async def test_sr12_an_estop_with_a_field_this_version_does_not_know_stops_the_belt(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """SR-12 (amended): a dashboard's estop carrying a field of its own, and one with no id at
    all, mid-session: each stops the belt (both were refused invalid_command, and the belt ran
    on)."""
    tm = "tm-estop-extra"
    make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc:
        for user, press in (
            ("u-40", {"id": "e-extra", "type": "estop", "reason": "patient fell"}),
            ("u-41", {"type": "estop"}),
        ):
            await doc.start_running(user, program="first_session")
            await doc.raw(json.dumps(press).encode())
            ok(await doc.reply_to(press.get("id")))
            assert (await doc.event("estop"))["cause"] == "remote_estop"
            await doc.state(
                lambda s: s["state"] == "estop" and s["speed_mph"] <= STANDSTILL_MPH, within=5.0
            )
            await doc.reset_when_allowed()
            await doc.state(lambda s: s["state"] == "idle", within=5.0)


# ----------------------------------------------------------------------------- SR-16


class StampedTablet:
    """A tablet that stamps its heartbeats in the daemon's clock, estimated from the state's
    ts as the tablet page does (tablet/tablet.js)."""

    def __init__(self, doc: Clinician, offset: float) -> None:
        self.doc = doc
        self.offset = offset  # daemon's ts minus our wall clock
        self.refused: list[dict[str, Any]] = []

    async def heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            command_id = uuid.uuid4().hex
            stamp = time.time() + self.offset
            await self.doc.raw(
                json.dumps({"id": command_id, "type": "heartbeat", "ts": stamp}).encode()
            )
            reply = await self.doc.reply_to(command_id)
            if not reply["ok"]:
                self.refused.append(reply)
            await pause(stop, 0.5)  # the heartbeat period, not a synchronisation


@pytest.mark.asyncio
@pytest.mark.parametrize("step_s", [3600.0, -3600.0])
async def test_sr16_a_wall_clock_step_mid_session_loses_no_stamped_heartbeat(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path, step_s: float
) -> None:
    """SR-16: the daemon's wall clock stepped by an hour mid-session (NTP after boot on a
    Raspberry Pi without a real-time clock; here through the daemon's test-only step file):
    the tablet, stamping its heartbeats in the daemon's published clock, is not lost, every
    heartbeat is accepted and the session runs on past the 5 s grace. The published ts does
    not jump; the journal's records keep real wall time."""
    step_file = tmp_path / "wall-step"
    step_file.write_text("0", encoding="utf-8")
    tm = "tm-wallstep"
    make_daemon(treadmill_id=tm, env={STEP_FILE_ENV: str(step_file)})
    async with clinician(broker, tm, heartbeat=False) as doc:
        first = await doc.state(lambda s: True, within=5.0)
        tab = StampedTablet(doc, first["ts"] - time.time())
        async with periodic(tab.heartbeats):
            await doc.start_running("u-35", program="first_session")
            step_file.write_text(repr(step_s), encoding="utf-8")
            stepped_at = time.time()
            # Past the heartbeat grace (5 s) with every heartbeat judged after the step.
            while time.time() - stepped_at < 7.0:
                state = await doc.state(lambda s: True, within=1.0)
                assert state["state"] == "running", state
                assert abs(state["ts"] - (time.time() + tab.offset)) < 2.0, state["ts"]
            assert tab.refused == []
            ok(await doc.command("stop"))
            await doc.event("session_ended")  # journaled before it is published
    started = journal_rows(broker, tm, "session_started")
    assert started
    path = broker.workdir / f"journal-{tm}.sqlite"
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        (ended_ts,) = db.execute(
            "SELECT ts FROM events WHERE type = 'session_ended' ORDER BY id DESC LIMIT 1"
        ).fetchone()
    assert abs(ended_ts - (time.time() + step_s)) < 60.0  # the stepped wall time, as recorded


# ----------------------------------------------------------------------------- SR-14


@pytest.mark.asyncio
async def test_sr14_sr15_a_flood_of_refused_commands_is_coalesced_and_stops_no_session(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """SR-14 (amended): 6,800 speed changes the core refuses (out of range), sent as fast as a
    client can, mid-session, with ``journal.max_size_mb = 1``: the journal records them as
    counts a second, does not fill, latches no fault; the session runs on (SR-15)."""
    tm = "tm-refusal-flood"
    flood = 6800
    daemon = make_daemon(treadmill_id=tm, env={"TREADGUARD_JOURNAL__MAX_SIZE_MB": "1"})
    async with clinician(broker, tm) as doc:
        await doc.start_running("u-36", program="first_session")
        for n in range(flood):
            payload = {"id": f"fl-{n}", "type": "set_speed", "mph": 5.0}
            await doc.tab.client.publish(f"{doc.p}/cmd", json.dumps(payload).encode(), qos=0)
        # Behind the flood on one connection: answered once the flood has been read, ok or,
        # with the outbox full of replies, rate_limited (never unanswered).
        behind = await doc.command("heartbeat")
        assert behind["ok"] or behind["error"]["code"] == "rate_limited", behind
        # The last second of the flood is counted once that second has ended.
        async with asyncio.timeout(10.0):
            while True:
                rows = [
                    r
                    for r in journal_rows(broker, tm, "command_refused")
                    if r["command"] == "set_speed"
                ]
                total = sum(int(r.get("count", 1)) for r in rows)
                if total >= flood:
                    break
                await asyncio.sleep(0.2)  # polling a file another process writes
        assert total == flood
        assert len(rows) < flood / 50
        # The newest state: those queued while the flood was read are older than its end.
        doc.tab.drain(f"{doc.p}/state")
        state = await doc.state(lambda s: True, within=2.0)
        assert state["state"] == "running", state
        assert state["latched"] is None
        assert state["journal"]["nearly_full"] is False
        ok(await doc.command("stop"))
    # Nor does it flood the log: each refusal up to 20 a second, then their number.
    log = daemon.log_text()
    assert log.count('"mqtt_command_refused"') < flood / 10
    assert '"mqtt_commands_refused_not_logged"' in log


# ----------------------------------------------------------------------------- SR-11


@pytest.mark.asyncio
async def test_sr11_commands_that_arrive_during_shutdown_are_answered(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """SR-11: after SIGTERM, mid-session, the daemon still answers: a start is refused as
    "shutting down", an estop is carried out; and every command sent until the daemon says
    "offline" is answered."""
    tm = "tm-shutdown"
    daemon = make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc:
        await doc.start_running("u-37", program="first_session")
        daemon.signal(signal.SIGTERM)
        await doc.event("stopping")  # the daemon has taken the signal
        message = refused(await doc.command("start_session", user="u-38"), "not_allowed")
        assert "shutting down" in message
        ok(await doc.command("estop"))
        assert (await doc.event("estop"))["cause"] == "remote_estop"
        sent: list[str] = []
        while not [m for m in doc.tab.drain(f"{doc.p}/availability") if m.payload == b"offline"]:
            command_id = uuid.uuid4().hex
            await doc.raw(json.dumps({"id": command_id, "type": "stop"}).encode())
            sent.append(command_id)
            await asyncio.sleep(0.02)  # a tablet pressing Stop again and again
            assert len(sent) < 2000, "the daemon never went offline"
        replied = {body(m)["id"] for m in doc.tab.drain(f"{doc.p}/reply")}
        # The daemon stops reading commands (unsubscribes) before its last replies and
        # "offline": only the stops published after that, at most the one or two in flight
        # then at one every 20 ms, can go unanswered, and they are the last ones sent.
        answered = [c in replied for c in sent]
        assert answered[0]
        last_answered = max(i for i, a in enumerate(answered) if a)
        assert all(answered[: last_answered + 1]), answered
        assert len(sent) - (last_answered + 1) <= 2, answered
    assert await asyncio.to_thread(daemon.wait) == 0


def test_the_wall_step_file_is_the_only_way_in(tmp_path: Path) -> None:
    """The step file is read only when the test-only variable names it."""
    from treadguard.controller.wallclock import wall_clock

    assert wall_clock({}) is time.time
    step = tmp_path / "step"
    step.write_text("-3600", encoding="utf-8")
    stepped = wall_clock({STEP_FILE_ENV: str(step)})
    assert abs(stepped() - (time.time() - 3600.0)) < 1.0
    step.write_text("oops", encoding="utf-8")
    assert abs(stepped() - (time.time() - 3600.0)) < 1.0  # a bad rewrite keeps the last step
