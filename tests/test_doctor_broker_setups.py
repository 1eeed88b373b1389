"""Broker setups in which the real Mosquitto 2.0.11 lets someone other than the allowed
accounts command the treadmill or speak for its sensors, and ``treadguard doctor`` must not
pass the board: a bridge bringing the treadmill's topics in, another treadmill's sensor
account, an include_dir file Mosquitto does not read or reads in another order, a broker
running another configuration than the one judged, nginx locations the network probe does
not ask. Each test first shows the harm with a real broker where there is one, then runs the
real doctor."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.board_network import board_network  # noqa: F401 (a fixture)
from tests.mosquitto import (
    ACL,
    FILES_SETTLE_S,
    MOSQUITTO,
    PASSWORDS,
    SENSOR_TM,
    Broker,
    auth_lines,
    free_ports,
    have_mosquitto,
    network_addresses,
    password_file,
    wait_listening,
)
from tests.nginx import ROOT, have_nginx, nginx_on
from tests.test_doctor import (
    Outcome,
    Rig,
    Sensors,
    _broker_anew,
    doctor,
    need,
    path_proxy,
    publishing,
    rig,  # noqa: F401  (the fixture)
)
from treadguard.config.loading import load_config
from treadguard.controller.broker_config import read_mosquitto_conf
from treadguard.controller.doctor import (
    DoctorOptions,
    Verdict,
    _process_started,
    check_broker_files,
    check_network,
)
from treadguard.controller.mqtt_settings import broker_settings
from treadguard.controller.network_probe import unjudged_directives

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")
DYNSEC_PLUGIN = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def _reaches_now(
    port: int,
    topic: str,
    reader: tuple[str, str],
    writer: tuple[str, str] | None,
    at: int,
    published_on: str | None = None,
) -> bool:
    """Whether a message published on ``topic`` by ``writer`` (None: anonymous) at broker port
    ``at`` reaches ``reader`` (user, password) subscribed at ``port``, within 5 s. Published
    again every 0.1 s until it does: a bridge subscribes on the far side in its own time.
    Plain paho clients in their own threads, each step bounded."""
    got = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id=reader[0])
    sub.username_pw_set(*reader)
    sub.on_message = lambda *_: got.set()
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id=writer[0] if writer else "probe")
    if writer is not None:
        pub.username_pw_set(*writer)
    sub.connect("127.0.0.1", port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    pub.connect("127.0.0.1", at)
    pub.loop_start()
    try:
        deadline = time.monotonic() + 5.0
        while not got.is_set() and time.monotonic() < deadline:
            pub.publish(published_on or topic, b'{"id":"x","type":"heartbeat"}', qos=1)
            got.wait(0.1)  # a retry period, not a synchronisation: the event is the answer
        return got.is_set()
    finally:
        for client in (pub, sub):
            client.disconnect()
            client.loop_stop()


async def _reaches(
    port: int,
    topic: str,
    reader: tuple[str, str],
    writer: tuple[str, str] | None,
    at: int,
    published_on: str | None = None,
) -> bool:
    """Whether ``writer``'s message, published on ``published_on`` (``topic`` by default) at
    port ``at``, reaches ``reader`` subscribed to ``topic`` at ``port``."""
    return await asyncio.to_thread(_reaches_now, port, topic, reader, writer, at, published_on)


def _verdicts(out: str) -> dict[str, list[str]]:
    result = json.loads(out.splitlines()[-1])
    found: dict[str, list[str]] = {}
    for c in result["checks"]:
        found.setdefault(c["check"], []).append(c["verdict"])
    return found


async def _broker_config_failed(rig: Rig) -> Outcome:  # noqa: F811
    """The real doctor on the rig: it must exit 1 with its broker config check failed."""
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root", "--json")
    verdicts = _verdicts(done.out)
    assert done.code == 1, (verdicts, done.out[-3000:])
    assert "FAIL" in verdicts["broker config"], verdicts
    return done


DAEMON = ("treadguard", PASSWORDS["treadguard"])


async def _harm_then_doctor(
    rig: Rig,  # noqa: F811
    topic: str,
    writer: tuple[str, str] | None,
    at: int,
) -> tuple[int, dict[str, list[str]], str]:
    """The harm shown on the real broker first (``writer``'s message on ``topic``, published
    at port ``at``, reaches the daemon's account), then the real doctor: its exit code, its
    verdicts by check, and what it printed."""
    assert await _reaches(rig.broker.port, topic, DAEMON, writer, at), f"{topic}: not reached"
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root", "--json")
    return done.code, _verdicts(done.out), done.out[-3000:]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "rest",
    [
        "in 1",
        "IN 1",
        "Both 1",
        # Mosquitto takes a word that begins with # after the direction as the start of a
        # comment: no local prefix here, whatever the comment's words look like.
        "both 1 # keep the clinic HQ dashboard in sync",
        "in 2 #x hq/",
    ],
)
async def test_a_bridge_that_brings_commands_in_is_not_passed(
    rig: Rig,  # noqa: F811
    rest: str,
) -> None:
    """A `connection` bridge in the broker's configuration (a clinic's HQ broker, here one
    that lets anyone in) with `topic treadmill/# in`: Mosquitto never checks a bridge's
    incoming messages against the ACL, so anyone on the far broker commands the belt. It
    reads the direction without regard to case (strcasecmp)."""
    (rig.tmp / "hq").mkdir()
    hq = Broker(rig.tmp / "hq")
    hq.start()
    try:
        _broker_anew(
            rig,
            auth_lines(rig.tmp)
            + f"connection clinic-hq\naddress 127.0.0.1:{hq.port}\n"
            + f"topic treadmill/# {rest}\n",
        )
        code, verdicts, out = await _harm_then_doctor(
            rig, f"treadmill/{SENSOR_TM}/cmd", None, hq.port
        )
    finally:
        hq.stop()
    assert code == 1, (verdicts, out)
    assert "FAIL" in verdicts["broker config"] + verdicts["ACL file"], verdicts


@pytest.mark.asyncio
async def test_a_bridge_removed_from_the_files_but_still_running_is_not_passed(
    rig: Rig,  # noqa: F811
) -> None:
    """A bridge's file in an include_dir, the broker started with it, the file then removed:
    the running broker still brings the commands in, while the files judged hold no bridge.
    Its folder changed after the broker started: the doctor cannot pass what it runs."""
    (rig.tmp / "hq").mkdir()
    hq = Broker(rig.tmp / "hq")
    hq.start()
    conf_d = rig.tmp / "conf.d"
    conf_d.mkdir()
    bridge = conf_d / "hq-bridge.conf"
    bridge.write_text(
        f"connection clinic-hq\naddress 127.0.0.1:{hq.port}\ntopic treadmill/# in 1\n"
    )
    try:
        _broker_anew(rig, auth_lines(rig.tmp) + f"include_dir {conf_d}\n")
        daemon_cmd = f"treadmill/{SENSOR_TM}/cmd"
        assert await _reaches(rig.broker.port, daemon_cmd, DAEMON, None, hq.port)  # bridged
        bridge.unlink()
        code, verdicts, out = await _harm_then_doctor(rig, daemon_cmd, None, hq.port)
    finally:
        hq.stop()
    assert code == 4, (verdicts, out)  # not passed: not checked
    assert "TODO" in verdicts["broker config"], verdicts
    assert f"{conf_d} last changed" in out


def _dynsec_admin_writes_everything(path: Path) -> Path:
    """A dynamic-security plugin's file (mosquitto_ctrl dynsec init) whose admin account, in
    no password file, may publish on every topic."""
    subprocess.run(
        ["mosquitto_ctrl", "dynsec", "init", str(path), "admin", "admin-secret"],
        check=True,
        capture_output=True,
    )
    state = json.loads(path.read_text())
    for role in state["roles"]:
        role.setdefault("acls", []).append(
            {"acltype": "publishClientSend", "topic": "#", "priority": 0, "allow": True}
        )
    path.write_text(json.dumps(state))
    return path


@pytest.mark.parametrize(
    "setting",
    [
        # A bridge only out, back into this broker, under the tablet's account: what the
        # dashboard may write on its query topic arrives as the treadmill's commands.
        "loop",
        # A security plugin with accounts and rights of its own, past the password file and
        # the ACL.
        "plugin",
    ],
)
@pytest.mark.asyncio
async def test_a_setting_the_doctor_does_not_judge_is_not_passed(
    rig: Rig,  # noqa: F811
    setting: str,
) -> None:
    port = free_ports(1)[0]
    cmd = f"treadmill/{SENSOR_TM}/cmd"
    if setting == "loop":
        extra = (
            f"connection loop\naddress 127.0.0.1:{port}\nremote_username tablet\n"
            f"remote_password {PASSWORDS['tablet']}\n"
            f'topic "" out 1 treadmill/{SENSOR_TM}/query/dashboard {cmd}\n'
        )
        writer = ("dashboard", PASSWORDS["dashboard"])
        published_on = f"treadmill/{SENSOR_TM}/query/dashboard"
    else:
        dynsec = _dynsec_admin_writes_everything(rig.tmp / "dynsec.json")
        extra = f"plugin {DYNSEC_PLUGIN}\nplugin_opt_config_file {dynsec}\n"
        writer, published_on = ("admin", "admin-secret"), None
    rig.broker.stop()
    rig.broker = Broker(rig.tmp, auth_lines(rig.tmp) + extra, port=port)
    rig.broker.start()
    assert await _reaches(port, cmd, DAEMON, writer, port, published_on), "no harm shown"
    done = await _broker_config_failed(rig)
    assert "a setting the doctor does not judge" in done.out


@pytest.mark.asyncio
async def test_a_broker_serving_a_folder_over_http_is_not_passed(
    rig: Rig,  # noqa: F811
) -> None:
    """http_dir on a WebSockets listener serves every file of its folder, the password file
    when it is there, to anyone who reaches the listener: its hashes, to be cracked at
    leisure. A board needs none (nginx serves the page): not passed."""
    rig.broker.stop()
    rig.broker = Broker(rig.tmp, auth_lines(rig.tmp), http_dir=rig.tmp)
    rig.broker.start()
    url = f"http://127.0.0.1:{rig.broker.ws_port}/passwd"

    def fetched() -> bytes:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return bytes(answer.read())

    assert b"treadguard:" in await asyncio.to_thread(fetched), "no harm shown"
    done = await _broker_config_failed(rig)
    assert "http_dir" in done.out


async def _dashboard_commands_and_broker_config_unchecked(rig: Rig) -> None:  # noqa: F811
    """The dashboard's account commands the treadmill through the rig's broker, and the real
    doctor does not pass the board: its broker config check is TODO (exit 4)."""
    code, verdicts, out = await _harm_then_doctor(
        rig, f"treadmill/{SENSOR_TM}/cmd", ("dashboard", PASSWORDS["dashboard"]), rig.broker.port
    )
    assert code == 4, (verdicts, out)  # not passed: not checked
    assert "TODO" in verdicts["broker config"], verdicts


async def _past_the_broker_s_start(rig: Rig) -> None:  # noqa: F811
    """Once the rig's broker started 0.2 s ago or more. The doctor tells a file changed after
    the broker started by the file's change time, stamped from the kernel's coarse clock (a
    few milliseconds behind), against the start, known to a clock tick: a change within
    a tick before the start is taken as after it (changed_after_start). A test's change, made
    in the milliseconds after the broker answers, waits as a technician's would; what it waits
    for is the clock itself passing a point, not another process."""
    assert rig.broker.proc is not None
    started = _process_started(rig.broker.proc.pid)
    assert started is not None
    await asyncio.sleep(max(0.0, started + 0.2 - time.time()))


@pytest.mark.asyncio
async def test_a_file_behind_a_folder_link_pointed_elsewhere_and_back_is_not_passed(
    rig: Rig,  # noqa: F811
) -> None:
    """The ACL read through a folder link: the broker started with the link on a lenient
    release (the dashboard commands), the link then pointed back at the strict one. The
    files judged are strict; the broker runs the lenient ACL. The link changed after the
    broker started: not passed."""
    for name, extra in (
        ("strict", ""),
        ("lenient", "user dashboard\ntopic write treadmill/+/cmd\n"),
    ):
        (rig.tmp / name).mkdir()
        (rig.tmp / name / "acl").write_text(ACL.read_text() + "\n" + extra)
    current = rig.tmp / "current"
    current.symlink_to(rig.tmp / "lenient")
    _broker_anew(rig, auth_lines(rig.tmp).replace(str(ACL), str(current / "acl")))
    await _past_the_broker_s_start(rig)
    current.unlink()
    current.symlink_to(rig.tmp / "strict")
    await _dashboard_commands_and_broker_config_unchecked(rig)


@pytest.mark.asyncio
async def test_a_folder_of_the_broker_s_files_swapped_for_a_backup_is_not_passed(
    rig: Rig,  # noqa: F811
) -> None:
    """The installer's layout: the password file and the ACL alone in a folder of their own.
    A lenient copy was in place when the broker started (the dashboard commands); the folder
    was then moved aside and a backup of the strict one moved back, without a restart. Each
    file's change time is older than the broker; the folder's is not: not passed."""
    for name, extra in (
        ("strict", ""),
        ("lenient", "user dashboard\ntopic write treadmill/+/cmd\n"),
    ):
        (rig.tmp / name).mkdir()
        (rig.tmp / name / "acl").write_text(ACL.read_text() + "\n" + extra)
        password_file(rig.tmp / name / "passwd", PASSWORDS)
    folder = rig.tmp / "treadguard"
    (rig.tmp / "lenient").rename(folder)
    auth = auth_lines(rig.tmp).replace(str(ACL), str(folder / "acl"))
    _broker_anew(rig, auth.replace(str(rig.tmp / "passwd"), str(folder / "passwd")))
    await _past_the_broker_s_start(rig)
    folder.rename(rig.tmp / "lenient")
    (rig.tmp / "strict").rename(folder)
    await _dashboard_commands_and_broker_config_unchecked(rig)


@pytest.mark.asyncio
async def test_an_acl_put_in_force_by_a_reload_and_then_changed_back_is_not_passed(
    rig: Rig,  # noqa: F811
) -> None:
    """A line letting the dashboard command added to the ACL, put in force with a reload
    (SIGHUP), then taken out again without one: the file is strict, the broker lenient."""
    acl = rig.tmp / "acl"
    acl.write_text(ACL.read_text())
    _broker_anew(rig, auth_lines(rig.tmp).replace(str(ACL), str(acl)))
    acl.write_text(ACL.read_text() + "\nuser dashboard\ntopic write treadmill/+/cmd\n")
    assert rig.broker.proc is not None
    rig.broker.proc.send_signal(signal.SIGHUP)
    dashboard = ("dashboard", PASSWORDS["dashboard"])
    cmd = f"treadmill/{SENSOR_TM}/cmd"
    assert await _reaches(rig.broker.port, cmd, DAEMON, dashboard, rig.broker.port)
    acl.write_text(ACL.read_text())
    code, verdicts, out = await _harm_then_doctor(rig, cmd, dashboard, rig.broker.port)
    assert code == 4, (verdicts, out)
    assert "TODO" in verdicts["broker config"], verdicts


@pytest.mark.asyncio
async def test_an_acl_read_while_per_listener_settings_was_on_is_not_passed(
    rig: Rig,  # noqa: F811
) -> None:
    """Mosquitto puts each security line where per_listener_settings points when it reads it:
    an acl_file read while it is true goes to the listener, and is out of force once it ends
    false. Every account then writes everywhere, here the dashboard on the commands."""
    auth = auth_lines(rig.tmp)
    acl = f"acl_file {ACL}\n"
    assert acl in auth
    switched = auth.replace(acl, "").replace(
        "per_listener_settings false\n",
        f"per_listener_settings true\n{acl}per_listener_settings false\n",
    )
    _broker_anew(rig, switched)
    code, verdicts, out = await _harm_then_doctor(
        rig, f"treadmill/{SENSOR_TM}/cmd", ("dashboard", PASSWORDS["dashboard"]), rig.broker.port
    )
    assert code == 1, (verdicts, out)
    assert "FAIL" in verdicts["broker config"], verdicts


def _knocked_off_now(daemon_port: int, other_port: int) -> bool:
    """Whether the daemon's connection (its account, client id treadguard, at
    ``daemon_port``) is dropped by the broker, within 5 s, when the dashboard logs in at
    ``other_port`` sending the client id treadguard. Plain paho clients, each step bounded."""
    dropped, up = threading.Event(), threading.Event()
    daemon = paho.Client(CallbackAPIVersion.VERSION2, client_id="treadguard")
    daemon.username_pw_set(*DAEMON)
    daemon.on_connect = lambda *_: up.set()
    daemon.on_disconnect = lambda *_: dropped.set()
    daemon.connect("127.0.0.1", daemon_port)
    daemon.loop_start()
    dashboard = paho.Client(CallbackAPIVersion.VERSION2, client_id="treadguard")
    dashboard.username_pw_set("dashboard", PASSWORDS["dashboard"])
    try:
        assert up.wait(5.0), "the daemon's account did not connect"
        dashboard.connect("127.0.0.1", other_port)
        dashboard.loop_start()
        return dropped.wait(5.0)
    finally:
        daemon.loop_stop()
        dashboard.disconnect()
        dashboard.loop_stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("setting", ["", "use_username_as_clientid false\n"])
async def test_a_listener_that_keeps_a_client_s_own_id_is_not_passed(
    rig: Rig,  # noqa: F811
    setting: str,
) -> None:
    """use_username_as_clientid is a listener's own setting in Mosquitto 2.0.11 (src/conf.c:
    cur_listener), and a client id is one namespace across the listeners: a second loopback
    listener without it lets the dashboard log in there as client id treadguard, and the
    broker drops the daemon's connection (its Will says offline, the session ends in an
    emergency stop). The doctor fails it, naming the listener."""
    second = free_ports(1)[0]
    _broker_anew(rig, auth_lines(rig.tmp) + f"listener {second} 127.0.0.1\n{setting}")
    assert await asyncio.to_thread(_knocked_off_now, rig.broker.port, second)
    done = await _broker_config_failed(rig)
    assert f"listener {second} 127.0.0.1 ({rig.broker.conf}, line" in done.out, done.out[-3000:]
    assert "use_username_as_clientid" in done.out


@pytest.mark.asyncio
async def test_an_include_dir_is_the_folder_mosquitto_reads_blanks_and_all(
    rig: Rig,  # noqa: F811
) -> None:
    """Mosquitto 2.0.11 takes an include_dir's folder as the rest of the line, a blank at its
    end included (strtok_r with no separator): 'include_dir DIR/conf.d ' reads the folder
    'conf.d ', not 'conf.d'. Here that folder opens a listener that keeps a client's own id,
    where the dashboard knocks the daemon off; the doctor judges the folder Mosquitto reads."""
    second = free_ports(1)[0]
    (rig.tmp / "conf.d").mkdir()
    (rig.tmp / "conf.d" / "local.conf").write_text("set_tcp_nodelay true\n")
    (rig.tmp / "conf.d ").mkdir()
    (rig.tmp / "conf.d " / "local.conf").write_text(f"listener {second} 127.0.0.1\n")
    _broker_anew(rig, auth_lines(rig.tmp) + f"include_dir {rig.tmp}/conf.d \n")
    assert await asyncio.to_thread(_knocked_off_now, rig.broker.port, second)
    done = await _broker_config_failed(rig)
    assert f"({rig.tmp}/conf.d /local.conf, line 1) has no use_username_as_clientid" in done.out


@pytest.mark.asyncio
async def test_a_file_name_that_is_not_utf8_is_judged_and_named(
    rig: Rig,  # noqa: F811
) -> None:
    """A file in an include_dir whose name is not UTF-8 (a Latin-1 'café.conf'): Mosquitto
    reads it like any other (here: a listener that keeps a client's own id); the doctor judges
    it and names it, its odd byte shown as \\xe9, in words, in its text and in its JSON."""
    second = free_ports(1)[0]
    folder = rig.tmp / "conf.d"
    folder.mkdir()
    (folder / os.fsdecode(b"caf\xe9.conf")).write_text(f"listener {second} 127.0.0.1\n")
    _broker_anew(rig, auth_lines(rig.tmp) + f"include_dir {folder}\n")
    assert await asyncio.to_thread(_knocked_off_now, rig.broker.port, second)
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        as_json = await doctor(rig, rig.config(), "--service-user", "root", "--json")
        as_text = await doctor(rig, rig.config(), "--service-user", "root")
    verdicts = _verdicts(as_json.out)
    assert as_json.code == 1, (verdicts, as_json.out[-3000:])
    assert "FAIL" in verdicts["broker config"], verdicts
    for out in (as_json.out, as_text.out):
        assert "the check itself failed" not in out, out[-3000:]
        assert "Traceback" not in out, out[-3000:]
    named = f"({folder}/caf\\xe9.conf, line 1) has no use_username_as_clientid"
    assert named in as_text.out, as_text.out[-3000:]


class _BrokerSeeing(Broker):
    """A broker that finds ``shown`` at ``path``: started in a mount namespace of its own with
    ``shown`` bound over ``path`` (a systemd drop-in's BindReadOnlyPaths does the same)."""

    def __init__(self, workdir: Path, extra: str, *, shown: Path, path: Path) -> None:
        super().__init__(workdir, extra)
        self.shown, self.path = shown, path

    def start(self) -> None:
        script = 'mount --bind "$1" "$2" && exec "$3" -c "$4"'
        argv = [str(self.shown), str(self.path), MOSQUITTO, str(self.conf)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_listening(self.proc, [self.port], lambda: f"mosquitto exited: {self.log.read_text()}")


@pytest.mark.asyncio
async def test_a_broker_that_finds_other_files_at_the_paths_judged_is_not_passed(
    rig: Rig,  # noqa: F811
) -> None:
    """The broker's files, read in the doctor's mount namespace, are not what a broker in a
    namespace of its own reads at the same paths: here an ACL bound over the shipped one that
    lets the dashboard command. The doctor judges what the broker's process finds."""
    need("root and unshare (util-linux) for a mount namespace", os.geteuid() == 0)
    lenient = rig.tmp / "acl.try"
    lenient.write_text(ACL.read_text() + "\nuser dashboard\ntopic write treadmill/+/cmd\n")
    rig.broker.stop()
    rig.broker = _BrokerSeeing(rig.tmp, auth_lines(rig.tmp), shown=lenient, path=ACL)
    rig.broker.start()
    code, verdicts, out = await _harm_then_doctor(
        rig, f"treadmill/{SENSOR_TM}/cmd", ("dashboard", PASSWORDS["dashboard"]), rig.broker.port
    )
    assert code == 1, (verdicts, out)
    assert "FAIL" in verdicts["broker config"], verdicts
    assert str(ACL) in out


def _open_broker(conf: Path, host: str, port: int) -> subprocess.Popen[bytes]:
    """A Mosquitto that lets anyone do anything, on ``host``:``port``, listening."""
    conf.write_text(f"listener {port} {host}\nallow_anonymous true\n")
    time.sleep(FILES_SETTLE_S)  # its file older than its start, past the doctor's tick
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10.0
    while True:  # bounded: until it accepts a connection, ends, or the deadline
        assert proc.poll() is None, "the second mosquitto exited"
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.02)


@pytest.mark.asyncio
async def test_two_processes_on_the_broker_s_port_are_not_passed(
    rig: Rig,  # noqa: F811
) -> None:
    """A second broker on another loopback address and the same port, without the ACL: the
    daemon's [mqtt] host may be the one that lets every account command. The doctor cannot
    tell which one a client reaches, and does not pass the board."""
    other = _open_broker(rig.tmp / "open.conf", "127.0.0.2", rig.broker.port)
    try:
        rig.drive = 'kind = "simulator"'
        async with publishing(Sensors(rig.broker.port)):
            done = await doctor(rig, rig.config(), "--service-user", "root", "--json")
    finally:
        other.kill()
        other.wait(timeout=10)
    verdicts = _verdicts(done.out)
    assert done.code == 1, (verdicts, done.out[-3000:])
    assert "FAIL" in verdicts["broker config"], verdicts


@pytest.mark.parametrize("host", ["192.0.2.1", "no-such-broker.invalid"])
def test_a_broker_on_another_machine_is_not_judged_by_this_board_s(
    rig: Rig,  # noqa: F811
    host: str,
) -> None:
    """[mqtt] host names another machine (or a name the board cannot resolve), and a good
    broker listens here on the same port: this board's files and sockets say nothing of the
    broker the daemon uses, which may let every account command. The doctor passes neither its
    configuration nor its listeners by this board's."""
    options = DoctorOptions(mosquitto_conf=rig.broker.conf)
    rig.drive = 'kind = "simulator"'

    def judged(config: Path) -> dict[str, list[Verdict]]:
        loaded = load_config(config)
        found: dict[str, list[Verdict]] = {}
        for check in check_broker_files(loaded, broker_settings(loaded), options):
            found.setdefault(check.name, []).append(check.verdict)
        return found

    here = judged(rig.config())
    assert set(here["broker config"]) == set(here["listeners"]) == {Verdict.OK}, here
    config = rig.config()
    config.write_text(
        config.read_text().replace('host = "127.0.0.1"', f'host = "{host}"'), encoding="utf-8"
    )
    assert judged(config) == {"broker config": [Verdict.TODO], "listeners": [Verdict.TODO]}


def test_include_dir_files_are_read_in_mosquitto_s_order(tmp_path: Path) -> None:
    """Mosquitto 2.0.11 sorts an include_dir's files case-insensitively (its log: 'Loading
    config file .../treadguard.conf' before '.../Zlocal.conf'); the doctor sorts by code
    point (Zlocal.conf first), so 'the last line decides' picks another line than Mosquitto."""
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "treadguard.conf").write_text("allow_anonymous false\n")
    (conf_d / "Zlocal.conf").write_text("allow_anonymous true\n")
    main = tmp_path / "mosquitto.conf"
    main.write_text(f"include_dir {conf_d}\n")
    conf = read_mosquitto_conf(main)
    assert [p.name for p, _ in conf.files[1:]] == ["treadguard.conf", "Zlocal.conf"]
    decided = conf.last("allow_anonymous")
    assert decided is not None
    assert decided.value == "true"


NGINX_CASES = {
    # The location in a snippet the site includes (Debian's /etc/nginx/snippets).
    "include": (
        "/broker",
        None,
        {
            "sites-enabled/treadguard": "server {\n  listen 80;\n  include snippets/mqtt.conf;\n"
            "  location / { return 301 https://$host$request_uri; }\n}\n",
            "snippets/mqtt.conf": "location /broker { proxy_pass http://127.0.0.1:9001; }\n",
        },
    ),
    # A regex location.
    "regex": (
        "/broker",
        None,
        {
            "sites-enabled/treadguard": "server {\n  listen 80;\n"
            "  location ~ ^/broker$ { proxy_pass http://127.0.0.1:9001; }\n}\n",
        },
    ),
    # The 17th literal location of the site.
    "seventeenth": (
        "/broker",
        None,
        {
            "sites-enabled/treadguard": "server {\n  listen 80;\n"
            + "".join(f"  location /static{n} {{ }}\n" for n in range(16))
            + "  location /broker { proxy_pass http://127.0.0.1:9001; }\n}\n",
        },
    ),
    # A name-based server on port 80 (the clinic's DNS name), at /mqtt itself.
    "server_name": (
        "/mqtt",
        "treadmill.clinic.example",
        {
            "sites-enabled/treadguard": "server {\n  listen 80;\n"
            "  server_name treadmill.clinic.example;\n"
            "  location /mqtt { proxy_pass http://127.0.0.1:9001; }\n}\n",
        },
    ),
    # A server in nginx.conf itself, beside Debian's includes.
    "main_conf": (
        "/broker",
        None,
        {
            "nginx.conf": "events {}\nhttp {\n  include /etc/nginx/mime.types;\n"
            "  include /etc/nginx/conf.d/*.conf;\n  include /etc/nginx/sites-enabled/*;\n"
            "  server {\n    listen 80;\n"
            "    location /broker { proxy_pass http://127.0.0.1:9001; }\n  }\n}\n",
        },
    ),
    # Locations that answer clients by their address or credentials: the board, asking its
    # own address, is refused (the proxy answers only another Host, as nginx answers only
    # other clients), where a client elsewhere gets through.
    "allow": (
        "/lan-mqtt",
        "client.elsewhere.invalid",
        {
            "sites-enabled/treadguard": "server {\n  listen 80;\n  location /lan-mqtt {\n"
            "    allow 10.0.0.0/8;\n    deny all;\n    proxy_pass http://127.0.0.1:9001;\n"
            "  }\n}\n",
        },
    ),
    "if": (
        "/lan-mqtt",
        "client.elsewhere.invalid",
        {
            "sites-enabled/treadguard": "server {\n  listen 80;\n  location /lan-mqtt {\n"
            "    if ($remote_addr = 127.0.0.1) { return 403; }\n"
            "    proxy_pass http://127.0.0.1:9001;\n  }\n}\n",
        },
    ),
    "auth": (
        "/lan-mqtt",
        "client.elsewhere.invalid",
        {
            "sites-enabled/treadguard": "server {\n  listen 80;\n  location /lan-mqtt {\n"
            "    auth_basic clinic;\n    auth_basic_user_file /etc/nginx/clinic.htpasswd;\n"
            "    proxy_pass http://127.0.0.1:9001;\n  }\n}\n",
        },
    ),
    # The same for every location of a server, said at the server's level.
    "server_allow": (
        "/lan-mqtt",
        "client.elsewhere.invalid",
        {
            "sites-enabled/treadguard": "server {\n  listen 80;\n  allow 10.0.0.0/8;\n"
            "  deny all;\n  location /lan-mqtt { proxy_pass http://127.0.0.1:9001; }\n}\n",
        },
    ),
    # Where the proxy passes on chosen by the client's address: the board's own goes nowhere.
    "geo": (
        "/lan-mqtt",
        "client.elsewhere.invalid",
        {
            "sites-enabled/treadguard": "geo $mqtt_up {\n  default 127.0.0.1:9001;\n"
            "  192.0.2.0/24 127.0.0.1:1;\n}\nserver {\n  listen 80;\n"
            "  location /lan-mqtt { proxy_pass http://$mqtt_up; }\n}\n",
        },
    ),
    "map": (
        "/lan-mqtt",
        "client.elsewhere.invalid",
        {
            "sites-enabled/treadguard": "server {\n  listen 80;\n  location /lan-mqtt {\n"
            "    proxy_pass http://$upstream_by_client;\n  }\n}\n",
            "conf.d/by-client.conf": "map $remote_addr $upstream_by_client {\n"
            "  default 127.0.0.1:9001;\n  192.0.2.1 127.0.0.1:1;\n}\n",
        },
    ),
    # A quoted location with a blank in its path.
    "quoted": (
        "/clinic broker",
        None,
        {
            "sites-enabled/treadguard": "server {\n  listen 80;\n"
            '  location "/clinic broker" { proxy_pass http://127.0.0.1:9001; }\n}\n',
        },
    ),
    # A listener that answers only a client sending a PROXY header first: the board's probe
    # sends none (nginx answers it 400), anyone on the network may.
    "proxy_protocol": (
        "/mqtt",
        "client.elsewhere.invalid",
        {
            "sites-enabled/treadguard": "server {\n  listen 80 proxy_protocol;\n"
            "  location /mqtt { proxy_pass http://127.0.0.1:9001; }\n}\n",
        },
    ),
    # Every path not asked passed on to a named location: / serves a file, /mqtt redirects.
    "named": (
        "/anything-else",
        None,
        {
            "sites-enabled/treadguard": "server {\n  listen 80;\n"
            "  location = /mqtt { return 301 https://$host$request_uri; }\n"
            "  location / { try_files $uri $uri/index.html @broker; }\n"
            "  location @broker { proxy_pass http://127.0.0.1:9001; }\n}\n",
        },
    ),
    # An upstream choosing its server by the client's address: the board's own lands on a
    # dead one.
    "upstream": (
        "/lan-mqtt",
        "client.elsewhere.invalid",
        {
            "sites-enabled/treadguard": "upstream broker {\n  hash $remote_addr;\n"
            "  server 127.0.0.1:1;\n  server 127.0.0.1:9001;\n}\n"
            "server {\n  listen 80;\n  location /lan-mqtt { proxy_pass http://broker; }\n}\n",
        },
    ),
    # A server by the name "localhost" beside the default server on the same port: a client
    # sending that Host (or none, to a server without a name) reaches it; the probe, asking by
    # the board's address, gets the default server.
    "localhost": (
        "/mqtt",
        "localhost",
        {
            "sites-enabled/treadguard": "server {\n  listen 80 default_server;\n"
            "  server_name _;\n  return 404;\n}\nserver {\n  listen 80;\n"
            "  server_name localhost;\n"
            "  location /mqtt { proxy_pass http://127.0.0.1:9001; }\n}\n",
        },
    ),
    # A server on one of the board's addresses beside a default server on all of them: one
    # socket, the server chosen by the address dialled.
    "second_address": (
        "/mqtt",
        "client.elsewhere.invalid",
        {
            "sites-enabled/treadguard": "server {\n  listen 80 default_server;\n"
            "  server_name _;\n  return 404;\n}\nserver {\n  listen 198.51.100.77:80;\n"
            "  server_name _;\n"
            "  location /mqtt { proxy_pass http://127.0.0.1:9001; }\n}\n",
        },
    ),
    # A server in a file Debian's nginx.conf includes for another purpose (the MIME types).
    "mime_types": (
        "/clinic-ws",
        None,
        {
            "mime.types": "types {\n  text/html html;\n}\nserver {\n  listen 80;\n"
            "  location /clinic-ws { proxy_pass http://127.0.0.1:9001; }\n}\n",
        },
    ),
}
# What the check must name, for the cases it cannot ask.
NGINX_NAMED = {
    "localhost": "2 servers listen on port 80",
    "second_address": "2 servers listen on port 80",
    "proxy_protocol": "listens with proxy_protocol",
    "named": "named location (location @broker)",
    "upstream": "upstream broker, which the doctor does not judge",
    "server_allow": "outside its locations (allow, deny)",
    "allow": "/lan-mqtt",
    "if": "/lan-mqtt",
    "auth": "/lan-mqtt",
    "quoted": "/clinic broker",
}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", sorted(NGINX_CASES))
async def test_plain_websockets_nginx_passes_on_are_not_passed(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
    case: str,
) -> None:
    """Plain WebSockets MQTT reachable from the network on port 80 at a path (or name) the
    probe does not ask: the network MQTT check must not say ok ("no MQTT in the clear")."""
    need("an IPv4 address other than loopback", any(":" not in a for a in network_addresses()))
    path, host, files = NGINX_CASES[case]
    _broker_anew(rig, auth_lines(rig.tmp), websockets=True)
    assert rig.broker.ws_port is not None
    nginx = tmp_path / "nginx"
    for name, text in files.items():
        (nginx / name).parent.mkdir(parents=True, exist_ok=True)
        (nginx / name).write_text(text)
    async with path_proxy(rig.broker.ws_port, path, host) as port:
        checks = await check_network(3.0, nginx=nginx)
    ours = [c for c in checks if f":{port}" in c.detail]
    assert ours, (case, checks)
    assert all(c.verdict != Verdict.OK for c in ours), (case, checks)
    assert not [c for c in checks if c.verdict == Verdict.OK], (case, checks)
    if case in NGINX_NAMED:
        assert NGINX_NAMED[case] in " ".join(c.detail for c in checks), (case, checks)


def test_a_board_s_nginx_files_hold_nothing_the_probe_does_not_judge() -> None:
    """The shipped site, and Debian's nginx.conf and default site where nginx is installed,
    are read whole by the network probe: none makes the check TODO on a board."""
    files = [ROOT / "config" / "nginx" / "treadguard.conf"] + [
        p
        for p in (Path("/etc/nginx/nginx.conf"), Path("/etc/nginx/sites-available/default"))
        if p.exists()
    ]
    for path in files:
        assert unjudged_directives(path.read_text()) == [], path


def test_directives_outside_what_the_probe_judges_are_named() -> None:
    """Whatever else a configuration says, its words kept, each named once; a map's or
    MIME types' entries are not taken for directives."""
    text = (
        "types { text/html html; }\nmap $a $b { default 1; 10.0.0.1 2; }\n"
        "server { listen 8080 ssl http2 proxy_protocol; rewrite ^/x$ /mqtt last;\n"
        '  error_page 404 = "@b";\n  location /x { mirror /m; } }\n'
        "stream { server { listen 1884; proxy_pass 127.0.0.1:1883; } }"
    )
    assert unjudged_directives(text) == [
        "listens with proxy_protocol (listen 8080 ssl http2 proxy_protocol)",
        "has rewrite ^/x$ /mqtt last, which the doctor does not judge",
        'has error_page 404 = "@b", which the doctor does not judge',
        "has mirror /m, which the doctor does not judge",
        "has stream, which the doctor does not judge",
    ]


def _ws_site(port: int, ws_port: int, *, passed_on: bool) -> str:
    location = (
        f"  location /ws {{\n    proxy_pass http://127.0.0.1:{ws_port};\n"
        "    proxy_http_version 1.1;\n    proxy_set_header Upgrade $http_upgrade;\n"
        '    proxy_set_header Connection "upgrade";\n  }\n'
    )
    return (
        f"server {{\n  listen {port};\n"
        "  location /mqtt {\n    return 301 https://$host$request_uri;\n  }\n"
        + (location if passed_on else "")
        + "}\n"
    )


@pytest.mark.asyncio
@pytest.mark.usefixtures("board_network")  # nginx listening beyond loopback
async def test_an_nginx_running_another_configuration_is_not_passed(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
) -> None:
    """An nginx started with a configuration of its own (a technician's trial, nginx -c FILE)
    passes /ws on to the broker's plain WebSockets, from the network. The probe asks the
    paths of the configuration it reads, which names no /ws: not passed, naming the nginx."""
    need("Debian's nginx", have_nginx())
    need("an IPv4 address other than loopback", any(":" not in a for a in network_addresses()))
    _broker_anew(rig, auth_lines(rig.tmp), websockets=True)
    assert rig.broker.ws_port is not None
    (port,) = free_ports(1)
    trial = tmp_path / "trial"
    proc = nginx_on(trial, _ws_site(port, rig.broker.ws_port, passed_on=True))
    installed = tmp_path / "installed"
    (installed / "sites-enabled").mkdir(parents=True)
    (installed / "sites-enabled" / "treadguard").write_text(
        "server {\n  listen 80;\n  server_name _;\n  return 301 https://$host$request_uri;\n}\n"
    )
    try:
        wait_listening(proc, [port], lambda: (trial / "error.log").read_text())
        found = await check_network(3.0, nginx=installed)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [c.verdict for c in found] == [Verdict.TODO], found
    assert f"(pid {proc.pid}) runs {trial / 'nginx.conf'}" in found[0].detail, found


@pytest.mark.asyncio
@pytest.mark.usefixtures("board_network")  # nginx listening beyond loopback
async def test_an_nginx_location_edited_out_but_still_served_is_not_passed(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
) -> None:
    """nginx passes /ws on to the broker's plain WebSockets, from the network; the location is
    edited out of the site without a reload. nginx still serves it, and the probe, asking
    the paths the files name, would not: the network check is not all green until nginx has
    loaded its files again."""
    need("Debian's nginx", have_nginx())
    need("an IPv4 address other than loopback", any(":" not in a for a in network_addresses()))
    _broker_anew(rig, auth_lines(rig.tmp), websockets=True)
    assert rig.broker.ws_port is not None
    (port,) = free_ports(1)
    folder = tmp_path / "nginx"
    proc = nginx_on(folder, _ws_site(port, rig.broker.ws_port, passed_on=True))
    try:
        wait_listening(proc, [port], lambda: (folder / "error.log").read_text())
        found = await check_network(3.0, nginx=folder)
        assert [c.verdict for c in found if f":{port}" in c.detail] == [Verdict.FAIL], found
        site = folder / "sites-enabled" / "treadguard"
        site.write_text(_ws_site(port, rig.broker.ws_port, passed_on=False))
        found = await check_network(3.0, nginx=folder)
        assert [c.verdict for c in found] == [Verdict.TODO], found
        assert f"before {site} changed" in found[0].detail, found
        assert "includes" not in found[0].detail, found  # nothing else left unasked
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.asyncio
async def test_a_file_named_dot_conf_is_not_read_by_mosquitto(rig: Rig) -> None:  # noqa: F811
    """Mosquitto 2.0.11 takes an include_dir's files whose names are longer than ".conf" and
    end in it: a file named ".conf" is not read (its log names treadguard.conf only). The
    doctor reads it. Its acl_file there, none in the snippet: the broker runs without an ACL
    (the dashboard commands), and the doctor judges the ACL it names as in force."""
    from tests.test_doctor import _delivered

    rig.broker.stop()
    broker = Broker(rig.tmp, auth_lines(rig.tmp).replace(f"acl_file {ACL}\n", ""))
    conf_d = rig.tmp / "conf.d"
    conf_d.mkdir()
    (conf_d / "treadguard.conf").write_text(broker.conf.read_text())
    (conf_d / ".conf").write_text(f"acl_file {ACL}\n")
    broker.conf.write_text(f"include_dir {conf_d}\n")
    broker.start()
    rig.broker = broker
    assert await _delivered(rig, "dashboard"), "the broker ran with an ACL after all"
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root", "--json")
    verdicts = _verdicts(done.out)
    assert done.code == 1, (verdicts, done.out[-3000:])
    assert verdicts["broker config"] == ["FAIL"], done.out


def test_a_tls_listener_on_a_link_local_address_binds_its_socket() -> None:
    """`listener 8883 fe80::...%eth0` (Mosquitto 2.0.11 takes it; ss shows
    [fe80::...]%eth0:8883): its socket's address in /proc/net/tcp6 has no scope, and the
    listener must still be found binding it (else a TLS listener is failed as plain)."""
    from treadguard.controller.broker_config import ConfLine, Listener

    line = ConfLine(Path("snippet"), 1, "listener", "8883 fe80::fc:ff:fe00:1%eth0")
    listener = Listener(8883, "fe80::fc:ff:fe00:1%eth0", line, {"certfile": "c", "keyfile": "k"})
    assert listener.binds("fe80::fc:ff:fe00:1")


@pytest.mark.asyncio
async def test_the_configuration_judged_is_the_one_the_broker_runs(rig: Rig) -> None:  # noqa: F811
    """The broker process listening on [mqtt] port was started with `-c A` (a drop-in's
    ExecStart, a second admin's test configuration without an ACL: the dashboard commands);
    the doctor judges the file it is told or Debian's default (B, strict) and passes. The
    broker's own command line (/proc/PID/cmdline, which the listeners check already finds)
    names the file it runs."""
    from tests.test_doctor import _delivered

    strict = rig.broker.conf.read_text()
    _broker_anew(rig, auth_lines(rig.tmp).replace(f"acl_file {ACL}\n", ""))
    assert await _delivered(rig, "dashboard")
    other = rig.tmp / "debian-mosquitto.conf"
    other.write_text(strict)
    rig.drive = 'kind = "simulator"'
    env_conf = rig.broker.conf
    rig.broker.conf = other  # what the doctor is pointed at (its default on a board)
    try:
        async with publishing(Sensors(rig.broker.port)):
            done = await doctor(rig, rig.config(), "--service-user", "root", "--json")
    finally:
        rig.broker.conf = env_conf
    verdicts = _verdicts(done.out)
    assert done.code == 1, (verdicts, done.out[-3000:])


def _start_with(broker: Broker, files: list[Path]) -> None:
    """``broker`` started as ``mosquitto -c FILE -c FILE ...``."""
    time.sleep(FILES_SETTLE_S)  # its files older than its start, past the doctor's tick
    with broker.log.open("ab") as log:
        broker.proc = subprocess.Popen(
            [MOSQUITTO, *(a for f in files for a in ("-c", str(f)))],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_listening(broker.proc, [broker.port], broker.log.read_text)


@pytest.mark.asyncio
async def test_a_broker_started_with_two_configuration_files_runs_both(
    rig: Rig,  # noqa: F811
) -> None:
    """`mosquitto -c EXTRA -c JUDGED`: Mosquitto 2.0.11 reads every -c it is given (its log
    says 'Config loaded from JUDGED', yet EXTRA's bridge is there), so the file judged is not
    all it runs."""
    (rig.tmp / "hq").mkdir()
    hq = Broker(rig.tmp / "hq")
    hq.start()
    try:
        extra = rig.tmp / "extra.conf"
        rig.broker.stop()
        # Mosquitto reads the last -c twice: its `user` line (the tests run as root) would be
        # a duplicate there, so it goes in the first file.
        lines = rig.broker.conf.read_text().splitlines(keepends=True)
        judged = rig.tmp / "judged.conf"
        judged.write_text("".join(line for line in lines if not line.startswith("user ")))
        extra.write_text(
            f"connection clinic-hq\naddress 127.0.0.1:{hq.port}\ntopic treadmill/# in 1\n"
            + "".join(line for line in lines if line.startswith("user "))
        )
        rig.broker.conf = judged
        _start_with(rig.broker, [extra, judged])
        code, verdicts, out = await _harm_then_doctor(
            rig, f"treadmill/{SENSOR_TM}/cmd", None, hq.port
        )
    finally:
        hq.stop()
    assert code == 1, (verdicts, out)
    assert "FAIL" in verdicts["broker config"], verdicts


@pytest.mark.asyncio
@pytest.mark.parametrize("foreign", ["sensors-tm-02", f"sensors-{SENSOR_TM}-b"])
async def test_another_treadmill_s_sensor_account_may_not_write_this_one_s_readings(
    rig: Rig,  # noqa: F811
    foreign: str,
) -> None:
    """config/mosquitto/acl: "no '+' here, or one treadmill's sensor could speak for
    another's". Another treadmill's sensor account (tm-02's; or tm-01-b's, whose id begins
    with this one's and which is never a second device of tm-01: that is sensors-tm-01@NAME)
    with treadmill/+/sensors/# writes tm-01's fall reading on the real broker."""
    passwd = password_file(rig.tmp / "passwd-more", {**PASSWORDS, foreign: "foreign-secret"})
    acl = rig.tmp / "acl-foreign"
    acl.write_text(
        ACL.read_text(encoding="utf-8") + f"\nuser {foreign}\ntopic write treadmill/+/sensors/#\n",
        encoding="utf-8",
    )
    _broker_anew(
        rig,
        auth_lines(rig.tmp)
        .replace(f"acl_file {ACL}", f"acl_file {acl}")
        .replace(f"password_file {rig.tmp / 'passwd'}", f"password_file {passwd}"),
    )
    code, verdicts, out = await _harm_then_doctor(
        rig, f"treadmill/{SENSOR_TM}/sensors/fall", (foreign, "foreign-secret"), rig.broker.port
    )
    assert verdicts["ACL file"] != ["ok"], (verdicts, out)
    assert code == 1
