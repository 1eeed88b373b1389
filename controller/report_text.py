"""Numbers, times and events as a clinician reads them in a report: rounded, in the clinic's
time zone, and in the words of contract/event_text.py (one vocabulary with the timeline)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from treadguard.contract.codes import shown_code
from treadguard.contract.event_text import (
    CAUSE_WORDS,
    END_WORDS,
    EVENT_WORDS,
    SENSOR_WORDS,
    VERDICT_WORDS,
    describe,
    words,
)
from treadguard.contract.measures import MEASURES, MeasureKind
from treadguard.safety.decisions import EventType

NONE = "-"


def pain_words(outcomes: Mapping[str, Mapping[str, Any]]) -> str:
    """Pain before and after a session on the 0-10 scale, as the clinician entered them:
    "4 before, 2 after"; "-" when neither was entered."""
    parts = [
        f"{outcomes[when].get('pain')} {when}" for when in ("before", "after") if when in outcomes
    ]
    return ", ".join(parts) if parts else NONE


def exertion_words(outcomes: Mapping[str, Mapping[str, Any]]) -> str:
    """Perceived exertion as entered after the session: "5/10"; "-" when not entered."""
    exertion = outcomes.get("after", {}).get("exertion")
    return NONE if exertion is None else f"{exertion}/10"


def outcome_entry(fields: Mapping[str, Any], *, notes: bool = True) -> str:
    """One entry of the clinician's record in words: "pain after the session 6/10, exertion
    5/10, entered by c-7: knee hurt". ``notes`` False: its notes are shown elsewhere on the
    page, and the entry says so rather than repeat them."""
    said = f"pain {fields.get('when')} the session {fields.get('pain')}/10"
    if fields.get("exertion") is not None:
        said += f", exertion {fields['exertion']}/10"
    said += _by("entered", fields)
    if fields.get("notes") is not None:
        said += f": {fields['notes']}" if notes else "; notes above"
    return said


def measure_words(kind: object, value: object) -> str:
    """A measure with its title and unit: "Timed Up and Go 12.0 s", "KOOS 62"."""
    known = next((k for k in MeasureKind if k.value == kind), None)
    v = _finite(value)
    if known is None or v is None:
        return f"{kind} {value}"
    measure = MEASURES[known]
    return f"{measure.title} {measure.value_words(v)}"


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def mph(value: object) -> str:
    """A speed to 0.01 mph: "0.80 mph"."""
    v = _finite(value)
    return NONE if v is None else f"{v:.2f} mph"


def seconds(value: object) -> str:
    """A short time to 0.1 s: "0.4 s"."""
    v = _finite(value)
    return NONE if v is None else f"{v:.1f} s"


def millis(value: object) -> str:
    """A latency to 0.1 ms: "1.2 ms"."""
    v = _finite(value)
    return NONE if v is None else f"{v:.1f} ms"


def duration(value: object, *, whole_minutes: bool = False, down: bool = False) -> str:
    """Belt time to the second: "3 min 0 s", "13 s". ``whole_minutes``: a cap, said "5 min"
    when it is a whole number of minutes. ``down``: the whole seconds reached, for a time said
    to fall short of a limit (179.6 s is "2 min 59 s", never the "3 min 0 s" it lacks)."""
    v = _finite(value)
    if v is None:
        return NONE
    # Half a second up, as a person rounds (round() would take 8.5 s to 8).
    minutes, rest = divmod(math.floor(max(v, 0.0) + (0.0 if down else 0.5)), 60)
    if minutes == 0:
        return f"{rest} s"
    if whole_minutes and rest == 0:
        return f"{minutes} min"
    return f"{minutes} min {rest} s"


def minutes(value: object) -> str:
    """Belt time in minutes to 0.1: "4.5" (the patient report's column and trend)."""
    v = _finite(value)
    return NONE if v is None else f"{v / 60:.1f}"


def clock(value: object) -> str:
    """A time into the session, to the second: "2:05"."""
    v = _finite(value)
    if v is None:
        return NONE
    sign = "-" if v < 0 else ""
    m, s = divmod(math.floor(abs(v) + 0.5), 60)
    return f"{sign}{m}:{s:02d}"


def _local(ts: object, zone: ZoneInfo) -> datetime | None:
    """``ts`` as a moment in the clinic's zone; None for a time no calendar holds (not a
    number, or outside the years 1 to 9999: SR-16 lets the wall clock step by any amount, and
    a journal keeps what the clock read)."""
    v = _finite(ts)
    if v is None:
        return None
    try:
        return datetime.fromtimestamp(v, zone)
    except (OverflowError, OSError, ValueError):
        return None


def no_calendar(ts: object) -> str:
    """A time that no calendar holds, shown as such with what the journal holds:
    "unix time 253402300800, outside the calendar"."""
    v = _finite(ts)
    held = f"{v:.0f}" if v is not None and abs(v) < 1e15 else f"{ts}"
    return f"unix time {held}, outside the calendar"


def when(ts: float | None, zone: ZoneInfo) -> str:
    """A moment in the clinic's zone, with its abbreviation: "2026-12-01 14:05:03 GMT"."""
    if ts is None:
        return NONE
    moment = _local(ts, zone)
    return no_calendar(ts) if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S %Z")


def when_to_the_minute(ts: float, zone: ZoneInfo) -> str:
    """A moment in the clinic's zone, to the minute: "2026-12-01 14:05"."""
    moment = _local(ts, zone)
    return no_calendar(ts) if moment is None else moment.strftime("%Y-%m-%d %H:%M")


def day(ts: float, zone: ZoneInfo) -> str:
    """The day of a moment in the clinic's zone: "2026-12-01"."""
    moment = _local(ts, zone)
    return no_calendar(ts) if moment is None else moment.strftime("%Y-%m-%d")


def month_day(ts: float, zone: ZoneInfo) -> str:
    """The month and day of a moment in the clinic's zone: "12-01" (a chart's label)."""
    moment = _local(ts, zone)
    return no_calendar(ts) if moment is None else moment.strftime("%m-%d")


def time_of_day(ts: float, zone: ZoneInfo) -> str:
    """The time of day of a moment in the clinic's zone: "14:05:03"."""
    moment = _local(ts, zone)
    return no_calendar(ts) if moment is None else moment.strftime("%H:%M:%S")


def iso(ts: float | None, zone: ZoneInfo) -> str:
    """ISO 8601 with the zone's offset at that moment: "2026-12-01T14:05:03+00:00"; "" for
    no time (an open session's end)."""
    if ts is None:
        return ""
    moment = _local(ts, zone)
    return no_calendar(ts) if moment is None else moment.isoformat(timespec="seconds")


def ended_by(reason: str | None) -> str:
    return "still open" if reason is None else words(END_WORDS, reason)


def event_name(kind: str) -> str:
    """The event type in words, capitalised for a table or a chart: "Emergency stop"."""
    text = words(EVENT_WORDS, kind)
    # The log's names shout the stops ("EMERGENCY STOP"); a report says them in sentence case.
    return text.capitalize() if text.isupper() else text[:1].upper() + text[1:]


def _stop(f: Mapping[str, Any]) -> str:
    text = words(CAUSE_WORDS, f.get("cause"))
    if f.get("detail"):
        text += f": {f['detail']}"
    if _finite(f.get("stop_latency_ms")) is not None:
        text += f"; stop sent to the drive {millis(f['stop_latency_ms'])} after it"
    return text


def _stop_checked(f: Mapping[str, Any]) -> str:
    head = f"{f.get('kind')} stop"
    if _finite(f.get("speed_mph")) is not None:
        head += f" from {mph(f['speed_mph'])}"
    if _finite(f.get("standstill_s")) is not None:
        still = "still moving after" if f.get("standstill_reached") is False else "standstill in"
        head += f": {still} {seconds(f['standstill_s'])}"
    # The verdict in words says what its "why" says for a stop not compared.
    verdict = f", {words(VERDICT_WORDS, f.get('verdict'))}" if f.get("verdict") else ""
    return head + verdict


def code(value: object) -> str:
    """A user's or a clinician's code as a report shows it: as typed, or, in an older journal,
    with each character that would not show as itself as an escape (contract/codes.py)."""
    return shown_code(value) if isinstance(value, str) else str(value)


def _by(what: str, f: Mapping[str, Any]) -> str:
    """Who entered, confirmed or asked for it: ", entered by c-7"; "" when the command did
    not say."""
    return f", {what} by {code(f['clinician'])}" if f.get("clinician") is not None else ""


def _refused(f: Mapping[str, Any]) -> str:
    count = f.get("count")
    times = f" ({count} times)" if isinstance(count, int) and count > 1 else ""
    command = str(f.get("command")).replace("_", " ")  # set_speed: "set speed"
    return f"{command}: {f.get('message')}{times}"


_DETAILS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    EventType.SESSION_STARTED: lambda f: (
        f"belt-time cap {duration(f.get('cap_s'), whole_minutes=True)}"
        + (f", target {mph(f['target_mph'])}" if _finite(f.get("target_mph")) is not None else "")
    ),
    EventType.COUNTDOWN: lambda f: f"{f.get('seconds')} s",
    EventType.BELT_STARTED: lambda f: f"target {mph(f.get('target_mph'))}",
    EventType.SPEED_STEP: lambda f: f"target {mph(f.get('target_mph'))}",
    EventType.OUTCOME_RECORDED: outcome_entry,
    EventType.FIRST_SESSION_CONFIRMED: lambda f: (
        f"session {f.get('session_id')} counts as user {code(f.get('user'))}'s first treadmill "
        "session" + _by("confirmed", f)
    ),
    EventType.MEASURE_RECORDED: lambda f: (
        f"user {code(f.get('user'))}: {measure_words(f.get('kind'), f.get('value'))}, taken "
        f"{f.get('date')}" + _by("entered", f)
    ),
    EventType.SPEED_CHANGED: lambda f: (
        f"target {mph(f.get('from_mph'))} to {mph(f.get('to_mph'))}"
        + _by("asked", f)
        + (f" ({f['count']} changes within a second)" if f.get("count") else "")
    ),
    EventType.CAP_WARNING: lambda f: f"{duration(f.get('remaining_s'))} of belt time left",
    EventType.STOPPING: lambda f: words(END_WORDS, f.get("reason")),
    EventType.SESSION_ENDED: lambda f: (
        f"{words(END_WORDS, f.get('reason'))}, belt time {duration(f.get('belt_moving_s'))}"
    ),
    EventType.INTERVAL_REST: lambda f: (
        f"interval {f.get('interval')} of {f.get('intervals')} "
        f"done, rest {duration(f.get('rest_s'))}"
    ),
    EventType.ESTOP: _stop,
    EventType.FAULT: _stop,
    EventType.RESET: lambda f: f"cleared: {words(CAUSE_WORDS, f.get('cleared'))}",
    EventType.GRIP_WARNING: lambda f: (
        f"{f.get('hand')} hand off the handrail"
        + (" (its sensor went silent)" if f.get("cause") == "sensor_stale" else "")
    ),
    EventType.SENSOR_STALE: lambda f: f"{words(SENSOR_WORDS, f.get('sensor'))} sensor",
    EventType.COMMAND_REFUSED: _refused,
    EventType.BELT_FOUND_MOVING: lambda f: f"at {mph(f.get('speed_mph'))}: stopped",
    EventType.JOURNAL_WARNING: lambda f: str(f.get("message")),
    EventType.COMMISSIONING_EXPIRED: lambda f: str(f.get("detail")),
    EventType.STOP_CHECKED: _stop_checked,
    EventType.MAINTENANCE_WARNING: lambda f: str(f.get("message")),
}


def event_details(kind: str, fields: Mapping[str, Any]) -> str:
    """What happened, in words with rounded numbers. An event type this version does not know
    is shown as the timeline shows it (its type and fields), so nothing is hidden."""
    detail = _DETAILS.get(kind)
    if detail is None:
        return describe({"type": kind, **fields})
    return detail(fields)
