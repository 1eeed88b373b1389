"""A start that names no program ("From history" on the page) on the real daemon over a real
Mosquitto: it follows the user's proposal (controller/plan.py), holds included, as the
daemon's book of proposals has it (controller/proposal_book.py, worked out off the command
path); while a user's entry is not current the start is refused, saying why, and a start a
moment later goes ahead."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.clinician import WORKED_OUT, Clinician, clinician, ok
from tests.daemon_process import ROOT, DaemonProcess
from tests.mosquitto import Broker
from tests.tablet_queries import tablet_queries
from treadguard.controller.journal import Journal
from treadguard.safety.decisions import Event, EventType, JsonScalar


def seed_first_session(
    broker: Broker, tm: str, n: int, user: str, pain: tuple[int, int], *, days_ago: int = 1
) -> None:
    """Session ``n``: ``user``'s first session, run to its 3 min cap ``days_ago`` days ago,
    with pain before and after it, as the daemon journals them."""
    journal = Journal.open(broker.workdir / f"journal-{tm}.sqlite", max_size_mb=64)
    try:
        start = time.time() - 86_400 * days_ago
        fields: dict[str, JsonScalar] = {
            "session_id": str(n), "user": user, "program": "first_session", "cap_s": 180.0,
        }  # fmt: skip
        journal.record(Event(EventType.SESSION_STARTED, 0.0, fields), start)
        for when, score in zip(("before", "after"), pain, strict=True):
            entry: dict[str, JsonScalar] = {"session_id": str(n), "when": when, "pain": score}
            journal.record(Event(EventType.OUTCOME_RECORDED, 0.0, entry), start + 1)
        ended: dict[str, JsonScalar] = {
            "session_id": str(n), "reason": "cap", "belt_moving_s": 180.0,
        }  # fmt: skip
        journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), start + 200)
        journal.commit()
    finally:
        journal.close()


async def start_from_history(doc: Clinician, user: str) -> dict[str, Any]:
    """A start with no program, again while the book says the user's entry is being worked
    out (bounded); the session it started."""
    for _ in range(150):
        reply = await doc.command("start_session", user=user)
        if reply["ok"]:
            return await doc.event("session_started")
        assert reply["error"]["code"] == "preconditions_unmet", reply
        assert WORKED_OUT in reply["error"]["message"], reply
        await asyncio.sleep(0.1)  # a clinician pressing Start again, not a synchronisation
    raise AssertionError(f"{user}'s proposal was never worked out")


@pytest.mark.asyncio
async def test_a_start_from_history_follows_the_proposal_and_its_hold(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """p-held's first session counts (run to its cap), but pain rose 3 points in it: the plan
    holds p-held at the first session, and a start from history gives the first session
    again. p-free's pain rose 1 point: reverse walking, as proposed."""
    tm = "tm-from-history"
    seed_first_session(broker, tm, 1, "p-held", (2, 5))
    seed_first_session(broker, tm, 2, "p-free", (2, 3))
    make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        held = await start_from_history(doc, "p-held")
        assert (held["user"], held["program"], held["cap_s"]) == ("p-held", "first_session", 180)
        ok(await doc.command("stop"))
        await doc.until(lambda s: s["state"] == "idle" and s["speed_mph"] == 0.0, within=15.0)
        free = await start_from_history(doc, "p-free")
        assert (free["user"], free["program"], free["cap_s"]) == ("p-free", "reverse_walking", 300)
        ok(await doc.command("stop"))
        await doc.until(lambda s: s["state"] == "idle", within=15.0)
        # p-held's second first session was stopped at once: the record changed, and the
        # next start from history follows it too (the hold stays: cut short, not moved on).
        again = await start_from_history(doc, "p-held")
        assert again["program"] == "first_session", again
        ok(await doc.command("stop"))


@pytest.mark.asyncio
async def test_a_start_from_history_keeps_to_the_phase_the_user_has_reached(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """p-away's first session was 29 days ago, and nothing since: by the calendar the plan
    proposes intervals (week 5), advice the patient view shows; a start from history keeps to
    the phase p-away has reached (reverse walking, at its default cap), whatever the wall
    clock says. Intervals start only when named."""
    tm = "tm-phase-reached"
    seed_first_session(broker, tm, 1, "p-away", (2, 2), days_ago=29)
    make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc, tablet_queries(broker, tm) as ask:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        # The patient view's history: the proposal (intervals, by the calendar) and what the
        # one tap of From history starts, which is less.
        answer = await ask("history", user="p-away")
        assert answer["ok"] is True, answer
        proposal = answer["proposal"]
        assert proposal["program"] == "intervals", proposal
        start = proposal["from_history"]
        assert (start["program"], start["cap_s"]) == ("reverse_walking", 300), start
        assert start["program_title"] == "Reverse walking"
        started = await start_from_history(doc, "p-away")
        assert (started["program"], started["cap_s"]) == (start["program"], start["cap_s"])
        ok(await doc.command("stop"))


@pytest.mark.asyncio
async def test_a_first_session_from_history_is_the_one_the_history_answer_shows(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """Users with no first session that counts: a start from history gets the rules'
    first-session program at the user's own cap (the clinic's rules give p-own 4 min), as the
    history answer's from_history says, even where `[programs] default` names another
    program; and a longer cap than that is refused, as for any start from history."""
    tm = "tm-first-from-history"
    shipped = (ROOT / "config" / "progression.toml").read_text(encoding="utf-8")
    (broker.workdir / "progression.toml").write_text(
        shipped + '\n[user."p-own"]\ncap_s = 240\n', encoding="utf-8"
    )
    make_daemon(treadmill_id=tm, env={"TREADGUARD_PROGRAMS__DEFAULT": "reverse_walking"})
    async with clinician(broker, tm) as doc, tablet_queries(broker, tm) as ask:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        for user, cap in (("p-new", 180), ("p-own", 240)):
            answer = await ask("history", user=user)
            shown = answer["proposal"]["from_history"]
            assert (shown["program"], shown["cap_s"]) == ("first_session", cap), shown
            longer = await doc.command("start_session", user=user, cap_s=cap + 60)
            assert longer["ok"] is False, longer
            assert longer["error"]["code"] == "out_of_range"
            assert f"above the {cap} s a start from history gives {user}" in str(longer)
            started = await start_from_history(doc, user)
            assert (started["program"], started["cap_s"]) == ("first_session", cap), started
            ok(await doc.command("stop"))
            await doc.state(lambda s: s["state"] == "idle", within=15.0)


@pytest.mark.asyncio
async def test_rules_edited_while_the_daemon_runs_refuse_every_start_from_history(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """The clinic lowers a returning user's cap in the rules file while the daemon runs: the
    daemon's core runs the rules it started with, so from the moment the edit is seen (within
    seconds) the history answer has no proposal and says why, and a start from history is
    refused saying so, a first session's too, until treadguard is restarted. A start naming
    its program still goes."""
    tm = "tm-rules-edited"
    rules = broker.workdir / "progression.toml"
    shipped = (ROOT / "config" / "progression.toml").read_text(encoding="utf-8")
    rules.write_text(shipped, encoding="utf-8")
    seed_first_session(broker, tm, 1, "p-ret", (2, 2))
    make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc, tablet_queries(broker, tm) as ask:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        rules.write_text(shipped + '\n[user."p-ret"]\ncap_s = 300\n', encoding="utf-8")
        why = ""
        deadline = time.monotonic() + 15.0
        while "was changed since the daemon started" not in why:
            assert time.monotonic() < deadline, why
            await asyncio.sleep(0.2)  # the keeper looks every 2 s: a poll of its verdict
            why = str((await ask("history", user="p-ret")).get("proposal_unavailable"))
        for user in ("p-ret", "p-new"):
            reply = await doc.command("start_session", user=user)
            assert reply["ok"] is False, reply
            assert reply["error"]["code"] == "preconditions_unmet"
            assert "was changed since the daemon started" in reply["error"]["message"]
        ok(await doc.command("start_session", user="p-new", program="first_session"))


@pytest.mark.asyncio
async def test_a_start_from_history_other_than_the_one_shown_is_refused(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """The patient view showed p-held's start from history (the first session again: pain
    rose 3 points); another tablet corrects the pain entry, which lifts the hold. A start from
    history sent with what was shown is refused, saying what it would start now; sent with
    what is shown now, it goes."""
    tm = "tm-shown"
    seed_first_session(broker, tm, 1, "p-held", (2, 5))
    make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc, tablet_queries(broker, tm) as ask:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        shown = (await ask("history", user="p-held"))["proposal"]["from_history"]
        assert (shown["program"], shown["cap_s"]) == ("first_session", 180), shown
        ok(await doc.command("outcome_after", session_id="1", pain=2, user="p-held"))
        now: dict[str, Any] = {}
        deadline = time.monotonic() + 15.0
        while now.get("program") != "reverse_walking":
            assert time.monotonic() < deadline, now
            now = (await ask("history", user="p-held"))["proposal"]["from_history"]
        was = {"program": shown["program"], "cap_s": shown["cap_s"]}
        reply = await doc.command("start_session", user="p-held", shown=was)
        assert reply["ok"] is False, reply
        assert reply["error"]["code"] == "preconditions_unmet"
        assert "not the first_session at 180 s shown" in reply["error"]["message"]
        assert "reverse_walking at 300 s now" in reply["error"]["message"]
        seen = {"program": now["program"], "cap_s": now["cap_s"]}
        ok(await doc.command("start_session", user="p-held", shown=seen))
        started = await doc.event("session_started")
        assert (started["program"], started["cap_s"]) == ("reverse_walking", 300)
        ok(await doc.command("stop"))
