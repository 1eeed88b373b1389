"""Relays into the board's broker that the first reading of its clients missed, each a real
program on this machine judged by the doctor's relay check (controller/doctor_relays.py)
against a real Mosquitto: a relay in two parts joined over 127.0.0.1, one that sends on over
UDP to another machine, and one whose listening socket sits in a thread's own descriptor
table; and a unix socket listener, through which no client is seen, refused in the broker's
configuration."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.board_network import board_network  # noqa: F401 (a fixture)
from tests.mosquitto import Broker, free_ports
from treadguard.controller.broker_config import read_mosquitto_conf
from treadguard.controller.doctor import Verdict, _judge_conf
from treadguard.controller.doctor_relays import relays

ROOT = Path(__file__).resolve().parents[1]
READY = b"ready\n"

# A client of the broker (a real MQTT login, held), then what makes it a relay.
CLIENT = """
import socket, sys, threading, time
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
c = paho.Client(CallbackAPIVersion.VERSION2)
logged_in = threading.Event()
c.on_connect = lambda *_: logged_in.set()
c.connect("127.0.0.1", int(sys.argv[1]))
c.loop_start()
assert logged_in.wait(10), "no CONNACK"
"""
HOLD = """
sys.stdout.write("ready\\n"); sys.stdout.flush()
time.sleep(60)
"""
# Part one: the broker's client, joined to part two over 127.0.0.1.
JOINED = (
    CLIENT
    + """
hop = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
"""
    + HOLD
)
# Part two: takes part one's connection, and listens for the network.
SERVING = """
import socket, sys, time
hop = socket.create_server(("127.0.0.1", int(sys.argv[1])))
public = socket.create_server(("0.0.0.0", int(sys.argv[2])))
sys.stdout.write("ready\\n"); sys.stdout.flush()
joined, _ = hop.accept()
time.sleep(60)
"""
# Sends what it gets on to another machine over UDP (connected: no port of its own listens).
UDP = (
    CLIENT
    + """
out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out.connect(("203.0.113.7", 5000))
"""
    + HOLD
)
# Listens from a thread whose descriptor table is its own (unshare(CLONE_FILES)).
THREAD = (
    CLIENT
    + """
import ctypes, threading
libc = ctypes.CDLL(None, use_errno=True)
def own_table():
    assert libc.unshare(0x400) == 0, ctypes.get_errno()  # CLONE_FILES
    server = socket.create_server(("0.0.0.0", int(sys.argv[2])))
    sys.stdout.write("ready\\n"); sys.stdout.flush()
    time.sleep(60)
threading.Thread(target=own_table, daemon=True).start()
time.sleep(60)
"""
)


@contextlib.contextmanager
def running(script: str, *args: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == READY, "the program did not start"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def broker_pid(broker: Broker) -> int:
    found = subprocess.run(
        ["pgrep", "-f", f"mosquitto-{broker.port}.conf"], capture_output=True, text=True
    ).stdout.split()
    assert len(found) == 1, found
    return int(found[0])


def judged(broker: Broker) -> list[str]:
    """The relay check's findings for the broker, once the relay's parts have taken each
    other's connection (a socket in a listener's queue has no owner until it is taken)."""
    pid = broker_pid(broker)
    deadline = time.monotonic() + 10.0
    while True:
        found = [f.said for f in relays(pid, {broker.port}, set(), {"127.0.0.1"})]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)  # the client's connection being accepted: polled, bounded


@pytest.mark.usefixtures("board_network")  # listens beyond loopback
def test_a_relay_in_two_parts_joined_on_this_machine_is_named(broker: Broker) -> None:
    hop, public = free_ports(2)
    with (
        running(SERVING, hop, public) as serving,
        running(JOINED, broker.port, hop) as joined,
    ):
        found = judged(broker)
    assert len(found) == 1, found
    assert f"pid {joined.pid}" in found[0], found
    assert "is joined on this machine to python" in found[0], found
    assert f"pid {serving.pid}" in found[0], found
    assert f"listens on 0.0.0.0:{public}" in found[0], found


def test_a_relay_that_sends_on_over_udp_is_named(broker: Broker) -> None:
    with running(UDP, broker.port) as relay:
        found = judged(broker)
    assert len(found) == 1, found
    assert f"pid {relay.pid}" in found[0], found
    assert "sends UDP to 203.0.113.7:5000, not this machine" in found[0], found


@pytest.mark.usefixtures("board_network")  # listens beyond loopback
def test_a_relay_listening_from_a_thread_s_own_descriptor_table_is_named(broker: Broker) -> None:
    (public,) = free_ports(1)
    with running(THREAD, broker.port, public) as relay:
        found = judged(broker)
    assert len(found) == 1, found
    assert f"pid {relay.pid}" in found[0], found
    assert f"listens on 0.0.0.0:{public}" in found[0], found


def test_a_plain_client_of_the_broker_is_no_relay(broker: Broker) -> None:
    """The technician's mosquitto_sub, a script of the clinic's: a client and nothing more."""
    with running(CLIENT + HOLD, broker.port):  # "ready" once its CONNACK is in
        assert relays(broker_pid(broker), {broker.port}, set(), {"127.0.0.1"}) == []


pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads Linux's /proc")


def test_a_unix_socket_listener_in_the_broker_s_configuration_fails(tmp_path: Path) -> None:
    """Mosquitto 2.0's ``listener 0 PATH``: a board needs no unix socket listener, and a local
    program relaying through one is not among the broker's TCP clients the doctor judges."""
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        "allow_anonymous false\npassword_file /etc/mosquitto/treadguard/passwd\n"
        "acl_file /etc/mosquitto/treadguard/acl\n"
        "listener 1883 127.0.0.1\nuse_username_as_clientid true\n"
        "listener 0 /run/mosquitto/board.sock\nuse_username_as_clientid true\n"
    )
    check = _judge_conf(read_mosquitto_conf(conf))
    assert check.verdict is Verdict.FAIL, check
    assert "listener 0 /run/mosquitto/board.sock" in check.detail, check
    assert "a unix socket listener" in check.detail, check
