"""The journal kept like records: a schema version with migrations from every earlier one,
and a backup that is safe while the daemon writes.

The schemas of earlier releases are written out here as they shipped (not taken from the
code), so a change to a released migration step is caught: a journal in the field was made
by the step as it was.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.clinician import SESSION_WAIT_S, clinician, ok, running
from tests.daemon_process import ROOT, DaemonProcess, daemon_config
from tests.mosquitto import Broker
from treadguard.config.loading import load_config
from treadguard.controller.journal import (
    SCHEMA_VERSION,
    CommissioningOutcome,
    Journal,
    JournalError,
    Machine,
    ProofRecord,
    backup,
)
from treadguard.safety.decisions import Event, EventType, JsonScalar
from treadguard.safety.stop_baseline import StopKind

# The schema of each released version, as it shipped.
RELEASED: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY, user TEXT NOT NULL, program TEXT NOT NULL, cap_s REAL NOT NULL,
    started_at REAL NOT NULL, ended_at REAL, end_reason TEXT, belt_moving_s REAL,
    max_speed_mph REAL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL, type TEXT NOT NULL,
    session_id INTEGER REFERENCES sessions(id), fields TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_session ON events(session_id);
CREATE TABLE IF NOT EXISTS samples (
    session_id INTEGER NOT NULL REFERENCES sessions(id), ts REAL NOT NULL, speed_mph REAL,
    target_mph REAL);
CREATE INDEX IF NOT EXISTS samples_by_session ON samples(session_id);
""",
}
RELEASED[2] = (
    RELEASED[1]
    + """
CREATE TABLE IF NOT EXISTS commissioning (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at REAL NOT NULL, ended_at REAL,
    outcome TEXT, detail TEXT NOT NULL DEFAULT '', technician TEXT NOT NULL DEFAULT '',
    simulated INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS commissioning_proofs (
    commissioning_id INTEGER NOT NULL REFERENCES commissioning(id), ts REAL NOT NULL,
    step TEXT NOT NULL, kind TEXT, passed INTEGER NOT NULL, standstill_s REAL,
    deceleration_mph_per_s REAL, detail TEXT NOT NULL DEFAULT '');
"""
)
RELEASED[3] = (
    RELEASED[2]
    + """
CREATE TABLE IF NOT EXISTS measures (
    id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT NOT NULL, kind TEXT NOT NULL,
    value REAL NOT NULL, measured_on TEXT NOT NULL, recorded_at REAL NOT NULL, clinician TEXT);
CREATE INDEX IF NOT EXISTS measures_by_user ON measures(user);
"""
)
RELEASED[4] = (
    RELEASED[3]
    .replace("CREATE INDEX IF NOT EXISTS events_by_session ON events(session_id);\n", "")
    .replace("CREATE INDEX IF NOT EXISTS measures_by_user ON measures(user);\n", "")
    + """
CREATE INDEX IF NOT EXISTS measures_by_recorded_at ON measures(recorded_at);
CREATE INDEX IF NOT EXISTS measures_by_day ON measures(user, kind, measured_on);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(user);
CREATE INDEX IF NOT EXISTS events_by_session_and_type ON events(session_id, type);
"""
)
# Version 4 as its first release wrote it: two of the indexes, and codes left as they came.
FIRST_RELEASED_4 = (
    RELEASED[3]
    + """
CREATE INDEX IF NOT EXISTS measures_by_recorded_at ON measures(recorded_at);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(user);
"""
)
RELEASED[5] = RELEASED[4]  # the same schema: version 5 brings every version 4 to it
RELEASED[6] = (
    RELEASED[5]
    + """
ALTER TABLE commissioning ADD COLUMN treadmill TEXT;
ALTER TABLE commissioning ADD COLUMN drive TEXT;
"""
)
# Every version before the current one; a new migration without its released schema here
# fails test_every_earlier_version_is_covered.
EARLIER = [v for v in RELEASED if v < SCHEMA_VERSION]


def user_version(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        return int(db.execute("PRAGMA user_version").fetchone()[0])


def old_journal(path: Path, version: int, *, kept: bool) -> None:
    """A journal as the release of ``version`` wrote it, with a session and its events.
    ``kept``: the file's header holds the version (False: written before it was kept)."""
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(RELEASED[version])
        db.execute(
            "INSERT INTO sessions VALUES (7, 'p-001', 'first_session', 180, 1000, 1180, 'cap',"
            " 175.5, 1.0)"
        )
        db.execute(
            "INSERT INTO events (ts, type, session_id, fields) VALUES (1180, 'session_ended',"
            ' 7, \'{"reason": "cap"}\')'
        )
        db.execute("INSERT INTO samples VALUES (7, 1001, 0.8, 0.8)")
        if kept:
            db.execute(f"PRAGMA user_version = {version}")


def test_every_earlier_version_is_covered() -> None:
    assert sorted(RELEASED) == list(range(1, SCHEMA_VERSION + 1)), (
        "each schema version needs its released schema in RELEASED"
    )


def test_an_older_journal_s_codes_are_brought_to_their_composed_form(tmp_path: Path) -> None:
    """A code an older treadguard took in another Unicode form ("e" and a combining accent)
    is the same text as the composed one the contract takes now: opened to write, the journal
    holds it composed, so the user's record is found by the code the tablet sends."""
    path = tmp_path / "j.sqlite"
    old_journal(path, 3, kept=True)
    decomposed, composed = "Jose\u0301-12", "Jos\u00e9-12"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE sessions SET user = ?", (decomposed,))
        db.execute(
            "INSERT INTO measures (user, kind, value, measured_on, recorded_at)"
            " VALUES (?, 'tug', 12.0, '2026-11-30', 1000)",
            (decomposed,),
        )
    Journal.open(path).close()
    journal = Journal.read_only(path)
    try:
        assert [s.id for s in journal.sessions(composed)] == [7]
        assert [m.value for m in journal.measures(composed)] == [12.0]
        assert journal.sessions(decomposed) == []
    finally:
        journal.close()


def test_a_journal_of_version_4_s_first_release_gets_its_codes_composed_and_its_indexes(
    tmp_path: Path,
) -> None:
    """Version 4 was released with two indexes first, its other indexes and the composing of
    codes came after: a journal written then says version 4 and has neither. Opened, it has
    both, as a journal brought to version 4 from 3 does."""
    path = tmp_path / "j.sqlite"
    decomposed, composed = "Jose\u0301-12", "Jos\u00e9-12"
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(FIRST_RELEASED_4)
        db.execute(
            "INSERT INTO sessions VALUES (7, ?, 'first_session', 180, 1000, 1180, 'cap', 175.5,"
            " 1.0)",
            (decomposed,),
        )
        db.execute(
            "INSERT INTO measures (user, kind, value, measured_on, recorded_at)"
            " VALUES (?, 'tug', 12.0, '2026-11-30', 1000)",
            (decomposed,),
        )
        db.execute("PRAGMA user_version = 4")
    Journal.open(path).close()
    with closing(sqlite3.connect(path)) as db:
        indexes = {
            row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
    assert {"measures_by_day", "events_by_session_and_type"} <= indexes
    assert not {"events_by_session", "measures_by_user"} & indexes
    journal = Journal.read_only(path)
    try:
        assert [s.id for s in journal.sessions(composed)] == [7]
        assert [m.value for m in journal.measures(composed)] == [12.0]
    finally:
        journal.close()


def test_a_new_journal_has_the_current_version(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    Journal.open(path).close()
    assert user_version(path) == SCHEMA_VERSION
    with closing(sqlite3.connect(":memory:")) as db:
        db.executescript(RELEASED[SCHEMA_VERSION])
        released = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    with closing(sqlite3.connect(path)) as db:
        made = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
    assert released <= made


@pytest.mark.parametrize("kept", [False, True], ids=["unversioned", "versioned"])
@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION + 1))
def test_a_journal_of_every_earlier_version_is_migrated_with_its_rows(
    tmp_path: Path, version: int, kept: bool
) -> None:
    path = tmp_path / "j.sqlite"
    old_journal(path, version, kept=kept)
    journal = Journal.open(path)
    assert user_version(path) == SCHEMA_VERSION
    (session,) = journal.sessions()
    assert (session.id, session.user, session.end_reason, session.belt_moving_s) == (
        7,
        "p-001",
        "cap",
        175.5,
    )
    assert [e.type for e in journal.events(7)] == ["session_ended"]
    assert journal.samples(7) == [(1001.0, 0.8, 0.8)]
    assert journal.has_history("p-001")
    # What the later versions added works on the migrated journal.
    run = journal.begin_commissioning(
        2000.0, technician="t", simulated=True, machine=Machine("tm-1", "simulator")
    )
    journal.record_proof(run, ProofRecord("estop", StopKind.EMERGENCY, True, 1.0, 0.8), 2001.0)
    measure: dict[str, JsonScalar] = {
        "user": "p-001", "kind": "tug", "value": 11.0, "date": "2026-11-30",
    }  # fmt: skip
    journal.record(Event(EventType.MEASURE_RECORDED, 0.0, measure), 2002.0)
    journal.commit()
    assert [(m.kind, m.value) for m in journal.measures("p-001")] == [("tug", 11.0)]
    journal.close()
    # Opening again changes nothing.
    again = Journal.open(path)
    assert user_version(path) == SCHEMA_VERSION
    assert len(again.sessions()) == 1
    assert len(again.proofs(run)) == 1
    again.close()


def test_a_journal_from_a_newer_treadguard_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    old_journal(path, SCHEMA_VERSION, kept=True)
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.commit()
    before = path.read_bytes()
    with pytest.raises(JournalError, match="newer treadguard") as opened:
        Journal.open(path, exclusive=True)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(opened.value)
    with pytest.raises(JournalError, match="newer treadguard"):
        Journal.read_only(path)
    assert path.read_bytes() == before
    # The lock was given back: once the journal is usable again, it opens.
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.commit()
    Journal.open(path, exclusive=True).close()


def test_a_migration_that_fails_leaves_the_journal_at_its_version(tmp_path: Path) -> None:
    """A step and its version are one transaction: a step that cannot complete (here an
    object in the way of a table it creates) leaves the journal as it was, and says why."""
    path = tmp_path / "j.sqlite"
    old_journal(path, 1, kept=True)
    with closing(sqlite3.connect(path)) as db:
        db.execute("CREATE INDEX commissioning_proofs ON sessions(user)")
        db.commit()
    with pytest.raises(JournalError, match="commissioning_proofs") as opened:
        Journal.open(path)
    assert str(path) in str(opened.value)
    assert user_version(path) == 1
    with closing(sqlite3.connect(path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "commissioning" not in tables  # created in the same step, rolled back with it


def session_events(session: int) -> list[Event]:
    return [
        Event(
            EventType.SESSION_STARTED,
            0.0,
            {"session_id": str(session), "user": "u1", "program": "first_session", "cap_s": 180},
        ),
        Event(
            EventType.SESSION_ENDED,
            0.0,
            {"session_id": str(session), "reason": "cap", "belt_moving_s": 170.0},
        ),
    ]


def test_a_backup_holds_what_was_committed_and_nothing_half_written(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal.open(path, exclusive=True)
    for event in session_events(1):
        journal.record(event, ts=1000.0)
    journal.commit()
    journal.record(session_events(2)[0], ts=2000.0)  # under way, not committed
    copy = tmp_path / "copy.sqlite"
    done = backup(path, copy)
    assert (done.sessions, done.schema_version) == (1, SCHEMA_VERSION)
    assert done.size_bytes == copy.stat().st_size > 0
    assert not list(tmp_path.glob(".copy.sqlite.partial-*"))
    assert not (tmp_path / "copy.sqlite-wal").exists()
    with closing(sqlite3.connect(copy)) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    (session,) = Journal.read_only(copy).sessions()
    assert (session.id, session.end_reason) == (1, "cap")
    journal.commit()  # the writer carries on, untouched by the copy
    assert [s.id for s in Journal.read_only(path).sessions()] == [1, 2]
    journal.close()


def test_a_backup_never_overwrites_and_names_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    Journal.open(path).close()
    existing = tmp_path / "kept.sqlite"
    existing.write_bytes(b"precious")
    with pytest.raises(JournalError, match="already exists"):
        backup(path, existing)
    assert existing.read_bytes() == b"precious"
    with pytest.raises(JournalError, match="no journal at"):
        backup(tmp_path / "none.sqlite", tmp_path / "x.sqlite")
    with pytest.raises(JournalError, match="cannot write the copy") as failed:
        backup(path, tmp_path / "no-such-folder" / "x.sqlite")
    assert "no-such-folder/x.sqlite: No such file or directory" in str(failed.value)
    not_a_journal = tmp_path / "notes.txt"
    not_a_journal.write_text("hello\n", encoding="utf-8")
    with pytest.raises(JournalError, match="cannot back up"):
        backup(not_a_journal, tmp_path / "y.sqlite")
    assert not (tmp_path / "y.sqlite").exists()
    assert not list(tmp_path.glob(".*partial*"))


def treadguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treadguard.controller.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.asyncio
async def test_backup_while_the_daemon_runs_a_session(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    tm = "tm-backup"
    daemon = make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc:
        ok(await doc.command("start_session", user="u-31"))
        await doc.state(running, within=SESSION_WAIT_S)
        folder = broker.workdir / "usb"
        folder.mkdir()
        done = treadguard("backup", str(folder), "--config", str(daemon.config))
        assert done.returncode == 0, done.stderr
        (copy,) = folder.glob(f"journal-{tm}-*.sqlite")
        assert done.stdout.startswith(f"{copy}: 1 session(s), schema version {SCHEMA_VERSION}")
        # The session under way is in the copy, open (no end yet), with its start event.
        (session,) = Journal.read_only(copy).sessions()
        assert (session.user, session.ended_at) == ("u-31", None)
        fields = [e.fields for e in Journal.read_only(copy).events(session.id)]
        assert any(f.get("user") == "u-31" for f in fields)
        again = treadguard("backup", str(copy), "--config", str(daemon.config))
        assert again.returncode == 2
        assert "already exists" in again.stderr
        assert "Traceback" not in again.stderr
        ok(await doc.command("stop"))


@pytest.mark.asyncio
async def test_a_restored_backup_takes_the_treadmill_out_of_service_until_commissioned(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    """A backup of a commissioned treadmill's journal, restored as docs/daemon.md says: the
    copy's pass does not stand for the treadmill as it is now (a proof test failed since the
    copy would be undone by the restore), so a start is refused until a run passes again;
    the journal the copy was made from keeps its pass."""
    tm = "tm-restored"
    daemon = make_daemon(treadmill_id=tm)
    copy = tmp_path / "copy.sqlite"
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        done = treadguard("backup", str(copy), "--config", str(daemon.config))
        assert done.returncode == 0, done.stderr
        await doc.start_running("u-before", program="first_session")  # still in service
        ok(await doc.command("stop"))
        await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
    assert daemon.stop() == 0
    journal = broker.workdir / f"journal-{tm}.sqlite"
    journal.unlink()
    for leftover in ("-wal", "-shm"):
        journal.with_name(journal.name + leftover).unlink(missing_ok=True)
    journal.write_bytes(copy.read_bytes())
    restored = DaemonProcess(daemon.config, tmp_path / "restored.log", commissioned=False)
    restored.start()
    try:
        async with clinician(broker, tm) as doc:
            await doc.until(lambda s: s["stale"] == [], within=10.0)
            reply = await doc.command("start_session", user="u-after", program="first_session")
            assert reply["ok"] is False, reply
            assert reply["error"]["code"] == "preconditions_unmet"
            assert "a backup copy made" in reply["error"]["message"]
            assert "commission the treadmill again" in reply["error"]["message"]
    finally:
        restored.stop()
    status = treadguard("commission", "--status", "--config", str(daemon.config))
    assert "NOT CURRENT: the last commissioning run (no. 2) is a backup copy made" in status.stdout


def _passed_and_copied(tmp_path: Path) -> tuple[Path, Path, Path]:
    """tm-seal's configuration, its journal with a commissioning passed, and a plain copy."""
    config = daemon_config(tmp_path, 1883, treadmill_id="tm-seal")
    path = tmp_path / "journal-tm-seal.sqlite"
    passed = treadguard("commission", "--simulated", "--config", str(config))
    assert passed.returncode == 0, passed.stdout + passed.stderr
    copy = tmp_path / "plain-copy.sqlite"
    shutil.copyfile(path, copy)
    return config, path, copy


@pytest.mark.parametrize("since", ["a proof test given up", "a fault", "the seal removed"])
def test_a_plain_copy_put_in_the_journals_place_does_not_bring_a_withdrawn_pass_back(
    tmp_path: Path, since: str
) -> None:
    """A pass, a plain copy of the journal (cp, an image of the file), then a proof test given
    up (which withdraws the pass) or a fault on record (a worn brake's, say); the copy put back
    in the journal's place: its pass does not count (the seal beside the journal names a run
    or an event the copy lacks) until the treadmill is commissioned again. So too when the
    restore takes the seal away with the journal's other files (rm journal.sqlite-*)."""
    config, path, copy = _passed_and_copied(tmp_path)
    loaded = load_config(config)
    journal = Journal.open(path, exclusive=True)
    if since == "a fault":
        fault: dict[str, JsonScalar] = {"cause": "drive_fault", "detail": "a worn brake"}
        journal.record(Event(EventType.FAULT, 0.0, fault), time.time())
        said = "the journal has no event no."
    else:
        run = journal.begin_commissioning(
            time.time(), technician="t", simulated=True, machine=Machine.of(loaded.config)
        )
        journal.end_commissioning(run, time.time(), CommissioningOutcome.ABORTED, "given up")
        said = f"the journal has no commissioning run no. {run}"
        assert treadguard("commission", "--status", "--config", str(config)).returncode != 0
    journal.close()
    leftovers = ["-wal", "-shm"] + (["-commissioning"] if since == "the seal removed" else [])
    for leftover in leftovers:
        path.with_name(path.name + leftover).unlink(missing_ok=True)
    if since == "the seal removed":
        said = "commissioning seal"
    path.write_bytes(copy.read_bytes())  # cp plain-copy.sqlite journal-tm-seal.sqlite
    status = treadguard("commission", "--status", "--config", str(config))
    assert status.returncode != 0, status.stdout
    assert said in status.stdout, status.stdout
    assert "commission the treadmill again" in status.stdout
    again = treadguard("commission", "--simulated", "--config", str(config))
    assert again.returncode == 0, again.stdout + again.stderr
    assert treadguard("commission", "--status", "--config", str(config)).returncode == 0


def _refusal(journal: Journal) -> None:
    """What a refused start puts on record: an event like any other, on any journal."""
    refused: dict[str, JsonScalar] = {"command": "start_session", "code": "preconditions_unmet"}
    journal.record(Event(EventType.COMMAND_REFUSED, 0.0, refused), time.time())


def _fault(journal: Journal) -> None:
    fault: dict[str, JsonScalar] = {"cause": "drive_fault", "detail": "stop_watch: a worn brake"}
    journal.record(Event(EventType.FAULT, 0.0, fault), time.time())


@pytest.mark.parametrize(
    "then", ["the copy grows past the seal", "a fault on the copy", "another treadmill's run"]
)
def test_an_older_copy_in_the_journals_place_stays_out_however_it_grows(
    tmp_path: Path, then: str
) -> None:
    """A pass, a plain copy, more on record and a fault (a worn brake's), the copy put back
    with the seal left in place. The copy then grows as any journal does (each refused start
    is an event), past the event number the seal names; or a fault of its own is recorded on
    it, which writes a seal. Neither brings the withdrawn pass back: the seal names the very
    event it saw, and a journal older than its seal never writes over it."""
    config, path, copy = _passed_and_copied(tmp_path)
    journal = Journal.open(path, exclusive=True)
    for _ in range(5):
        _refusal(journal)
    _fault(journal)  # the seal now names this event
    journal.close()
    for leftover in ("-wal", "-shm"):
        path.with_name(path.name + leftover).unlink(missing_ok=True)
    path.write_bytes(copy.read_bytes())  # cp plain-copy.sqlite journal-tm-seal.sqlite
    restored = Journal.open(path, exclusive=True)
    if then == "the copy grows past the seal":
        for _ in range(20):
            _refusal(restored)
        restored.commit()  # as the daemon's journal keeper does, at most a second later
    elif then == "a fault on the copy":
        _fault(restored)
    restored.close()
    if then == "another treadmill's run":
        # A second treadmill's configuration naming this journal: its run, which counts for
        # it alone, begins a seal that follows the journal again; the pass the copy brought
        # back is withdrawn all the same, for every treadmill it was made for.
        other = daemon_config(tmp_path, 1883, treadmill_id="tm-other")
        text = other.read_text(encoding="utf-8")
        other.write_text(
            text.replace(str(tmp_path / "journal-tm-other.sqlite"), str(path)), encoding="utf-8"
        )
        assert str(path) in other.read_text(encoding="utf-8")
        theirs = treadguard("commission", "--simulated", "--config", str(other))
        assert theirs.returncode == 0, theirs.stdout + theirs.stderr
    status = treadguard("commission", "--status", "--config", str(config))
    assert status.returncode != 0, status.stdout
    assert "older" in status.stdout, status.stdout
    assert "commission the treadmill again" in status.stdout
    again = treadguard("commission", "--simulated", "--config", str(config))
    assert again.returncode == 0, again.stdout + again.stderr
    assert treadguard("commission", "--status", "--config", str(config)).returncode == 0
