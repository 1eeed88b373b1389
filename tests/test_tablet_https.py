"""The clinician's tablet page as a board serves it: nginx over https with HTTP/2, on the
shipped site file (config/nginx/treadguard.conf), passing the page's MQTT over WebSockets on
to Mosquitto's loopback listener, with the shipped accounts and ACL.

Mosquitto 2.0.11 once served the page itself over TLS, and its HTTP/2 broke the page in
Chromium (net::ERR_HTTP2_PROTOCOL_ERROR) while a fetch over HTTP/1.1 saw nothing wrong: so
the page is opened here in Chromium itself, and the protocol each client negotiated is checked.
A CA and the server's certificate it signed are made for each test (tests/pki.py); Chromium
trusts that CA from the NSS database of a home folder of its own (tests/browser.py), as a tablet
with the clinic's CA installed does, and a browser that trusts another CA refuses the page.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Error as PlaywrightError
from playwright.async_api import expect

from tests.browser import chromium, need_page, tablet_page
from tests.clinician import SESSION_WAIT_S, STANDSTILL_MPH, clinician, running
from tests.conftest import need
from tests.daemon_process import DaemonProcess, daemon_config
from tests.mosquitto import DAEMON_ENV, Broker, free_port
from tests.nginx import Nginx, have_nginx
from tests.pki import Pki
from tests.test_tablet_page import logged_in_as_tablet

ONLINE_WAIT_MS = 10_000  # the daemon's start-up and first state
CURL = shutil.which("curl")


def started_nginx(tmp_path: Path, pki: Pki, mqtt_port: int) -> Nginx:
    need("nginx", have_nginx())
    nginx = Nginx(tmp_path, cert=pki.server_cert, key=pki.server_key, mqtt_port=mqtt_port)
    nginx.start()
    return nginx


@pytest.fixture
def nginx(tmp_path: Path, pki: Pki, secured: Broker) -> Iterator[Nginx]:
    assert secured.ws_port is not None
    server = started_nginx(tmp_path, pki, secured.ws_port)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.asyncio
async def test_sr1_sr6_over_https_and_http2_a_session_an_estop_a_reset_and_a_stop(
    tmp_path: Path, pki: Pki, secured: Broker, nginx: Nginx
) -> None:
    """In Chromium, from https://HOST/: the page over HTTP/2, its MQTT over wss://HOST/mqtt,
    the login as the tablet account; then a session started from the page, its E-STOP, and a
    reset, and a second session ended by a controlled stop, each seen on the broker's topics
    too."""
    need_page()
    tm = "tm-https"
    config = daemon_config(
        tmp_path, secured.port, treadmill_id=tm, mqtt_extra='username = "treadguard"'
    )
    daemon = DaemonProcess(config, tmp_path / "d.log", env=DAEMON_ENV)
    daemon.start()
    try:
        async with (
            clinician(secured, tm, heartbeat=False, account="dashboard") as doc,
            chromium(trust_ca=pki.ca) as browser,
            tablet_page(browser, f"{nginx.url}?treadmill={tm}") as tab,
        ):
            page = tab.page
            protocol = await page.evaluate(
                "performance.getEntriesByType('navigation')[0].nextHopProtocol"
            )
            assert protocol == "h2"
            assert await page.evaluate("BROKER") == f"wss://127.0.0.1:{nginx.https_port}/mqtt"

            await expect(page.locator("#login")).to_be_visible(timeout=ONLINE_WAIT_MS)
            await logged_in_as_tablet(page)
            await expect(page.locator("#state")).to_contain_text("IDLE")
            await tab.shot("https-01-idle")

            await page.fill("#user", "u-https")
            await page.click("#start")
            await doc.state(running, within=SESSION_WAIT_S)
            await expect(page.locator("#state")).to_contain_text("RUNNING")
            await tab.shot("https-02-running")

            await page.click("#estop")
            assert (await doc.event("estop"))["cause"] == "remote_estop"
            assert (await doc.event("session_ended"))["reason"] == "estop"
            await expect(page.locator("#banner")).to_be_visible()
            await expect(page.locator("#state")).to_contain_text("E-STOP")
            await tab.shot("https-03-estop")

            await doc.until(lambda s: s["speed_mph"] <= STANDSTILL_MPH, within=5.0)
            await expect(page.locator("#reset")).to_be_enabled()
            await page.click("#reset")
            assert (await doc.event("reset"))["cleared"] == "remote_estop"
            await expect(page.locator("#banner")).to_be_hidden()
            await expect(page.locator("#state")).to_contain_text("IDLE")
            await tab.shot("https-04-reset")

            # A second session, ended by a controlled stop (the first's record put off).
            await page.click("#record-later")
            await page.fill("#user", "u-https")
            await page.click("#start")
            await doc.state(running, within=SESSION_WAIT_S)
            await expect(page.locator("#state")).to_contain_text("RUNNING")
            await page.click("#stop")
            assert (await doc.event("session_ended"))["reason"] == "operator_stop"
            await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
            await expect(page.locator("#state")).to_contain_text("IDLE")
            await expect(page.locator("#banner")).to_be_hidden()
            await tab.shot("https-05-stopped")
    finally:
        daemon.stop()
    assert "[alert]" not in (nginx.dir / "error.log").read_text()


def alpn(port: int, ca: Path) -> str | None:
    """The protocol nginx selects when a client offers h2 and http/1.1 (ALPN), as a browser
    does; the handshake checks the certificate against ``ca``."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.selected_alpn_protocol()


def curl_http2(url: str, ca: Path, out: Path) -> str:
    """curl's HTTP version, status and Content-Type for ``url`` over HTTP/2, trusting ``ca``;
    the body goes to ``out``."""
    assert CURL is not None
    answer = "%{http_version} %{http_code} %{content_type}"
    command = [CURL, "-sS", "--http2", "--cacert", str(ca), "-o", str(out), "-w", answer, url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


@pytest.mark.asyncio
async def test_nginx_negotiates_http2_serves_the_page_and_sends_http_to_https(
    tmp_path: Path, pki: Pki
) -> None:
    """ALPN selects h2; curl over HTTP/2 gets the page and its MQTT client with their types;
    http://HOST/ answers with a redirect to the page over https; and a browser that trusts
    another CA, by the same means as the other test trusts the server's, refuses the page (that
    trust is the CA's, not a switch that accepts anything)."""
    nginx = started_nginx(tmp_path, pki, mqtt_port=free_port())  # no broker needed here
    try:
        assert await asyncio.to_thread(alpn, nginx.https_port, pki.ca) == "h2"

        if CURL is not None:
            for path, kind, content in (
                ("", "text/html", b"E-STOP"),
                ("node_modules/mqtt/dist/mqtt.min.js", "application/javascript", b"mqtt"),
            ):
                out = tmp_path / "curl.out"
                answer = await asyncio.to_thread(curl_http2, nginx.url + path, pki.ca, out)
                assert answer == f"2 200 {kind}"
                assert content in out.read_bytes()

        opener = urllib.request.build_opener(NoRedirect)
        with pytest.raises(urllib.error.HTTPError) as redirect:
            opener.open(f"http://127.0.0.1:{nginx.http_port}/?treadmill=tm-01", timeout=5)
        assert redirect.value.code == 301
        assert redirect.value.headers["Location"] == "https://127.0.0.1/?treadmill=tm-01"

        need_page()
        async with chromium(trust_ca=pki.other_ca) as browser:
            context = await browser.new_context()
            try:
                with pytest.raises(PlaywrightError, match="ERR_CERT_AUTHORITY_INVALID"):
                    await (await context.new_page()).goto(nginx.url)
            finally:
                await context.close()
    finally:
        nginx.stop()
