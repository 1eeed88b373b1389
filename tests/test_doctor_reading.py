"""What the doctor reads of files and sockets other programs set up: a configuration that is
a pipe is refused at once, never waited on; nginx's hidden files are not read, as nginx does
not read them; a bridge's address is read as Mosquitto reads it; and nginx passing the
page's route to a port the broker holds only for IPv6 is not taken as passing it to the
broker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.mosquitto import FILES_SETTLE_S, MOSQUITTO, free_ports, have_mosquitto
from tests.nginx import ipv6_loopback
from treadguard.config.loading import load_config
from treadguard.controller.doctor import (
    DoctorOptions,
    Verdict,
    _passed_elsewhere,
    bridge_target,
    check_broker_files,
)
from treadguard.controller.mqtt_settings import broker_settings
from treadguard.controller.network_probe import nginx_files

ROOT = Path(__file__).resolve().parents[1]

READ_A_PIPE = """
import sys
from pathlib import Path
from treadguard.controller.broker_config import read_mosquitto_conf
from treadguard.controller.network_probe import _enabled
try:
    read_mosquitto_conf(Path(sys.argv[1]))
except OSError as exc:
    print("mosquitto:", exc)
for path, read in _enabled(Path(sys.argv[2])):
    print("nginx:", path.name, read)
"""


def test_a_configuration_that_is_a_pipe_is_refused_not_waited_on(tmp_path: Path) -> None:
    """A broker started with ``-c FIFO`` (or an nginx site that is one): reading it would wait
    for a writer for ever, and the doctor with it, deaf to Ctrl-C. Refused at once, saying
    why; nginx's is said unreadable (the check TODO), not passed over."""
    fifo = tmp_path / "mosquitto.conf"
    os.mkfifo(fifo)
    nginx = tmp_path / "nginx"
    (nginx / "sites-enabled").mkdir(parents=True)
    (nginx / "nginx.conf").write_text("events {}\nhttp {\n  include sites-enabled/*;\n}\n")
    os.mkfifo(nginx / "sites-enabled" / "treadguard")
    done = subprocess.run(
        [sys.executable, "-c", READ_A_PIPE, str(fifo), str(nginx)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert f"mosquitto: {fifo} is not a regular file" in done.stdout, done.stdout
    assert "nginx: treadguard line 0: the file is not a regular file" in done.stdout, done.stdout


def test_a_broker_configuration_given_that_is_no_file_is_said_so_with_its_own_fix(
    tmp_path: Path,
) -> None:
    """``doctor --mosquitto-conf`` naming a pipe or a folder: the check names the path and what
    it is, and the fix is to name the file, not to install Mosquitto; a path with nothing there
    is the broker's configuration missing, whose fix is to install it."""
    fifo = tmp_path / "mosquitto.conf"
    os.mkfifo(fifo)
    loaded = load_config(ROOT / "config" / "sim.toml")
    for given, said, fix in (
        (fifo, f"not checked: {fifo}: not a regular file", "--mosquitto-conf FILE"),
        (tmp_path, f"not checked: {tmp_path}: not a regular file", "--mosquitto-conf FILE"),
        (tmp_path / "none.conf", f"not checked: {tmp_path / 'none.conf'}: No such file", "install"),
    ):
        options = DoctorOptions(mosquitto_conf=given)
        checks = check_broker_files(loaded, broker_settings(loaded), options)
        (check,) = [c for c in checks if c.name == "broker config"]
        assert check.verdict is Verdict.TODO, check
        assert check.detail.startswith(said), check
        assert fix in check.fix, check
        if fix != "install":
            assert "install Mosquitto" not in check.fix, check


def test_nginx_s_hidden_files_are_not_read(tmp_path: Path) -> None:
    """nginx's ``include sites-enabled/*`` (a glob) skips names that start with a dot: an
    editor's swap file left beside the site is not nginx's configuration, nor the doctor's."""
    for folder in ("sites-enabled", "conf.d", "modules-enabled"):
        (tmp_path / folder).mkdir()
    (tmp_path / "sites-enabled" / "treadguard").write_text("server {}\n")
    (tmp_path / "sites-enabled" / ".treadguard.swp").write_bytes(b"b0VIM 9.0\x00")
    (tmp_path / "conf.d" / ".hidden.conf").write_text("server {}\n")
    (tmp_path / "conf.d" / "kept.conf").write_text("server {}\n")
    names = [p.name for p in nginx_files(tmp_path) if p.is_file()]
    assert ".treadguard.swp" not in names
    assert ".hidden.conf" not in names
    assert "treadguard" in names
    assert "kept.conf" in names


def test_a_bridge_s_address_is_read_as_mosquitto_reads_it() -> None:
    """host:port, a port of ASCII digits only; any other word is a host at Mosquitto's
    default port (a superscript two is a digit to Python, not to Mosquitto's atoi)."""
    assert bridge_target("10.0.0.1:1884") == ("10.0.0.1", 1884)
    assert bridge_target("[::1]:1884") == ("::1", 1884)
    assert bridge_target("board.local") == ("board.local", 1883)
    assert bridge_target("\u00b2") == ("\u00b2", 1883)
    assert bridge_target("10.0.0.1:\u00b2") == ("10.0.0.1:\u00b2", 1883)


@pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")
def test_a_pass_to_127_0_0_1_beside_a_broker_on_ipv6_only_is_not_the_broker_s(
    tmp_path: Path,
) -> None:
    """The broker ([mqtt] port Q on 127.0.0.1) listens on port P on [::] alone (Mosquitto
    makes that socket IPv6-only), so another program may hold 127.0.0.1:P; nginx's /mqtt
    passed to 127.0.0.1:P reaches that program, not the broker, and is named."""
    if not ipv6_loopback():
        pytest.skip("no IPv6 here")
    mqtt_port, port = free_ports(2)
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {mqtt_port} 127.0.0.1\nlistener {port} ::\nallow_anonymous false\n")
    time.sleep(FILES_SETTLE_S)  # its file older than its start, past the doctor's tick
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.DEVNULL)
    other = socket.socket()
    try:
        deadline = time.monotonic() + 10.0
        while True:  # bounded: until the broker listens on [::1]:P, or the deadline
            try:
                socket.create_connection(("::1", port), timeout=1.0).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the broker never listened"
                time.sleep(0.05)  # a broker's start, polled
        other.bind(("127.0.0.1", port))  # IPv6-only beside it: the port is free on IPv4
        other.listen()
        site = tmp_path / "nginx"
        (site / "sites-enabled").mkdir(parents=True)
        (site / "nginx.conf").write_text("events {}\nhttp {\n  include sites-enabled/*;\n}\n")
        (site / "sites-enabled" / "treadguard").write_text(
            "server {\n  listen 8443 ssl;\n"
            f"  location = /mqtt {{\n    proxy_pass http://127.0.0.1:{port};\n  }}\n}}\n"
        )
        said = _passed_elsewhere(site, mqtt_port)
        assert len(said) == 1, said
        assert f"passes requests on to 127.0.0.1:{port}" in said[0], said
    finally:
        other.close()
        broker.kill()
        broker.wait(timeout=10)
