"""What the journal holds, for the clinician (docs/reports.md): ``treadguard history`` (a
table), ``treadguard report SESSION`` and ``treadguard patient USER`` (self-contained HTML
pages from the templates in templates/, charts by controller/charts.py, one A4 page each when
printed) and ``treadguard export --csv``. Times are in the clinic's zone ([clinic] timezone),
numbers rounded, programs by their titles, events and endings in contract/event_text.py's
words."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from treadguard import __version__
from treadguard.contract.codes import shown_code
from treadguard.contract.event_text import CAUSE_WORDS, words
from treadguard.controller import report_text as t
from treadguard.controller.charts import (
    START_GREEN,
    STOP_RED,
    WARN_AMBER,
    Mark,
    TrendPoint,
    session_chart,
    trend_chart,
)
from treadguard.controller.journal import EventRow, MeasureRow, SessionRow
from treadguard.controller.plan import Proposal, measure_trends, outcomes_of
from treadguard.safety.decisions import EventType

# autoescape: user codes, program titles and event details come from the journal and the
# clinic's files, and are text, never markup. StrictUndefined: a name the template uses and
# the code forgot is an error, not an empty cell.
_PAGES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)

# Events drawn on the session chart, and their colours; the rest are in the table only.
MARKED: dict[str, str] = {
    EventType.BELT_STARTED: START_GREEN,
    EventType.SPEED_STEP: "#888888",
    EventType.SPEED_CHANGED: "#2277cc",
    EventType.CAP_WARNING: WARN_AMBER,
    EventType.STOPPING: "#2277cc",
    EventType.GRIP_WARNING: WARN_AMBER,
    EventType.ESTOP: STOP_RED,
    EventType.FAULT: STOP_RED,
    EventType.SESSION_ENDED: "#222222",
}
# A countdown's three ticks say nothing the "belt starts" after them does not.
UNLISTED = {EventType.COUNTDOWN}
STOPS = {EventType.ESTOP, EventType.FAULT}
STOP_ENDS = {"estop", "fault"}

CSV_COLUMNS = (
    "id",
    "user",
    "program",
    "program_title",
    "started",
    "ended",
    "belt_s",
    "cap_s",
    "top_mph",
    "end_reason",
)


@dataclass(frozen=True)
class Clinic:
    """What every report is written for: the treadmill, the clinic's zone, program titles."""

    treadmill: str
    zone: ZoneInfo
    titles: Mapping[str, str]  # program name -> its title

    def title(self, program: str) -> str:
        # A program since renamed or removed keeps its name: the journal's word for it.
        return self.titles.get(program, program)

    def page(self, template: str, title: str, written: float, **context: Any) -> str:
        return _PAGES.get_template(template).render(
            title=title,
            version=__version__,
            treadmill=self.treadmill,
            timezone=self.zone.key,
            written=t.when(written, self.zone),
            **context,
        )


def history_table(sessions: Sequence[SessionRow], zone: ZoneInfo) -> str:
    header = ("id", "user", "program", "started", "belt time s", "cap s", "top mph", "ended")
    rows = [
        (
            str(s.id),
            shown_code(s.user),
            s.program,
            t.when(s.started_at, zone),
            _num(s.belt_moving_s),
            _num(s.cap_s, 0),
            _num(s.max_speed_mph, 2),
            s.end_reason or "open",
        )
        for s in sessions
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]
    )


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def how_it_ended(session: SessionRow, events: Sequence[EventRow]) -> str:
    """The session's end in words; an emergency stop or a fault with its cause."""
    said = t.ended_by(session.end_reason)
    if session.end_reason in STOP_ENDS:
        causes = [e.fields.get("cause") for e in events if e.type in STOPS]
        if causes:
            said += f": {words(CAUSE_WORDS, causes[-1])}"
    return said


def belt_time(session: SessionRow) -> str:
    return (
        f"{t.duration(session.belt_moving_s)} of a "
        f"{t.duration(session.cap_s, whole_minutes=True)} cap"
    )


def session_report(
    session: SessionRow,
    events: Sequence[EventRow],
    samples: Sequence[tuple[float, float | None, float | None]],
    *,
    clinic: Clinic,
    written: float,
) -> str:
    t0 = session.started_at
    zone = clinic.zone
    ended_s = None if session.ended_at is None else session.ended_at - t0
    entered = outcomes_of(events)
    relative = [(ts - t0, v, target) for ts, v, target in samples]
    marks = [
        Mark(e.ts - t0, t.event_name(e.type), MARKED[e.type], e.type)
        for e in events
        if e.type in MARKED
    ]
    facts = {
        "id": session.id,
        "user": shown_code(session.user),
        "program_title": clinic.title(session.program),
        "started": t.when(session.started_at, zone),
        "ended": t.when(session.ended_at, zone),
        "belt_time": belt_time(session),
        "top_speed": t.mph(session.max_speed_mph),
        "ended_by": how_it_ended(session, events),
        "pain": t.pain_words(entered),
        "outcome_notes": t.outcome_notes(entered),
    }
    rows = [
        {
            "time": t.time_of_day(e.ts, zone),
            "into": t.clock(e.ts - t0),
            "name": t.event_name(e.type),
            "details": t.event_details(e.type, e.fields),
            "stop": e.type in STOPS,
        }
        for e in events
        if e.type not in UNLISTED
    ]
    # As the chart decides it: two samples from the end on make a line.
    run_down = (
        ended_s is not None and sum(ts >= ended_s and v is not None for ts, v, _ in relative) > 1
    )
    return clinic.page(
        "session.html.j2",
        f"{clinic.title(session.program)}: session {session.id}, user {shown_code(session.user)}",
        written,
        s=facts,
        chart=Markup(
            session_chart(relative, marks, ended_s=ended_s)
        ),  # matplotlib's own SVG, text escaped
        run_down=run_down,
        events=rows,
    )


def patient_report(
    user: str,
    sessions: Sequence[SessionRow],
    *,
    clinic: Clinic,
    written: float,
    outcomes: Mapping[int, Mapping[str, Mapping[str, Any]]] | None = None,
    proposal: Proposal | None = None,
    measures: Sequence[MeasureRow] = (),
) -> str:
    """Every session of one user, oldest first: the trend chart and a row each (with the
    pain before and after it that the clinician entered, from ``outcomes`` by session); the
    proposal for the next session (controller/plan.py) and the user's measures, baseline and
    latest of each kind."""
    zone = clinic.zone
    entered = outcomes or {}
    rows = [
        {
            "pain": t.pain_words(entered.get(s.id, {})),
            "id": s.id,
            "date": t.when_to_the_minute(s.started_at, zone),
            "program_title": clinic.title(s.program),
            "belt_min": t.minutes(s.belt_moving_s),
            "cap_min": t.minutes(s.cap_s),
            "top_mph": t.mph(s.max_speed_mph).removesuffix(" mph"),
            "ended_by": t.ended_by(s.end_reason),
            "stop": s.end_reason in STOP_ENDS,
        }
        for s in sessions
    ]
    points = [
        TrendPoint(
            session=s.id,
            label=t.month_day(s.started_at, zone),  # the year is in the subtitle
            belt_min=None if s.belt_moving_s is None else s.belt_moving_s / 60,
            cap_min=s.cap_s / 60,
            top_mph=s.max_speed_mph,
            stopped=s.end_reason in STOP_ENDS,
        )
        for s in sessions
    ]
    tops = [s.max_speed_mph for s in sessions if s.max_speed_mph is not None]
    return clinic.page(
        "patient.html.j2",
        f"User {shown_code(user)}: treadmill sessions",
        written,
        user=shown_code(user),
        sessions=rows,
        first_day=t.day(sessions[0].started_at, zone),
        last_day=t.day(sessions[-1].started_at, zone),
        total_belt=t.duration(sum(s.belt_moving_s or 0.0 for s in sessions)),
        top_speed=t.mph(max(tops)) if tops else t.NONE,
        last_program=clinic.title(sessions[-1].program),
        chart=Markup(trend_chart(points)),  # matplotlib's own SVG, text escaped
        proposal=proposal,
        weekly=None if proposal is None else "-".join(map(str, proposal.sessions_a_week)),
        measures=measure_trends(measures),
    )


def sessions_csv(sessions: Sequence[SessionRow], *, clinic: Clinic) -> str:
    """One row a session, for a spreadsheet: times ISO 8601 with the clinic's offset, the
    belt time to 0.1 s, the top speed to 0.01 mph, the end reason as its code."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for s in sessions:
        writer.writerow(
            (
                s.id,
                s.user,
                s.program,
                clinic.title(s.program),
                t.iso(s.started_at, clinic.zone),
                t.iso(s.ended_at, clinic.zone),
                "" if s.belt_moving_s is None else f"{s.belt_moving_s:.1f}",
                f"{s.cap_s:g}",
                "" if s.max_speed_mph is None else f"{s.max_speed_mph:.2f}",
                s.end_reason or "",
            )
        )
    return out.getvalue()
