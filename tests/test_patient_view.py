"""The tablet page's patient view and the clinician's record of a session, in a real browser
(Debian's Chromium), against the real daemon on a test's private Mosquitto, in landscape and in
portrait (tests/page_layout.py): the pain before a start, the pain, exertion and notes after it,
then the user's history, trend chart and last report, fed by the read-only queries
(docs/tablet-contract.md, "Queries"; docs/tablet-page.md, "The patient view"), and a measure of
the user entered there (docs/plan.md, "Measures"), or turned down in words.

These are slow (a session each, and `treadguard report` in a process of its own): run one at a
time, when the page or the queries change.
"""

from __future__ import annotations

import re
import time as clock
from collections.abc import Callable
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Page, expect

from tests.browser import chromium, tablet_page
from tests.clinician import SESSION_WAIT_S, Clinician, clinician, ok, refused, running
from tests.daemon_process import DaemonProcess
from tests.mosquitto import Broker
from tests.page_layout import ORIENTATIONS, check_layout
from tests.tablet_queries import tablet_queries
from tests.test_daemon_from_history import seed_first_session
from tests.test_tablet_page import (  # noqa: F401 (broker: a fixture)
    ONLINE_WAIT_MS,
    broker,
    next_command,
    opened,
    page_url,
)
from treadguard.config.loading import WALL_STEP_FILE_ENV
from treadguard.contract.measures import MEASURES, MeasureKind

REPORT_WAIT_MS = 60_000  # the report page is written by `treadguard report`, in its own process
ANSWER_WAIT_MS = 10_000
# The clinic and the tablet 25 hours apart: whatever the hour, their calendars are on different
# days, so a measure dated by the tablet's calendar rather than the clinic's cannot pass.
CLINIC_ZONE = "Pacific/Kiritimati"  # UTC+14
TABLET_ZONE = "Pacific/Pago_Pago"  # UTC-11


def clinic_days() -> set[str]:
    """Today in the clinic's zone, and tomorrow should midnight come during the test."""
    today = datetime.now(ZoneInfo(CLINIC_ZONE)).date()
    return {today.isoformat(), (today + timedelta(days=1)).isoformat()}


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
        await doc.tab.subscribe(f"{doc.p}/cmd")
        session = await session_on_record(doc, "u-pv")
        page = tab.page
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
        await expect(page.locator("#proposal-start")).to_be_hidden()  # it starts the proposal
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
        await expect(page.locator("#patient-measures")).to_be_hidden()  # none taken yet
        await expect(page.locator("#measure")).to_be_hidden()  # until asked for
        await check_layout(page, "the patient view", shots="layout-patient")

        # A measure the page turns down itself, in words beside what was typed, which stays.
        await page.click("#measure-open")
        status = page.locator("#measure-status")
        koos = MEASURES[MeasureKind.KOOS]
        await page.select_option("#measure-kind", "koos")
        await expect(page.locator("#measure-range")).to_have_text(f"Value, {koos.range_words()}")
        await page.click("#measure-save")
        await expect(status).to_have_text(f"Not saved: type the KOOS ({koos.range_words()}).")
        await page.fill("#measure-value", "6O")  # a letter O for a zero
        await page.click("#measure-save")
        await expect(status).to_contain_text('Not saved: "6O" is not a number.')
        await page.fill("#measure-value", "150")
        await page.click("#measure-save")
        await expect(status).to_have_text(f"Not saved: a KOOS is {koos.range_words()}, not 150.")
        await expect(page.locator("#measure-value")).to_have_value("150")
        await expect(page.locator("#measure-value")).to_be_focused()
        await page.fill("#measure-value", "64.35")  # KOOS is kept to 0.1
        await page.click("#measure-save")
        await expect(status).to_have_text(
            f"Not saved: a KOOS is {koos.range_words()} in steps of 0.1, not 64.35."
        )
        await page.fill("#measure-value", "62")
        await page.fill("#measure-date", "2999-01-01")
        await page.click("#measure-save")
        await expect(status).to_contain_text("Not saved: 2999-01-01 is after today")
        # One the treadmill turns down (the page does not know its earliest day): its words.
        await page.fill("#measure-date", "1989-12-31")
        await page.click("#measure-save")
        # The first measure the page sent: none of the ones it turned down went out.
        sent = await next_command(doc, "record_measure")
        assert {k: sent[k] for k in ("user", "kind", "value", "date")} == {
            "user": "u-pv",
            "kind": "koos",
            "value": 62,
            "date": "1989-12-31",
        }
        why = refused(await doc.reply_to(sent["id"]), "out_of_range")
        await expect(status).to_have_text(f"Refused: {why[0].upper()}{why[1:]}")
        assert "1989-12-31" in why
        await expect(page.locator("#measure-value")).to_have_value("62")
        await expect(page.locator("#measure-date")).to_have_value("1989-12-31")
        await expect(page.locator("#message")).to_be_hidden()  # said beside the form only
        await check_layout(page, "a measure refused", shots="layout-measure")
        await page.click("#measure-close")
        await expect(page.locator("#measure-open")).to_be_visible()

        # A start from another tablet: the view gives way, and Stop is there at once.
        ok(await doc.command("start_session", user="u-other"))
        await expect(page.locator("#patient")).to_be_hidden()
        await expect(page.locator("#stop")).to_be_enabled()
        await doc.state(running, within=SESSION_WAIT_S)
        ok(await doc.command("stop"))
        await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
        # Another tablet's session: its record is asked there, not here.
        await expect(page.locator("#record")).to_be_hidden()

        # Back closes it too; a user with no sessions is said so.
        await page.fill("#user", "u-new")
        await page.click("#patient-open")
        await expect(page.locator("#patient-status")).to_have_text(
            "No sessions of u-new on record yet.", timeout=ANSWER_WAIT_MS
        )
        await expect(page.locator("#patient-report")).to_be_hidden()
        await page.click("#patient-close")
        await expect(page.locator("#patient")).to_be_hidden()
        await expect(page.locator("#start")).to_be_enabled()


# A measure entered in each orientation: its kind, as typed, as sent, and as the view shows it.
MEASURE_TYPED = {
    "landscape": ("tug", "12,5", 12.5, "12.5 s"),  # a comma-decimal keyboard's 12.5
    "portrait": ("womac", "31", 31, "31"),
}


@pytest.mark.asyncio
async def test_the_patient_view_says_what_from_history_starts_where_it_is_less_than_the_proposal(
    make_daemon: Callable[..., DaemonProcess],
    broker: Broker,  # noqa: F811
) -> None:
    """p-away's first session was 29 days ago, and nothing since: the proposal is intervals
    (by the calendar), a start from history keeps to reverse walking, and the view says so."""
    tm = "tm-patient-away"
    seed_first_session(broker, tm, 1, "p-away", (2, 2), days_ago=29)
    make_daemon(treadmill_id=tm)
    async with opened(broker, tm) as tab:
        page = tab.page
        await page.fill("#user", "p-away")
        await page.click("#patient-open")
        await expect(page.locator("#proposal-reason")).to_contain_text(
            "Intervals", timeout=ANSWER_WAIT_MS
        )
        await expect(page.locator("#proposal-start")).to_have_text(
            "From history starts Reverse walking, 5:00 min; choose Intervals with a cap of "
            "8 intervals to start the proposal."
        )


@pytest.mark.asyncio
async def test_a_start_from_history_is_held_to_what_the_patient_view_showed(
    make_daemon: Callable[..., DaemonProcess],
    broker: Broker,  # noqa: F811
) -> None:
    """The view shows p-held's first session again (pain rose 3 points); another tablet then
    corrects the pain entry, which lifts the hold, and the view is not asked again. From
    history, Start: the page sends what it showed, and the treadmill refuses the start it
    would now make (reverse walking, 5 min), rather than start it unseen."""
    tm = "tm-patient-shown"
    seed_first_session(broker, tm, 1, "p-held", (2, 5))
    make_daemon(treadmill_id=tm)
    async with clinician(broker, tm, heartbeat=False) as doc, opened(broker, tm) as tab:
        await doc.tab.subscribe(f"{doc.p}/cmd")
        page = tab.page
        await page.fill("#user", "p-held")
        await page.click("#patient-open")
        await expect(page.locator("#proposal-reason")).to_contain_text(
            "held at first treadmill session", timeout=ANSWER_WAIT_MS
        )
        ok(await doc.command("outcome_after", session_id="1", pain=2, user="p-held"))
        async with tablet_queries(broker, tm) as ask:  # the treadmill's book has it now
            proposal = (await ask("history", user="p-held"))["proposal"]
            assert proposal["program"] == "reverse_walking", proposal
        await page.click("#patient-close")
        await page.select_option("#program", "")  # From history
        await page.click("#start")
        sent = await next_command(doc, "start_session")
        assert "program" not in sent, sent
        assert sent["shown"] == {"program": "first_session", "cap_s": 180}, sent
        why = refused(await doc.reply_to(sent["id"]), "preconditions_unmet")
        assert "not the first_session at 180 s shown" in why, why


@pytest.mark.asyncio
async def test_the_patient_view_says_why_there_is_no_proposal(
    make_daemon: Callable[..., DaemonProcess],
    broker: Broker,  # noqa: F811
) -> None:
    """The daemon's configuration broken on disk since it started (its proposal worker
    cannot load it): the view says there is no proposal now, and why."""
    tm = "tm-patient-none"
    daemon = make_daemon(treadmill_id=tm)
    async with opened(broker, tm) as tab:
        daemon.break_configuration()
        page = tab.page
        await page.fill("#user", "u-none")
        await page.click("#patient-open")
        none = page.locator("#proposal-none")
        await expect(none).to_contain_text(
            "No proposal now: the configuration (", timeout=ANSWER_WAIT_MS
        )
        await expect(none).to_contain_text("cannot be loaded now")
        await expect(page.locator("#patient-proposal")).to_be_hidden()


@pytest.mark.asyncio
@pytest.mark.parametrize(("orientation", "size"), ORIENTATIONS, ids=[o for o, _ in ORIENTATIONS])
async def test_the_record_of_a_session_and_a_measure_entered_on_the_page_in_each_orientation(
    make_daemon: Callable[..., DaemonProcess],
    broker: Broker,  # noqa: F811
    orientation: str,
    size: Any,
) -> None:
    """Pain before the start, then after the session the pain, exertion and notes, all by
    tapping the page held one way; then the patient view shows what was entered; then a
    measure, dated today in the clinic's zone (not the tablet's), accepted and shown there."""
    tm = f"tm-record-{orientation}"
    user = f"u-{orientation}"
    make_daemon(treadmill_id=tm, extra=f'[clinic]\ntimezone = "{CLINIC_ZONE}"\n')
    async with (
        clinician(broker, tm, heartbeat=False) as doc,
        opened(broker, tm, timezone=TABLET_ZONE) as tab,
    ):
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

        kind, typed, value, shown = MEASURE_TYPED[orientation]
        title = MEASURES[MeasureKind(kind)].title
        await page.click("#measure-open")
        date = page.locator("#measure-date")
        await expect(date).to_have_value(re.compile(r"\d{4}-\d{2}-\d{2}"))
        today = await date.input_value()
        assert today in clinic_days()  # the clinic's today, by default
        await page.select_option("#measure-kind", kind)
        await page.fill("#measure-value", typed)
        await page.click("#measure-save")
        sent = await next_command(doc, "record_measure")
        assert {k: sent[k] for k in ("user", "kind", "value", "date")} == {
            "user": user,
            "kind": kind,
            "value": value,
            "date": today,
        }
        ok(await doc.reply_to(sent["id"]))
        await expect(page.locator("#measure-status")).to_have_text(
            f"Saved: {title} {shown}, taken {today}."
        )
        await expect(page.locator("#measure-value")).to_have_value("")  # ready for the next
        # The view asked again: the measure is the user's baseline of its kind.
        measures = page.locator("#measures-table tbody tr")
        await expect(measures).to_have_count(1, timeout=ANSWER_WAIT_MS)
        await expect(measures.locator("td")).to_have_text([title, f"{shown}, {today}", "-", "-"])
        await expect(measures).to_be_in_viewport()  # the view scrolled to it
        await expect(page.locator("#patient-history tbody tr")).to_contain_text("4 → 2")
        await tab.shot(f"patient-{orientation}")


# Before the clinic's midnight, by the treadmill's clock, when its daemon starts: time for two
# pages to open their measure entries, and no more (it is waited out in real time).
BEFORE_MIDNIGHT_S = 25.0


@pytest.mark.asyncio
async def test_the_measure_s_day_is_today_each_time_the_entry_opens_and_after_midnight(
    make_daemon: Callable[..., DaemonProcess],
    broker: Broker,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A patient view kept open past midnight dates a measure today, not yesterday: the day
    is today's in the clinic's zone, by the treadmill's clock, each time the entry is opened
    and as the day turns while it is open, unless the clinician chose the day. The treadmill's
    clock is set to just before the clinic's midnight (its daemon started with its wall clock
    stepped, as network time sets a board) and midnight passes with two pages' entries open:
    one left at today, one with a day the clinician chose."""
    tm = "tm-midnight"
    zone = ZoneInfo(CLINIC_ZONE)
    today = datetime.now(zone).date()
    midnight = datetime.combine(today + timedelta(days=1), time(0, 0), zone).timestamp()
    step = tmp_path / "wall-step"
    step.write_text(repr(midnight - BEFORE_MIDNIGHT_S - clock.time()), encoding="utf-8")
    make_daemon(
        {WALL_STEP_FILE_ENV: str(step)},
        treadmill_id=tm,
        extra=f'[clinic]\ntimezone = "{CLINIC_ZONE}"\n',
    )
    before, after = today.isoformat(), (today + timedelta(days=1)).isoformat()
    chosen = (today - timedelta(days=1)).isoformat()
    url = page_url(broker, tm)
    async with (
        chromium() as browser,
        tablet_page(browser, url, timezone=TABLET_ZONE) as left,
        tablet_page(browser, url, timezone=TABLET_ZONE) as picked,
    ):
        days = []
        for tab in (left, picked):
            page = tab.page
            await expect(page.locator("body")).to_have_attribute(
                "data-online", "true", timeout=ONLINE_WAIT_MS
            )
            await page.fill("#user", "u-night")
            await page.click("#patient-open")
            await expect(page.locator("#patient-status")).to_have_text(
                "No sessions of u-night on record yet.", timeout=ANSWER_WAIT_MS
            )
            await page.click("#measure-open")
            day = page.locator("#measure-date")
            await expect(day).to_have_value(before)  # the day before the treadmill's midnight
            days.append(day)
        left_day, picked_day = days
        await picked_day.fill(chosen)  # a measure taken the day before
        turned_ms = (BEFORE_MIDNIGHT_S + 10.0) * 1000  # bound: midnight, and a render after
        # Open while midnight passes: the day turns with it, where it was not chosen.
        await expect(left_day).to_have_value(after, timeout=turned_ms)
        await expect(left_day).to_have_attribute("max", after)
        # A day the clinician chose stays; only the latest day allowed moves on.
        await expect(picked_day).to_have_attribute("max", after, timeout=turned_ms)
        await expect(picked_day).to_have_value(chosen)
        # Closed, and opened again after midnight: today's day, or the one chosen.
        for tab, expected in ((left, after), (picked, chosen)):
            await tab.page.click("#measure-close")
            await tab.page.click("#measure-open")
            await expect(tab.page.locator("#measure-date")).to_have_value(expected)
