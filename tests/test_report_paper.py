"""The reports on paper (docs/reports.md, "On paper"): the session's and the patient's page
each print on one A4 page for the longest inputs the contract accepts, nothing runs off the
page's right edge, and what the printed page leaves off it says, while the page on screen
keeps it all.

The pages are written in-process (controller/report.py) and printed by one headless Chromium
(Playwright's ``page.pdf``, the browser's own print to PDF, at the page's CSS size), every case
in one browser, counted by tests/test_history_report.py's reading of the PDF.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from playwright.async_api import Page

from tests.browser import CHROMIUM, chromium
from tests.test_event_text import EXAMPLES
from tests.test_history_report import a4, pdf_pages
from treadguard.contract.mqtt import ID_MAX_CHARS, NOTES_MAX_CHARS
from treadguard.controller import report_fit as fit
from treadguard.controller.journal import EventRow, MeasureRow, SessionRow
from treadguard.controller.plan import Proposal
from treadguard.controller.report import (
    RECENT_ON_PAPER,
    Clinic,
    patient_report,
    session_report,
)
from treadguard.controller.system import OUTCOME_ENTRIES_MAX
from treadguard.safety.decisions import EventType, JsonScalar
from treadguard.safety.limits import HARD_CAP_S

T0 = 1_796_000_000.0  # 2026-11-29 19:53:20 in New York
ZONE = ZoneInfo("America/New_York")
PROGRAM_TITLE_MAX = 80  # config/progression.py and safety/programs.py: a title's length
TREADMILL = "tm-" + "9" * 29  # the longest treadmill id config/schema.py takes
CLINIC = Clinic(TREADMILL, ZONE, {"reverse_walking": "Reverse walking", "long": "L" * 80})
# The widest letter of DejaVu Sans, the page's first font: a code of it is the longest on paper.
WIDE_CODE = "W" * ID_MAX_CHARS
PROSE = (
    "Knee pain eased after the warm-up; walked steadily backwards, upright, with light hands "
    "on the rails. Asked to slow twice near the end. Review the step length next time. "
)


def notes(text: str = PROSE, length: int = NOTES_MAX_CHARS) -> str:
    return (text * (length // len(text) + 1))[:length]


def outcome(n: int, *, note: str | None, clinician: str | None) -> dict[str, JsonScalar]:
    fields: dict[str, JsonScalar] = {
        "session_id": "12",
        "when": "before" if n % 2 == 0 else "after",
        "pain": n % 11,
    }
    if n % 2:
        fields["exertion"] = 7
    if note is not None:
        fields["notes"] = note
    if clinician is not None:
        fields["clinician"] = clinician
    return fields


def session(
    minutes: float,
    *,
    note: str | None = None,
    entries: int = 2,
    user: str = "p-001",
    clinician: str | None = "c-12",
    crowd: bool = False,
    end: str = "cap",
) -> str:
    """A session of ``minutes`` of belt time, its samples twice a second as the daemon keeps
    them, ``entries`` entries of the clinician's record after it (before and after by turns,
    each with ``note``). ``crowd``: every kind of event, and a speed change every second, a
    refusal every other, a hand off the rail every tenth (each coalesced to a second, as the
    daemon journals them)."""
    belt = minutes * 60.0
    row = SessionRow(12, user, "reverse_walking", belt, T0, T0 + belt + 5, end, belt, 1.2)
    started: dict[str, JsonScalar] = {"session_id": "12", "user": user, "cap_s": belt}
    events = [
        EventRow(T0, EventType.SESSION_STARTED, started),
        *(EventRow(T0 + k, EventType.COUNTDOWN, {"seconds": 3.0 - k}) for k in range(3)),
        EventRow(T0 + 3, EventType.BELT_STARTED, {"target_mph": 0.8}),
    ]
    # What the daemon journals of any session of the program: the target raised each minute
    # to the top of the band, the clinician's speed changes, the cap's warning, the stop's
    # check.
    for k in range(1, int(minutes)):
        step = {"target_mph": min(1.2, 0.8 + 0.1 * k)}
        events.append(EventRow(T0 + 3 + 60 * k, EventType.SPEED_STEP, step))
        change = {"from_mph": step["target_mph"], "to_mph": 1.0, "clinician": clinician}
        events.append(EventRow(T0 + 33 + 60 * k, EventType.SPEED_CHANGED, change))
    events.append(EventRow(T0 + belt - 27, EventType.CAP_WARNING, {"remaining_s": 30.0}))
    checked = {**EXAMPLES[EventType.STOP_CHECKED], "kind": "controlled", "verdict": "ok"}
    events.append(EventRow(T0 + belt + 4, EventType.STOP_CHECKED, checked))
    if crowd:
        for k in range(int(belt) - 2):
            change = {"from_mph": 0.8, "to_mph": 1.0, "clinician": clinician, "count": 4}
            events.append(EventRow(T0 + 4 + k, EventType.SPEED_CHANGED, change))
            if k % 2 == 0:
                refused = {
                    "command": "set_speed",
                    "code": "out_of_range",
                    "message": "1.5 mph is above the program's top speed of 1.2 mph " * 2,
                    "count": 9,
                }
                events.append(EventRow(T0 + 4.5 + k, EventType.COMMAND_REFUSED, refused))
            if k % 10 == 0:
                grip = {"hand": "left", "cause": "sensor_stale"}
                events.append(EventRow(T0 + 4.6 + k, EventType.GRIP_WARNING, grip))
        events += [
            EventRow(T0 + belt / 2, kind, {**fields, "session_id": "12"})
            for kind, fields in EXAMPLES.items()
        ]
    if end == "estop":
        stop = {"cause": "fall", "detail": "fall sensor tripped", "stop_latency_ms": 1.2}
        events.append(EventRow(T0 + belt + 3, EventType.ESTOP, stop))
    else:
        events.append(EventRow(T0 + belt + 3, EventType.STOPPING, {"reason": end}))
    ended = {"session_id": "12", "reason": end, "belt_moving_s": belt}
    events.append(EventRow(T0 + belt + 5, EventType.SESSION_ENDED, ended))
    for k in range(entries):
        entry = outcome(k, note=note, clinician=clinician)
        events.append(EventRow(T0 + belt + 60 + k, EventType.OUTCOME_RECORDED, entry))
    events.sort(key=lambda e: e.ts)
    samples = [
        (T0 + 3 + k / 2, min(1.2, 0.1 * k), 1.2) for k in range(int(belt * 2) + 20)
    ]  # and the run-down after the end
    return session_report(row, events, samples, clinic=CLINIC, written=T0 + 3600)


def patient(count: int, *, user: str = "p-001", longest: bool = False) -> str:
    """``count`` sessions a day apart, pain before and after each, the proposal for the next
    with a note of the clinic's, and every kind of measure twice. ``longest``: the user's code,
    the program's and the phase's titles and the clinic's note as long as the contract and the
    clinic's files take them, without a space, and each session ended in the longest words."""
    program = "long" if longest else "reverse_walking"
    phase, title, note = ("P" * PROGRAM_TITLE_MAX, "T" * PROGRAM_TITLE_MAX, "N" * 200)
    if not longest:  # config/progression.py's phase and a note of a line
        phase, title, note = "Intervals", "Intervals", "Keep to 1.0 mph until the review."
    # How sessions mostly end; the longest take the ends whose words take two lines.
    endings: tuple[str, ...] = ("cap", "completed", "operator_stop", "cap", "estop")
    if longest:
        endings = ("tablet_lost", "interrupted")
    sessions = [
        SessionRow(
            n, user, program, 480.0, T0 + 86_400 * n, T0 + 86_400 * n + 490,
            endings[n % len(endings)], 470.0, 1.2,
        )
        for n in range(1, count + 1)
    ]  # fmt: skip
    outcomes = {n: {"before": {"pain": 10}, "after": {"pain": 10}} for n in range(1, count + 1)}
    proposal = Proposal(
        user,
        "later",
        phase,
        program,
        title,
        480.0,
        (3, 4),
        f"{title}, 8 min: held at {phase}: pain rose 3 points in session {count} on "
        "2027-09-23 (2 before, 5 after)",
        held=True,
        first_session_counted=True,
        week=43,
        note=note,  # config/progression.py: at most 200 characters
    )
    measures = [
        MeasureRow(2 * k + j, user, kind, 12.5 + j, f"2026-1{j}-02", T0, WIDE_CODE)
        for k, kind in enumerate(("tug", "koos", "womac", "walk_10m"))
        for j in range(2)
    ]
    return patient_report(
        user,
        sessions,
        clinic=CLINIC,
        written=T0,
        outcomes=outcomes,
        proposal=proposal,
        measures=measures,
    )


EIGHT_MINUTES = HARD_CAP_S / 60
CASES: dict[str, Callable[[], str]] = {
    # What was found to run onto a second page, or off the page's edge.
    "5 min, 250-character notes": lambda: session(5, note=notes(length=250)),
    "8 min, 200-character notes": lambda: session(EIGHT_MINUTES, note=notes(length=200)),
    "two 1000-character notes": lambda: session(5, note=notes()),
    "64-character codes": lambda: session(5, note="ok", user=WIDE_CODE, clinician=WIDE_CODE),
    # The most of everything the contract lets a session's record hold.
    "20 entries, the longest notes and codes": lambda: session(
        5, note=notes(), entries=OUTCOME_ENTRIES_MAX, user=WIDE_CODE, clinician=WIDE_CODE
    ),
    "notes of the widest letter": lambda: session(5, note="W" * NOTES_MAX_CHARS),
    "notes without a space, in CJK": lambda: session(5, note="膝" * NOTES_MAX_CHARS),
    "8 min with every kind of event, crowded": lambda: session(
        EIGHT_MINUTES,
        note=notes(),
        entries=OUTCOME_ENTRIES_MAX,
        user=WIDE_CODE,
        clinician=WIDE_CODE,
        crowd=True,
        end="estop",
    ),
    # Patients: past the 28 sessions that once filled a page, to hundreds.
    "a patient of 30 sessions": lambda: patient(30),
    "a patient of 300 sessions": lambda: patient(300),
    "a patient of 300 sessions, the longest code and titles": lambda: patient(
        300, user=WIDE_CODE, longest=True
    ),
}


@cache
def rendered(case: str) -> str:
    """A case's page, written once for the tests that look at it (matplotlib takes a second
    for the crowded session's chart)."""
    return CASES[case]()


# Every element outside the charts that runs past the page's right edge, or whose text runs
# out of its own box (a table cell's into the next); and whether the page scrolls sideways.
OVERFLOW_JS = """() => {
  const edge = document.documentElement.clientWidth + 0.5;
  const found = [];
  if (document.documentElement.scrollWidth > document.documentElement.clientWidth) {
    found.push(`the page is ${document.documentElement.scrollWidth} px wide`);
  }
  for (const el of document.body.querySelectorAll("*")) {
    if (el.closest("svg") || !el.checkVisibility()) continue;
    const box = el.getBoundingClientRect();
    const what = `${el.tagName.toLowerCase()} "${el.textContent.slice(0, 40)}"`;
    if (box.right > edge || box.left < -0.5) found.push(`${what} runs off the page`);
    if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).display !== "inline") {
      found.push(`${what}: its text runs out of its box`);
    }
  }
  return found;
}"""
# 186 mm (A4 less the margins) in CSS px: the width the page is laid out at for print.
PRINT_WIDTH_PX = round(fit.PAGE_WIDTH_MM / 25.4 * 96)


def need_chromium() -> None:
    if not CHROMIUM.exists():
        why = "chromium is not installed (apt-get install chromium; scripts/test installs it)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.mark.asyncio
async def test_every_report_prints_on_one_a4_page_and_nothing_runs_off_its_edge() -> None:
    need_chromium()
    pages = {name: rendered(name) for name in CASES}
    problems: dict[str, list[str]] = {}
    async with chromium() as browser:
        context = await browser.new_context(viewport={"width": PRINT_WIDTH_PX, "height": 1032})
        page = await context.new_page()
        await page.emulate_media(media="print")
        for name, text in pages.items():
            await page.set_content(text)
            found = list(await page.evaluate(OVERFLOW_JS))
            boxes = pdf_pages(await page.pdf(prefer_css_page_size=True))
            if len(boxes) != 1:
                found.append(f"printed on {len(boxes)} pages")
            elif not a4(boxes[0]):
                found.append(f"printed on a page of {boxes[0]!r}, not A4")
            if found:
                problems[name] = found
        await context.close()
    assert problems == {}


# The page's text outside its charts, and the cells of each row of one of its tables, as
# the medium in force shows them (report.css hides some on screen, others on paper). An
# element not shown has an innerText all the same (its text): it is left out.
TEXT_JS = """() => [...document.body.children]
  .filter((e) => e.tagName !== "FIGURE" && e.checkVisibility())
  .map((e) => e.innerText).join("\\n")"""
ROWS_JS = """(table) => [...document.querySelectorAll(`table.${table} tr`)]
  .filter((r) => r.checkVisibility() && r.querySelector("td"))
  .map((r) => [...r.querySelectorAll("td")].map((c) => c.innerText))"""


@dataclass
class Seen:
    """A page as the screen shows it and as paper prints it: its text, and a table's rows."""

    screen: str
    paper: str
    screen_rows: list[list[str]]
    paper_rows: list[list[str]]


async def seen(page: Page, text: str, table: str) -> Seen:
    await page.set_content(text)
    await page.emulate_media(media="screen")
    screen, screen_rows = await page.evaluate(TEXT_JS), await page.evaluate(ROWS_JS, table)
    await page.emulate_media(media="print")
    paper, paper_rows = await page.evaluate(TEXT_JS), await page.evaluate(ROWS_JS, table)
    return Seen(screen, paper, screen_rows, paper_rows)


@pytest.mark.asyncio
async def test_what_the_printed_page_leaves_off_it_says_and_the_screen_keeps() -> None:
    """The crowded session: every event and each note whole on screen; on paper, the events
    that say how the session went, and a word naming how many of what it leaves off. Notes
    too long for paper: cut there and marked. The patient of 300 sessions: the most recent
    on paper, the word saying how many, and every one on screen and in the trend."""
    need_chromium()
    async with chromium() as browser:
        page = await browser.new_page(viewport={"width": PRINT_WIDTH_PX, "height": 1032})
        crowded = await seen(page, rendered("8 min with every kind of event, crowded"), "events")
        wide = await seen(page, rendered("notes of the widest letter"), "events")
        ordinary = await seen(page, rendered("8 min, 200-character notes"), "events")
        many_page = rendered("a patient of 300 sessions")
        many = await seen(page, many_page, "sessions")

    rows, printed = crowded.screen_rows, crowded.paper_rows
    assert 0 < len(printed) < len(rows)
    said = re.search(
        r"For room, this printed page leaves off (\d+) of the (\d+) events \(([^)]*)\)",
        crowded.paper,
    )
    assert said, crowded.paper
    assert (int(said[1]), int(said[2])) == (len(rows) - len(printed), len(rows))
    kinds = {name: int(n) for name, n in re.findall(r"([A-Za-z][A-Za-z ]*): (\d+)", said[3])}
    for name, n in kinds.items():  # each kind as many as there are on screen and not on paper
        assert n == sum(r[2] == name for r in rows) - sum(r[2] == name for r in printed), name
    assert kinds["Speed changed"] > 400
    assert "For room" not in crowded.screen
    # On paper, the events that say how the session went: this one's stop, end and start.
    assert [r[:3] for r in printed if r[0] in ("19:53:20", "19:53:23", "20:01:23", "20:01:25")] == [
        ["19:53:20", "0:00", "Session started"],
        ["19:53:23", "0:03", "Belt started"],
        ["20:01:23", "8:03", "Emergency stop"],
        ["20:01:25", "8:05", "Session ended"],
    ]
    # Every second's speed change, each minute's, and EXAMPLES' one, on screen.
    assert sum(r[2] == "Speed changed" for r in rows) == (
        (EIGHT_MINUTES * 60 - 2) + (EIGHT_MINUTES - 1) + 1
    )
    # Each note once on screen: the newest two under the facts, the earlier in their events.
    assert crowded.screen.count(notes()) == OUTCOME_ENTRIES_MAX

    # Notes too long for paper: cut there, and marked, and whole on screen.
    assert wide.screen.count("W" * NOTES_MAX_CHARS) == 2  # before and after
    assert fit.CUT_MARK.strip() not in wide.screen
    cut = re.findall(r"(W+) … \(cut here on paper: on screen in full\)", wide.paper)
    assert len(cut) == 2, cut
    assert all(500 < len(c) < NOTES_MAX_CHARS for c in cut)

    # A session that fits leaves nothing off and says nothing of it.
    assert ordinary.paper_rows == ordinary.screen_rows
    assert "For room" not in ordinary.paper
    assert fit.CUT_MARK.strip() not in ordinary.paper

    assert [int(r[0]) for r in many.screen_rows] == list(range(1, 301))
    numbers = [int(r[0]) for r in many.paper_rows]
    assert numbers == list(range(301 - len(numbers), 301))  # the most recent
    assert len(numbers) >= RECENT_ON_PAPER  # the chart gives up height for them
    assert (
        f"For room, this printed page lists the {len(numbers)} most recent of the 300 "
        f"sessions (from session {numbers[0]}, "
    ) in many.paper
    assert "the trend above draws all 300" in many.paper
    assert "For room" not in many.screen
    assert len(re.findall(r'<g id="session-\d+-belt">', many_page)) == 300


@pytest.mark.asyncio
async def test_text_is_reckoned_no_shorter_than_the_browser_lays_it_out() -> None:
    """What the reports leave off paper rests on report_fit's count of the lines a text
    takes: for prose, the widest letter, CJK, and codes without a space, at the widths and
    sizes the pages use, never fewer lines than Chromium lays it out in."""
    need_chromium()
    texts = [
        notes(),
        notes(length=250),
        "W" * NOTES_MAX_CHARS,
        "i" * NOTES_MAX_CHARS,
        "膝" * 300,
        WIDE_CODE,
        f"pain after the session 10/10, exertion 10/10, entered by {WIDE_CODE}; notes above",
        "the session cap was reached",
        "2027-09-24 20:53",
        "no tablet heartbeat (the page was hidden or lost its link)",
    ]
    widths = [fit.PAGE_WIDTH_MM, fit.PAGE_WIDTH_MM * 0.64 - 2, 44.5, 27.8]
    faces = [fit.ROW, fit.NOTE, fit.TEXT, fit.TITLE]
    cases = [(text, width, face) for text in texts for width in widths for face in faces]
    paragraphs = "".join(
        f'<p style="width: {width}mm; font-size: {face.size_pt}pt; line-height: {face.line};'
        f' font-weight: {"bold" if face.bold else "normal"}">{html.escape(text)}</p>'
        for text, width, face in cases
    )
    style = (
        'html { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; '
        "overflow-wrap: anywhere; } p { margin: 0; }"
    )
    async with chromium() as browser:
        page = await browser.new_page()
        await page.emulate_media(media="print")
        await page.set_content(f"<style>{style}</style>{paragraphs}")
        heights = await page.evaluate(
            "() => [...document.querySelectorAll('p')].map((p) => p.getBoundingClientRect().height)"
        )
    short = []
    for (text, width, face), height in zip(cases, heights, strict=True):
        # Whole lines, give or take the rounding of hundreds of line boxes to device pixels.
        laid_out = round(height / (face.line_mm / 25.4 * 96))
        if fit.line_count(text, width, face) < laid_out:
            short.append((text[:20], width, face.size_pt, laid_out))
    assert short == []
