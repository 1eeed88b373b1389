"""``record_measure`` from a tablet that sends one after another, each for a day or a user of
its own, against the daemon's assembly (controller/system.py) with a small journal: no input
can fill the journal (SR-14), so the belt is never stopped, nor a start refused, for measures."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import date, datetime, timedelta
from pathlib import Path

from treadguard.config.loading import load_config
from treadguard.controller.drives import in_process_rig
from treadguard.controller.proposal_book import ProposalBook
from treadguard.controller.system import System, open_journal
from treadguard.safety.decisions import Accepted
from treadguard.safety.inputs import (
    ConfirmFirstSession,
    OutcomeAfter,
    OutcomeBefore,
    RecordMeasure,
    StartSession,
    TabletCommand,
)
from treadguard.simulator.virtual_loop import VirtualLoop

ROOT = Path(__file__).resolve().parents[1]
SIM = load_config(ROOT / "config" / "sim.toml")
NOW = datetime.fromisoformat("2026-12-04T12:00:00+00:00").timestamp()
SENT = 6000  # one user's TUG, one a day, for the last sixteen years and more


def test_measures_one_a_day_for_years_cannot_fill_the_journal(tmp_path: Path) -> None:
    loop = VirtualLoop()

    def wall() -> float:
        return NOW + loop.time()

    opened = open_journal(tmp_path / "journal.sqlite", max_size_mb=1.0, wall=wall)
    assert opened.journal is not None
    system = System(SIM, loop, in_process_rig(SIM, loop.time).driver, opened, wall=wall)
    system.start()
    try:
        accepted = 0
        for n in range(SENT):
            day = (date(2026, 12, 4) - timedelta(days=n)).isoformat()
            reply = system.execute(RecordMeasure(loop.time(), "p-1", "tug", 12.0, date=day))
            accepted += isinstance(reply, Accepted)
            if n % 50 == 0:
                loop.run_until(loop.time() + 0.6)  # the journal's ticks look at its size
        loop.run_until(loop.time() + 1.0)
        # Some of them may be refused; none of them may cost the treadmill its journal.
        assert accepted > 0
        assert system.journal_problem is None, system.journal_problem
        assert system.journal_state()["nearly_full"] is False, system.journal_state()
        assert system.core.snapshot().state.value == "idle"
    finally:
        system.close()


SESSIONS = 40  # of the user whose record the commands read


def _command_path_work(tmp_path: Path, events_per_session: int, measures: int) -> int:
    """The SQLite virtual machine's work (in steps of 100 instructions) of a start and of the
    record commands, for a user with SESSIONS sessions on record of ``events_per_session``
    events each and ``measures`` TUG measures on earlier days."""
    loop = VirtualLoop()

    def wall() -> float:
        return NOW + loop.time()

    path = tmp_path / f"journal-{events_per_session}-{measures}.sqlite"
    opened = open_journal(path, max_size_mb=512.0, wall=wall)
    assert opened.journal is not None
    with closing(sqlite3.connect(path)) as db, db:  # years of a user's record, written at once
        db.executemany(
            "INSERT INTO sessions VALUES (?, 'p-1', 'reverse_walking', 300, ?, ?, 'cap', 300, 1)",
            [(n, NOW - 86_400 * (SESSIONS - n + 2), NOW - 86_400 * (SESSIONS - n + 2) + 320)
             for n in range(1, SESSIONS + 1)],
        )  # fmt: skip
        db.executemany(
            "INSERT INTO events (ts, type, session_id, fields)"
            " VALUES (?, 'speed_changed', ?, '{}')",
            [(NOW - 86_400 * 60, n)
             for n in range(1, SESSIONS + 1) for _ in range(events_per_session)],
        )  # fmt: skip
        # And the clinician's record: as many entries as a session keeps, or one.
        entries = 20 if events_per_session > 2 else 1
        db.executemany(
            "INSERT INTO events (ts, type, session_id, fields)"
            " VALUES (?, 'outcome_recorded', ?, '{\"when\": \"after\", \"pain\": 3}')",
            [(NOW - 86_400 * 60, n) for n in range(1, SESSIONS + 1) for _ in range(entries)],
        )  # fmt: skip
        db.executemany(
            "INSERT INTO measures (user, kind, value, measured_on, recorded_at)"
            " VALUES ('p-1', 'tug', 12.0, ?, ?)",
            [((date(2026, 12, 3) - timedelta(days=k % 300)).isoformat(), NOW - 86_400 * 2)
             for k in range(measures)],
        )  # fmt: skip
    # The daemon's book of proposals, worked out off the command path (here never: a start
    # from history is refused while the user's entry is not current).
    system = System(
        SIM, loop, in_process_rig(SIM, loop.time).driver, opened, wall=wall,
        proposals=ProposalBook(),
    )  # fmt: skip
    system.start()
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0  # go on

    commands: list[TabletCommand] = [
        StartSession(loop.time(), "p-1"),  # reads the user's record: a first session had?
        RecordMeasure(loop.time(), "p-1", "tug", 12.0, date="2026-12-03"),
        OutcomeBefore(loop.time(), str(SESSIONS), 3),
        OutcomeAfter(loop.time(), str(SESSIONS), 4, exertion=5),
        ConfirmFirstSession(loop.time(), "1"),
    ]
    try:
        opened.journal._db.set_progress_handler(step, 100)  # the journal's own connection
        for command in commands:
            system.execute(command)
    finally:
        opened.journal._db.set_progress_handler(None, 100)
        system.close()
    return steps[0]


def test_the_command_path_reads_no_more_of_a_longer_record(tmp_path: Path) -> None:
    """A start and the record commands are handled on the command path, ahead of any estop
    behind them: a read there that grows with the journal's years held an estop back by
    seconds (a count over 300,000 measures for each record_measure of a flood; a start
    walking every event of a user's 600 sessions). The work they do is the same for a user
    whose sessions have 150 times the events (and 20 times the clinician's record entries)
    and who has 1,000 times the measures."""
    small = _command_path_work(tmp_path, events_per_session=2, measures=2)
    large = _command_path_work(tmp_path, events_per_session=300, measures=2_000)
    assert large <= 1.5 * small + 50, (small, large)
