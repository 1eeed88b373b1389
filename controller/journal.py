"""The session journal (SR-14): every session and every safety event, in SQLite.

WAL mode with ``synchronous=FULL``: a committed transaction survives a power cut. Writes
gather in one open transaction and are committed (one fsync for the lot) by :meth:`commit`,
which the daemon calls before anything is published on MQTT and at least every half second,
so nothing is published or acknowledged before it is on disk, and a flood of events costs one
sync per batch rather than one per event.

Every failure is a :class:`JournalError` with SQLite's reason ("database or disk is full",
"attempt to write a readonly database", ...); the daemon turns it into a latched fault.
:meth:`Journal.used_fraction` says how close to its size limit it is, so the operator is warned
(at ``WARN_FRACTION``) well before that fault (SR-14).
"""

from __future__ import annotations

import json
import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from treadguard.safety.decisions import Event, EventType

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,            -- the session id of MQTT-API.md, unique per treadmill
    user TEXT NOT NULL,
    program TEXT NOT NULL,
    cap_s REAL NOT NULL,
    started_at REAL NOT NULL,          -- unix seconds
    ended_at REAL,
    end_reason TEXT,                   -- cap, completed, operator_stop, ..., interrupted
    belt_moving_s REAL,
    max_speed_mph REAL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    session_id INTEGER REFERENCES sessions(id),
    fields TEXT NOT NULL               -- the event's fields, JSON
);
CREATE INDEX IF NOT EXISTS events_by_session ON events(session_id);
CREATE TABLE IF NOT EXISTS samples (
    session_id INTEGER NOT NULL REFERENCES sessions(id),
    ts REAL NOT NULL,
    speed_mph REAL,
    target_mph REAL
);
CREATE INDEX IF NOT EXISTS samples_by_session ON samples(session_id);
"""

# Sessions that count as a treadmill session had: the belt ran and the session ended as
# planned or by the clinician, not in a stop of any kind.
HISTORY_REASONS = ("cap", "completed", "operator_stop")
# The share of journal.max_size_mb at which the operator is warned: at the coalesced rate of
# refusals and a session's samples, the last fifth still lasts hours.
WARN_FRACTION = 0.8


class JournalError(Exception):
    pass


@dataclass(frozen=True)
class SessionRow:
    id: int
    user: str
    program: str
    cap_s: float
    started_at: float
    ended_at: float | None
    end_reason: str | None
    belt_moving_s: float | None
    max_speed_mph: float | None

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class EventRow:
    ts: float
    type: str
    fields: dict[str, Any]


class Journal:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._db = connection
        self._open_session: int | None = self._newest_open_session()
        self._top_speed = 0.0  # of the open session, from every drive status

    @classmethod
    def open(cls, path: Path, *, max_size_mb: float = 512.0) -> Journal:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Autocommit mode: this class says where a transaction begins and ends.
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            cls._prepare(db, max_size_mb)
        except (OSError, sqlite3.Error) as exc:
            raise JournalError(f"cannot open {path}: {exc}") from exc
        return cls(db)

    @classmethod
    def in_memory(cls, *, max_size_mb: float = 512.0) -> Journal:
        """The same schema and limits in memory: a simulation's journal (nothing to sync)."""
        try:
            db = sqlite3.connect(":memory:", isolation_level=None)
            cls._prepare(db, max_size_mb)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open a journal in memory: {exc}") from exc
        return cls(db)

    @staticmethod
    def _prepare(db: sqlite3.Connection, max_size_mb: float) -> None:
        try:
            db.execute("PRAGMA foreign_keys=ON")
            page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
            most = max(16, int(max_size_mb * 1e6 / page_size))
            db.execute(f"PRAGMA max_page_count={most}")
            # max_page_count bounds the database file only. The write-ahead log beside it grows
            # until a checkpoint (1,000 pages, 4 MB, by default) and keeps its size after one:
            # checkpoint at a tenth of the limit and cut the log back to that, so the two
            # together stay within about 1.1 times max_size_mb.
            wal_pages = max(8, most // 10)
            db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
            db.execute(f"PRAGMA journal_size_limit={wal_pages * page_size}")
            db.executescript(SCHEMA)
        except sqlite3.Error:
            db.close()
            raise

    @classmethod
    def read_only(cls, path: Path) -> Journal:
        """For ``treadguard history`` and ``report``: never writes, never creates."""
        if not path.is_file():
            raise JournalError(f"no journal at {path}")
        try:
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            db.execute("SELECT 1 FROM sessions LIMIT 1")
        except sqlite3.Error as exc:
            raise JournalError(f"cannot read {path}: {exc}") from exc
        return cls(db)

    def close(self) -> None:
        self._db.close()

    def used_fraction(self) -> float:
        """How full the journal is: its pages in use (the write-ahead log's included, as SQLite
        counts them against ``max_page_count``) over the most it may have, 0.0 to 1.0."""
        pages = int(self._query("PRAGMA page_count")[0][0])
        free = int(self._query("PRAGMA freelist_count")[0][0])  # deleted rows' pages, reused
        most = int(self._query("PRAGMA max_page_count")[0][0])
        used = pages - free
        return min(1.0, used / most) if most > 0 else 1.0

    # ------------------------------------------------------------------ writing

    def _write(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            if not self._db.in_transaction:
                self._db.execute("BEGIN")
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise JournalError(str(exc)) from exc

    def commit(self) -> None:
        """Make everything written so far durable (one fsync)."""
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise JournalError(str(exc)) from exc

    def record(self, event: Event, ts: float) -> None:
        """One safety event at unix time ``ts``; session events open and close sessions."""
        f = event.fields
        if event.type is EventType.SESSION_STARTED:
            self._open_session = int(str(f["session_id"]))
            self._top_speed = 0.0
            self._write(
                "INSERT INTO sessions (id, user, program, cap_s, started_at) VALUES (?,?,?,?,?)",
                (self._open_session, str(f["user"]), str(f["program"]), _real(f["cap_s"]), ts),
            )
        session = self._open_session
        self._write(
            "INSERT INTO events (ts, type, session_id, fields) VALUES (?,?,?,?)",
            (ts, event.type.value, session, _json(f)),
        )
        if event.type is EventType.SESSION_ENDED and session is not None:
            self._write(
                "UPDATE sessions SET ended_at = ?, end_reason = ?, belt_moving_s = ?,"
                " max_speed_mph = MAX(?, COALESCE("
                "  (SELECT MAX(speed_mph) FROM samples WHERE session_id = ?), 0))"
                " WHERE id = ?",
                (
                    ts,
                    str(f["reason"]),
                    _real(f.get("belt_moving_s")),
                    self._top_speed,
                    session,
                    session,
                ),
            )
            self._open_session = None

    def observe_speed(self, speed_mph: float) -> None:
        """A drive status during the open session: its top speed is kept exactly."""
        if self._open_session is not None and math.isfinite(speed_mph):
            self._top_speed = max(self._top_speed, speed_mph)

    def sample(self, ts: float, speed_mph: float, target_mph: float) -> None:
        """The belt's speed during the open session (for the report and the maximum)."""
        if self._open_session is not None:
            self._write(
                "INSERT INTO samples (session_id, ts, speed_mph, target_mph) VALUES (?,?,?,?)",
                (self._open_session, ts, _real(speed_mph), _real(target_mph)),
            )

    def close_interrupted(self, ts: float) -> list[int]:
        """At start-up: sessions a crash left open end as ``interrupted``, at their last
        record. Returns their ids."""
        open_ids = [
            int(r[0]) for r in self._query("SELECT id FROM sessions WHERE ended_at IS NULL")
        ]
        for session in open_ids:
            self._write(
                "UPDATE sessions SET end_reason = 'interrupted', ended_at = COALESCE("
                " (SELECT MAX(ts) FROM events WHERE session_id = ?), started_at),"
                " max_speed_mph = (SELECT MAX(speed_mph) FROM samples WHERE session_id = ?)"
                " WHERE id = ?",
                (session, session, session),
            )
            self._write(
                "INSERT INTO events (ts, type, session_id, fields) VALUES (?,?,?,?)",
                (ts, EventType.SESSION_ENDED.value, session, json.dumps({"reason": "interrupted"})),
            )
        self.commit()
        self._open_session = None
        return open_ids

    # ------------------------------------------------------------------ reading

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(str(exc)) from exc

    def _newest_open_session(self) -> int | None:
        rows = self._query("SELECT MAX(id) FROM sessions WHERE ended_at IS NULL")
        return None if rows[0][0] is None else int(rows[0][0])

    def last_session_id(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(id), 0) FROM sessions")[0][0])

    def has_history(self, user: str) -> bool:
        """Whether ``user`` has had a treadmill session: one that ended as planned or by the
        clinician, with the belt moving."""
        marks = ",".join("?" * len(HISTORY_REASONS))
        rows = self._query(
            f"SELECT 1 FROM sessions WHERE user = ? AND end_reason IN ({marks})"
            " AND belt_moving_s > 0 LIMIT 1",
            (user, *HISTORY_REASONS),
        )
        return bool(rows)

    def sessions(self, user: str | None = None) -> list[SessionRow]:
        sql = "SELECT * FROM sessions"
        args: tuple[Any, ...] = ()
        if user is not None:
            sql, args = sql + " WHERE user = ?", (user,)
        return [SessionRow(*row) for row in self._query(sql + " ORDER BY id", args)]

    def session(self, session_id: int) -> SessionRow | None:
        rows = self._query("SELECT * FROM sessions WHERE id = ?", (session_id,))
        return SessionRow(*rows[0]) if rows else None

    def events(self, session_id: int | None = None) -> list[EventRow]:
        """The events of one session, or (None) every event, in the order they happened."""
        if session_id is None:
            rows = self._query("SELECT ts, type, fields FROM events ORDER BY id")
        else:
            rows = self._query(
                "SELECT ts, type, fields FROM events WHERE session_id = ? ORDER BY id",
                (session_id,),
            )
        return [EventRow(ts, kind, json.loads(fields)) for ts, kind, fields in rows]

    def samples(self, session_id: int) -> list[tuple[float, float | None, float | None]]:
        rows = self._query(
            "SELECT ts, speed_mph, target_mph FROM samples WHERE session_id = ? ORDER BY ts",
            (session_id,),
        )
        return [(float(ts), speed, target) for ts, speed, target in rows]


def _json(fields: dict[str, Any]) -> str:
    """An event's fields as strict JSON; a non-finite number (999.9 mph from a Trackmaster in
    its emergency state is infinity) becomes null, as on MQTT."""
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in fields.items()
    }
    return json.dumps(clean, allow_nan=False, default=str)


def _real(value: object) -> float | None:
    """A number SQLite keeps exactly; a non-finite one (an unreadable drive) is NULL."""
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None
