"""The clinician's record of a session (docs/reports.md): ``outcome_before`` and
``outcome_after`` over the real daemon and broker, journaled under their session, answered
like every command, never needed for the belt to move.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clinician import clinician, ok, refused, sensor_user
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker, body
from treadguard.contract.mqtt import CommandReply, ErrorCode, ParsedCommand, parse_command
from treadguard.controller.journal import Journal
from treadguard.controller.system import OUTCOME_ENTRIES_MAX
from treadguard.safety.inputs import OutcomeAfter, OutcomeBefore

TM = "tm-outcomes"
SPEED_FLOOD = 60


def parse(text: str) -> object:
    result = parse_command(text.encode(), retained=False, t=0.0)
    return result.command if isinstance(result, ParsedCommand) else result


def test_the_commands_as_the_contract_reads_them() -> None:
    before = parse(
        '{"id": "a", "type": "outcome_before", "session_id": "12", "pain": 4, "ts": 1764000000.0}'
    )
    assert before == OutcomeBefore(t=0.0, session_id="12", pain=4)
    after = parse(
        '{"id": "a", "type": "outcome_after", "session_id": "12", "pain": 2, "exertion": 6,'
        ' "notes": "walked well, no limp", "clinician": "c-7", "user": "u-1",'
        ' "ts": 1764000000.0}'
    )
    assert after == OutcomeAfter(
        t=0.0,
        session_id="12",
        pain=2,
        exertion=6,
        notes="walked well, no limp",
        clinician="c-7",
        user="u-1",
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ('"session_id": "12", "pain": 11', "pain"),
        ('"session_id": "12", "pain": -1', "pain"),
        ('"session_id": "12", "pain": 4.0', "pain"),
        ('"session_id": "12", "pain": true', "pain"),
        ('"session_id": "12"', "pain"),
        ('"session_id": "0", "pain": 4', "session_id"),
        ('"session_id": 12, "pain": 4', "session_id"),
        ('"session_id": "1a", "pain": 4', "session_id"),
        ('"session_id": "12", "pain": 4, "exertion": 11', "exertion"),
        ('"session_id": "12", "pain": 4, "notes": ""', "notes"),
        ('"session_id": "12", "pain": 4, "notes": "' + "n" * 1001 + '"', "notes"),
        ('"session_id": "12", "pain": 4, "notes": "a\\nb"', "notes"),
        ('"session_id": "12", "pain": 4, "clinician": "' + "c" * 65 + '"', "clinician"),
        ('"session_id": "12", "pain": 4, "user": ""', "user"),
        ('"session_id": "12", "pain": 4, "user": "u\\u0000"', "user"),
    ],
)
def test_a_bad_outcome_is_refused_naming_its_field(fields: str, field: str) -> None:
    result = parse_command(
        ('{"id": "a", "type": "outcome_after", ' + fields + "}").encode(), retained=False, t=0.0
    )
    assert isinstance(result, CommandReply)
    assert result.error is ErrorCode.INVALID_COMMAND
    assert field in result.message


@pytest.mark.asyncio
async def test_outcomes_are_journaled_under_their_session_and_published(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    make_daemon(treadmill_id=TM, sensors="mqtt")
    p = f"treadmill/{TM}"
    async with sensor_user(broker, TM), clinician(broker, TM) as doc:
        await doc.state(lambda s: s["stale"] == [], within=10.0)
        # A session that does not exist: refused in words, nothing journaled for it.
        reason = refused(
            await doc.command("outcome_before", session_id="99", pain=3), "not_allowed"
        )
        assert reason == "no session 99 on record"
        state = await doc.start_running("u-out", program="first_session")
        session = state["session"]["id"]
        ok(await doc.command("outcome_before", session_id=session, pain=4, clinician="c-7"))
        recorded = body(
            await doc.tab.next(f"{p}/events", lambda m: body(m)["type"] == "outcome_recorded")
        )
        assert {k: recorded[k] for k in ("session_id", "when", "pain", "clinician")} == {
            "session_id": session,
            "when": "before",
            "pain": 4,
            "clinician": "c-7",
        }
        # The session runs on: the record touches nothing of it.
        assert (await doc.state(lambda s: True, within=5.0))["state"] == "running"
        # The record after it waits until it has ended (the plan weighs it as "after").
        early = refused(
            await doc.command("outcome_after", session_id=session, pain=3), "not_allowed"
        )
        assert early == (
            f"session {session} has not ended: the record after it is entered once it has"
        )
        # Speed changes as fast as a tablet can send them: each accepted, all on record, in
        # at most two rows a second (SR-14: no input can fill the journal).
        began = time.monotonic()
        for n in range(SPEED_FLOOD):
            ok(await doc.command("set_speed", mph=1.0 if n % 2 == 0 else 1.1))
        flood_s = time.monotonic() - began
        ok(await doc.command("stop"))
        await doc.state(lambda s: s["state"] == "idle", within=15.0)
        # An entry that names its user is refused for another user's session: a mistyped
        # session number never lands on another patient's record.
        for kind, fields in (
            ("outcome_before", {"pain": 2}),
            ("outcome_after", {"pain": 2}),
            ("confirm_first_session", {}),
        ):
            wrong = refused(
                await doc.command(kind, session_id=session, user="u-else", **fields),
                "not_allowed",
            )
            assert wrong == (
                f"session {session} is not u-else's: check the session's number; nothing was "
                "entered"
            )
        ok(
            await doc.command(
                "outcome_after",
                session_id=session,
                user="u-out",
                pain=2,
                exertion=5,
                notes="steady gait",
            )
        )
        await doc.tab.next(
            f"{p}/events",
            lambda m: body(m)["type"] == "outcome_recorded" and body(m)["when"] == "after",
        )
        # Corrections are kept, up to a bound: a tablet sending them in a loop cannot fill
        # the journal (SR-14).
        for n in range(OUTCOME_ENTRIES_MAX - 2):
            ok(await doc.command("outcome_after", session_id=session, pain=n % 11))
        reason = refused(
            await doc.command("outcome_after", session_id=session, pain=1), "not_allowed"
        )
        assert (
            reason
            == f"session {session} has {OUTCOME_ENTRIES_MAX} entries already; no more are kept"
        )
    journal = Journal.read_only(tmp_path / f"journal-{TM}.sqlite")
    events = journal.events(int(session))
    journal.close()
    outcomes = [e.fields for e in events if e.type == "outcome_recorded"]
    speeds = [e.fields for e in events if e.type == "speed_changed"]
    assert sum(int(f.get("count", 1)) for f in speeds) == SPEED_FLOOD
    assert len(speeds) <= 2 * (int(flood_s) + 2), (len(speeds), flood_s)
    assert speeds[0]["from_mph"] == 0.8
    assert speeds[-1]["to_mph"] == 1.1  # the last change sent
    assert outcomes[:2] == [
        {"session_id": session, "when": "before", "pain": 4, "clinician": "c-7"},
        {"session_id": session, "when": "after", "pain": 2, "exertion": 5, "notes": "steady gait"},
    ]
    assert len(outcomes) == OUTCOME_ENTRIES_MAX
