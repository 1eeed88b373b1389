"""Read-only queries (docs/tablet-contract.md, "Queries") against the real daemon and a real
Mosquitto with the shipped ACL and passwords: the tablet and dashboard accounts get answers
(a user's history, a session's report), and no other account can ask, nor read an answer meant
for another account.

"Never arrives" is shown as in tests/test_mqtt_security.py, without sleeping: a refused publish
is acknowledged 0x87 only once the broker has finished with it, and each subscriber's messages
are delivered in order, so a message published after it that arrives first shows that the
refused one was never delivered.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.clinician import SESSION_WAIT_S, Clinician, clinician, ok
from tests.daemon_process import DaemonProcess, daemon_config
from tests.mosquitto import (
    DAEMON_ENV,
    SENSORS,
    Broker,
    Tablet,
    body,
    login,
    tablet,
)
from tests.test_mqtt_security import publish_refused, secured  # noqa: F401

TM = "tm-queries"
P = f"treadmill/{TM}"
RENDER_WAIT_S = 60.0  # `treadguard report` in a process of its own, on a busy machine


def query_topic(account: str) -> str:
    return f"{P}/query/{account}"


def reply_topic(account: str) -> str:
    return f"{P}/query/{account}/reply"


@pytest.fixture
def daemon(secured: Broker, tmp_path: Path) -> Iterator[DaemonProcess]:  # noqa: F811
    config = daemon_config(
        tmp_path, secured.port, treadmill_id=TM, mqtt_extra='username = "treadguard"'
    )
    d = DaemonProcess(config, tmp_path / "d.log", env=DAEMON_ENV)
    d.start()
    try:
        yield d
    finally:
        d.stop()


async def ask(tab: Tablet, account: str, within: float = 5.0, **query: Any) -> dict[str, Any]:
    query_id = uuid.uuid4().hex
    await tab.publish(query_topic(account), json.dumps({"id": query_id, **query}).encode())
    message = await tab.next(
        reply_topic(account), lambda m: body(m).get("id") == query_id, within=within
    )
    answer = body(message)
    assert isinstance(answer, dict)
    return answer


async def one_session(doc: Clinician, user: str) -> str:
    """A session for ``user``, run and stopped, with pain 5 before and 3 after: its id."""
    await doc.start_running(user)
    session = str((doc.latest or {})["session"]["id"])
    ok(await doc.command("outcome_before", session_id=session, pain=5))
    ok(await doc.command("stop"))
    await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
    ok(await doc.command("outcome_after", session_id=session, pain=3, notes="no limp"))
    return session


@asynccontextmanager
async def asker(broker: Broker, account: str, *topics: str) -> AsyncIterator[Tablet]:
    """A connection of ``account`` that reads its own answers, once the daemon's state says
    its query connection is up (a query published before the daemon subscribed would reach
    nobody; its commands' connection, which says "online", may be up first)."""
    async with tablet(broker, reply_topic(account), f"{P}/state", *topics, **login(account)) as tab:
        await tab.next(
            f"{P}/state",
            lambda m: body(m).get("queries") == {"connected": True},
            within=SESSION_WAIT_S,
        )
        yield tab


@pytest.mark.asyncio
async def test_the_tablet_gets_a_users_history_and_a_session_report(
    secured: Broker,  # noqa: F811
    daemon: DaemonProcess,
) -> None:
    async with clinician(secured, TM, account="tablet") as doc:
        session = await one_session(doc, "u-q1")
    for account in ("tablet", "dashboard"):
        async with asker(secured, account) as tab:
            history = await ask(tab, account, type="history", user="u-q1")
            assert history["ok"] is True, history
            assert (history["user"], history["total"], history["timezone"]) == ("u-q1", 1, "UTC")
            [row] = history["sessions"]
            assert (row["session_id"], row["pain_before"], row["pain_after"]) == (session, 5, 3)
            assert row["program_title"] == "First treadmill session"
            assert row["ended_by"] == "operator_stop"
            assert row["started"].endswith("+00:00")
            # Stopped after a few seconds: the first session does not count yet.
            assert history["proposal"]["program"] == "first_session"
            assert history["proposal"]["reason"].startswith("First treadmill session, 3 min")
            report = await ask(
                tab, account, RENDER_WAIT_S, type="session", session_id=session, format="html"
            )
            assert report["ok"] is True, report
            assert report["session"] == row
            assert report["notes"] == {"after": "no limp"}
            assert "<html" in report["html"]
            assert f"session {session}" in report["html"]
            missing = await ask(tab, account, type="session", session_id="999")
            assert missing["error"]["code"] == "not_found"
    assert "query_failed" not in daemon.log_text()


@pytest.mark.asyncio
@pytest.mark.parametrize("account", [SENSORS, "sensors", "intruder"])
async def test_no_other_account_can_ask_even_on_the_tablets_topic(
    secured: Broker,  # noqa: F811
    daemon: DaemonProcess,
    account: str,
) -> None:
    async with asker(secured, "tablet") as tab, tablet(secured, **login(account)) as other:
        forged = json.dumps({"id": "forged", "type": "history", "user": "u-q2"}).encode()
        await publish_refused(other, query_topic(account), forged)
        await publish_refused(other, query_topic("tablet"), forged)
        # Asked after both refusals: had the forged one on the tablet's topic reached the
        # daemon, its answer would come first (one query at a time, answered in order).
        await tab.publish(
            query_topic("tablet"),
            json.dumps({"id": "real", "type": "history", "user": "u-q2"}).encode(),
        )
        answer = body(await tab.next(reply_topic("tablet")))  # the first answer of all
        assert answer["id"] == "real"
        assert answer["total"] == 0


@pytest.mark.asyncio
async def test_an_answer_reaches_only_the_account_that_asked(
    secured: Broker,  # noqa: F811
    daemon: DaemonProcess,
) -> None:
    async with (
        asker(secured, "tablet") as tab,
        # Mosquitto grants any subscription and filters what it delivers, message by message.
        asker(secured, "dashboard", f"{P}/query/#", f"{P}/events") as watcher,
    ):
        first = await ask(tab, "tablet", type="history", user="u-q3")
        assert first["ok"] is True
        # Then something the dashboard may read, published after that answer: a refused
        # stop's event. Had the answer reached the dashboard, it would have come first.
        await tab.publish(f"{P}/cmd", json.dumps({"id": "late", "type": "stop"}).encode())
        await watcher.next(f"{P}/events", lambda m: b"command_refused" in m.payload)
        assert [t for t in watcher.order if "/query/" in t] == []
