"""``tablet/words.js``: the tablet page's copy of the plain words in ``contract/event_text.py``,
and of the measures of ``contract/measures.py`` (their titles, units, ranges and resolutions).

The page is static files a browser runs, so it cannot import the Python tables; this writes
them out as one JavaScript constant, ``WORDS``, so the page and the terminal keep one
vocabulary, and the page checks a measure against the ranges and resolutions the daemon checks
it against, and shows its number as the reports do.
The file is generated, never committed (git ignores it): scripts/test and scripts/run write
it with the page's other dependencies, scripts/install into the installed page, and the
browser tests before they serve the page:

    python -m treadguard.controller.page_words tablet/words.js
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from treadguard.contract.event_text import (
    CAUSE_HINTS,
    CAUSE_WORDS,
    END_WORDS,
    EVENT_WORDS,
    REFUSAL_WORDS,
    SENSOR_WORDS,
    STATE_WORDS,
)
from treadguard.contract.measures import MEASURES

HEADER = """\
// The plain words for the contract's codes: a copy of the tables in contract/event_text.py,
// and the measures' titles, units and ranges of contract/measures.py. Written by
// `python -m treadguard.controller.page_words tablet/words.js` (scripts/test, scripts/run and
// scripts/install do). Generated: not kept in git, not edited by hand.
"use strict";
"""


Code = TypeVar("Code", bound=StrEnum)


def _plain(table: Mapping[Code, str]) -> dict[str, str]:
    return {code.value: words for code, words in table.items()}


def tables() -> dict[str, dict[str, str]]:
    """The tables by the names the page uses (``WORDS.causes.grip_lost``)."""
    return {
        "causes": _plain(CAUSE_WORDS),
        "causeHints": _plain(CAUSE_HINTS),
        "endReasons": dict(END_WORDS),
        "refusals": _plain(REFUSAL_WORDS),
        "sensors": _plain(SENSOR_WORDS),
        "states": _plain(STATE_WORDS),
        "events": _plain(EVENT_WORDS),
    }


def measures() -> dict[str, dict[str, str | float]]:
    """The measures a clinician enters, by kind, in contract/measures.py's order (the page's
    list): ``WORDS.measures.tug.title``, its ``unit`` ("" for a score), ``lowest`` and
    ``highest``, ``range`` in words ("1 to 300 s"), and its resolution: ``places`` (decimal
    places) and ``steps`` in words ("steps of 0.01 s", "whole numbers")."""
    return {
        kind.value: {
            "title": m.title,
            "unit": m.unit,
            "lowest": m.lowest,
            "highest": m.highest,
            "range": m.range_words(),
            "places": m.places,
            "steps": m.step_words(),
        }
        for kind, m in MEASURES.items()
    }


def render() -> str:
    words = {**tables(), "measures": measures()}
    return f"{HEADER}const WORDS = {json.dumps(words, indent=2, ensure_ascii=False)};\n"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m treadguard.controller.page_words tablet/words.js", file=sys.stderr)
        return 2
    Path(argv[0]).write_text(render(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
