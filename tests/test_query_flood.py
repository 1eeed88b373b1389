"""A dashboard's queries against the real daemon and a real Mosquitto with the shipped ACL,
while a session runs. The dashboard may ask (docs/mqtt-security.md), and its queries come in on
the daemon's query connection, never on the one that carries the tablet's commands: however
many it sends, the tablet's emergency stop is carried out and answered at once, the session is
not ended by anything else meanwhile (SR-12, SR-13), and once the flood is over the dashboard's
questions are answered again."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clinician import SESSION_WAIT_S, clinician
from tests.daemon_process import DaemonProcess
from tests.mosquitto import (
    Broker,
    Tablet,
    account_publisher,
    auth_lines,
    body,
    have_mosquitto,
    shipped_queue_limits,
)
from tests.test_mqtt_security import need
from tests.test_query_acl import TM, P, ask, asker, daemon, query_topic, reply_topic  # noqa: F401


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Broker]:
    need("mosquitto", have_mosquitto())
    extra = auth_lines(tmp_path) + shipped_queue_limits()
    b = Broker(tmp_path, extra=extra)
    b.start()
    try:
        yield b
    finally:
        b.kill()


FLOOD = 200_000  # queries of ~60 bytes: about 12 MB, well under the broker's queue limit
ESTOP_REPLY_S = 0.5  # a remote estop's reply, on a quiet link, comes in milliseconds
# The daemon reads 10 queries a second and drops a backlog it cannot read after 5 s
# (controller/query_link.py): a question asked after the flood is answered well within this.
ANSWERED_AGAIN_S = 60.0
ASK_AGAIN_S = 3.0  # as the tablet page does: a question unanswered this long is asked again


def _flood(port: int, done: threading.Event) -> None:
    try:
        with account_publisher(port, "dashboard") as client:
            payload = b'{"id":"q","type":"history","user":"u"}'
            for _ in range(FLOOD):
                client.publish(query_topic("dashboard"), payload, qos=0)
            while client.want_write():
                time.sleep(0.01)
            time.sleep(0.5)
    finally:
        done.set()


async def ask_until_answered(tab: Tablet, account: str, within: float, **query: Any) -> Any:
    """Ask, and ask again every ASK_AGAIN_S, until one of the questions is answered."""
    async with asyncio.timeout(within):
        while True:
            query_id = uuid.uuid4().hex
            await tab.publish(query_topic(account), json.dumps({"id": query_id, **query}).encode())
            try:
                message = await tab.next(
                    reply_topic(account),
                    lambda m, query_id=query_id: body(m).get("id") == query_id,  # type: ignore[misc]
                    within=ASK_AGAIN_S,
                )
            except TimeoutError:
                continue
            return body(message)


@pytest.mark.asyncio
async def test_a_dashboards_queries_never_hold_back_the_tablets_estop(
    secured: Broker,
    daemon: DaemonProcess,  # noqa: F811
) -> None:
    async with clinician(secured, TM, account="tablet") as doc:
        async with asker(secured, "dashboard") as dash:
            # The dashboard may ask: the flood below reaches the daemon, it is not the ACL's.
            answer = await ask(dash, "dashboard", type="history", user="u-flood")
            assert answer["ok"] is True, answer
        await doc.start_running("u-flood")
        done = threading.Event()
        flooder = threading.Thread(target=_flood, args=(secured.port, done), daemon=True)
        flooder.start()
        await asyncio.to_thread(done.wait, 60.0)
        # The session ran through the flood: the next state (every 250 ms while the belt
        # moves) shows it running, nothing latched.
        state = await doc.state(lambda s: True, within=SESSION_WAIT_S)
        assert (state["state"], state["latched"]) == ("running", None), state
        sent = time.monotonic()
        command_id = uuid.uuid4().hex
        await doc.raw(json.dumps({"id": command_id, "type": "estop"}).encode())
        message = await doc.tab.next(
            f"{P}/reply", lambda m: json.loads(m.payload).get("id") == command_id, within=120.0
        )
        reply = json.loads(message.payload)
        took = time.monotonic() - sent
        assert reply["ok"] is True, reply
        state = await doc.until(lambda s: s["state"] == "estop", within=SESSION_WAIT_S)
        assert state["latched"]["cause"] == "remote_estop"
        assert took < ESTOP_REPLY_S, f"the estop's reply took {took:.2f} s"
        flooder.join(10.0)
    assert '"cause": "drive_link"' not in daemon.log_text(), "the belt was stopped by a fault"
    # The flood is over: what the daemon could not read went with the connection that held it,
    # and the dashboard's questions are answered again.
    async with asker(secured, "dashboard") as dash:
        answer = await ask_until_answered(
            dash, "dashboard", ANSWERED_AGAIN_S, type="history", user="u-flood"
        )
        assert answer["ok"] is True, answer
        assert answer["total"] == 1
    assert "query_connection_shed" in daemon.log_text()
