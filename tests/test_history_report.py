"""``treadguard history`` and ``treadguard report``: what a clinician reads back from the
journal (SR-14), run as subprocesses on a journal written through the Journal class."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon_process import ROOT, daemon_config
from treadguard.controller.journal import Journal
from treadguard.safety.decisions import Event, EventType


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
    """A configuration whose journal holds two sessions: one to its cap, one ended by a fall."""
    path = daemon_config(tmp_path, 1883, treadmill_id="tm-h")
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
            journal.record(Event(EventType.ESTOP, 0.0, {"cause": "fall"}), start + 12)
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


def test_report_draws_the_speed_and_marks_the_events(config: Path, tmp_path: Path) -> None:
    page = tmp_path / "bob.html"
    out = cli("report", "2", "--config", str(config), "--out", str(page))
    assert out.returncode == 0, out.stderr
    text = page.read_text()
    assert "<svg" in text
    assert text.count("<polyline") == 2  # the belt speed and the target
    assert ">estop<" in text  # marked on the chart
    assert "cause=fall" in text  # and listed with its details
    assert "bob" in text
    assert "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained


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
