"""``treadguard export --fhir`` of everyone's sessions: the user codes are the only thing that
tells patients apart (docs/fhir.md), so two users the journal keeps apart are two Patients
with two different identifiers, whatever characters their codes hold (a code typed with an
input method's ideographic space, or a no-break space, is another user's code)."""

from __future__ import annotations

import json
import re

from hypothesis import given
from hypothesis import strategies as st

from tests.test_fhir_export import CLINIC, FHIR_STRING, T0, resources
from treadguard.controller.fhir_export import code_value, export_fhir
from treadguard.controller.journal import EventRow, SessionRow


def test_users_the_journal_keeps_apart_have_identifiers_that_differ() -> None:
    users = ["p 1", "p\u30001", "p\u00a01"]
    sessions = [
        SessionRow(n, user, "reverse_walking", 300.0, T0 + n, T0 + n + 310, "cap", 300.0, 1.0)
        for n, user in enumerate(users, start=1)
    ]
    bundle = json.loads(export_fhir(sessions, {}, clinic=CLINIC, user=None))
    patients = resources(bundle, "Patient")
    assert len(patients) == 3
    identifiers = {(p["identifier"][0]["system"], p["identifier"][0]["value"]) for p in patients}
    assert len(identifiers) == 3, identifiers


def _read_back(value: str) -> str:
    return re.sub(r"\\u([0-9a-f]{4})", lambda m: chr(int(m.group(1), 16)), value)


@given(st.text(min_size=1, max_size=30))
def test_a_code_is_written_as_a_fhir_string_that_reads_back_to_it(code: str) -> None:
    value = code_value(code)
    assert value is not None
    assert FHIR_STRING.fullmatch(value), value
    assert value == value.strip()  # FHIR trims a string's ends: nothing there to lose
    assert _read_back(value) == code


def test_a_plain_code_is_written_as_it_is() -> None:
    assert code_value("ann") == "ann"
    assert code_value("p 1") == "p 1"
    assert code_value("p\u30001") == "p\\u30001"
    assert code_value("a\\b") == "a\\u005cb"
    assert code_value("") is None


def test_clinicians_the_journal_keeps_apart_are_two_performers() -> None:
    session = SessionRow(1, "ann", "reverse_walking", 300.0, T0, T0 + 310, "cap", 300.0, 1.0)
    before = {"when": "before", "pain": 2, "clinician": "c 7"}
    after = {"when": "after", "pain": 3, "clinician": "c\u00a07"}
    events = {
        1: [
            EventRow(T0 + 320, "outcome_recorded", before),
            EventRow(T0 + 330, "outcome_recorded", after),
        ]
    }
    bundle = json.loads(export_fhir([session], events, clinic=CLINIC, user="ann"))
    performers = {
        o["performer"][0]["identifier"]["value"]
        for o in resources(bundle, "Observation")
        if "performer" in o
    }
    assert performers == {"c 7", "c\\u00a07"}
