"""``treadguard history``, ``report``, ``patient`` and ``export --csv``: what a clinician reads
back from the journal (SR-14; docs/reports.md), run as subprocesses on a journal written
through the Journal class, in a clinic whose time zone is not UTC."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from tests.browser import ARGS as CHROMIUM_ARGS
from tests.browser import CHROMIUM
from tests.daemon_process import ROOT, daemon_config
from treadguard.controller.journal import Journal
from treadguard.safety.decisions import Event, EventType, JsonScalar

NEW_YORK = '[clinic]\ntimezone = "America/New_York"\n'
LATENCY_MS = 1.2227497188064262
# Namespaces name what an SVG's markup is: the page fetches nothing from them.
SVG_NAMESPACES = (
    'xmlns="http://www.w3.org/2000/svg"',
    'xmlns:xlink="http://www.w3.org/1999/xlink"',
)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treadguard.controller.cli", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A configuration whose journal holds two sessions: one to its cap, one ended by a fall.
    The clinic is in New York: bob's session began 2026-11-30 01:26:40 UTC, which there is
    20:26:40 EST the day before."""
    path = daemon_config(tmp_path, 1883, treadmill_id="tm-h", extra=NEW_YORK)
    journal = Journal.open(tmp_path / "journal-tm-h.sqlite")
    t = 1_796_000_000.0
    for n, (user, reason) in enumerate([("ann", "cap"), ("bob", "estop")], start=1):
        start = t + 1000 * n
        journal.record(
            Event(
                EventType.SESSION_STARTED,
                0.0,
                {"session_id": str(n), "user": user, "program": "first_session", "cap_s": 180.0},
            ),
            start,
        )
        for k in range(20):
            journal.sample(start + 3 + k * 0.5, min(0.8, 0.1 * k), 0.8)
        if reason == "estop":
            stop: dict[str, JsonScalar] = {
                "cause": "fall",
                "detail": "fall signalled",
                "stop_latency_ms": LATENCY_MS,
            }
            journal.record(Event(EventType.ESTOP, 0.0, stop), start + 12)
        journal.record(
            Event(
                EventType.SESSION_ENDED,
                0.0,
                {"session_id": str(n), "reason": reason, "belt_moving_s": 9.5},
            ),
            start + 13,
        )
    journal.commit()
    journal.close()
    return path


def test_history_lists_every_session_and_filters_by_user(config: Path) -> None:
    out = cli("history", "--config", str(config))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["id", "user", "program"]
    assert [line.split()[1] for line in lines[1:]] == ["ann", "bob"]
    assert lines[2].split()[-1] == "estop"
    assert re.search(r"\b0\.80\b", lines[1])  # the top speed

    bob = cli("history", "--config", str(config), "--user", "bob", "--json")
    (record,) = [json.loads(line) for line in bob.stdout.splitlines()]
    assert record["user"] == "bob"
    assert record["end_reason"] == "estop"
    assert record["max_speed_mph"] == pytest.approx(0.8)
    assert cli("history", "--config", str(config), "--user", "eve").stdout.strip() == (
        "no sessions of eve"
    )


def svg_group(page: str, gid: str) -> str:
    """The markup of the chart's element with SVG id ``gid`` (matplotlib's gid): up to the
    next element with an id of its own."""
    start = page.index(f'<g id="{gid}">')
    following = re.search(r'<g id="', page[start + 1 :])
    return page[start : start + 1 + following.start()] if following else page[start:]


def outside_charts(page: str) -> str:
    return re.sub(r"<svg.*?</svg>", "", page, flags=re.DOTALL)


def test_report_draws_the_speed_and_marks_the_events(config: Path, tmp_path: Path) -> None:
    page = tmp_path / "bob.html"
    out = cli("report", "2", "--config", str(config), "--out", str(page))
    assert out.returncode == 0, out.stderr
    text = page.read_text()
    assert text.count("<svg") == 1
    # The belt speed and the target, each a line through the samples.
    for line in ("belt-speed", "target"):
        assert re.search(
            r'<path d="M [\d.]+ [\d.]+ (\s*L [\d.]+ [\d.]+){3,}', svg_group(text, line)
        )
    assert len(re.findall(r'<g id="mark-\d+-estop">', text)) == 1  # marked on the chart
    chart = text[text.index("<svg") : text.index("</svg>")]
    assert "> Emergency stop </text>" in chart  # and labelled in words
    assert "a fall was detected: fall signalled" in outside_charts(
        text
    )  # and listed with its details
    assert "bob" in text
    rest = text
    for namespace in SVG_NAMESPACES:
        rest = rest.replace(namespace, "")
    assert "http" not in rest  # self-contained
    assert not re.search(r"<(link|script|img)\b|@import|url\((?!#)", text)


def test_the_report_reads_as_a_clinician_reads_it(config: Path, tmp_path: Path) -> None:
    """Titles, not program codes; times in the clinic's zone; numbers rounded; the stop and
    the ending in words."""
    page = tmp_path / "bob.html"
    assert cli("report", "2", "--config", str(config), "--out", str(page)).returncode == 0
    text = outside_charts(page.read_text())
    cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", text)
    facts = dict(zip(cells[0:8:2], cells[1:8:2], strict=True))
    facts.update(zip(cells[8:14:2], cells[9:14:2], strict=True))
    assert facts["Program"] == "First treadmill session"
    assert facts["User"] == "bob"
    assert facts["Started"] == "2026-11-29 20:26:40 EST"
    assert facts["Ended"] == "2026-11-29 20:26:53 EST"
    assert facts["Belt time"] == "10 s of a 3 min cap"
    assert facts["Top speed"] == "0.80 mph"
    assert '<td colspan="3">emergency stop: a fall was detected</td>' in text
    # The stop's row: the clock time there, the time into the session, the event, its words.
    assert (
        "<td>20:26:52</td><td>0:12</td><td>Emergency stop</td>"
        "<td>a fall was detected: fall signalled; stop sent to the drive 1.2 ms after it</td>"
    ) in text
    assert "times in America/New_York" in text
    # None of the journal's own codes or raw numbers.
    for code in ("first_session", "estop", "cause=", "stop_latency_ms", str(LATENCY_MS)):
        assert code not in text, code
    assert not re.search(r"\d\.\d{3,}", text), re.findall(r"[\d.]*\d\.\d{3,}", text)


def test_the_belt_after_the_session_ended_is_drawn_when_the_journal_has_it(
    config: Path, tmp_path: Path
) -> None:
    """The run-down after session_ended is in the chart, in a colour of its own, from the
    samples the journal holds for the session past its end (and not there without them)."""
    before = tmp_path / "before.html"
    assert cli("report", "1", "--config", str(config), "--out", str(before)).returncode == 0
    assert 'id="belt-after-end"' not in before.read_text()
    db = sqlite3.connect(tmp_path / "journal-tm-h.sqlite")
    with db:
        (ended,) = db.execute("SELECT ended_at FROM sessions WHERE id = 1").fetchone()
        db.executemany(
            "INSERT INTO samples (session_id, ts, speed_mph, target_mph) VALUES (1, ?, ?, 0)",
            [(ended + k * 0.25, 0.8 - 0.2 * k) for k in range(5)],
        )
    db.close()
    after = tmp_path / "after.html"
    assert cli("report", "1", "--config", str(config), "--out", str(after)).returncode == 0
    text = after.read_text()
    assert re.search(
        r'<path d="M [\d.]+ [\d.]+ (\s*L [\d.]+ [\d.]+){3,}', svg_group(text, "belt-after-end")
    )
    assert "the belt running down after the session ended" in text


def test_unknown_session_and_missing_journal_are_clear_errors(config: Path, tmp_path: Path) -> None:
    missing = cli("report", "9", "--config", str(config))
    assert missing.returncode == 2
    assert "no session 9" in missing.stderr
    (tmp_path / "other").mkdir()
    empty = daemon_config(tmp_path / "other", 1883)  # its journal was never written
    nothing = cli("history", "--config", str(empty))
    assert nothing.returncode == 2
    assert "no journal at" in nothing.stderr


def test_report_out_may_be_a_folder_and_an_unwritable_path_is_a_clear_error(
    config: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "reports"
    folder.mkdir()
    into = cli("report", "2", "--config", str(config), "--out", str(folder))
    assert into.returncode == 0, into.stderr
    assert into.stdout.strip() == str(folder / "session-2.html")
    assert "<svg" in (folder / "session-2.html").read_text()

    nowhere = tmp_path / "no-such-folder" / "x.html"
    refused = cli("report", "2", "--config", str(config), "--out", str(nowhere))
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"error: cannot write the report to {nowhere}: No such file or directory"
    )
    assert "Traceback" not in refused.stderr


# (user, program, end reason, belt seconds, cap seconds, top mph) a session, a day apart.
CLINIC_SESSIONS = [
    ("ann", "first_session", "cap", 180.2, 180.0, 0.8),
    ("bob", "first_session", "cap", 179.6, 180.0, 0.8),
    ("ann", "reverse_walking", "estop", 95.4, 300.0, 0.9),
    ("ann", "reverse_walking", "operator_stop", 241.0, 300.0, 1.0),
    ("ann", "intervals", "completed", 480.0, 480.0, 1.1),
]
# The clinician's record (outcome_before, outcome_after) of some of them, by session: the
# second "after" of session 4 corrects its first.
CLINIC_OUTCOMES: dict[int, list[dict[str, JsonScalar]]] = {
    3: [{"when": "before", "pain": 4}, {"when": "after", "pain": 6, "notes": "knee hurt"}],
    4: [{"when": "after", "pain": 3}, {"when": "after", "pain": 2, "exertion": 5}],
}


def write_sessions(
    journal_path: Path, sessions: list[tuple[str, str, str, float, float, float]]
) -> None:
    """Sessions as the daemon journals them: started, the belt's samples, steps, the end."""
    journal = Journal.open(journal_path)
    t = 1_796_000_000.0  # 2026-11-30 00:53:20 UTC
    for n, (user, program, reason, belt_s, cap_s, top) in enumerate(sessions, start=1):
        start = t + 86_400 * n
        started: dict[str, JsonScalar] = {
            "session_id": str(n),
            "user": user,
            "program": program,
            "cap_s": cap_s,
        }
        journal.record(Event(EventType.SESSION_STARTED, 0.0, started), start)
        journal.record(Event(EventType.BELT_STARTED, 0.0, {"target_mph": 0.8}), start + 3)
        for k in range(int(belt_s)):
            target = min(top, 0.8 + 0.1 * (k // 60))
            journal.sample(start + 3 + k, min(target, 0.2 * k), target)
            if k and k % 60 == 0 and target > 0.8:
                journal.record(Event(EventType.SPEED_STEP, 0.0, {"target_mph": target}), start + k)
        end = start + 3 + belt_s
        if reason == "estop":
            stop: dict[str, JsonScalar] = {
                "cause": "grip_lost",
                "detail": "both hands off",
                "stop_latency_ms": 0.31,
            }
            journal.record(Event(EventType.ESTOP, 0.0, stop), end)
        else:
            journal.record(Event(EventType.STOPPING, 0.0, {"reason": reason}), end)
        ended: dict[str, JsonScalar] = {
            "session_id": str(n),
            "reason": reason,
            "belt_moving_s": belt_s,
        }
        journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), end + 1)
        for k, entry in enumerate(CLINIC_OUTCOMES.get(n, [])):
            outcome = {"session_id": str(n), **entry}
            journal.record(Event(EventType.OUTCOME_RECORDED, 0.0, outcome), end + 60 + k)
    journal.commit()
    journal.close()


@pytest.fixture
def clinic(tmp_path: Path) -> Path:
    """Five sessions of two users, ann's with three programs and three kinds of ending."""
    path = daemon_config(tmp_path, 1883, treadmill_id="tm-c", extra=NEW_YORK)
    write_sessions(tmp_path / "journal-tm-c.sqlite", CLINIC_SESSIONS)
    return path


def test_the_patient_report_has_every_session_of_the_user_and_their_trend(
    clinic: Path, tmp_path: Path
) -> None:
    out = cli("patient", "ann", "--config", str(clinic), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path / "patient-ann.html")
    page = (tmp_path / "patient-ann.html").read_text()
    text = outside_charts(page)
    table = text[text.index('<table class="rows sessions">') :]
    rows = [
        re.findall(r"<td[^>]*>(.*?)</td>", row)
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, flags=re.DOTALL)[1:]
    ]
    assert rows == [
        ["1", "2026-11-30 19:53", "First treadmill session", "3.0", "3.0", "0.80",
         "the session cap was reached", "-"],
        ["3", "2026-12-02 19:53", "Reverse walking", "1.6", "5.0", "0.90", "emergency stop",
         "4 before, 6 after"],
        ["4", "2026-12-03 19:53", "Reverse walking", "4.0", "5.0", "1.00",
         "stopped from a tablet", "2 after"],
        ["5", "2026-12-04 19:53", "Intervals", "8.0", "8.0", "1.10", "the program is complete",
         "-"],
    ]  # fmt: skip
    assert '<tr class="stop"><td class="num">3</td>' in table  # the stopped one stands out
    assert "bob" not in page
    assert "4 sessions, 2026-11-30 to 2026-12-04" in text
    assert "<td>16 min 37 s</td>" in text  # belt time in all: 180.2 + 95.4 + 241 + 480 s
    # The trend: a bar for each of ann's sessions, red for the one an emergency stop ended,
    # and the top speed through one point a session.
    bars = re.findall(r'<g id="session-(\d+)-belt">', page)
    assert bars == ["1", "3", "4", "5"]
    for n in bars:
        red = "fill: #cc2222" in svg_group(page, f"session-{n}-belt")
        assert red == (n == "3"), n
    assert len(re.findall(r"<use ", svg_group(page, "top-speed"))) == 4


def test_the_session_report_has_the_clinician_s_record_of_it(clinic: Path, tmp_path: Path) -> None:
    """Pain before and after (the newest entry of each) and exertion in the facts, the notes
    under them, once; each entry in the events as it was made, the newest pointing to its
    notes rather than repeating them."""
    page = tmp_path / "s4.html"
    assert cli("report", "3", "--config", str(clinic), "--out", str(page)).returncode == 0
    text = outside_charts(page.read_text())
    assert "<th>Pain (0-10)</th><td>4 before, 6 after</td>" in text
    notes = text[text.index('<div class="notes">') : text.index("</div>")]
    assert re.search(
        r'<span class="when">After the session</span> <span class="by">\(entered '
        r"2026-12-02 \d\d:\d\d:\d\d EST\):</span> knee hurt</p>",
        notes,
    ), notes
    assert text.count("knee hurt") == 1
    assert "pain before the session 4/10" in text
    assert "pain after the session 6/10; notes above" in text
    page = tmp_path / "s4.html"
    assert cli("report", "4", "--config", str(clinic), "--out", str(page)).returncode == 0
    text = outside_charts(page.read_text())
    assert "<th>Pain (0-10)</th><td>2 after</td>" in text
    assert "<th>Exertion (0-10)</th><td>5/10</td>" in text
    assert "pain after the session 3/10" in text  # the first entry stays on record
    assert "Clinician's notes" not in text  # none entered


def test_the_csv_export_has_a_row_a_session_with_the_clinic_s_offset(
    clinic: Path, tmp_path: Path
) -> None:
    out = cli("export", "--csv", "--config", str(clinic))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[0] == {
        "id": "1",
        "user": "ann",
        "program": "first_session",
        "program_title": "First treadmill session",
        "started": "2026-11-30T19:53:20-05:00",
        "ended": "2026-11-30T19:56:24-05:00",
        "belt_s": "180.2",
        "cap_s": "180",
        "top_mph": "0.80",
        "end_reason": "cap",
        "pain_before": "",
        "pain_after": "",
        "exertion": "",
        "notes_before": "",
        "notes_after": "",
        "clinician": "",
    }
    # The clinician's record: the newest entry before and after (4's second "after"
    # corrects its first).
    assert (rows[2]["pain_before"], rows[2]["pain_after"], rows[2]["notes_after"]) == (
        "4",
        "6",
        "knee hurt",
    )
    assert (rows[3]["pain_before"], rows[3]["pain_after"], rows[3]["exertion"]) == ("", "2", "5")
    # The offset is the clinic's at that moment (test_a_summer_session_has_the_summer_offset).
    assert datetime.fromisoformat(rows[2]["started"]).utcoffset() == timedelta(hours=-5)
    assert rows[2]["end_reason"] == "estop"

    into = tmp_path / "out"
    into.mkdir()
    bob = cli("export", "--csv", "--user", "bob", "--config", str(clinic), "--out", str(into))
    assert bob.returncode == 0, bob.stderr
    written = into / "sessions-tm-c-bob.csv"
    assert bob.stdout.strip() == str(written)
    (only,) = csv.DictReader(io.StringIO(written.read_text()))
    assert (only["id"], only["user"], only["belt_s"]) == ("2", "bob", "179.6")


def test_a_summer_session_has_the_summer_offset(tmp_path: Path) -> None:
    path = daemon_config(tmp_path, 1883, treadmill_id="tm-s", extra=NEW_YORK)
    journal = Journal.open(tmp_path / "journal-tm-s.sqlite")
    july = datetime(2026, 7, 1, 14, 0, tzinfo=UTC).timestamp()
    started: dict[str, JsonScalar] = {
        "session_id": "1",
        "user": "cy",
        "program": "reverse_walking",
        "cap_s": 300.0,
    }
    journal.record(Event(EventType.SESSION_STARTED, 0.0, started), july)
    ended: dict[str, JsonScalar] = {"session_id": "1", "reason": "cap", "belt_moving_s": 300.0}
    journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), july + 310)
    journal.commit()
    journal.close()
    out = cli("export", "--csv", "--config", str(path))
    (row,) = csv.DictReader(io.StringIO(out.stdout))
    assert row["started"] == "2026-07-01T10:00:00-04:00"
    page = tmp_path / "s.html"
    assert cli("report", "1", "--config", str(path), "--out", str(page)).returncode == 0
    assert "2026-07-01 10:00:00 EDT" in page.read_text()
    assert "5 min 0 s of a 5 min cap" in page.read_text()


def test_bad_input_to_patient_and_export_is_a_clear_error(clinic: Path, tmp_path: Path) -> None:
    def refused(*args: str) -> str:
        done = cli(*args, "--config", str(clinic))
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        return done.stderr.strip()

    assert refused("patient", "eve") == "error: no sessions of 'eve' in the journal"
    assert refused("export", "--csv", "--user", "eve") == (
        "error: no sessions of 'eve' in the journal"
    )
    nowhere = tmp_path / "no-such-folder" / "ann.html"
    assert refused("patient", "ann", "--out", str(nowhere)) == (
        f"error: cannot write the report to {nowhere}: No such file or directory"
    )
    under_a_file = tmp_path / "journal-tm-c.sqlite" / "x.csv"
    assert refused("export", "--csv", "--out", str(under_a_file)) == (
        f"error: cannot write the sessions to {under_a_file}: Not a directory"
    )
    assert "--csv" in refused("export")  # say which form


def pdf_pages(pdf: bytes) -> list[bytes]:
    """The page objects' MediaBoxes of a PDF as Chromium writes it (objects in the clear, no
    object streams): ``/Type /Page``, not ``/Pages``."""
    return re.findall(rb"/Type\s*/Page(?![s\w]).*?/MediaBox\s*\[([^\]]*)\]", pdf, flags=re.DOTALL)


def printed(page: Path, tmp_path: Path) -> list[bytes]:
    """The page printed to PDF by headless Chromium, as a browser prints it on A4 (the page's
    @page rule sets the size); the MediaBox of each printed page."""
    if not CHROMIUM.exists():
        why = "chromium is not installed (apt-get install chromium; scripts/test installs it)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    pdf = tmp_path / f"{page.stem}.pdf"
    done = subprocess.run(
        [
            str(CHROMIUM),
            *CHROMIUM_ARGS,
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={pdf}",
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert pdf.exists(), done.stderr.decode(errors="replace")
    return pdf_pages(pdf.read_bytes())


def a4(box: bytes) -> bool:
    """595 x 842 points, give or take Chromium's rounding of 210 x 297 mm."""
    x0, y0, x1, y1 = (float(v) for v in box.split())
    return abs((x1 - x0) - 595.3) < 1.5 and abs((y1 - y0) - 841.9) < 1.5


def test_each_report_prints_on_one_a4_page(clinic: Path, tmp_path: Path) -> None:
    """The session report of an eight-minute session with its events, and the patient report of
    twenty sessions, each on one A4 page; a page twice as long is two, so the count is real."""
    twenty = tmp_path / "twenty"
    twenty.mkdir()
    config = daemon_config(twenty, 1883, treadmill_id="tm-20", extra=NEW_YORK)
    endings = ["cap", "operator_stop", "estop", "completed"]
    write_sessions(
        twenty / "journal-tm-20.sqlite",
        [
            ("dee", "reverse_walking", endings[n % 4], 240.0 + n, 300.0, 0.8 + 0.02 * n)
            for n in range(20)
        ],
    )
    # Every kind of measure, at baseline and again: the patient's page has its proposal and
    # measures too.
    journal = Journal.open(twenty / "journal-tm-20.sqlite")
    for kind, value in (("tug", 12.0), ("koos", 55.0), ("womac", 40.0), ("walk_10m", 8.4)):
        for day in ("2026-11-02", "2026-12-14"):
            measure: dict[str, JsonScalar] = {
                "user": "dee",
                "kind": kind,
                "value": value,
                "date": day,
            }
            journal.record(Event(EventType.MEASURE_RECORDED, 0.0, measure), 1_796_000_000.0)
    journal.commit()
    journal.close()
    session = tmp_path / "session.html"
    assert cli("report", "5", "--config", str(clinic), "--out", str(session)).returncode == 0
    patient = tmp_path / "patient.html"
    assert cli("patient", "dee", "--config", str(config), "--out", str(patient)).returncode == 0
    assert (
        patient.read_text().count('<tr><td class="num">')
        + patient.read_text().count('<tr class="stop"><td class="num">')
        == 20
    )
    assert "Next session (proposed)" in patient.read_text()
    assert patient.read_text().count("2026-12-14</td>") == 4  # a measure of each kind
    for page in (session, patient):
        boxes = printed(page, tmp_path)
        assert len(boxes) == 1, f"{page.name} prints on {len(boxes)} pages"
        assert a4(boxes[0]), boxes[0]

    double = tmp_path / "double.html"
    double.write_text(
        session.read_text().replace(
            "</body>", '<div style="break-before: page">and more</div></body>'
        )
    )
    assert len(printed(double, tmp_path)) == 2


def test_the_daemon_s_command_line_does_not_load_the_reports_libraries() -> None:
    """matplotlib, numpy and jinja2 cost the board seconds and tens of MB: only the commands
    that write a report import them, never `treadguard run`."""
    code = (
        "import sys, treadguard.controller.cli, treadguard.controller.daemon; "
        "print(sorted({'matplotlib', 'numpy', 'jinja2'} & set(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def write_plan_journal(path: Path, now: float) -> None:
    """cat's first session (to its cap) yesterday, with pain 2 before and 5 after, and
    measures: a TUG and a KOOS at baseline and again, and a 10 m walk once."""
    journal = Journal.open(path)
    start = now - 86_400
    started: dict[str, JsonScalar] = {
        "session_id": "1", "user": "cat", "program": "first_session", "cap_s": 180.0,
    }  # fmt: skip
    journal.record(Event(EventType.SESSION_STARTED, 0.0, started), start)
    ended: dict[str, JsonScalar] = {"session_id": "1", "reason": "cap", "belt_moving_s": 179.0}
    journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), start + 190)
    for when, pain in (("before", 2), ("after", 5)):
        outcome: dict[str, JsonScalar] = {"session_id": "1", "when": when, "pain": pain}
        journal.record(Event(EventType.OUTCOME_RECORDED, 0.0, outcome), start + 200)
    for kind, value, day in (
        ("tug", 12.0, "2026-11-02"), ("koos", 55.0, "2026-11-02"), ("walk_10m", 8.4, "2026-11-02"),
        ("tug", 10.5, "2026-11-20"), ("koos", 61.0, "2026-11-20"),
    ):  # fmt: skip
        measure: dict[str, JsonScalar] = {"user": "cat", "kind": kind, "value": value, "date": day}
        journal.record(Event(EventType.MEASURE_RECORDED, 0.0, measure), start)
    journal.commit()
    journal.close()


def test_plan_says_the_proposal_its_reason_and_the_measures(tmp_path: Path) -> None:
    path = daemon_config(tmp_path, 1883, treadmill_id="tm-p", extra=NEW_YORK)
    now = datetime.now(UTC).timestamp()
    write_plan_journal(tmp_path / "journal-tm-p.sqlite", now)
    day = datetime.fromtimestamp(now - 86_400, ZoneInfo("America/New_York")).date().isoformat()
    done = cli("plan", "cat", "--config", str(path))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "User cat: 1 session on record",
        "  next session: First treadmill session, 3 min: held at first treadmill session: pain "
        f"rose 3 points in session 1 on {day} (2 before, 5 after)",
        "  phase: First treadmill session, week 1 on the treadmill; 3-4 sessions a week",
        "  first session: counts",
        "  held back: see the reason above",
        "  measures (baseline; latest; change):",
        "    Timed Up and Go: 12.0 s, 2026-11-02; 10.5 s, 2026-11-20; -1.5 s, better",
        "    KOOS: 55, 2026-11-02; 61, 2026-11-20; +6, better",
        "    10 m walk: 8.4 s, 2026-11-02; -; -",
    ]
    as_json = json.loads(cli("plan", "cat", "--config", str(path), "--json").stdout)
    assert (as_json["program"], as_json["cap_s"], as_json["held"]) == ("first_session", 180.0, True)
    assert [m["kind"] for m in as_json["measures"]] == ["tug", "koos", "walk_10m"]
    # A user with no session yet: the first session, and why.
    new = cli("plan", "newcomer", "--config", str(path))
    assert "next session: First treadmill session, 3 min: no treadmill session on record" in (
        new.stdout
    )
    assert "measures: none recorded" in new.stdout
    # And the patient's page shows the same proposal and the measures.
    out = tmp_path / "cat.html"
    assert cli("patient", "cat", "--config", str(path), "--out", str(out)).returncode == 0
    text = outside_charts(out.read_text())
    assert (
        '<tr class="proposal"><th>Next session (proposed)</th><td colspan="3">First treadmill '
        "session, 3 min: held at first treadmill session: pain rose 3 points" in text
    )
    measures = text[text.index('<table class="rows measures">') :]
    rows = [
        re.findall(r"<td[^>]*>(.*?)</td>", row)
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", measures, flags=re.DOTALL)[1:]
    ]
    assert rows == [
        ["Timed Up and Go", "12.0 s, 2026-11-02", "10.5 s, 2026-11-20", "-1.5 s, better"],
        ["KOOS", "55, 2026-11-02", "61, 2026-11-20", "+6, better"],
        ["10 m walk", "8.4 s, 2026-11-02", "-", "-"],
    ]


def test_a_note_a_spreadsheet_would_run_is_written_as_text(tmp_path: Path) -> None:
    """A note typed on the tablet as "=HYPERLINK(...)" or "@SUM(...)", or a user code such
    as "=1+1", opens as text in a spreadsheet, never as a formula (an ordinary note is written
    as typed: the test above)."""
    path = daemon_config(tmp_path, 1883, treadmill_id="tm-n")
    session = ("=1+1", "first_session", "cap", 180.0, 180.0, 0.8)  # a code the contract allows
    write_sessions(tmp_path / "journal-tm-n.sqlite", [session])
    journal = Journal.open(tmp_path / "journal-tm-n.sqlite")
    for k, (when, notes) in enumerate(
        (("before", '=HYPERLINK("http://x.example","ok")'), ("after", "-2 then @SUM(A1)"))
    ):
        entry: dict[str, JsonScalar] = {
            "session_id": "1", "when": when, "pain": 3, "notes": notes, "clinician": "+dr",
        }  # fmt: skip
        journal.record(Event(EventType.OUTCOME_RECORDED, 0.0, entry), 1_796_100_000.0 + k)
    journal.commit()
    journal.close()
    out = cli("export", "--csv", "--config", str(path))
    (row,) = csv.DictReader(io.StringIO(out.stdout))
    assert row["notes_before"] == '\'=HYPERLINK("http://x.example","ok")'
    assert row["notes_after"] == "'-2 then @SUM(A1)"
    assert row["clinician"] == "'+dr"
    assert row["user"] == "'=1+1"
    assert (row["pain_before"], row["pain_after"]) == ("3", "3")
