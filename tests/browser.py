"""Debian's Chromium, driven by Playwright, on the tablet page that a test's Mosquitto serves.

No browser is downloaded: Playwright starts ``/usr/bin/chromium`` (``scripts/test`` installs
Debian's package), headless, without the background services that would try to reach the
network. The page and its MQTT client come from ``tablet/`` (``npm ci`` there, which
``scripts/test`` runs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, ViewportSize, async_playwright

from treadguard.controller.page_words import render as render_page_words

ROOT = Path(__file__).resolve().parents[1]
PAGE_DIR = ROOT / "tablet"
MQTT_JS = PAGE_DIR / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"
CHART_JS = PAGE_DIR / "node_modules" / "chart.js" / "dist" / "chart.umd.min.js"
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "build" / "screenshots"
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}  # a 10-inch tablet in landscape
ARGS = [
    "--headless",
    "--no-sandbox",  # the tests run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium keeps trying to reach Google's services from a closed network.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def need_page() -> None:
    """Skip (fail in CI) without Chromium or the page's MQTT client and chart library. The
    page's words (tablet/words.js, generated, not committed) are written here as scripts/test
    writes them, so a test never serves a stale copy."""
    words = PAGE_DIR / "words.js"
    text = render_page_words()
    if not words.exists() or words.read_text(encoding="utf-8") != text:
        # Written aside and renamed: a page another test is serving never reads half a file.
        partial = words.with_name(f".words.js.{os.getpid()}")
        partial.write_text(text, encoding="utf-8")
        partial.replace(words)
    missing = []
    if not CHROMIUM.exists():
        missing.append("chromium (apt-get install chromium)")
    if not MQTT_JS.exists():
        missing.append("the page's MQTT client (npm ci in tablet/)")
    if not CHART_JS.exists():
        missing.append("the page's chart library (npm ci in tablet/)")
    if missing:
        why = "missing: " + ", ".join(missing) + "; scripts/test installs them"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


CERTUTIL = shutil.which("certutil")  # Debian's libnss3-tools


def need_certutil() -> None:
    """Skip (fail in CI) without NSS's certutil, which puts a test CA in a browser's trust."""
    if CERTUTIL is None:
        why = "certutil is not installed (apt-get install libnss3-tools); scripts/test installs it"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def nss_home(home: Path, ca: Path) -> Path:
    """A home folder whose NSS database ($HOME/.pki/nssdb, where Chromium on Linux keeps the
    user's certificates) trusts ``ca`` to identify servers, and nothing else besides the
    built-in roots: what a tablet with the clinic's CA installed has."""
    assert CERTUTIL is not None
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)

    def certutil(*args: str) -> None:
        subprocess.run(
            [CERTUTIL, "-d", f"sql:{db}", *args], check=True, capture_output=True, timeout=30
        )

    certutil("-N", "--empty-password")
    # "C,,": a CA trusted to issue server certificates (not e-mail or code signing ones).
    certutil("-A", "-n", "treadguard test CA", "-t", "C,,", "-i", str(ca))
    return home


@asynccontextmanager
async def chromium(trust_ca: Path | None = None) -> AsyncIterator[Browser]:
    """``trust_ca``: a CA certificate (tests/pki.py) the browser trusts, from the NSS database
    of a home folder of its own (:func:`nss_home`), the way a tablet with the clinic's CA
    installed trusts the board; a server certificate no trusted CA signed is still refused.
    Without it the browser trusts what the user running the tests does."""
    async with AsyncExitStack() as stack:
        env: dict[str, str | float | bool] | None = None
        if trust_ca is not None:
            need_certutil()
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="tg-browser-")))
            env = {**os.environ, "HOME": str(nss_home(home, trust_ca))}
        p = await stack.enter_async_context(async_playwright())
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, env=env)
        try:
            yield browser
        finally:
            await browser.close()


class TabletPage:
    """One open tablet page; it keeps the page's uncaught errors for the test to check."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    async def open(self, url: str) -> None:
        await self.page.goto(url)

    async def shot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        await self.page.screenshot(path=str(path))
        return path

    async def set_visibility(self, state: str) -> None:
        """What the browser does when the tablet's screen goes off or another app comes to the
        front: ``document.visibilityState`` changes and ``visibilitychange`` fires. Headless
        Chromium never hides a page by itself, so the test does what the browser would."""
        await self.page.evaluate(
            """(state) => {
                Object.defineProperty(document, "visibilityState", {
                    configurable: true, get: () => state,
                });
                document.dispatchEvent(new Event("visibilitychange"));
            }""",
            state,
        )


@asynccontextmanager
async def tablet_page(
    browser: Browser, url: str, *, timezone: str | None = None
) -> AsyncIterator[TabletPage]:
    """``timezone``: the tablet's own (its IANA name), when it must not be this machine's."""
    # Fresh storage for every page.
    context = await browser.new_context(viewport=VIEWPORT, timezone_id=timezone)
    try:
        tab = TabletPage(await context.new_page())
        await tab.open(url)
        yield tab
        assert tab.errors == [], tab.errors
    finally:
        await context.close()
