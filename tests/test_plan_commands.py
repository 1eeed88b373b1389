"""The patient's plan on the contract (docs/tablet-contract.md, docs/plan.md):
``confirm_first_session`` and ``record_measure`` read from payloads written by hand from the
docs, answered by the daemon's own assembly (controller/system.py) with a journal, refused in
words when they cannot be done; measures in their own table, which an older journal gains when
it is opened for writing."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from treadguard.config.loading import LoadedConfig, load_config
from treadguard.contract.measures import MEASURES, MeasureKind
from treadguard.contract.mqtt import CommandReply, ErrorCode, ParsedCommand, parse_command
from treadguard.controller.drives import in_process_rig
from treadguard.controller.journal import SCHEMA_VERSION, Journal, MeasureRow, schema_version
from treadguard.controller.system import MEASURES_A_DAY_MAX, System, open_journal
from treadguard.safety.decisions import (
    Accepted,
    Event,
    EventType,
    JsonScalar,
    RefusalCode,
    Refused,
    Reply,
)
from treadguard.safety.inputs import ConfirmFirstSession, RecordMeasure, StartSession, TabletCommand
from treadguard.simulator.virtual_loop import VirtualLoop

ROOT = Path(__file__).resolve().parents[1]
SIM = load_config(ROOT / "config" / "sim.toml")
# 2026-12-04 12:00 UTC: the clinic's day in London is 2026-12-04, in Auckland already the 5th.
NOW = datetime.fromisoformat("2026-12-04T12:00:00+00:00").timestamp()


def parse(text: str) -> object:
    result = parse_command(text.encode(), retained=False, t=0.0)
    return result.command if isinstance(result, ParsedCommand) else result


# ----------------------------------------------------------------------------- the contract


def test_the_commands_as_the_contract_reads_them() -> None:
    confirm = parse(
        '{"id": "c1", "type": "confirm_first_session", "session_id": "12", "ts": 1764000000.0}'
    )
    assert confirm == ConfirmFirstSession(t=0.0, session_id="12")
    by = parse(
        '{"id": "c2", "type": "confirm_first_session", "session_id": "12", "clinician": "c-7",'
        ' "ts": 1764000000.0}'
    )
    assert by == ConfirmFirstSession(t=0.0, session_id="12", clinician="c-7")
    measure = parse(
        '{"id": "m1", "type": "record_measure", "user": "p-012", "kind": "tug", "value": 11.5,'
        ' "date": "2026-11-20", "clinician": "c-7", "ts": 1764000000.0}'
    )
    assert measure == RecordMeasure(
        t=0.0, user="p-012", kind="tug", value=11.5, date="2026-11-20", clinician="c-7"
    )
    # An integer score is a number too; the date may be left out (today, the clinic's).
    koos = parse(
        '{"id": "m2", "type": "record_measure", "user": "p-012", "kind": "koos", "value": 62,'
        ' "ts": 1764000000.0}'
    )
    assert koos == RecordMeasure(t=0.0, user="p-012", kind="koos", value=62.0)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ('"type": "confirm_first_session"', "session_id"),
        ('"type": "confirm_first_session", "session_id": 12', "session_id"),
        ('"type": "confirm_first_session", "session_id": "0"', "session_id"),
        ('"type": "confirm_first_session", "session_id": "12", "clinician": ""', "clinician"),
        ('"type": "record_measure", "user": "p-1", "kind": "tug"', "value"),
        ('"type": "record_measure", "user": "p-1", "kind": "bmi", "value": 22', "kind"),
        ('"type": "record_measure", "user": "p-1", "kind": "tug", "value": "12"', "value"),
        ('"type": "record_measure", "user": "p-1", "kind": "tug", "value": true', "value"),
        ('"type": "record_measure", "user": "  ", "kind": "tug", "value": 12', "user"),
        ('"type": "record_measure", "user": "p-1", "kind": "tug", "value": 12,'
         ' "date": "4/12/2026"', "date"),
        ('"type": "record_measure", "user": "p-1", "kind": "tug", "value": 12,'
         ' "when": "baseline"', "when"),
    ],
)  # fmt: skip
def test_a_malformed_command_is_refused_naming_its_field(payload: str, field: str) -> None:
    result = parse_command(('{"id": "a", ' + payload + "}").encode(), retained=False, t=0.0)
    assert isinstance(result, CommandReply)
    assert result.error is ErrorCode.INVALID_COMMAND
    assert field in result.message


# ----------------------------------------------------------------------------- the daemon


class Desk:
    """The daemon's assembly with a journal in memory, the wall clock at NOW, and sessions on
    record as the daemon journals them."""

    def __init__(self, loaded: LoadedConfig = SIM) -> None:
        self.loop = VirtualLoop()
        opened = open_journal(None, max_size_mb=64, wall=self.wall)
        assert opened.journal is not None
        self.journal = opened.journal
        self.system = System(
            loaded, self.loop, in_process_rig(loaded, self.loop.time).driver, opened, wall=self.wall
        )
        self.published: list[Event] = []
        self.system.subscribe(self.published.append, name="test")

    def wall(self) -> float:
        return NOW + self.loop.time()

    def session(
        self, n: int, user: str, program: str, reason: str | None, belt_s: float | None
    ) -> None:
        started: dict[str, JsonScalar] = {
            "session_id": str(n), "user": user, "program": program, "cap_s": 180.0,
        }  # fmt: skip
        self.journal.record(Event(EventType.SESSION_STARTED, 0.0, started), NOW - 3600 + n)
        if reason is not None:
            ended: dict[str, JsonScalar] = {
                "session_id": str(n), "reason": reason, "belt_moving_s": belt_s,
            }  # fmt: skip
            self.journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), NOW - 3000 + n)

    def send(self, command: TabletCommand) -> Reply:
        # A second and more apart: each refusal is published on its own, none coalesced.
        self.loop.run_until(self.loop.time() + 1.5)
        reply = self.system.execute(command)
        assert reply is not None
        return reply

    def refusals(self) -> list[tuple[JsonScalar, JsonScalar]]:
        return [
            (e.fields["command"], e.fields["message"])
            for e in self.published
            if e.type is EventType.COMMAND_REFUSED
        ]


@pytest.fixture
def desk() -> Iterator[Desk]:
    d = Desk()
    yield d
    d.system.close()


def refused(reply: Reply, code: RefusalCode) -> str:
    assert isinstance(reply, Refused), reply
    assert reply.code is code, reply
    return reply.message


def test_a_confirmed_first_session_counts_at_the_next_start(desk: Desk) -> None:
    minimum = {"first_session": 180.0}
    desk.session(1, "p-1", "first_session", "operator_stop", 3.0)
    assert not desk.journal.has_history("p-1", minimum, confirmations=True)
    assert isinstance(desk.send(ConfirmFirstSession(0.0, "1", clinician="c-7")), Accepted)
    confirmed = [e for e in desk.published if e.type is EventType.FIRST_SESSION_CONFIRMED]
    assert [e.fields for e in confirmed] == [{"session_id": "1", "user": "p-1", "clinician": "c-7"}]
    # Journaled under its session, and the user's history now has a first session had.
    assert [e.type for e in desk.journal.events(1)][-1] == "first_session_confirmed"
    assert desk.journal.has_history("p-1", minimum, confirmations=True)
    assert desk.system._returning("p-1")
    # Only where the rules let a confirmation count.
    assert not desk.journal.has_history("p-1", minimum, confirmations=False)


def test_a_confirmation_that_cannot_be_is_refused_in_words_and_on_record(desk: Desk) -> None:
    desk.session(1, "p-1", "first_session", "operator_stop", 3.0)
    desk.session(2, "p-2", "reverse_walking", "cap", 300.0)
    desk.session(3, "p-3", "first_session", "start_aborted", 0.0)
    desk.session(4, "p-4", "first_session", None, 0.0)  # under way
    cases = [
        ("99", RefusalCode.NOT_ALLOWED, "no session 99 on record"),
        (
            "2",
            RefusalCode.NOT_ALLOWED,
            "session 2 was not a first session (Reverse walking): only a first-session "
            "program's session can be confirmed",
        ),
        ("3", RefusalCode.NOT_ALLOWED,
         "the belt never moved in session 3: there is no session to confirm"),
        ("4", RefusalCode.NOT_ALLOWED, "session 4 is under way: confirm it once it has ended"),
    ]  # fmt: skip
    for n, code, words in cases:
        assert refused(desk.send(ConfirmFirstSession(0.0, n)), code) == words
    assert isinstance(desk.send(ConfirmFirstSession(0.0, "1")), Accepted)
    again = refused(desk.send(ConfirmFirstSession(0.0, "1")), RefusalCode.NOT_ALLOWED)
    assert again == "session 1 is confirmed already"
    assert [c for c, _ in desk.refusals()] == ["confirm_first_session"] * 5
    assert not any(e.type is EventType.SESSION_STARTED for e in desk.published)


def test_no_session_is_confirmed_once_another_counts_as_the_user_s_first(desk: Desk) -> None:
    """A short first session, then one that ran to its cap and counts: the short one
    confirmed now would move the user's week 1 back to it (and the plan to a later phase).
    Refused, naming the session that counts; as is one that counts on its own already."""
    desk.session(1, "p-1", "first_session", "operator_stop", 10.0)
    desk.session(2, "p-1", "first_session", "cap", 180.0)
    desk.session(3, "p-2", "first_session", "operator_stop", 10.0)
    desk.session(4, "p-2", "first_session", "operator_stop", 12.0)
    words = refused(desk.send(ConfirmFirstSession(0.0, "1")), RefusalCode.NOT_ALLOWED)
    assert words == (
        "session 2 already counts as the user's first treadmill session: "
        "there is no other to confirm"
    )
    words = refused(desk.send(ConfirmFirstSession(0.0, "2")), RefusalCode.NOT_ALLOWED)
    assert words == "session 2 counts as the user's first treadmill session already"
    # Another user's record is not theirs; and after one confirmation, no second.
    assert isinstance(desk.send(ConfirmFirstSession(0.0, "4")), Accepted)
    words = refused(desk.send(ConfirmFirstSession(0.0, "3")), RefusalCode.NOT_ALLOWED)
    assert words == (
        "session 4 already counts as the user's first treadmill session: "
        "there is no other to confirm"
    )
    assert [e.fields["session_id"] for e in desk.published
            if e.type is EventType.FIRST_SESSION_CONFIRMED] == ["4"]  # fmt: skip


def test_only_a_user_s_latest_session_is_confirmed_as_their_first(desk: Desk) -> None:
    """A first session tried 60 days ago and stopped after 20 s, and yesterday's stopped at
    2 min 30 s: confirming the old one would count the user's weeks on the treadmill from it
    (week 9: intervals, for under 3 minutes of belt time). Refused, naming the latest, which
    is confirmed. So is any while the user's next session runs (it may end at its cap and
    count); another user's sessions do not stand in the way."""
    desk.session(1, "p-1", "first_session", "operator_stop", 20.0)
    desk.session(2, "p-2", "first_session", "operator_stop", 20.0)
    desk.session(3, "p-1", "first_session", "operator_stop", 150.0)
    desk.session(4, "p-3", "first_session", "operator_stop", 10.0)
    desk.session(5, "p-3", "first_session", None, 0.0)  # under way
    for n, latest in (
        (
            "1",
            "session 3 of the same user came after session 1: only a user's "
            "latest session can be confirmed as their first (their weeks on the "
            "treadmill count from it)",
        ),
        (
            "4",
            "session 5 of the same user is under way: only a user's latest "
            "session can be confirmed as their first, once it has ended",
        ),
    ):
        assert refused(desk.send(ConfirmFirstSession(0.0, n)), RefusalCode.NOT_ALLOWED) == latest
    assert isinstance(desk.send(ConfirmFirstSession(0.0, "3")), Accepted)
    assert isinstance(desk.send(ConfirmFirstSession(0.0, "2")), Accepted)
    # A start stopped in its countdown, the belt never moving, is no later attempt.
    desk.session(6, "p-6", "first_session", "operator_stop", 22.0)
    desk.session(7, "p-6", "first_session", "operator_stop", 0.0)
    assert isinstance(desk.send(ConfirmFirstSession(0.0, "6")), Accepted)


def test_a_session_whose_belt_time_is_not_on_record_is_not_confirmed(desk: Desk) -> None:
    """A session a crash cut short in a journal of an older treadguard, which did not work
    its belt time out from its samples: refused, saying so, never "the belt never moved"."""
    desk.session(1, "p-1", "first_session", "interrupted", None)
    words = refused(desk.send(ConfirmFirstSession(0.0, "1")), RefusalCode.NOT_ALLOWED)
    assert words == (
        "session 1's belt time is not on record (treadguard stopped during it): there is no "
        "belt time to confirm"
    )


def test_a_clinic_whose_rules_leave_it_to_belt_time_refuses_a_confirmation() -> None:
    rules = SIM.rules.model_copy(
        update={
            "first_session": SIM.rules.first_session.model_copy(
                update={"clinician_may_confirm": False}
            )
        }
    )
    desk = Desk(LoadedConfig(SIM.path, SIM.config, SIM.programs, rules))
    desk.session(1, "p-1", "first_session", "operator_stop", 3.0)
    words = refused(desk.send(ConfirmFirstSession(0.0, "1")), RefusalCode.NOT_ALLOWED)
    assert "clinician_may_confirm = false" in words
    # And a confirmation already on record (journaled before the rules changed) counts not.
    confirmed: dict[str, JsonScalar] = {"session_id": "1", "user": "p-1"}
    desk.journal.record(Event(EventType.FIRST_SESSION_CONFIRMED, 0.0, confirmed), NOW)
    assert not desk.system._returning("p-1")
    desk.system.close()


def test_a_measure_is_journaled_in_its_table_and_dated_in_the_clinic_s_zone(desk: Desk) -> None:
    assert isinstance(desk.send(RecordMeasure(0.0, "p-1", "tug", 12.5, clinician="c-7")), Accepted)
    assert isinstance(desk.send(RecordMeasure(0.0, "p-1", "koos", 55, date="2026-11-20")), Accepted)
    rows = desk.journal.measures("p-1")
    assert [(m.kind, m.value, m.measured_on, m.clinician) for m in rows] == [
        ("koos", 55.0, "2026-11-20", None),
        ("tug", 12.5, "2026-12-04", "c-7"),
    ]
    assert [e.fields for e in desk.published if e.type is EventType.MEASURE_RECORDED] == [
        {"user": "p-1", "kind": "tug", "value": 12.5, "date": "2026-12-04", "clinician": "c-7"},
        {"user": "p-1", "kind": "koos", "value": 55, "date": "2026-11-20"},
    ]
    assert desk.journal.measures("someone-else") == []


def test_a_measure_entered_again_for_its_day_corrects_it_and_both_stay_on_record(
    desk: Desk,
) -> None:
    """A TUG of 21.0 s typed for 12.0 s, seen, and entered again for the same day: the views
    and the FHIR export show 12.0 s, never a baseline of 21.0 s and a 9 s improvement that
    never happened; the journal keeps both entries."""
    from treadguard.controller.fhir_export import sessions_bundle
    from treadguard.controller.plan import measure_trends
    from treadguard.controller.report import Clinic

    for value in (21.0, 12.0):
        assert isinstance(
            desk.send(RecordMeasure(0.0, "p-1", "tug", value, date="2026-12-01")), Accepted
        )
    assert isinstance(desk.send(RecordMeasure(0.0, "p-1", "tug", 11.0)), Accepted)  # today
    rows = desk.journal.measures("p-1")
    assert [m.value for m in rows] == [21.0, 12.0, 11.0]
    (tug,) = measure_trends(rows)
    assert (tug.baseline, tug.latest, tug.change, tug.count) == (
        "12.0 s, 2026-12-01",
        "11.0 s, 2026-12-04",
        "-1.0 s, better",
        2,
    )
    clinic = Clinic(treadmill="tm-d", zone=SIM.config.clinic.zone(), titles={})

    def observations(measures: list[MeasureRow]) -> list[dict[str, Any]]:
        bundle = sessions_bundle([], {}, clinic=clinic, measures=measures, user="p-1")
        entries = json.loads(bundle.model_dump_json())["entry"]
        return [e["resource"] for e in entries if e["resource"]["resourceType"] == "Observation"]

    corrected, later = observations(rows)
    assert (corrected["status"], corrected["valueQuantity"]["value"]) == ("amended", 12)
    assert (later["status"], later["valueQuantity"]["value"]) == ("final", 11)
    # The correction amends the resource the first entry was exported as.
    assert corrected["id"] == observations(rows[:1])[0]["id"]


def test_today_is_the_clinic_s_day() -> None:
    auckland = SIM.config.model_copy(
        update={"clinic": SIM.config.clinic.model_copy(update={"timezone": "Pacific/Auckland"})}
    )
    desk = Desk(LoadedConfig(SIM.path, auckland, SIM.programs, SIM.rules))
    assert isinstance(desk.send(RecordMeasure(0.0, "p-1", "tug", 12.5)), Accepted)
    assert isinstance(
        desk.send(RecordMeasure(0.0, "p-1", "tug", 12.0, date="2026-12-05")), Accepted
    )
    assert [m.measured_on for m in desk.journal.measures("p-1")] == ["2026-12-05", "2026-12-05"]
    desk.system.close()


@pytest.mark.parametrize(
    ("kind", "value", "day", "code", "words"),
    [
        ("tug", 0.5, None, RefusalCode.OUT_OF_RANGE, "a Timed Up and Go is 1 to 300 s, not 0.5"),
        ("tug", 301, None, RefusalCode.OUT_OF_RANGE, "a Timed Up and Go is 1 to 300 s, not 301"),
        ("koos", 101, None, RefusalCode.OUT_OF_RANGE, "a KOOS is 0 to 100, not 101"),
        ("womac", -1, None, RefusalCode.OUT_OF_RANGE, "a WOMAC is 0 to 96, not -1"),
        ("womac", 97, None, RefusalCode.OUT_OF_RANGE, "a WOMAC is 0 to 96, not 97"),
        ("walk_10m", 0, None, RefusalCode.OUT_OF_RANGE, "a 10 m walk is 1 to 300 s, not 0"),
        ("tug", 12, "2026-02-30", RefusalCode.INVALID_COMMAND,
         "date 2026-02-30 is not a day (YYYY-MM-DD)"),
        ("tug", 12, "2026-12-05", RefusalCode.OUT_OF_RANGE,
         "date 2026-12-05 is after today (2026-12-04 in UTC): a measure is recorded once it "
         "is taken"),
        ("tug", 12, "1989-12-31", RefusalCode.OUT_OF_RANGE,
         "date 1989-12-31 is more than a year before today (2026-12-04 in UTC): a measure of "
         "this treatment is taken within the year (check the year)"),
        ("koos", 90, "2025-12-02", RefusalCode.OUT_OF_RANGE,
         "date 2025-12-02 is more than a year before today (2026-12-04 in UTC): a measure of "
         "this treatment is taken within the year (check the year)"),
        ("bmi", 22, None, RefusalCode.INVALID_COMMAND,
         "no measure 'bmi' (known: tug, koos, womac, walk_10m)"),
    ],
)  # fmt: skip
def test_a_measure_out_of_its_range_is_refused_in_words_and_nothing_is_kept(
    desk: Desk, kind: str, value: float, day: str | None, code: RefusalCode, words: str
) -> None:
    assert refused(desk.send(RecordMeasure(0.0, "p-1", kind, value, date=day)), code) == words
    assert desk.journal.measures("p-1") == []
    assert desk.refusals() == [("record_measure", words)]


def test_a_flood_of_measures_cannot_fill_the_journal(desk: Desk) -> None:
    for n in range(MEASURES_A_DAY_MAX):
        assert isinstance(desk.send(RecordMeasure(0.0, "p-1", "tug", 10 + n)), Accepted)
    words = refused(desk.send(RecordMeasure(0.0, "p-1", "tug", 9)), RefusalCode.NOT_ALLOWED)
    assert words == (
        f"p-1 has {MEASURES_A_DAY_MAX} Timed Up and Go measures for 2026-12-04 already; no more "
        "are kept"
    )
    # Another kind, or another day, is another record.
    assert isinstance(desk.send(RecordMeasure(0.0, "p-1", "koos", 50)), Accepted)
    assert isinstance(desk.send(RecordMeasure(0.0, "p-1", "tug", 9, date="2026-12-03")), Accepted)


def test_without_a_journal_the_commands_are_refused_and_the_belt_is_untouched(desk: Desk) -> None:
    desk.system._journal_failed("disk full")
    for command in (ConfirmFirstSession(0.0, "1"), RecordMeasure(0.0, "p-1", "tug", 12)):
        words = refused(desk.send(command), RefusalCode.PRECONDITIONS_UNMET)
        assert words == "the journal cannot be written (disk full)"


def test_an_older_journal_gains_the_measures_table_when_opened_for_writing(tmp_path: Path) -> None:
    """A journal of schema version 2 (before measures): read-only it reads as having none;
    opened to write, it is brought to the current version with the table, its sessions kept."""
    path = tmp_path / "old.sqlite"
    journal = Journal.open(path)
    started: dict[str, JsonScalar] = {
        "session_id": "1",
        "user": "p-1",
        "program": "first_session",
        "cap_s": 180.0,
    }
    journal.record(Event(EventType.SESSION_STARTED, 0.0, started), NOW)
    journal.commit()
    journal.close()
    with sqlite3.connect(path) as db:  # as the version before this one left it
        db.execute("DROP TABLE measures")
        db.execute("PRAGMA user_version = 2")
    old = Journal.read_only(path)
    assert old.measures("p-1") == []
    assert old.user_record("p-1").measures == []
    old.close()
    journal = Journal.open(path)
    with sqlite3.connect(path) as db:
        assert schema_version(db) == SCHEMA_VERSION
    measure: dict[str, JsonScalar] = {
        "user": "p-1",
        "kind": "tug",
        "value": 12.0,
        "date": "2026-12-04",
    }
    journal.record(Event(EventType.MEASURE_RECORDED, 0.0, measure), NOW)
    journal.commit()
    assert [(m.kind, m.value) for m in journal.measures("p-1")] == [("tug", 12.0)]
    assert [s.id for s in journal.sessions("p-1")] == [1]
    journal.close()


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["tug", "koos", "womac", "walk_10m", "bmi", ""]),
    value=st.floats(allow_nan=True, allow_infinity=True),
    day=st.one_of(st.none(), st.text(max_size=12), st.dates().map(str)),
)
def test_any_measure_is_kept_within_its_range_or_refused_and_never_raises(
    kind: str, value: float, day: str | None
) -> None:
    desk = Desk()
    try:
        reply = desk.send(RecordMeasure(0.0, "p-1", kind, value, date=day))
        kept = desk.journal.measures("p-1")
        if isinstance(reply, Accepted):
            (row,) = kept
            measure = MEASURES[MeasureKind(kind)]
            assert measure.lowest <= row.value <= measure.highest
            assert "2025-12-03" <= row.measured_on <= "2026-12-04"
        else:
            assert isinstance(reply, Refused)
            assert reply.message
            assert kept == []
        assert desk.system.core.latch is None  # nothing of it reached the belt's state
    finally:
        desk.system.close()


def test_a_start_from_history_asks_no_longer_cap_than_the_record_proposes(desk: Desk) -> None:
    """p-1's first session ran to its cap and the pain rose 3 points: held at the first
    session, 3 min. A start naming no program but a cap of 5 min is refused, saying why; the
    same cap with the program named is the clinician's choice, left to the core's limits."""
    desk.session(1, "p-1", "first_session", "cap", 180.0)
    for when, pain in (("before", 2), ("after", 5)):
        entry: dict[str, JsonScalar] = {"session_id": "1", "when": when, "pain": pain}
        desk.journal.record(Event(EventType.OUTCOME_RECORDED, 0.0, entry), NOW - 2000)
    message = refused(desk.send(StartSession(0.0, "p-1", cap_s=300.0)), RefusalCode.OUT_OF_RANGE)
    assert "cap_s 300 is above the 180 s a start from history gives p-1" in message
    assert "held at first treadmill session: pain rose 3 points" in message
    assert "name the program" in message
    named = desk.send(StartSession(0.0, "p-1", program="first_session", cap_s=300.0))
    assert "start from history" not in str(named), named
