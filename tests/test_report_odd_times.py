"""Every place a session's times are shown, for a session dated past the calendar (the wall
clock read the year 10000: SR-16 lets it step by any amount) next to an ordinary one: the
reports, the CSV and FHIR exports, the patient view's history rows and the plan show what
they can and say the time is outside the calendar; none raises."""

from __future__ import annotations

import csv
import io
import json
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.bundle import Bundle

from tests.test_fhir_export import CLINIC, T0, resources
from treadguard.controller import report_text as t
from treadguard.controller.fhir_export import export_fhir
from treadguard.controller.journal import EventRow, SessionRow
from treadguard.controller.queries import ClinicWords, event_rows, summary_of
from treadguard.controller.report import (
    history_table,
    patient_report,
    session_report,
    sessions_csv,
)
from treadguard.safety.decisions import EventType

YEAR_10000 = 253_402_300_800.0
OUTSIDE = "unix time 253402300800, outside the calendar"

ODD = SessionRow(2, "ann", "reverse_walking", 300.0, YEAR_10000, YEAR_10000 + 30, "cap", 25.0, 1.0)
ORDINARY = SessionRow(1, "ann", "reverse_walking", 300.0, T0, T0 + 310, "cap", 300.0, 1.0)
EVENTS = [
    EventRow(YEAR_10000, EventType.SESSION_STARTED, {"session_id": "2", "cap_s": 300.0}),
    EventRow(YEAR_10000 + 30, EventType.SESSION_ENDED, {"reason": "cap", "belt_moving_s": 25.0}),
]


@pytest.mark.parametrize(
    "ts", [YEAR_10000, -YEAR_10000, float("nan"), float("inf"), 1e300], ids=repr
)
def test_a_time_no_calendar_holds_is_said_so_by_every_time_format(ts: float) -> None:
    zone = ZoneInfo("America/New_York")
    shown = [
        t.when(ts, zone),
        t.when_to_the_minute(ts, zone),
        t.day(ts, zone),
        t.month_day(ts, zone),
        t.time_of_day(ts, zone),
        t.iso(ts, zone),
    ]
    assert all(s == t.no_calendar(ts) for s in shown), shown
    assert t.no_calendar(ts).endswith("outside the calendar")


def test_an_ordinary_time_is_unchanged() -> None:
    zone = ZoneInfo("America/New_York")
    assert t.when(T0, zone) == "2026-12-02 20:00:00 EST"
    assert t.when_to_the_minute(T0, zone) == "2026-12-02 20:00"
    assert t.day(T0, zone) == "2026-12-02"
    assert t.month_day(T0, zone) == "12-02"
    assert t.time_of_day(T0, zone) == "20:00:00"
    assert t.iso(T0, zone) == "2026-12-02T20:00:00-05:00"


def test_the_reports_say_the_time_is_outside_the_calendar() -> None:
    table = history_table([ORDINARY, ODD], CLINIC.zone)
    assert OUTSIDE in table
    assert "2026-12-02 20:00:00 EST" in table
    page = session_report(ODD, EVENTS, [], clinic=CLINIC, written=T0 + 400)
    assert OUTSIDE in page
    patient = patient_report("ann", [ORDINARY, ODD], clinic=CLINIC, written=T0 + 400)
    assert OUTSIDE in patient
    assert "2026-12-02 20:00" in patient


def test_the_csv_says_the_time_is_outside_the_calendar() -> None:
    rows = list(csv.reader(io.StringIO(sessions_csv([ORDINARY, ODD], clinic=CLINIC))))
    assert rows[1][4] == "2026-12-02T20:00:00-05:00"
    assert rows[2][4:6] == [OUTSIDE, "unix time 253402300830, outside the calendar"]


def test_the_fhir_export_leaves_the_time_out_and_says_so() -> None:
    text = export_fhir([ORDINARY, ODD], {2: EVENTS}, clinic=CLINIC, user="ann")
    Bundle.model_validate_json(text)
    odd = [
        p for p in resources(json.loads(text), "Procedure") if p["identifier"][0]["value"] == "2"
    ]
    assert "performedPeriod" not in odd[0]
    assert "253402300800" in json.dumps(odd[0]["note"])


def test_the_patient_view_s_history_rows_say_the_time_is_outside_the_calendar() -> None:
    words = ClinicWords(CLINIC.zone, {"reverse_walking": "Reverse walking"})
    summary = summary_of(ODD, {}, words)
    assert summary.started == OUTSIDE
    assert summary.ended == "unix time 253402300830, outside the calendar"  # not "still open"
    rows = event_rows(ODD, EVENTS, CLINIC.zone)
    assert [r["time"] for r in rows] == [t.no_calendar(e.ts) for e in EVENTS]
