"""The daemon under systemd's notify protocol (``Type=notify``, ``WatchdogSec``; SR-11), with
the test as systemd: a datagram socket named in ``$NOTIFY_SOCKET``. READY once the control
loop ticks, STATUS as the state changes, WATCHDOG pings only while the loop really ticks (none
while the process is stopped), STOPPING on SIGTERM."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_process import ROOT, DaemonProcess, daemon_config
from tests.mosquitto import Broker
from treadguard.controller.systemd import Notifier

WATCHDOG_USEC = 400_000  # pings every 0.2 s


class FakeSystemd:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[dict[str, str]] = []

    def next(self, key: str, timeout: float = 10.0) -> dict[str, str]:
        """The next notification that sets ``key``, within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} within {timeout} s; got {self.messages}")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            message = dict(line.split("=", 1) for line in data.decode().splitlines())
            self.messages.append(message)
            if key in message:
                return message

    def pings_within(self, seconds: float) -> int:
        """How many WATCHDOG=1 arrive in the next ``seconds``."""
        count, deadline = 0, time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            count += b"WATCHDOG=1" in data
        return count


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    try:
        yield fake
    finally:
        fake.sock.close()


def test_sr11_ready_status_watchdog_only_while_ticking_and_stopping(
    broker: Broker, systemd: FakeSystemd, tmp_path: Path
) -> None:
    config = daemon_config(tmp_path, broker.port, treadmill_id="tm-systemd")
    env = {"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    daemon = DaemonProcess(config, tmp_path / "d.log", env=env)
    daemon.start()
    try:
        ready = systemd.next("READY")
        assert ready["READY"] == "1"
        assert ready["STATUS"].startswith("idle")
        assert systemd.pings_within(1.0) >= 3  # every 0.2 s

        daemon.signal(signal.SIGSTOP)  # a hung daemon: the loop does not tick
        try:
            assert systemd.pings_within(1.0) == 0
        finally:
            daemon.signal(signal.SIGCONT)
        systemd.next("WATCHDOG")  # ticking again

        daemon.signal(signal.SIGTERM)
        assert systemd.next("STOPPING")["STOPPING"] == "1"
        assert daemon.wait() == 0
    finally:
        daemon.stop()


def test_the_status_line_says_a_drive_and_a_broker_not_reached(
    systemd: FakeSystemd, tmp_path: Path
) -> None:
    """A Trackmaster on a port that is not there, a broker where none listens: `systemctl
    status` would say "idle" alone, and the treadmill serves nobody. The status line says
    what is not reached (once start-up has had its moment), and the log says the drive."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        nobody = closed.getsockname()[1]  # a port no broker listens on, once closed
    config = daemon_config(
        tmp_path,
        nobody,
        treadmill_id="tm-unreached",
        sensors="mqtt",
        drive='kind = "trackmaster"\nport = "/dev/ttyUSB7-absent"',
    )
    env = {"NOTIFY_SOCKET": str(systemd.path)}
    daemon = DaemonProcess(config, tmp_path / "d.log", env=env, commissioned=False)
    daemon.start()
    try:
        assert systemd.next("READY")["STATUS"] == "idle"
        deadline = time.monotonic() + 15.0
        status = ""
        while "broker" not in status and time.monotonic() < deadline:
            status = systemd.next("STATUS", timeout=15.0)["STATUS"]
        assert status.startswith("idle; the drive is not answering"), status
        assert "; not connected to the broker (" in status, status
    finally:
        daemon.stop()
    assert "cannot open /dev/ttyUSB7-absent" in daemon.log_text()
    assert "has not answered since start-up" in daemon.log_text()


def test_outside_systemd_nothing_is_sent_and_the_abstract_namespace_is_understood() -> None:
    quiet = Notifier({})
    assert not quiet.enabled
    assert quiet.watchdog_s is None
    quiet.notify(READY="1")  # does nothing, raises nothing
    abstract = Notifier({"NOTIFY_SOCKET": "@treadguard-test", "WATCHDOG_USEC": "2000000"})
    assert abstract.enabled
    assert abstract.watchdog_s == 1.0
    abstract.notify(READY="1")  # nobody listens: counted, not raised
    assert abstract.failures == 1
    abstract.close()
    other_pid = Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    assert other_pid.watchdog_s is None  # the watchdog is another process's


def test_the_shipped_unit_names_only_a_group_debian_has() -> None:
    """Copied by hand onto Debian (docs/install-raspberry-pi.md), the unit must start: systemd
    refuses a unit whose SupplementaryGroups names a group the machine lacks (216/GROUP), and
    Debian has dialout but no gpio (scripts/install adds gpio where it exists)."""
    unit = (ROOT / "config" / "systemd" / "treadguard.service").read_text()
    groups = [line for line in unit.splitlines() if line.startswith("SupplementaryGroups=")]
    assert groups == ["SupplementaryGroups=dialout"], groups


def test_the_shipped_unit_file_verifies(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        why = "systemd-analyze is missing (Debian's systemd)"
        if os.environ.get("CI"):
            pytest.fail(f"cannot run under CI: {why}")
        pytest.skip(why)
    unit = (ROOT / "config" / "systemd" / "treadguard.service").read_text()
    assert "Type=notify" in unit
    assert "WatchdogSec=" in unit
    treadguard = Path(sys.executable).parent / "treadguard"
    here = tmp_path / "treadguard.service"
    here.write_text(unit.replace("/opt/treadguard/.venv/bin/treadguard", str(treadguard)))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(here)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    problems = [line for line in verify.stderr.splitlines() if "treadguard.service" in line]
    assert verify.returncode == 0, verify.stderr
    assert problems == [], problems
