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


def test_the_record_commands_never_read_a_whole_table(tmp_path: Path) -> None:
    """The record commands are handled on the command path, ahead of any estop behind them: a
    read there that scans a whole table grows with the journal's years (300,000 measures held
    an estop back by up to 1.8 s). Each statement they run, and those of a start (which reads
    the user's record), is planned with an index."""
    loop = VirtualLoop()

    def wall() -> float:
        return NOW + loop.time()

    path = tmp_path / "journal.sqlite"
    opened = open_journal(path, max_size_mb=64.0, wall=wall)
    assert opened.journal is not None
    system = System(SIM, loop, in_process_rig(SIM, loop.time).driver, opened, wall=wall)
    system.start()
    statements: list[str] = []
    try:
        system.execute(RecordMeasure(loop.time(), "p-1", "tug", 12.0))
        opened.journal._db.set_trace_callback(statements.append)  # as SQLite runs them
        commands: list[TabletCommand] = [
            RecordMeasure(loop.time(), "p-2", "tug", 12.0, date="2026-12-01"),
            OutcomeBefore(loop.time(), "1", 3),
            OutcomeAfter(loop.time(), "1", 4, exertion=5),
            ConfirmFirstSession(loop.time(), "1"),
            StartSession(loop.time(), "p-1"),  # refused or not, the user's record is read
        ]
        for command in commands:
            system.execute(command)
    finally:
        opened.journal._db.set_trace_callback(None)
        system.close()
    reads = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert any("measures" in s for s in reads), statements
    with closing(sqlite3.connect(path)) as db:
        for sql in reads:
            plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql)]
            scans = [step for step in plan if step.startswith("SCAN") and "sqlite_" not in step]
            assert scans == [], (sql, plan)
