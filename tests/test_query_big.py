"""One query of many megabytes from the dashboard account, against the real daemon and a real
Mosquitto with the shipped ACL, while a session runs: a query is at most 4 KiB (it is refused
past that), and whatever the dashboard sends, the control loop keeps its pace, the belt is
not stopped for it, and the tablet's estop is carried out at once (SR-13, SR-15).

The broker here has the shipped queue limits but not the shipped ``max_packet_size``, as a
clinic's own broker may not: the board's broker cuts off a client that sends more than 1 MiB
(tests/test_broker_packet_limit.py), and this is what keeps the daemon safe where the broker
does not: each of its connections announces a Maximum Packet Size of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.clinician import clinician
from tests.daemon_process import DaemonProcess
from tests.mosquitto import PASSWORDS, Broker, auth_lines, have_mosquitto, shipped_queue_limits
from tests.test_mqtt_security import need
from tests.test_query_acl import TM, P, daemon, query_topic  # noqa: F401

SIZE = 50 * 1024 * 1024  # under Mosquitto's own limit of 256 MiB
ESTOP_REPLY_S = 0.5


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Broker]:
    """The shipped accounts, ACL and queue limits, without the shipped packet limit."""
    need("mosquitto", have_mosquitto())
    limits = "".join(
        line + "\n"
        for line in shipped_queue_limits().splitlines()
        if not line.startswith("max_packet_size")
    )
    b = Broker(tmp_path, extra=auth_lines(tmp_path) + limits)
    b.start()
    try:
        yield b
    finally:
        b.kill()


def _big_message(port: int, account: str, topic: str, done: threading.Event) -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=account)
    client.username_pw_set(account, PASSWORDS[account])
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, b"x" * SIZE, qos=1).wait_for_publish(60.0)
    finally:
        done.set()
        client.loop_stop()
        client.disconnect()


@pytest.mark.asyncio
# The dashboard on its query topic (the query connection's), and the tablet on the command
# topic: the broker hands either of the daemon's connections nothing larger than its Maximum
# Packet Size.
@pytest.mark.parametrize("sender", ["dashboard", "tablet"])
async def test_a_message_of_megabytes_neither_stalls_the_loop_nor_stops_the_belt(
    secured: Broker,
    daemon: DaemonProcess,  # noqa: F811
    sender: str,
) -> None:
    async with clinician(secured, TM, account="tablet") as doc:
        await doc.start_running("u-big")
        if sender == "tablet":
            # On the clinician's own connection (the broker binds one to each account).
            await doc.raw(b"x" * SIZE)
        else:
            done = threading.Event()
            thread = threading.Thread(
                target=_big_message,
                args=(secured.port, "dashboard", query_topic("dashboard"), done),
                daemon=True,
            )
            thread.start()
            await asyncio.to_thread(done.wait, 60.0)
            thread.join(10.0)
        took = await doc.timed_estop()
        log = daemon.log_text()
        assert '"cause": "drive_link"' not in log, "the belt was stopped by a fault"
        # Never handed to the daemon: reading and refusing it (payload_too_large) held the
        # control loop for half a second and more (a late tick is the load's as much as its).
        assert "payload_too_large" not in log, "the daemon read the message"
        assert "query_refused" not in log, "the daemon read the message"
        assert took < ESTOP_REPLY_S, f"the estop's reply took {took:.2f} s"
