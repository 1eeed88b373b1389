"""The clinician's tablet page (``tablet/``) in a real browser, against the real daemon.

Debian's Chromium, driven by Playwright, opens the page from the WebSockets listener of a
test's private Mosquitto (its ``http_dir`` is ``tablet/``), and the page speaks contract v1 to
``treadguard run`` on the simulated belt. The test itself watches the same topics over MQTT,
plays the user's grip and fall sensors, and kills and restarts the broker. Each state the page
reaches is saved as a screenshot under ``build/screenshots/``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from playwright.async_api import FloatRect, Page, expect

from tests.browser import PAGE_DIR, TabletPage, chromium, need_page, tablet_page
from tests.clinician import (
    SESSION_WAIT_S,
    STANDSTILL_MPH,
    Clinician,
    clinician,
    running,
    sensor_user,
)
from tests.daemon_process import DaemonProcess, daemon_config
from tests.guided_commissioning import Technician, guided_config, guided_daemon, next_request
from tests.mosquitto import DAEMON_ENV, PASSWORDS, Broker, auth_lines, body, have_mosquitto
from tests.page_layout import check_layout
from treadguard.controller.journal import Journal

ONLINE_WAIT_MS = 10_000  # the daemon's start-up and first state
RECONNECT_WAIT_MS = 20_000  # the page's 1 s retry, the daemon's backoff (up to 5 s) and some
CONTROLS = ("#start", "#slower", "#faster", "#stop", "#reset", "#estop")  # E-STOP last


def need_broker_and_page() -> None:
    if not have_mosquitto():
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed: scripts/test installs it")
        pytest.skip("mosquitto is not installed (scripts/test installs it)")
    need_page()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """Here (and so for conftest's ``make_daemon``) the private Mosquitto also has the page's
    WebSockets listener, serving ``tablet/`` as its http_dir."""
    need_broker_and_page()
    b = Broker(tmp_path, http_dir=PAGE_DIR)
    b.start()
    try:
        yield b
    finally:
        b.kill()


def page_url(broker: Broker, tm: str) -> str:
    return f"http://127.0.0.1:{broker.ws_port}/?treadmill={tm}"


@asynccontextmanager
async def opened(
    broker: Broker, tm: str, *, timezone: str | None = None
) -> AsyncIterator[TabletPage]:
    """The page, opened and showing the treadmill online with its state; ``timezone``: the
    tablet's."""
    url = page_url(broker, tm)
    async with chromium() as browser, tablet_page(browser, url, timezone=timezone) as tab:
        await expect(tab.page.locator("body")).to_have_attribute(
            "data-online", "true", timeout=ONLINE_WAIT_MS
        )
        yield tab


@asynccontextmanager
async def desk(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tm: str
) -> AsyncIterator[tuple[Clinician, Page]]:
    """The daemon with MQTT sensors and a user holding on, another tablet that reads every
    command on the treadmill's topic (sending no heartbeat of its own), and the page."""
    make_daemon(treadmill_id=tm, sensors="mqtt")
    async with (
        sensor_user(broker, tm),
        clinician(broker, tm, heartbeat=False) as doc,
        opened(broker, tm) as tab,
    ):
        await doc.tab.subscribe(f"{doc.p}/cmd")
        yield doc, tab.page


async def logged_in_as_tablet(page: Page) -> None:
    """The login form filled in with the tablet account and its password, until the page is
    online."""
    await page.fill("#login-user", "tablet")
    await page.fill("#login-password", PASSWORDS["tablet"])
    await page.click("#login button")
    await expect(page.locator("body")).to_have_attribute(
        "data-online", "true", timeout=ONLINE_WAIT_MS
    )


async def next_command(doc: Clinician, type_: str, within: float = 5.0) -> dict[str, Any]:
    """The next command of ``type_`` the page published on ``<p>/cmd``."""

    def wanted(message: aiomqtt.Message) -> bool:
        command = body(message)
        return isinstance(command, dict) and command.get("type") == type_

    command = body(await doc.tab.next(f"{doc.p}/cmd", wanted, within=within))
    assert isinstance(command, dict)
    return command


async def refusal(doc: Clinician, command_id: str) -> str:
    reply = await doc.reply_to(command_id)
    assert reply["ok"] is False, reply
    message = reply["error"]["message"]
    assert isinstance(message, str)
    return message


# The shipped programs' titles (config/programs/): the page names a program by its title.
TITLES = {
    "first_session": "First treadmill session",
    "reverse_walking": "Reverse walking",
}


def as_shown(message: str) -> str:
    """The page's words for a refusal: the reply's own message, its programs by their titles."""
    for name, title in TITLES.items():
        message = message.replace(name, title)
    return "Refused: " + message[0].upper() + message[1:]


# ----------------------------------------------------------------------------- a session


USER = "u-pag\u00e9"  # the code test_sr1_sr3_a_whole_session_by_clicking starts a session for


@pytest.mark.asyncio
async def test_sr1_sr3_a_whole_session_by_clicking(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """A refusal in the reply's words, a start with the program left to the daemon (the user's
    history), the countdown, speed -/+ in 0.1 mph steps that stop at the band's edge, and a
    controlled stop; all from the page, checked on the MQTT topics too."""
    tm = "tm-page"
    make_daemon(treadmill_id=tm, sensors="mqtt")
    async with (
        sensor_user(broker, tm),
        clinician(broker, tm, heartbeat=False) as doc,  # only watches: the page beats
        opened(broker, tm) as tab,
    ):
        await doc.tab.subscribe(f"{doc.p}/cmd")
        page = tab.page
        await expect(page.locator("#state")).to_contain_text("IDLE")
        await expect(page.locator("#start")).to_be_disabled()  # no user yet
        # Typed as e and a combining accent (a keyboard that composes nothing): sent composed,
        # the one code of that text (contract/codes.py).
        await page.fill("#user", "u-pag\u0065\u0301")
        await expect(page.locator("#start")).to_be_enabled()
        await expect(page.locator("#session-info")).to_have_text("No session")
        await check_layout(page, "idle", shots="layout-idle")
        await tab.shot("01-idle")

        # The programs offered are the daemon's own (config/programs/), from the state.
        options = await page.locator("#program option").all_text_contents()
        assert options == [
            "From history",
            "First treadmill session",
            "Intervals",
            "Reverse walking",
        ]
        await expect(page.locator("#program-hint")).to_have_text(
            "From history: First treadmill session for a first session, after that the proposed "
            "session, in the phase the patient has reached."
        )

        # A later program for a user with no session on record: refused, in the daemon's words.
        await page.select_option("#program", "reverse_walking")
        await page.click("#start")
        command = await next_command(doc, "start_session")
        message = await refusal(doc, command["id"])
        assert "first" in message
        assert "first_session" in message  # the daemon names the program by its name ...
        await expect(page.locator("#message")).to_have_text(as_shown(message))
        await expect(page.locator("#message")).to_contain_text("(First treadmill session)")
        await expect(page.locator("#message")).not_to_contain_text("_")  # ... the page, its title
        await check_layout(page, "a refusal shown", shots="layout-refusal")
        await tab.shot("02-start-refused")

        # "From history": the page leaves the program out, and the daemon picks the first one.
        # A double tap sends one start: the button is off while the first awaits its answer.
        # Both taps in one turn of the page's event loop, before any answer can arrive.
        await page.select_option("#program", index=0)
        await page.evaluate(
            "() => { const b = document.getElementById('start'); b.click(); b.click(); }"
        )
        command = await next_command(doc, "start_session")
        sent_at = command.pop("ts")
        assert command == {"id": command["id"], "type": "start_session", "user": USER}
        assert abs(sent_at - time.time()) < 5.0  # stamped, so that a late delivery is refused
        await expect(page.locator("#countdown")).to_be_visible()
        await expect(page.locator("#countdown")).to_contain_text("Belt starts in")
        await expect(page.locator("#state")).to_contain_text("COUNTDOWN")
        await expect(page.locator("#message")).to_be_hidden()
        # The state's target is 0 while the belt is held still: the page shows the target the
        # session will run at, the same as the set target beside it.
        await expect(page.locator("#target")).to_have_text("0.80")
        await expect(page.locator("#set-target")).to_have_text("0.8")
        await check_layout(page, "countdown", shots="layout-countdown")
        await tab.shot("03-countdown")

        await doc.state(running, within=SESSION_WAIT_S)
        # Seconds after the taps: a second start would have arrived long since.
        later = [body(m) for m in doc.tab.drain(f"{doc.p}/cmd")]
        assert not [c for c in later if isinstance(c, dict) and c["type"] == "start_session"]
        await expect(page.locator("#state")).to_contain_text("RUNNING")
        await expect(page.locator("#countdown")).to_be_hidden()
        await expect(page.locator("#session-info")).to_contain_text(
            f"{USER}, First treadmill session"
        )
        await expect(page.locator("#set-target")).to_have_text("0.8")
        await expect(page.locator("#slower")).to_be_disabled()  # 0.8 is the band's bottom

        for shown in ("0.9", "1.0", "1.1", "1.2"):
            await page.click("#faster")
            assert (await next_command(doc, "set_speed"))["mph"] == float(shown)
            await expect(page.locator("#set-target")).to_have_text(shown)
        await expect(page.locator("#faster")).to_be_disabled()  # 1.2 is the band's top
        doc.tab.drain(f"{doc.p}/state")  # 1.1 was on the way up too
        await page.click("#slower")
        assert (await next_command(doc, "set_speed"))["mph"] == 1.1
        await doc.state(lambda s: s["target_mph"] == 1.1, within=5.0)
        await expect(page.locator("#target")).to_have_text("1.10")
        await doc.state(lambda s: s["speed_mph"] >= 1.05, within=5.0)
        await expect(page.locator("#progress")).not_to_have_attribute("aria-valuenow", "0")
        await expect(page.locator("#grip-left")).to_contain_text("Left hand: held")
        await check_layout(page, "running", shots="layout-running")
        await tab.shot("04-running")

        await page.click("#stop")
        ended = await doc.event("session_ended")
        assert ended["reason"] == "operator_stop"
        belt_s = int(ended["belt_moving_s"] + 0.5)  # as the page rounds it (Math.round)
        await doc.state(
            lambda s: s["state"] == "idle" and s["speed_mph"] <= STANDSTILL_MPH,
            within=SESSION_WAIT_S,
        )
        await expect(page.locator("#state")).to_contain_text("IDLE")
        # The session just ended stays in view until the next starts: how it ended, its top
        # speed (the page saw the belt at 1.05 mph or more) and the belt time the daemon counted.
        await expect(page.locator("#session-info")).to_have_text(
            re.compile(
                rf"^Last session \S+ \({USER}, First treadmill session\): Stopped from a tablet; "
                r"top speed 1\.(0[5-9]|1\d|20) mph\.$"
            )
        )
        assert belt_s > 0
        await expect(page.locator("#elapsed")).to_have_text(
            re.compile(rf"^{belt_s // 60}:{belt_s % 60:02d} of \d+:\d\d$")
        )
        await expect(page.locator("#remaining")).to_have_text("ended")
        await check_layout(page, "idle after a session", shots="layout-ended")
        await expect(page.locator("#log")).to_contain_text("Session ended: session")
        await expect(page.locator("#log")).to_contain_text("stopped from a tablet")
        await expect(page.locator("#log")).not_to_contain_text("Offline")  # not for a moment
        await tab.shot("05-stopped")


@pytest.mark.asyncio
async def test_sr4_sr6_grips_released_show_the_banner_within_a_second_and_reset(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """Both grips released through the MQTT sensor topics: the E-STOP banner names the cause
    in words within one second. Reset is refused while the hands are off (the reply's words
    shown), and accepted once they hold again; then the page's own E-STOP button, and Reset
    again, the banner asking for nothing but Reset. A long treadmill id beside the badge."""
    tm = "tm-ward-3-east-wing-handrails-07"  # the longest id (32): the state badge stays whole
    make_daemon(treadmill_id=tm, sensors="mqtt")
    async with (
        sensor_user(broker, tm) as user,
        clinician(broker, tm, heartbeat=False) as doc,
        opened(broker, tm) as tab,
    ):
        await doc.tab.subscribe(f"{doc.p}/cmd")
        page = tab.page
        banner = page.locator("#banner")
        await page.fill("#user", "u-grip")
        await page.click("#start")
        await doc.state(running, within=SESSION_WAIT_S)
        await expect(page.locator("#reset")).to_be_disabled()  # nothing is latched

        released = time.monotonic()
        user.values["grip_left"] = user.values["grip_right"] = False
        await expect(banner).to_be_visible(timeout=1000)
        await expect(page.locator("#banner-cause")).to_have_text(
            "Both hands off the handrails", timeout=1000
        )
        assert time.monotonic() - released < 1.0
        assert (await doc.event("estop"))["cause"] == "grip_lost"
        await expect(page.locator("#state")).to_contain_text("E-STOP")
        await expect(page.locator("#setup")).to_be_hidden()  # Stop and Reset stay in view
        await expect(page.locator("#grip-left")).to_contain_text("RELEASED")
        await expect(page.locator("#grip-right")).to_contain_text("RELEASED")
        await tab.shot("06-estop-grip-lost")
        # The session it ended stays in view, with how it ended.
        await expect(page.locator("#session-info")).to_contain_text(": Emergency stop; top speed")

        # SR-6: refused while the cause is still there, in the daemon's words.
        await doc.until(lambda s: s["speed_mph"] <= STANDSTILL_MPH, within=5.0)
        await expect(page.locator("#reset")).to_be_enabled()
        await page.click("#reset")
        message = await refusal(doc, (await next_command(doc, "reset"))["id"])
        assert "grip" in message
        await expect(page.locator("#message")).to_have_text(as_shown(message))
        await expect(banner).to_be_visible()
        await expect(page.locator("#banner-hint")).to_have_text(
            "Put both hands back on the handrails, then press Reset."
        )
        await check_layout(page, "E-STOP latched, a refusal shown", shots="layout-estop")
        await tab.shot("07-reset-refused")

        user.values["grip_left"] = user.values["grip_right"] = True
        await expect(page.locator("#grip-left")).to_contain_text("held")
        await expect(page.locator("#grip-right")).to_contain_text("held")
        await page.click("#reset")
        assert (await doc.event("reset"))["cleared"] == "grip_lost"
        await expect(banner).to_be_hidden()
        await expect(page.locator("#state")).to_contain_text("IDLE")
        await expect(page.locator("#message")).to_be_hidden()
        await tab.shot("08-reset")

        # The session the E-STOP ended asks for its record in the setup's place; Later puts it
        # off, and the setup is back.
        await expect(page.locator("#record")).to_be_visible()
        await expect(page.locator("#setup")).to_be_hidden()
        await page.click("#record-later")
        await expect(page.locator("#record")).to_be_hidden()
        await expect(page.locator("#setup")).to_be_visible()

        # The page's E-STOP, pressed during a countdown: latched as remote_estop.
        await page.click("#start")
        await expect(page.locator("#state")).to_contain_text("COUNTDOWN")
        await page.click("#estop")
        assert (await doc.event("estop"))["cause"] == "remote_estop"
        await expect(page.locator("#banner-cause")).to_have_text(
            "The E-STOP was pressed on a tablet"
        )
        # Nothing to clear: the banner asks only for Reset (once the belt stands still).
        await expect(page.locator("#banner-hint")).to_have_text(
            "Nothing to clear: press Reset when you are ready."
        )
        await expect(page.locator("#banner")).not_to_contain_text("Clear the cause")
        await tab.shot("09-estop-button")
        await page.click("#reset")
        assert (await doc.event("reset"))["cleared"] == "remote_estop"
        await expect(banner).to_be_hidden()


# ----------------------------------------------------------------------------- the link


@pytest.mark.asyncio
async def test_the_page_goes_offline_with_the_broker_and_comes_back(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """A hung broker, then the broker killed and restarted, while the page stays open: every
    control is off and the page says why; then it reconnects by itself, sees the daemon online
    and beats again."""
    tm = "tm-page-link"
    daemon = make_daemon(treadmill_id=tm)
    async with opened(broker, tm) as tab:
        page = tab.page
        await page.fill("#user", "u-link")
        await expect(page.locator("#start")).to_be_enabled()
        await page.evaluate("window.sameDocument = true")  # gone if the page reloaded

        # A hung broker keeps the connection open and answers nothing: the page's heartbeats
        # go unanswered, and that alone turns the controls off.
        broker.freeze()
        try:
            await expect(page.locator("#offline")).to_contain_text(
                "the treadmill does not answer", timeout=5000
            )
            for control in CONTROLS[:-1]:
                await expect(page.locator(control)).to_be_disabled()
            # E-STOP stays live while the link to the broker is up: a stop can never hurt.
            await expect(page.locator("#estop")).to_be_enabled()
            await expect(page.locator("#estop")).to_contain_text("also use the treadmill's")
            await expect(page.locator("#last-known")).to_be_visible()
            await expect(page.locator("#log")).to_contain_text("Offline: the treadmill does not")
        finally:
            broker.thaw()
        await expect(page.locator("body")).to_have_attribute("data-online", "true")

        broker.kill()
        await expect(page.locator("body")).to_have_attribute("data-online", "false")
        await expect(page.locator("#link")).to_contain_text("disconnected")
        await expect(page.locator("#offline")).to_contain_text("treadmill's own stop button")
        for control in CONTROLS:
            await expect(page.locator(control)).to_be_disabled()
        await expect(page.locator("#estop")).to_contain_text("no link")
        # The speed is not known: no figure that could read as the belt's.
        await expect(page.locator("#speed")).to_have_text("—")
        await expect(page.locator("#speed-unit")).to_have_text("no link")
        await expect(page.locator("#grip-left")).to_have_text("Left hand: ?")
        await check_layout(page, "offline", shots="layout-offline")
        await tab.shot("10-broker-lost")

        # The same ports; retained messages died with the old broker, so "online" is the
        # daemon's own, republished after it reconnected.
        await asyncio.to_thread(broker.start)
        await expect(page.locator("body")).to_have_attribute(
            "data-online", "true", timeout=RECONNECT_WAIT_MS
        )
        async with clinician(broker, tm, heartbeat=False) as doc:
            await doc.tab.subscribe(f"{doc.p}/cmd")
            assert await next_command(doc, "heartbeat")
        assert await page.evaluate("window.sameDocument") is True
        await expect(page.locator("#start")).to_be_enabled()
        await expect(page.locator("#estop")).to_be_enabled()
        await expect(page.locator("#log")).to_contain_text("Broker connection lost")
        await tab.shot("11-broker-back")
    assert daemon.alive()


@pytest.mark.asyncio
async def test_sr14_the_page_keeps_a_persistent_session_and_gets_the_estop_it_missed(
    tmp_path: Path,
) -> None:
    """The page's device id names a persistent MQTT session: the broker restarted (it saves
    its sessions), an emergency stop event published before the page is back (the page
    retries once a second) is held for it, and the page shows it once it reconnects, once,
    though it was published twice (QoS 1 sends again what it has no PUBACK for)."""
    need_broker_and_page()
    broker = Broker(tmp_path, http_dir=PAGE_DIR, persistence=True)
    broker.start()
    tm = "tm-page-away"
    try:
        url = page_url(broker, tm) + "&client_id=ward-3-page"
        async with chromium() as browser, tablet_page(browser, url) as tab:
            page = tab.page
            # Its subscriptions are in place (the session is saved with them) once the broker
            # has granted them; "Connected to" comes before that.
            await expect(page.locator("#log")).to_contain_text(f"Watching treadmill {tm}")
            first = {"type": "estop", "ts": time.time(), "cause": "grip_lost", "event_id": "b007-2"}
            async with aiomqtt.Client("127.0.0.1", broker.port) as daemon_stand_in:
                await daemon_stand_in.publish(
                    f"treadmill/{tm}/events", json.dumps(first).encode(), qos=1
                )
            await expect(
                page.locator("#log li", has_text="EMERGENCY STOP: both hands off the handrails")
            ).to_have_count(1)
            broker.stop()  # its sessions are saved, the page's among them
            await expect(page.locator("#link")).to_contain_text("disconnected")
            await asyncio.to_thread(broker.start)
            estop = {"type": "estop", "ts": time.time(), "cause": "fall", "event_id": "b007-3"}
            async with aiomqtt.Client("127.0.0.1", broker.port) as daemon_stand_in:
                for _ in range(2):
                    await daemon_stand_in.publish(
                        f"treadmill/{tm}/events", json.dumps(estop).encode(), qos=1
                    )
            log = page.locator("#log li", has_text="a fall was detected")
            await expect(log).to_have_count(1, timeout=RECONNECT_WAIT_MS)
            await expect(log).to_contain_text("EMERGENCY STOP")
            await expect(page.locator("#log")).not_to_contain_text("fall)")  # no codes
            await expect(page.locator("#log")).to_contain_text("Connected to")
            await tab.shot("12-estop-held-for-the-page")
    finally:
        broker.kill()


@pytest.mark.asyncio
async def test_sr12_the_heartbeat_runs_while_the_page_is_visible_only(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """One heartbeat a second while the page is visible; none while it is hidden (screen off,
    another app in front) or after it is closed."""
    tm = "tm-page-beat"
    make_daemon(treadmill_id=tm)
    async with clinician(broker, tm, heartbeat=False) as doc:
        await doc.tab.subscribe(f"{doc.p}/cmd")
        async with opened(broker, tm) as tab:
            arrivals = []
            for _ in range(3):
                command = await next_command(doc, "heartbeat", within=2.0)
                assert command["id"].startswith("page-")
                arrivals.append(time.monotonic())
            gaps = [b - a for a, b in itertools.pairwise(arrivals)]
            assert all(0.5 < gap < 1.5 for gap in gaps), gaps

            await tab.set_visibility("hidden")
            doc.tab.drain(f"{doc.p}/cmd")  # one may have been on its way
            with pytest.raises(TimeoutError):
                await next_command(doc, "heartbeat", within=2.5)
            await tab.set_visibility("visible")
            await next_command(doc, "heartbeat", within=2.0)
        doc.tab.drain(f"{doc.p}/cmd")
        with pytest.raises(TimeoutError):  # the page is closed
            await next_command(doc, "heartbeat", within=2.5)


# ----------------------------------------------------------------------------- the ACL


@pytest.mark.asyncio
async def test_sr15_the_page_logs_in_with_the_tablet_account_under_the_shipped_acl(
    tmp_path: Path,
) -> None:
    """With the shipped ACL and passwords the broker refuses the page until the clinician
    logs in with the tablet account; then it commands the treadmill."""
    need_broker_and_page()
    tm = "tm-page-acl"
    secured = Broker(tmp_path, extra=auth_lines(tmp_path), http_dir=PAGE_DIR)
    config = daemon_config(
        tmp_path, secured.port, treadmill_id=tm, mqtt_extra='username = "treadguard"'
    )
    daemon = DaemonProcess(config, tmp_path / "d.log", env=DAEMON_ENV)
    try:
        secured.start()
        daemon.start()
        async with (
            clinician(secured, tm, heartbeat=False, account="dashboard") as doc,
            chromium() as browser,
            tablet_page(browser, page_url(secured, tm)) as tab,
        ):
            page = tab.page
            await expect(page.locator("#login")).to_be_visible(timeout=ONLINE_WAIT_MS)
            await expect(page.locator("#link")).to_contain_text("login needed")
            # Nobody has typed yet: the form asks, it reports no error.
            await expect(page.locator("#login-why")).to_have_text(
                "The broker asks for a login: the tablet's account and its password."
            )
            await page.fill("#login-user", "tablet")
            await page.fill("#login-password", "not-the-password")
            await page.click("#login button")
            await expect(page.locator("#login-why")).to_contain_text(
                "The broker refused this account and password", timeout=ONLINE_WAIT_MS
            )
            await expect(page.locator("#login")).to_be_visible()
            await logged_in_as_tablet(page)
            # The patient view's queries go on the tablet account's own topic, and its
            # answers come back on the one only that account may read.
            await page.fill("#user", "u-acl")
            await page.click("#patient-open")
            await expect(page.locator("#patient-status")).to_have_text(
                "No sessions of u-acl on record yet.", timeout=ONLINE_WAIT_MS
            )
            await expect(page.locator("#proposal-reason")).to_contain_text(
                "no treadmill session on record"
            )
            await page.click("#patient-close")
            await page.click("#estop")
            event = await doc.event("estop")  # the dashboard account reads the events
            assert event["cause"] == "remote_estop"
            await expect(page.locator("#banner-cause")).to_have_text(
                "The E-STOP was pressed on a tablet"
            )
            stored = await page.evaluate("sessionStorage.getItem('treadguard.login')")
            assert json.loads(stored)["username"] == "tablet"
            assert await page.evaluate("localStorage.getItem('treadguard.login')") is None
    finally:
        daemon.stop()
        secured.kill()


@pytest.mark.asyncio
async def test_the_patient_view_says_at_once_that_the_treadmill_cannot_answer_its_questions(
    tmp_path: Path,
) -> None:
    """The daemon's connection for queries refused by the broker (no password for its account):
    the page reads it in the state and says so when the patient view opens, rather than asking
    a question nobody will hear and waiting out its time; the live view works as ever."""
    need_broker_and_page()
    tm = "tm-page-no-queries"
    secured = Broker(tmp_path, extra=auth_lines(tmp_path), http_dir=PAGE_DIR)
    config = daemon_config(
        tmp_path, secured.port, treadmill_id=tm, mqtt_extra='username = "treadguard"'
    )
    env = {"TREADGUARD_MQTT__PASSWORD": PASSWORDS["treadguard"]}  # none for the queries
    daemon = DaemonProcess(config, tmp_path / "d.log", env=env)
    try:
        secured.start()
        daemon.start()
        async with (
            chromium() as browser,
            tablet_page(browser, page_url(secured, tm)) as tab,
        ):
            page = tab.page
            await expect(page.locator("#login")).to_be_visible(timeout=ONLINE_WAIT_MS)
            await logged_in_as_tablet(page)
            await page.fill("#user", "u-noq")
            await page.click("#patient-open")
            await expect(page.locator("#patient-status")).to_have_text(
                "No history: The treadmill cannot answer record questions right now (its "
                "connection for them is down); sessions run as ever. Try again in a moment."
            )
        assert '"query_connection_up"' not in daemon.log_text()
    finally:
        daemon.stop()
        secured.kill()


# ----------------------------------------------------------------------------- commissioning


def _clear_of(box: FloatRect | None, other: FloatRect | None) -> bool:
    assert box is not None
    assert other is not None
    return (
        box["x"] + box["width"] <= other["x"]
        or other["x"] + other["width"] <= box["x"]
        or box["y"] + box["height"] <= other["y"]
        or other["y"] + other["height"] <= box["y"]
    )


@pytest.mark.asyncio
async def test_the_page_guides_a_commissioning_run_step_by_step_to_its_pass(
    broker: Broker,
) -> None:
    """`treadguard commission` on the machine, its every request confirmed on the page: the
    panel says step n of 7 and what to do in the run's words, Confirm sends the request it
    shows, the last proof's figures appear, and the run passes. The panel is readable, its
    buttons clear of the E-STOP, in landscape and in portrait."""
    tm = "tm-page-commission"
    config = guided_config(broker.workdir, broker.port, tm)
    async with (
        guided_daemon(config) as guided,
        clinician(broker, tm, heartbeat=False) as doc,
        sensor_user(broker, tm) as user,
        opened(broker, tm) as tab,
    ):
        await doc.tab.subscribe(f"{doc.p}/cmd")
        page = tab.page
        technician = Technician(guided, user)
        confirm = page.locator("#comm-confirm")
        done: set[tuple[str, str]] = set()
        while True:
            run = await next_request(doc, done)
            if run["outcome"] is not None:
                break
            await expect(page.locator("#commissioning")).to_be_visible()
            await expect(page.locator("#comm-step")).to_have_text(
                f"Commissioning: step {run['index']} of 7"
            )
            await expect(page.locator("#comm-prompt")).to_have_text(run["prompt"])
            if run["last_proof"] is not None:
                await expect(page.locator("#comm-proof")).to_contain_text(
                    run["last_proof"]["title"]
                )
            if run["ask"] == "release_left":
                await expect(page.locator("#comm-proof")).to_contain_text(
                    "Passed: E-STOP command: the belt stood still"
                )
                for size, name in (
                    ({"width": 1280, "height": 800}, "landscape"),
                    ({"width": 800, "height": 1280}, "portrait"),
                ):
                    await page.set_viewport_size(size)  # type: ignore[arg-type]
                    estop = await page.locator("#estop").bounding_box()
                    for button in ("#comm-confirm", "#comm-abort"):
                        await expect(page.locator(button)).to_be_in_viewport()
                        assert _clear_of(await page.locator(button).bounding_box(), estop)
                    await tab.shot(f"commissioning-{name}")
                await page.set_viewport_size({"width": 1280, "height": 800})
                await check_layout(page, "commissioning", shots="layout-commissioning")
            await expect(confirm).to_be_enabled()
            await technician.perform(run["ask"])
            await confirm.click()
            sent = await next_command(doc, "commission_confirm")
            assert (sent["step"], sent["ask"]) == (run["step"], run["ask"])
            done.add((run["step"], run["ask"]))
        assert run["outcome"] == "passed", run
        await expect(page.locator("#comm-prompt")).to_contain_text("Commissioning passed")
        await expect(confirm).to_be_disabled()
        await tab.shot("commissioning-passed")
        result = await guided.ended()
    assert result.passed, result


@pytest.mark.asyncio
async def test_the_page_s_abort_stops_the_belt_and_ends_the_commissioning(broker: Broker) -> None:
    """Abort on the page while the belt runs at the proof speed: an emergency stop, the run
    journaled as aborted, and the panel says so in words."""
    tm = "tm-page-commission-abort"
    config = guided_config(broker.workdir, broker.port, tm)
    async with (
        guided_daemon(config) as guided,
        clinician(broker, tm, heartbeat=False) as doc,
        sensor_user(broker, tm),
        opened(broker, tm) as tab,
    ):
        await doc.tab.subscribe(f"{doc.p}/cmd")
        page = tab.page
        run = await next_request(doc, set())
        assert (run["step"], run["ask"]) == ("estop", "stand_on")
        await expect(page.locator("#comm-prompt")).to_have_text(run["prompt"])
        await page.locator("#comm-confirm").click()
        run = await next_request(doc, {("estop", "stand_on")})
        assert run["ask"] == "give_estop"
        assert doc.latest is not None
        assert doc.latest["state"] == "running"
        await expect(page.locator("#comm-abort")).to_be_enabled()
        await page.locator("#comm-abort").click()
        await next_command(doc, "commission_abort")
        state = await doc.until(lambda s: s["latched"] is not None, within=2.0)
        assert state["latched"]["cause"] == "remote_estop"
        await doc.until(
            lambda s: s["speed_mph"] is not None and s["speed_mph"] <= STANDSTILL_MPH,
            within=SESSION_WAIT_S,
        )
        await expect(page.locator("#comm-prompt")).to_contain_text("Commissioning aborted")
        result = await guided.ended()
    assert result.outcome.value == "aborted"
    journal = Journal.read_only(broker.workdir / f"journal-{tm}.sqlite")
    assert [row.outcome for row in journal.commissioning_runs()] == ["aborted"]
