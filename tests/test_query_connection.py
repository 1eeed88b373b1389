"""The daemon's query connection fails apart from everything else (docs/daemon.md, "Queries"),
against the real daemon and a real Mosquitto with the shipped ACL and passwords: dropped by
the broker again and again, it leaves a running session untouched and comes back; refused at
login (no password for its account), it leaves the daemon running sessions as ever."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from tests.clinician import SESSION_WAIT_S, clinician, ok
from tests.daemon_process import DaemonProcess, daemon_config
from tests.mosquitto import PASSWORDS, Broker, body, login, tablet
from tests.test_mqtt_security import secured  # noqa: F401
from tests.test_query_acl import TM, P, asker, daemon  # noqa: F401
from tests.test_query_flood import ask_until_answered

TAKEOVERS = 3
BACK_WITHIN_S = 30.0  # the link tries again after 0.2 s, doubling up to 5 s


@pytest.mark.asyncio
async def test_the_query_connection_dropped_again_and_again_leaves_a_running_session_untouched(
    secured: Broker,  # noqa: F811
    daemon: DaemonProcess,  # noqa: F811
) -> None:
    async with clinician(secured, TM, account="tablet") as doc:
        started = await doc.start_running("u-drop")
        session = started["session"]["id"]
        for _ in range(TAKEOVERS):
            # A connection under the query connection's account: the broker drops the daemon's
            # (it binds client ids to accounts) as it accepts this one.
            with contextlib.suppress(aiomqtt.MqttError):  # the daemon's may come back first
                async with tablet(secured, **login("treadguard-queries")):
                    pass
            # And the daemon's comes back: the dashboard's question is answered.
            async with asker(secured, "dashboard") as dash:
                answer = await ask_until_answered(
                    dash, "dashboard", BACK_WITHIN_S, type="history", user="u-drop"
                )
                assert answer["ok"] is True, answer
        # The session ran on through all of it: same session, belt running, nothing latched,
        # and no stop of any kind was published.
        state = await doc.state(lambda s: True, within=SESSION_WAIT_S)
        assert (state["state"], state["latched"]) == ("running", None), state
        assert state["session"]["id"] == session
        kinds = {body(m)["type"] for m in doc.tab.drain(f"{P}/events")}
        assert not kinds & {"estop", "fault", "session_ended"}, kinds
        ok(await doc.command("stop"))
        ended = await doc.event("session_ended")
        assert ended["reason"] == "operator_stop", ended
    log = daemon.log_text()
    assert log.count('"query_connection_up"') >= TAKEOVERS + 1
    assert '"mqtt_disconnected"' not in log, "the tablet link was dropped too"


@pytest.fixture
def daemon_without_query_password(secured: Broker, tmp_path: Path) -> Iterator[DaemonProcess]:  # noqa: F811
    config = daemon_config(
        tmp_path, secured.port, treadmill_id=TM, mqtt_extra='username = "treadguard"'
    )
    d = DaemonProcess(
        config, tmp_path / "d.log", env={"TREADGUARD_MQTT__PASSWORD": PASSWORDS["treadguard"]}
    )
    d.start()
    try:
        yield d
    finally:
        d.stop()


@pytest.mark.asyncio
async def test_a_query_connection_the_broker_refuses_leaves_sessions_running(
    secured: Broker,  # noqa: F811
    daemon_without_query_password: DaemonProcess,
) -> None:
    async with clinician(secured, TM, account="tablet") as doc:
        await doc.start_running("u-nologin")
        # The page can tell: its patient view would wait for answers that never come.
        assert (doc.latest or {})["queries"] == {"connected": False}
        ok(await doc.command("stop"))
        ended = await doc.event("session_ended")
        assert ended["reason"] == "operator_stop", ended
    log = daemon_without_query_password.log_text()
    assert '"query_connection_failed"' in log
    assert "Not authorized" in log
    assert '"query_connection_up"' not in log
