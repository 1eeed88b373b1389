"""An event of the ``<p>/events`` topic in words, for the people who read a timeline.

One wording for every reader written in Python: the scenario runner's timeline
(``treadguard simulate``) and the terminal tablet (``treadguard tablet watch``) both call
:func:`describe`. It takes the event as published (its ``type`` and its fields, JSON scalars),
so it needs nothing but the contract. The plain words for the contract's codes (a cause, an end
reason, a refusal, a sensor, a state, an event) are the tables below: the tablet page cannot run
this module, so it reads a copy of them, ``tablet/words.js``, that ``controller/page_words.py``
writes and a test keeps identical.

Fields are read defensively: a watcher reads what a broker delivered, so a field may be
missing or of the wrong type, and the words must still come out (the raw value is shown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from treadguard.contract.mqtt import ErrorCode
from treadguard.safety.decisions import Cause, EndReason, EventType, JsonScalar, State
from treadguard.safety.inputs import Sensor
from treadguard.safety.stop_watch import Verdict

# What latched a stop, as a person says it (completes "EMERGENCY STOP: ...").
CAUSE_WORDS: dict[Cause, str] = {
    Cause.GRIP_LOST: "both hands off the handrails",
    Cause.FALL: "a fall was detected",
    Cause.SENSOR_STALE: "a grip or fall sensor went silent",
    Cause.REMOTE_ESTOP: "the E-STOP was pressed on a tablet",
    Cause.DRIVE_LINK: "the treadmill's drive stopped answering",
    Cause.DRIVE_FAULT: "the treadmill's drive reported a fault",
    Cause.FEEDBACK_MISMATCH: "the belt did not follow the commanded speed",
    Cause.JOURNAL: "the session journal cannot be written",
    Cause.RIVAL_DAEMON: "another controller is driving this treadmill",
    Cause.SHUTDOWN: "treadguard was shutting down and stopped the belt at once",
}

# What must be done before Reset, once the belt stands still: only what the cause needs (an
# E-STOP pressed on a tablet leaves nothing to clear).
CAUSE_HINTS: dict[Cause, str] = {
    Cause.GRIP_LOST: "Put both hands back on the handrails, then press Reset.",
    Cause.FALL: "See to the user and clear the fall sensor, then press Reset.",
    Cause.SENSOR_STALE: "Check the grip and fall sensors and their cables, then press Reset.",
    Cause.REMOTE_ESTOP: "Nothing to clear: press Reset when you are ready.",
    Cause.DRIVE_LINK: "Check the drive's cable and power, then press Reset.",
    Cause.DRIVE_FAULT: "Read the fault on the drive and clear it there, then press Reset.",
    Cause.FEEDBACK_MISMATCH: "Check the belt and the drive's speed feedback, then press Reset.",
    Cause.JOURNAL: "Free the board's storage (call the technician), then press Reset.",
    Cause.RIVAL_DAEMON: "Stop the other controller (call the technician), then press Reset.",
    Cause.SHUTDOWN: "Nothing to clear: treadguard is stopping.",
}

# How a session ended (completes "Session 3 ended: ...").
END_REASON_WORDS: dict[EndReason, str] = {
    EndReason.CAP: "the session cap was reached",
    EndReason.COMPLETED: "the program is complete",
    EndReason.OPERATOR_STOP: "stopped from a tablet",
    EndReason.TABLET_LOST: "no tablet heartbeat (the page was hidden or lost its link)",
    EndReason.START_ABORTED: "the start was aborted",
    EndReason.ESTOP: "emergency stop",
    EndReason.FAULT: "fault",
    EndReason.LOOP_OVERRUN: "the controller ran late",
    EndReason.SHUTDOWN: "the controller was shut down",
}

# What a refusal's code means, for a reply that carries no message of its own.
REFUSAL_WORDS: dict[ErrorCode, str] = {
    ErrorCode.INVALID_JSON: "the command could not be read",
    ErrorCode.INVALID_COMMAND: "the command is not complete or not valid",
    ErrorCode.UNKNOWN_TYPE: "the treadmill does not know this command",
    ErrorCode.PAYLOAD_TOO_LARGE: "the command is too long",
    ErrorCode.OUT_OF_RANGE: "the value is outside what is allowed",
    ErrorCode.NOT_ALLOWED: "not possible in the treadmill's present state",
    ErrorCode.PRECONDITIONS_UNMET: "not possible yet: something must be done first",
    ErrorCode.LATCHED: "a stop is latched: Reset first",
    ErrorCode.DUPLICATE: "this command was already received",
    ErrorCode.RATE_LIMITED: "too many commands at once",
    ErrorCode.INTERNAL_ERROR: "the treadmill failed to handle the command",
}

SENSOR_WORDS: dict[Sensor, str] = {
    Sensor.GRIP_LEFT: "the left grip sensor",
    Sensor.GRIP_RIGHT: "the right grip sensor",
    Sensor.FALL: "the fall sensor",
}

# The state as the tablet's badge shows it.
STATE_WORDS: dict[State, str] = {
    State.IDLE: "IDLE",
    State.COUNTDOWN: "COUNTDOWN",
    State.RUNNING: "RUNNING",
    State.STOPPING: "STOPPING",
    State.ESTOP: "E-STOP",
    State.FAULT: "FAULT",
}

# An event's name in a log line (the line goes on with what the event says).
EVENT_WORDS: dict[EventType, str] = {
    EventType.SESSION_STARTED: "Session started",
    EventType.COUNTDOWN: "Countdown",
    EventType.BELT_STARTED: "Belt started",
    EventType.SPEED_STEP: "Target raised",
    EventType.SPEED_CHANGED: "Speed changed",
    EventType.OUTCOME_RECORDED: "Outcome recorded",
    EventType.FIRST_SESSION_CONFIRMED: "First session confirmed",
    EventType.MEASURE_RECORDED: "Measure recorded",
    EventType.CAP_WARNING: "Cap warning",
    EventType.STOPPING: "Stopping",
    EventType.SESSION_ENDED: "Session ended",
    EventType.INTERVAL_REST: "Rest",
    EventType.ESTOP: "EMERGENCY STOP",
    EventType.FAULT: "FAULT",
    EventType.RESET: "Reset",
    EventType.GRIP_WARNING: "Hand off the handrail",
    EventType.SENSOR_STALE: "Sensor silent",
    EventType.COMMAND_REFUSED: "Command refused",
    EventType.JOURNAL_WARNING: "Journal warning",
    EventType.BELT_FOUND_MOVING: "Belt found moving",
    EventType.COMMISSIONING_EXPIRED: "Commissioning expired",
    EventType.STOP_CHECKED: "Stop checked",
    EventType.MAINTENANCE_WARNING: "Maintenance",
}

# The fields every event carries, which say nothing about what happened.
_ENVELOPE = frozenset({"type", "ts", "event_id"})


def clock_text(seconds: float) -> str:
    """``m:ss.s``: a time in a session, or a time left."""
    if not math.isfinite(seconds):
        return str(seconds)
    minutes, rest = divmod(max(seconds, 0.0), 60.0)
    return f"{int(minutes)}:{rest:04.1f}"


def _clock(value: JsonScalar, *, unknown: str | None = None) -> str:
    """A time in minutes and seconds; ``unknown``: the words for none (null or left out)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return clock_text(float(value))
    if value is None and unknown is not None:
        return unknown
    return str(value)


def _stop_checked(f: Mapping[str, JsonScalar]) -> str:
    """A stop, timed and judged against its kind's baseline (the stop-quality watch)."""
    why = f" ({f['why']})" if "why" in f else ""
    if f.get("standstill_s") is None or f.get("deceleration_mph_per_s") is None:
        return f"{f.get('kind')} stop: {f.get('verdict')}{why}"
    decel = f"{f.get('deceleration_mph_per_s')} mph/s"
    if f.get("standstill_reached") is False:
        took = f"still not at standstill after {f.get('standstill_s')} s (at most {decel})"
    else:
        took = f"standstill after {f.get('standstill_s')} s ({decel})"
    return f"{f.get('kind')} stop from {f.get('speed_mph')} mph: {took}, {f.get('verdict')}{why}"


def describe(event: Mapping[str, JsonScalar]) -> str:
    """The event in one line of words; an event type this version does not know is shown as
    its type and fields, so nothing a newer daemon publishes is hidden."""
    f = event
    kind = f.get("type")
    match kind:
        case EventType.SESSION_STARTED:
            return (
                f"session {f.get('session_id')} started: user {f.get('user')}, "
                f"{f.get('program')}, cap {_clock(f.get('cap_s'))}, "
                f"target {f.get('target_mph')} mph"
            )
        case EventType.SESSION_ENDED:
            return (
                f"session {f.get('session_id')} ended: {f.get('reason')}, "
                f"belt time {_clock(f.get('belt_moving_s'), unknown='unknown')}"
            )
        case EventType.COUNTDOWN:
            seconds = f.get("seconds")
            shown = f"{seconds:g}" if isinstance(seconds, float) else str(seconds)
            return f"countdown {shown} s"
        case EventType.BELT_STARTED:
            return f"belt starts, target {f.get('target_mph')} mph"
        case EventType.SPEED_STEP:
            return f"speed step, target {f.get('target_mph')} mph"
        case EventType.OUTCOME_RECORDED:
            exertion = f", exertion {f.get('exertion')}/10" if "exertion" in f else ""
            notes = f", notes: {f.get('notes')}" if "notes" in f else ""
            by = f" by {f.get('clinician')}" if "clinician" in f else ""
            return (
                f"session {f.get('session_id')} {f.get('when')}: pain {f.get('pain')}/10"
                f"{exertion}{notes}{by}"
            )
        case EventType.FIRST_SESSION_CONFIRMED:
            by = f" by {f.get('clinician')}" if f.get("clinician") is not None else ""
            return (
                f"session {f.get('session_id')} confirmed as user {f.get('user')}'s first "
                f"treadmill session{by}"
            )
        case EventType.MEASURE_RECORDED:
            by = f" by {f.get('clinician')}" if f.get("clinician") is not None else ""
            return f"user {f.get('user')}: {f.get('kind')} {f.get('value')} on {f.get('date')}{by}"
        case EventType.SPEED_CHANGED:
            by = f" by {f.get('clinician')}" if f.get("clinician") is not None else ""
            count = f.get("count")
            times = f", {count} changes" if isinstance(count, int) and count > 1 else ""
            return (
                f"target changed from {f.get('from_mph')} to {f.get('to_mph')} mph{by} "
                f"(session {f.get('session_id')}{times})"
            )
        case EventType.CAP_WARNING:
            return f"cap warning: {_clock(f.get('remaining_s'))} of belt time left"
        case EventType.STOPPING:
            return f"controlled stop ({f.get('reason')})"
        case EventType.INTERVAL_REST:
            return (
                f"interval {f.get('interval')} of {f.get('intervals')} done, "
                f"rest {f.get('rest_s')} s"
            )
        case EventType.ESTOP | EventType.FAULT:
            what = "EMERGENCY STOP" if kind == EventType.ESTOP else "FAULT"
            return f"{what}: {f.get('cause')} ({f.get('detail')})"
        case EventType.RESET:
            return f"reset: {f.get('cleared')} cleared"
        case EventType.GRIP_WARNING:
            return f"warning: {f.get('hand')} hand off the handrail ({f.get('cause')})"
        case EventType.SENSOR_STALE:
            return f"sensor {f.get('sensor')} is stale"
        case EventType.COMMAND_REFUSED:
            count = f.get("count")
            times = f" ({count} times)" if isinstance(count, int) and count > 1 else ""
            return (
                f"command refused: {f.get('command')} -> {f.get('code')}: {f.get('message')}{times}"
            )
        case EventType.BELT_FOUND_MOVING:
            return f"belt found moving at {f.get('speed_mph')} mph: stopping it"
        case EventType.JOURNAL_WARNING:
            return f"journal warning: {f.get('message')}"
        case EventType.STOP_CHECKED:
            return _stop_checked(f)
        case EventType.COMMISSIONING_EXPIRED:
            return (
                f"commissioning expired: {f.get('detail')}; no session starts until it passes again"
            )
        case EventType.MAINTENANCE_WARNING:
            return f"MAINTENANCE WARNING: {f.get('message')}"
        case _:
            fields = " ".join(f"{k}={v}" for k, v in f.items() if k not in _ENVELOPE)
            return f"{kind} {fields}".rstrip()


# How a session ended as the journal has it: the core's reasons, and "interrupted" (a session
# still open when treadguard started again, closed at its last record).
END_WORDS: dict[str, str] = {
    **{reason.value: text for reason, text in END_REASON_WORDS.items()},
    "interrupted": "interrupted: treadguard stopped during the session",
}

# A stop timed against the treadmill's commissioned one (safety/stop_watch.py).
VERDICT_WORDS: dict[Verdict, str] = {
    Verdict.GOOD: "as fast as commissioned",
    Verdict.SLOW: "slower than commissioned",
    Verdict.NO_BASELINE: "not compared: no commissioned stop of its kind",
    Verdict.BELOW_MIN_SPEED: "too slow a belt to judge",
    Verdict.INTERRUPTED: "not timed to a standstill",
}


def words(vocabulary: Mapping[Any, str], code: object) -> str:
    """``code`` in words; a code this version does not know is shown as it is."""
    return vocabulary.get(code, str(code)) if isinstance(code, str) else str(code)
