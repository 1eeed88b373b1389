"""An event of the ``<p>/events`` topic in words, for the people who read a timeline.

One wording for every reader written in Python: the scenario runner's timeline
(``treadguard simulate``) and the terminal tablet (``treadguard tablet watch``) both call
:func:`describe`. It takes the event as published (its ``type`` and its fields, JSON scalars),
so it needs nothing but the contract. The tablet page says the same things in its own words,
in JavaScript, in ``tablet/tablet.js``: a browser cannot run this module.

Fields are read defensively: a watcher reads what a broker delivered, so a field may be
missing or of the wrong type, and the words must still come out (the raw value is shown).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from treadguard.safety.decisions import EventType, JsonScalar

# The fields every event carries, which say nothing about what happened.
_ENVELOPE = frozenset({"type", "ts", "event_id"})


def clock_text(seconds: float) -> str:
    """``m:ss.s``: a time in a session, or a time left."""
    if not math.isfinite(seconds):
        return str(seconds)
    minutes, rest = divmod(max(seconds, 0.0), 60.0)
    return f"{int(minutes)}:{rest:04.1f}"


def _clock(value: JsonScalar) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return clock_text(float(value))
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
                f"belt time {_clock(f.get('belt_moving_s'))}"
            )
        case EventType.COUNTDOWN:
            seconds = f.get("seconds")
            shown = f"{seconds:g}" if isinstance(seconds, float) else str(seconds)
            return f"countdown {shown} s"
        case EventType.BELT_STARTED:
            return f"belt starts, target {f.get('target_mph')} mph"
        case EventType.SPEED_STEP:
            return f"speed step, target {f.get('target_mph')} mph"
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
