"""A ``history`` query (controller/queries.py) for a user whose record holds a time no
calendar holds (a session recorded while the wall clock read the year 10000: SR-16 lets the
wall clock step by any amount): the user's sessions are still answered, and the proposal says
what it can, as the plan does for the week (controller/plan.py, ``_week``)."""

from __future__ import annotations

import time
from pathlib import Path
from zoneinfo import ZoneInfo

from treadguard.config.loading import load_config
from treadguard.contract.queries import HistoryQuery
from treadguard.controller.journal import Journal
from treadguard.controller.queries import ClinicWords, Planning, read_answer
from treadguard.safety.decisions import Event, EventType, JsonScalar

ROOT = Path(__file__).resolve().parents[1]
SIM = load_config(ROOT / "config" / "sim.toml")
YEAR_10000 = 253_402_300_800.0


def test_a_session_dated_past_the_calendar_leaves_the_history_readable(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    journal = Journal.open(path, max_size_mb=16)
    started: dict[str, JsonScalar] = {
        "session_id": "1",
        "user": "p-1",
        "program": "first_session",
        "cap_s": 180.0,
    }
    ended: dict[str, JsonScalar] = {
        "session_id": "1",
        "reason": "operator_stop",
        "belt_moving_s": 20.0,
    }
    journal.record(Event(EventType.SESSION_STARTED, 0.0, started), YEAR_10000)
    journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), YEAR_10000 + 30)
    journal.commit()
    journal.close()
    words = ClinicWords(ZoneInfo("UTC"), {n: p.title for n, p in SIM.programs.items()})
    planning = Planning(SIM.rules, SIM.programs, time.time)
    answer = read_answer(path, HistoryQuery(id="h", type="history", user="p-1"), words, planning)
    assert answer.ok, answer
    assert answer.body["total"] == 1
    proposal = answer.body["proposal"]
    assert isinstance(proposal, dict), proposal
    assert proposal["program"] == "first_session"
