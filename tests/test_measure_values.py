"""A measure's value is kept to its kind's resolution (contract/measures.py): a KOOS to 0.1
(its subscale scores are means of items, 64.3), a WOMAC total in whole numbers (a sum of 0-4
answers), a timed test to 0.01 s (a stopwatch's hundredths). A finer value is refused, never
rounded; -0 is 0. The report, the history answer (the patient view's words) and the FHIR
export show one number for one measure, also for a value an older journal holds, and an
unchanged measure is "no change"."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_fhir_export import CLINIC, T0
from tests.test_plan_commands import Desk, refused
from treadguard.contract.measures import MEASURES, MeasureKind
from treadguard.contract.mqtt import ParsedCommand, parse_command
from treadguard.controller.fhir_export import measure_observation, patient
from treadguard.controller.journal import MeasureRow
from treadguard.controller.plan import MeasureInForce, measure_trends
from treadguard.controller.report_text import measure_words
from treadguard.safety.decisions import Accepted, RefusalCode
from treadguard.safety.inputs import RecordMeasure


@pytest.fixture
def desk() -> Iterator[Desk]:
    d = Desk()
    yield d
    d.system.close()


ACCEPTED = [
    ("koos", 64.3),
    ("koos", 0),
    ("koos", 100),
    ("koos", 99.9),
    ("koos", 0.1),
    ("womac", 0),
    ("womac", 31),
    ("womac", 96),
    ("tug", 1),
    ("tug", 12.34),
    ("tug", 300),
    ("walk_10m", 8.05),
    ("walk_10m", 299.99),
]
REFUSED = [
    ("koos", 64.35, "a KOOS is 0 to 100 in steps of 0.1, not 64.35"),
    ("koos", 4.94066e-324, "a KOOS is 0 to 100 in steps of 0.1, not 5e-324"),
    ("koos", 0.05, "a KOOS is 0 to 100 in steps of 0.1, not 0.05"),
    ("koos", 64.3000001, "a KOOS is 0 to 100 in steps of 0.1, not 64.3000001"),
    ("womac", 1e-09, "a WOMAC is 0 to 96 in whole numbers, not 1e-09"),
    ("womac", 31.5, "a WOMAC is 0 to 96 in whole numbers, not 31.5"),
    ("womac", 95.99, "a WOMAC is 0 to 96 in whole numbers, not 95.99"),
    ("tug", 12.345, "a Timed Up and Go is 1 to 300 s in steps of 0.01 s, not 12.345"),
    ("walk_10m", 1.001, "a 10 m walk is 1 to 300 s in steps of 0.01 s, not 1.001"),
    # Out of range is said first, as before.
    ("tug", 300.001, "a Timed Up and Go is 1 to 300 s, not 300.001"),
    ("koos", -0.1, "a KOOS is 0 to 100, not -0.1"),
]


@pytest.mark.parametrize(("kind", "value"), ACCEPTED)
def test_a_measure_at_its_kind_s_resolution_is_kept_as_entered(
    desk: Desk, kind: str, value: float
) -> None:
    assert isinstance(desk.send(RecordMeasure(0.0, "p-1", kind, value)), Accepted)
    assert [m.value for m in desk.journal.measures("p-1")] == [value]


@pytest.mark.parametrize(("kind", "value", "words"), REFUSED)
def test_a_measure_finer_than_its_kind_s_resolution_is_refused_in_words(
    desk: Desk, kind: str, value: float, words: str
) -> None:
    reply = desk.send(RecordMeasure(0.0, "p-1", kind, value))
    assert refused(reply, RefusalCode.OUT_OF_RANGE) == words
    assert desk.journal.measures("p-1") == []


def test_minus_zero_is_taken_as_zero() -> None:
    payload = (
        b'{"id": "m", "type": "record_measure", "user": "p-1", "kind": "koos", "value": -0.0,'
        b' "ts": 1764000000.0}'
    )
    parsed = parse_command(payload, retained=False, t=0.0)
    assert isinstance(parsed, ParsedCommand)
    assert isinstance(parsed.command, RecordMeasure)
    assert parsed.command.value == 0.0
    assert math.copysign(1.0, parsed.command.value) == 1.0


def row(kind: str, value: float, day: str = "2026-12-01", n: int = 1) -> MeasureRow:
    return MeasureRow(n, "p-1", kind, value, day, T0, None)


def fhir_value(measure: MeasureRow) -> Decimal:
    observation = measure_observation(
        MeasureInForce(measure, measure, 1), clinic=CLINIC, subject=patient("tm-f", "p-1")
    )
    text = observation.model_dump_json()
    quantity = json.loads(text, parse_float=Decimal, parse_int=Decimal)["valueQuantity"]
    assert '"value":-0' not in text.replace(" ", "")
    value = quantity["value"]
    assert isinstance(value, Decimal)
    return value


def report_number(kind: str, value: float) -> Decimal:
    """The number a report (and the history answer) shows for a measure."""
    words = measure_words(kind, value)
    title = MEASURES[MeasureKind(kind)].title
    number = words.removeprefix(f"{title} ").removesuffix(" s")
    assert "e" not in number, words
    assert not number.startswith("-0"), words
    return Decimal(number)


# As an older journal may hold them, before values were checked.
ON_RECORD = [
    ("koos", -0.0, "KOOS 0", Decimal(0)),
    ("koos", 4.94066e-324, "KOOS 0", Decimal(0)),
    ("womac", 1e-09, "WOMAC 0", Decimal(0)),
    ("womac", 40, "WOMAC 40", Decimal(40)),
    ("koos", 64.3, "KOOS 64.3", Decimal("64.3")),
    ("koos", 62, "KOOS 62", Decimal(62)),
    ("tug", 12.25, "Timed Up and Go 12.25 s", Decimal("12.25")),
    ("tug", 12.0, "Timed Up and Go 12.0 s", Decimal(12)),
    ("tug", 12.5, "Timed Up and Go 12.5 s", Decimal("12.5")),
    ("walk_10m", 8.004, "10 m walk 8.0 s", Decimal(8)),
]


@pytest.mark.parametrize(("kind", "value", "words", "number"), ON_RECORD)
def test_the_report_and_the_fhir_export_show_one_number(
    kind: str, value: float, words: str, number: Decimal
) -> None:
    assert measure_words(kind, value) == words
    assert fhir_value(row(kind, value)) == number


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(MeasureKind)), st.floats(allow_nan=False, allow_infinity=False))
def test_any_value_on_record_is_the_same_number_in_the_report_and_the_export(
    kind: MeasureKind, value: float
) -> None:
    measure = MEASURES[kind]
    value = min(max(value, measure.lowest), measure.highest)  # the ranges were always checked
    assert report_number(kind.value, value) == fhir_value(row(kind.value, value))


def changes(kind: str, *values: float) -> str:
    rows = [row(kind, v, f"2026-12-0{n + 1}", n) for n, v in enumerate(values)]
    (trend,) = measure_trends(rows)
    return trend.change


def test_a_change_is_said_at_the_measure_s_resolution_and_none_is_no_change() -> None:
    assert changes("koos", 62, 62) == "no change"
    assert changes("koos", 0, 4.94066e-324) == "no change"  # as an older journal may hold
    assert changes("koos", -0.0, 0) == "no change"
    assert changes("womac", 40, 40 + 1e-09) == "no change"
    assert changes("tug", 12.0, 12.0) == "no change"
    assert changes("koos", 55, 61) == "+6, better"
    assert changes("koos", 55.5, 61) == "+5.5, better"
    assert changes("koos", 61, 60.9) == "-0.1, worse"
    assert changes("womac", 40, 37) == "-3, better"
    assert changes("tug", 12.0, 11.96) == "-0.04 s, better"
    assert changes("tug", 12.0, 10.5) == "-1.5 s, better"
    assert changes("walk_10m", 9.99, 10.01) == "+0.02 s, worse"
    (trend,) = measure_trends([row("koos", -0.0)])
    assert trend.baseline == "0, 2026-12-01"
