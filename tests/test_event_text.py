"""Events in words (contract/event_text.py): one wording for the scenario timeline and the
terminal tablet, every event type worded, and no payload a broker delivers can make it raise."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from treadguard.contract.event_text import (
    CAUSE_WORDS,
    END_WORDS,
    EVENT_WORDS,
    SENSOR_WORDS,
    VERDICT_WORDS,
    clock_text,
    describe,
)
from treadguard.controller.report_text import event_details
from treadguard.controller.tablet import event_line
from treadguard.safety.decisions import Cause, EndReason, EventType, JsonScalar
from treadguard.safety.inputs import Sensor
from treadguard.safety.stop_watch import Verdict

# One event of each type as the core emits it (safety/core.py, controller/system.py).
EXAMPLES: dict[EventType, dict[str, JsonScalar]] = {
    EventType.SESSION_STARTED: {
        "session_id": "7", "user": "p-001", "program": "reverse_walking", "cap_s": 300.0,
        "target_mph": 0.8,
    },
    EventType.COUNTDOWN: {"seconds": 3.0},
    EventType.BELT_STARTED: {"target_mph": 0.8, "interval": 1},
    EventType.SPEED_STEP: {"target_mph": 0.9},
    EventType.OUTCOME_RECORDED: {
        "session_id": "7",
        "when": "after",
        "pain": 3,
        "exertion": 5,
        "notes": "walked well",
        "clinician": "c-12",
    },
    EventType.FIRST_SESSION_CONFIRMED: {"session_id": "7", "user": "p-001", "clinician": "c-12"},
    EventType.MEASURE_RECORDED: {
        "user": "p-001",
        "kind": "walk_10m",
        "value": 8.4,
        "date": "2026-12-01",
        "clinician": "c-12",
    },
    EventType.SPEED_CHANGED: {
        "session_id": "7",
        "from_mph": 0.8,
        "to_mph": 1.0,
        "clinician": "c-12",
    },
    EventType.CAP_WARNING: {"remaining_s": 30.0},
    EventType.STOPPING: {"reason": "cap"},
    EventType.SESSION_ENDED: {"session_id": "7", "reason": "cap", "belt_moving_s": 299.6},
    EventType.INTERVAL_REST: {"interval": 2, "intervals": 8, "rest_s": 60.0},
    EventType.ESTOP: {"cause": "fall", "detail": "fall sensor tripped"},
    EventType.FAULT: {"cause": "drive_link", "detail": "no answer for 0.5 s"},
    EventType.RESET: {"cleared": "fall"},
    EventType.GRIP_WARNING: {"hand": "left", "cause": "released"},
    EventType.SENSOR_STALE: {"sensor": "grip_left"},
    EventType.COMMAND_REFUSED: {
        "command": "set_speed", "code": "out_of_range", "message": "above 1.2 mph", "count": 3,
    },
    EventType.JOURNAL_WARNING: {"message": "the journal is 81 % full"},
    EventType.BELT_FOUND_MOVING: {"speed_mph": 0.4},
    EventType.COMMISSIONING_EXPIRED: {"detail": "the commissioning of 2026-09-01 is 90 days old"},
    EventType.STOP_CHECKED: {
        "kind": "emergency", "verdict": "slow", "speed_mph": 0.8, "standstill_s": 0.41,
        "standstill_reached": True, "deceleration_mph_per_s": 1.95, "slow_in_a_row": 1,
    },
    EventType.MAINTENANCE_WARNING: {
        "kind": "emergency", "slow_in_a_row": 1, "standstill_s": 0.41,
        "expected_standstill_s": 0.28, "message": "emergency stop 46 % slower than commissioned",
    },
}  # fmt: skip

EXPECTED = {
    EventType.SESSION_STARTED: "session 7 started: user p-001, reverse_walking, cap 5:00.0, "
    "target 0.8 mph",
    EventType.COUNTDOWN: "countdown 3 s",
    EventType.CAP_WARNING: "cap warning: 0:30.0 of belt time left",
    EventType.SESSION_ENDED: "session 7 ended: cap, belt time 4:59.6",
    EventType.ESTOP: "EMERGENCY STOP: fall (fall sensor tripped)",
    EventType.FAULT: "FAULT: drive_link (no answer for 0.5 s)",
    EventType.COMMAND_REFUSED: "command refused: set_speed -> out_of_range: above 1.2 mph "
    "(3 times)",
    EventType.STOP_CHECKED: "emergency stop from 0.8 mph: standstill after 0.41 s "
    "(1.95 mph/s), slow",
}


def test_every_event_type_has_words_of_its_own() -> None:
    assert set(EXAMPLES) == set(EventType), "a new event type needs words in event_text.py"
    for kind, fields in EXAMPLES.items():
        text = describe({"type": kind.value, **fields})
        assert "=" not in text, f"{kind} falls back to its raw fields: {text}"
        for value in fields.values():
            if isinstance(value, str) and kind is not EventType.SESSION_ENDED:
                assert value in text, f"{kind}: {value!r} is not in {text!r}"


def test_the_words_are_the_ones_a_reader_sees() -> None:
    for kind, expected in EXPECTED.items():
        assert describe({"type": kind.value, **EXAMPLES[kind]}) == expected


def test_one_vocabulary_has_words_for_every_event_cause_and_ending() -> None:
    """The timeline, the terminal tablet and the clinician's reports take their words from
    the same tables, and every code the core emits has its words there."""
    assert set(EVENT_WORDS) == set(EventType)
    assert set(CAUSE_WORDS) == set(Cause)
    assert set(END_WORDS) >= set(EndReason)
    assert set(SENSOR_WORDS) == set(Sensor)
    assert set(VERDICT_WORDS) == set(Verdict)
    for words in (EVENT_WORDS, CAUSE_WORDS, END_WORDS):
        assert all(text and "_" not in text for text in words.values()), words


def test_the_reports_word_every_event_type_with_rounded_numbers() -> None:
    for kind, fields in EXAMPLES.items():
        text = event_details(kind.value, fields)
        assert "=" not in text, f"{kind} falls back to its raw fields: {text}"
        assert "_" not in text.replace("p-001", ""), f"{kind} shows a code: {text}"
    stop = {"cause": "grip_lost", "detail": "both hands off", "stop_latency_ms": 1.2227497188}
    assert event_details("estop", stop) == (
        "both hands off the handrails: both hands off; stop sent to the drive 1.2 ms after it"
    )
    assert event_details("session_ended", {"reason": "cap", "belt_moving_s": 179.6}) == (
        "the session cap was reached, belt time 3 min 0 s"
    )
    assert event_details("brake_worn", {"margin": 0.3}) == "brake_worn margin=0.3"
    assert event_details("measure_recorded", EXAMPLES[EventType.MEASURE_RECORDED]) == (
        "user p-001: 10 m walk 8.4 s, taken 2026-12-01, entered by c-12"
    )
    assert event_details(
        "first_session_confirmed", EXAMPLES[EventType.FIRST_SESSION_CONFIRMED]
    ) == ("session 7 counts as user p-001's first treadmill session, confirmed by c-12")


def test_an_unknown_event_shows_its_type_and_fields() -> None:
    text = describe({"type": "brake_worn", "ts": 1.0, "event_id": "x", "margin": 0.3})
    assert text == "brake_worn margin=0.3"


def test_the_terminal_tablet_prints_the_same_words() -> None:
    event: dict[str, object] = {
        "type": "estop",
        "ts": 1.5,
        "event_id": "e1",
        **EXAMPLES[EventType.ESTOP],
    }
    assert event_line(event) == "event estop: EMERGENCY STOP: fall (fall sensor tripped)"
    # A payload with a nested value (not what a daemon publishes) is still shown, as JSON.
    assert (
        event_line({"type": "reset", "cleared": ["fall"]}) == 'event reset: reset: ["fall"] cleared'
    )


def test_clock_text_of_non_finite_times_is_not_an_error() -> None:
    assert clock_text(math.nan) == "nan"
    assert clock_text(math.inf) == "inf"
    assert clock_text(-5.0) == "0:00.0"
    assert clock_text(61.25) == "1:01.2"


SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()


@settings(max_examples=500, deadline=None)
@given(
    kind=st.sampled_from([k.value for k in EventType]) | st.text(),
    fields=st.dictionaries(
        st.sampled_from(sorted({k for f in EXAMPLES.values() for k in f})) | st.text(),
        SCALARS,
    ),
)
def test_no_payload_makes_the_words_fail(kind: str, fields: dict[str, JsonScalar]) -> None:
    # A watcher reads what a broker delivers: any field may be missing, of another type, NaN,
    # infinite, or any Unicode.
    assert isinstance(describe({**fields, "type": kind}), str)
