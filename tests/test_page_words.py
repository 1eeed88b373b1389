"""The tablet page's words for the contract's codes (``tablet/words.js``) are the ones of
``contract/event_text.py``, and cover every code the contract defines: an event type, a cause,
an end reason, a refusal, a sensor or a state added to the contract without words fails here,
not on a clinician's screen as a bare code. Its measures are those of
``contract/measures.py``, with the ranges the daemon checks."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest

from treadguard.contract import event_text
from treadguard.contract.measures import MEASURES, MeasureKind
from treadguard.contract.mqtt import ErrorCode
from treadguard.controller.page_words import main, render
from treadguard.safety.decisions import Cause, EndReason, EventType, State
from treadguard.safety.inputs import Sensor

TABLET = Path(__file__).resolve().parents[1] / "tablet"
WORDS_JS = TABLET / "words.js"

# Each table of the page, and the codes it must have words for.
COVERS: dict[str, type[StrEnum]] = {
    "causes": Cause,
    "causeHints": Cause,
    "endReasons": EndReason,
    "refusals": ErrorCode,
    "sensors": Sensor,
    "states": State,
    "events": EventType,
}


# Codes the daemon sends beyond the safety core's: a session a crash left open ends as
# "interrupted" (the restarted daemon's session_ended).
EXTRA_CODES: dict[str, set[str]] = {"endReasons": {"interrupted"}}


# Not words for codes: what the page needs to know of each measure a clinician enters.
MEASURE_TABLE = "measures"


def page_words() -> dict[str, Any]:
    """WORDS as the page gets it: the JSON of what page_words writes into tablet/words.js."""
    text = render()
    found = re.search(r"^const WORDS = (\{.*\});$", text, re.DOTALL | re.MULTILINE)
    assert found, "tablet/words.js does not define WORDS"
    words = json.loads(found.group(1))
    assert isinstance(words, dict)
    return words


def test_the_page_s_copy_is_written_from_event_text_and_never_kept_by_hand(
    tmp_path: Path,
) -> None:
    """tablet/words.js is written by scripts/test, scripts/run and scripts/install from the
    tables, and git ignores it: a copy kept by hand would drift from the vocabulary."""
    out = tmp_path / "words.js"
    assert main([str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render()
    ignored = (TABLET.parent / ".gitignore").read_text(encoding="utf-8").split()
    assert "tablet/words.js" in ignored


@pytest.mark.parametrize("table", sorted(COVERS))
def test_the_page_has_words_for_every_code_the_contract_defines(table: str) -> None:
    words = page_words()
    assert set(words) == {*COVERS, MEASURE_TABLE}, "a table of words.js without a check here"
    codes = {code.value for code in COVERS[table]} | EXTRA_CODES.get(table, set())
    assert set(words[table]) == codes, f"{table}: missing {codes - set(words[table])}"
    for code, text in words[table].items():
        assert text.strip(), f"{table}.{code} has no words"
        # Plain words: a code (a word with an underscore) is never its own explanation.
        assert not re.search(r"\b\w+_\w+\b", text), f"{table}.{code}: {text!r} shows a code"


def test_the_page_has_every_measure_with_the_range_the_daemon_checks() -> None:
    measures = page_words()[MEASURE_TABLE]
    # In contract/measures.py's order: the page lists them so.
    assert list(measures) == [kind.value for kind in MeasureKind]
    for kind, m in MEASURES.items():
        # The bounds the daemon checks a value against, as the page checks it before sending.
        assert (measures[kind.value]["lowest"], measures[kind.value]["highest"]) == (
            m.lowest,
            m.highest,
        )
    assert measures["tug"] == {
        "title": "Timed Up and Go",
        "unit": "s",
        "lowest": 1.0,
        "highest": 300.0,
        "range": "1 to 300 s",
        "places": 2,
        "steps": "steps of 0.01 s",
    }
    assert measures["womac"] == {
        "title": "WOMAC",
        "unit": "",
        "lowest": 0.0,
        "highest": 96.0,
        "range": "0 to 96",
        "places": 0,
        "steps": "whole numbers",
    }


def test_a_tablet_e_stop_has_nothing_to_clear() -> None:
    hint = event_text.CAUSE_HINTS[Cause.REMOTE_ESTOP]
    assert "Nothing to clear" in hint
    assert "Clear the cause" not in hint


def test_the_page_loads_the_words_before_its_code_and_has_no_tables_of_its_own() -> None:
    html = (TABLET / "index.html").read_text(encoding="utf-8")
    assert html.index('src="words.js"') < html.index('src="tablet.js"')
    code = (TABLET / "tablet.js").read_text(encoding="utf-8")
    # The page's former tables of causes and reasons: the words are only in words.js now.
    for code_name in ("grip_lost", "operator_stop", "preconditions_unmet"):
        assert code_name not in code, f"tablet.js spells {code_name}: its words are in words.js"
    for table in set(re.findall(r"WORDS\.(\w+)", code)):
        assert table in {*COVERS, MEASURE_TABLE}, f"tablet.js reads WORDS.{table}, not in words.js"
    # Nor a list of measures: their titles and ranges are only in words.js.
    for kind, m in MEASURES.items():
        for spelt in (f'"{kind.value}"', m.title, m.range_words()):
            assert spelt not in code + html, f"the page spells {spelt}: it is in words.js"


def test_page_words_writes_the_file(tmp_path: Path) -> None:
    out = tmp_path / "words.js"
    assert main([str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render()
    assert main([]) == 2
