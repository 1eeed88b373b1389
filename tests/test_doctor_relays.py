"""Relays into the board's broker, found from the broker's side: a program on the board
holding a connection to the broker's ports that also listens, or talks beyond the board, lets
whoever reaches it act on the broker with the account it logged in with. Found by what it
does, never by its name: a copy of Mosquitto under another name is one. The parsing of the
kernel's socket tables and the judgement on stand-in text; then a real renamed Mosquitto
bridging into a real broker, its anonymous clients commanding the treadmill."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.mosquitto import (
    ACL,
    MOSQUITTO,
    MOSQUITTO_PASSWD,
    PASSWORDS,
    SENSOR_TM,
    auth_lines,
    free_ports,
    have_mosquitto,
    wait_listening,
)
from tests.nginx import NGINX, Nginx, have_nginx, started
from tests.pki import make_pki
from tests.test_doctor import (
    NOBODY,
    Rig,
    Sensors,
    _broker_anew,
    doctor,
    need,
    publishing,
    rig,  # noqa: F401 (the fixture)
    sim_device,
    without_root_s_powers,
)
from tests.test_doctor_broker_setups import _reaches_now
from treadguard.config.loading import load_config
from treadguard.controller.broker_config import process_sockets
from treadguard.controller.doctor import DoctorOptions, Verdict, check_broker_files
from treadguard.controller.doctor_relays import (
    ESTABLISHED,
    LISTEN,
    Net,
    Row,
    is_the_service,
    local_clients,
    parse_inet,
    parse_unix_listening,
    printable,
    serves,
)
from treadguard.controller.mqtt_settings import broker_settings

TCP_HEADER = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
)
TCP6_HEADER = (
    "  sl  local_address                         remote_address                        st "
    "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
)


def _tcp_line(local: str, remote: str, state: str, inode: int) -> str:
    return (
        f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000     0        0 "
        f"{inode} 1 0000000000000000 100 0 0 10 0\n"
    )


def test_the_kernel_s_socket_tables_are_read() -> None:
    """/proc/net/tcp's addresses in the kernel's order (each 32-bit word little-endian), its
    ports in hex; tcp6's, an IPv4-mapped address read as the IPv4 one it is; unix sockets
    listening, stream or seqpacket, by their flags."""
    rows = parse_inet(
        TCP_HEADER
        + _tcp_line("0100007F:075B", "00000000:0000", "0A", 4001)
        + _tcp_line("0100007F:075B", "0100007F:D431", "01", 4002)
        + _tcp_line("4D0200C0:A2D2", "0A00000A:0016", "01", 4003)
        + "   9: garbage\n"
    )
    assert rows == [
        Row(("127.0.0.1", 1883), ("0.0.0.0", 0), LISTEN, 4001),
        Row(("127.0.0.1", 1883), ("127.0.0.1", 54321), ESTABLISHED, 4002),
        Row(("192.0.2.77", 41682), ("10.0.0.10", 22), ESTABLISHED, 4003),
    ]
    rows6 = parse_inet(
        TCP6_HEADER
        + _tcp_line(
            "0000000000000000FFFF00000100007F:075B",
            "0000000000000000FFFF00000100007F:D431",
            "01",
            5001,
        )
        + _tcp_line(
            "00000000000000000000000001000000:2329",
            "00000000000000000000000000000000:0000",
            "0A",
            5002,
        )
    )
    assert rows6 == [
        Row(("127.0.0.1", 1883), ("127.0.0.1", 54321), ESTABLISHED, 5001),
        Row(("::1", 9001), ("::", 0), LISTEN, 5002),
    ]
    unix = parse_unix_listening(
        "Num       RefCount Protocol Flags    Type St Inode Path\n"
        "00000000aa411248: 00000002 00000000 00010000 0001 01  2847 /run/relay.sock\n"
        "00000000aa411249: 00000002 00000000 00010000 0005 01  2848 @abstract\n"
        "00000000aa41124a: 00000002 00000000 00010000 0002 01  2849 /run/dgram.sock\n"
        "00000000d4f0f105: 00000003 00000000 00000000 0001 03   223\n"
        "00000000d4f0f106: 00000002 00000000 00010000 0001 01  2850\n"
    )
    assert unix == {2847: "/run/relay.sock", 2848: "@abstract", 2850: ""}


BROKER = ("127.0.0.1", 1883)


def _board() -> tuple[Net, list[Net]]:
    """One namespace: the broker (sockets 1-3) with three clients on loopback (a relay that
    listens, 11-12; a client only of the broker, 21; one whose process is gone, 31) and one
    from another machine (sensor, 4); a container's namespace beside it, whose client dialled
    the board's address (41 there, 5 here)."""
    host = Net(
        tcp=[
            Row(BROKER, ("0.0.0.0", 0), LISTEN, 1),
            Row(BROKER, ("127.0.0.1", 40001), ESTABLISHED, 2),
            Row(BROKER, ("127.0.0.1", 40002), ESTABLISHED, 3),
            Row(BROKER, ("127.0.0.1", 40003), ESTABLISHED, 6),
            Row(("192.0.2.77", 8883), ("192.0.2.50", 50000), ESTABLISHED, 4),
            Row(("192.0.2.77", 8883), ("10.88.0.2", 50001), ESTABLISHED, 5),
            Row(("127.0.0.1", 40001), BROKER, ESTABLISHED, 11),
            Row(("127.0.0.1", 5555), ("0.0.0.0", 0), LISTEN, 12),
            Row(("127.0.0.1", 40002), BROKER, ESTABLISHED, 21),
            Row(("127.0.0.1", 40003), BROKER, ESTABLISHED, 0),
        ]
    )
    container = Net(tcp=[Row(("10.88.0.2", 50001), ("192.0.2.77", 8883), ESTABLISHED, 41)])
    return host, [host, container]


def test_the_broker_s_clients_on_this_board_are_found_from_its_side() -> None:
    """Its established connections on its own ports: a peer on loopback found in its own
    namespace (or none found: still on this board), a peer in another namespace by the
    connection's mirrored addresses, a peer on another machine left to the ACL."""
    host, nets = _board()
    clients = local_clients(host, {1, 2, 3, 4, 5, 6}, {1883, 8883}, nets, {"192.0.2.77"})
    assert [(c.peer, set(c.inodes)) for c in clients] == [
        (("127.0.0.1", 40001), {11}),
        (("127.0.0.1", 40002), {21}),
        (("127.0.0.1", 40003), set()),  # on this board, its socket held by nobody seen
        (("10.88.0.2", 50001), {41}),
    ]
    # Not the broker's sockets, or not on its ports: not its clients.
    assert local_clients(host, {1, 2}, {8883}, nets, set()) == []


def test_a_client_that_listens_or_talks_beyond_the_board_is_a_relay() -> None:
    """Listening (TCP on any address, UDP bound without a peer, a unix stream socket), a
    connection it accepted, a connection to another machine: each said. A client only of the
    broker, or of the board's own services, is none."""
    _, nets = _board()
    assert serves({11, 12}, nets) == ["listens on 127.0.0.1:5555"]
    assert serves({21}, nets) == []
    outward = Net(
        tcp=[
            Row(("192.0.2.77", 41000), ("203.0.113.9", 22), ESTABLISHED, 51),  # ssh -R
            Row(("0.0.0.0", 9999), ("0.0.0.0", 0), LISTEN, 60),
            Row(("192.0.2.77", 9999), ("192.0.2.50", 50500), ESTABLISHED, 61),  # accepted
            Row(("127.0.0.1", 40100), ("127.0.0.1", 6379), ESTABLISHED, 62),  # a local service
            Row(("0.0.0.0", 40300), ("0.0.0.0", 0), "07", 63),  # bound, not yet used
        ],
        udp=[
            Row(("0.0.0.0", 5683), ("0.0.0.0", 0), "07", 70),  # bound, no peer
            Row(("192.0.2.77", 40200), ("192.0.2.1", 53), "01", 71),  # a DNS question
        ],
        unix_listening={80: "/run/node-red.sock"},
    )
    both = [*nets, outward]
    assert serves({51}, both) == ["holds a connection to 203.0.113.9:22, not this machine"]
    assert serves({61}, both) == [
        "holds a connection it accepted at 192.0.2.77:9999 from 192.0.2.50:50500"
    ]
    assert serves({62, 63, 71}, both) == []
    assert serves({70}, both) == ["receives UDP on 0.0.0.0:5683"]
    assert serves({80}, both) == ["listens on the unix socket /run/node-red.sock"]


def test_treadguard_s_own_unit_is_told_by_its_cgroup() -> None:
    """systemd's cgroup of treadguard.service (cgroup v2, or v1's name=systemd line); a
    process of another unit, a user's session or a container's own treadguard is not it."""
    assert is_the_service("0::/system.slice/treadguard.service\n")
    assert is_the_service("12:pids:/\n1:name=systemd:/system.slice/treadguard.service\n")
    for other in (
        "0::/system.slice/kiosk.service\n",
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "0::/system.slice/treadguard.service/extra\n",
        "0::/machine.slice/libpod-1.scope/system.slice/treadguard.service\n",
        "0::/system.slice/not-treadguard.service\n",
    ):
        assert not is_the_service(other), other
    assert printable("socat\nTCP-LISTEN:1\x1b") == "socat\\nTCP-LISTEN:1\\x1b"


pytestmark_real = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")
KIOSK_ACCOUNT = "tablet-kiosk"  # a tablet's account of its own: the doctor's probe uses "tablet"
KIOSK_PASSWORD = "tablet-kiosk-secret"


def _with_a_kiosk_tablet_account(rig: Rig) -> None:  # noqa: F811
    """The rig's broker anew with a second tablet's account (as the installer adds one: its
    own user block, commanding), for the kiosk's bridge: the doctor's own probe logs in as
    "tablet", and the broker binds each client id to its account, so a bridge with that
    account would be thrown out by the probe's login."""
    acl = rig.tmp / "acl-kiosk"
    acl.write_text(
        ACL.read_text(encoding="utf-8")
        + f"user {KIOSK_ACCOUNT}\ntopic write treadmill/+/cmd\ntopic read treadmill/+/state\n",
        encoding="utf-8",
    )
    lines = auth_lines(rig.tmp).replace(f"acl_file {ACL}", f"acl_file {acl}")
    subprocess.run(
        [MOSQUITTO_PASSWD, "-b", str(rig.tmp / "passwd"), KIOSK_ACCOUNT, KIOSK_PASSWORD],
        check=True,
    )
    _broker_anew(rig, lines)


@pytestmark_real
@pytest.mark.asyncio
async def test_a_renamed_mosquitto_bridging_in_is_a_relay(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A copy of Mosquitto's executable named "kiosk", listening on loopback for anyone and
    bridging into the board's broker with a tablet's account: its anonymous clients command
    the treadmill. Its name is no Mosquitto's, so only what it does tells: it holds a
    connection to the board's broker and listens. Everything else all green: not passed."""
    _with_a_kiosk_tablet_account(rig)
    (port,) = free_ports(1)
    kiosk_exe = tmp_path / "kiosk"
    shutil.copy(MOSQUITTO, kiosk_exe)
    kiosk_conf = tmp_path / "kiosk.conf"
    kiosk_conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"connection board\naddress 127.0.0.1:{rig.broker.port}\n"
        f"remote_username {KIOSK_ACCOUNT}\nremote_password {KIOSK_PASSWORD}\n"
        "topic treadmill/# both 1\n"
    )
    kiosk = started([str(kiosk_exe), "-c", str(kiosk_conf)])
    try:
        wait_listening(kiosk, [port], lambda: "the renamed mosquitto exited")
        cmd = f"treadmill/{SENSOR_TM}/cmd"
        daemon = ("treadguard", PASSWORDS["treadguard"])
        assert _reaches_now(rig.broker.port, cmd, daemon, None, port)  # anyone at the kiosk
        with sim_device("trackmaster") as pty:
            rig.drive = f'kind = "trackmaster"\nport = "{pty}"'
            async with publishing(Sensors(rig.broker.port, values=dict(NOBODY))):
                done = await doctor(
                    rig, rig.config(), "--service-user", "root", "--belt-confirmed", "--json"
                )
    finally:
        kiosk.terminate()
        kiosk.wait(timeout=10)
    result = json.loads(done.out.splitlines()[-1])
    named = [c for c in result["checks"] if f"(pid {kiosk.pid}, {kiosk_exe}" in c["detail"]]
    assert [(c["check"], c["verdict"]) for c in named] == [("broker config", "TODO")], result
    assert f"command line: {kiosk_exe} -c {kiosk_conf})" in named[0]["detail"], named
    assert (
        f"holds a connection to the board's broker at 127.0.0.1:{rig.broker.port}"
        in (named[0]["detail"])
    ), named
    assert f"listens on 127.0.0.1:{port}" in named[0]["detail"], named
    assert "a board's broker takes no relay" in named[0]["fix"], named
    # Nothing else stands between this board and all green.
    others = [c for c in result["checks"] if c not in named]
    assert {c["verdict"] for c in others} <= {"ok", "-"}, result
    assert done.code == 4, done.out


MOSQUITTO_SUB = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"


@contextlib.contextmanager
def _subscriber_of_another_user(port: int) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A read-only client of the broker on ``port`` (the dashboard's account), run as nobody,
    once it holds its connection (its socket established to ``port``, within 5 s); and the
    port of its end."""
    setpriv = shutil.which("setpriv")
    need("root and setpriv (util-linux)", os.geteuid() == 0 and setpriv is not None)
    assert setpriv is not None
    need("mosquitto_sub", Path(MOSQUITTO_SUB).exists())
    proc = subprocess.Popen(
        [
            setpriv, "--reuid", "nobody", "--regid", "nogroup", "--clear-groups",
            MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-u", "dashboard",
            "-P", PASSWORDS["dashboard"], "-t", f"treadmill/{SENSOR_TM}/state",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 5.0
        while True:  # bounded: the deadline
            assert proc.poll() is None, "mosquitto_sub exited"
            with contextlib.suppress(OSError):
                mine = process_sockets(proc.pid)
                rows = parse_inet(Path("/proc/net/tcp").read_text())
                ends = [
                    r.local[1]
                    for r in rows
                    if r.inode in mine and r.remote[1] == port and r.state == ESTABLISHED
                ]
                if ends:
                    break
            assert time.monotonic() < deadline, "mosquitto_sub never connected"
            time.sleep(0.02)  # a poll of the kernel's table: its connection is waited for
        yield proc, ends[0]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytestmark_real
@pytest.mark.asyncio
async def test_a_client_the_doctor_cannot_inspect_is_not_passed(
    rig: Rig,  # noqa: F811
) -> None:
    """A client of the board's broker on this board, run by another user (nobody, a
    subscriber with the dashboard's account), and the doctor without the power to read
    another user's descriptors (CAP_SYS_PTRACE; the broker started without it too, so the
    doctor still sees the broker's own): whether that client relays for others cannot be
    told, so the broker check is not passed (TODO, the fix to run the doctor as root)."""
    rig.drive = 'kind = "simulator"'
    setpriv = without_root_s_powers()[0]
    rig.broker.stop()
    broker = started(
        [setpriv, "--bounding-set", "-sys_ptrace", MOSQUITTO, "-c", str(rig.broker.conf)]
    )
    try:
        wait_listening(broker, [rig.broker.port], lambda: "the broker exited")
        with _subscriber_of_another_user(rig.broker.port) as (_, client_port):
            async with publishing(Sensors(rig.broker.port)):
                done = await doctor(
                    rig,
                    rig.config(),
                    "--service-user",
                    "root",
                    prefix=(setpriv, "--bounding-set", "-sys_ptrace"),
                )
    finally:
        broker.terminate()
        broker.wait(timeout=10)
    assert done.code == 4, done.out
    text = "\n".join(done.lines("broker config"))
    assert (
        f"a connection to the board's broker at 127.0.0.1:{rig.broker.port} from "
        f"127.0.0.1:{client_port}, on this board, is held by a process whose sockets the "
        "doctor cannot read (another user's"
    ) in text, text
    assert "fix: run the doctor as root (sudo)" in text, text


@contextlib.contextmanager
def _tablet_through(nginx: Nginx) -> Iterator[None]:
    """A tablet connected to the broker through nginx (wss://.../mqtt, the tablet's account),
    held until the block ends (its CONNACK seen within 5 s)."""
    connected = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, transport="websockets")
    client.ws_set_options(path="/mqtt")
    client.tls_set(cert_reqs=ssl.CERT_NONE)
    client.tls_insecure_set(True)
    client.username_pw_set("tablet", PASSWORDS["tablet"])
    client.on_connect = lambda *_: connected.set()
    client.connect("127.0.0.1", nginx.https_port)
    client.loop_start()
    try:
        assert connected.wait(5.0), "the tablet did not connect through nginx"
        yield
    finally:
        client.disconnect()
        client.loop_stop()


@pytestmark_real
@pytest.mark.parametrize("board_s", [True, False])
def test_the_board_s_nginx_is_left_to_the_page_s_checks(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
    board_s: bool,
) -> None:
    """nginx shaped as the shipped site passes the tablet's wss on to the broker's WebSockets
    listener: while a tablet is connected, it holds a connection to the broker, listens and
    holds the tablet's. The board's own nginx (running the configuration judged as the
    board's) is the network check's, and is not named here; an nginx running any other
    configuration is judged as any program, and named as a relay."""
    need("Debian's nginx", have_nginx())
    _broker_anew(rig, auth_lines(rig.tmp), websockets=True)
    assert rig.broker.ws_port is not None
    pki = make_pki(tmp_path / "pki")
    nginx = Nginx(tmp_path, cert=pki.server_cert, key=pki.server_key, mqtt_port=rig.broker.ws_port)
    nginx.start()
    assert nginx.proc is not None
    elsewhere = tmp_path / "board-nginx"
    elsewhere.mkdir()
    (elsewhere / "nginx.conf").write_text("events {}\nhttp {}\n")
    rig.drive = 'kind = "simulator"'
    loaded = load_config(rig.config())
    options = DoctorOptions(
        mosquitto_conf=rig.broker.conf, nginx_dir=nginx.dir if board_s else elsewhere
    )
    try:
        with _tablet_through(nginx):
            checks = check_broker_files(loaded, broker_settings(loaded), options)
    finally:
        nginx.stop()
    named = [c for c in checks if "holds a connection to the board's broker" in c.detail]
    if board_s:
        assert named == [], checks
    else:
        assert [c.verdict for c in named] == [Verdict.TODO], checks
        assert named[0].detail.startswith("not checked: nginx (pid "), named
        assert f", {NGINX}, command line: nginx: worker process" in named[0].detail, named
        assert f"at 127.0.0.1:{rig.broker.ws_port} from " in named[0].detail, named
        assert f"listens on 127.0.0.1:{nginx.https_port}" in named[0].detail, named
