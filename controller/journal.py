"""The session journal (SR-14): every session and every safety event, in SQLite.

WAL mode: writes gather in one open transaction; :meth:`Journal.commit` commits them and
syncs the write-ahead log (one fsync for the lot), after which they survive a power cut, as
with SQLite's ``synchronous=FULL``. The two halves can also be taken apart, so that the disk
holds up no one who need not wait for it: :meth:`Journal.commit_written` commits without a
sync (``synchronous=NORMAL``: the log is written and left to the page cache, safe from a crash
of the process; only a new log's header is synced at once), and :meth:`Journal.sync` makes
everything committed before it durable. ``sync`` never touches the writing connection, so
another thread may run it while this one goes on writing (the daemon's
journal_sync.JournalSync); :meth:`Journal.checkpoint` copies the log into the database on a
connection of its own, on any thread, once :meth:`Journal.wal_over_limit`.
:attr:`Journal.records` counts the safety records written (events, sessions), so a caller can
tell which of them a finished sync covered. The daemon commits before anything is published on
MQTT and at least every half second, and publishes only what a sync has covered, so nothing is
published or acknowledged before it is on disk, and a flood of events costs one sync per
batch.

Every failure is a :class:`JournalError` with SQLite's reason ("database or disk is full",
"attempt to write a readonly database", ...); the daemon turns it into a latched fault.
:meth:`Journal.used_fraction` says how close to its size limit it is, so the operator is warned
(at ``WARN_FRACTION``) well before that fault (SR-14).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import math
import os
import pwd
import re
import sqlite3
import threading
import unicodedata
from collections.abc import Collection, Mapping
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from treadguard.config.schema import (
    DriveSection,
    ModbusDriveSection,
    SimulatedDriveSection,
    TrackmasterDriveSection,
    TreadguardConfig,
)
from treadguard.controller.first_session import counts
from treadguard.controller.plan import UserRecord, outcomes_of
from treadguard.drivers.regular_file import read_regular_text
from treadguard.safety.decisions import Event, EventType
from treadguard.safety.limits import STANDSTILL_MPH
from treadguard.safety.stop_baseline import StopBaseline, StopKind
from treadguard.safety.stop_watch import baseline_problem

# The longest gap between two of a session's samples that counts as belt time when the
# session's own count was lost (controller/system.py samples at least every 0.5 s).
SAMPLE_GAP_S = 1.0


def _moving(speed: object) -> bool:
    return isinstance(speed, int | float) and math.isfinite(speed) and speed > STANDSTILL_MPH


# The journal's schema, one step a version: MIGRATIONS[n - 1] takes a journal from version
# n - 1 to n. SQLite keeps the version in the file's header (PRAGMA user_version), written in
# the same transaction as the step, so a journal is never left half migrated. A step is never
# edited once released: a change to the schema is a new step at the end. Every step is written
# so that it also applies to a journal that already has what it adds (IF NOT EXISTS): journals
# written before the version was kept (user_version 0 with tables) are brought up the same way.
_INDEXES_AND_COMPOSED_CODES = """
CREATE INDEX IF NOT EXISTS measures_by_recorded_at ON measures(recorded_at);
CREATE INDEX IF NOT EXISTS measures_by_day ON measures(user, kind, measured_on);
CREATE INDEX IF NOT EXISTS sessions_by_user ON sessions(user);
CREATE INDEX IF NOT EXISTS events_by_session_and_type ON events(session_id, type);
-- Their first columns serve the reads of the two they replace, at the cost of one.
DROP INDEX IF EXISTS events_by_session;
DROP INDEX IF EXISTS measures_by_user;
-- Users' codes in Unicode's composed form, the only one the contract takes now: a code an
-- older treadguard took in another form ("e" and a combining accent) is the same text, and
-- its record would otherwise be out of reach of the tablet and split from the new one's.
UPDATE sessions SET user = treadguard_nfc(user) WHERE user <> treadguard_nfc(user);
UPDATE measures SET user = treadguard_nfc(user) WHERE user <> treadguard_nfc(user);
"""
MIGRATIONS: tuple[str, ...] = (
    # 1: sessions, their events and the belt's speed.
    """
CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,            -- the tablet contract's session id, unique per treadmill
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
""",
    # 2: treadguard commission (docs/commissioning.md): one row a run, one a proven stop.
    """
CREATE TABLE IF NOT EXISTS commissioning (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL,          -- unix seconds
    ended_at REAL,
    outcome TEXT,                      -- passed, failed, aborted; NULL: under way or cut short
    detail TEXT NOT NULL DEFAULT '',
    technician TEXT NOT NULL DEFAULT '',
    simulated INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS commissioning_proofs (
    commissioning_id INTEGER NOT NULL REFERENCES commissioning(id),
    ts REAL NOT NULL,
    step TEXT NOT NULL,                -- estop, grip_left, grip_right, grips, fall, deadman, cap
    kind TEXT,                         -- the baseline it counts towards: emergency, controlled
    passed INTEGER NOT NULL,
    standstill_s REAL,                 -- the stop's trigger to standstill
    deceleration_mph_per_s REAL,       -- the belt's speed at the trigger over standstill_s
    detail TEXT NOT NULL DEFAULT ''
);
""",
    # 3: a user's measures (docs/plan.md): TUG, KOOS or WOMAC, 10 m walk, with the day taken.
    """
CREATE TABLE IF NOT EXISTS measures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    kind TEXT NOT NULL,                -- contract/measures.py's MeasureKind
    value REAL NOT NULL,
    measured_on TEXT NOT NULL,         -- the day it was taken, YYYY-MM-DD in the clinic's zone
    recorded_at REAL NOT NULL,         -- unix seconds
    clinician TEXT
);
CREATE INDEX IF NOT EXISTS measures_by_user ON measures(user);
""",
    # 4: what the command path reads, read through an index: record_measure counts the
    # clinic's measures of today and the user's of the day, start_session reads the user's
    # sessions and their confirmations, ahead of any estop behind them, and a read that grows
    # with the years held one back by seconds (a count over 300,000 measures; every event of
    # a user's 600 sessions walked for the confirmations among them).
    _INDEXES_AND_COMPOSED_CODES,
    # 5: the same again. Version 4 was first released with two of these indexes and without
    # composing the codes: a journal it wrote says 4 and has neither. Every statement is
    # idempotent, so on a journal that has them this step changes nothing.
    _INDEXES_AND_COMPOSED_CODES,
    # 6: what a commissioning run proved: which treadmill (treadmill.id) and which drive (its
    # kind and where it is reached, Machine). A run recorded before has neither (NULL) and
    # counts for no treadmill: it must be run again (docs/commissioning.md).
    """
ALTER TABLE commissioning ADD COLUMN treadmill TEXT;
ALTER TABLE commissioning ADD COLUMN drive TEXT;
""",
)
SCHEMA_VERSION = len(MIGRATIONS)

# The share of journal.max_size_mb at which the operator is warned: at the coalesced rate of
# refusals and a session's samples, the last fifth still lasts hours.
WARN_FRACTION = 0.8


DAY_S = 86_400.0
# How long a sync waits for one under way on another thread (see Journal.sync).
SYNC_LOCK_WAIT_S = 2.0
# The steps a commissioning run proves, each of which a passed run must have a passed proof of
# (controller/commission.py's ProofStep; a test keeps the two the same).
PROOF_STEPS = ("estop", "grip_left", "grip_right", "grips", "fall", "deadman", "cap")


class JournalError(Exception):
    pass


class NoJournal(JournalError):
    """No journal file where the configuration says: nothing is on record (yet)."""


class NotReadableHere(JournalError):
    """A file of the journal this user may not read, though it is there: what it says is not
    known here (the service, as its own user, reads it)."""


class JournalInUse(JournalError):
    """The journal's lock is held by another process (the daemon, a commissioning run): this
    one must not drive the treadmill, nor speak for it on MQTT (docs/daemon.md)."""


class CommissioningOutcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ABORTED = "aborted"


@dataclass(frozen=True)
class ProofRecord:
    """One stop source proven (or not) during a commissioning run. ``kind``: the baseline the
    stop counts towards (None for a proof that measures no stop of treadguard's own, such as
    one grip released, or the drive's own deadman)."""

    step: str
    kind: StopKind | None
    passed: bool
    standstill_s: float | None = None
    deceleration_mph_per_s: float | None = None
    detail: str = ""


# The drive identity of the built-in simulated drive (Machine.drive).
SIMULATOR_DRIVE = "simulator"


def drive_identity(drive: DriveSection) -> str:
    """Which drive a commissioning proved: its kind and where it is reached (the serial port,
    the Modbus host and port or serial port, and the unit on that bus, with the register map
    that says what its registers mean). Settings of the same wire (baud, parity, poll
    interval, speed scale) are not part of it: they do not make it another drive."""
    if isinstance(drive, SimulatedDriveSection):
        return SIMULATOR_DRIVE
    if isinstance(drive, TrackmasterDriveSection):
        return f"trackmaster on {drive.port}"
    assert isinstance(drive, ModbusDriveSection)
    where = f"{drive.host}:{drive.tcp_port}" if drive.transport == "tcp" else str(drive.serial_port)
    return (
        f"modbus {drive.transport} {where} unit {drive.device_id} "
        f"(register map {drive.register_map.as_posix()})"
    )


@dataclass(frozen=True)
class Machine:
    """This treadmill on this drive, as a commissioning run records what it proved and as the
    running configuration says what it drives: ``treadmill``, the configuration's
    ``treadmill.id``; ``drive``, :func:`drive_identity`."""

    treadmill: str
    drive: str

    @classmethod
    def of(cls, config: TreadguardConfig) -> Machine:
        return cls(config.treadmill.id, drive_identity(config.drive))

    @property
    def simulator(self) -> bool:
        """Its drive is the built-in simulated one (which a simulated run may prove)."""
        return self.drive == SIMULATOR_DRIVE

    def __str__(self) -> str:
        return f"treadmill {self.treadmill} / drive {self.drive}"


@dataclass(frozen=True)
class CommissioningRow:
    id: int
    started_at: float
    ended_at: float | None
    outcome: str | None
    detail: str
    technician: str
    simulated: bool
    # What it proved (None: recorded before treadguard kept it; it counts for nothing).
    treadmill: str | None = None
    drive: str | None = None

    def not_counted(self, machine: Machine) -> str | None:
        """Why this run proves nothing for ``machine`` (the running configuration's), or None
        when it may count: a run counts only for the treadmill and drive it was made on, and
        a run on the simulator only for a treadmill whose drive is the simulator."""
        if self.treadmill is None or self.drive is None:
            return (
                "made before treadguard recorded which treadmill and drive a run proves: a "
                "commissioning must be run again"
            )
        if self.simulated and not machine.simulator:
            return "made on the simulator"
        if (self.treadmill, self.drive) != (machine.treadmill, machine.drive):
            return f"made for treadmill {self.treadmill} / drive {self.drive}, not {machine}"
        return None


@dataclass(frozen=True)
class CommissioningStatus:
    """Whether the treadmill's commissioning is current at ``now`` (unix seconds).

    Fail closed: no passed run on record, a journal that cannot be read, or a record dated
    after now (the clock went back, or the record is not to be trusted) is not current."""

    current: bool
    detail: str
    passed_at: float | None = None
    expires_at: float | None = None
    last_run: CommissioningRow | None = None
    # The passed run the status rests on (its proofs are the baselines), if any.
    run: int | None = None
    # False: a file of the record this user may not read; whether it is current is not known
    # here (not current for this reader, fail closed).
    known: bool = True

    def as_json(self) -> dict[str, Any]:
        last = self.last_run
        return {
            "current": self.current,
            "known": self.known,
            "detail": self.detail,
            "passed_at": self.passed_at,
            "expires_at": self.expires_at,
            "last_run": None
            if last is None
            else {"id": last.id, "outcome": last.outcome, "ended_at": last.ended_at},
        }


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
class MeasureRow:
    """One of a user's measures, as recorded (``kind``: contract/measures.py's MeasureKind)."""

    id: int
    user: str
    kind: str
    value: float
    measured_on: str  # YYYY-MM-DD, the clinic's day
    recorded_at: float  # unix seconds
    clinician: str | None


@dataclass(frozen=True)
class EventRow:
    ts: float
    type: str
    fields: dict[str, Any]


class Journal:
    def __init__(
        self,
        connection: sqlite3.Connection,
        *,
        lock: int | None = None,
        path: Path | None = None,
        wal_limit_bytes: int = 0,
    ) -> None:
        self._db = connection
        self._lock = lock  # the exclusive lock's file descriptor, released by close()
        self._named: Path | None = None  # the name it was opened by, to write (see replaced)
        # The database file's last write time and size as this journal's own checkpoints left
        # them (WAL mode: nothing else of ours writes that file): see replaced.
        self._written: tuple[int, int] | None = None
        # The journal's commissioning seal (see seal_of), for a journal in a file.
        self._seal: Path | None = None if path is None else seal_of(path)
        self._open_session: int | None = self.newest_open_session()
        self._top_speed = 0.0  # of the open session, from every drive status
        # The session that has ended while its belt still runs down (see sample).
        self._running_down: int | None = None
        # Safety records written so far (never samples): which ones a sync covered.
        self.records = 0
        # SQLite's journal mode: "wal" for a journal opened to write, unless the file system
        # refused it (see open).
        self.mode = "wal"
        # What sync() uses, under _sync_lock (it may run on another thread): the database's
        # path (None: in memory or read-only, nothing to sync), the log's descriptor and
        # inode, and a connection of its own for checkpoints once the log passes its limit.
        self._path = path
        self._wal_limit_bytes = wal_limit_bytes
        self._sync_lock = threading.Lock()
        self._checkpoint_lock = threading.Lock()
        self._wal_fd: int | None = None
        self._wal_ino: int | None = None
        self._checkpointer: sqlite3.Connection | None = None

    @classmethod
    def open(cls, path: Path, *, max_size_mb: float = 512.0, exclusive: bool = False) -> Journal:
        """``exclusive``: this process is the only one to drive the treadmill on this journal
        (the daemon, a commissioning run): a lock on the journal file itself (an flock on its
        inode, whatever name reaches it, which the system drops when the process ends,
        however it ends) is taken first, and a
        journal another process holds is a :class:`JournalInUse`. Two of them would each number
        sessions on their own and close the other's open session as interrupted."""
        lock = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if exclusive:
                lock = _lock(path)
            # Autocommit mode: this class says where a transaction begins and ends.
            db = sqlite3.connect(path, isolation_level=None)
            mode = str(db.execute("PRAGMA journal_mode=WAL").fetchone()[0]).lower()
            if mode != "wal":
                # A file system where SQLite cannot keep a write-ahead log: every commit
                # syncs where it is made (slow, and on the caller's thread, but never a record
                # published unsynced). The daemon says so at start-up (journal_not_wal).
                db.execute("PRAGMA synchronous=FULL")
                cls._prepare(db, max_size_mb)
                journal = cls(db, lock=lock)
                journal.mode = mode
                journal._named = path
                journal._seal = seal_of(path.resolve())
                return journal
            # NORMAL: a commit does not sync the log (sync() does, where its caller wants),
            # but a new log's header is synced before any frame is written behind it, so a
            # power cut while the log starts again cannot bring back frames of the old one
            # over newer pages. No automatic checkpoint (it would sync in the commit):
            # checkpoint() makes them, on a connection of its own.
            db.execute("PRAGMA synchronous=NORMAL")
            cls._prepare(db, max_size_mb)
            wal_limit = int(db.execute("PRAGMA journal_size_limit").fetchone()[0])
            db.execute("PRAGMA wal_autocheckpoint=0")
            # The log started here, with its header's sync, rather than at the first record
            # of the first session, where that sync would hold up the caller.
            db.execute("BEGIN IMMEDIATE")
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            db.execute(f"PRAGMA user_version={version}")
            db.execute("COMMIT")
            # The file as SQLite names it, symbolic links resolved: its log is beside that
            # file, not beside a link to it, and that log is the one to sync.
            file = Path(str(db.execute("PRAGMA database_list").fetchone()[2]))
        except (OSError, sqlite3.Error, JournalError) as exc:
            if lock is not None:
                os.close(lock)
            if isinstance(exc, JournalInUse):
                raise JournalInUse(f"cannot open {path}: {exc}") from exc
            raise JournalError(f"cannot open {path}: {exc}") from exc
        journal = cls(db, lock=lock, path=file, wal_limit_bytes=wal_limit)
        journal._named = path
        journal._note_written()
        return journal

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
            # checkpoint at a tenth of the limit and cut the log back to that. (A journal open
            # to write checkpoints between sessions instead, see open and checkpoint: the log
            # may then pass a tenth by what one session writes, some 16 KB a second.)
            wal_pages = max(8, most // 10)
            db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
            db.execute(f"PRAGMA journal_size_limit={wal_pages * page_size}")
            _migrate(db)
        except (sqlite3.Error, JournalError):
            db.close()
            raise

    @classmethod
    def read_only(cls, path: Path, *, identity: str | None = None) -> Journal:
        """For ``treadguard history`` and ``report``: never writes, never creates.

        ``identity``: the file the daemon writes (its :meth:`identity`), for a reader on the
        daemon's behalf (a history query, the proposal worker): a file put at ``path`` since
        the daemon opened its own is another journal, and is not read."""
        try:
            found = path.is_file()
        except OSError as exc:  # a folder on the way that this user may not enter
            raise JournalError(f"cannot read {path}: {_os_reason(exc)}") from exc
        if not found:
            if os.path.lexists(path):  # a folder, a pipe, a link to nothing: there, no journal
                raise JournalError(
                    f"cannot read {path}: not a regular file (a folder, a pipe or a link to "
                    "nothing): the journal is a file"
                )
            raise NoJournal(f"no journal at {path}")
        db: sqlite3.Connection | None = None
        try:
            _same_file(path, identity)
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
            db.execute("SELECT 1 FROM sessions LIMIT 1")
            # An older journal reads as it is (a table it lacks reads as empty where that is
            # safe, see commissioning_status); a newer one may mean something this version
            # cannot tell, so it is not read at all.
            _refuse_newer(schema_version(db))
            # Again once open: a file swapped in between the look and the open is not read.
            _same_file(path, identity)
        except (OSError, sqlite3.Error, JournalError) as exc:
            if db is not None:
                db.close()
            if isinstance(exc, OSError):
                raise JournalError(f"cannot read {path}: {_os_reason(exc)}") from exc
            if isinstance(exc, sqlite3.Error) and not os.access(path, os.R_OK):
                denied = PermissionError(errno.EACCES, "Permission denied")
                raise JournalError(f"cannot read {path}: {_os_reason(denied)}") from exc
            raise JournalError(f"cannot read {path}: {exc}") from exc
        journal = cls(db)
        journal._seal = seal_of(path.resolve())
        return journal

    def _written_by_another(self) -> str | None:
        """Why the database file was written by something other than this journal's own
        checkpoints (a copy put over it in place: ``cp BACKUP journal.sqlite`` keeps the file
        and rewrites its pages under the daemon's open connection), or None. Not looked at
        while a checkpoint runs (it is writing the file)."""
        if self._written is None or self._lock is None:
            return None
        if not self._checkpoint_lock.acquire(blocking=False):
            return None
        try:
            st = os.fstat(self._lock)
            if (st.st_mtime_ns, st.st_size) == self._written:
                return None
        finally:
            self._checkpoint_lock.release()
        return (
            f"{self._named} was written by another program while treadguard ran (a copy put "
            "over it in place, or an sqlite3 command that wrote to it, a checkpoint included): "
            "its pages may no longer be the ones this daemon wrote; restart treadguard, and "
            "open the journal with other programs only with the service stopped"
        )

    def identity(self) -> str | None:
        """The file this journal writes, as :func:`file_identity` names it: None when it is
        not open to write (in memory, read-only)."""
        if self._lock is None:
            return None
        return _identity(os.fstat(self._lock))

    def replaced(self) -> str | None:
        """Why the name this journal was opened by no longer leads to its file (the file
        removed, renamed, or another put in its place, a link re-pointed), or None. What is
        written after that is lost with the file nobody can name: the journal has failed."""
        if self._lock is None or self._named is None:
            return None
        try:
            named = file_identity(self._named)
        except OSError as exc:
            named = f"nothing ({exc.strerror or exc})"
        if named == self.identity():
            return self._written_by_another()
        return (
            f"{self._named} is no longer the journal this daemon opened (it leads to {named}: "
            "the file was moved, removed or replaced while treadguard ran); what is written "
            "now would be lost: restart treadguard to write the journal at that path"
        )

    def close(self) -> None:
        try:
            with self._checkpoint_lock:  # a checkpoint under way on another thread ends first
                if self._checkpointer is not None:
                    self._checkpointer.close()
                    self._checkpointer = None
            with self._sync_lock:  # and a sync
                if self._wal_fd is not None:
                    os.close(self._wal_fd)
                    self._wal_fd = None
            self._db.close()
        finally:
            if self._lock is not None:
                os.close(self._lock)  # closing the descriptor releases the lock
                self._lock = None

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
        """Make everything written so far durable (one fsync), here and now; and, should the
        log have passed its limit, checkpoint it (the daemon does that on a worker instead,
        between sessions: journal_sync.JournalSync)."""
        self.commit_written()
        self.sync()
        if self.wal_over_limit():
            self.checkpoint()

    def commit_written(self) -> None:
        """Commit everything written so far, without a sync: other connections see it, a
        crash of this process loses none of it, a power cut may, until :meth:`sync`."""
        try:
            if self._db.in_transaction:
                self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise JournalError(str(exc)) from exc

    def sync(self) -> None:
        """Make everything committed before this call durable: the write-ahead log synced
        (with its folder, the first time a log file is seen). One fdatasync, nothing else.

        Safe on any thread while another writes and commits: it uses its own descriptor of
        the log, never the writing connection. Nothing to do for a journal in memory or a
        read-only one."""
        if self._path is None:
            return
        # Behind a sync on another thread that the disk does not answer, a caller waits a
        # bounded time and is told, rather than hang (the daemon's loop, commissioning).
        if not self._sync_lock.acquire(timeout=SYNC_LOCK_WAIT_S):
            raise JournalError(
                f"cannot sync {self._path}: another sync has not ended in {SYNC_LOCK_WAIT_S:g} s"
            )
        try:
            fd = self._wal()
            if fd is not None:  # None: no log yet, nothing committed since the last one
                os.fdatasync(fd)
        except OSError as exc:
            raise JournalError(f"cannot sync {self._path}: {_reason_of(exc)}") from exc
        finally:
            self._sync_lock.release()

    def wal_over_limit(self) -> bool:
        """Whether the write-ahead log has grown past journal_size_limit (a checkpoint is due).
        Safe on any thread."""
        if self._path is None or self._wal_limit_bytes <= 0:
            return False
        try:
            return Path(f"{self._path}-wal").stat().st_size > self._wal_limit_bytes
        except OSError:
            return False

    def _wal(self) -> int | None:
        """The log's descriptor (under _sync_lock), opened again should the file there now be
        another one, so a sync never flushes a file SQLite no longer writes."""
        assert self._path is not None
        wal = Path(f"{self._path}-wal")
        try:
            ino = wal.stat().st_ino
        except FileNotFoundError:
            return None
        if self._wal_fd is not None and ino == self._wal_ino:
            return self._wal_fd
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        self._wal_fd = os.open(wal, os.O_RDONLY)
        self._wal_ino = os.fstat(self._wal_fd).st_ino
        # A new file's name must survive a power cut too, as SQLite syncs a new log's folder.
        _sync_dir(wal.parent)
        return self._wal_fd

    def checkpoint(self) -> None:
        """Copy the log into the database, on a connection of its own (synchronous=FULL: the
        log synced before pages are copied, the database before the log may start again).
        PASSIVE: it never waits for the writer, and the writer never waits for it; once all of
        the log is copied the writer's next transaction starts it again and cuts it back to
        journal_size_limit. With the writer busy it may copy only part; the daemon runs it
        between sessions, when nothing is written. Safe on any thread."""
        if self._path is None:
            return
        with self._checkpoint_lock:
            try:
                if self._checkpointer is None:
                    # timeout 0: the log's restart below is skipped rather than waited for
                    # while the writer holds its transaction open.
                    db = sqlite3.connect(
                        self._path, isolation_level=None, check_same_thread=False, timeout=0.0
                    )
                    db.execute("PRAGMA synchronous=FULL")
                    db.execute(f"PRAGMA journal_size_limit={self._wal_limit_bytes}")
                    self._checkpointer = db
                db = self._checkpointer
                _, log, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if log > 0 and copied == log:
                    # All of it copied: start the log over here, header synced on this thread,
                    # rather than in the writer's next commit on the caller's.
                    db.execute("BEGIN IMMEDIATE")
                    version = int(db.execute("PRAGMA user_version").fetchone()[0])
                    db.execute(f"PRAGMA user_version={version}")
                    db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise JournalError(f"cannot checkpoint {self._path}: {exc}") from exc
                if self._checkpointer is not None and self._checkpointer.in_transaction:
                    self._checkpointer.execute("ROLLBACK")  # the writer was busy: next time
            except sqlite3.Error as exc:
                raise JournalError(f"cannot checkpoint {self._path}: {exc}") from exc
            finally:
                self._note_written()

    def _note_written(self) -> None:
        """What this journal's own writing has left of its database file (at open, and after
        each checkpoint, under the checkpoint's lock)."""
        if self._lock is None or self.mode != "wal":
            return
        try:
            st = os.fstat(self._lock)
        except OSError:
            return  # the descriptor is the lock's own: this cannot fail while it is open
        self._written = (st.st_mtime_ns, st.st_size)

    def record(self, event: Event, ts: float) -> None:
        """One safety event at unix time ``ts``; session events open and close sessions."""
        f = event.fields
        if event.type is EventType.SESSION_STARTED:
            self._running_down = None
            self._open_session = int(str(f["session_id"]))
            self._top_speed = 0.0
            self._write(
                "INSERT INTO sessions (id, user, program, cap_s, started_at) VALUES (?,?,?,?,?)",
                (self._open_session, str(f["user"]), str(f["program"]), _real(f["cap_s"]), ts),
            )
        session = self._open_session
        if event.type in _UNDER_ITS_SESSION:
            session = int(str(f["session_id"]))  # entered after its session, or before it
        elif event.type is EventType.STOP_CHECKED and f.get("session_id") is not None:
            # Judged once the belt stood: the next session may have started by then.
            session = int(str(f["session_id"]))
        elif event.type is EventType.MEASURE_RECORDED:
            session = None  # the user's, not a session's
            self._write(
                "INSERT INTO measures (user, kind, value, measured_on, recorded_at, clinician)"
                " VALUES (?,?,?,?,?,?)",
                (str(f["user"]), str(f["kind"]), _real(f["value"]), str(f["date"]), ts,
                 None if f.get("clinician") is None else str(f["clinician"])),
            )  # fmt: skip
        self._write(
            "INSERT INTO events (ts, type, session_id, fields) VALUES (?,?,?,?)",
            (ts, event.type.value, session, _json(f)),
        )
        self.records += 1
        if event.type is EventType.FAULT and self._seal is not None:
            # A fault (a worn brake's among them) is on record: an older copy of the journal
            # put in its place later must not come back without it (see seal_of).
            self.commit()
            self._write_seal(ts)
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
            self._running_down = session
            self._open_session = None

    def observe_speed(self, speed_mph: float) -> None:
        """A drive status during the open session: its top speed is kept exactly."""
        if self._open_session is not None and math.isfinite(speed_mph):
            self._top_speed = max(self._top_speed, speed_mph)

    def sample(self, ts: float, speed_mph: float, target_mph: float) -> None:
        """The belt's speed during the open session (for the report and the maximum), and
        after it has ended until the belt stands still: a stop's run-down is on the record
        too. The first sample at standstill, or with the speed unknown, is the last of it."""
        session = self._open_session
        if session is None:
            session = self._running_down
            if session is None:
                return
            if not (math.isfinite(speed_mph) and speed_mph > STANDSTILL_MPH):
                self._running_down = None
        self._write(
            "INSERT INTO samples (session_id, ts, speed_mph, target_mph) VALUES (?,?,?,?)",
            (session, ts, _real(speed_mph), _real(target_mph)),
        )

    def begin_commissioning(
        self, ts: float, *, technician: str, simulated: bool, machine: Machine
    ) -> int:
        """A commissioning run begins (committed at once: a run cut short stays on record,
        with no outcome), recording what it proves: ``machine``, on the simulator or not.

        On a journal older than its seal (an older copy put in its place), every pass it holds
        is withdrawn first, on record, for each treadmill it was made for: the run's seal
        follows this journal from then on, and must not bring those passes back (another
        treadmill's run on this journal counts for that one alone)."""
        try:
            older = self._older_than_its_seal()
        except JournalError as exc:  # a seal that cannot be read: fail closed, the same
            older = str(exc)
        if older is not None:
            self._withdraw_passes(ts, older)
        cur = self._write(
            "INSERT INTO commissioning (started_at, technician, simulated, treadmill, drive)"
            " VALUES (?,?,?,?,?)",
            (ts, technician, int(simulated), machine.treadmill, machine.drive),
        )
        self.commit()
        # A run begins: the seal follows this journal from now on, whatever it said (a
        # journal older than its seal is brought back into service only by a run that passes).
        self._write_seal(ts, fresh=True)
        return int(cur.lastrowid or 0)

    def _withdraw_passes(self, ts: float, why: str) -> None:
        """For each treadmill and drive with a passed run on record, a run of it that did not
        pass, saying ``why``: no pass before it counts (see _commissioning_status)."""
        machines = self._query(
            "SELECT DISTINCT treadmill, drive FROM commissioning WHERE outcome = ?",
            (CommissioningOutcome.PASSED.value,),
        )
        for treadmill, drive in machines:
            self._write(
                "INSERT INTO commissioning (started_at, ended_at, outcome, detail, technician,"
                " simulated, treadmill, drive) VALUES (?,?,?,?,?,?,?,?)",
                (
                    ts,
                    ts,
                    CommissioningOutcome.ABORTED.value,
                    f"the journal was found older than its seal as a commissioning run began "
                    f"({why}): no pass before this counts; commission the treadmill again",
                    OLDER_THAN_SEAL_TECHNICIAN,
                    0,
                    treadmill,
                    drive,
                ),
            )
        self.commit()

    def record_proof(self, run: int, proof: ProofRecord, ts: float) -> None:
        self._write(
            "INSERT INTO commissioning_proofs (commissioning_id, ts, step, kind, passed,"
            " standstill_s, deceleration_mph_per_s, detail) VALUES (?,?,?,?,?,?,?,?)",
            (
                run,
                ts,
                proof.step,
                None if proof.kind is None else proof.kind.value,
                int(proof.passed),
                _real(proof.standstill_s),
                _real(proof.deceleration_mph_per_s),
                proof.detail,
            ),
        )
        self.commit()

    def end_commissioning(
        self, run: int, ts: float, outcome: CommissioningOutcome, detail: str = ""
    ) -> None:
        self._write(
            "UPDATE commissioning SET ended_at = ?, outcome = ?, detail = ? WHERE id = ?",
            (ts, outcome.value, detail, run),
        )
        self.commit()
        self._write_seal(ts)

    def _write_seal(self, ts: float, *, fresh: bool = False) -> None:
        """The seal (see seal_of) names the journal's newest commissioning run and event, each
        by its number and what it holds, as committed and synced; written whole or not at all.
        The journal is marked as sealed (its SQLite application id) once the seal is there: a
        sealed journal found without its seal was copied or moved without it.

        Only forward: a journal older than its seal (an older copy put in its place) never
        writes over it, or its own fault would make the seal name the copy and bring the
        copy's pass back. ``fresh``: a commissioning run begins, and the seal follows this
        journal whatever it said."""
        seal = self._seal
        if seal is None:
            return
        if not fresh:
            try:
                older = self._older_than_its_seal()
            except JournalError:
                older = "its seal cannot be read"
            if older is not None:
                return  # the status says why: this journal stays out until a run passes
        run = int(self._query("SELECT COALESCE(MAX(id), 0) FROM commissioning")[0][0])
        event = int(self._query("SELECT COALESCE(MAX(id), 0) FROM events")[0][0])
        marks = {
            "run": run,
            "run_mark": self._run_mark(run),
            "event": event,
            "event_mark": self._event_mark(event),
            "written_at": ts,
        }
        partial = seal.with_name(f".{seal.name}.partial-{os.getpid()}")
        try:
            with open(partial, "w", encoding="utf-8") as out:
                json.dump(marks, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(partial, seal)
            _sync_dir(seal.parent)
        except OSError as exc:
            partial.unlink(missing_ok=True)
            raise JournalError(f"cannot write {seal}: {exc.strerror or exc}") from exc
        if not self.sealed():
            try:
                self._db.execute(f"PRAGMA application_id={SEALED_APPLICATION_ID}")
            except sqlite3.Error as exc:
                raise JournalError(f"cannot mark the journal as sealed: {exc}") from exc
            self.commit()

    def _run_mark(self, run: int) -> str | None:
        """What names commissioning run ``run`` for the seal: its number and its start, to the
        last bit of the clock (its outcome comes later; an earlier release's journal has no
        more columns); None if there is no such run (0: none)."""
        rows = self._query("SELECT id, started_at FROM commissioning WHERE id = ?", (run,))
        return _mark(rows[0]) if rows else None

    def _event_mark(self, event: int) -> str | None:
        """What names event ``event`` for the seal: everything it holds; None if none."""
        rows = self._query(
            "SELECT id, ts, type, session_id, fields FROM events WHERE id = ?", (event,)
        )
        return _mark(rows[0]) if rows else None

    def sealed(self) -> bool:
        """Whether this journal has had a seal written beside it (its application id)."""
        return int(self._query("PRAGMA application_id")[0][0]) == SEALED_APPLICATION_ID

    def _older_than_its_seal(self) -> str | None:
        """Why this journal is older than its seal says (an older copy put in its place, or
        one moved without its seal), or None. JournalError if the seal cannot be read."""
        seal = self._seal
        if seal is None:
            return None
        if not seal.exists():
            if not self.sealed():
                return None  # never sealed: a journal from before seals, or in memory
            return (
                f"the journal's commissioning seal {seal} is missing: the journal was copied "
                "or moved without it (or it was deleted), so what was proven since the copy "
                "cannot be told; commission the treadmill again"
            )
        try:
            try:
                text = read_regular_text(seal)
            except PermissionError as exc:
                raise NotReadableHere(f"{seal} cannot be read: {_os_reason(exc)}") from exc
            marks = json.loads(text)
            run, event = marks["run"], marks["event"]
            run_mark, event_mark = marks["run_mark"], marks["event_mark"]
        except KeyError as exc:
            raise JournalError(
                f"{seal} names no {exc.args[0]} (a seal of an earlier release, or edited): "
                "commission the treadmill again"
            ) from exc
        except (OSError, ValueError, TypeError) as exc:
            raise JournalError(f"{seal} cannot be read ({exc})") from exc
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (run, event)):
            raise JournalError(f"{seal} names no run or event ({run!r}, {event!r})")
        # The very run and event the seal saw, by what they hold: a journal grows, so an older
        # copy soon has as many events as the seal names, never those events.
        if self._run_mark(run) != run_mark:
            lacks = f"commissioning run no. {run}"
        elif self._event_mark(event) != event_mark:
            lacks = f"event no. {event} (a fault, a stop found slow)"
        else:
            return None
        return (
            f"the journal has no {lacks}, which {seal} says was recorded: it is an older "
            "copy put in the journal's place (a backup restored, say), without what was "
            "proven or found since; commission the treadmill again"
        )

    def close_interrupted(self, ts: float) -> list[int]:
        """At start-up: sessions a crash left open end as ``interrupted``, at their last
        record, event or sample of the belt. Returns their ids."""
        open_ids = [
            int(r[0]) for r in self._query("SELECT id FROM sessions WHERE ended_at IS NULL")
        ]
        for session in open_ids:
            self._write(
                # The last record of either kind: the belt's samples go on after the last
                # event (a session's belt ran for minutes after its belt_started).
                "UPDATE sessions SET end_reason = 'interrupted', ended_at = MAX("
                " COALESCE((SELECT MAX(ts) FROM events WHERE session_id = ?), started_at),"
                " COALESCE((SELECT MAX(ts) FROM samples WHERE session_id = ?), started_at)),"
                " max_speed_mph = (SELECT MAX(speed_mph) FROM samples WHERE session_id = ?)"
                " WHERE id = ?",
                (session, session, session, session),
            )
            belt = self._belt_time_sampled(session)
            self._write("UPDATE sessions SET belt_moving_s = ? WHERE id = ?", (belt, session))
            self._write(
                "INSERT INTO events (ts, type, session_id, fields) VALUES (?,?,?,?)",
                (
                    ts,
                    EventType.SESSION_ENDED.value,
                    session,
                    json.dumps({"reason": "interrupted", "belt_moving_s": belt}),
                ),
            )
        self.commit()
        self._open_session = None
        return open_ids

    def _belt_time_sampled(self, session: int) -> float:
        """A session's belt time as its samples show it, never more than the belt surely ran
        (the record of a session a crash cut short: the safety core's count was lost). Time
        counts between two samples with the belt moving, at most SAMPLE_GAP_S of it: samples
        come at least twice a second, so a longer gap is a stall in which the belt may have
        stopped."""
        rows = self._query(
            "SELECT ts, speed_mph FROM samples WHERE session_id = ? ORDER BY ts", (session,)
        )
        belt = 0.0
        for (t0, v0), (t1, v1) in itertools.pairwise(rows):
            if _moving(v0) and _moving(v1) and t1 > t0:
                belt += min(float(t1) - float(t0), SAMPLE_GAP_S)
        return round(belt, 3)

    # ------------------------------------------------------------------ reading

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(str(exc)) from exc

    def last_brake_fault(self, marker: str) -> tuple[float, str, str] | None:
        """The newest fault whose detail begins with ``marker`` (the stop-quality watch's
        worn-brake fault): its time (unix seconds), the kind of stop that was too slow (from
        the maintenance warning before it; "emergency" if none says) and its detail."""
        rows = self._query(
            "SELECT id, ts, fields FROM events WHERE type = 'fault' ORDER BY id DESC"
        )
        for event_id, ts, fields in rows:
            detail = str(json.loads(fields).get("detail", ""))
            if not detail.startswith(marker + ":"):
                continue
            kind = "emergency"
            warned = self._query(
                "SELECT fields FROM events WHERE type = 'maintenance_warning' AND id < ?"
                " ORDER BY id DESC LIMIT 1",
                (event_id,),
            )
            if warned:
                kind = str(json.loads(warned[0][0]).get("kind", kind))
            return float(ts), kind, detail
        return None

    def slow_stops_in_a_row(self, since: float) -> dict[StopKind, int]:
        """Per kind of stop, how many stops were judged slow in a row, newest first, among the
        stop_checked events after ``since`` (the last passed commissioning): a good stop ends
        the run; a stop not judged (no baseline, too slow a belt to tell) leaves it as it is,
        as the watch itself does. A restart then carries the count on: a brake slow once
        before the board was switched off and once after is twice in a row."""
        counts: dict[StopKind, int] = {}
        done: set[StopKind] = set()
        rows = self._query(
            "SELECT fields FROM events WHERE type = 'stop_checked' AND ts > ? ORDER BY id DESC",
            (since,),
        )
        for (fields,) in rows:
            try:
                checked = json.loads(fields)
                kind = StopKind(checked.get("kind"))
            except (ValueError, TypeError):
                continue
            if kind in done:
                continue
            verdict = checked.get("verdict")
            if verdict == "slow":
                counts[kind] = counts.get(kind, 0) + 1
            elif verdict == "good":
                done.add(kind)
        return counts

    def newest_open_session(self) -> int | None:
        """The newest session not ended (the one under way, if any)."""
        rows = self._query("SELECT MAX(id) FROM sessions WHERE ended_at IS NULL")
        return None if rows[0][0] is None else int(rows[0][0])

    def newest_session_of(self, user: str) -> int | None:
        """The id of ``user``'s newest session but those that ended with the belt never
        moving (a start stopped in its countdown), None if they have none."""
        rows = self._query(
            "SELECT MAX(id) FROM sessions WHERE user = ?"
            " AND NOT (ended_at IS NOT NULL AND belt_moving_s IS NOT NULL AND belt_moving_s <= 0)",
            (user,),
        )
        return None if rows[0][0] is None else int(rows[0][0])

    def last_session_id(self) -> int:
        return int(self._query("SELECT COALESCE(MAX(id), 0) FROM sessions")[0][0])

    def has_history(
        self,
        user: str,
        min_belt_s: Mapping[str, float] | None = None,
        *,
        other_programs: Collection[str] = (),
        confirmations: bool = False,
    ) -> bool:
        """Whether ``user`` has had a treadmill session, as controller/first_session.py's
        ``counts`` says (the one definition the plan uses too): one that ended as planned or by
        the clinician, with the belt moving, and, for a program named in ``min_belt_s`` (the
        first-session programs, with their shortest cap), with at least that much belt time,
        unless (``confirmations``: the clinic's rules let one) a clinician confirmed it: a
        first session stopped after a few seconds is not the first session had.
        ``other_programs``: the clinic's other programs; a session of a program in neither
        (renamed or removed since it ran) is judged as a first session against the largest
        shortest cap, fail-closed."""
        return (
            self.first_session_had(
                user, min_belt_s, other_programs=other_programs, confirmations=confirmations
            )
            is not None
        )

    def first_session_had(
        self,
        user: str,
        min_belt_s: Mapping[str, float] | None = None,
        *,
        other_programs: Collection[str] = (),
        confirmations: bool = False,
    ) -> int | None:
        """The id of ``user``'s first session (the oldest) that counts as a treadmill session
        had, as ``has_history`` judges it; None if none does."""
        rows = self._query(
            "SELECT id, program, end_reason, belt_moving_s FROM sessions WHERE user = ?"
            " ORDER BY id",
            (user,),
        )
        confirmed = self.confirmed_sessions(user) if confirmations else {}
        least = min_belt_s or {}
        return next(
            (
                int(session)
                for session, program, reason, belt in rows
                if counts(
                    str(program),
                    reason,
                    _real(belt),
                    first_session_minimum=least,
                    other_programs=other_programs,
                    confirmed=int(session) in confirmed,
                )
            ),
            None,
        )

    def confirmed_sessions(self, user: str | None = None) -> dict[int, dict[str, Any]]:
        """The sessions (of ``user``, or everyone's) a clinician confirmed as a first session,
        each with its confirmation's fields (``clinician``) and ``ts``, the first one kept."""
        sql = (
            "SELECT e.session_id, e.ts, e.fields FROM sessions s JOIN events e"
            " ON e.session_id = s.id WHERE e.type = ?"
        )
        args: tuple[Any, ...] = (EventType.FIRST_SESSION_CONFIRMED.value,)
        if user is not None:
            sql, args = sql + " AND s.user = ?", (*args, user)
        confirmed: dict[int, dict[str, Any]] = {}
        for session, ts, fields in self._query(sql + " ORDER BY e.id", args):
            confirmed.setdefault(int(session), {**json.loads(fields), "ts": float(ts)})
        return confirmed

    def user_record(self, user: str) -> UserRecord:
        """Everything of one user's that their plan goes by (controller/plan.py): sessions,
        the newest outcome entries of each, the clinician's confirmations, the measures."""
        sessions = self.sessions(user)
        rows = self._query(
            "SELECT e.session_id, e.ts, e.type, e.fields FROM sessions s JOIN events e"
            " ON e.session_id = s.id WHERE s.user = ? AND e.type = ? ORDER BY e.id",
            (user, EventType.OUTCOME_RECORDED.value),
        )
        by_session: dict[int, list[EventRow]] = {}
        for session, ts, kind, fields in rows:
            by_session.setdefault(int(session), []).append(EventRow(ts, kind, json.loads(fields)))
        return UserRecord(
            user=user,
            sessions=sessions,
            outcomes={n: outcomes_of(events) for n, events in by_session.items()},
            confirmed=self.confirmed_sessions(user),
            measures=self.measures(user),
        )

    def measures(self, user: str | None = None) -> list[MeasureRow]:
        """A user's measures (None: everyone's), by the day taken and then as recorded. A
        journal written before measures were kept (opened read-only, so not brought up to
        date) has none."""
        if not self._has_table("measures"):
            return []
        sql = "SELECT id, user, kind, value, measured_on, recorded_at, clinician FROM measures"
        args: tuple[Any, ...] = ()
        if user is not None:
            sql, args = sql + " WHERE user = ?", (user,)
        rows = self._query(sql + " ORDER BY measured_on, id", args)
        return [MeasureRow(int(i), u, k, float(v), d, float(r), c) for i, u, k, v, d, r, c in rows]

    def measures_on(self, user: str, kind: str, day: str) -> int:
        """How many measures of ``kind`` ``user`` has for ``day`` (a bound on corrections)."""
        rows = self._query(
            "SELECT COUNT(*) FROM measures WHERE user = ? AND kind = ? AND measured_on = ?",
            (user, kind, day),
        )
        return int(rows[0][0])

    def measures_recorded_since(self, t: float) -> int:
        """How many measures were recorded at or after ``t`` (unix seconds), of any user."""
        rows = self._query("SELECT COUNT(*) FROM measures WHERE recorded_at >= ?", (t,))
        return int(rows[0][0])

    def _has_table(self, name: str) -> bool:
        rows = self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
        return bool(rows)

    def sessions(self, user: str | None = None) -> list[SessionRow]:
        sql = "SELECT * FROM sessions"
        args: tuple[Any, ...] = ()
        if user is not None:
            sql, args = sql + " WHERE user = ?", (user,)
        return [SessionRow(*row) for row in self._query(sql + " ORDER BY id", args)]

    def users(self) -> list[str]:
        """Every user with a session on record, the most recently seen first."""
        rows = self._query("SELECT user FROM sessions GROUP BY user ORDER BY MAX(id) DESC")
        return [str(user) for (user,) in rows]

    def recent_sessions(self, user: str, limit: int) -> tuple[list[SessionRow], int]:
        """A user's ``limit`` newest sessions, newest first, and how many the user has."""
        rows = self._query(
            "SELECT * FROM sessions WHERE user = ? ORDER BY id DESC LIMIT ?", (user, limit)
        )
        total = self._query("SELECT COUNT(*) FROM sessions WHERE user = ?", (user,))
        return [SessionRow(*row) for row in rows], int(total[0][0])

    def session(self, session_id: int) -> SessionRow | None:
        if not -(2**63) <= session_id < 2**63:
            return None  # no row's id is past SQLite's integers (which sqlite3 cannot bind)
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

    def outcome_entries(self, session_id: int) -> list[dict[str, Any]]:
        """Every entry of the clinician's record of one session, oldest first."""
        rows = self._query(
            "SELECT fields FROM events WHERE session_id = ? AND type = ? ORDER BY id",
            (session_id, EventType.OUTCOME_RECORDED.value),
        )
        return [json.loads(fields) for (fields,) in rows]

    def commissioning_runs(self) -> list[CommissioningRow]:
        """Every commissioning run, oldest first. A journal read as it is (read-only) from
        before schema version 6 has no record of what its runs proved: None, counted for
        nothing."""
        columns = {str(row[1]) for row in self._query("PRAGMA table_info(commissioning)")}
        what = "treadmill, drive" if {"treadmill", "drive"} <= columns else "NULL, NULL"
        rows = self._query(
            "SELECT id, started_at, ended_at, outcome, detail, technician, simulated,"
            f" {what} FROM commissioning ORDER BY id"
        )
        return [
            CommissioningRow(
                int(i),
                float(st),
                en,
                out,
                det,
                tech,
                bool(sim),
                tm if isinstance(tm, str) else None,
                drive if isinstance(drive, str) else None,
            )
            for i, st, en, out, det, tech, sim, tm, drive in rows
        ]

    def proofs(self, run: int) -> list[ProofRecord]:
        rows = self._query(
            "SELECT step, kind, passed, standstill_s, deceleration_mph_per_s, detail"
            " FROM commissioning_proofs WHERE commissioning_id = ? ORDER BY rowid",
            (run,),
        )
        return [
            ProofRecord(step, None if kind is None else StopKind(kind), bool(ok), st, dec, det)
            for step, kind, ok, st, dec, det in rows
        ]

    def commissioning_status(
        self, now: float, *, every_days: float, machine: Machine
    ) -> CommissioningStatus:
        """The commissioning of ``machine`` (the running configuration's treadmill and drive)
        at unix time ``now``. Only the runs made on it count (CommissioningRow.not_counted),
        and of those the newest finished one decides: current when it passed less than
        ``every_days`` ago (and not after ``now``); a failed proof test withdraws the pass
        before it until a run passes again; a run given up or cut short decides nothing. A
        journal without the commissioning tables (written before them, opened read-only) has
        none. Fail closed: a record that cannot be read, whatever is wrong with it, is none."""
        try:
            return self._commissioning_status(now, every_days, machine)
        except Exception as exc:
            return CommissioningStatus(
                False, f"the commissioning record cannot be read: {_reason_of(exc)}"
            )

    def unproven(self, run: int) -> str | None:
        """Why a run on record as passed proves nothing (a step without a passed proof, a
        stop whose figures cannot be a baseline), or None. A run is journaled passed only
        after all of it passed; this holds against a record finished by hand, or damaged."""
        proofs = self.proofs(run)
        proven = {p.step for p in proofs if p.passed}
        missing = [step for step in PROOF_STEPS if step not in proven]
        if missing:
            return f"no passed proof of {', '.join(missing)}"
        for proof in proofs:
            if proof.passed and proof.kind is not None:
                figures = StopBaseline(
                    proof.kind,
                    _real(proof.standstill_s) or math.nan,
                    _real(proof.deceleration_mph_per_s) or math.nan,
                )
                problem = baseline_problem(proof.kind, figures)
                if problem is not None:
                    return f"the {proof.step} proof's figures are no stop's: {problem}"
        return None

    def _commissioning_status(
        self, now: float, every_days: float, machine: Machine
    ) -> CommissioningStatus:
        try:
            runs = self.commissioning_runs()
            older = self._older_than_its_seal()
        except NotReadableHere as exc:
            return CommissioningStatus(False, f"the journal cannot be read ({exc})", known=False)
        except JournalError as exc:
            return CommissioningStatus(False, f"the commissioning record cannot be read: {exc}")
        mine = [r for r in runs if r.not_counted(machine) is None]
        # The newest run of this machine's (shown beside the verdict), else the newest of all.
        last = mine[-1] if mine else runs[-1] if runs else None
        if runs and older is not None:
            # An older copy put in the journal's place: whatever was proven or found after
            # it (a proof test that failed, a worn brake's fault) is not in it.
            return CommissioningStatus(False, older, last_run=last)
        passed = [r for r in mine if r.outcome == CommissioningOutcome.PASSED.value]
        decisive = passed[-1] if passed else None
        # Any run of this treadmill after that pass that did not pass withdraws it, whatever
        # drive path or simulator it was made with: failed; given up (q, the tablet's Abort),
        # perhaps as the belt failed to stop; cut short (a signal, a crash). A pass is proven
        # narrowly, its withdrawal taken broadly: the treadmill waits for a run that passes.
        after = [
            r
            for r in runs
            if (
                r.treadmill in (None, machine.treadmill)
                # The same drive under another treadmill id (a typo, the other treadmill's
                # configuration pointed at this one): the drive proven failed is this one's.
                or (r.drive == machine.drive and not machine.simulator)
            )
            and (decisive is None or r.id > decisive.id)
            and r.outcome != CommissioningOutcome.PASSED.value
        ]
        # A failed one is named first: what it failed says what to mend.
        failed = [r for r in after if r.outcome == CommissioningOutcome.FAILED.value]
        if after and (decisive is not None or failed):
            named = failed[-1] if failed else after[-1]
            return CommissioningStatus(False, self._withdrawn_words(named), last_run=last)
        if decisive is None or decisive.ended_at is None:
            detail = "no passed commissioning on record"
            counted = {r.id for r in mine}
            foreign = [
                r
                for r in runs
                if r.outcome == CommissioningOutcome.PASSED.value and r.id not in counted
            ]
            if foreign:
                # Say why the pass on record is none of this treadmill's.
                other = foreign[-1]
                why = other.not_counted(machine)
                detail = (
                    f"no passed commissioning of this treadmill ({machine}) on record: run "
                    f"no. {other.id} passed but does not count, {why}"
                )
            elif last is not None and last.outcome != CommissioningOutcome.PASSED.value:
                detail += f"; the last run {_outcome_words(last)}"
            return CommissioningStatus(False, detail, last_run=last)
        run = decisive
        assert last is not None  # the decisive run is one of mine
        ended = _real(run.ended_at)
        if ended is None:
            return CommissioningStatus(
                False,
                f"the last passed commissioning's end ({run.ended_at!r}) is not a time: it "
                "proves nothing",
                last_run=last,
            )
        problem = self.unproven(run.id)
        if problem is not None:
            return CommissioningStatus(
                False,
                f"the last commissioning on record as passed ({_utc(ended)}) proves nothing: "
                f"{problem}; commission the treadmill again",
                last_run=last,
            )
        passed_at = ended
        expires = passed_at + every_days * DAY_S
        if not (math.isfinite(passed_at) and math.isfinite(now)) or passed_at > now:
            return CommissioningStatus(
                False,
                f"the last commissioning is dated after now ({_utc(passed_at)}): the clock "
                "is not to be trusted",
                passed_at,
                expires,
                last,
            )
        if now >= expires:
            return CommissioningStatus(
                False,
                f"the last commissioning passed {_utc(passed_at)} and expired "
                f"{_utc(expires)} (commissioning.every_days = {every_days:g})",
                passed_at,
                expires,
                last,
            )
        detail = f"passed {_utc(passed_at)}, current until {_utc(expires)}"
        if last.id != run.id:
            # A later run of another treadmill and drive withdraws nothing here; it is on
            # record and shown.
            detail += f"; a later run {_outcome_words(last)}"
        return CommissioningStatus(True, detail, passed_at, expires, last, run.id)

    def _withdrawn_words(self, run: CommissioningRow) -> str:
        """A later run that did not pass, as a refusal names it."""
        if run.outcome == CommissioningOutcome.FAILED.value:
            return self._failed_words(run)
        how = "was given up" if run.outcome is not None else "was cut short (or is under way)"
        if run.technician == BACKUP_TECHNICIAN:  # the copy's own run (see backup)
            return f"the last commissioning run (no. {run.id}) is {run.detail}"
        if run.technician == OLDER_THAN_SEAL_TECHNICIAN:  # see begin_commissioning
            return f"the last commissioning run (no. {run.id}) withdrew the passes: {run.detail}"
        return (
            f"the last commissioning run (no. {run.id}) {how}: a proof test that did not pass "
            "takes the treadmill out of service until a commissioning passes again"
        )

    def _failed_words(self, run: CommissioningRow) -> str:
        """A failed proof test, as a refusal names it: the run, when, and its failed step."""
        ended = _real(run.ended_at)
        when = "" if ended is None else f", {_utc(ended)}"
        failed = next((p for p in self.proofs(run.id) if not p.passed), None)
        what = run.detail or "a step failed"
        if failed is not None:
            what = f"its {failed.step} step failed: {failed.detail or run.detail}"
        return (
            f"the last commissioning run (no. {run.id}{when}) failed, {what}; a failed proof "
            "test takes the treadmill out of service until a commissioning passes again"
        )

    def commissioned_baselines(
        self, now: float, *, every_days: float, machine: Machine
    ) -> dict[StopKind, StopBaseline]:
        """``machine``'s stop baselines, per kind of stop, from the commissioning its status
        rests on if that is current at unix time ``now`` (else none): each kind's mean over the
        passed proofs of that kind (an emergency stop: the E-STOP, the grips, the fall; a controlled
        stop: the one at the cap). The stop-quality watch compares later stops with them."""
        status = self.commissioning_status(now, every_days=every_days, machine=machine)
        if not status.current or status.run is None:
            return {}
        baselines: dict[StopKind, StopBaseline] = {}
        proofs = self.proofs(status.run)
        for kind in StopKind:
            mine = [
                p
                for p in proofs
                if p.kind is kind
                and p.passed
                and p.standstill_s is not None
                and p.deceleration_mph_per_s is not None
            ]
            if mine:
                baselines[kind] = StopBaseline(
                    kind=kind,
                    standstill_s=sum(p.standstill_s or 0.0 for p in mine) / len(mine),
                    deceleration_mph_per_s=sum(p.deceleration_mph_per_s or 0.0 for p in mine)
                    / len(mine),
                )
        return baselines

    def samples(self, session_id: int) -> list[tuple[float, float | None, float | None]]:
        rows = self._query(
            "SELECT ts, speed_mph, target_mph FROM samples WHERE session_id = ? ORDER BY ts",
            (session_id,),
        )
        return [(float(ts), speed, target) for ts, speed, target in rows]


# Events entered under a session other than the one open (if any): the session they name.
_UNDER_ITS_SESSION = frozenset({EventType.OUTCOME_RECORDED, EventType.FIRST_SESSION_CONFIRMED})


def schema_version(db: sqlite3.Connection) -> int:
    """The journal's schema version. A journal written before the version was kept has
    user_version 0: its version is told by the tables it has."""
    kept = int(db.execute("PRAGMA user_version").fetchone()[0])
    if kept:
        return kept
    tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "measures" in tables:
        # Version 6's columns cannot be added twice (SQLite has no ADD COLUMN IF NOT EXISTS):
        # a file that has them is at 6, whatever its header says.
        columns = {row[1] for row in db.execute("PRAGMA table_info(commissioning)")}
        return 6 if "treadmill" in columns else 3
    if "commissioning" in tables:
        return 2
    if "sessions" in tables:
        return 1
    return 0  # a new, empty file


def _refuse_newer(version: int) -> None:
    if version > SCHEMA_VERSION:
        raise JournalError(
            f"the journal has schema version {version}, written by a newer treadguard; this "
            f"one knows versions up to {SCHEMA_VERSION}: update treadguard (the journal is "
            "left as it is)"
        )


def _nfc(text: str | None) -> str | None:
    return unicodedata.normalize("NFC", text) if isinstance(text, str) else text


_ADD_COLUMN = re.compile(r"^ALTER TABLE (\w+) ADD COLUMN (\w+)\b.*;$", re.MULTILINE)


def _without_columns_there(db: sqlite3.Connection, script: str) -> str:
    """``script`` without the columns it adds that its table has already: SQLite has no ADD
    COLUMN IF NOT EXISTS, and every step must apply to a journal that has what it adds."""

    def kept(match: re.Match[str]) -> str:
        table, column = match.group(1), match.group(2)
        there = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        return "" if column in there else match.group(0)

    return _ADD_COLUMN.sub(kept, script)


def _migrate(db: sqlite3.Connection) -> None:
    """Bring the journal to SCHEMA_VERSION, one step a transaction (the step and the new
    version committed together, so a power cut mid-way leaves the journal at a version, never
    between two). A journal from a newer treadguard is refused, never written."""
    version = schema_version(db)
    _refuse_newer(version)
    db.create_function("treadguard_nfc", 1, _nfc, deterministic=True)
    for step in range(version, SCHEMA_VERSION):
        # executescript runs the script as written; in autocommit mode nothing is pending, so
        # BEGIN ... COMMIT makes the step and its version one transaction.
        script = _without_columns_there(db, MIGRATIONS[step])
        db.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {step + 1};\nCOMMIT;")
    if version == SCHEMA_VERSION and not db.execute("PRAGMA user_version").fetchone()[0]:
        # Written before the version was kept, already complete: only the version is new.
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@dataclass(frozen=True)
class BackupResult:
    path: Path
    sessions: int
    schema_version: int
    size_bytes: int


def backup(
    source: Path, target: Path, *, machine: Machine | None = None, now: float = math.nan
) -> BackupResult:
    """Copy the journal at ``source`` to a new file ``target`` through SQLite's online backup
    API: safe while the daemon writes it (the copy is one consistent snapshot, committed
    transactions only, the write-ahead log's included), and the daemon is never blocked for
    longer than one read. The copy is a self-contained file (rollback journal mode, no -wal
    beside it), checked with ``PRAGMA integrity_check``, and appears under its name only when
    complete. An existing file is never overwritten.

    ``machine``: the treadmill whose journal it is. The copy then ends with a commissioning
    run of it that did not pass (given up, by ``treadguard backup`` at unix time ``now``):
    restored, it takes the treadmill out of service until a run passes again. A restore goes
    back past what was proven since the copy (a proof test that failed and withdrew the
    pass), so the pass on record in the copy cannot stand for the treadmill as it is now."""
    try:
        found = source.is_file()
    except OSError as exc:  # a folder on the way that this user may not enter
        raise JournalError(f"cannot back up {source} to {target}: {_os_reason(exc)}") from exc
    try:
        taken = os.path.lexists(target) or target.exists()
    except OSError as exc:  # the copy's side: a folder this user may not enter, a long name
        raise JournalError(f"cannot write the copy {target}: {_copy_reason(exc)}") from exc
    if not found:
        raise JournalError(f"no journal at {source}")
    if taken:
        raise JournalError(f"{target} already exists: a backup never overwrites a file")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        # Made here first, so that a folder the copy may not go in is said as the OS says it
        # (SQLite would say only "unable to open database file"); empty, SQLite takes it.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise JournalError(f"cannot write the copy {target}: {_copy_reason(exc)}") from exc
    try:
        with (
            closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
            closing(sqlite3.connect(partial, isolation_level=None)) as dst,
        ):
            src.backup(dst)  # all pages in one step: one snapshot of the source
            dst.execute("PRAGMA journal_mode=DELETE")
            if machine is not None:
                _withdraw_in_copy(dst, machine, now)
            verdict = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if verdict != "ok":
                raise JournalError(f"the copy failed its integrity check: {verdict}")
            version = schema_version(dst)
            sessions = int(dst.execute("SELECT count(*) FROM sessions").fetchone()[0])
        with open(partial, "rb") as written:
            os.fsync(written.fileno())
        if target.exists():  # appeared while copying
            raise JournalError(f"{target} already exists: a backup never overwrites a file")
        os.replace(partial, target)
        _sync_dir(target.parent)
    except (OSError, sqlite3.Error, JournalError) as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        if isinstance(exc, JournalError):
            raise
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise JournalError(f"cannot back up {source} to {target}: {reason}") from exc
    return BackupResult(target, sessions, version, target.stat().st_size)


def _copy_reason(exc: OSError) -> str:
    """Why a copy cannot be written where it was asked for: the journal was read, so the
    advice is about the copy's folder, never the journal's owner."""
    return _os_reason(
        exc,
        " in that folder: choose a folder this user may write (a USB stick mounted for it, "
        "the home folder), or run as root",
    )


# Who a backup copy's own commissioning run (see backup) names as its technician.
BACKUP_TECHNICIAN = "treadguard backup"
# Who the run that withdraws an older copy's passes (see begin_commissioning) names.
OLDER_THAN_SEAL_TECHNICIAN = "treadguard (journal older than its seal)"


def _withdraw_in_copy(copy: sqlite3.Connection, machine: Machine, now: float) -> None:
    """The copy's last commissioning run: one of ``machine`` that did not pass (see backup).
    A copy from before the record of what a run proved (schema version 6) has no pass that
    counts for any treadmill, and gets none."""
    columns = {str(row[1]) for row in copy.execute("PRAGMA table_info(commissioning)")}
    if not {"treadmill", "drive"} <= columns:
        return
    copy.execute(
        "INSERT INTO commissioning (started_at, ended_at, outcome, detail, technician,"
        " simulated, treadmill, drive) VALUES (?,?,?,?,?,?,?,?)",
        (
            now,
            now,
            CommissioningOutcome.ABORTED.value,
            f"a backup copy made {_utc(now)}: restored, it proves no stop of the treadmill as "
            "it is now (a later proof test is not in it); commission the treadmill again",
            BACKUP_TECHNICIAN,
            0,
            machine.treadmill,
            machine.drive,
        ),
    )


def _sync_dir(folder: Path) -> None:
    """The new name survives a power cut too (on file systems that can sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # vfat (a USB stick) cannot sync a folder; the file itself is synced
    finally:
        os.close(fd)


def _reason_of(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def seed_commissioning(
    journal: Journal,
    ended_at: float,
    proofs: list[ProofRecord],
    *,
    machine: Machine,
    technician: str = "",
    simulated: bool = True,
    took_s: float = 600.0,
) -> int:
    """A passed commissioning run of ``machine`` written the way ``treadguard commission``
    writes one (the same calls, in the same order), ending at unix time ``ended_at``: for a
    simulated treadmill's journal (a scenario's, a test daemon's) whose stops are proven
    elsewhere."""
    run = journal.begin_commissioning(
        ended_at - took_s, technician=technician, simulated=simulated, machine=machine
    )
    for proof in proofs:
        journal.record_proof(run, proof, ended_at)
    journal.end_commissioning(run, ended_at, CommissioningOutcome.PASSED)
    return run


def journal_in_use(path: Path) -> bool:
    """Whether a process (the daemon, a commissioning run) holds the journal's lock now.
    OSError when the file is there and cannot be opened (permission denied): that says nothing
    about who holds it."""
    try:
        # O_NONBLOCK: a FIFO at the journal's path must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        return False  # no journal yet: nobody drives it
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock, if it was taken
    return False


SEAL_SUFFIX = "-commissioning"
# SQLite's application id of a journal that has had a seal written beside it ("tgsl").
SEALED_APPLICATION_ID = 0x7467736C


def _mark(row: tuple[Any, ...]) -> str:
    """A row's digest: equal only for the same values (a float to its last bit)."""
    text = json.dumps([v.hex() if isinstance(v, float) else v for v in row])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def seal_of(database: Path) -> Path:
    """The journal's commissioning seal: a small file beside its database file naming the
    newest commissioning run and event it holds, written at each run's start and end and at
    each fault. A copy of the database put in its place (cp of a backup, an image of the file)
    is older than the seal, and its pass, which a later proof test or a worn brake's fault may
    have withdrawn, counts for nothing; so does a sealed journal found without its seal."""
    return database.with_name(database.name + SEAL_SUFFIX)


def _os_reason(
    exc: OSError,
    advice: str = ": the journal belongs to the service's user; run the command as that user "
    "(sudo -u treadguard treadguard ...) or as root",
) -> str:
    """An OS error as a person reads it; a refused permission says as whom, and ``advice``:
    who may."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, PermissionError):
        return f"{reason} for the user {_user_name()}{advice}"
    return reason


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def file_identity(path: Path) -> str:
    """The file ``path`` leads to (links followed), as its device and inode: OSError if none."""
    return _identity(os.stat(path))


def _identity(st: os.stat_result) -> str:
    return f"device {st.st_dev}, inode {st.st_ino}"


def _same_file(path: Path, identity: str | None) -> None:
    if identity is not None and file_identity(path) != identity:
        raise JournalError(
            "it is no longer the journal the daemon writes (the file was moved, removed or "
            "replaced while treadguard ran): restart treadguard"
        )


def _lock(path: Path) -> int:
    """An exclusive lock on the journal file itself (flock, on its inode): whatever name
    reaches it (a symlink, a hard link, a relative path) takes the same lock. SQLite's own
    locks are fcntl locks, which flock does not touch. An empty new file is an empty
    database to SQLite."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        os.close(fd)
        raise JournalInUse(
            "it is in use by another process (the daemon, or a commissioning run, for this "
            "treadmill): stop that first"
        ) from exc
    except OSError:
        os.close(fd)
        raise
    return fd


def _utc(ts: float) -> str:
    if not math.isfinite(ts):
        return "an unreadable time"
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")


def _outcome_words(run: CommissioningRow) -> str:
    if run.outcome is None:
        return f"(no. {run.id}) was cut short"
    return f"(no. {run.id}) {run.outcome}" + (f": {run.detail}" if run.detail else "")


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
