"""The shipped Mosquitto configuration (config/mosquitto/) against a real broker: logins, the ACL
and TLS (SR-15: a command from anyone but the tablet account never reaches the daemon; SR-12:
the tablet link works, Will included, with authentication and TLS switched on).

Every broker here reads the shipped ACL file itself, config/mosquitto/acl, and a password file
made with ``mosquitto_passwd``. The last test starts Mosquitto on the shipped treadguard.conf.

"Never arrives" is shown without sleeping, by the order Mosquitto keeps (see
:func:`publish_refused`): a forged message is published at QoS 1 and acknowledged, then a
legitimate message is published, and the first message the subscriber gets must be the
legitimate one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, TypedDict, Unpack

import aiomqtt
import pytest

from tests.daemon_process import DaemonProcess, daemon_config
from tests.mosquitto import (
    ACL,
    DAEMON_ENV,
    LISTENER_SETTINGS,
    PASSWORDS,
    SENSOR_TM,
    SENSORS,
    WAIT_S,
    Broker,
    Tablet,
    auth_lines,
    body,
    free_ports,
    have_mosquitto,
    listen_addresses,
    listening_query,
    login,
    network_addresses,
    password_file,
    stay_root,
    tablet,
    text_is,
    untimed,
)
from tests.nginx import Nginx, have_nginx
from tests.pki import OPENSSL, Pki, make_pki
from tests.test_mqtt_link import World, make_link, send, spawn_link_process
from treadguard.controller.mqtt_link import TabletLink
from treadguard.controller.mqtt_settings import TlsSettings
from treadguard.safety.decisions import Event, EventType
from treadguard.safety.inputs import Heartbeat

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_CONF = ROOT / "config" / "mosquitto" / "treadguard.conf"

NOT_AUTHORIZED = 0x87  # MQTT 5 reason code, in a CONNACK or a PUBACK
FORGED = b'{"forged": true}'


# ----------------------------------------------------------------------------- helpers


def fields(message: aiomqtt.Message) -> dict[str, Any]:
    value = body(message)
    assert isinstance(value, dict)
    return value


def need(tool: str, present: bool) -> None:
    if not present:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is not installed: scripts/test installs it")
        pytest.skip(f"{tool} is not installed")


@asynccontextmanager
async def running(broker: Broker) -> AsyncIterator[Broker]:
    await asyncio.to_thread(broker.start)
    try:
        yield broker
    finally:
        broker.kill()


def link_for(broker: Broker, world: World, tm: str, tls: TlsSettings | None = None) -> TabletLink:
    """The daemon's link, logged in with the daemon's account."""
    return make_link(broker, world, tm, **login("treadguard"), tls=tls)


@contextmanager
def pubacks(client: aiomqtt.Client) -> Iterator[list[int]]:
    """The reason codes of the PUBACKs ``client`` receives inside the ``with`` block.

    aiomqtt 2.x drops them, so this wraps the callback of the paho client inside it.
    """
    paho = client._client
    inner = paho.on_publish
    assert inner is not None
    codes: list[int] = []

    def on_publish(*args: Any) -> None:  # (client, userdata, mid, reason_code, properties)
        codes.append(int(args[3].value))
        inner(*args)

    paho.on_publish = on_publish
    try:
        yield codes
    finally:
        paho.on_publish = inner


async def publish_refused(tab: Tablet, topic: str, payload: bytes, *, retain: bool = False) -> None:
    """Publish at QoS 1, wait for the PUBACK, and check that the broker refused the message.

    This is the ordering argument behind every "never arrives" in this file. Mosquitto handles
    one PUBLISH to the end before it acknowledges it: it checks the ACL and, had the message
    been allowed, it would already have been queued for every matching subscriber when the
    PUBACK goes out. Each subscriber's queue is delivered in order. So a message that is
    published only after this returns reaches a subscriber after the refused one would have;
    if it is the first the subscriber sees, the refused one was never delivered.

    Mosquitto acknowledges a denied publish: over MQTT 5 the PUBACK says 0x87 Not authorized
    (checked here); over MQTT 3.1.1 it looks exactly like a success.
    """
    with pubacks(tab.client) as codes:
        await tab.client.publish(topic, payload, qos=1, retain=retain, timeout=WAIT_S)
    assert codes == [NOT_AUTHORIZED], f"{topic} was not refused: {codes}"


async def refused_login(
    broker: Broker,
    *,
    username: str | None = None,
    password: str | None = None,
    tls: ssl.SSLContext | None = None,
    port: int | None = None,
) -> aiomqtt.MqttError:
    """Try to connect; the broker must refuse. Returns the error aiomqtt raised."""
    with pytest.raises(aiomqtt.MqttError) as refused:
        async with tablet(broker, username=username, password=password, tls=tls, port=port):
            pass
    return refused.value


async def tls_refused(port: int, context: ssl.SSLContext) -> str:
    """Connect with TLS and read: the broker must end the connection. Returns the reason.

    Over TLS 1.3 a broker that requires a client certificate only says it has none after
    the client has finished its handshake, and aiomqtt then waits for a CONNACK until its
    timeout; here the broker's TLS alert is read directly.
    """
    async with asyncio.timeout(WAIT_S):
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        except (ssl.SSLError, ConnectionError) as error:
            return str(error)
        try:
            data = await reader.read(1)
        except (ssl.SSLError, ConnectionError) as error:
            return str(error)
        finally:
            writer.close()
            with suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()
    assert data == b"", data
    return "closed without a word"


async def serves_the_tablet(tab: Tablet, tm: str, world: World) -> None:
    """The link is up and answers this tablet: ``online``, then a heartbeat and its reply."""
    p = f"treadmill/{tm}"
    await tab.next(f"{p}/availability", text_is("online"))
    await send(tab, tm, {"id": "hb-1", "type": "heartbeat"})
    assert untimed(body(await tab.next(f"{p}/reply"))) == {"id": "hb-1", "ok": True}
    assert [type(c) for c in world.commands] == [Heartbeat]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Broker]:
    """A private Mosquitto with the shipped ACL, passwords and no anonymous clients."""
    need("mosquitto", have_mosquitto())
    b = Broker(tmp_path, extra=auth_lines(tmp_path))
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1/localhost and two client certificates.

    The names are the shipped configuration's: ca.crt, server.crt, server.key.
    """
    need("openssl", OPENSSL is not None)
    return make_pki(tmp_path / "treadguard")


def tls_broker(tmp_path: Path, pki: Pki, *, require_certificate: bool = False) -> Broker:
    need("mosquitto", have_mosquitto())
    extra = auth_lines(tmp_path) + pki.tls_lines()
    if require_certificate:
        extra += "require_certificate true\n"
    return Broker(tmp_path, extra=extra)


# ----------------------------------------------------------------------------- logins


@pytest.mark.asyncio
async def test_sr12_daemon_and_tablet_accounts_work_under_the_shipped_acl(secured: Broker) -> None:
    tm, world = "tm-acl", World()
    p = f"treadmill/{tm}"
    async with (
        tablet(
            secured,
            f"{p}/reply",
            f"{p}/availability",
            f"{p}/state",
            f"{p}/events",
            **login("tablet"),
        ) as tab,
        link_for(secured, world, tm) as link,
    ):
        await serves_the_tablet(tab, tm, world)
        assert fields(await tab.next(f"{p}/state"))["treadmill_id"] == tm
        link.on_event(Event(EventType.RESET, t=5.0, fields={"cleared": "fall"}))
        assert fields(await tab.next(f"{p}/events"))["type"] == "reset"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("username", "password"),
    [
        (None, None),
        ("tablet", "wrong"),
        ("tablet", PASSWORDS["treadguard"]),
        ("treadguard", ""),
        ("nobody", "whatever"),
    ],
    ids=["anonymous", "wrong-password", "other-accounts-password", "empty-password", "no-user"],
)
async def test_sr15_anonymous_and_wrong_passwords_are_refused(
    secured: Broker, username: str | None, password: str | None
) -> None:
    error = await refused_login(secured, username=username, password=password)
    assert isinstance(error, aiomqtt.MqttCodeError)
    assert error.rc == NOT_AUTHORIZED, error


# ----------------------------------------------------------------------------- the ACL


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "account", ["sensors", "dashboard", "intruder", "treadguard", "treadguard-queries"]
)
async def test_sr15_a_command_from_any_account_but_the_tablet_never_reaches_the_daemon(
    secured: Broker, account: str
) -> None:
    tm, world = "tm-foreign", World()
    p = f"treadmill/{tm}"
    forged = json.dumps({"id": "forged", "type": "estop"}).encode()
    if account == "treadguard":
        # One connection per account (client ids bound to accounts): the daemon's account
        # forges before its link connects, retained, so the link would get it on subscribing.
        async with tablet(secured, **login(account)) as foreign:
            await publish_refused(foreign, f"{p}/cmd", forged, retain=True)
    async with AsyncExitStack() as stack:
        tab = await stack.enter_async_context(
            tablet(secured, f"{p}/reply", f"{p}/availability", **login("tablet"))
        )
        await stack.enter_async_context(link_for(secured, world, tm))
        # "online" comes after the link's subscription to <p>/cmd is in place.
        await tab.next(f"{p}/availability", text_is("online"))
        if account != "treadguard":
            async with tablet(secured, **login(account)) as foreign:
                await publish_refused(foreign, f"{p}/cmd", forged)
        # Published after the refusal was acknowledged, so it is queued for the daemon behind
        # the forged command, had that been let through; and the daemon answers in order.
        await send(tab, tm, {"id": "after", "type": "heartbeat"})
        assert untimed(body(await tab.next(f"{p}/reply"))) == {"id": "after", "ok": True}
        assert [type(c) for c in world.commands] == [Heartbeat]


@pytest.mark.asyncio
@pytest.mark.parametrize("account", ["tablet", "sensors", "dashboard", "treadguard-queries"])
async def test_sr15_only_the_daemon_may_publish_state_replies_events_and_availability(
    secured: Broker, account: str
) -> None:
    """A forged state, reply, event or "online" never reaches the tablet."""
    tm, world = "tm-forge", World()
    p = f"treadmill/{tm}"
    daemon_topics = ("state", "availability", "reply", "events")
    async with AsyncExitStack() as stack:
        tab = await stack.enter_async_context(
            tablet(secured, *(f"{p}/{t}" for t in daemon_topics), **login("tablet"))
        )
        # One connection per account (client ids bound to accounts): the tablet forges on its own.
        forger = (
            tab
            if account == "tablet"
            else await stack.enter_async_context(tablet(secured, **login(account)))
        )
        for t in daemon_topics:
            await publish_refused(forger, f"{p}/{t}", FORGED, retain=t in ("state", "availability"))
        # Everything the daemon publishes from here on follows those acknowledgements.
        async with link_for(secured, world, tm) as link:
            assert (await tab.next(f"{p}/availability")).payload == b"online"
            assert fields(await tab.next(f"{p}/state"))["treadmill_id"] == tm
            await send(tab, tm, {"id": "hb-1", "type": "heartbeat"})
            assert untimed(body(await tab.next(f"{p}/reply"))) == {"id": "hb-1", "ok": True}
            link.on_event(Event(EventType.RESET, t=5.0, fields={"cleared": "fall"}))
            assert fields(await tab.next(f"{p}/events"))["type"] == "reset"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "account", ["tablet", "dashboard", "intruder", "sensors", "treadguard-queries"]
)
async def test_sr15_only_the_treadmills_sensor_account_may_report_grip_and_fall(
    secured: Broker, account: str
) -> None:
    """A forged "hands on the rails" would hide a user who let go: only the treadmill's own
    sensor account may write its sensor topics ("sensors", the account every treadmill's
    sensors once shared, may write nothing)."""
    topic = f"treadmill/{SENSOR_TM}/sensors/grip_left"
    async with (
        tablet(secured, "treadmill/+/sensors/#", **login("treadguard")) as daemon,
        tablet(secured, **login(account)) as forger,
        tablet(secured, **login(SENSORS)) as sensor,
    ):
        await publish_refused(forger, topic, json.dumps({"value": True, "ts": 1.0}).encode())
        await sensor.publish(topic, json.dumps({"value": False, "ts": 2.0}).encode())
        assert body(await daemon.next(topic)) == {"value": False, "ts": 2.0}


@pytest.mark.asyncio
async def test_sr15_the_queries_account_reads_queries_and_writes_answers_only(
    secured: Broker,
) -> None:
    """The account of the daemon's query connection reads any account's queries and answers on
    that account's reply topic, and nothing else: it cannot ask in another account's name,
    command, report for a sensor, or speak for the daemon (the other tests of this file show
    that a command or a forged state of it never arrives)."""
    p = f"treadmill/{SENSOR_TM}"
    async with (
        tablet(secured, f"{p}/query/tablet/reply", **login("tablet")) as tab,
        tablet(secured, f"{p}/query/+", **login("treadguard-queries")) as queries,
    ):
        forged = ("query/tablet", "cmd", "sensors/grip_left", "state", "reply", "events")
        for name in (*forged, "availability"):
            await publish_refused(queries, f"{p}/{name}", FORGED, retain=name == "availability")
        await tab.publish(f"{p}/query/tablet", b'{"id": "q1"}')
        # The first query it reads is the tablet's: its own forged one never arrived.
        assert (await queries.next(f"{p}/query/tablet")).payload == b'{"id": "q1"}'
        assert queries.order == [f"{p}/query/tablet"]
        await queries.publish(f"{p}/query/tablet/reply", b'{"id": "q1", "ok": true}')
        assert body(await tab.next(f"{p}/query/tablet/reply")) == {"id": "q1", "ok": True}


@pytest.mark.asyncio
async def test_sr15_a_sensor_account_speaks_only_for_its_own_treadmill(secured: Broker) -> None:
    """Treadmill tm-01's sensor account cannot report for another treadmill (a second source
    saying "held" would hide a real release there), nor command or forge the daemon's topics."""
    other = "treadmill/tm-02"
    own = f"treadmill/{SENSOR_TM}"
    async with (
        tablet(secured, "treadmill/+/sensors/#", **login("treadguard")) as daemon,
        tablet(secured, **login(SENSORS)) as sensor,
    ):
        held = json.dumps({"value": True, "ts": 1.0}).encode()
        for topic in (f"{other}/sensors/grip_left", f"{other}/sensors/fall", "treadmill/x/y"):
            await publish_refused(sensor, topic, held)
        for name in ("cmd", "state", "reply", "events", "availability"):
            await publish_refused(sensor, f"{own}/{name}", FORGED)
            await publish_refused(sensor, f"{other}/{name}", FORGED)
        await sensor.publish(f"{own}/sensors/grip_left", json.dumps({"value": False}).encode())
        assert body(await daemon.next(f"{own}/sensors/grip_left")) == {"value": False}
        assert daemon.order == [f"{own}/sensors/grip_left"]


@pytest.mark.asyncio
async def test_a_dashboard_reads_state_events_and_availability_but_not_commands(
    secured: Broker,
) -> None:
    tm, world = "tm-watch", World()
    p = f"treadmill/{tm}"
    async with (
        tablet(secured, f"{p}/reply", f"{p}/availability", **login("tablet")) as tab,
        link_for(secured, world, tm) as link,
        # Mosquitto grants the subscription and filters what it delivers, message by message.
        tablet(secured, "treadmill/#", **login("dashboard")) as dashboard,
    ):
        await tab.next(f"{p}/availability", text_is("online"))
        await send(tab, tm, {"id": "hb-1", "type": "heartbeat"})
        assert untimed(body(await tab.next(f"{p}/reply"))) == {"id": "hb-1", "ok": True}
        # The event follows the command (acknowledged before its reply) and the reply (the
        # daemon publishes in order), so the dashboard would have seen both before it.
        link.on_event(Event(EventType.RESET, t=5.0, fields={"cleared": "fall"}))
        await dashboard.next(f"{p}/events")
        assert f"{p}/cmd" not in dashboard.order
        assert f"{p}/reply" not in dashboard.order
        assert {f"{p}/availability", f"{p}/state"} <= set(dashboard.order)


@pytest.mark.asyncio
async def test_sr12_the_daemons_will_reaches_the_tablet_under_the_acl(
    secured: Broker, tmp_path: Path
) -> None:
    """Mosquitto checks the Will against the ACL when it fires and drops it silently if the
    daemon's account may not write <p>/availability."""
    tm = "tm-will"
    p = f"treadmill/{tm}"
    child = spawn_link_process(tm, secured.port, tmp_path / "child.log", login("treadguard"))
    try:
        async with tablet(secured, f"{p}/availability", **login("tablet")) as tab:
            await tab.next(f"{p}/availability", text_is("online"))
            child.send_signal(signal.SIGKILL)  # no clean DISCONNECT: the broker sends the Will
            offline = await tab.next(f"{p}/availability", text_is("offline"))
            assert offline.retain
    finally:
        child.kill()
        child.wait(timeout=WAIT_S)


# ----------------------------------------------------------------------------- client ids


class Listener(TypedDict, total=False):
    """Which of the broker's listeners a client connects to, and how (keyword arguments of
    :func:`tablet` and :func:`take_client_ids`)."""

    port: int | None
    tls: ssl.SSLContext
    websockets: bool


class Hijack(Listener, total=False):
    """How :func:`take_client_ids` attacks: on which listener, how often, in which protocol."""

    times: int
    protocol: aiomqtt.ProtocolVersion


HIJACKS = 20  # connections in a row with someone else's client id, as fast as the broker takes


async def take_client_ids(
    broker: Broker,
    account: str,
    identifiers: tuple[str, ...],
    *,
    port: int | None = None,
    tls: ssl.SSLContext | None = None,
    websockets: bool = False,
    times: int = HIJACKS,
    protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V5,
) -> None:
    """Log in as ``account`` with each of ``identifiers`` as client id, ``times`` times over,
    each time until the broker's CONNACK, then disconnect: a client reconnecting as fast as it
    can with someone else's id. Mosquitto drops the older of two connections with one client
    id, and it has done so (Will fired) by the time it sends the newer one its CONNACK."""
    for _ in range(times):
        for identifier in identifiers:
            client = aiomqtt.Client(
                "127.0.0.1",
                port if port is not None else broker.port,
                identifier=identifier,
                **login(account),
                protocol=protocol,
                tls_context=tls,
                transport="websockets" if websockets else "tcp",
                timeout=WAIT_S,
            )
            async with asyncio.timeout(WAIT_S), client:
                pass


async def hijack_fails(
    broker: Broker, tm: str, attacker: str, **connection: Unpack[Hijack]
) -> tuple[str, ...]:
    """The in-process link connected as the daemon; ``attacker`` takes its client id
    (treadguard-<id> and the bound id treadguard) and the watcher's, again and again. Neither
    loses its connection: the availability stays "online", published once, and an event the
    link publishes after the attack is the next thing the watcher gets. ``connection``: the
    listener the attacker uses (port, tls, websockets). Returns the ids it tried."""
    world = World()
    p = f"treadmill/{tm}"
    watcher = "dashboard" if attacker == "tablet" else "tablet"
    ids = (f"treadguard-{tm}", "treadguard", watcher)
    async with (
        tablet(broker, f"{p}/availability", f"{p}/events", **login(watcher)) as watch,
        link_for(broker, world, tm) as link,
    ):
        await watch.next(f"{p}/availability", text_is("online"))
        await take_client_ids(broker, attacker, ids, **connection)
        # Published after the last CONNACK: had the link been dropped, its Will ("offline")
        # and its "online" again would reach the watcher before this event.
        link.on_event(Event(EventType.RESET, t=5.0, fields={"cleared": "fall"}))
        assert fields(await watch.next(f"{p}/events"))["type"] == "reset"
        assert [m.payload for m in watch.drain(f"{p}/availability")] == []
        assert watch.order == [f"{p}/availability", f"{p}/events"]
    return ids


@pytest.mark.asyncio
@pytest.mark.parametrize("attacker", ["dashboard", "tablet", SENSORS, "sensors", "intruder"])
@pytest.mark.parametrize("protocol", [aiomqtt.ProtocolVersion.V5, aiomqtt.ProtocolVersion.V311])
async def test_sr15_no_account_can_take_the_daemons_client_id(
    secured: Broker, attacker: str, protocol: aiomqtt.ProtocolVersion
) -> None:
    """Mosquitto drops the older of two connections with one client id. Another account that
    connects again and again as treadguard-<id> (over MQTT 5 or 3.1.1, as many sensors speak)
    must not knock the daemon off the broker (its Will would say "offline", and the stale
    sensors end in an emergency stop)."""
    await hijack_fails(secured, "tm-hijack", attacker, protocol=protocol)


def listener_blocks(conf: str) -> dict[str, list[str]]:
    """The lines of each listener of a mosquitto.conf, commented-out ones included, by port."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw in conf.splitlines():
        line = raw.lstrip("#").strip()
        if line.startswith("listener "):
            current = blocks.setdefault(line.split()[1], [])
        elif current is not None and raw.startswith("#") and not line:
            continue
        elif current is not None and not raw.startswith("#") and not raw.strip():
            current = None  # a blank line ends the block
        elif current is not None:
            current.append(line)
    return blocks


def test_sr15_every_shipped_listener_binds_client_ids_to_accounts() -> None:
    """use_username_as_clientid is a setting of one listener (mosquitto.conf(5)): a listener
    without it, examples included, would let any account take the daemon's client id."""
    blocks = listener_blocks(SHIPPED_CONF.read_text())
    assert set(blocks) == {"1883", "8883", "9001"}
    for port, lines in blocks.items():
        assert "use_username_as_clientid true" in lines, port


# ----------------------------------------------------------------------------- TLS


@pytest.mark.asyncio
async def test_sr12_daemon_and_tablet_over_tls_trusting_the_ca(tmp_path: Path, pki: Pki) -> None:
    tm, world = "tm-tls", World()
    p = f"treadmill/{tm}"
    trust_ca = TlsSettings(ca_file=pki.ca)
    async with (
        running(tls_broker(tmp_path, pki)) as broker,
        tablet(
            broker, f"{p}/reply", f"{p}/availability", **login("tablet"), tls=trust_ca.context()
        ) as tab,
        link_for(broker, world, tm, tls=trust_ca),
    ):
        await serves_the_tablet(tab, tm, world)


@pytest.mark.asyncio
async def test_tls_a_client_that_does_not_trust_the_ca_is_refused(tmp_path: Path, pki: Pki) -> None:
    async with running(tls_broker(tmp_path, pki)) as broker:
        other = TlsSettings(ca_file=pki.other_ca).context()
        error = await refused_login(broker, **login("tablet"), tls=other)
        assert "CERTIFICATE_VERIFY_FAILED" in str(error)


@pytest.mark.asyncio
async def test_sr12_tls_with_client_certificates_required(tmp_path: Path, pki: Pki) -> None:
    tm, world = "tm-mtls", World()
    p = f"treadmill/{tm}"
    daemon_tls = TlsSettings(pki.ca, cert_file=pki.daemon_cert, key_file=pki.daemon_key)
    tablet_tls = TlsSettings(pki.ca, cert_file=pki.tablet_cert, key_file=pki.tablet_key)
    async with running(tls_broker(tmp_path, pki, require_certificate=True)) as broker:
        # The right CA (and password), but no certificate: the broker ends the connection.
        no_cert = TlsSettings(pki.ca).context()
        assert "CERTIFICATE_REQUIRED" in await tls_refused(broker.port, no_cert)
        no_cert.maximum_version = ssl.TLSVersion.TLSv1_2  # here the handshake itself fails
        await refused_login(broker, **login("tablet"), tls=no_cert)
        async with (
            tablet(
                broker,
                f"{p}/reply",
                f"{p}/availability",
                **login("tablet"),
                tls=tablet_tls.context(),
            ) as tab,
            link_for(broker, world, tm, tls=daemon_tls),
        ):
            await serves_the_tablet(tab, tm, world)


# ----------------------------------------------------------------------------- the shipped file


def shipped_config(etc: Path, *, port: int, tls_port: int, ws_port: int) -> str:
    """config/mosquitto/treadguard.conf with its TLS example switched on, free ports (the
    WebSockets listener for nginx on ``ws_port``), and the files of /etc/mosquitto/treadguard/
    found in ``etc`` (the ACL: the shipped one)."""
    text = SHIPPED_CONF.read_text()
    edits = [
        (r"^listener 1883 127\.0\.0\.1$", f"listener {port} 127.0.0.1"),
        (r"^#listener 8883$", f"listener {tls_port} 127.0.0.1"),
        (r"^listener 9001 127\.0\.0\.1$", f"listener {ws_port} 127.0.0.1"),
        (r"^#(cafile|certfile|keyfile|require_certificate|use_username_as_clientid) ", r"\1 "),
        (r"^acl_file /etc/mosquitto/treadguard/acl$", f"acl_file {ACL}"),
        (r"/etc/mosquitto/treadguard/", f"{etc}/"),
    ]
    for pattern, replacement in edits:
        text, n = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert n, f"the shipped configuration has no {pattern!r} any more"
    return text + stay_root()


@pytest.mark.asyncio
async def test_sr15_the_shipped_configuration_as_installed(tmp_path: Path, pki: Pki) -> None:
    """treadguard.conf itself: the daemon on the loopback listener, the tablet on the TLS
    listener with a client certificate, anonymous clients and foreign commands refused."""
    need("mosquitto", have_mosquitto())
    etc = pki.ca.parent
    password_file(etc / "passwd", PASSWORDS)
    broker = Broker(tmp_path)  # only for starting and stopping: the configuration is replaced
    tls_port, ws_port = [p for p in free_ports(3) if p != broker.port][:2]
    broker.conf.write_text(
        shipped_config(etc, port=broker.port, tls_port=tls_port, ws_port=ws_port)
    )
    tm, world = "tm-shipped", World()
    p = f"treadmill/{tm}"
    tablet_tls = TlsSettings(pki.ca, cert_file=pki.tablet_cert, key_file=pki.tablet_key)
    async with running(broker):
        await refused_login(broker)
        assert "CERTIFICATE_REQUIRED" in await tls_refused(tls_port, TlsSettings(pki.ca).context())
        async with (
            tablet(
                broker,
                f"{p}/reply",
                f"{p}/availability",
                **login("tablet"),
                tls=tablet_tls.context(),
                port=tls_port,
            ) as tab,
            link_for(broker, world, tm),
            tablet(broker, **login("dashboard")) as dashboard,
        ):
            await serves_the_tablet(tab, tm, world)
            await publish_refused(dashboard, f"{p}/cmd", b'{"id": "forged", "type": "estop"}')
            await send(tab, tm, {"id": "after", "type": "heartbeat"})
            assert untimed(body(await tab.next(f"{p}/reply"))) == {"id": "after", "ok": True}
            assert [type(c) for c in world.commands] == [Heartbeat, Heartbeat]


def shipped_broker(tmp_path: Path, pki: Pki) -> tuple[Broker, int]:
    """A broker on treadguard.conf as installed (all listeners on), and its TLS port."""
    need("mosquitto", have_mosquitto())
    etc = pki.ca.parent
    password_file(etc / "passwd", PASSWORDS)
    broker = Broker(tmp_path)  # only for starting and stopping: the configuration is replaced
    # Ports of their own, none the broker's (start() waits for the WebSockets one too).
    broker.ws_port, tls_port = [p for p in free_ports(4) if p != broker.port][:2]
    broker.conf.write_text(
        shipped_config(etc, port=broker.port, tls_port=tls_port, ws_port=broker.ws_port)
    )
    return broker, tls_port


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("attacker", "listener"),
    [("dashboard", "loopback"), (SENSORS, "tls"), ("tablet", "websockets")],
)
async def test_sr15_the_shipped_configuration_keeps_the_daemons_client_id(
    tmp_path: Path, pki: Pki, attacker: str, listener: str
) -> None:
    """treadguard.conf as installed: on every listener, an account connecting again and again
    with the daemon's client id does not disconnect the daemon."""
    broker, tls_port = shipped_broker(tmp_path, pki)
    cert = TlsSettings(pki.ca, cert_file=pki.tablet_cert, key_file=pki.tablet_key).context()
    # One takeover is enough to show; a TLS handshake costs more than a loopback connect.
    connections: dict[str, Hijack] = {
        "loopback": {},
        "tls": {"port": tls_port, "tls": cert, "times": 3},
        # Plain WebSockets on loopback, as nginx connects to it: the same logins and the same
        # binding of client ids.
        "websockets": {"port": broker.ws_port, "websockets": True, "times": 3},
    }
    async with running(broker):
        await hijack_fails(broker, "tm-shipped-id", attacker, **connections[listener])


@pytest.mark.asyncio
async def test_sr15_the_shipped_websockets_listener_behind_the_shipped_nginx_site(
    tmp_path: Path, pki: Pki
) -> None:
    """treadguard.conf's WebSockets listener behind config/nginx/treadguard.conf, its client
    certificates switched on: the page over HTTPS and MQTT over WebSockets at /mqtt, both only
    with a client certificate, and the same logins and ACL as every listener: no anonymous
    client, no command from an account but the tablet's."""
    broker, _ = shipped_broker(tmp_path, pki)
    assert broker.ws_port is not None
    need("nginx", have_nginx())
    nginx = Nginx(
        tmp_path,
        cert=pki.server_cert,
        key=pki.server_key,
        mqtt_port=broker.ws_port,
        client_ca=pki.ca,
    )
    tm, world = "tm-wss", World()
    p = f"treadmill/{tm}"
    tablet_tls = TlsSettings(pki.ca, cert_file=pki.tablet_cert, key_file=pki.tablet_key)
    wss: Listener = {"port": nginx.https_port, "websockets": True, "tls": tablet_tls.context()}
    async with running(broker):
        nginx.start()
        try:
            with await asyncio.to_thread(
                urllib.request.urlopen, nginx.url, context=tablet_tls.context()
            ) as page:
                assert b"E-STOP" in page.read()
            with pytest.raises(urllib.error.HTTPError) as no_certificate:
                await asyncio.to_thread(
                    urllib.request.urlopen, nginx.url, context=TlsSettings(pki.ca).context()
                )
            assert no_certificate.value.code == 400  # nginx: "No required SSL certificate"
            no_cert = TlsSettings(pki.ca).context()
            with pytest.raises(aiomqtt.MqttError):
                async with tablet(
                    broker,
                    port=nginx.https_port,
                    websockets=True,
                    tls=no_cert,
                    websocket_path="/mqtt",
                ):
                    pass
            with pytest.raises(aiomqtt.MqttError):  # a certificate, and no login
                async with tablet(broker, **wss, websocket_path="/mqtt"):
                    pass
            async with (
                tablet(
                    broker,
                    f"{p}/reply",
                    f"{p}/availability",
                    **login("tablet"),
                    **wss,
                    websocket_path="/mqtt",
                ) as tab,
                link_for(broker, world, tm),
                tablet(broker, **login("dashboard"), **wss, websocket_path="/mqtt") as dashboard,
            ):
                await serves_the_tablet(tab, tm, world)
                await publish_refused(dashboard, f"{p}/cmd", b'{"id": "forged", "type": "estop"}')
                await send(tab, tm, {"id": "after", "type": "heartbeat"})
                assert untimed(body(await tab.next(f"{p}/reply"))) == {"id": "after", "ok": True}
                assert [type(c) for c in world.commands] == [Heartbeat, Heartbeat]
        finally:
            nginx.stop()


@pytest.mark.parametrize("which", ["shipped", "test-nginx", "test-page"])
def test_sr15_a_websockets_listener_is_reachable_from_loopback_only(
    tmp_path: Path, request: pytest.FixtureRequest, which: str
) -> None:
    """The WebSockets listener of the shipped treadguard.conf, and those of the tests' brokers
    (the one nginx passes /mqtt to, and the one serving the page as scripts/run's does), listen
    on 127.0.0.1 only: a client on the network would otherwise reach the broker there without
    TLS, its password in the clear. Mosquitto 2.0.11 listened on every address whatever the
    listener line said, unless the listener has ``socket_domain ipv4`` (docs/mqtt-security.md).
    Seen as ``ss`` lists the port, and by connecting to it at each of this machine's network
    addresses."""
    need("ss", shutil.which("ss") is not None)
    if which == "shipped":
        broker, _ = shipped_broker(tmp_path, request.getfixturevalue("pki"))
    elif which == "test-nginx":
        need("mosquitto", have_mosquitto())
        broker = Broker(tmp_path, extra=auth_lines(tmp_path), websockets=True)
    else:
        need("mosquitto", have_mosquitto())
        page = tmp_path / "page"
        page.mkdir()
        (page / "index.html").write_text("<p>page</p>\n")
        broker = Broker(tmp_path, http_dir=page)
    assert broker.ws_port is not None
    broker.start()
    try:
        listed = subprocess.run(
            listening_query(broker.ws_port), capture_output=True, text=True, check=True
        ).stdout
        assert listen_addresses(listed) == {"127.0.0.1"}, listed
        for address in network_addresses():
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((address, broker.ws_port), timeout=2).close()
    finally:
        broker.kill()


@pytest.mark.asyncio
async def test_sr12_the_daemon_over_tls_with_its_certificate_from_its_configuration(
    tmp_path: Path, pki: Pki
) -> None:
    """``treadguard run`` itself: [mqtt] username, [mqtt.tls] ca_file, cert_file and key_file
    relative to the configuration file, the password from TREADGUARD_MQTT__PASSWORD."""
    tm = "tm-tls-daemon"
    p = f"treadmill/{tm}"
    folder = pki.ca.parent.name  # the certificates' folder, beside the configuration
    tls_table = (
        'username = "treadguard"\n\n[mqtt.tls]\n'
        f'ca_file = "{folder}/{pki.ca.name}"\n'
        f'cert_file = "{folder}/{pki.daemon_cert.name}"\n'
        f'key_file = "{folder}/{pki.daemon_key.name}"'
    )
    async with running(tls_broker(tmp_path, pki, require_certificate=True)) as broker:
        config = daemon_config(tmp_path, broker.port, treadmill_id=tm, mqtt_extra=tls_table)
        daemon = DaemonProcess(config, tmp_path / "d.log", env=DAEMON_ENV)
        daemon.start()
        try:
            tablet_tls = TlsSettings(pki.ca, pki.tablet_cert, pki.tablet_key).context()
            async with tablet(
                broker, f"{p}/reply", f"{p}/availability", **login("tablet"), tls=tablet_tls
            ) as tab:
                await tab.next(f"{p}/availability", text_is("online"), within=15.0)
                await send(tab, tm, {"id": "hb", "type": "heartbeat"})
                assert untimed(fields(await tab.next(f"{p}/reply"))) == {"id": "hb", "ok": True}
        finally:
            daemon.stop()


@pytest.mark.asyncio
async def test_sr15_a_dashboard_reusing_its_client_id_never_disconnects_the_daemon(
    secured: Broker, tmp_path: Path
) -> None:
    """``treadguard run`` itself, logged in as treadguard under the shipped ACL, while the
    dashboard account connects again and again with the daemon's client id: the daemon stays
    connected (one connection in its log, "online" once, never "offline") and answers."""
    tm = "tm-id-daemon"
    p = f"treadmill/{tm}"
    config = daemon_config(
        tmp_path, secured.port, treadmill_id=tm, mqtt_extra='username = "treadguard"'
    )
    daemon = DaemonProcess(config, tmp_path / "d.log", env=DAEMON_ENV)
    daemon.start()
    try:
        async with tablet(secured, f"{p}/reply", f"{p}/availability", **login("tablet")) as tab:
            await tab.next(f"{p}/availability", text_is("online"), within=15.0)
            await take_client_ids(secured, "dashboard", (f"treadguard-{tm}", "treadguard"))
            # Published after the last CONNACK: behind any Will the broker sent for the daemon.
            await send(tab, tm, {"id": "after", "type": "heartbeat"})
            assert untimed(fields(await tab.next(f"{p}/reply"))) == {"id": "after", "ok": True}
            assert tab.drain(f"{p}/availability") == []
            assert daemon.alive()
    finally:
        daemon.stop()
    assert daemon.log_text().count("mqtt_connected") == 1, daemon.log_text()


@pytest.fixture
def two_doors(tmp_path: Path) -> Iterator[tuple[Broker, int]]:
    """A private Mosquitto with the shipped ACL and passwords, and a second plain listener:
    the broker as another machine's daemon reaches it (a process on this one holds the
    treadmill's topics at a port; controller/treadmill_lock.py)."""
    need("mosquitto", have_mosquitto())
    (second,) = free_ports(1)
    extra = auth_lines(tmp_path)
    own = "".join(f"{line}\n" for line in extra.splitlines() if line in LISTENER_SETTINGS)
    b = Broker(tmp_path, extra=extra + f"listener {second} 127.0.0.1\n{own}")
    b.start()
    try:
        yield b, second
    finally:
        b.kill()


@pytest.mark.asyncio
async def test_sr12_a_second_daemon_for_one_treadmill_latches_a_rival_daemon_fault(
    two_doors: tuple[Broker, int], tmp_path: Path
) -> None:
    """Two daemons for one treadmill under the daemon's account, the second through another
    listener of the broker (as from another machine: on one machine the second is refused
    before it connects): on the shipped broker each
    takes over the other's session in turn, and each answers some of the tablet's commands,
    an estop among them, for the wrong belt. Each finds the other's state on its topic and
    latches a fault (cause rival_daemon), so no belt runs on (SR-12, SR-13; before, both ran
    on and the tablet's estops were answered ok by the daemon without a session)."""
    secured, second_port = two_doors
    tm = "tm-rival"
    p = f"treadmill/{tm}"
    daemons = []
    for n, port in ((1, secured.port), (2, second_port)):
        folder = tmp_path / f"d{n}"
        folder.mkdir()
        config = daemon_config(folder, port, treadmill_id=tm, mqtt_extra='username = "treadguard"')
        daemons.append(
            DaemonProcess(
                config,
                folder / "d.log",
                env=DAEMON_ENV,
            )
        )
    try:
        async with tablet(secured, f"{p}/state", f"{p}/availability", **login("tablet")) as tab:
            daemons[0].start()
            await tab.next(f"{p}/availability", text_is("online"), within=15.0)
            daemons[1].start()
            instances: set[str] = set()
            async with asyncio.timeout(20.0):
                while len(instances) < 2:
                    state = fields(
                        await tab.next(
                            f"{p}/state",
                            lambda m: (
                                (fields(m).get("latched") or {}).get("cause") == "rival_daemon"
                            ),
                            within=20.0,
                        )
                    )
                    assert state["state"] == "fault"
                    instances.add(state["instance"])
            assert all(d.alive() for d in daemons)
    finally:
        for d in daemons:
            d.stop()
    for d in daemons:
        assert "mqtt_rival_daemon" in d.log_text()
