"""The tablet page's patient view and the clinician's record of a session, in a real browser
(Debian's Chromium), against the real daemon on a test's private Mosquitto, in landscape and in
portrait (tests/page_layout.py): the pain before a start, the pain, exertion and notes after it,
then the user's history, trend chart and last report, fed by the read-only queries
(docs/tablet-contract.md, "Queries"; docs/tablet-page.md, "The patient view").

These are slow (a session each, and `treadguard report` in a process of its own): run one at a
time, when the page or the queries change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.async_api import Page, expect

from tests.clinician import SESSION_WAIT_S, Clinician, clinician, ok, running
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker
from tests.page_layout import ORIENTATIONS, check_layout
from tests.test_tablet_page import broker, next_command, opened  # noqa: F401 (a fixture)

REPORT_WAIT_MS = 60_000  # the report page is written by `treadguard report`, in its own process
ANSWER_WAIT_MS = 10_000


async def trend(page: Page) -> dict[str, list[Any]]:
    """What the Chart.js chart on the page holds: each dataset's label and data."""
    data = await page.evaluate(
        """() => Object.fromEntries(
            Chart.getChart(document.getElementById("patient-trend"))
              .data.datasets.map((d) => [d.label, d.data]))"""
    )
    assert isinstance(data, dict)
    return data


async def session_on_record(doc: Clinician, user: str) -> str:
    """A session of ``user`` from another tablet, pain 6 before and 4 after: its id."""
    ok(await doc.command("start_session", user=user))
    state = await doc.state(running, within=SESSION_WAIT_S)
    session = str(state["session"]["id"])
    ok(await doc.command("outcome_before", session_id=session, pain=6))
    ok(await doc.command("stop"))
    await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
    ok(await doc.command("outcome_after", session_id=session, pain=4, notes="knee fine"))
    return session


@pytest.mark.asyncio
async def test_the_patient_view_shows_the_history_trend_and_report_and_gives_way_to_a_start(
    make_daemon: Callable[..., DaemonProcess],
    broker: Broker,  # noqa: F811
) -> None:
    tm = "tm-patient"
    make_daemon(treadmill_id=tm)  # the built-in user holds on
    async with clinician(broker, tm) as doc, opened(broker, tm) as tab:
        session = await session_on_record(doc, "u-pv")
        page = tab.page
        await page.click("#record-later")  # the other tablet has entered this session's record
        await expect(page.locator("#patient-open")).to_be_disabled()  # no user yet
        await page.fill("#user", "u-pv")
        await page.click("#patient-open")
        await expect(page.locator("#patient")).to_be_visible()
        await expect(page.locator("#controls")).to_be_hidden()  # in their place
        await expect(page.locator("#patient-title")).to_have_text(
            "User u-pv: 1 session", timeout=ANSWER_WAIT_MS
        )
        row = page.locator("#patient-history tbody tr")
        await expect(row).to_have_count(1)
        await expect(row).to_contain_text(f"{session}, ")
        await expect(row).to_contain_text("First treadmill session")
        await expect(row).to_contain_text("6 → 4")
        await expect(row).to_contain_text("Stopped from a tablet")
        # The proposal: the session stopped after a few seconds, so a first session again.
        await expect(page.locator("#patient-proposal")).to_be_visible()
        await expect(page.locator("#proposal-reason")).to_contain_text(
            "First treadmill session, 3 min: first session again"
        )
        await expect(page.locator("#proposal-rhythm")).to_have_text("3-4 sessions a week")
        chart = await trend(page)
        assert chart["Pain before"] == [6]
        assert chart["Pain after"] == [4]
        [belt] = chart["Belt minutes"]
        assert 0 < belt < 1  # stopped as soon as the belt ran
        report = page.frame_locator("#patient-report")
        await expect(report.locator("h1")).to_contain_text(
            f"session {session}", timeout=REPORT_WAIT_MS
        )
        await expect(report.locator("body")).to_contain_text("knee fine")
        await expect(page.locator("#patient-status")).to_be_empty()
        await check_layout(page, "the patient view", shots="layout-patient")

        # A start from another tablet: the view gives way, and Stop is there at once.
        ok(await doc.command("start_session", user="u-other"))
        await expect(page.locator("#patient")).to_be_hidden()
        await expect(page.locator("#stop")).to_be_enabled()
        await doc.state(running, within=SESSION_WAIT_S)
        ok(await doc.command("stop"))
        await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)

        # Back closes it too; a user with no sessions is said so.
        await page.click("#record-later")  # the record of u-other's session: not now
        await page.fill("#user", "u-new")
        await page.click("#patient-open")
        await expect(page.locator("#patient-status")).to_have_text(
            "No sessions of u-new on record yet.", timeout=ANSWER_WAIT_MS
        )
        await expect(page.locator("#patient-report")).to_be_hidden()
        await page.click("#patient-close")
        await expect(page.locator("#patient")).to_be_hidden()
        await expect(page.locator("#start")).to_be_enabled()


@pytest.mark.asyncio
@pytest.mark.parametrize(("orientation", "size"), ORIENTATIONS, ids=[o for o, _ in ORIENTATIONS])
async def test_the_record_of_a_session_entered_on_the_page_in_each_orientation(
    make_daemon: Callable[..., DaemonProcess],
    broker: Broker,  # noqa: F811
    orientation: str,
    size: Any,
) -> None:
    """Pain before the start, then after the session the pain, exertion and notes, all by
    tapping the page held one way; then the patient view shows what was entered."""
    tm = f"tm-record-{orientation}"
    user = f"u-{orientation}"
    make_daemon(treadmill_id=tm)
    async with clinician(broker, tm, heartbeat=False) as doc, opened(broker, tm) as tab:
        await doc.tab.subscribe(f"{doc.p}/cmd")
        page = tab.page
        await page.set_viewport_size(size)
        await page.fill("#user", user)
        await page.select_option("#pain-before", "4")
        await page.click("#start")
        before = await next_command(doc, "outcome_before", within=SESSION_WAIT_S)
        assert before["pain"] == 4
        assert (await doc.reply_to(before["id"]))["ok"] is True
        await doc.state(running, within=SESSION_WAIT_S)
        await page.click("#stop")
        await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
        await expect(page.locator("#record")).to_be_visible()
        await page.select_option("#pain-after", "2")
        await page.select_option("#exertion", "6")
        await page.fill("#record-notes", "walked tall")
        await page.click("#record-save")
        after = await next_command(doc, "outcome_after")
        assert {k: after[k] for k in ("pain", "exertion", "notes")} == {
            "pain": 2,
            "exertion": 6,
            "notes": "walked tall",
        }
        assert (await doc.reply_to(after["id"]))["ok"] is True
        await expect(page.locator("#setup")).to_be_visible()

        await page.click("#patient-open")
        row = page.locator("#patient-history tbody tr")
        await expect(row).to_contain_text("4 → 2", timeout=ANSWER_WAIT_MS)
        report = page.frame_locator("#patient-report")
        await expect(report.locator("body")).to_contain_text("walked tall", timeout=REPORT_WAIT_MS)
        await expect(report.locator("body")).to_contain_text("exertion 6/10")
        await tab.shot(f"patient-{orientation}")
