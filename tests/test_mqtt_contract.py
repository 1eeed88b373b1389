"""The MQTT tablet contract v1 as pure functions (docs/tablet-contract.md; SR-15 bad input,
SR-12 remote estop). Payloads here are written by hand from docs/tablet-contract.md, never
produced by the encoder."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treadguard.config.loading import load_config, load_programs
from treadguard.contract.mqtt import (
    MAX_COMMAND_AGE_S,
    MAX_PAYLOAD_BYTES,
    CommandReply,
    DuplicateFilter,
    ErrorCode,
    ParsedCommand,
    SensorPayloadError,
    SensorReading,
    answer_command,
    belt_moving,
    encode_event,
    encode_programs,
    encode_reply,
    encode_state,
    parse_command,
    parse_sensor_payload,
    state_key,
    to_payload,
)
from treadguard.controller.mqtt_link import unix_mapper
from treadguard.safety.core import Latch, SafetyCore, SessionView, Snapshot
from treadguard.safety.decisions import (
    ACCEPTED,
    Cause,
    Event,
    EventType,
    RefusalCode,
    Refused,
    Reply,
    State,
)
from treadguard.safety.inputs import (
    CommissionAbort,
    CommissionConfirm,
    EStop,
    Hand,
    Heartbeat,
    Reset,
    Sensor,
    SetSpeed,
    StartSession,
    Stop,
    TabletCommand,
)
from treadguard.safety.limits import SafetyLimits

ROOT = Path(__file__).resolve().parents[1]
T = 12.5  # the caller's monotonic time for commands
OFFSET = 1_764_000_000.0  # monotonic -> unix in these tests


def to_unix(t: float) -> float:
    return t + OFFSET


def parse(text: str | bytes, *, retained: bool = False) -> ParsedCommand | CommandReply:
    raw = text.encode() if isinstance(text, str) else text
    return parse_command(raw, retained=retained, t=T)


def refusal(text: str | bytes, *, retained: bool = False) -> CommandReply:
    result = parse(text, retained=retained)
    assert isinstance(result, CommandReply), result
    assert not result.ok
    return result


# ----------------------------------------------------------------------------- commands


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ('{"id": "a1", "type": "heartbeat"}', Heartbeat(t=T)),
        ('{"id": "a1", "type": "stop"}', Stop(t=T)),
        ('{"id": "a1", "type": "estop"}', EStop(t=T)),
        ('{"id": "a1", "type": "reset"}', Reset(t=T)),
        ('{"id": "a1", "type": "set_speed", "mph": 1.0}', SetSpeed(t=T, mph=1.0)),
        ('{"id": "a1", "type": "set_speed", "mph": 1}', SetSpeed(t=T, mph=1.0)),
        ('{"id": "a1", "type": "start_session", "user": "u7"}', StartSession(t=T, user="u7")),
        (
            '{"id": "a1", "type": "start_session", "user": "u7", "program": "reverse_walking",'
            ' "cap_s": 300, "target_mph": 0.9}',
            StartSession(t=T, user="u7", program="reverse_walking", cap_s=300.0, target_mph=0.9),
        ),
        (
            '{"id": "a1", "type": "commission_confirm", "step": "grip_left", "ask": "hold_both"}',
            CommissionConfirm(t=T, step="grip_left", ask="hold_both"),
        ),
        ('{"id": "a1", "type": "commission_abort"}', CommissionAbort(t=T)),
    ],
)
def test_valid_commands_parse_to_safety_inputs(text: str, command: TabletCommand) -> None:
    result = parse(text)
    assert isinstance(result, ParsedCommand)
    assert result.id == "a1"
    assert result.command == command


def test_sr12_remote_estop_command_is_an_estop_input() -> None:
    result = parse('{"id": "stop-now", "type": "estop"}')
    assert isinstance(result, ParsedCommand)
    assert isinstance(result.command, EStop)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"not json",
        b'{"id": "a", "type": "stop",}',
        b"\xff\xfe{}",
        b"[" * 3000,
        b"[" * 2000 + b"]" * 2000,
    ],
)
def test_sr15_invalid_json(raw: bytes) -> None:
    reply = refusal(raw)
    assert reply.error is ErrorCode.INVALID_JSON
    assert reply.id is None
    assert reply.message


@pytest.mark.parametrize(
    "raw",
    [
        '{"id": "a", "type": "set_speed", "mph": NaN}',
        '{"id": "a", "type": "set_speed", "mph": Infinity}',
        '{"id": "a", "type": "stop", "type": "estop"}',
    ],
)
def test_sr15_non_standard_json_is_invalid_json(raw: str) -> None:
    assert refusal(raw).error is ErrorCode.INVALID_JSON


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"id": "a", "type": "set_speed", "mph": "1.0"}', "mph"),
        ('{"id": "a", "type": "set_speed", "mph": true}', "mph"),
        ('{"id": "a", "type": "set_speed", "mph": null}', "mph"),
        ('{"id": "a", "type": "set_speed"}', "mph"),
        ('{"id": "a", "type": "start_session"}', "user"),
        ('{"id": "a", "type": "start_session", "user": 7}', "user"),
        ('{"id": "a", "type": "start_session", "user": "u", "cap_s": "5"}', "cap_s"),
        ('{"id": "a", "type": "stop", "speed": 1}', "speed"),
        ('{"id": "a", "type": "heartbeat", "extra": null}', "extra"),
        ('{"id": "a", "type": "set_speed", "mph": 1.0, "clinician": ""}', "clinician"),
        ('{"id": "a", "type": "set_speed", "mph": 1.0, "clinician": 12}', "clinician"),
        (
            '{"id": "a", "type": "set_speed", "mph": 1.0, "clinician": "' + "c" * 65 + '"}',
            "clinician",
        ),
        ('{"id": "a", "type": "set_speed", "mph": 1.0, "clinician": "c\\u0007"}', "clinician"),
        ('{"id": "a", "type": "set_speed", "mph": 1.0, "clinician": "\\ud800"}', "clinician"),
        ('{"id": "a", "type": "stop", "clinician": "c-1"}', "clinician"),
        ('{"id": "a"}', "type"),
        ('{"id": "a", "type": 5}', "type"),
    ],
)
def test_sr15_invalid_command_names_the_field(text: str, field: str) -> None:
    reply = refusal(text)
    assert reply.error is ErrorCode.INVALID_COMMAND
    assert reply.id == "a"
    assert field in reply.message


@pytest.mark.parametrize(
    "text",
    [
        '{"type": "stop"}',
        '{"id": "", "type": "stop"}',
        '{"id": 5, "type": "stop"}',
        '{"id": null, "type": "stop"}',
        '{"id": "' + "x" * 65 + '", "type": "stop"}',
    ],
)
def test_sr15_bad_id_is_invalid_command_answered_with_id_null(text: str) -> None:
    reply = refusal(text)
    assert reply.error is ErrorCode.INVALID_COMMAND
    assert reply.id is None
    assert "id" in reply.message


def test_a_speed_change_may_say_which_clinician_asked() -> None:
    result = parse('{"id": "a", "type": "set_speed", "mph": 1.0, "clinician": "c-12"}')
    assert isinstance(result, ParsedCommand)
    assert isinstance(result.command, SetSpeed)
    assert (result.command.mph, result.command.clinician) == (1.0, "c-12")
    result = parse('{"id": "a", "type": "set_speed", "mph": 1.0}')
    assert isinstance(result, ParsedCommand)
    assert isinstance(result.command, SetSpeed)
    assert result.command.clinician is None


def test_id_of_64_chars_is_accepted() -> None:
    result = parse('{"id": "' + "x" * 64 + '", "type": "stop"}')
    assert isinstance(result, ParsedCommand)


@pytest.mark.parametrize("text", ["[]", "5", '"stop"', "null", "true"])
def test_sr15_json_that_is_not_an_object_is_invalid_command_with_id_null(text: str) -> None:
    reply = refusal(text)
    assert reply.error is ErrorCode.INVALID_COMMAND
    assert reply.id is None


def test_sr15_unknown_type() -> None:
    reply = refusal('{"id": "q", "type": "launch"}')
    assert reply.error is ErrorCode.UNKNOWN_TYPE
    assert reply.id == "q"
    assert "launch" in reply.message


def test_sr15_payload_too_large_is_checked_before_parsing() -> None:
    base = '{"id": "big", "type": "start_session", "user": "u", "program": "'
    fits = base + "u" * (MAX_PAYLOAD_BYTES - len(base) - 2) + '"}'
    assert len(fits.encode()) == MAX_PAYLOAD_BYTES
    # 4096 bytes exactly is within the limit (the core then refuses the unknown program).
    assert isinstance(parse(fits), ParsedCommand)
    too_big = refusal(fits[:-2] + 'u"}')
    assert too_big.error is ErrorCode.PAYLOAD_TOO_LARGE
    assert too_big.id is None  # the payload was not read
    # Not even parsed: invalid JSON over the limit is still "too large".
    assert refusal(b"\xff" * (MAX_PAYLOAD_BYTES + 1)).error is ErrorCode.PAYLOAD_TOO_LARGE


def test_sr15_retained_command_is_refused_not_allowed() -> None:
    reply = refusal('{"id": "r1", "type": "estop"}', retained=True)
    assert reply.error is ErrorCode.NOT_ALLOWED
    assert reply.id == "r1"
    assert "retained" in reply.message


def test_out_of_range_mph_is_left_to_the_core() -> None:
    # A number outside the band is a well-formed command: the safety core refuses it.
    result = parse('{"id": "a", "type": "set_speed", "mph": 99}')
    assert isinstance(result, ParsedCommand)
    assert result.command == SetSpeed(t=T, mph=99.0)


# ----------------------------------------------------------------------------- replies


def test_reply_encoding_exactly_per_contract() -> None:
    assert json.loads(encode_reply(CommandReply("c1"))) == {"id": "c1", "ok": True}
    assert json.loads(encode_reply(CommandReply(None, ErrorCode.INVALID_JSON, "bad"))) == {
        "id": None,
        "ok": False,
        "error": {"code": "invalid_json", "message": "bad"},
    }


def test_every_core_refusal_code_is_a_contract_code() -> None:
    contract = {
        "invalid_json",
        "invalid_command",
        "unknown_type",
        "payload_too_large",
        "out_of_range",
        "not_allowed",
        "preconditions_unmet",
        "latched",
        "duplicate",
        "rate_limited",
        "internal_error",
    }
    assert {c.value for c in ErrorCode} == contract
    assert {c.value for c in RefusalCode} <= contract


class Recorder:
    def __init__(self, reply: Reply = ACCEPTED) -> None:
        self.reply = reply
        self.commands: list[TabletCommand] = []

    def __call__(self, command: TabletCommand) -> Reply:
        self.commands.append(command)
        return self.reply


def answer(raw: str, seen: DuplicateFilter, execute: Recorder, *, retained: bool = False) -> Any:
    reply = answer_command(raw.encode(), retained=retained, t=T, seen=seen, execute=execute)
    return json.loads(encode_reply(reply))


def test_core_refusal_becomes_the_reply() -> None:
    execute = Recorder(Refused(RefusalCode.OUT_OF_RANGE, "2 mph is outside the band"))
    got = answer('{"id": "s", "type": "set_speed", "mph": 2}', DuplicateFilter(), execute)
    assert got == {
        "id": "s",
        "ok": False,
        "error": {"code": "out_of_range", "message": "2 mph is outside the band"},
    }


def test_out_of_range_is_decided_by_the_real_core() -> None:
    loaded = load_config(ROOT / "config" / "sim.toml")
    cfg = loaded.config
    core = SafetyCore(
        cfg.safety,
        loaded.programs,
        default_program=cfg.programs.default,
        commissioned_until=math.inf,
    )

    def execute(command: TabletCommand) -> Reply | None:
        assert isinstance(command, StartSession)  # only starts are sent here
        return core.handle(command).reply

    raw = '{"id": "s1", "type": "start_session", "user": "u", "target_mph": 5}'
    got = json.loads(
        encode_reply(
            answer_command(
                raw.encode(), retained=False, t=1.0, seen=DuplicateFilter(), execute=execute
            )
        )
    )
    assert got["ok"] is False
    assert got["error"]["code"] == "out_of_range"


def test_duplicate_id_returns_the_original_reply_and_runs_once() -> None:
    seen = DuplicateFilter()
    execute = Recorder()
    first = answer('{"id": "d1", "type": "heartbeat"}', seen, execute)
    execute.reply = Refused(RefusalCode.NOT_ALLOWED, "would differ")
    again = answer('{"type": "heartbeat", "id": "d1"}', seen, execute)  # same content
    assert first == again == {"id": "d1", "ok": True}
    assert len(execute.commands) == 1


def test_same_id_different_command_is_refused_as_duplicate() -> None:
    seen = DuplicateFilter()
    execute = Recorder()
    answer('{"id": "d2", "type": "heartbeat"}', seen, execute)
    got = answer('{"id": "d2", "type": "set_speed", "mph": 1.0}', seen, execute)
    assert got["ok"] is False
    assert got["error"]["code"] == "duplicate"
    assert len(execute.commands) == 1
    # The original reply is still what a retransmission of the original gets.
    assert answer('{"id": "d2", "type": "heartbeat"}', seen, execute) == {"id": "d2", "ok": True}


@pytest.mark.parametrize("kind", ["stop", "estop"])
def test_sr12_a_stop_or_estop_with_a_reused_id_is_carried_out_every_time(kind: str) -> None:
    """SR-12 (amended): a tablet whose E-STOP button sends a fixed id, pressed again, stops the
    belt again; so does a stop whose id an earlier command of another type used."""
    seen = DuplicateFilter()
    execute = Recorder()
    raw = f'{{"id": "fixed", "type": "{kind}"}}'
    assert answer(raw, seen, execute) == {"id": "fixed", "ok": True}
    execute.reply = Refused(RefusalCode.NOT_ALLOWED, "nothing to stop")
    again = answer(raw, seen, execute)
    assert again["error"]["code"] == "not_allowed"  # answered as usual, by this run
    assert answer('{"id": "hb", "type": "heartbeat"}', seen, execute)["ok"] is False
    answer(f'{{"id": "hb", "type": "{kind}"}}', seen, execute)
    stop = "Stop" if kind == "stop" else "EStop"
    assert [type(c).__name__ for c in execute.commands] == [stop, stop, "Heartbeat", stop]
    # A heartbeat is still de-duplicated.
    answer('{"id": "hb2", "type": "heartbeat"}', seen, execute)
    answer('{"id": "hb2", "type": "heartbeat"}', seen, execute)
    assert len(execute.commands) == 5


@pytest.mark.parametrize(
    ("raw", "reply_id"),
    [
        ('{"id": "e2", "type": "estop", "reason": "patient fell"}', "e2"),
        ('{"type": "estop"}', None),
        ('{"id": "' + "x" * 65 + '", "type": "estop"}', None),
        ('{"id": 7, "type": "estop"}', None),
        ('{"id": "e3", "type": "estop", "ts": "now"}', "e3"),
        ('{"id": "e4", "id": "e5", "type": "estop"}', None),
        ('{"id": "s2", "type": "stop", "source": "dashboard"}', "s2"),
        ('{"type": "stop", "type": "stop"}', None),
    ],
)
def test_sr12_a_stop_or_estop_is_carried_out_however_the_rest_is_formed(
    raw: str, reply_id: str | None
) -> None:
    """SR-12 (amended): a stop or estop with a field this version does not know, an id that is
    missing, too long or not a string, a stamp that is not a number, or a repeated key, is
    carried out (and answered by its id when it can be read): a refusal would leave the belt
    running."""
    execute = Recorder()
    reply = answer(raw, DuplicateFilter(), execute)
    assert reply == {"id": reply_id, "ok": True}
    assert [type(c).__name__ for c in execute.commands] == (
        ["Stop"] if '"stop"' in raw else ["EStop"]
    )


def test_sr12_a_retained_or_oversized_estop_is_still_refused() -> None:
    """The two refusals a stop keeps: retained (a stale button press replayed to every new
    subscriber, docs/tablet-contract.md) and over the 4 KiB limit (never parsed)."""
    execute = Recorder()
    retained = answer_command(
        b'{"id": "r1", "type": "estop"}',
        retained=True,
        t=0.0,
        seen=DuplicateFilter(),
        execute=execute,
    )
    assert retained.error is not None
    big = '{"id": "b1", "type": "estop", "pad": "' + "x" * 5000 + '"}'
    assert answer(big, DuplicateFilter(), execute)["error"]["code"] == "payload_too_large"
    assert execute.commands == []


def test_duplicate_of_a_refused_command_gets_the_same_refusal() -> None:
    seen = DuplicateFilter()
    execute = Recorder()
    raw = '{"id": "d3", "type": "set_speed", "mph": "fast"}'
    assert answer(raw, seen, execute) == answer(raw, seen, execute)
    assert answer(raw, seen, execute)["error"]["code"] == "invalid_command"
    assert execute.commands == []


def test_retained_command_is_not_remembered_so_a_live_resend_runs() -> None:
    seen = DuplicateFilter()
    execute = Recorder()
    raw = '{"id": "r2", "type": "stop"}'
    assert answer(raw, seen, execute, retained=True)["error"]["code"] == "not_allowed"
    assert execute.commands == []
    assert answer(raw, seen, execute) == {"id": "r2", "ok": True}
    assert len(execute.commands) == 1


def test_duplicate_filter_is_bounded_least_recently_used_out() -> None:
    seen = DuplicateFilter(capacity=3)
    execute = Recorder()
    for n in range(3):
        answer(f'{{"id": "k{n}", "type": "heartbeat"}}', seen, execute)
    answer('{"id": "k0", "type": "heartbeat"}', seen, execute)  # k0 is used again: kept
    answer('{"id": "k3", "type": "heartbeat"}', seen, execute)  # evicts k1
    assert len(seen) == 3
    assert len(execute.commands) == 4
    answer('{"id": "k0", "type": "heartbeat"}', seen, execute)
    assert len(execute.commands) == 4
    answer('{"id": "k1", "type": "heartbeat"}', seen, execute)
    assert len(execute.commands) == 5


def test_unreadable_id_is_never_remembered() -> None:
    seen = DuplicateFilter()
    execute = Recorder()
    for _ in range(2):
        assert answer("{", seen, execute)["id"] is None
    assert len(seen) == 0


# ----------------------------------------------------------------------------- state


def snapshot(**changes: object) -> Snapshot:
    base: dict[str, object] = {
        "state": State.IDLE,
        "commanded_mph": 0.0,
        "target_mph": 0.0,
        "belt_mph": 0.0,
        "session": None,
        "grip": {Hand.LEFT: True, Hand.RIGHT: True},
        "fall": False,
        "stale": (),
        "latched": None,
        "countdown_s": None,
    }
    base.update(changes)
    return Snapshot(**base)  # type: ignore[arg-type]


def test_idle_state_encoding_exactly_per_contract() -> None:
    got = encode_state(snapshot(), treadmill_id="tm-01", ts=1764000000.0, to_unix=to_unix)
    assert got == {
        "treadmill_id": "tm-01",
        "state": "idle",
        "speed_mph": 0.0,
        "target_mph": 0.0,
        "session": None,
        "grip": {"left": True, "right": True},
        "fall": False,
        "stale": [],
        "latched": None,
        "ts": 1764000000.0,
    }
    assert json.loads(to_payload(got)) == got


def test_running_and_latched_state_encoding_exactly_per_contract() -> None:
    session = SessionView(
        id="3",
        user="u7",
        program="reverse_walking",
        elapsed_s=61.25,
        cap_s=300.0,
        remaining_s=238.75,
        interval=None,
        intervals=None,
    )
    running = snapshot(
        state=State.RUNNING,
        commanded_mph=0.9,
        target_mph=1.0,
        belt_mph=0.87,
        session=session,
        grip={Hand.LEFT: False, Hand.RIGHT: True},
        stale=(Sensor.GRIP_LEFT,),
    )
    got = encode_state(running, treadmill_id="tm-01", ts=1764000100.5, to_unix=to_unix)
    assert got == {
        "treadmill_id": "tm-01",
        "state": "running",
        "speed_mph": 0.87,  # the belt's actual speed, not the command
        "target_mph": 1.0,
        "session": {
            "id": "3",
            "user": "u7",
            "program": "reverse_walking",
            "elapsed_s": 61.25,
            "cap_s": 300.0,
            "remaining_s": 238.75,
        },
        "grip": {"left": False, "right": True},
        "fall": False,
        "stale": ["grip_left"],
        "latched": None,
        "ts": 1764000100.5,
    }
    latched = snapshot(
        state=State.ESTOP,
        fall=True,
        latched=Latch(kind=State.ESTOP, cause=Cause.FALL, since=42.0, detail="fall signalled"),
    )
    got = encode_state(latched, treadmill_id="tm-01", ts=1764000100.5, to_unix=to_unix)
    assert got["state"] == "estop"
    assert got["fall"] is True
    assert got["latched"] == {"kind": "estop", "cause": "fall", "since": OFFSET + 42.0}


def test_unreadable_belt_speed_is_null_not_invalid_json() -> None:
    got = encode_state(snapshot(belt_mph=float("inf")), treadmill_id="t", ts=1.0, to_unix=to_unix)
    assert got["speed_mph"] is None
    json.loads(to_payload(got))  # strict JSON, no "Infinity"


def test_state_key_ignores_only_what_moves_continuously() -> None:
    session = SessionView("1", "u", "p", 1.0, 300.0, 299.0, None, None)
    later = SessionView("1", "u", "p", 2.0, 300.0, 298.0, None, None)

    def key(snap: Snapshot, ts: float = 1.0) -> str:
        return state_key(encode_state(snap, treadmill_id="t", ts=ts, to_unix=to_unix))

    moving = snapshot(state=State.RUNNING, belt_mph=0.8, commanded_mph=0.8, session=session)
    assert key(moving) == key(replace_snapshot(moving, belt_mph=0.9, session=later), ts=9.0)
    assert key(moving) != key(replace_snapshot(moving, state=State.STOPPING))
    assert key(moving) != key(replace_snapshot(moving, grip={Hand.LEFT: False, Hand.RIGHT: True}))
    assert key(moving) != key(replace_snapshot(moving, target_mph=1.1))
    # The belt reaching standstill is a change: the last state published must show it.
    coasting = snapshot(state=State.ESTOP, belt_mph=0.06)
    assert key(coasting) == key(replace_snapshot(coasting, belt_mph=0.3))
    assert key(coasting) != key(replace_snapshot(coasting, belt_mph=0.04))


def replace_snapshot(snap: Snapshot, **changes: object) -> Snapshot:
    from dataclasses import replace

    return replace(snap, **changes)  # type: ignore[arg-type]


def test_belt_moving() -> None:
    assert not belt_moving(snapshot())
    assert belt_moving(snapshot(belt_mph=0.5))
    assert belt_moving(snapshot(commanded_mph=0.1))
    assert belt_moving(snapshot(state=State.RUNNING))
    assert belt_moving(snapshot(state=State.ESTOP, belt_mph=0.6))  # still coasting down


# ----------------------------------------------------------------------------- events


def test_event_encoding_per_contract() -> None:
    event = Event(
        EventType.ESTOP,
        t=100.0,
        fields={"cause": "grip_lost", "detail": "both hands off", "stop_latency_ms": 0.4},
    )
    assert encode_event(event, to_unix=to_unix) == {
        "type": "estop",
        "ts": OFFSET + 100.0,
        "cause": "grip_lost",
        "detail": "both hands off",
        "stop_latency_ms": 0.4,
    }
    ended = Event(EventType.SESSION_ENDED, t=5.0, fields={"reason": "cap", "session_id": "1"})
    assert encode_event(ended, to_unix=to_unix) == {
        "type": "session_ended",
        "ts": OFFSET + 5.0,
        "reason": "cap",
        "session_id": "1",
    }


def test_event_fields_never_replace_type_or_ts() -> None:
    event = Event(EventType.RESET, t=1.0, fields={"type": "x", "ts": 0, "v": float("nan")})
    got = encode_event(event, to_unix=to_unix)
    assert got == {"type": "reset", "ts": OFFSET + 1.0, "v": None}
    json.loads(to_payload(got))


# ----------------------------------------------------------------------------- sensors


def test_sensor_payload_parses() -> None:
    assert parse_sensor_payload(b'{"value": true, "ts": 1764000000.25}') == SensorReading(
        True, 1764000000.25
    )
    assert parse_sensor_payload(b'{"value": false, "ts": 1764000000}') == SensorReading(
        False, 1764000000.0
    )


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"true",
        b'{"value": 1, "ts": 1764000000}',
        b'{"value": "true", "ts": 1764000000}',
        b'{"value": true}',
        b'{"ts": 1764000000}',
        b'{"value": true, "ts": "now"}',
        b'{"value": true, "ts": -5}',
        b'{"value": true, "ts": 1764000000, "extra": 1}',
        b'{"value": true, "ts": NaN}',
        b"\xff",
        b" " * 5000,
    ],
)
def test_sr8_bad_sensor_payload_is_an_error_not_a_reading(raw: bytes) -> None:
    got = parse_sensor_payload(raw)
    assert isinstance(got, SensorPayloadError)
    assert got.message


# ----------------------------------------------------------------------------- fuzzing

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=80)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
command_like = st.fixed_dictionaries(
    {},
    optional={
        "id": st.text(max_size=70) | json_scalars,
        "type": st.sampled_from(
            ["start_session", "set_speed", "stop", "estop", "reset", "heartbeat", "nope"]
        )
        | json_scalars,
        "mph": json_values,
        "user": json_values,
        "program": json_values,
        "cap_s": json_values,
        "target_mph": json_values,
        "extra": json_values,
    },
)


def _check(result: ParsedCommand | CommandReply) -> None:
    if isinstance(result, CommandReply):
        assert not result.ok
        assert result.error is not None
        assert result.message
        assert result.id is None or 1 <= len(result.id) <= 64
        json.loads(encode_reply(result))
    else:
        assert isinstance(result, ParsedCommand)
        assert 1 <= len(result.id) <= 64
        assert result.command.t == T


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=MAX_PAYLOAD_BYTES + 64), retained=st.booleans())
def test_sr15_fuzz_raw_bytes_never_raise(raw: bytes, retained: bool) -> None:
    _check(parse_command(raw, retained=retained, t=T))


@settings(max_examples=300, deadline=None)
@given(obj=command_like | json_values, retained=st.booleans())
def test_sr15_fuzz_json_payloads_never_raise(obj: object, retained: bool) -> None:
    raw = json.dumps(obj).encode()
    result = parse_command(raw, retained=retained, t=T)
    _check(result)
    if retained:
        assert isinstance(result, CommandReply)
    seen = DuplicateFilter()
    first = answer_command(raw, retained=retained, t=T, seen=seen, execute=Recorder())
    second = answer_command(raw, retained=retained, t=T, seen=seen, execute=Recorder())
    assert first == second


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=200) | st.builds(lambda o: json.dumps(o).encode(), json_values))
def test_sr8_fuzz_sensor_payloads_never_raise(raw: bytes) -> None:
    assert isinstance(parse_sensor_payload(raw), SensorReading | SensorPayloadError)


# ------------------------------------------------------------------ extensions of contract v1

NOW_UNIX = 1_764_000_100.0


def stamped(type_: str, age_s: float, **fields: object) -> bytes:
    return json.dumps({"id": "c-1", "type": type_, "ts": NOW_UNIX - age_s, **fields}).encode()


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("start_session", {"user": "u1"}),
        ("set_speed", {"mph": 1.0}),
        ("heartbeat", {}),
        # A technician's confirmation held up by a broker is no longer what they see now.
        ("commission_confirm", {"step": "estop", "ask": "give_estop"}),
        # An entry of the record delivered late, or sent again after a restart, would stand
        # over the correction entered since.
        ("outcome_before", {"session_id": "3", "pain": 5}),
        ("outcome_after", {"session_id": "3", "pain": 8}),
        ("confirm_first_session", {"session_id": "3"}),
        ("record_measure", {"user": "u1", "kind": "tug", "value": 12.0}),
    ],
)
def test_sr15_a_stamped_start_speed_change_or_heartbeat_that_arrives_late_is_refused(
    kind: str, fields: dict[str, object]
) -> None:
    fresh = parse_command(stamped(kind, 0.5, **fields), retained=False, t=T, now_unix=NOW_UNIX)
    assert isinstance(fresh, ParsedCommand)
    late = parse_command(
        stamped(kind, MAX_COMMAND_AGE_S + 0.5, **fields), retained=False, t=T, now_unix=NOW_UNIX
    )
    assert isinstance(late, CommandReply)
    assert late.error is ErrorCode.NOT_ALLOWED
    assert late.id == "c-1"
    assert f"was sent {MAX_COMMAND_AGE_S + 0.5:.1f} s ago" in late.message
    ahead = parse_command(stamped(kind, -1.5, **fields), retained=False, t=T, now_unix=NOW_UNIX)
    assert isinstance(ahead, CommandReply)
    assert ahead.error is ErrorCode.NOT_ALLOWED
    assert "clock" in ahead.message


@pytest.mark.parametrize("kind", ["stop", "estop", "reset", "commission_abort"])
def test_sr6_a_late_stop_is_still_obeyed(kind: str) -> None:
    got = parse_command(stamped(kind, 60.0), retained=False, t=T, now_unix=NOW_UNIX)
    assert isinstance(got, ParsedCommand)


def test_an_unstamped_command_is_not_age_checked() -> None:
    raw = b'{"id": "c-2", "type": "start_session", "user": "u1"}'
    assert isinstance(parse_command(raw, retained=False, t=T, now_unix=NOW_UNIX), ParsedCommand)


RECORD_ENTRIES = [
    ("outcome_before", {"session_id": "3", "pain": 5}),
    ("outcome_after", {"session_id": "3", "pain": 8}),
    ("confirm_first_session", {"session_id": "3"}),
    ("record_measure", {"user": "u1", "kind": "tug", "value": 12.0}),
]


@pytest.mark.parametrize(("kind", "fields"), RECORD_ENTRIES)
def test_an_entry_of_the_record_without_a_stamp_is_an_invalid_command(
    kind: str, fields: dict[str, object]
) -> None:
    """An entry of the record (treadguard's own commands) must be stamped: unstamped, one
    delivered late, or sent again after a restart, could never be told from a fresh one, and
    would stand over the correction entered since."""
    raw = json.dumps({"id": "c-4", "type": kind, **fields}).encode()
    for now_unix in (NOW_UNIX, None):
        got = parse_command(raw, retained=False, t=T, now_unix=now_unix)
        assert isinstance(got, CommandReply), got
        assert (got.id, got.error) == ("c-4", ErrorCode.INVALID_COMMAND)
        assert got.message == (
            "invalid command: ts: Field required: the stamp (when it was sent, in the "
            "daemon's clock) is required for entries of the record"
        )


@pytest.mark.parametrize("ts", ['"now"', "true", "1e400", "-1", "1e308", "9" * 400])
@pytest.mark.parametrize("kind", ["set_speed", "stop"])
def test_sr15_a_ts_that_is_no_unix_time_is_an_invalid_command(ts: str, kind: str) -> None:
    mph = ', "mph": 1.0' if kind == "set_speed" else ""
    raw = f'{{"id": "c-3", "type": "{kind}"{mph}, "ts": {ts}}}'.encode()
    got = parse_command(raw, retained=False, t=T, now_unix=NOW_UNIX)
    assert isinstance(got, CommandReply)
    assert got.error is ErrorCode.INVALID_COMMAND
    assert "ts" in got.message
    assert len(got.message) < 300


def test_the_programs_extension_lists_each_program_inside_the_safety_band() -> None:
    programs = load_programs(ROOT / "config" / "programs")
    limits = SafetyLimits(max_mph=1.1)
    ext = encode_programs(programs, limits, default="first_session", returning="reverse_walking")
    assert ext["default"] == "first_session"
    assert ext["returning"] == "reverse_walking"
    listed = ext["all"]
    assert isinstance(listed, dict)
    assert sorted(listed) == sorted(programs)
    first = listed["first_session"]
    assert first == {
        "title": "First treadmill session",
        "kind": "continuous",
        "first_session": True,
        "band_mph": [0.8, 1.1],
        "cap_s": {"default": 180.0, "min": 180.0, "max": 300.0},
    }
    intervals = listed["intervals"]
    assert isinstance(intervals, dict)
    assert intervals["interval_s"] == programs["intervals"].interval_s


# ----------------------------------------------------------------------------- SR-15 text


@pytest.mark.parametrize(
    ("user", "what"),
    [
        ("\ud800", "surrogate"),
        ("ann\udfff", "surrogate"),
        ("a\u0000b", "control"),
        ("bob\n", "control"),
        ("\u001b[31mred", "control"),
        ("x\u007f", "control"),
    ],
)
def test_sr15_a_user_name_with_a_lone_surrogate_or_control_character_is_invalid_command(
    user: str, what: str
) -> None:
    """SR-15: valid JSON, but no name a journal can store or a screen can show."""
    execute = Recorder()
    raw = json.dumps({"id": "u", "type": "start_session", "user": user}).encode()
    reply = answer_command(raw, retained=False, t=T, seen=DuplicateFilter(), execute=execute)
    assert reply.error is ErrorCode.INVALID_COMMAND
    assert "user" in reply.message
    assert what in reply.message
    assert execute.commands == []
    program = json.dumps({"id": "p", "type": "start_session", "user": "u", "program": user})
    parsed = parse_command(program.encode(), retained=False, t=T)
    assert isinstance(parsed, CommandReply)
    assert parsed.error is ErrorCode.INVALID_COMMAND


def test_a_user_name_in_any_script_is_accepted() -> None:
    raw = json.dumps({"id": "u", "type": "start_session", "user": "Zoë 李 \U0001f600"})
    assert isinstance(parse_command(raw.encode(), retained=False, t=T), ParsedCommand)


class Exploding:
    def __init__(self, exc: Exception) -> None:
        self.exc = exc
        self.calls = 0

    def __call__(self, command: TabletCommand) -> Reply:
        self.calls += 1
        raise self.exc


@given(
    kind=st.sampled_from(["start_session", "set_speed", "stop", "estop", "reset", "heartbeat"]),
    exc=st.sampled_from(
        [
            UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates"),
            RuntimeError("x"),
            KeyError("k"),
            ZeroDivisionError(),
            AssertionError("wiring"),
        ]
    ),
)
def test_sr15_an_exception_out_of_the_handler_is_answered_internal_error(
    kind: str, exc: Exception
) -> None:
    """SR-15: whatever the handler raises is answered ``internal_error``, reported for the log
    and the journal, and never raised."""
    required: dict[str, dict[str, object]] = {
        "start_session": {"user": "u"},
        "set_speed": {"mph": 1.0},
    }
    fields = required.get(kind, {})
    raw = json.dumps({"id": "boom", "type": kind, **fields}).encode()
    failures: list[tuple[Exception, CommandReply]] = []
    refusals: list[tuple[CommandReply, str | None]] = []
    execute = Exploding(exc)
    seen = DuplicateFilter()
    reply = answer_command(
        raw,
        retained=False,
        t=T,
        seen=seen,
        execute=execute,
        on_refused=lambda r, k: refusals.append((r, k)),
        on_failure=lambda e, r: failures.append((e, r)),
    )
    assert reply.id == "boom"
    assert reply.error is ErrorCode.INTERNAL_ERROR
    assert type(exc).__name__ in reply.message
    assert failures == [(exc, reply)]
    assert refusals == [(reply, kind)]
    answer_command(raw, retained=False, t=T, seen=seen, execute=execute)
    # A retransmission gets the same answer, and a stop or estop is tried again (SR-12).
    assert execute.calls == (2 if kind in ("stop", "estop") else 1)


# ----------------------------------------------------------------------------- SR-16 clock


@given(
    steps=st.lists(
        st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)
        | st.sampled_from([-3600.0, 3600.0]),
        min_size=1,
        max_size=5,
    ),
    age=st.floats(min_value=-0.9, max_value=2.9),
    elapsed=st.floats(min_value=0.0, max_value=1e6),
)
def test_sr16_a_wall_clock_step_changes_no_commands_acceptance(
    steps: list[float], age: float, elapsed: float
) -> None:
    """SR-16: the stamp of a command is judged on the mapping the state's ts is published with
    (taken once, from the monotonic clock), so stepping the wall clock after start-up, either
    way, by any amount, any number of times, changes neither that mapping nor the answer."""
    wall = [1_764_000_000.0]
    mono = [5.0]
    to_unix = unix_mapper(lambda: mono[0], lambda: wall[0])
    mono[0] += elapsed
    published_ts = to_unix(mono[0])  # what a tablet sees, and stamps its commands with
    raw = json.dumps({"id": "h", "type": "heartbeat", "ts": published_ts - age}).encode()
    before = parse_command(raw, retained=False, t=mono[0], now_unix=to_unix(mono[0]))
    assert isinstance(before, ParsedCommand)
    for step in steps:
        wall[0] += step
        assert to_unix(mono[0]) == published_ts
        after = parse_command(raw, retained=False, t=mono[0], now_unix=to_unix(mono[0]))
        assert after == before


# ----------------------------------------------------------------------------- one vocabulary


def test_every_command_is_named_once_and_parses_to_its_input() -> None:
    """The wire names are CommandType's (those of docs/tablet-contract.md): the contract knows
    exactly those, and each parses to the core's input whose TYPE is that name."""
    from typing import get_args

    from treadguard.contract.mqtt import _MODELS
    from treadguard.safety.inputs import CommandType

    # The wire names as docs/tablet-contract.md lists them, written out here, not taken from the
    # code.
    assert {c.value for c in CommandType} == {
        "start_session",
        "set_speed",
        "stop",
        "estop",
        "reset",
        "heartbeat",
        "commission_confirm",
        "commission_abort",
        "outcome_before",
        "outcome_after",
        "confirm_first_session",
        "record_measure",
    }
    assert set(_MODELS) == set(CommandType)
    fields = {"user": "p-1", "mph": 1.0, "step": "estop", "ask": "give_estop"}
    for kind, model in _MODELS.items():
        assert get_args(model.model_fields["type"].annotation) == (kind,)
        payload = {"id": f"v-{kind}", "type": kind, **fields}
        if kind not in (CommandType.START_SESSION, CommandType.RECORD_MEASURE):
            payload.pop("user")
        if kind != CommandType.SET_SPEED:
            payload.pop("mph")
        if kind != CommandType.COMMISSION_CONFIRM:
            payload.pop("step")
            payload.pop("ask")
        if kind in (CommandType.OUTCOME_BEFORE, CommandType.OUTCOME_AFTER):
            payload |= {"session_id": "3", "pain": 4}
        if kind == CommandType.CONFIRM_FIRST_SESSION:
            payload |= {"session_id": "3"}
        if kind == CommandType.RECORD_MEASURE:
            payload |= {"kind": "tug", "value": 12.5}
        if kind in (
            CommandType.OUTCOME_BEFORE,
            CommandType.OUTCOME_AFTER,
            CommandType.CONFIRM_FIRST_SESSION,
            CommandType.RECORD_MEASURE,
        ):
            payload["ts"] = 1.0  # an entry of the record is stamped
        parsed = parse_command(json.dumps(payload).encode(), retained=False, t=1.0)
        assert isinstance(parsed, ParsedCommand), (kind, parsed)
        assert parsed.command.TYPE is CommandType(kind)


# ----------------------------------------------------------- a guided commissioning's commands


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        ({}, "step"),
        ({"step": "estop"}, "ask"),
        ({"ask": "give_estop"}, "step"),
        ({"step": "", "ask": "give_estop"}, "step"),
        ({"step": 3, "ask": "give_estop"}, "step"),
        ({"step": "estop", "ask": None}, "ask"),
        ({"step": "e" * 65, "ask": "give_estop"}, "step"),
        ({"step": "estop\n", "ask": "give_estop"}, "step"),
        ({"step": "estop", "ask": "give_estop", "now": True}, "now"),
    ],
)
def test_sr15_a_malformed_confirmation_is_an_invalid_command_naming_the_field(
    fields: dict[str, object], names: str
) -> None:
    """A confirmation names the request it answers (step and ask), both words of 1-64
    printable characters; anything else is refused at the contract, never raised."""
    raw = json.dumps({"id": "k-1", "type": "commission_confirm", **fields})
    reply = refusal(raw)
    assert reply.error is ErrorCode.INVALID_COMMAND, reply
    assert reply.id == "k-1"
    assert names in reply.message


def test_an_abort_runs_at_every_press_whatever_its_id_and_a_confirmation_once() -> None:
    """commission_abort stops the belt: carried out every time, like stop and estop (a
    button with a fixed id). A confirmation sent again with its id (a retransmission) is
    answered with the original reply and not run again: it cannot confirm the next step."""
    seen = DuplicateFilter()
    execute = Recorder()
    abort = '{"id": "x", "type": "commission_abort"}'
    assert answer(abort, seen, execute) == answer(abort, seen, execute) == {"id": "x", "ok": True}
    assert execute.commands == [CommissionAbort(t=T), CommissionAbort(t=T)]
    confirm = '{"id": "y", "type": "commission_confirm", "step": "fall", "ask": "fall"}'
    first = answer(confirm, seen, execute)
    execute.reply = Refused(RefusalCode.NOT_ALLOWED, "would differ")
    assert answer(confirm, seen, execute) == first == {"id": "y", "ok": True}
    assert execute.commands[2:] == [CommissionConfirm(t=T, step="fall", ask="fall")]


def test_the_run_s_refusal_of_a_stale_confirmation_is_the_reply() -> None:
    stale = "this confirmation was for an earlier request"
    execute = Recorder(Refused(RefusalCode.NOT_ALLOWED, stale))
    raw = '{"id": "z", "type": "commission_confirm", "step": "grips", "ask": "release_both"}'
    got = answer(raw, DuplicateFilter(), execute)
    assert got["error"] == {"code": "not_allowed", "message": stale}
