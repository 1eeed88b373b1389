"""A private Mosquitto for the tests, and a plain MQTT client that plays the tablet.

Every test that needs a broker starts its own (``broker`` fixture in ``tests/conftest.py``), so
no test depends on the machine's own Mosquitto or on another test's retained messages.
``extra`` adds configuration lines (authentication, an ACL) to the test's listener.

The "tablet" is a plain aiomqtt client subscribed with MQTT 5's "retain as published", so a
retained message shows its retain flag even when it arrives live.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol, TypedDict

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

ROOT = Path(__file__).resolve().parents[1]
ACL = ROOT / "config" / "mosquitto" / "acl"  # the shipped ACL, read as it is
SHIPPED_CONF = ROOT / "config" / "mosquitto" / "treadguard.conf"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
START_TIMEOUT_S = 5.0
WAIT_S = 5.0  # the bound on every wait for a message


def free_ports(n: int) -> list[int]:
    """``n`` different ports free now: each held bound until all are chosen (two chosen one
    after the other can be the same port, and a broker then fails on its second listener)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


def have_mosquitto() -> bool:
    return Path(MOSQUITTO).exists()


# --- who can reach a listening port: the loopback interface only, or the network too ---------


def listening_query(port: int) -> list[str]:
    """The ``ss`` command (iproute2) that lists the TCP sockets listening on ``port`` in the
    network namespace it runs in, one line each, no header."""
    return ["ss", "-Hltn", f"sport = :{port}"]


def listen_addresses(ss_lines: str) -> set[str]:
    """The local addresses of ``listening_query``'s lines: ``127.0.0.1`` and ``[::1]`` are
    loopback; ``*`` or ``0.0.0.0`` or ``[::]`` is every address, the network's included."""
    return {line.split()[3].rsplit(":", 1)[0] for line in ss_lines.splitlines() if line.strip()}


def network_addresses() -> list[str]:
    """This machine's addresses that another machine could connect to (scope global: not
    loopback, not link-local), from ``ip -j addr`` (iproute2); none on a machine with loopback
    only."""
    shown = subprocess.run(
        ["ip", "-j", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    return [
        address["local"]
        for link in json.loads(shown)
        for address in link.get("addr_info", [])
        if address.get("scope") == "global" and "local" in address
    ]


# Settings of one listener rather than of the broker (mosquitto.conf(5), "Listeners").
BIND_CLIENT_IDS = "use_username_as_clientid true"
LISTENER_SETTINGS = frozenset({BIND_CLIENT_IDS})


class Listening(Protocol):
    """Where a broker listens on 127.0.0.1: a test's :class:`Broker`, or one the test did not
    start (the Mosquitto of a systemd container, reached through its network namespace)."""

    @property
    def port(self) -> int: ...


def wait_listening(
    proc: subprocess.Popen[bytes], ports: list[int | None], exited: Callable[[], str]
) -> None:
    """Until ``proc`` accepts connections on every port on 127.0.0.1, within START_TIMEOUT_S;
    RuntimeError with ``exited()`` if it ends first."""
    deadline = time.monotonic() + START_TIMEOUT_S
    for port in ports:
        while port is not None:  # bounded: until it accepts connections or the deadline
            if proc.poll() is not None:
                raise RuntimeError(exited())
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)


FILES_SETTLE_S = 0.03  # more than the coarse clock's tick and the start's, together


class Broker:
    """``http_dir``: also a WebSockets listener (on ``ws_port``) serving that folder, as
    ``scripts/run``'s broker does; ``websockets``: a plain WebSockets listener on loopback with
    no http_dir instead, the one nginx passes the page's MQTT to on a board
    (config/mosquitto/treadguard.conf). Both listen on 127.0.0.1 only. Either comes after the
    native listener, which Mosquitto needs anyway (a WebSockets listener alone does not
    start), and takes the same ``extra``
    settings: they are global (``per_listener_settings false``, Mosquitto's default), but for
    the listener's own settings of LISTENER_SETTINGS, which are repeated for it.

    ``persistence``: the broker saves its sessions (and what it holds for them) when it is
    stopped (:meth:`stop`) and reads them back when it starts again."""

    def __init__(
        self,
        workdir: Path,
        extra: str = "",
        *,
        port: int | None = None,
        http_dir: Path | None = None,
        websockets: bool = False,
        persistence: bool = False,
    ) -> None:
        chosen = free_ports(3)
        self.port = port if port is not None else chosen[0]
        others = [p for p in chosen[1:] if p != self.port]  # never the broker's own port
        self.ws_port = others[0] if http_dir is not None or websockets else None
        self.workdir = workdir
        self.conf = workdir / f"mosquitto-{self.port}.conf"
        self.log = workdir / f"mosquitto-{self.port}.log"
        # A listener's own settings in ``extra`` apply to the WebSockets listener too.
        own = "".join(f"{line}\n" for line in extra.splitlines() if line in LISTENER_SETTINGS)
        ws_listener = ""
        # socket_domain ipv4: with it, and only with it, Mosquitto 2.0.11 binds a WebSockets
        # listener to the address given (config/mosquitto/treadguard.conf); without it the
        # test's broker would be open to the network.
        if http_dir is not None:
            ws_listener = (
                f"listener {self.ws_port} 127.0.0.1\nprotocol websockets\nsocket_domain ipv4\n"
                f"http_dir {http_dir}\n{own}"
            )
            # Started as root, Mosquitto drops to its own user, which cannot open a page in a
            # checkout that lives in a private folder (a clone in mktemp -d): it stays root.
            if stay_root() and stay_root() not in extra and not persistence:
                ws_listener = stay_root() + ws_listener
        elif websockets:
            ws_listener = (
                f"listener {self.ws_port} 127.0.0.1\nprotocol websockets\nsocket_domain ipv4\n{own}"
            )
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            + (extra if extra else "allow_anonymous true\n")
            + "log_dest stdout\n"
            # Without it every QoS 1 round trip costs ~88 ms (Nagle meets delayed ACKs).
            "set_tcp_nodelay true\n"
            + (
                stay_root() + f"persistence true\npersistence_location {workdir}/\n"
                f"persistence_file mosquitto-{self.port}.db\n"
                if persistence
                else "persistence false\n"
            )
            + ws_listener
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        # The doctor takes a file changed within a clock tick of the broker's start as maybe
        # changed after it: the files written for it are left that much older first.
        time.sleep(FILES_SETTLE_S)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        wait_listening(
            self.proc,
            [self.port, self.ws_port],
            lambda: f"mosquitto exited: {self.log.read_text()}",
        )

    def freeze(self) -> None:
        """SIGSTOP: a broker that accepts connections and answers nothing (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """SIGTERM: a broker restarted on purpose (it saves its sessions when persistent)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=START_TIMEOUT_S)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=START_TIMEOUT_S)
        self.proc = None


# The shipped configuration's bounds on what the broker holds for a client and reads from one.
QUEUE_SETTINGS = (
    "max_queued_messages",
    "max_queued_bytes",
    "max_inflight_messages",
    "max_packet_size",
)


def shipped_queue_limits() -> str:
    """config/mosquitto/treadguard.conf's lines of QUEUE_SETTINGS, as shipped: a test broker
    with them holds and drops what the board's broker does."""
    lines = [
        line.strip() + "\n"
        for line in SHIPPED_CONF.read_text().splitlines()
        if line.split(" ", 1)[0] in QUEUE_SETTINGS
    ]
    if not lines:
        raise RuntimeError(f"{SHIPPED_CONF} sets none of {', '.join(QUEUE_SETTINGS)}")
    return "".join(lines)


def peak_rss_bytes(pid: int) -> int:
    """The most resident memory process ``pid`` has had since it started (Linux's VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # in kB
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


# The shipped ACL's treadmill with MQTT sensors: its sensor account writes only its topics.
SENSOR_TM = "tm-01"
SENSORS = f"sensors-{SENSOR_TM}"

# The accounts of the shipped ACL, and two with a password but no line in it: "sensors", the
# one account every treadmill's sensors once shared, and an intruder.
PASSWORDS = {
    "treadguard": "daemon-secret",
    "treadguard-queries": "daemon-queries-secret",
    "tablet": "tablet-secret",
    SENSORS: "sensors-tm-01-secret",
    "sensors": "sensors-secret",
    "dashboard": "dashboard-secret",
    "intruder": "intruder-secret",
}


class Login(TypedDict, total=False):
    """An account's keyword arguments of a connection (an MQTT client's or :func:`tablet`'s);
    empty for an anonymous one."""

    username: str
    password: str


def login(account: str) -> Login:
    return {"username": account, "password": PASSWORDS[account]}


# The daemon's environment for a broker with these passwords: its own account's password and
# its query connection's (the account "treadguard-queries", from [mqtt] username "treadguard").
DAEMON_ENV = {
    "TREADGUARD_MQTT__PASSWORD": PASSWORDS["treadguard"],
    "TREADGUARD_MQTT__QUERIES_PASSWORD": PASSWORDS["treadguard-queries"],
}


def stay_root() -> str:
    # As root, Mosquitto drops to the mosquitto user before it reads the password file, the
    # ACL and the certificates, and that user cannot read pytest's private tmp_path.
    return "user root\n" if os.geteuid() == 0 else ""


def auth_lines(workdir: Path) -> str:
    """The shipped configuration's authentication: no anonymous clients, passwords, the ACL,
    and every client id bound to its account (the broker uses the user name as client id)."""
    passwd = password_file(workdir / "passwd", PASSWORDS)
    return (
        f"{BIND_CLIENT_IDS}\n"
        "per_listener_settings false\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"acl_file {ACL}\n" + stay_root()
    )


def password_file(path: Path, accounts: dict[str, str]) -> Path:
    """A Mosquitto password file with these user names and passwords (mosquitto_passwd -b)."""
    path.write_text("")
    for user, password in accounts.items():
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), user, password], check=True)
    return path


class Tablet:
    """A plain aiomqtt client; every message it receives is kept, per topic, in order, and
    ``order`` lists the topics of all of them in arrival order."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.order: list[str] = []
        self._queues: dict[str, asyncio.Queue[aiomqtt.Message]] = defaultdict(asyncio.Queue)

    async def subscribe(self, topic: str) -> None:
        await self.client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))

    async def read(self) -> None:
        async for message in self.client.messages:
            self.order.append(message.topic.value)
            self._queues[message.topic.value].put_nowait(message)

    async def next(
        self,
        topic: str,
        where: Callable[[aiomqtt.Message], bool] = lambda m: True,
        *,
        within: float = WAIT_S,
    ) -> aiomqtt.Message:
        """The next message on ``topic`` that satisfies ``where``, within ``within`` seconds."""
        queue = self._queues[topic]
        async with asyncio.timeout(within):
            while True:
                message = await queue.get()
                if where(message):
                    return message

    def drain(self, topic: str) -> list[aiomqtt.Message]:
        """Every message on ``topic`` received so far and not yet taken, without waiting."""
        queue = self._queues[topic]
        return [queue.get_nowait() for _ in range(queue.qsize())]

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        await self.client.publish(topic, payload, qos=1, retain=retain)


@asynccontextmanager
async def tablet(
    broker: Listening,
    *topics: str,
    username: str | None = None,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    port: int | None = None,
    websockets: bool = False,
    websocket_path: str | None = None,
    session: tuple[str, float] | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[Tablet]:
    """A connected :class:`Tablet` subscribed to ``topics``, reading in the background.
    ``port`` overrides the broker's (a TLS listener), ``host`` its address (a board's address
    on its network, as a tablet there reaches it); ``websockets``: MQTT over WebSockets,
    as the tablet page speaks it (``websocket_path``: at that path, nginx's /mqtt);
    ``session``: (client id, expiry in seconds) of a persistent session, which the broker
    keeps with its subscriptions and QoS 1 messages while the tablet is away. Connecting is
    bounded by WAIT_S."""
    persistent: dict[str, Any] = {}
    if session is not None:
        connect = Properties(PacketTypes.CONNECT)
        connect.SessionExpiryInterval = int(session[1])
        persistent = {"identifier": session[0], "clean_start": False, "properties": connect}
    client = aiomqtt.Client(
        host,
        port if port is not None else broker.port,
        username=username,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
        **persistent,
        tls_context=tls,
        timeout=WAIT_S,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        transport="websockets" if websockets else "tcp",
        websocket_path=websocket_path,
    )
    async with asyncio.timeout(WAIT_S):
        await client.__aenter__()
    try:
        tab = Tablet(client)
        reader = asyncio.create_task(tab.read(), name="tablet-reader")
        try:
            for topic in topics:
                await tab.subscribe(topic)
            yield tab
        finally:
            reader.cancel()
            with suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader
    finally:
        await client.__aexit__(None, None, None)


def body(message: aiomqtt.Message) -> Any:
    """The message's JSON. Any, as json.loads gives it: the tests index it and assert on it."""
    assert isinstance(message.payload, bytes)
    return json.loads(message.payload)


def untimed(reply: Any) -> Any:
    """A reply's JSON without its ``ts`` (the daemon's clock when it answered: an extension of
    the contract), which it must carry, as a unix time."""
    assert isinstance(reply, dict), reply
    ts = reply.get("ts")
    assert isinstance(ts, float | int), reply
    assert not isinstance(ts, bool), reply
    assert ts > 0, reply
    return {k: v for k, v in reply.items() if k != "ts"}


def text_is(value: str) -> Callable[[aiomqtt.Message], bool]:
    return lambda m: m.payload == value.encode()


@contextmanager
def account_publisher(port: int, account: str) -> Iterator[paho.Client]:
    """A paho client logged in as ``account`` (its PASSWORDS entry), its network loop running,
    for a test that publishes from a thread as fast as it can (no queue limit of its own)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=account)
    client.username_pw_set(account, PASSWORDS[account])
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        yield client
    finally:
        client.loop_stop()
        client.disconnect()
