"""Debian's Chromium, driven by Playwright, on the tablet page that a test's Mosquitto serves.

No browser is downloaded: Playwright starts ``/usr/bin/chromium`` (``scripts/test`` installs
Debian's package), headless, without the background services that would try to reach the
network. The page and its MQTT client come from ``tablet/`` (``npm ci`` there, which
``scripts/test`` runs).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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


@asynccontextmanager
async def chromium(trust_spki: str | None = None) -> AsyncIterator[Browser]:
    """``trust_spki``: the base64 SHA-256 of a server key (tests/pki.py) whose certificate the
    browser accepts, as a tablet with the clinic's CA installed accepts the board's; for any
    other certificate it still refuses https."""
    args = (
        ARGS
        if trust_spki is None
        else [*ARGS, f"--ignore-certificate-errors-spki-list={trust_spki}"]
    )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=args)
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
