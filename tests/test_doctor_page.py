"""The doctor's page check (controller/doctor_page.py) against a real nginx on the shipped site
(TLS, HTTP/2, /mqtt passed on to Mosquitto's WebSockets listener) and real brokers: the page
and its MQTT as a tablet takes them, and each way a board can leave the clinician without
them while every other check passes."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
from pathlib import Path

import pytest

from tests.conftest import need
from tests.mosquitto import PASSWORDS, Broker
from tests.nginx import Nginx, have_nginx
from tests.pki import Pki, make_pki
from treadguard.controller.doctor_page import SITE, Verdicts, check_page, page_site
from treadguard.controller.mqtt_settings import BrokerSettings

TABLET = ("tablet", PASSWORDS["tablet"])
WAIT_S = 3.0


def settings(broker: Broker) -> BrokerSettings:
    return BrokerSettings(
        "127.0.0.1", broker.port, "treadmill/tm-01", "treadguard", PASSWORDS["treadguard"], None
    )


def site_dir(tmp_path: Path, nginx: Nginx) -> Path:
    """/etc/nginx as installed: the site nginx runs, as sites-enabled/treadguard."""
    root = tmp_path / "etc-nginx"
    (root / SITE).parent.mkdir(parents=True)
    shutil.copy(nginx.dir / "treadguard.conf", root / SITE)
    return root


def served(tmp_path: Path, pki: Pki, ws_port: int) -> Nginx:
    need("nginx", have_nginx())
    nginx = Nginx(tmp_path, cert=pki.server_cert, key=pki.server_key, mqtt_port=ws_port)
    nginx.start()
    return nginx


def said(verdicts: list[Verdicts] | None) -> list[tuple[bool, bool, str]]:
    assert verdicts is not None
    return [(v.ok, v.todo, v.detail) for v in verdicts]


@pytest.mark.asyncio
async def test_the_page_and_its_mqtt_as_a_tablet_takes_them(
    tmp_path: Path, pki: Pki, secured: Broker
) -> None:
    assert secured.ws_port is not None
    nginx = served(tmp_path, pki, secured.ws_port)
    try:
        root = site_dir(tmp_path, nginx)
        good = said(await check_page(root, settings(secured), TABLET, WAIT_S))
        assert [(ok, todo) for ok, todo, _ in good] == [(True, False), (True, False)], good
        assert (
            f"https://127.0.0.1:{nginx.https_port}/ serves the tablet page (offers HTTP/2)"
            in (good[0][2])
        )
        assert "takes the tablet's login (tablet) and reaches the board's broker" in good[1][2]

        # The tablet's password not the broker's: its login over the page fails, named.
        wrong = said(await check_page(root, settings(secured), ("tablet", "x"), WAIT_S))
        assert wrong[-1][:2] == (False, False), wrong
        assert "the tablet's login over wss://" in wrong[-1][2], wrong

        # A certificate renewed on disk, nginx not reloaded: tablets still get the old one.
        renewed = make_pki(tmp_path / "renewed")
        shutil.copy(renewed.server_cert, pki.server_cert)
        stale = said(await check_page(root, settings(secured), TABLET, WAIT_S))
        assert any(not ok and "serves another certificate than" in d for ok, _, d in stale), stale
    finally:
        nginx.stop()

    # nginx stopped: nothing serves the page.
    down = said(await check_page(root, settings(secured), TABLET, WAIT_S))
    assert len(down) == 1, down
    assert down[0][:2] == (False, False), down
    assert f"nothing serves the page at https://127.0.0.1:{nginx.https_port}/" in down[0][2]


@pytest.mark.asyncio
async def test_a_page_whose_mqtt_reaches_another_broker_is_named(
    tmp_path: Path, pki: Pki, secured: Broker
) -> None:
    """/mqtt passed on to a second broker that lets the tablet's account in: the page loads and
    its login succeeds, but nothing it sends reaches the board's broker."""
    (tmp_path / "other").mkdir()
    other = Broker(tmp_path / "other", websockets=True)
    other.start()
    try:
        assert other.ws_port is not None
        nginx = served(tmp_path, pki, other.ws_port)
        try:
            got = said(
                await check_page(site_dir(tmp_path, nginx), settings(secured), TABLET, WAIT_S)
            )
        finally:
            nginx.stop()
    finally:
        other.kill()
    assert got[0][0], got  # the page itself is served
    assert got[-1][:2] == (False, False), got
    assert "did not reach the daemon's account on 127.0.0.1:" in got[-1][2], got


@pytest.mark.asyncio
async def test_a_board_without_the_site_has_no_page_to_check(
    tmp_path: Path, secured: Broker
) -> None:
    assert await check_page(tmp_path, settings(secured), TABLET, WAIT_S) is None


def test_the_site_s_https_listener_and_certificate_are_read_as_nginx_reads_them() -> None:
    shipped = (
        Path(__file__).resolve().parents[1] / "config" / "nginx" / "treadguard.conf"
    ).read_text()
    site = page_site(shipped)
    assert not isinstance(site, str), site
    assert (site.host, site.port, site.certificate) == (
        "127.0.0.1", 443, Path("/etc/treadguard/tls/server.crt"),
    )  # fmt: skip
    bound = page_site("server {\n listen 10.0.0.5:8443 ssl;\n}\n")
    assert not isinstance(bound, str)
    assert (bound.host, bound.port, bound.certificate) == ("10.0.0.5", 8443, None)
    assert page_site("server {\n listen 80;\n}\n") == "it has no server listening with ssl"
    unread = page_site("server {\n listen 443 ssl;\n")
    assert isinstance(unread, str)
    assert "cannot be read as nginx reads it" in unread


@pytest.mark.asyncio
async def test_a_page_that_answers_a_byte_at_a_time_holds_the_doctor_up_no_longer_than_its_wait(
    tmp_path: Path, pki: Pki, secured: Broker
) -> None:
    """Any program on the site's port (nginx down, a port above 1024) may serve the page and
    then trickle its WebSocket answer: the login over the page fails within the doctor's
    wait, named, and the checklist goes on."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            request = await reader.readuntil(b"\r\n\r\n")
            if request.startswith(b"GET / "):
                body = b'<script src="tablet.js"></script>'
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
            else:
                for byte in b"HTTP/1.1 101 Switching Protocols\r\n" * 100:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.5)  # the trickle itself
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    root = tmp_path / "etc-nginx"
    (root / SITE).parent.mkdir(parents=True)
    (root / SITE).write_text(
        f"server {{\n listen 127.0.0.1:{port} ssl;\n ssl_certificate {pki.server_cert};\n}}\n"
    )
    try:
        async with asyncio.timeout(30.0):  # the bound this test holds the check to
            got = said(await check_page(root, settings(secured), TABLET, 2.0))
    finally:
        server.close()
    assert got[0][0], got  # the page itself was served
    assert got[-1][:2] == (False, False), got
    assert "the tablet's login over wss://" in got[-1][2], got
    assert "TimeoutError" in got[-1][2], got
