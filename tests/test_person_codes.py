"""Codes a person types for a person, a user's code and a clinician's id, hold only characters
that show as themselves (contract/codes.py): one that holds an invisible or formatting
character, a space other than the ordinary one, or a space at either end, is refused, naming
the field and the character, by every command and query that takes one and by the command
line. A code already in an older journal still has its reports, with each such character shown
as an escape."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Literal
from unittest.mock import patch
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.daemon_process import daemon_config
from treadguard.contract.codes import character_problem, code_problem, shown_code
from treadguard.contract.mqtt import CommandReply, ErrorCode, ParsedCommand, parse_command
from treadguard.contract.queries import HistoryQuery, QueryErrorCode, QueryReply, parse_query
from treadguard.controller.cli import EXIT_BAD_INPUT, main
from treadguard.controller.journal import EventRow, Journal, SessionRow
from treadguard.controller.report import Clinic, patient_report, session_report
from treadguard.safety.decisions import Event, EventType, JsonScalar

Refused = Literal["Cf", "Cc", "Cs", "Co", "Cn", "Zl", "Zp"]
REFUSED_CATEGORIES: tuple[Refused, ...] = ("Cf", "Cc", "Cs", "Co", "Cn", "Zl", "Zp")
# A right-to-left override shows "p-\u202e210" as "p-012"; a zero-width space makes "p-012"
# and "p-012\u200b" two users who look like one.
LOOK_ALIKES = [
    ("p-\u202e210", "an invisible formatting character (U+202E)"),
    ("p-012\u200b", "an invisible formatting character (U+200B)"),
    ("\ufeffp-012", "an invisible formatting character (U+FEFF)"),
    ("p-0\u206612", "an invisible formatting character (U+2066)"),
    ("p-012\u2028", "a line separator (U+2028)"),
    ("p-012\u2029", "a paragraph separator (U+2029)"),
    ("p-012\ue000", "a private-use character (U+E000)"),
    ("p-012\U000e0001", "an invisible formatting character (U+E0001)"),
    ("p-0\u0378", "an unassigned character (U+0378)"),
    ("p-012\x07", "a control character (U+0007)"),
    ("p-012\ud800", "a lone surrogate (U+D800)"),
    ("p-\u3164012", "an invisible character (U+3164)"),
    ("p\u28001", "an invisible character (U+2800)"),  # prints as "p 1", itself a code
    ("p-012\ufe0f", "an invisible character (U+FE0F)"),
    ("p\u00a0012", "a space other than the ordinary space (U+00A0)"),
]
SPACED = ["p-012 ", " p-012", "   "]


RECORD_ENTRIES = ("outcome_before", "outcome_after", "confirm_first_session", "record_measure")


def command(type_: str, **fields: Any) -> CommandReply | ParsedCommand:
    # ASCII JSON: a lone surrogate goes out as its escape, which JSON allows.
    stamp = {"ts": 1764000000.0} if type_ in RECORD_ENTRIES else {}  # required on these
    payload = json.dumps({"id": "c-1", "type": type_, **fields, **stamp}).encode()
    return parse_command(payload, retained=False, t=0.0)


# Every command and query that takes a code a person types, by the field that holds it.
def _all_code_fields(code: str) -> Iterator[tuple[str, CommandReply | ParsedCommand]]:
    yield "user", command("start_session", user=code)
    yield "user", command("record_measure", user=code, kind="tug", value=12)
    yield "clinician", command("record_measure", user="p-1", kind="tug", value=12, clinician=code)
    yield "clinician", command("set_speed", mph=1.0, clinician=code)
    yield "clinician", command("outcome_before", session_id="3", pain=2, clinician=code)
    yield "clinician", command("outcome_after", session_id="3", pain=2, clinician=code)
    yield "clinician", command("confirm_first_session", session_id="3", clinician=code)


def history(code: str) -> HistoryQuery | QueryReply:
    payload = json.dumps({"id": "q-1", "type": "history", "user": code}).encode()
    result = parse_query(payload, retained=False)
    assert isinstance(result, HistoryQuery | QueryReply)
    return result


@pytest.mark.parametrize(("code", "said"), LOOK_ALIKES)
def test_a_code_that_would_not_show_as_itself_is_refused_naming_field_and_character(
    code: str, said: str
) -> None:
    for field, result in _all_code_fields(code):
        assert isinstance(result, CommandReply), (field, code)
        assert result.error is ErrorCode.INVALID_COMMAND
        assert f"{field} contains {said}" in result.message, result.message
    answer = history(code)
    assert isinstance(answer, QueryReply)
    assert answer.error is QueryErrorCode.INVALID_QUERY
    assert f"user contains {said}" in answer.message


@pytest.mark.parametrize("code", SPACED)
def test_a_code_with_a_space_at_either_end_is_refused(code: str) -> None:
    for field, result in _all_code_fields(code):
        assert isinstance(result, CommandReply), (field, code)
        assert result.error is ErrorCode.INVALID_COMMAND
        assert f"{field} " in result.message
    assert isinstance(history(code), QueryReply)


def test_a_code_not_in_composed_form_is_refused_and_its_composed_form_is_taken() -> None:
    """ "José" typed as U+00E9 or as e and U+0301 looks the same everywhere: as two codes, one
    patient's record would split (an emergency stop under one spelling would not hold the
    other's plan). The composed form is the code; the other is refused, naming it."""
    composed, decomposed = "Jos\u00e9-12", "Jose\u0301-12"
    for field, result in _all_code_fields(decomposed):
        assert isinstance(result, CommandReply), (field, result)
        assert result.error is ErrorCode.INVALID_COMMAND
        assert f"{field} is not in Unicode's composed form (NFC)" in result.message
        assert f"send it composed ({composed})" in result.message
    for field, result in _all_code_fields(composed):
        assert isinstance(result, ParsedCommand), (field, result)


def test_a_code_as_codes_are_is_taken_as_typed() -> None:
    for code in ("p-012", "p 012", "Müller-7", "患者12", "x" * 64):
        for field, result in _all_code_fields(code):
            assert isinstance(result, ParsedCommand), (field, code, result)
        answer = history(code)
        assert isinstance(answer, HistoryQuery)
        assert answer.user == code
        assert shown_code(code) == code
    too_long = command("start_session", user="x" * 65)
    assert isinstance(too_long, CommandReply)
    assert "user is 65 characters long" in too_long.message


def _any_char() -> st.SearchStrategy[str]:
    # The refused categories drawn on their own too, so that each is common, not rare.
    return st.characters(exclude_categories=()) | st.characters(categories=REFUSED_CATEGORIES)


def _any_code() -> st.SearchStrategy[str]:
    return st.lists(_any_char(), min_size=0, max_size=12).map("".join)


def _shows_as_itself(code: str) -> bool:
    return all(
        unicodedata.category(c) not in REFUSED_CATEGORIES and (c == " " or not c.isspace())
        for c in code
    )


@given(_any_code())
def test_every_code_accepted_shows_as_itself_and_none_with_a_refused_character_is(
    code: str,
) -> None:
    problem = code_problem(code, "user")
    for _field, result in _all_code_fields(code):
        assert isinstance(result, ParsedCommand) == (problem is None), (code, result)
    assert isinstance(history(code), HistoryQuery) == (problem is None)
    if problem is None:
        assert _shows_as_itself(code)
        assert code == code.strip()
        assert code == unicodedata.normalize("NFC", code)  # one text, one code
        assert shown_code(code) == code
    elif not _shows_as_itself(code):
        shown = shown_code(code)
        assert _shows_as_itself(shown), shown
        assert "\\u" in shown or "\\U" in shown


@given(
    st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=8),
    st.characters(categories=REFUSED_CATEGORIES),
    st.integers(min_value=0, max_value=8),
)
def test_a_refused_character_anywhere_in_a_code_refuses_it(
    code: str, char: str, position: int
) -> None:
    typed = code[:position] + char + code[position:]
    for _field, result in _all_code_fields(typed):
        assert isinstance(result, CommandReply)
        assert f"(U+{ord(char):04X})" in result.message, result.message
    assert isinstance(history(typed), QueryReply)


def test_every_character_of_a_refused_category_is_refused() -> None:
    for n in range(0x110000):
        char = chr(n)
        if unicodedata.category(char) in REFUSED_CATEGORIES:
            assert character_problem(char) is not None, hex(n)


class _Text(HTMLParser):
    """A page's text as a browser shows it (entities read), the style sheet left out."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._style = self._style or tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._style = self._style and tag != "style"

    def handle_data(self, data: str) -> None:
        if not self._style:
            self.parts.append(data)


def page_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


CLINIC = Clinic(treadmill="tm-c", zone=ZoneInfo("Europe/London"), titles={})
T0 = 1_796_000_000.0


@given(_any_code().filter(lambda c: c != ""))
def test_a_code_on_record_shows_in_its_reports_as_itself_or_with_escapes(code: str) -> None:
    """Every code the contract accepts is shown as typed, and a code from an older journal
    with its invisible characters as escapes: nothing on a report is invisible."""
    session = SessionRow(1, code, "first_session", 180.0, T0, T0 + 60, "cap", 60.0, 0.8)
    outcome = {"when": "before", "pain": 2, "clinician": code}
    measure = {"user": code, "kind": "tug", "value": 12.0, "date": "2026-11-30", "clinician": code}
    events = [
        EventRow(T0 + 1, EventType.OUTCOME_RECORDED, outcome),
        EventRow(T0 + 2, EventType.MEASURE_RECORDED, measure),
    ]
    # The charts are matplotlib's and show no code: left out, for speed.
    with (
        patch("treadguard.controller.report.session_chart", return_value=""),
        patch("treadguard.controller.report.trend_chart", return_value=""),
    ):
        pages = [
            session_report(session, events, [], clinic=CLINIC, written=T0),
            patient_report(code, [session], clinic=CLINIC, written=T0),
        ]
    for html in pages:
        text = page_text(html)
        assert [c for c in text if c != "\n" and not _shows_as_itself(c)] == []
        assert shown_code(code) in text


# ------------------------------------------------------------------------ the command line


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A configuration whose journal holds a session of "p-\\u202e210", recorded before codes
    were checked."""
    path = daemon_config(tmp_path, 1883, treadmill_id="tm-codes")
    journal = Journal.open(tmp_path / "journal-tm-codes.sqlite")
    started: dict[str, JsonScalar] = {
        "session_id": "1",
        "user": "p-\u202e210",
        "program": "first_session",
        "cap_s": 180.0,
    }
    journal.record(Event(EventType.SESSION_STARTED, 0.0, started), T0)
    ended: dict[str, JsonScalar] = {"session_id": "1", "reason": "cap", "belt_moving_s": 180.0}
    journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), T0 + 200)
    journal.commit()
    journal.close()
    return path


@pytest.mark.parametrize(
    "args",
    [
        ["plan", "p-012\u200b"],
        ["patient", "p-012\u200b"],
        ["export", "--fhir", "--user", "p-012\u200b"],
        ["export", "--csv", "--user", "p-012\u200b"],
        ["history", "--user", "p-012\u200b"],
        ["plan", " p-012"],
    ],
)
def test_the_command_line_refuses_a_code_no_one_has_as_the_contract_does(
    config: Path, args: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main([*args, "--config", str(config)])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    expected = code_problem(args[-1], "user")
    assert expected is not None
    assert f"error: {expected}" in err
    assert "\u200b" not in err  # the code in the message with its escape, if at all


def test_an_older_journal_s_code_still_has_its_patient_report_with_escapes(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "patient.html"
    assert main(["patient", "p-\u202e210", "--config", str(config), "--out", str(out)]) == 0
    said = capsys.readouterr()
    assert "user p-\\u202e210 contains an invisible formatting character (U+202E)" in said.err
    text = page_text(out.read_text(encoding="utf-8"))
    assert "\u202e" not in text
    assert "p-\\u202e210" in text
    assert "p-012" not in text
    assert main(["plan", "p-\u202e210", "--config", str(config)]) == 0
    said = capsys.readouterr()
    assert "warning: user p-\\u202e210 contains" in said.err
    assert "User p-\\u202e210: 1 session on record" in said.out
    assert main(["history", "--config", str(config)]) == 0
    table = capsys.readouterr().out
    assert "p-\\u202e210" in table
    assert "\u202e" not in table
