"""One query of many megabytes from the dashboard account, against the real daemon and a real
Mosquitto with the shipped ACL, while a session runs: a query is at most 4 KiB (it is refused
past that), and whatever the dashboard sends, the control loop keeps its pace, the belt is
not stopped for it, and the tablet's estop is carried out at once (SR-13, SR-15)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid

import paho.mqtt.client as paho
import pytest

from tests.clinician import clinician
from tests.daemon_process import DaemonProcess
from tests.mosquitto import PASSWORDS, Broker
from tests.test_query_acl import TM, P, daemon, query_topic  # noqa: F401
from tests.test_query_flood import secured  # noqa: F401

SIZE = 50 * 1024 * 1024  # under Mosquitto's own limit of 256 MiB
ESTOP_REPLY_S = 0.5


def _big_query(port: int, done: threading.Event) -> None:
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="dashboard")
    client.username_pw_set("dashboard", PASSWORDS["dashboard"])
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(query_topic("dashboard"), b"x" * SIZE, qos=1).wait_for_publish(60.0)
    finally:
        done.set()
        client.loop_stop()
        client.disconnect()


@pytest.mark.asyncio
async def test_a_query_of_megabytes_neither_stalls_the_loop_nor_stops_the_belt(
    secured: Broker,  # noqa: F811
    daemon: DaemonProcess,  # noqa: F811
) -> None:
    async with clinician(secured, TM, account="tablet") as doc:
        await doc.start_running("u-big")
        done = threading.Event()
        sender = threading.Thread(target=_big_query, args=(secured.port, done), daemon=True)
        sender.start()
        await asyncio.to_thread(done.wait, 60.0)
        sent = time.monotonic()
        command_id = uuid.uuid4().hex
        await doc.raw(json.dumps({"id": command_id, "type": "estop"}).encode())
        message = await doc.tab.next(
            f"{P}/reply", lambda m: json.loads(m.payload).get("id") == command_id, within=60.0
        )
        took = time.monotonic() - sent
        sender.join(10.0)
        assert json.loads(message.payload)["ok"] is True
        log = daemon.log_text()
        assert '"cause": "drive_link"' not in log, "the belt was stopped by a fault"
        assert "control_tick_late" not in log, "the control loop stalled"
        assert took < ESTOP_REPLY_S, f"the estop's reply took {took:.2f} s"
