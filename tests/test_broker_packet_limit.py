"""The board's broker takes no packet over 1 MiB from any account (``max_packet_size`` in
config/mosquitto/treadguard.conf), against a real Mosquitto with the shipped ACL and limits.

A retained message stays in the broker's memory until it is replaced: with no limit, a
dashboard's retained messages of 1 MiB on its query topics grew the broker by their sum. Now a
client that sends a bigger packet is disconnected and nothing of it is kept, while the largest
answer the daemon sends (MAX_REPLY_BYTES) still goes through with its topic."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.mosquitto import PASSWORDS, Broker, auth_lines, login, shipped_queue_limits, tablet
from treadguard.contract.queries import MAX_REPLY_BYTES

MIB = 1024 * 1024
WAIT_S = 5.0


@pytest.fixture
def shipped(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(tmp_path, auth_lines(tmp_path) + shipped_queue_limits())
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_the_shipped_limit_leaves_room_for_the_largest_answer() -> None:
    limits = dict(line.split(" ", 1) for line in shipped_queue_limits().splitlines())
    # An answer's PUBLISH: its payload, its topic (treadmill/<id>/query/<account>/reply, ids of
    # at most 32 characters) and a few bytes of header.
    assert int(limits["max_packet_size"]) >= MAX_REPLY_BYTES + 1024
    assert int(limits["max_packet_size"]) <= MIB


def _publish_until_cut_off(port: int, topic: str, payload: bytes) -> bool:
    """Publishes ``payload`` retained as the dashboard; whether the broker then disconnected it
    (within WAIT_S) before acknowledging the message."""
    cut_off, acknowledged = threading.Event(), threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="dashboard")
    client.username_pw_set("dashboard", PASSWORDS["dashboard"])
    client.on_disconnect = lambda *_: cut_off.set()
    client.on_publish = lambda *_: acknowledged.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        client.publish(topic, payload, qos=1, retain=True)
        cut_off.wait(WAIT_S)
        return cut_off.is_set() and not acknowledged.is_set()
    finally:
        client.loop_stop()
        client.disconnect()


@pytest.mark.asyncio
async def test_a_message_over_the_limit_is_cut_off_and_never_retained(shipped: Broker) -> None:
    big = "treadmill/tm-a/query/dashboard"
    assert _publish_until_cut_off(shipped.port, big, b"x" * MIB)

    async with tablet(shipped, **login("dashboard")) as dashboard:
        await dashboard.publish("treadmill/tm-b/query/dashboard", b"{}", retain=True)
        async with tablet(shipped, "treadmill/+/query/+", **login("treadguard-queries")) as q:
            await q.next("treadmill/tm-b/query/dashboard")  # the retained ones, as they are sent
            # A message published after: by the time it arrives, all retained ones have.
            await dashboard.publish("treadmill/tm-c/query/dashboard", b"{}")
            await q.next("treadmill/tm-c/query/dashboard")
            assert big not in q.order, q.order

            # The daemon's largest answer goes through whole.
            reply = "treadmill/tm-b/query/dashboard/reply"
            await dashboard.subscribe(reply)
            await q.publish(reply, b"a" * MAX_REPLY_BYTES)
            got = await dashboard.next(reply)
            assert got.payload == b"a" * MAX_REPLY_BYTES
