"""The patient's plan over the real daemon and broker (docs/plan.md): a short first session
confirmed from the tablet counts at the next start, and a measure is journaled and published
like every record, each answered on the contract."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.clinician import WORKED_OUT, clinician, ok, refused, sensor_user
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker, body
from treadguard.controller.journal import Journal

TM = "tm-plan"


@pytest.mark.asyncio
async def test_a_confirmation_and_a_measure_from_the_tablet(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    make_daemon(treadmill_id=TM, sensors="mqtt")
    p = f"treadmill/{TM}"
    async with sensor_user(broker, TM), clinician(broker, TM) as doc:
        await doc.state(lambda s: s["stale"] == [], within=10.0)
        reason = refused(await doc.command("confirm_first_session", session_id="99"), "not_allowed")
        assert reason == "no session 99 on record"
        state = await doc.start_running("u-plan")
        session = state["session"]["id"]
        assert state["session"]["program"] == "first_session"
        ok(await doc.command("stop"))  # seconds into it: not a first session on belt time
        await doc.state(lambda s: s["state"] == "idle", within=15.0)
        ok(await doc.command("confirm_first_session", session_id=session, clinician="c-7"))
        confirmed = body(
            await doc.tab.next(
                f"{p}/events", lambda m: body(m)["type"] == "first_session_confirmed"
            )
        )
        assert (confirmed["session_id"], confirmed["user"], confirmed["clinician"]) == (
            session,
            "u-plan",
            "c-7",
        )
        ok(await doc.command("record_measure", user="u-plan", kind="tug", value=12.5))
        measured = body(
            await doc.tab.next(f"{p}/events", lambda m: body(m)["type"] == "measure_recorded")
        )
        assert (measured["kind"], measured["value"]) == ("tug", 12.5)
        reason = refused(
            await doc.command("record_measure", user="u-plan", kind="koos", value=101),
            "out_of_range",
        )
        assert reason == "a KOOS is 0 to 100, not 101"
        # The next start that names no program: the later one, by the same rule.
        state = await doc.start_running("u-plan")
        assert state["session"]["program"] == "reverse_walking"
        ok(await doc.command("stop"))
        await doc.state(lambda s: s["state"] == "idle", within=15.0)
    journal = Journal.read_only(tmp_path / f"journal-{TM}.sqlite")
    assert [(m.user, m.kind, m.value) for m in journal.measures("u-plan")] == [
        ("u-plan", "tug", 12.5)
    ]
    assert list(journal.confirmed_sessions("u-plan")) == [int(session)]
    refusals = [
        e.fields
        for e in journal.events()
        # Not a start pressed again while the proposal was worked out (tests/clinician.py).
        if e.type == "command_refused" and WORKED_OUT not in str(e.fields.get("message"))
    ]
    assert [r["command"] for r in refusals] == ["confirm_first_session", "record_measure"]
    journal.close()
