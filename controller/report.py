"""What the journal holds, for the clinician (docs/reports.md): ``treadguard history`` (a
table), ``treadguard report SESSION`` and ``treadguard patient USER`` (self-contained HTML
pages from the templates in templates/, charts by controller/charts.py, one A4 page each when
printed) and ``treadguard export --csv``. Times are in the clinic's zone ([clinic] timezone),
numbers rounded, programs by their titles, events and endings in contract/event_text.py's
words."""

from __future__ import annotations

import csv
import io
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from treadguard import __version__
from treadguard.contract.codes import shown_code
from treadguard.contract.event_text import CAUSE_WORDS, words
from treadguard.contract.queries import HISTORY_DEFAULT
from treadguard.controller import report_fit as fit
from treadguard.controller import report_text as t
from treadguard.controller.charts import (
    HEIGHT_IN,
    HEIGHT_MIN_IN,
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
    "pain_before",
    "pain_after",
    "exertion",
    "notes_before",
    "notes_after",
    "clinician",
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

    def footer(self, written: float) -> str:
        return (
            f"treadguard {__version__} · treadmill {self.treadmill} · times in "
            f"{self.zone.key} · written {t.when(written, self.zone)}"
        )

    def page(self, template: str, page: Page, **context: Any) -> str:
        return _PAGES.get_template(template).render(
            title=page.title,
            subtitle=page.subtitle,
            facts=page.facts,
            footer=page.footer,
            fit=fit,  # the type's sizes and spacing report.css is written with
            **context,
        )


@dataclass
class Page:
    """What a report's page prints whatever else it leaves off (the title, the facts, the
    footer), and the room that leaves on paper: ``room.left`` mm, for the caller to spend on
    the rest from the top down."""

    title: str
    subtitle: str
    facts: list[Fact]
    footer: str
    room: fit.Room = field(default_factory=fit.Room)

    def __post_init__(self) -> None:
        self.room.text(self.title, fit.TITLE, below=fit.TITLE_BELOW)
        self.room.text(self.subtitle, fit.TEXT, below=fit.SUB_BELOW)
        self.room.facts(FACT_COLUMNS, [f.cells for f in self.facts])
        self.room.footer(self.footer)


@dataclass(frozen=True)
class Fact:
    """A row of a page's facts: (label, value, label, value), or (label, value) with the value
    across the row; ``kind``: the row's class, for a test or a stylesheet to find it."""

    cells: tuple[str, ...]
    kind: str | None = None


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


# Printed, room allowing, before any other event: what the session was and how it went, the
# most telling first (a stop and the end before the start; the start before a reset).
KEY_EVENTS: tuple[str, ...] = (
    EventType.ESTOP,
    EventType.FAULT,
    EventType.SESSION_ENDED,
    EventType.SESSION_STARTED,
    EventType.STOPPING,
    EventType.BELT_STARTED,
    EventType.OUTCOME_RECORDED,  # the newest of each kind only: the one that counts
    EventType.STOP_CHECKED,
    EventType.BELT_FOUND_MOVING,
    EventType.CAP_WARNING,
    EventType.INTERVAL_REST,
    EventType.RESET,
    EventType.FIRST_SESSION_CONFIRMED,
)
# The tables' headers and columns (in % of the page's width).
EVENT_HEADER = ("Time", "Into session", "Event", "What happened")
SESSION_HEADER = (
    "Session", "Date", "Program", "Belt min", "Cap min", "Top mph", "Ended by", "Pain (0-10)"
)  # fmt: skip
MEASURE_HEADER = ("Measure", "Baseline", "Latest", "Change")
EVENT_COLUMNS = fit.Columns((10, 8, 18, 64))
SESSION_COLUMNS = fit.Columns((9, 16, 16, 6, 6, 6, 25, 16), numeric=frozenset({0, 3, 4, 5}))
MEASURE_COLUMNS = fit.Columns((25, 25, 25, 25))
FACT_COLUMNS = fit.Columns(fit.FACT_PERCENTS)
SESSION_CAPTION = (
    "Belt speed (solid) and the target speed (dashed) against time into the session; each "
    "event is a line."
)
RUN_DOWN_CAPTION = "The grey band is the belt running down after the session ended."
# The patient's printed page keeps this many of the most recent sessions, room allowing (more
# where there is room), its chart giving up height for them: as many as the tablet's patient
# view shows (contract/queries.py's HISTORY_DEFAULT).
RECENT_ON_PAPER = HISTORY_DEFAULT
TREND_CAPTION = (
    "Per session, oldest on the left: belt minutes (bars; the cap a tick above each; red "
    "where an emergency stop or a fault ended it) and the top speed."
)


@dataclass
class _EventLine:
    """A row of the session's events: its cells, the details ``cut`` for paper (None: they
    fit), its height on paper (mm) and its classes (report.css)."""

    time: str
    into: str
    name: str
    text: str
    cut: str | None
    stop: bool
    mm: float
    classes: str = ""


def _classes(*, stop: bool, off_paper: bool) -> str:
    """A row's classes: red for a stop; on screen only, where paper has no room for it."""
    return " ".join(c for c, on in (("stop", stop), ("off-paper", off_paper)) if on)


def _newest_entries(events: Sequence[EventRow]) -> dict[str, int]:
    """The newest entry of the clinician's record of each kind (before, after), by its index
    in ``events``: the one that counts (outcomes_of)."""
    return {
        str(e.fields.get("when")): i
        for i, e in enumerate(events)
        if e.type == EventType.OUTCOME_RECORDED
    }


def _newest_notes(
    events: Sequence[EventRow], newest: Mapping[str, int], zone: ZoneInfo, most: int
) -> list[dict[str, Any]]:
    """The notes of the newest entry of each kind (before, after) that has them, with when
    and by whom they were entered; each cut for paper where it runs past ``most`` lines."""
    notes = []
    for when in ("before", "after"):
        if when not in newest or events[newest[when]].fields.get("notes") is None:
            continue
        entry = events[newest[when]]
        clinician = entry.fields.get("clinician")
        by = f"by {clinician}, " if clinician is not None else ""
        head = f"{when.capitalize()} the session"
        said = f"(entered {by}{t.when(entry.ts, zone)}):"
        text = str(entry.fields["notes"])
        lead = f"{head} {said}"
        cut = fit.cut(text, fit.PAGE_WIDTH_MM, fit.NOTE, most, lead=lead)
        notes.append(
            {
                "when": head,
                "by": said,
                "text": text,
                "cut": cut,
                "lines": fit.line_count(f"{lead} {cut or text}", fit.PAGE_WIDTH_MM, fit.NOTE),
            }
        )
    return notes


def _off_paper_words(left_off: Sequence[str], total: int, what: str) -> str:
    counts: dict[str, int] = {}
    for name in left_off:
        counts[name] = counts.get(name, 0) + 1
    kinds = ", ".join(f"{name}: {n}" for name, n in counts.items())
    return (
        f"For room, this printed page leaves off {len(left_off)} of the {total} {what} "
        f"({kinds}); the report on screen lists every one."
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
    relative = [(ts - t0, v, target) for ts, v, target in samples]
    marks = [
        Mark(e.ts - t0, t.event_name(e.type), MARKED[e.type], e.type)
        for e in events
        if e.type in MARKED
    ]
    entered = outcomes_of(events)
    page = Page(
        title=(
            f"{clinic.title(session.program)}: session {session.id}, "
            f"user {shown_code(session.user)}"
        ),
        subtitle=f"Session {session.id} on treadmill {clinic.treadmill}",
        facts=[
            Fact(("User", shown_code(session.user), "Program", clinic.title(session.program))),
            Fact(("Started", t.when(session.started_at, zone), "Belt time", belt_time(session))),
            Fact(
                ("Ended", t.when(session.ended_at, zone), "Top speed", t.mph(session.max_speed_mph))
            ),
            Fact(("How it ended", how_it_ended(session, events))),
            Fact(
                ("Pain (0-10)", t.pain_words(entered), "Exertion (0-10)", t.exertion_words(entered))
            ),
        ],
        footer=clinic.footer(written),
    )
    # The notes are shown once: the newest of each kind under the facts, an earlier entry's
    # with that entry among the events.
    newest = _newest_entries(events)
    listed = [(n, e) for n, e in enumerate(events) if e.type not in UNLISTED]
    counts = set(newest.values())
    rows = []
    for n, e in listed:
        if e.type == EventType.OUTCOME_RECORDED:
            details = t.outcome_entry(e.fields, notes=n not in counts)
        else:
            details = t.event_details(e.type, e.fields)
        cut = fit.cut(details, EVENT_COLUMNS.text_mm(3), fit.ROW, fit.DETAIL_LINES)
        time, into, name = t.time_of_day(e.ts, zone), t.clock(e.ts - t0), t.event_name(e.type)
        mm = EVENT_COLUMNS.row_mm((time, into, name, cut or details))
        rows.append(_EventLine(time, into, name, details, cut, e.type in STOPS, mm))
    # What the session was and how it went first, then the rest as they happened.
    key = sorted(
        (
            i
            for i, (n, e) in enumerate(listed)
            if e.type in KEY_EVENTS and (e.type != EventType.OUTCOME_RECORDED or n in counts)
        ),
        key=lambda i: KEY_EVENTS.index(listed[i][1].type),  # stable: in time within a kind
    )
    rest = [i for i in range(len(listed)) if i not in set(key)]
    # As the chart decides it: two samples from the end on make a line.
    run_down = (
        ended_s is not None and sum(ts >= ended_s and v is not None for ts, v, _ in relative) > 1
    )
    caption = SESSION_CAPTION + (f" {RUN_DOWN_CAPTION}" if run_down else "")

    room = page.room
    if any(events[i].fields.get("notes") is not None for i in newest.values()):
        room.heading("Clinician's notes")
    room.heading("Belt speed")
    room.chart(caption, 0.0)  # its height below, once the rest is reckoned
    room.heading("Events")
    room.left -= EVENT_COLUMNS.row_mm(EVENT_HEADER, fit.ROW_HEAD)
    # The chart gives up height, down to its least, before any event is left off paper; and
    # for the events that say what the session was and how it went (and the word on any left
    # off) the notes give up lines too, down to their least; not for the rest of the events.
    key_mm = sum(rows[i].mm for i in key)
    if rest:
        said = _off_paper_words([rows[i].name for i in rest], len(rows), "events")
        key_mm += fit.line_count(said, fit.PAGE_WIDTH_MM, fit.NOTE) * fit.NOTE.line_mm
        key_mm += fit.HEADING_BELOW
    least = fit.chart_mm(HEIGHT_MIN_IN)
    for most in range(fit.NOTE_LINES, fit.NOTE_LINES_LEAST - 1, -1):
        notes = _newest_notes(events, newest, zone, most)
        notes_mm = sum(n["lines"] * fit.NOTE.line_mm for n in notes)
        notes_mm += fit.NOTES_GAP * max(0, len(notes) - 1)
        if room.left - notes_mm - least >= key_mm:
            break
    room.left -= notes_mm
    chart_mm = _chart_mm(room, sum(r.mm for r in rows))
    kept, off_paper = _on_paper(
        [r.mm for r in rows],
        key + rest,
        room.left,
        lambda off: _off_paper_words([rows[i].name for i in off], len(rows), "events"),
    )
    for i, row in enumerate(rows):
        row.classes = _classes(stop=row.stop, off_paper=i not in kept)
    # The chart labels the events that matter most first; a crowd of the rest (speed changes
    # a second apart) keeps its lines, and some lose their labels.
    marks.sort(key=lambda m: m.kind not in KEY_EVENTS)  # stable: in time otherwise
    return clinic.page(
        "session.html.j2",
        page,
        notes=notes,
        # matplotlib's own SVG, text escaped
        chart=Markup(
            session_chart(relative, marks, ended_s=ended_s, height_in=fit.chart_in(chart_mm))
        ),
        caption=caption,
        header=EVENT_HEADER,
        events=rows,
        columns=EVENT_COLUMNS,
        off_paper=off_paper,
    )


def _chart_mm(room: fit.Room, needed: float) -> float:
    """The chart's height on paper: as tall as it is drawn, or shorter, down to its least,
    to leave ``needed`` mm below it; taken from what the page has left."""
    tallest, least = fit.chart_mm(HEIGHT_IN), fit.chart_mm(HEIGHT_MIN_IN)
    height = max(least, min(tallest, room.left - needed))
    room.left -= height
    return height


def _on_paper(
    heights: list[float],
    order: list[int],
    room: float,
    words: Callable[[list[int]], str],
    *,
    in_turn: bool = False,
) -> tuple[set[int], str | None]:
    """The rows printed (by index), taken in ``order`` while they fit in ``room`` mm (a row
    too tall for what is left passed over for shorter ones after it, unless ``in_turn``), and
    the printed page's word on those it leaves off (None when it leaves none off). The word
    takes room of its own: reckoned again until the rows leave enough for it."""
    if sum(heights) <= room:
        return set(range(len(heights))), None
    reserve = fit.NOTE.line_mm + fit.HEADING_BELOW
    # Each turn reserves more room than the last, so leaves off more rows and says more of
    # them; it ends when what it says fits what it reserved: at the latest, with every row
    # left off.
    while True:
        kept = fit.keep_within(heights, order, room - reserve, in_turn=in_turn)
        said = words([i for i in range(len(heights)) if i not in kept])
        needed = fit.line_count(said, fit.PAGE_WIDTH_MM, fit.NOTE) * fit.NOTE.line_mm
        needed += fit.HEADING_BELOW
        if needed <= reserve:
            return kept, said
        reserve = needed


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
    latest of each kind. Printed, the table keeps the most recent sessions that fit the page
    and says how many older ones it leaves off; the trend draws every one."""
    zone = clinic.zone
    entered = outcomes or {}
    rows: list[dict[str, Any]] = [
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
    count = f"{len(sessions)} session{'' if len(sessions) == 1 else 's'}"
    first_day = t.day(sessions[0].started_at, zone)
    last_day = t.day(sessions[-1].started_at, zone)
    facts = [
        Fact(
            (
                "User",
                shown_code(user),
                "Belt time in all",
                t.duration(sum(s.belt_moving_s or 0.0 for s in sessions)),
            )
        ),
        Fact(
            (
                "Last program",
                clinic.title(sessions[-1].program),
                "Top speed of all",
                t.mph(max(tops)) if tops else t.NONE,
            )
        ),
    ]
    if proposal is not None:
        week = f", week {proposal.week} on the treadmill" if proposal.week else ""
        weekly = "-".join(map(str, proposal.sessions_a_week))
        facts += [
            Fact(("Next session (proposed)", proposal.reason), kind="proposal"),
            Fact(("Phase", f"{proposal.phase_title}{week}", "Sessions a week", weekly)),
        ]
        if proposal.note:
            facts.append(Fact(("The clinic's note", proposal.note)))
    page = Page(
        title=f"User {shown_code(user)}: treadmill sessions",
        subtitle=f"{count}, {first_day} to {last_day}, on treadmill {clinic.treadmill}",
        facts=facts,
        footer=clinic.footer(written),
    )
    trends = measure_trends(measures)
    room = page.room
    room.heading("Trend")
    room.chart(TREND_CAPTION, 0.0)  # its height below, once the rest is reckoned
    room.heading("Sessions")
    room.left -= SESSION_COLUMNS.row_mm(SESSION_HEADER, fit.ROW_HEAD)
    if trends:
        room.heading("Measures")
        room.left -= MEASURE_COLUMNS.row_mm(MEASURE_HEADER, fit.ROW_HEAD)
        for m in trends:
            room.left -= MEASURE_COLUMNS.row_mm((m.title, m.baseline, m.latest, m.change))

    heights = [
        SESSION_COLUMNS.row_mm(
            (str(r["id"]), r["date"], r["program_title"], r["belt_min"], r["cap_min"],
             r["top_mph"], r["ended_by"], r["pain"])
        )
        for r in rows
    ]  # fmt: skip
    # The chart gives up height for the most recent RECENT_ON_PAPER sessions (and the word
    # on any older ones left off); not for more.
    recent = list(reversed(range(len(rows))))
    needed = sum(heights[i] for i in recent[:RECENT_ON_PAPER])
    if len(rows) > RECENT_ON_PAPER:
        said = _older_off_paper(user, rows, recent[RECENT_ON_PAPER:])
        needed += fit.line_count(said, fit.PAGE_WIDTH_MM, fit.NOTE) * fit.NOTE.line_mm
        needed += fit.HEADING_BELOW
    chart_mm = _chart_mm(room, needed)
    kept, off_paper = _on_paper(
        heights,
        recent,  # the most recent first, and none older than one left off
        room.left,
        lambda off: _older_off_paper(user, rows, off),
        in_turn=True,
    )
    for i, row in enumerate(rows):
        row["classes"] = _classes(stop=row["stop"], off_paper=i not in kept)
    return clinic.page(
        "patient.html.j2",
        page,
        # matplotlib's own SVG, text escaped
        chart=Markup(trend_chart(points, height_in=fit.chart_in(chart_mm))),
        caption=TREND_CAPTION,
        header=SESSION_HEADER,
        sessions=rows,
        columns=SESSION_COLUMNS,
        measure_header=MEASURE_HEADER,
        measures=trends,
        measure_columns=MEASURE_COLUMNS,
        off_paper=off_paper,
    )


def _older_off_paper(user: str, rows: Sequence[Mapping[str, Any]], off: Sequence[int]) -> str:
    left_off = set(off)
    printed = [r for i, r in enumerate(rows) if i not in left_off]
    lists = (
        f"lists the {len(printed)} most recent of the {len(rows)} sessions (from session "
        f"{printed[0]['id']}, {printed[0]['date']})"
        if printed
        else f"lists none of the {len(rows)} sessions"
    )
    return (
        f"For room, this printed page {lists}; the trend above draws all {len(rows)}. The "
        "report on screen lists every one, as does the command treadguard export --csv "
        f"--user {shlex.quote(user)}."
    )


def sessions_csv(
    sessions: Sequence[SessionRow],
    *,
    clinic: Clinic,
    outcomes: Mapping[int, Mapping[str, Mapping[str, Any]]] | None = None,
) -> str:
    """One row a session, for a spreadsheet: times ISO 8601 with the clinic's offset, the
    belt time to 0.1 s, the top speed to 0.01 mph, the end reason as its code, and the
    clinician's record of it (``outcomes``: per session, plan.outcomes_of its events: the
    newest entry before and after, empty where none was made)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for s in sessions:
        entries = (outcomes or {}).get(s.id, {})
        before, after = entries.get("before", {}), entries.get("after", {})
        clinician = after.get("clinician") or before.get("clinician")
        writer.writerow(
            (
                s.id,
                _cell(s.user),  # a code may begin with = or @ (the contract allows them)
                s.program,
                clinic.title(s.program),
                t.iso(s.started_at, clinic.zone),
                t.iso(s.ended_at, clinic.zone),
                "" if s.belt_moving_s is None else f"{s.belt_moving_s:.1f}",
                f"{s.cap_s:g}",
                "" if s.max_speed_mph is None else f"{s.max_speed_mph:.2f}",
                s.end_reason or "",
                _cell(before.get("pain")),
                _cell(after.get("pain")),
                _cell(after.get("exertion")),
                _cell(before.get("notes")),
                _cell(after.get("notes")),
                _cell(clinician),
            )
        )
    return out.getvalue()


def _cell(value: object) -> str:
    """An entry's value as a CSV cell: an integer score or a text; anything else empty. A
    text that a spreadsheet would take for a formula (=, +, -, @ first) gets a ' before it:
    typed into a note on a tablet, it must not run when the file is opened."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return ""
    text = str(value)
    if isinstance(value, str) and text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text
