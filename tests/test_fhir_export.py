"""``treadguard export --fhir`` (docs/fhir.md): a user's sessions as a FHIR R4 Bundle, validated
with fhir.resources' R4B models. The codes, units and statuses expected here are written from
the issue and the FHIR and LOINC definitions (docs/fhir.md), not read back from the module."""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.bundle import Bundle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.daemon_process import daemon_config
from tests.test_history_report import CLINIC_SESSIONS, NEW_YORK, cli, write_sessions
from treadguard.contract.event_text import END_WORDS
from treadguard.contract.measures import MeasureKind
from treadguard.controller.fhir_export import (
    MEASURE_CODES,
    export_fhir,
    measure_observation,
    moment,
    patient,
)
from treadguard.controller.journal import EventRow, Journal, MeasureRow, SessionRow
from treadguard.controller.plan import MeasureInForce
from treadguard.controller.report import Clinic
from treadguard.safety.decisions import Event, EventType, JsonScalar

NEW_YORK_ZONE = ZoneInfo("America/New_York")
CLINIC = Clinic("tm-f", NEW_YORK_ZONE, {"reverse_walking": "Reverse walking"})
T0 = 1_796_259_600.0  # 2026-12-03 01:00:00 UTC: 2026-12-02 20:00:00 in New York (EST, -05:00)

# From the issue and the FHIR R4 definitions, by hand.
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SNOMED = "http://snomed.info/sct"
EXERCISE_DURATION = "55411-3"
PAIN_0_10 = "72514-3"
PERCEIVED_EXERTION = "82289-0"
# R4's value sets (EventStatus for Procedure, ObservationStatus), which fhir.resources does
# not check.
PROCEDURE_STATUSES = {
    "preparation", "in-progress", "not-done", "on-hold", "stopped", "completed",
    "entered-in-error", "unknown",
}  # fmt: skip
OBSERVATION_STATUSES = {
    "registered", "preliminary", "final", "amended", "corrected", "cancelled",
    "entered-in-error", "unknown",
}  # fmt: skip
# FHIR's regular expressions for its primitive types (R4 datatypes.html).
FHIR_ID = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
FHIR_STRING = re.compile(r"[ \r\n\t\S]+")
FHIR_DATETIME = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]"
    r"|3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?(Z|(\+|-)((0[0-9]|1[0-3])"
    r":[0-5][0-9]|14:00)))?)?)?"
)


def session(
    n: int = 3,
    *,
    user: str = "ann",
    reason: str | None = "cap",
    belt_s: float | None = 300.0,
    started: float = T0,
    ended: float | None = T0 + 310,
) -> SessionRow:
    return SessionRow(n, user, "reverse_walking", 300.0, started, ended, reason, belt_s, 1.0)


def outcome(ts: float, when: str, **fields: Any) -> EventRow:
    return EventRow(ts, "outcome_recorded", {"session_id": "3", "when": when, **fields})


def export(
    sessions: Sequence[SessionRow],
    events: Mapping[int, Sequence[EventRow]] | None = None,
    user: str | None = "ann",
    clinic: Clinic = CLINIC,
) -> dict[str, Any]:
    text = export_fhir(sessions, events or {}, clinic=clinic, user=user)
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def resources(bundle: Mapping[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == kind]


def url(resource: Mapping[str, Any]) -> str:
    return f"urn:uuid:{resource['id']}"


def observations(bundle: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The Observations by their code's text (before and after share a LOINC code)."""
    return {o["code"]["text"]: o for o in resources(bundle, "Observation")}


def test_a_session_with_its_clinician_s_record() -> None:
    events = {
        3: [
            EventRow(T0 + 1, "session_started", {"session_id": "3"}),
            outcome(T0 + 2, "before", pain=4),
            outcome(T0 + 400, "after", pain=6, exertion=5, notes="knee hurt", clinician="c-7"),
        ]
    }
    bundle = export([session(belt_s=95.4)], events)
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "collection"
    (person,) = resources(bundle, "Patient")
    # The user's code and nothing else: treadguard has no name, birth date or sex.
    assert set(person) == {"resourceType", "id", "identifier"}
    assert [i["value"] for i in person["identifier"]] == ["ann"]
    (proc,) = resources(bundle, "Procedure")
    assert proc["status"] == "completed"
    assert proc["subject"] == {"reference": url(person)}
    assert proc["code"]["coding"] == [
        {"system": SNOMED, "code": "229065009", "display": "Exercise therapy (regime/therapy)"}
    ]
    assert proc["performedPeriod"] == {
        "start": "2026-12-02T20:00:00-05:00",
        "end": "2026-12-02T20:05:10-05:00",
    }
    (said,) = proc["note"]
    assert "program: Reverse walking (reverse_walking)" in said["text"]
    assert said["text"] == (
        "treadguard session 3 on treadmill tm-f; program: Reverse walking (reverse_walking); "
        "session cap 5 min; top speed 1.00 mph; ended: the session cap was reached"
    )
    assert proc["code"]["text"] == "Treadmill session: Reverse walking"

    found = observations(bundle)
    assert sorted(found) == [
        "Belt-moving time of the session",
        "Pain severity after the session (0-10)",
        "Pain severity before the session (0-10)",
        "Rating of perceived exertion during the session (0-10)",
    ]
    for o in found.values():
        assert o["partOf"] == [{"reference": url(proc)}]
        assert o["subject"] == {"reference": url(person)}
    belt = found["Belt-moving time of the session"]
    assert belt["code"]["coding"][0]["system"] == LOINC
    assert belt["code"]["coding"][0]["code"] == EXERCISE_DURATION
    # 95.4 s of belt time: 1.59 min, in UCUM's minutes.
    assert belt["valueQuantity"] == {"value": 1.59, "unit": "min", "system": UCUM, "code": "min"}
    assert belt["effectivePeriod"] == proc["performedPeriod"]
    assert belt["status"] == "final"

    before = found["Pain severity before the session (0-10)"]
    after = found["Pain severity after the session (0-10)"]
    for o, value in ((before, 4), (after, 6)):
        assert o["code"]["coding"][0]["code"] == PAIN_0_10
        assert o["code"]["coding"][0]["system"] == LOINC
        assert o["valueQuantity"] == {
            "value": value,
            "unit": "score",
            "system": UCUM,
            "code": "{score}",
        }
        assert o["status"] == "final"
    # Before: the score describes the session's start; after: its end. Entered: issued.
    assert before["effectiveDateTime"] == "2026-12-02T20:00:00-05:00"
    assert before["issued"] == "2026-12-02T20:00:02-05:00"
    assert after["effectiveDateTime"] == "2026-12-02T20:05:10-05:00"
    assert after["issued"] == "2026-12-02T20:06:40-05:00"
    assert "note" not in before
    assert after["note"] == [
        {"authorString": "c-7", "time": "2026-12-02T20:06:40-05:00", "text": "knee hurt"}
    ]
    assert after["performer"][0]["identifier"]["value"] == "c-7"
    exertion = found["Rating of perceived exertion during the session (0-10)"]
    assert exertion["code"]["coding"][0]["code"] == PERCEIVED_EXERTION
    assert exertion["valueQuantity"]["value"] == 5
    assert exertion["valueQuantity"]["code"] == "{score}"


def test_the_bundle_validates_and_round_trips() -> None:
    events = {3: [outcome(T0 + 2, "before", pain=4), outcome(T0 + 400, "after", pain=2)]}
    text = export_fhir([session()], events, clinic=CLINIC, user="ann")
    model = Bundle.model_validate_json(text)
    again = model.model_dump_json(exclude_none=True, indent=2) + "\n"
    assert again == text
    assert json.loads(model.model_dump_json(exclude_none=True)) == json.loads(text)


def test_exporting_twice_gives_the_same_bundle_and_ids_are_uuid5() -> None:
    sessions = [session(1), session(2, reason="estop", belt_s=40.0)]
    events = {2: [EventRow(T0 + 50, "estop", {"cause": "fall"})]}
    first = export_fhir(sessions, events, clinic=CLINIC, user="ann")
    assert export_fhir(sessions, events, clinic=CLINIC, user="ann") == first
    bundle = json.loads(first)
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert len(set(ids)) == len(ids)
    for entry in bundle["entry"]:
        assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
        assert uuid.UUID(entry["resource"]["id"]).version == 5
    # Another treadmill's sessions 1 and 2 are other sessions: other ids.
    elsewhere = Clinic("tm-g", NEW_YORK_ZONE, {})
    other = json.loads(export_fhir(sessions, events, clinic=elsewhere, user="ann"))
    assert not {e["resource"]["id"] for e in other["entry"]} & set(ids)


def test_an_empty_history_is_an_empty_collection() -> None:
    everyone = export([], user=None)
    assert everyone["type"] == "collection"
    assert "entry" not in everyone
    Bundle.model_validate(everyone)
    (person,) = resources(export([], user="ann"), "Patient")
    assert person["identifier"][0]["value"] == "ann"


def test_a_session_without_outcomes_has_its_procedure_and_belt_time_only() -> None:
    bundle = export([session()])
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == [
        "Patient",
        "Procedure",
        "Observation",
    ]
    (belt,) = resources(bundle, "Observation")
    assert belt["valueQuantity"]["value"] == 5  # 300 s


def test_an_open_session_is_in_progress_with_no_end_and_no_belt_time() -> None:
    bundle = export([session(reason=None, belt_s=None, ended=None)])
    (proc,) = resources(bundle, "Procedure")
    assert proc["status"] == "in-progress"
    assert proc["performedPeriod"] == {"start": "2026-12-02T20:00:00-05:00"}
    assert resources(bundle, "Observation") == []


def test_corrected_outcomes_the_newest_entry_wins() -> None:
    events = {
        3: [
            outcome(T0 + 320, "after", pain=3, exertion=7, notes="first go"),
            outcome(T0 + 330, "after", pain=2, notes="corrected"),
            outcome(T0 + 340, "before", pain=5),
        ]
    }
    found = observations(export([session()], events))
    after = found["Pain severity after the session (0-10)"]
    assert after["valueQuantity"]["value"] == 2
    assert after["status"] == "amended"  # a later entry replaced an earlier one
    assert [n["text"] for n in after["note"]] == ["corrected"]
    assert after["issued"] == "2026-12-02T20:05:30-05:00"
    # The newest after-entry holds no exertion: none is exported, as the reports show none.
    assert "Rating of perceived exertion during the session (0-10)" not in found
    assert found["Pain severity before the session (0-10)"]["status"] == "final"


def test_unicode_notes_are_kept_and_characters_fhir_refuses_are_replaced() -> None:
    words = "Knie schmerzt — 膝が痛い, ça va 😀\nzweite Zeile"
    events = {3: [outcome(T0 + 320, "after", pain=1, notes=words + "\x00\x0b\u2028end")]}
    text = export_fhir([session()], events, clinic=CLINIC, user="ann")
    assert "膝が痛い" in text  # UTF-8 as it is, not escaped
    after = observations(json.loads(text))["Pain severity after the session (0-10)"]
    assert after["note"][0]["text"] == words + "\ufffd\ufffd\u2028end"  # a blank of Unicode's, kept
    Bundle.model_validate_json(text)


@pytest.mark.parametrize(
    "notes",
    ["  indented, and a blank after ", "   ", "\tTab first", "痛み\u3000なし\u00a0ok\u2028next"],
)
def test_notes_keep_their_blanks_as_entered(notes: str) -> None:
    """A note is the clinician's words as entered (a command line does not trim them as the
    page does): its blanks at either end are kept, and a note of blanks alone is still on
    record, never left out of the export."""
    events = {3: [outcome(T0 + 320, "after", pain=1, notes=notes)]}
    text = export_fhir([session()], events, clinic=CLINIC, user="ann")
    after = observations(json.loads(text))["Pain severity after the session (0-10)"]
    assert [n["text"] for n in after["note"]] == [notes]
    Bundle.model_validate_json(text)


def test_times_carry_the_clinic_s_offset_of_their_moment() -> None:
    assert moment(T0, NEW_YORK_ZONE) == "2026-12-02T20:00:00-05:00"
    assert moment(T0 - 150 * 86_400, NEW_YORK_ZONE) == "2026-07-05T21:00:00-04:00"  # EDT
    # New York's local mean time (-04:56:02, until 1883) has seconds FHIR cannot write: UTC.
    assert moment(-3e9, NEW_YORK_ZONE) == "1874-12-07T18:40:00+00:00"
    assert moment(math.nan, NEW_YORK_ZONE) is None
    assert moment(1e300, NEW_YORK_ZONE) is None
    assert moment("2026-12-02", NEW_YORK_ZONE) is None


@pytest.mark.parametrize(
    ("reason", "belt_s", "status"),
    [
        ("cap", 300.0, "completed"),
        ("completed", 480.0, "completed"),
        ("operator_stop", 120.0, "stopped"),
        ("estop", 40.0, "stopped"),
        ("fault", 12.0, "stopped"),
        ("tablet_lost", 30.0, "stopped"),
        ("interrupted", 60.0, "stopped"),
        ("start_aborted", 0.0, "not-done"),
        ("estop", 0.0, "not-done"),
        ("interrupted", None, "unknown"),
        (None, None, "in-progress"),
    ],
)
def test_the_procedure_status_says_how_far_the_session_got(
    reason: str | None, belt_s: float | None, status: str
) -> None:
    ended = None if reason is None else T0 + 600
    (proc,) = resources(export([session(reason=reason, belt_s=belt_s, ended=ended)]), "Procedure")
    assert proc["status"] == status
    if status == "completed":
        assert "statusReason" not in proc
    else:
        assert proc["statusReason"]["text"]


def test_an_emergency_stop_says_its_cause() -> None:
    events = {3: [EventRow(T0 + 50, "estop", {"cause": "fall"})]}
    (proc,) = resources(export([session(reason="estop", belt_s=40.0)], events), "Procedure")
    assert proc["statusReason"] == {"text": "emergency stop: a fall was detected"}


def test_a_score_that_is_no_score_is_absent_with_what_the_journal_holds() -> None:
    events = {3: [outcome(T0 + 2, "before", pain="x"), outcome(T0 + 3, "after", pain=11)]}
    found = observations(export([session()], events))
    before = found["Pain severity before the session (0-10)"]
    assert "valueQuantity" not in before
    assert before["dataAbsentReason"]["coding"][0]["code"] == "error"
    assert before["note"][0]["text"] == 'the entry holds "x", not a score from 0 to 10'
    after = found["Pain severity after the session (0-10)"]
    assert after["note"][0]["text"] == "the entry holds 11, not a score from 0 to 10"


def test_everyone_s_sessions_have_a_patient_each() -> None:
    bundle = export([session(1, user="ann"), session(2, user="bob")], user=None)
    people = resources(bundle, "Patient")
    assert [p["identifier"][0]["value"] for p in people] == ["ann", "bob"]
    by_url = {url(p): p["identifier"][0]["value"] for p in people}
    assert [by_url[p["subject"]["reference"]] for p in resources(bundle, "Procedure")] == [
        "ann",
        "bob",
    ]


def test_every_kind_of_measure_has_its_code_and_unit() -> None:
    assert set(MEASURE_CODES) == {k.value for k in MeasureKind}
    # UCUM: seconds for the timed tests, a score (unit 1) for the questionnaires.
    assert {k: MEASURE_CODES[k].unit for k in MEASURE_CODES} == {
        "tug": "s",
        "walk_10m": "s",
        "koos": "{score}",
        "womac": "{score}",
    }


def test_a_measure_is_an_observation_of_the_day_it_was_taken() -> None:
    subject = patient("tm-f", "ann")
    tug = MeasureRow(1, "ann", "tug", 12.25, "2026-12-01", T0, "c-7")
    o = json.loads(
        measure_observation(
            MeasureInForce(tug, tug, 1), clinic=CLINIC, subject=subject
        ).model_dump_json()
    )
    # LOINC's TUG time, in seconds (loinc.org/89423-8).
    assert o["code"]["coding"][0]["code"] == "89423-8"
    assert o["valueQuantity"] == {"value": 12.25, "unit": "s", "system": UCUM, "code": "s"}
    assert o["effectiveDateTime"] == "2026-12-01"
    assert o["subject"] == {"reference": f"urn:uuid:{subject.id}"}
    womac = MeasureRow(2, "ann", "womac", 40, "2026-12-01", T0, None)
    w = json.loads(
        measure_observation(
            MeasureInForce(womac, womac, 1), clinic=CLINIC, subject=subject
        ).model_dump_json()
    )
    assert "coding" not in w["code"]
    assert w["code"]["text"].startswith("WOMAC")


def test_the_documented_example_is_what_the_export_writes() -> None:
    """docs/fhir.md's example: three of the Bundle's entries, exactly as exported."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "fhir.md").read_text()
    shown = json.loads(doc.split("```json\n")[1].split("```")[0])
    clinic = Clinic("tm-1", NEW_YORK_ZONE, {"reverse_walking": "Reverse walking"})
    stopped = SessionRow(3, "ann", "reverse_walking", 300.0, T0, T0 + 190, "estop", 180.4, 0.9)
    events = {
        3: [
            EventRow(T0 + 180, "estop", {"cause": "fall"}),
            outcome(T0 + 1, "before", pain=4),
            outcome(
                T0 + 360,
                "after",
                pain=6,
                notes="knee hurt on the way down",
                clinician="c-7",
                exertion=5,
            ),
        ]
    }
    bundle = export([stopped], events, clinic=clinic)
    assert {k: v for k, v in bundle.items() if k != "entry"} == {
        k: v for k, v in shown.items() if k != "entry"
    }
    assert len(bundle["entry"]) == 6
    for entry in shown["entry"]:
        assert entry in bundle["entry"]


# --------------------------------------------------------------------------- odd journals


def walk(value: object) -> Iterator[tuple[str, object]]:
    """Every (key, value) pair in a JSON document."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k, v
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)


def check_fhir(text: str) -> None:
    """What fhir.resources' models check, and the rules of FHIR R4 they leave to others."""
    model = Bundle.model_validate_json(text)
    assert model.model_dump_json(exclude_none=True, indent=2) + "\n" == text
    bundle = json.loads(text)
    assert bundle["type"] == "collection"
    urls = {e["fullUrl"] for e in bundle.get("entry", [])}
    assert len(urls) == len(bundle.get("entry", []))
    for entry in bundle.get("entry", []):
        r = entry["resource"]
        assert FHIR_ID.fullmatch(r["id"])
        if r["resourceType"] == "Procedure":
            assert r["status"] in PROCEDURE_STATUSES
        if r["resourceType"] == "Observation":
            assert r["status"] in OBSERVATION_STATUSES
            assert ("valueQuantity" in r) != ("dataAbsentReason" in r)  # obs-6
    for key, value in walk(bundle):
        if key == "reference":
            assert value in urls  # every reference resolves inside the Bundle
        if isinstance(value, str):
            assert value == value.strip(), (key, value)
            assert FHIR_STRING.fullmatch(value), (key, value)
        if key in ("start", "end", "effectiveDateTime", "issued", "time"):
            assert isinstance(value, str)
            assert FHIR_DATETIME.fullmatch(value), (key, value)
    for _, period in walk(bundle):
        if isinstance(period, dict) and "start" in period and "end" in period:
            start, end = (datetime.fromisoformat(period[k]) for k in ("start", "end"))
            assert start <= end  # per-1


ODD_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.sampled_from([0.0, -1.0, 1e300, -1e300, 253402300800.0, -62135596801.0]),
)
ODD_JSON = st.recursive(
    st.none() | st.booleans() | ODD_NUMBERS | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=5,
)
REASONS = st.one_of(
    st.none(),
    st.sampled_from(list(END_WORDS)),
    st.text(),
)
# From before time zones had whole-minute offsets (New York's was -04:56:02 until 1883) to
# after 2100.
TIMES = st.one_of(st.floats(min_value=-1e10, max_value=4.2e9), ODD_NUMBERS)


@st.composite
def odd_sessions(draw: st.DrawFn) -> tuple[list[SessionRow], dict[int, list[EventRow]]]:
    ids = draw(st.lists(st.integers(min_value=1, max_value=2**40), unique=True, max_size=4))
    users = st.sampled_from(["ann", "", " ", "bob\x00", "ü/..", "\ud800"]) | st.text()
    sessions = [
        SessionRow(
            n,
            draw(users),
            draw(st.text()),
            draw(ODD_NUMBERS),
            draw(TIMES),
            draw(st.none() | TIMES),
            draw(REASONS),
            draw(st.none() | ODD_NUMBERS),
            draw(st.none() | ODD_NUMBERS),
        )
        for n in ids
    ]
    fields = st.fixed_dictionaries(
        {"when": st.sampled_from(["before", "after"]) | ODD_JSON},
        optional={
            "pain": ODD_JSON | st.integers(0, 10),
            "exertion": ODD_JSON | st.integers(0, 10),
            "notes": ODD_JSON | st.text(),
            "clinician": ODD_JSON | st.text(),
            "session_id": ODD_JSON,
        },
    )
    kinds = st.sampled_from(["outcome_recorded", "estop", "fault", "session_ended"]) | st.text()
    events = {
        n: [
            EventRow(draw(TIMES), draw(kinds), draw(fields | st.dictionaries(st.text(), ODD_JSON)))
            for _ in range(draw(st.integers(0, 4)))
        ]
        for n in ids
    }
    return sessions, events


ODD_MEASURES = st.lists(
    st.builds(
        MeasureRow,
        id=st.integers(min_value=1, max_value=2**40),
        user=st.sampled_from(["ann", "", "\ud800"]) | st.text(),
        kind=st.sampled_from([k.value for k in MeasureKind]) | st.text(),
        value=st.floats(allow_nan=True, allow_infinity=True),
        measured_on=st.sampled_from(["2026-12-01", "2026-02-30", "0000-01-01", ""]) | st.text(),
        recorded_at=TIMES,
        clinician=st.none() | st.text(),
    ),
    max_size=4,
    unique_by=lambda m: m.id,  # the table's key
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(journal=odd_sessions(), measures=ODD_MEASURES, user=st.none() | st.text())
def test_any_journal_exports_to_a_valid_bundle(
    journal: tuple[list[SessionRow], dict[int, list[EventRow]]],
    measures: list[MeasureRow],
    user: str | None,
) -> None:
    sessions, events = journal
    text = export_fhir(sessions, events, clinic=CLINIC, measures=measures, user=user)
    check_fhir(text)
    assert export_fhir(sessions, events, clinic=CLINIC, measures=measures, user=user) == text
    bundle = json.loads(text)
    assert len(resources(bundle, "Procedure")) == len(sessions)  # no session is lost
    # ... and no measure: an Observation each, part of no Procedure; one a user, kind and day
    # (an entry made again for the same day corrects the one before, as the reports show it).
    days = {(m.user, m.kind, m.measured_on) for m in measures}
    assert len([o for o in resources(bundle, "Observation") if "partOf" not in o]) == len(days)


# --------------------------------------------------------------------------- the command


@pytest.fixture
def clinic(tmp_path: Path) -> Path:
    """test_history_report's five sessions of ann and bob, in New York."""
    path = daemon_config(tmp_path, 1883, treadmill_id="tm-c", extra=NEW_YORK)
    write_sessions(tmp_path / "journal-tm-c.sqlite", CLINIC_SESSIONS)
    return path


def test_the_command_writes_a_user_s_bundle(clinic: Path, tmp_path: Path) -> None:
    out = cli("export", "--fhir", "--user", "ann", "--config", str(clinic))
    assert out.returncode == 0, out.stderr
    check_fhir(out.stdout)
    bundle = json.loads(out.stdout)
    assert [p["identifier"][0]["value"] for p in resources(bundle, "Patient")] == ["ann"]
    procedures = resources(bundle, "Procedure")
    assert [p["identifier"][0]["value"] for p in procedures] == ["1", "3", "4", "5"]
    assert [p["status"] for p in procedures] == ["completed", "stopped", "stopped", "completed"]
    assert procedures[0]["performedPeriod"]["start"] == "2026-11-30T19:53:20-05:00"
    # Session 3: pain 4 before, 6 after ("knee hurt"); session 4's after was corrected to 2.
    pains = [
        (o["partOf"][0]["reference"], o["valueQuantity"]["value"])
        for o in resources(bundle, "Observation")
        if o["code"]["coding"][0]["code"] == PAIN_0_10
    ]
    s3, s4 = url(procedures[1]), url(procedures[2])
    assert pains == [(s3, 4), (s3, 6), (s4, 2)]
    # Belt minutes of each session (180.2 s, 95.4 s, 241 s, 480 s), and session 4's exertion.
    belts = [
        o["valueQuantity"]["value"]
        for o in resources(bundle, "Observation")
        if o["code"]["coding"][0]["code"] == EXERCISE_DURATION
    ]
    assert belts == [3, 1.59, 4.02, 8]
    (exertion,) = [
        o
        for o in resources(bundle, "Observation")
        if o["code"]["coding"][0]["code"] == PERCEIVED_EXERTION
    ]
    assert (exertion["partOf"][0]["reference"], exertion["valueQuantity"]["value"]) == (s4, 5)

    into = tmp_path / "out"
    into.mkdir()
    again = cli("export", "--fhir", "--user", "ann", "--config", str(clinic), "--out", str(into))
    assert again.returncode == 0, again.stderr
    written = into / "sessions-tm-c-ann.fhir.json"
    assert again.stdout.strip() == str(written)
    assert written.read_text(encoding="utf-8") == out.stdout  # the same Bundle, twice


def test_the_command_exports_the_user_s_measures(clinic: Path, tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "journal-tm-c.sqlite")
    taken: list[tuple[str, str, float, str]] = [
        ("ann", "tug", 14.5, "2026-11-20"),  # baseline
        ("ann", "koos", 52.0, "2026-11-20"),
        ("ann", "tug", 11.2, "2026-12-04"),  # follow-up
        ("dee", "walk_10m", 9.8, "2026-12-01"),  # a baseline before any session
    ]
    for user, kind, value, day in taken:
        measure: dict[str, JsonScalar] = {
            "user": user,
            "kind": kind,
            "value": value,
            "date": day,
            "clinician": "c-7",
        }
        journal.record(Event(EventType.MEASURE_RECORDED, 0.0, measure), T0)
    journal.commit()
    journal.close()

    out = cli("export", "--fhir", "--user", "ann", "--config", str(clinic))
    assert out.returncode == 0, out.stderr
    check_fhir(out.stdout)
    bundle = json.loads(out.stdout)
    (person,) = resources(bundle, "Patient")
    measures = [o for o in resources(bundle, "Observation") if "partOf" not in o]
    assert [
        (o["code"]["coding"][0]["code"], o["valueQuantity"]["value"], o["effectiveDateTime"])
        for o in measures
    ] == [
        ("89423-8", 14.5, "2026-11-20"),  # LOINC's TUG, seconds
        ("72091-2", 52, "2026-11-20"),  # LOINC's KOOS
        ("89423-8", 11.2, "2026-12-04"),
    ]
    assert {o["subject"]["reference"] for o in measures} == {url(person)}

    # A user with a baseline measure and no session yet has a record to export.
    dee = cli("export", "--fhir", "--user", "dee", "--config", str(clinic))
    assert dee.returncode == 0, dee.stderr
    check_fhir(dee.stdout)
    (walk,) = resources(json.loads(dee.stdout), "Observation")
    assert walk["code"]["text"] == "10 metre walk test, time"
    assert walk["valueQuantity"] == {"value": 9.8, "unit": "s", "system": UCUM, "code": "s"}
    # Everyone's export: ann's and bob's sessions, and ann's and dee's measures.
    everyone = json.loads(cli("export", "--fhir", "--config", str(clinic)).stdout)
    people = [p["identifier"][0]["value"] for p in resources(everyone, "Patient")]
    assert people == ["ann", "bob", "dee"]
    assert len([o for o in resources(everyone, "Observation") if "partOf" not in o]) == 4


def test_the_command_s_bad_input_is_a_clear_error(clinic: Path, tmp_path: Path) -> None:
    def refused(*args: str) -> str:
        done = cli("export", "--fhir", *args, "--config", str(clinic))
        assert done.returncode == 2, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        return done.stderr.strip()

    assert refused("--user", "eve") == "error: no sessions of 'eve' in the journal"
    under_a_file = tmp_path / "journal-tm-c.sqlite" / "x.json"
    assert refused("--out", str(under_a_file)) == (
        f"error: cannot write the sessions to {under_a_file}: Not a directory"
    )
