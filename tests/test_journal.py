"""The session journal (SR-14): SQLite in WAL mode, synced before anything is published.

The module on its own (sessions, events, samples, history, interrupted sessions, a full
journal), then the daemon: an event a tablet has received is already on disk; a journal that
cannot be opened, or fills up mid-session, stops the belt and refuses starts with the reason.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.clinician import SESSION_WAIT_S, clinician, ok, refused, running
from tests.daemon_process import ROOT, DaemonProcess, daemon_config
from tests.mosquitto import Broker
from treadguard.controller.journal import WARN_FRACTION, Journal, JournalError
from treadguard.safety.decisions import Event, EventType


def started(session: int, user: str = "u1", program: str = "first_session") -> Event:
    return Event(
        EventType.SESSION_STARTED,
        t=0.0,
        fields={"session_id": str(session), "user": user, "program": program, "cap_s": 180.0},
    )


def ended(session: int, reason: str, moving_s: float = 60.0) -> Event:
    return Event(
        EventType.SESSION_ENDED,
        t=0.0,
        fields={"session_id": str(session), "reason": reason, "belt_moving_s": moving_s},
    )


def other_connection(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


# ----------------------------------------------------------------------------- the module


def test_sr14_a_session_its_events_and_samples(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal.open(path)
    assert other_connection(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    journal.record(started(1), ts=1000.0)
    journal.sample(1001.0, 0.5, 0.8)
    journal.sample(1002.0, 0.8, 0.8)
    journal.record(Event(EventType.GRIP_WARNING, 0.0, {"hand": "left"}), ts=1003.0)
    journal.record(Event(EventType.ESTOP, 0.0, {"cause": "grip_lost"}), ts=1004.0)
    journal.record(ended(1, "estop", 4.0), ts=1004.0)
    # Nothing is visible to anyone else before the commit: it is not yet on disk.
    assert other_connection(path).execute("SELECT COUNT(*) FROM events").fetchone() == (0,)
    journal.commit()
    assert other_connection(path).execute("SELECT COUNT(*) FROM events").fetchone() == (4,)

    reader = Journal.read_only(path)
    (session,) = reader.sessions()
    assert (session.id, session.user, session.program, session.cap_s) == (
        1,
        "u1",
        "first_session",
        180.0,
    )
    assert (session.started_at, session.ended_at, session.end_reason) == (1000.0, 1004.0, "estop")
    assert session.belt_moving_s == 4.0
    assert session.max_speed_mph == 0.8
    assert [e.type for e in reader.events(1)] == [
        "session_started",
        "grip_warning",
        "estop",
        "session_ended",
    ]
    assert reader.events(1)[2].fields == {"cause": "grip_lost"}
    assert reader.samples(1) == [(1001.0, 0.5, 0.8), (1002.0, 0.8, 0.8)]
    assert reader.last_session_id() == 1


def test_the_belt_after_the_end_is_sampled_until_it_stands_still(tmp_path: Path) -> None:
    """A stop's run-down is on the record: samples go on after session_ended, under that
    session, up to the first at standstill (or with the speed unknown); then none until the
    next session starts."""
    path = tmp_path / "j.sqlite"
    journal = Journal.open(path)
    journal.record(started(1), ts=1000.0)
    journal.sample(1000.5, 1.0, 1.0)
    journal.record(Event(EventType.ESTOP, 0.0, {"cause": "grip_lost"}), ts=1001.0)
    journal.record(ended(1, "estop", 1.0), ts=1001.0)
    journal.sample(1001.5, 0.6, 0.0)
    journal.sample(1002.0, 0.04, 0.0)  # standstill: the last of the run-down
    journal.sample(1002.5, 0.0, 0.0)
    journal.record(started(2), ts=1010.0)
    journal.sample(1010.5, 0.0, 0.8)
    journal.record(ended(2, "fault", 0.0), ts=1011.0)
    journal.sample(1011.5, math.inf, 0.0)  # the drive silent: said once, then no more
    journal.sample(1012.0, 0.5, 0.0)
    journal.commit()
    reader = Journal.read_only(path)
    assert reader.samples(1) == [(1000.5, 1.0, 1.0), (1001.5, 0.6, 0.0), (1002.0, 0.04, 0.0)]
    assert reader.samples(2) == [(1010.5, 0.0, 0.8), (1011.5, None, 0.0)]
    (first, _) = reader.sessions()
    assert first.max_speed_mph == 1.0  # the run-down does not change the session's top speed
    reader.close()
    journal.close()


def test_history_counts_sessions_that_ran_and_ended_as_planned(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite")
    for session, (user, reason, moving) in enumerate(
        [("a", "cap", 180.0), ("b", "estop", 30.0), ("c", "operator_stop", 0.0)], start=1
    ):
        journal.record(started(session, user), ts=float(session))
        journal.record(ended(session, reason, moving), ts=float(session) + 0.5)
    journal.commit()
    assert journal.has_history("a")
    assert not journal.has_history("b")  # an emergency stop is no session had
    assert not journal.has_history("c")  # the belt never moved
    assert not journal.has_history("nobody")


def test_sr7_a_first_session_the_clinician_stopped_early_is_not_the_first_session_had(
    tmp_path: Path,
) -> None:
    """A first-session program's session counts as the user's first only when it ran to its
    cap or for at least the program's shortest cap: stopped after 13 s, the user is still on
    first-session rules (and the next start may not be the 5-8 minute program)."""
    journal = Journal.open(tmp_path / "j.sqlite")
    shortest = {"first_session": 180.0}
    cases = [
        ("early", "operator_stop", 13.0),
        ("stopped-late", "operator_stop", 181.0),
        ("capped", "cap", 179.0),  # the cap's belt time, less the countdown's ramp
        ("fell", "estop", 200.0),
    ]
    for session, (user, reason, moving) in enumerate(cases, start=1):
        journal.record(started(session, user), ts=float(session))
        journal.record(ended(session, reason, moving), ts=float(session) + 0.5)
    journal.commit()
    assert not journal.has_history("early", shortest)
    assert journal.has_history("early")  # without the rule: any session with the belt moving
    assert journal.has_history("stopped-late", shortest)
    assert journal.has_history("capped", shortest)
    assert not journal.has_history("fell", shortest)


def test_sr7_a_session_of_a_program_no_longer_known_is_judged_as_a_first_session(
    tmp_path: Path,
) -> None:
    """A session whose program was renamed or removed since is judged fail-closed, as a
    first session against the largest shortest cap, however it ended: run to a cap of 5 s
    under the old name it does not count; a known later program's session still does."""
    journal = Journal.open(tmp_path / "j.sqlite")
    shortest = {"first_session": 180.0, "first_session_long": 240.0}
    others = {"reverse_walking"}
    cases = [
        ("seconds", "old_first", "cap", 5.0),
        ("short-of-largest", "old_first", "operator_stop", 200.0),
        ("long", "old_first", "operator_stop", 240.0),
        ("later", "reverse_walking", "operator_stop", 5.0),
    ]
    for session, (user, program, reason, moving) in enumerate(cases, start=1):
        journal.record(started(session, user, program), ts=float(session))
        journal.record(ended(session, reason, moving), ts=float(session) + 0.5)
    journal.commit()
    assert not journal.has_history("seconds", shortest, other_programs=others)
    assert not journal.has_history("short-of-largest", shortest, other_programs=others)
    assert journal.has_history("long", shortest, other_programs=others)
    assert journal.has_history("later", shortest, other_programs=others)
    # Without the other programs named, every program but a first-session one is unknown.
    assert not journal.has_history("later", shortest)


CRASHING_WRITER = """
import os, sys
from pathlib import Path
from treadguard.controller.journal import Journal
from treadguard.safety.decisions import Event, EventType
journal = Journal.open(Path(sys.argv[1]))
journal.record(Event(EventType.SESSION_STARTED, 0.0, {"session_id": "7", "user": "u1",
               "program": "first_session", "cap_s": 180.0}), ts=100.0)
journal.sample(101.0, 0.9, 0.9)
journal.record(Event(EventType.BELT_STARTED, 0.0, {}), ts=103.0)
journal.sample(109.0, 0.8, 0.8)  # the belt still ran after its last event
journal.sample(109.5, 0.8, 0.8)
journal.sample(110.0, 0.8, 0.8)
journal.commit()
journal.record(Event(EventType.CAP_WARNING, 0.0, {}), ts=150.0)  # never committed
os._exit(9)  # the process dies mid-transaction, as under SIGKILL
"""


def test_sr14_a_session_a_crash_left_open_is_closed_as_interrupted(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHING_WRITER, str(path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert crashed.returncode == 9

    again = Journal.open(path)
    assert again.close_interrupted(ts=200.0) == [7]
    session = again.session(7)
    assert session is not None
    assert session.end_reason == "interrupted"
    # Its last record on disk, a sample of the belt after its last event; the cap warning
    # was lost.
    assert session.ended_at == 110.0
    assert session.max_speed_mph == 0.9
    # Its belt time, from its samples, never more than the belt surely ran: the 8 s without
    # a sample (they come at least twice a second) count as 1 s, each half second after as
    # itself.
    assert session.belt_moving_s == 2.0
    assert [e.type for e in again.events(7)] == [
        "session_started",
        "belt_started",
        "session_ended",
    ]
    assert again.close_interrupted(ts=201.0) == []


def test_sr14_a_full_journal_says_so(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite", max_size_mb=0.1)
    journal.record(started(1), ts=1.0)

    def fill() -> None:
        for n in range(100_000):
            journal.record(Event(EventType.COMMAND_REFUSED, 0.0, {"n": n, "pad": "x" * 200}), 2.0)
            journal.commit()

    with pytest.raises(JournalError, match="full"):
        fill()


def test_a_journal_that_cannot_be_opened_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(JournalError, match="not-a-folder"):
        Journal.open(blocker / "journal.sqlite")
    with pytest.raises(JournalError, match="no journal"):
        Journal.read_only(tmp_path / "missing.sqlite")


# ----------------------------------------------------------------------------- the daemon


def journal_of(tmp_path: Path, tm: str) -> Path:
    return tmp_path / f"journal-{tm}.sqlite"  # where tests/daemon_process.py puts it


@pytest.mark.asyncio
async def test_sr14_an_event_the_tablet_has_is_already_on_disk(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    tm = "tm-journal"
    make_daemon(treadmill_id=tm)
    path = journal_of(broker.workdir, tm)

    def on_disk(event_type: str) -> list[dict[str, Any]]:
        rows = other_connection(path).execute(
            "SELECT fields FROM events WHERE type = ?", (event_type,)
        )
        return [json.loads(fields) for (fields,) in rows]

    async with clinician(broker, tm) as doc:
        ok(await doc.command("start_session", user="u-20"))
        assert on_disk("session_started")  # the reply is an acknowledgement
        await doc.state(running, within=SESSION_WAIT_S)
        ok(await doc.command("estop"))
        event = await doc.event("estop")
        (stored,) = on_disk("estop")
        assert stored["cause"] == event["cause"] == "remote_estop"
        assert stored["stop_latency_ms"] == event["stop_latency_ms"]
        command = uuid.uuid4().hex
        await doc.raw(json.dumps({"id": command, "type": "set_speed", "mph": 9.0}).encode())
        refused(await doc.reply_to(command), "not_allowed")
        assert on_disk("command_refused")  # a refusal is a safety event too
    (session,) = Journal.read_only(path).sessions()
    assert (session.user, session.end_reason) == ("u-20", "estop")
    assert session.max_speed_mph is not None
    assert session.max_speed_mph >= 0.75


@pytest.mark.asyncio
async def test_sr14_a_journal_that_cannot_be_opened_refuses_every_start(
    broker: Broker, tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")  # a file where the journal's folder should be
    tm = "tm-nojournal"
    config = daemon_config(tmp_path, broker.port, treadmill_id=tm)
    text = config.read_text().replace(
        journal_of(tmp_path, tm).as_posix(), (blocker / "journal.sqlite").as_posix()
    )
    config.write_text(text)
    daemon = DaemonProcess(config, tmp_path / "d.log")
    daemon.start()
    try:
        async with clinician(broker, tm) as doc:
            state = await doc.state(lambda s: s["latched"] is not None, within=10.0)
            assert state["state"] == "fault"
            assert state["latched"]["cause"] == "journal"
            message = refused(await doc.command("start_session", user="u-21"), "latched")
            assert "journal" in message
            reset = refused(await doc.command("reset"), "preconditions_unmet")
            assert "blocker" in reset
    finally:
        daemon.stop()


def write_until_full(journal: Journal, row: Event) -> list[float]:
    """Record and commit ``row`` until the journal is full; how full it was before each."""
    seen = [journal.used_fraction()]
    for _ in range(100_000):
        try:
            journal.record(row, ts=1.0)
            journal.commit()
        except JournalError as exc:
            if "full" not in str(exc):
                raise
            return seen
        seen.append(journal.used_fraction())
    raise AssertionError("the journal never filled up")


def fill(path: Path, max_size_mb: float, free_pages: int) -> None:
    """A journal that has filled up over months: full to its limit, then ``free_pages`` pages
    of its newest rows deleted, so what comes next fills it again."""
    journal = Journal.open(path, max_size_mb=max_size_mb)
    write_until_full(journal, Event(EventType.COMMAND_REFUSED, 0.0, {"message": "x" * 1000}))
    journal.close()
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
        rows = free_pages * page // 1000 + 1
        db.execute("DELETE FROM events WHERE id > (SELECT MAX(id) FROM events) - ?", (rows,))
        assert int(db.execute("PRAGMA freelist_count").fetchone()[0]) >= free_pages


def test_sr14_a_journal_nearing_its_limit_says_how_full_it_is(tmp_path: Path) -> None:
    """SR-14 (amended): ``used_fraction`` rises with what is written, reaches WARN_FRACTION
    (the daemon's warning) while writes still succeed, well before the write that fails."""
    journal = Journal.open(tmp_path / "j.sqlite", max_size_mb=0.2)
    row = Event(EventType.COMMAND_REFUSED, 0.0, {"message": "x" * 200})
    seen = write_until_full(journal, row)
    written = len(seen) - 1
    assert seen[0] < 0.5
    assert seen == sorted(seen)
    at_warning = next(i for i, used in enumerate(seen) if used >= WARN_FRACTION)
    assert written - at_warning >= 0.1 * written  # a tenth of all it holds still fits
    assert seen[-1] <= 1.0


def test_sr14_the_journal_on_disk_stays_near_its_size_limit(tmp_path: Path) -> None:
    """SR-14: ``max_size_mb`` bounds what the journal takes on disk, its write-ahead log
    included (SQLite's page limit counts the database file only; the log grew to three times
    the limit under a flood of records)."""
    path = tmp_path / "j.sqlite"
    limit_mb = 0.3
    journal = Journal.open(path, max_size_mb=limit_mb)
    row = Event(EventType.COMMAND_REFUSED, 0.0, {"message": "x" * 300})
    largest = 0
    for _ in range(100_000):
        try:
            journal.record(row, ts=1.0)
            journal.commit()
        except JournalError:
            break
        wal = path.with_name(path.name + "-wal")
        largest = max(largest, path.stat().st_size + (wal.stat().st_size if wal.exists() else 0))
    else:
        raise AssertionError("the journal never filled up")
    assert largest <= 1.2 * limit_mb * 1e6


def test_sr14_a_journal_with_free_pages_counts_them_free(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    fill(path, 0.1, free_pages=2)
    journal = Journal.open(path, max_size_mb=0.1)
    assert WARN_FRACTION <= journal.used_fraction() < 1.0


@pytest.mark.asyncio
async def test_sr14_a_journal_that_fills_up_mid_session_warns_first_then_stops_the_belt(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """SR-14: a journal nearly full at start-up is reported at once (a journal_warning event,
    the state's ``journal`` field, the log); when it does fill up, mid-session, the belt stops
    with a latched journal fault and no start or reset is accepted."""
    tm = "tm-full"
    fill(broker.workdir / f"journal-{tm}.sqlite", 0.1, free_pages=2)
    daemon = make_daemon(env={"TREADGUARD_JOURNAL__MAX_SIZE_MB": "0.1"}, treadmill_id=tm)
    async with clinician(broker, tm) as doc:
        warned = await doc.until(lambda s: s["journal"]["nearly_full"], within=10.0)
        assert warned["journal"]["used_pct"] >= 80
        assert warned["latched"] is None
        await doc.start_running("u-22")
        # A session's samples and events, and refusals (coalesced), fill the last pages.
        async with asyncio.timeout(60.0):
            while True:
                reply = await doc.command("set_speed", mph=5.0)
                if reply["error"]["code"] != "out_of_range":
                    break
        state = await doc.state(lambda s: s["latched"] is not None, within=5.0)
        assert state["latched"] == {**state["latched"], "kind": "fault", "cause": "journal"}
        stopped = await doc.state(lambda s: s["speed_mph"] <= 0.05, within=5.0)
        assert stopped["state"] == "fault"
        assert "full" in refused(await doc.command("reset"), "preconditions_unmet")
    log = daemon.log_text()
    assert log.index('"journal_nearly_full"') < log.index('"journal_failed"')


def test_a_non_finite_number_is_journaled_as_null(tmp_path: Path) -> None:
    """A Trackmaster in its emergency state reports 999.9 mph, which the driver reads as
    infinity: the event is still journaled, with null, never an exception."""
    journal = Journal.open(tmp_path / "j.sqlite")
    journal.record(Event(EventType.BELT_FOUND_MOVING, 0.0, {"speed_mph": math.inf}), ts=1.0)
    journal.commit()
    (event,) = journal.events()
    assert event.fields == {"speed_mph": None}
