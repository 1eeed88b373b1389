"""The broker's memory under a dashboard's flood of queries, against the real daemon and a real
Mosquitto with the shipped ACL and the shipped queue limits (config/mosquitto/treadguard.conf),
while a session runs.

The daemon's query connection reads within a budget and leaves the rest unread in the broker
(controller/query_link.py). Mosquitto 2.0 keeps a QoS 0 message for a connected client that
does not read as a packet waiting to be written, and nothing but ``max_queued_messages`` counts
those (``max_queued_bytes`` does not): with ``max_queued_messages 0`` a flood grew the broker to
2.4 GB. Now the broker holds at most ``max_queued_messages`` of them for the query connection,
and none larger than the connection's Maximum Packet Size, whatever the dashboard sends: big
messages (up to the 256 KiB the command connection takes) and the largest queries alike. The
tablet's E-STOP during it is answered at once and stops the belt (SR-12, SR-13)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from tests.clinician import SESSION_WAIT_S, clinician
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker, account_publisher, peak_rss_bytes
from tests.test_query_acl import TM, P, daemon, query_topic  # noqa: F401
from tests.test_query_flood import secured  # noqa: F401

MIB = 1024 * 1024
# What the dashboard sends, at QoS 0, as fast as it can: messages just under the 256 KiB the
# daemon's command connection takes, and queries of the largest size a query may have (4 KiB).
BIG = (200, 250 * 1024)  # 50 MB
LARGEST_QUERIES = (10_000, 4096)  # 41 MB
# The broker's growth allowed: what it may hold for the query connection (max_queued_messages,
# 1,000, packets of at most its Maximum Packet Size, 8 KiB: 8 MiB), the one message being read
# from the dashboard, and Mosquitto's own slack. Held in full, as before, the flood is 91 MB.
GROWTH_MIB = 32
ESTOP_REPLY_S = 0.5


def _flood(port: int, done: threading.Event) -> None:
    try:
        with account_publisher(port, "dashboard") as client:
            for count, size in (BIG, LARGEST_QUERIES):
                payload = b"x" * size
                for _ in range(count):
                    client.publish(query_topic("dashboard"), payload, qos=0)
            # Every message handed to the broker (a QoS 1 publish after them is acknowledged
            # once the broker has read them all).
            client.publish(query_topic("dashboard"), b"{}", qos=1).wait_for_publish(60.0)
    finally:
        done.set()


@pytest.mark.asyncio
async def test_a_dashboards_flood_of_queries_never_grows_the_broker_past_a_bound(
    secured: Broker,  # noqa: F811
    daemon: DaemonProcess,  # noqa: F811
    tmp_path: Path,
) -> None:
    assert secured.proc is not None
    async with clinician(secured, TM, account="tablet") as doc:
        await doc.start_running("u-memory")
        before = peak_rss_bytes(secured.proc.pid)
        done = threading.Event()
        flooder = threading.Thread(target=_flood, args=(secured.port, done), daemon=True)
        flooder.start()
        await asyncio.to_thread(done.wait, 60.0)
        flooder.join(10.0)
        grown = (peak_rss_bytes(secured.proc.pid) - before) / MIB
        # The session ran through the flood, and the tablet's E-STOP is carried out at once.
        state = await doc.state(lambda s: True, within=SESSION_WAIT_S)
        assert (state["state"], state["latched"]) == ("running", None), state
        took = await doc.timed_estop()
        state = await doc.until(lambda s: s["state"] == "estop", within=SESSION_WAIT_S)
        assert state["latched"]["cause"] == "remote_estop"
        assert took < ESTOP_REPLY_S, f"the estop's reply took {took:.2f} s"
    assert grown < GROWTH_MIB, f"the broker grew by {grown:.0f} MiB during the flood"
    assert '"cause": "drive_link"' not in daemon.log_text(), "the belt was stopped by a fault"
