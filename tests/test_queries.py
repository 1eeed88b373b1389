"""The daemon's answers to read-only queries (controller/queries.py) from a journal on disk,
written through the Journal class, in a clinic whose time zone is not UTC: what they say, and
that they are answered off the event loop, bounded, and with a clear error for bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from treadguard.contract.queries import MAX_REPLY_BYTES, HistoryQuery, SessionQuery
from treadguard.controller import queries
from treadguard.controller.journal import Journal
from treadguard.controller.queries import ClinicWords, QueryService, read_answer
from treadguard.safety.decisions import Event, EventType, JsonScalar

NEW_YORK = ZoneInfo("America/New_York")
WORDS = ClinicWords(zone=NEW_YORK, titles={"first_session": "First treadmill session"})
T0 = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC; sessions an hour apart


def write_journal(path: Path, sessions: int, user: str = "ann") -> None:
    """``sessions`` sessions of ``user``, 5 minutes of belt each to the cap, pain 5 before;
    pain after entered twice (7, corrected to 3) with a note."""
    journal = Journal.open(path)
    for n in range(1, sessions + 1):
        start = T0 + 3600 * n
        sid = str(n)
        journal.record(
            Event(
                EventType.SESSION_STARTED,
                0.0,
                {"session_id": sid, "user": user, "program": "first_session", "cap_s": 300.0},
            ),
            start,
        )
        journal.sample(start + 5, 0.8, 0.8)
        journal.record(
            Event(
                EventType.OUTCOME_RECORDED, 0.0, {"session_id": sid, "when": "before", "pain": 5}
            ),
            start + 1,
        )
        journal.record(
            Event(
                EventType.SESSION_ENDED,
                0.0,
                {"session_id": sid, "reason": "cap", "belt_moving_s": 300.0},
            ),
            start + 310,
        )
        for pain in (7, 3):
            after = {"session_id": sid, "when": "after", "pain": pain, "exertion": 4}
            journal.record(
                Event(EventType.OUTCOME_RECORDED, 0.0, {**after, "notes": f"pain {pain}"}),
                start + 320,
            )
    journal.commit()
    journal.close()


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal.sqlite"
    write_journal(path, 3)
    return path


def test_a_history_is_newest_first_in_the_clinics_zone_and_words(journal: Path) -> None:
    query = HistoryQuery(id="q", type="history", user="ann", limit=2)
    answer = read_answer(journal, query, WORDS).to_json()
    assert (answer["ok"], answer["total"], answer["timezone"]) == (True, 3, "America/New_York")
    sessions = answer["sessions"]
    assert isinstance(sessions, list)
    assert [s["session_id"] for s in sessions if isinstance(s, dict)] == ["3", "2"]
    newest = sessions[0]
    assert newest == {
        "session_id": "3",
        "user": "ann",
        "program": "first_session",
        "program_title": "First treadmill session",
        # 1796010800 is 2026-11-30 03:53:20 UTC, the evening before in New York (EST).
        "started": "2026-11-29T22:53:20-05:00",
        "ended": "2026-11-29T22:58:30-05:00",
        "belt_min": 5.0,
        "cap_min": 5.0,
        "top_mph": 0.8,
        "ended_by": "cap",
        "ended_by_words": "the session cap was reached",
        "pain_before": 5,
        "pain_after": 3,  # the correction, not the first entry
        "exertion": 4,
    }


def test_a_user_without_sessions_has_an_empty_history(journal: Path) -> None:
    answer = read_answer(journal, HistoryQuery(id="q", type="history", user="bob"), WORDS)
    assert answer.to_json()["sessions"] == []
    assert answer.to_json()["total"] == 0


def test_a_history_carries_the_user_s_measures_a_kind_each(journal: Path) -> None:
    """Baseline and latest by the day taken, whatever the order they were entered in; another
    user's measures stay theirs."""
    written = Journal.open(journal)
    for user, kind, value, day in (
        ("ann", "tug", 10.5, "2026-11-20"),
        ("ann", "tug", 12.0, "2026-11-02"),  # the baseline, entered after the follow-up
        ("ann", "koos", 55, "2026-11-02"),
        ("bob", "womac", 40, "2026-11-02"),
    ):
        fields: dict[str, JsonScalar] = {"user": user, "kind": kind, "value": value, "date": day}
        written.record(Event(EventType.MEASURE_RECORDED, 0.0, fields), T0)
    written.commit()
    written.close()
    answer = read_answer(journal, HistoryQuery(id="q", type="history", user="ann"), WORDS)
    assert answer.to_json()["measures"] == [
        {
            "kind": "tug",
            "title": "Timed Up and Go",
            "baseline": "12.0 s, 2026-11-02",
            "latest": "10.5 s, 2026-11-20",
            "change": "-1.5 s, better",
            "count": 2,
        },
        {
            "kind": "koos",
            "title": "KOOS",
            "baseline": "55, 2026-11-02",
            "latest": "-",
            "change": "-",
            "count": 1,
        },
    ]
    nobody = read_answer(journal, HistoryQuery(id="q", type="history", user="cy"), WORDS)
    assert nobody.to_json()["measures"] == []


def test_a_sessions_report_data(journal: Path) -> None:
    answer = read_answer(journal, SessionQuery(id="q", type="session", session_id="2"), WORDS)
    body = answer.to_json()
    assert body["notes"] == {"after": "pain 3"}
    events = body["events"]
    assert isinstance(events, list)
    assert [e["name"] for e in events if isinstance(e, dict)][:2] == [
        "Session started",
        "Outcome recorded",
    ]
    assert "html" not in body
    missing = read_answer(journal, SessionQuery(id="q", type="session", session_id="9"), WORDS)
    assert missing.to_json()["error"] == {"code": "not_found", "message": "there is no session 9"}


class Answers:
    """What the service sends, per account, as the link would publish it."""

    def __init__(self) -> None:
        self.got: dict[str, list[dict[str, Any]]] = {}
        self.sizes: list[int] = []  # of each payload, as the link would publish it
        self.arrived = asyncio.Event()

    def __call__(self, account: str, payload: bytes) -> None:
        self.sizes.append(len(payload))
        self.got.setdefault(account, []).append(json.loads(payload))
        self.arrived.set()

    async def wait_for(self, account: str, n: int) -> list[dict[str, Any]]:
        async with asyncio.timeout(10.0):
            while len(self.got.get(account, [])) < n:
                self.arrived.clear()
                await self.arrived.wait()
        return self.got.get(account, [])


async def no_render(session: int) -> str:
    raise AssertionError("no report asked for")


def history(query_id: str, user: str = "ann") -> bytes:
    return json.dumps({"id": query_id, "type": "history", "user": user}).encode()


@pytest.mark.asyncio
async def test_the_journal_is_read_on_a_worker_thread_never_the_loops(
    journal: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    real = queries.read_answer

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(queries, "read_answer", spy)
    answers = Answers()
    service = QueryService(journal=journal, words=WORDS, reply=answers, render=no_render)
    runner = asyncio.create_task(service.run())
    try:
        service.submit("tablet", history("q1"), False)
        [answer] = await answers.wait_for("tablet", 1)
    finally:
        runner.cancel()
    assert answer["ok"] is True
    assert threads
    assert threading.get_ident() not in threads


@pytest.mark.asyncio
async def test_bad_input_is_answered_at_once_and_a_flood_is_rate_limited(journal: Path) -> None:
    answers = Answers()
    service = QueryService(
        journal=journal, words=WORDS, reply=answers, render=no_render, per_account=2
    )
    # Not running yet: nothing is answered from the queue, so what comes back came at once.
    service.submit("tablet", b'{"id": "bad", "type": "history"}', False)
    service.submit("tablet", history("retained"), True)
    for n in range(4):
        service.submit("tablet", history(f"q{n}"), False)
    service.submit("dashboard", history("d0"), False)  # another account's own allowance
    at_once = answers.got["tablet"]
    assert [(a["id"], a["error"]["code"]) for a in at_once] == [
        ("bad", "invalid_query"),
        ("retained", "not_allowed"),
        ("q2", "rate_limited"),
        ("q3", "rate_limited"),
    ]
    assert "user" in at_once[0]["error"]["message"]
    runner = asyncio.create_task(service.run())
    try:
        later = (await answers.wait_for("tablet", 6))[4:]
        assert [(a["id"], a["ok"]) for a in later] == [("q0", True), ("q1", True)]
        assert (await answers.wait_for("dashboard", 1))[0]["ok"] is True
        # Answered: the account may ask again.
        service.submit("tablet", history("q4"), False)
        assert (await answers.wait_for("tablet", 7))[6]["id"] == "q4"
    finally:
        runner.cancel()


@pytest.mark.asyncio
async def test_a_journal_that_cannot_be_read_is_unavailable_not_a_failure(tmp_path: Path) -> None:
    answers = Answers()
    for journal in (None, tmp_path / "missing.sqlite"):
        service = QueryService(journal=journal, words=WORDS, reply=answers, render=no_render)
        runner = asyncio.create_task(service.run())
        try:
            service.submit("tablet", history("q"), False)
            answer = (await answers.wait_for("tablet", 1))[-1]
        finally:
            runner.cancel()
        answers.got.clear()
        assert answer["error"]["code"] == "unavailable"
        assert "journal" in answer["error"]["message"]


@pytest.mark.asyncio
async def test_a_report_page_is_rendered_outside_and_its_failure_said(journal: Path) -> None:
    asked: list[int] = []

    async def render(session: int) -> str:
        asked.append(session)
        if session == 3:
            raise RuntimeError("the report took longer than 30 s")
        return f"<html>session {session}</html>"

    answers = Answers()
    service = QueryService(journal=journal, words=WORDS, reply=answers, render=render)
    runner = asyncio.create_task(service.run())
    try:
        for sid in ("2", "3", "9"):
            query = {"id": f"s{sid}", "type": "session", "session_id": sid, "format": "html"}
            service.submit("tablet", json.dumps(query).encode(), False)
        two, three, nine = await answers.wait_for("tablet", 3)
    finally:
        runner.cancel()
    assert two["html"] == "<html>session 2</html>"
    assert two["session"]["session_id"] == "2"
    assert three["error"] == {
        "code": "unavailable",
        "message": "the report could not be written: the report took longer than 30 s",
    }
    assert nine["error"]["code"] == "not_found"
    assert asked == [2, 3]  # a session that is not there is never rendered


@pytest.mark.asyncio
async def test_an_answer_too_large_for_the_broker_is_refused_with_its_size(
    tmp_path: Path,
) -> None:
    """The board's broker disconnects a client that sends more than 1 MiB (its
    max_packet_size): an answer over MAX_REPLY_BYTES, a long page or the events of a session
    with thousands of them, is refused with its size and where the whole can be had."""
    journal = tmp_path / "journal.sqlite"
    busy = Journal.open(journal)
    for n in (1, 2, 3):
        start = T0 + 3600 * n
        started: dict[str, JsonScalar] = {
            "session_id": str(n),
            "user": "ann",
            "program": "first_session",
            "cap_s": 300.0,
        }
        busy.record(Event(EventType.SESSION_STARTED, 0.0, started), start)
        # Session 2: a tablet that changed the speed every 25 ms of its 5 minutes.
        for k in range(12_000 if n == 2 else 0):
            change: dict[str, JsonScalar] = {"from_mph": 0.8, "to_mph": 0.9, "by": f"t{k % 7}"}
            busy.record(Event(EventType.SPEED_CHANGED, 0.0, change), start + 5 + k * 0.025)
        ended: dict[str, JsonScalar] = {"session_id": str(n), "reason": "cap", "belt_moving_s": 300}
        busy.record(Event(EventType.SESSION_ENDED, 0.0, ended), start + 310)
    busy.commit()
    busy.close()
    pages = {1: "<html>" + "x" * (MAX_REPLY_BYTES - 2048) + "</html>", 3: "<html>" + "y" * 2**20}

    async def render(session: int) -> str:
        return pages[session]

    answers = Answers()
    service = QueryService(journal=journal, words=WORDS, reply=answers, render=render)
    runner = asyncio.create_task(service.run())
    try:
        for sid, form in (("1", "html"), ("2", "data"), ("3", "html")):
            query = {"id": f"s{sid}", "type": "session", "session_id": sid, "format": form}
            service.submit("tablet", json.dumps(query).encode(), False)
        near, events, page = await answers.wait_for("tablet", 3)
    finally:
        runner.cancel()
    assert near["ok"] is True
    assert near["html"] == pages[1]
    assert max(answers.sizes) <= MAX_REPLY_BYTES
    for answer, sid in ((events, "2"), (page, "3")):
        assert answer["ok"] is False, str(answer)[:200]
        assert answer["error"]["code"] == "unavailable"
        message = answer["error"]["message"]
        assert f"more than the {MAX_REPLY_BYTES // 1024} KiB" in message, message
        assert f"(treadguard report {sid})" in message, message
    assert "answer is 1025 KiB" in page["error"]["message"]


@pytest.mark.asyncio
async def test_the_report_page_is_treadguard_reports_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real renderer: ``treadguard report`` in a process of its own, keeping matplotlib's
    font list in the folder it is given (a daemon's user has no home to keep it in)."""
    from tests.daemon_process import daemon_config

    monkeypatch.delenv("MPLCONFIGDIR", raising=False)
    config = daemon_config(tmp_path, 1883, treadmill_id="tm-r")
    write_journal(tmp_path / "journal-tm-r.sqlite", 1)
    cache = tmp_path / "matplotlib"
    page = await queries.render_report(config, 1, timeout_s=60.0, cache=cache)
    assert list(cache.glob("fontlist-*.json"))
    assert page.startswith("<!doctype html>")
    assert "session 1" in page
    with pytest.raises(RuntimeError, match="no session 5"):
        await queries.render_report(config, 5, timeout_s=60.0)


@pytest.mark.asyncio
async def test_the_link_hands_over_queries_with_their_account_and_answers_on_its_topic(
    tmp_path: Path,
) -> None:
    """The daemon's query connection on a real broker: a query reaches ``submit`` with the
    account its topic names and its retain flag; an answer goes to that account's reply topic;
    what is published on a reply topic is never taken for a query."""
    from tests.mosquitto import Broker, have_mosquitto, tablet
    from treadguard.contract.mqtt import default_prefix
    from treadguard.controller.mqtt_settings import BrokerSettings
    from treadguard.controller.query_link import QueryLink

    if not have_mosquitto():
        pytest.skip("mosquitto is not installed (scripts/test installs it)")
    broker = Broker(tmp_path)  # its port is chosen here, started below
    p = default_prefix("tm-q-link")
    heard: list[tuple[str, bytes, bool]] = []
    arrived = asyncio.Event()

    def submit(account: str, payload: bytes, retained: bool) -> None:
        heard.append((account, payload, retained))
        arrived.set()

    link = QueryLink(
        "tm-q-link-queries",
        BrokerSettings(
            host="127.0.0.1", port=broker.port, prefix=p, username=None, password=None, tls=None
        ),
        submit,
    )
    broker.start()
    try:
        async with tablet(broker, f"{p}/query/dash/reply") as tab:
            # Retained first, so the link finds it as it subscribes, whenever that is.
            await tab.publish(f"{p}/query/dash", b'{"id": "kept"}', retain=True)
            running = asyncio.create_task(link.run())
            try:
                async with asyncio.timeout(5.0):
                    while not heard:
                        arrived.clear()
                        await arrived.wait()
                await tab.publish(f"{p}/query/dash/reply", b'{"id": "not a query"}')
                await tab.publish(f"{p}/query/tab-1", b'{"id": "live"}')
                async with asyncio.timeout(5.0):
                    while len(heard) < 2:
                        arrived.clear()
                        await arrived.wait()
                assert heard == [
                    ("dash", b'{"id": "kept"}', True),
                    ("tab-1", b'{"id": "live"}', False),
                ]
                link.answer("dash", b'{"id": "kept", "ok": true}')
                answer = await tab.next(
                    f"{p}/query/dash/reply", lambda m: m.payload != b'{"id": "not a query"}'
                )
                assert answer.payload == b'{"id": "kept", "ok": true}'
            finally:
                running.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await running
    finally:
        broker.kill()


def test_a_history_carries_the_proposal_for_the_next_session_with_its_reason(
    journal: Path, tmp_path: Path
) -> None:
    """The proposal of controller/plan.py, on the clinic's rules and programs, dated in the
    clinic's zone: ann's first session ran to its cap on 2026-11-29 in New York, and two more
    of the first-session program after it (only the first is her first session)."""
    from tests.daemon_process import daemon_config
    from treadguard.config.loading import load_config
    from treadguard.controller.queries import Planning

    loaded = load_config(daemon_config(tmp_path, 1883))
    planning = Planning(rules=loaded.rules, programs=loaded.programs, now=lambda: T0 + 2 * 86400)
    ann = read_answer(journal, HistoryQuery(id="q", type="history", user="ann"), WORDS, planning)
    proposal = ann.to_json()["proposal"]
    assert isinstance(proposal, dict)
    assert (proposal["program"], proposal["cap_s"], proposal["held"]) == (
        "reverse_walking",
        300.0,
        False,
    )
    assert proposal["reason"] == (
        "Reverse walking, 5 min: week 1 on the treadmill (first session 2026-11-29), "
        "reverse walking from week 1"
    )
    bob = read_answer(journal, HistoryQuery(id="q", type="history", user="bob"), WORDS, planning)
    first = bob.to_json()["proposal"]
    assert isinstance(first, dict)
    assert first["program"] == "first_session"
    assert first["reason"] == "First treadmill session, 3 min: no treadmill session on record"
    plain = read_answer(journal, HistoryQuery(id="q", type="history", user="ann"), WORDS)
    assert "proposal" not in plain.to_json()  # no rules given, no proposal made up


QUERIES = st.one_of(
    st.builds(lambda u: {"type": "history", "user": u}, st.sampled_from(["ann", "bob", " ", ""])),
    st.builds(
        lambda n, f: {"type": "session", "session_id": n, "format": f},
        st.sampled_from(["1", "3", "9", "0", "x"]),
        st.sampled_from(["data", "html", "pdf"]),
    ),
    st.builds(lambda k: {"type": k}, st.sampled_from(["estop", "history"])),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["tablet", "dashboard"]),
            st.one_of(QUERIES, st.binary(max_size=40)),
            st.booleans(),
        ),
        max_size=12,
    )
)
def test_every_query_is_answered_exactly_once_whatever_comes(
    journal: Path, asked: list[tuple[str, dict[str, str] | bytes, bool]]
) -> None:
    """Nothing is lost: each query gets one answer, to the account that asked (an answer, a
    refusal saying what was wrong, or rate_limited), whatever the mix and the order."""

    async def render(session: int) -> str:
        return f"<html>{session}</html>"

    async def run() -> Answers:
        answers = Answers()
        service = QueryService(
            journal=journal, words=WORDS, reply=answers, render=render, per_account=2
        )
        runner = asyncio.create_task(service.run())
        try:
            for n, (account, query, retained) in enumerate(asked):
                payload = (
                    query if isinstance(query, bytes) else json.dumps({"id": f"q{n}", **query})
                )
                service.submit(
                    account, payload.encode() if isinstance(payload, str) else payload, retained
                )
            for account in ("tablet", "dashboard"):
                await answers.wait_for(account, sum(a == account for a, _, _ in asked))
        finally:
            runner.cancel()
        return answers

    answers = asyncio.run(run())
    for account in ("tablet", "dashboard"):
        sent = [
            f"q{n}" for n, (a, q, _) in enumerate(asked) if a == account and isinstance(q, dict)
        ]
        got = [a["id"] for a in answers.got.get(account, []) if a["id"] is not None]
        assert sorted(got) == sorted(sent)
        assert len(answers.got.get(account, [])) == sum(a == account for a, _, _ in asked)
