"""A loopback-only broker made reachable from the network by the kernel: route_localnet on
an interface lets a firewall rule (DNAT to 127.0.0.1) forward the network's connections to a
listener on loopback, where nothing listens beyond loopback for the doctor's probe to ask.
Against a real Mosquitto on 127.0.0.1 in a network namespace of its own (the board), reached
from another namespace over a veth pair (another machine), the tablet's password crossing
the wire in the clear."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.board_network import board_network  # noqa: F401 (a fixture)
from tests.mosquitto import (
    MOSQUITTO,
    PASSWORDS,
    SENSOR_TM,
    auth_lines,
    free_ports,
    have_mosquitto,
)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")
BOARD, PEER = "198.51.100.2", "198.51.100.3"  # TEST-NET-2: no real machine's
IPTABLES = shutil.which("iptables-legacy") or shutil.which("iptables")


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_machines() -> Iterator[tuple[str, str]]:
    """Two network namespaces joined by a veth pair: the board (BOARD) and another machine
    (PEER). Removed afterwards, with what was set in them."""
    if os.geteuid() != 0 or IPTABLES is None or shutil.which("ip") is None:
        pytest.skip("needs root, ip and iptables")
    tag = f"tg{os.getpid() % 100000}"
    board, peer = f"{tag}b", f"{tag}p"
    try:
        _run("ip", "netns", "add", board)
        _run("ip", "netns", "add", peer)
        _run("ip", "link", "add", f"{tag}vb", "type", "veth", "peer", "name", f"{tag}vp")
        _run("ip", "link", "set", f"{tag}vb", "netns", board)
        _run("ip", "link", "set", f"{tag}vp", "netns", peer)
        for ns, link, address in ((board, f"{tag}vb", BOARD), (peer, f"{tag}vp", PEER)):
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", link)
            _run("ip", "-n", ns, "link", "set", link, "up")
        yield board, peer
    finally:
        for ns in (board, peer):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


_CHECK = """
import asyncio, json
from treadguard.controller.doctor import check_network
checks = asyncio.run(check_network(3.0))
print(json.dumps([[c.verdict.value, c.detail, c.fix] for c in checks]))
"""


def _forwarded_then_checked(board: str, peer: str, tmp_path: Path) -> list[list[str]]:
    """The harm shown (another machine's command reaches the daemon's account through the
    forward), then the network check run in the board's namespace: its checks (verdict,
    detail, fix)."""
    link = f"{board[:-1]}vb"
    (port,) = free_ports(1)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\n{auth_lines(tmp_path)}persistence false\n")
    in_board = ["ip", "netns", "exec", board]
    _run(*in_board, "sysctl", "-qw", f"net.ipv4.conf.{link}.route_localnet=1")
    assert IPTABLES is not None
    _run(
        *in_board, IPTABLES, "-t", "nat", "-A", "PREROUTING", "-i", link, "-p", "tcp",
        "--dport", "1883", "-j", "DNAT", "--to-destination", f"127.0.0.1:{port}",
    )  # fmt: skip
    broker = subprocess.Popen(
        [*in_board, MOSQUITTO, "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Listening is seen from the board's namespace.
        for _ in range(100):
            probe = subprocess.run(
                [*in_board, "ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True
            )
            if probe.stdout.strip():
                break
            assert broker.poll() is None, "the broker exited"
            time.sleep(0.05)  # a poll of another process's listening
        topic = f"treadmill/{SENSOR_TM}/cmd"
        sub = subprocess.Popen(
            [
                *in_board, "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port),
                "-u", "treadguard", "-P", PASSWORDS["treadguard"], "-i", "treadguard",
                "-t", topic, "-C", "1", "-W", "10",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        time.sleep(0.5)  # subscribed (bounded: -W 10 ends it anyway)
        pub = subprocess.run(
            [
                "ip", "netns", "exec", peer, "mosquitto_pub", "-h", BOARD, "-p", "1883",
                "-u", "tablet", "-P", PASSWORDS["tablet"], "-t", topic, "-q", "1",
                "-m", '{"id":"x","type":"heartbeat"}',
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip
        got = sub.communicate(timeout=15)[0]
        assert pub.returncode == 0, pub.stderr  # from the network, in the clear
        assert "heartbeat" in got  # and it reached the daemon's account
        done = subprocess.run(
            [*in_board, sys.executable, "-c", _CHECK],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        found: list[list[str]] = json.loads(done.stdout.splitlines()[-1])
        return found
    finally:
        broker.terminate()
        broker.wait(timeout=10)


@pytest.mark.asyncio
@pytest.mark.usefixtures("board_network")  # the doctor's network check
async def test_a_loopback_broker_forwarded_from_the_network_is_not_passed(
    two_machines: tuple[str, str],
    tmp_path: Path,
) -> None:
    """route_localnet on the board's interface and a DNAT of port 1883 to the broker's
    loopback listener: another machine's client publishes the tablet's command with its
    password in the clear, and it reaches the daemon's account. Nothing of the board's
    listens beyond loopback: the network check must not say ok."""
    board, peer = two_machines
    link = f"{board[:-1]}vb"
    found = await asyncio.to_thread(_forwarded_then_checked, board, peer, tmp_path)
    assert "ok" not in [verdict for verdict, _, _ in found], found
    said = [c for c in found if "route_localnet" in c[1]]
    assert [verdict for verdict, _, _ in said] == ["TODO"], found
    assert link in said[0][1], said
    assert "route_localnet=0" in said[0][2], said
