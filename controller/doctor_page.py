"""The doctor's page check: the tablet page as a tablet reaches it, from the board itself.

A board whose broker, ACL and daemon are all right can still leave the clinician without a
page: nginx stopped, its site passing ``/mqtt`` on to another broker, a certificate renewed on
disk that nginx never loaded. The other checks read nginx's files and probe its sockets from
the network for MQTT in the clear; this one uses the page's own route, as a tablet does:

- the shipped site (``/etc/nginx/sites-enabled/treadguard``, ``scripts/install`` puts it
  there; none: nothing to check) names the https port and the certificate;
- ``https://127.0.0.1:PORT/`` (the site's address if it listens on one) must answer the page
  (``index.html``, which loads ``tablet.js``) with the certificate of the site's file;
- ``wss://127.0.0.1:PORT/mqtt`` must take the tablet's login, and a heartbeat sent there as
  the tablet must reach the daemon's account on the board's broker (``[mqtt] host:port``),
  so ``/mqtt`` is passed on to the broker the other checks judged and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiomqtt

from treadguard.contract.mqtt import Topics
from treadguard.controller.mqtt_settings import BrokerSettings
from treadguard.controller.network_probe import (
    Directive,
    NginxUnreadable,
    is_connack,
    parse_nginx,
    upgraded,
    websocket_upgrade,
)
from treadguard.drivers.regular_file import read_regular

SITE = Path("sites-enabled") / "treadguard"
MQTT_PATH = "/mqtt"  # where the page's MQTT client connects (tablet/tablet.js)
PAGE_MARK = b"tablet.js"  # what index.html loads: the page, not nginx's or another's
NGINX_FIX = "sudo nginx -t names a fault in its files; then sudo systemctl restart nginx"


@dataclass(frozen=True)
class PageSite:
    """What the page check asks, from the site's file."""

    host: str  # where to connect: the listen address, or loopback for any address
    port: int
    certificate: Path | None


def page_site(text: str) -> PageSite | str:
    """The https listener and certificate of the site's text; a problem in words if none."""
    try:
        directives = parse_nginx(text)
    except NginxUnreadable as exc:
        return f"it cannot be read as nginx reads it ({exc})"
    for server in (d for d in directives if d.name == "server" and d.block is not None):
        block = server.block or ()
        cert = next((d.args[0] for d in block if d.name == "ssl_certificate" and d.args), None)
        for listen in (d for d in block if d.name == "listen" and d.args):
            if "ssl" not in listen.args[1:]:
                continue
            where = _listen_address(listen)
            if where is not None:
                host, port = where
                return PageSite(host, port, Path(cert) if cert is not None else None)
    return "it has no server listening with ssl"


def _listen_address(listen: Directive) -> tuple[str, int] | None:
    word = listen.args[0]
    host, _, port = word.rpartition(":")
    if not host:  # "443"
        host, port = "", word
    if not port.isascii() or not port.isdigit():
        return None
    host = host.strip("[]")
    if host in ("", "*", "0.0.0.0", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    return host, int(port)


def _tls(*protocols: str) -> ssl.SSLContext:
    # Not verified here: the certificate is compared with the site's own file instead (a
    # tablet trusts the clinic's CA, which the board need not hold).
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(list(protocols))
    return context


@dataclass(frozen=True)
class PageAnswer:
    status: int | None
    body: bytes
    alpn: str | None
    certificate: bytes | None  # DER, as served


async def fetch_page(host: str, port: int, wait_s: float) -> PageAnswer:
    """``GET /`` over TLS (HTTP/1.1 on the wire; which protocol the server offered first is
    recorded). OSError, TimeoutError or ssl.SSLError when nothing serves it."""
    alpn: str | None = None
    certificate: bytes | None = None
    async with asyncio.timeout(wait_s):
        # As a browser offers: HTTP/2 first (the page's own requests go over it).
        reader, writer = await asyncio.open_connection(host, port, ssl=_tls("h2", "http/1.1"))
        try:
            tls = writer.get_extra_info("ssl_object")
            if isinstance(tls, ssl.SSLObject):
                alpn, certificate = tls.selected_alpn_protocol(), tls.getpeercert(True)
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection(host, port, ssl=_tls("http/1.1"))
        try:
            name = f"[{host}]" if ":" in host else host
            writer.write(
                f"GET / HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            await writer.drain()
            raw = await reader.read(256 * 1024)
        finally:
            writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    words = head.split(b"\r\n", 1)[0].split()
    status = int(words[1]) if len(words) > 1 and words[1].isdigit() else None
    return PageAnswer(status, body, alpn, certificate)


def _file_certificate(path: Path) -> bytes | None:
    try:
        text = read_regular(path).decode("ascii")
    except (OSError, UnicodeDecodeError):
        return None
    begin = "-----BEGIN CERTIFICATE-----"
    start = text.find(begin)
    end = text.find("-----END CERTIFICATE-----", start)
    if start < 0 or end < 0:
        return None
    try:
        return ssl.PEM_cert_to_DER_cert(text[start : end + len("-----END CERTIFICATE-----")])
    except ValueError:
        return None


@dataclass(frozen=True)
class Verdicts:
    """The page check's outcome, before the doctor's Check rows are made of it."""

    ok: bool
    detail: str
    fix: str = ""
    todo: bool = False


async def judge_page(
    site: PageSite, broker: BrokerSettings, tablet: tuple[str | None, str | None], wait_s: float
) -> list[Verdicts]:
    """The page and its MQTT, each a verdict."""
    url = f"https://{'[' + site.host + ']' if ':' in site.host else site.host}:{site.port}/"
    try:
        page = await fetch_page(site.host, site.port, wait_s)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        return [
            Verdicts(
                False,
                f"nothing serves the page at {url} (the treadguard site's https listener): "
                f"{type(exc).__name__}: {exc}",
                f"start nginx: sudo systemctl start nginx ({NGINX_FIX})",
            )
        ]
    verdicts = []
    if page.status != 200 or PAGE_MARK not in page.body:
        verdicts.append(
            Verdicts(
                False,
                f"{url} answered {page.status or 'no HTTP status'} without the tablet page "
                f"(its index.html loads {PAGE_MARK.decode()})",
                "the site's root must be the page's folder (root /opt/treadguard/tablet; "
                f"scripts/install --update writes it); then {NGINX_FIX}",
            )
        )
    else:
        offered = "HTTP/2" if page.alpn == "h2" else f"{page.alpn or 'no protocol'} first"
        verdicts.append(Verdicts(True, f"{url} serves the tablet page (offers {offered})"))
    if site.certificate is not None:
        on_disk = _file_certificate(site.certificate)
        if on_disk is None or on_disk != page.certificate:
            verdicts.append(
                Verdicts(
                    False,
                    f"{url} serves another certificate than {site.certificate}, the site's "
                    "(renewed or replaced on disk, and nginx not reloaded; or unreadable)",
                    "sudo systemctl reload nginx, then run the doctor again",
                    todo=on_disk is None,
                )
            )
    verdicts.append(await _mqtt_over_page(site, url, broker, tablet, wait_s))
    return verdicts


async def _mqtt_over_page(
    site: PageSite,
    url: str,
    broker: BrokerSettings,
    tablet: tuple[str | None, str | None],
    wait_s: float,
) -> Verdicts:
    wss = f"wss{url[5:].rstrip('/')}{MQTT_PATH}"
    username, password = tablet
    if broker.username is not None and username is None:
        return Verdicts(
            False,
            f"not checked: {wss} needs the tablet's account, which was not given",
            "run again with --tablet-username tablet and its password in "
            "TREADGUARD_TABLET_PASSWORD",
            todo=True,
        )
    topics = Topics(broker.prefix)
    probe = json.dumps({"id": f"doctor-{uuid.uuid4().hex[:12]}", "type": "heartbeat"}).encode()
    daemon = aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password,
        identifier=f"tg-doctor-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=None if broker.tls is None else broker.tls.context(),
        timeout=wait_s,
    )
    async with contextlib.AsyncExitStack() as stack:
        try:
            await stack.enter_async_context(daemon)
            await daemon.subscribe(topics.cmd)
        except aiomqtt.MqttError as exc:
            return Verdicts(
                False,
                f"not checked: the daemon's login at {broker.host}:{broker.port} failed ({exc})",
                "the broker check above says why",
                todo=True,
            )
        try:
            # Bounded as a whole: a server that answers a byte at a time holds nothing up.
            async with asyncio.timeout(wait_s):
                await _publish_over_page(site, username, password, topics.cmd, probe)
        except (OSError, TimeoutError, ssl.SSLError, PageLoginRefused) as exc:
            return Verdicts(
                False,
                f"the tablet's login over {wss} failed: {type(exc).__name__}: {exc}",
                "the broker's WebSockets listener on 127.0.0.1:9001 (config/mosquitto/"
                "treadguard.conf), the site's location = /mqtt passing on to it, and the "
                "tablet's password (TREADGUARD_TABLET_PASSWORD)",
            )
        arrived = await seen(daemon, probe, wait_s)
    if arrived:
        return Verdicts(
            True,
            f"{wss} takes the tablet's login ({username or 'anonymous'}) and reaches the "
            f"board's broker ({broker.host}:{broker.port})",
        )
    return Verdicts(
        False,
        f"a command sent as {username or 'anonymous'} over {wss} did not reach the daemon's "
        f"account on {broker.host}:{broker.port}: the page's /mqtt is passed on to another "
        "broker, or the ACL keeps it out",
        "the site's location = /mqtt must pass on to the board's broker (proxy_pass "
        f"http://127.0.0.1:9001, config/nginx/treadguard.conf); then {NGINX_FIX}",
    )


async def seen(reader: aiomqtt.Client, payload: bytes, wait_s: float) -> bool:
    """Whether ``payload`` reaches ``reader`` within ``wait_s``."""
    try:
        async with asyncio.timeout(wait_s):
            async for message in reader.messages:
                if message.payload == payload:
                    return True
    except TimeoutError:
        return False
    return False


async def check_page(
    nginx_dir: Path, broker: BrokerSettings, tablet: tuple[str | None, str | None], wait_s: float
) -> list[Verdicts] | None:
    """The page check; None where the board has no treadguard site (nothing to check)."""
    path = nginx_dir / SITE
    try:
        text = read_regular(path).decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return [
            Verdicts(
                False,
                f"not checked: {path} cannot be read ({exc})",
                "run the doctor as root",
                todo=True,
            )
        ]
    site = page_site(text)
    if isinstance(site, str):
        return [
            Verdicts(
                False,
                f"{path}: {site}",
                f"install the shipped site (scripts/install --update); then {NGINX_FIX}",
            )
        ]
    return await judge_page(site, broker, tablet, wait_s)


class PageLoginRefused(Exception):
    """The page's MQTT refused the login, or did not speak MQTT over WebSockets."""


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def mqtt_login(client_id: str, username: str | None, password: str | None) -> bytes:
    """An MQTT 3.1.1 CONNECT: clean session, keepalive 10 s, the user name and password."""
    flags = 0x02 | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _string("MQTT") + bytes([4, flags]) + (10).to_bytes(2, "big") + _string(client_id)
    body += (_string(username) if username is not None else b"") + (
        _string(password) if password is not None else b""
    )
    return bytes([0x10]) + _varint(len(body)) + body


def mqtt_publish(topic: str, payload: bytes) -> bytes:
    """An MQTT PUBLISH at QoS 0."""
    body = _string(topic) + payload
    return bytes([0x30]) + _varint(len(body)) + body


def ws_frame(payload: bytes) -> bytes:
    """A client's binary WebSocket frame, final and masked."""
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([0x82]) + (
        bytes([0x80 | length]) if length < 126 else bytes([0x80 | 126]) + length.to_bytes(2, "big")
    )
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _publish_over_page(
    site: PageSite, username: str | None, password: str | None, topic: str, payload: bytes
) -> None:
    """As a tablet's page does: TLS, a WebSocket at /mqtt, a login, one PUBLISH, then away.
    PageLoginRefused if it is refused or not answered as MQTT; OSError/ssl.SSLError if no
    connection is made (the caller bounds the time)."""
    reader, writer = await asyncio.open_connection(site.host, site.port, ssl=_tls("http/1.1"))
    try:
        name = f"[{site.host}]" if ":" in site.host else site.host
        writer.write(websocket_upgrade(f"{name}:{site.port}", MQTT_PATH, os.urandom(16)))
        head = await reader.readuntil(b"\r\n\r\n")
        if not upgraded(head):
            status = head.split(b"\r\n", 1)[0].decode("latin-1")
            raise PageLoginRefused(f"no WebSocket at {MQTT_PATH} ({status})")
        client_id = f"tg-doctor-{uuid.uuid4().hex[:12]}"
        writer.write(ws_frame(mqtt_login(client_id, username, password)))
        first = await reader.readexactly(2)
        if first[0] & 0x0F != 0x02 or first[1] & 0x80:
            raise PageLoginRefused("the answer is not a WebSocket frame of MQTT")
        answer = await reader.readexactly(first[1] & 0x7F)
        if not is_connack(answer):
            raise PageLoginRefused("the answer to the login is not a CONNACK")
        if answer[3] != 0:
            raise PageLoginRefused(f"the login was refused (CONNACK return code {answer[3]})")
        writer.write(ws_frame(mqtt_publish(topic, payload)))
        writer.write(ws_frame(bytes([0xE0, 0x00])))  # DISCONNECT: the publish goes first
        await writer.drain()
    except asyncio.IncompleteReadError as exc:
        raise PageLoginRefused("the connection closed before an answer") from exc
    except asyncio.LimitOverrunError as exc:
        raise PageLoginRefused("the answer's head is too long") from exc
    finally:
        writer.close()
