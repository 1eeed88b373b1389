"""Whether MQTT answers in the clear from the network, whatever serves it: for ``treadguard
doctor`` (docs/doctor.md, "network MQTT").

The broker's own listeners are judged from its configuration; this looks at the board from the
outside instead. Every TCP socket listening on an address other than loopback (or on every
address), whichever process holds it, is asked through one of the board's own addresses on
the network: (a) a plain MQTT CONNECT, (b) an HTTP WebSocket upgrade asking for the ``mqtt``
subprotocol, on ``/mqtt`` and on ``/``, then the same CONNECT in a WebSocket frame. Any CONNACK,
a refusal included, proves a client on the network speaks MQTT there without TLS: a relay
(socat), a proxy (nginx passing /mqtt over plain http) or a broker's own listener.

What is sent is only ever that CONNECT (a made-up user name, no password, no will, nothing
published) and one HTTP GET, each on a connection of its own, closed at once, every step
bounded by a short timeout. Neither holds a byte a Trackmaster takes as a command (0xA0 to
0xAC), were a serial bridge (ser2net) listening, and neither starts with the protocol number 0
of a Modbus TCP request, were a Modbus gateway listening. A TLS port (nginx's 443, a TLS
listener) answers neither in the clear.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from treadguard.controller.broker_config import host_port

PROBE_USERNAME = "treadguard-doctor-probe"
WEBSOCKET_PATHS = ("/mqtt", "/")
_HEAD_LIMIT = 16384  # bytes of an HTTP answer's head read at most


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def mqtt_connect(username: str = PROBE_USERNAME) -> bytes:
    """An MQTT 3.1.1 CONNECT: clean session, a keepalive of 10 s, the user name as the client
    id and as the user name, no password."""
    variable = _utf8("MQTT") + bytes([4, 0x80 | 0x02]) + (10).to_bytes(2, "big")
    payload = _utf8(username) + _utf8(username)
    body = variable + payload
    assert len(body) < 128  # one byte of remaining length
    return bytes([0x10, len(body)]) + body


def is_connack(data: bytes) -> bool:
    """An MQTT 3.1.1 CONNACK (accepted or refused): 0x20, length 2, session flag, a return code
    of 0 to 5."""
    return (
        len(data) >= 4 and data[0] == 0x20 and data[1] == 2 and data[2] in (0, 1) and data[3] <= 5
    )


def websocket_upgrade(host: str, path: str, key: bytes) -> bytes:
    """The HTTP/1.1 request of a WebSocket client asking for the MQTT subprotocol."""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(key).decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: mqtt\r\n"
        "\r\n"
    ).encode()


def upgraded(head: bytes) -> bool:
    """Whether an HTTP answer's head switches to WebSockets (status 101)."""
    status = head.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1] == b"101"


def websocket_frame(payload: bytes, mask: bytes) -> bytes:
    """A client's binary frame, final, masked with ``mask`` (4 bytes)."""
    assert len(payload) < 126
    assert len(mask) == 4
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x82, 0x80 | len(payload)]) + mask + masked


def frame_payload(data: bytes) -> bytes | None:
    """The payload of a server's first frame in ``data`` (unmasked, short), None while
    incomplete or not such a frame."""
    if len(data) < 2 or data[1] & 0x80:
        return None
    length = data[1] & 0x7F
    if length >= 126 or len(data) < 2 + length:
        return None
    return data[2 : 2 + length]


# ------------------------------------------------------------------ the board's addresses


def board_addresses(net: Path = Path("/proc/net")) -> list[str]:
    """The board's own addresses on a network (not loopback, not IPv6 link-local): IPv4 from
    the kernel's routing table of local addresses, IPv6 from if_inet6. IPv4 first."""
    found: list[str] = []
    with contextlib.suppress(OSError):
        last = ""
        for line in (net / "fib_trie").read_text().splitlines():
            words = line.split()
            if len(words) == 2 and words[0] == "|--":
                last = words[1]
            elif "/32 host LOCAL" in line and last:
                ip = ipaddress.ip_address(last)
                if not ip.is_loopback and str(ip) not in found:
                    found.append(str(ip))
    with contextlib.suppress(OSError):
        for line in (net / "if_inet6").read_text().splitlines():
            words = line.split()
            if len(words) < 6 or words[3] != "00":  # scope global only
                continue
            ip6 = ipaddress.IPv6Address(bytes.fromhex(words[0]))
            if not ip6.is_loopback and str(ip6) not in found:
                found.append(str(ip6))
    return found


def targets(address: str, board: list[str]) -> list[str]:
    """The addresses to reach a socket listening on ``address`` at from the network: its own,
    or for every address (0.0.0.0, ::) one of the board's: IPv4 for 0.0.0.0, IPv6 and IPv4 (a
    socket on :: takes IPv4 too) for ::."""
    ip = ipaddress.ip_address(address)
    if not ip.is_unspecified:
        return [address]
    v4 = [a for a in board if ipaddress.ip_address(a).version == 4][:1]
    v6 = [a for a in board if ipaddress.ip_address(a).version == 6][:1]
    return v4 if ip.version == 4 else v6 + v4


# ------------------------------------------------------------------ the probes


@dataclass(frozen=True)
class Answer:
    """MQTT answered at ``address``:``port``, ``how`` in words."""

    address: str
    port: int
    how: str

    @property
    def shown(self) -> str:
        return host_port(self.address, self.port)


async def _exchange(
    address: str, port: int, request: bytes, timeout_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(address, port), timeout_s)
    except (OSError, TimeoutError):
        return None
    writer.write(request)
    return reader, writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _read_until(
    reader: asyncio.StreamReader, done: bytes | None, limit: int, timeout_s: float, data: bytes
) -> bytes:
    """Read onto ``data`` until it holds ``done`` (or ``limit`` bytes), the end, or the
    timeout."""
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(timeout_s):
            while len(data) < limit and (done is None or done not in data):
                chunk = await reader.read(limit - len(data))
                if not chunk:
                    break
                data += chunk
    return data


async def plain_mqtt(address: str, port: int, timeout_s: float) -> bool:
    opened = await _exchange(address, port, mqtt_connect(), timeout_s)
    if opened is None:
        return False
    reader, writer = opened
    try:
        return is_connack(await _read_until(reader, None, 4, timeout_s, b""))
    finally:
        await _close(writer)


async def websocket_mqtt(address: str, port: int, path: str, timeout_s: float) -> bool:
    host = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    opened = await _exchange(
        address, port, websocket_upgrade(host, path, os.urandom(16)), timeout_s
    )
    if opened is None:
        return False
    reader, writer = opened
    try:
        data = await _read_until(reader, b"\r\n\r\n", _HEAD_LIMIT, timeout_s, b"")
        head, found, rest = data.partition(b"\r\n\r\n")
        if not found or not upgraded(head):
            return False
        writer.write(websocket_frame(mqtt_connect(), os.urandom(4)))
        with contextlib.suppress(OSError):
            await asyncio.wait_for(writer.drain(), timeout_s)
        got = rest
        deadline = asyncio.get_running_loop().time() + timeout_s
        while frame_payload(got) is None and len(got) < 256:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            more = await _read_until(reader, None, len(got) + 1, left, got)
            if more == got:
                break
            got = more
        payload = frame_payload(got)
        return payload is not None and is_connack(payload)
    finally:
        await _close(writer)


async def mqtt_answers(address: str, port: int, timeout_s: float) -> str | None:
    """How MQTT answers in the clear at ``address``:``port``, or None."""
    plain, *websockets = await asyncio.gather(
        plain_mqtt(address, port, timeout_s),
        *(websocket_mqtt(address, port, path, timeout_s) for path in WEBSOCKET_PATHS),
    )
    if plain:
        return "a plain MQTT CONNECT was answered with a CONNACK"
    for path, answered in zip(WEBSOCKET_PATHS, websockets, strict=True):
        if answered:
            return f"an MQTT CONNECT over plain WebSockets (GET {path}) was answered with a CONNACK"
    return None
