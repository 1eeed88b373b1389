"""``treadguard export --fhir``: a resource's id names one record, across journals too
(docs/fhir.md, "What is in the Bundle").

Session and measure numbers are the journal's own: a journal restored from a backup
(docs/daemon.md) numbers its next session as the backup did, and a fresh journal on a new SD
card starts again at 1. A receiving system updates a resource by its id, so an id made of the
treadmill and the number alone let a later session of another patient silently replace an
earlier one's Procedure and Observations. The ids also take the record's user and start (or
recording) time as the journal stores them; the same record still exports to the same ids."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.test_fhir_export import CLINIC, T0, check_fhir, session
from treadguard.controller.fhir_export import export_fhir
from treadguard.controller.journal import Journal, MeasureRow, backup
from treadguard.safety.decisions import Event, EventType, JsonScalar

DAY_S = 86_400.0


def run_session(journal: Journal, user: str, start: float) -> int:
    """A session as the daemon journals it, numbered as the daemon numbers it (the journal's
    last number and one), with the clinician's pain scores and a measure of the user's."""
    n = journal.last_session_id() + 1
    started: dict[str, JsonScalar] = {
        "session_id": str(n),
        "user": user,
        "program": "reverse_walking",
        "cap_s": 300.0,
    }
    journal.record(Event(EventType.SESSION_STARTED, 0.0, started), start)
    before: dict[str, JsonScalar] = {"session_id": str(n), "when": "before", "pain": 3}
    journal.record(Event(EventType.OUTCOME_RECORDED, 0.0, before), start + 1)
    journal.record(Event(EventType.BELT_STARTED, 0.0, {"target_mph": 0.8}), start + 3)
    journal.record(Event(EventType.STOPPING, 0.0, {"reason": "cap"}), start + 303)
    ended: dict[str, JsonScalar] = {"session_id": str(n), "reason": "cap", "belt_moving_s": 300.0}
    journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), start + 304)
    after: dict[str, JsonScalar] = {
        "session_id": str(n),
        "when": "after",
        "pain": 2,
        "exertion": 4,
        "clinician": "c-7",
    }
    journal.record(Event(EventType.OUTCOME_RECORDED, 0.0, after), start + 360)
    measure: dict[str, JsonScalar] = {
        "user": user,
        "kind": "tug",
        "value": 12.5,
        "date": datetime.fromtimestamp(start, UTC)
        .date()
        .isoformat(),  # one a day: not a correction
        "clinician": "c-7",
    }
    journal.record(Event(EventType.MEASURE_RECORDED, 0.0, measure), start + 400)
    journal.commit()
    return n


def exported(path: Path) -> str:
    """Everyone's Bundle, read from the journal as ``treadguard export --fhir`` reads it."""
    journal = Journal.read_only(path)
    try:
        sessions = journal.sessions(None)
        events = {s.id: journal.events(s.id) for s in sessions}
        text = export_fhir(sessions, events, clinic=CLINIC, measures=journal.measures(None))
    finally:
        journal.close()
    check_fhir(text)  # validates with fhir.resources' R4B models, and round-trips
    return text


def ids_by_record(text: str) -> dict[tuple[str, int], set[str]]:
    """The ids of each session's resources (its Procedure and the Observations part of it),
    by ("session", its number), and of each measure's Observation, by ("measure", its place
    among the Bundle's measures: the journal's order, so its number there)."""
    entries = [e["resource"] for e in json.loads(text).get("entry", [])]
    numbers = {
        f"urn:uuid:{r['id']}": int(r["identifier"][0]["value"])
        for r in entries
        if r["resourceType"] == "Procedure"
    }
    found: dict[tuple[str, int], set[str]] = {}
    for url, n in numbers.items():
        found[("session", n)] = {url.removeprefix("urn:uuid:")}
    measures = 0
    for r in entries:
        if r["resourceType"] != "Observation":
            continue
        if "partOf" in r:
            found[("session", numbers[r["partOf"][0]["reference"]])].add(r["id"])
        else:
            measures += 1
            found[("measure", measures)] = {r["id"]}
    return found


def test_sessions_numbered_alike_in_a_restored_and_a_fresh_journal_get_ids_of_their_own(
    tmp_path: Path,
) -> None:
    card = tmp_path / "journal.sqlite"
    journal = Journal.open(card)
    assert run_session(journal, "ann", T0) == 1
    journal.close()
    saved = tmp_path / "backup.sqlite"
    backup(card, saved)  # `treadguard backup`, before ann's second session
    journal = Journal.open(card)
    assert run_session(journal, "ann", T0 + DAY_S) == 2
    journal.close()
    old = exported(card)

    # The card fails; the backup is restored, and the next session (bob's) is numbered 2 again,
    # as is the journal's next measure.
    restored = tmp_path / "restored.sqlite"
    restored.write_bytes(saved.read_bytes())
    journal = Journal.open(restored)
    assert run_session(journal, "bob", T0 + 2 * DAY_S) == 2
    journal.close()
    after_restore = exported(restored)

    # A new card with a fresh journal: ann's session a week later is session 1 again.
    fresh = tmp_path / "fresh.sqlite"
    journal = Journal.open(fresh)
    assert run_session(journal, "ann", T0 + 7 * DAY_S) == 1
    journal.close()
    on_a_new_card = exported(fresh)

    old_ids, restored_ids, fresh_ids = map(ids_by_record, (old, after_restore, on_a_new_card))
    # Each session: a Procedure, its belt time, pain before and after, the exertion.
    assert all(len(ids) == 5 for key, ids in old_ids.items() if key[0] == "session"), old_ids
    # Session 1 of the restored journal is session 1 of the old one: the same ids.
    assert restored_ids[("session", 1)] == old_ids[("session", 1)]
    assert restored_ids[("measure", 1)] == old_ids[("measure", 1)]
    # Bob's session 2 is not ann's session 2; nor is his measure hers.
    assert not restored_ids[("session", 2)] & old_ids[("session", 2)]
    assert not restored_ids[("measure", 2)] & old_ids[("measure", 2)]
    # Ann's session 1 on the new card is not her session 1 on the old one.
    assert not fresh_ids[("session", 1)] & old_ids[("session", 1)]
    assert not fresh_ids[("measure", 1)] & old_ids[("measure", 1)]
    # Each journal's Bundle is a collection of its own: a receiver that keeps Bundles by id
    # keeps all three. And exporting a journal again gives the same Bundle, byte for byte.
    bundle_ids = {json.loads(text)["id"] for text in (old, after_restore, on_a_new_card)}
    assert len(bundle_ids) == 3, bundle_ids
    assert exported(card) == old
    assert exported(restored) == after_restore


def _records_ids(sessions: list[Any], measures: list[MeasureRow]) -> set[str]:
    """The ids of the sessions' and measures' resources (the Patients left out: one user's
    Patient is the same in every journal, as it should be)."""
    text = export_fhir(sessions, {}, clinic=CLINIC, measures=measures, user=None)
    check_fhir(text)
    return {
        e["resource"]["id"]
        for e in json.loads(text)["entry"]
        if e["resource"]["resourceType"] != "Patient"
    }


TUG = MeasureRow(1, "ann", "tug", 12.5, "2026-12-01", T0 + 400, "c-7")


@pytest.mark.parametrize(
    ("what", "other_session", "other_measure"),
    [
        ("another user", {"user": "bob"}, {"user": "bob"}),
        ("another time", {"started_at": T0 + 0.25}, {"recorded_at": T0 + 400.25}),
        # Times as the journal stores them, exactly: not rounded to the second shown.
        ("a microsecond later", {"started_at": T0 + 1e-6}, {"recorded_at": T0 + 400 + 1e-6}),
    ],
)
def test_the_same_number_for_another_user_or_time_is_another_record(
    what: str, other_session: dict[str, Any], other_measure: dict[str, Any]
) -> None:
    one = _records_ids([session(3)], [TUG])
    assert _records_ids([session(3)], [TUG]) == one  # deterministic
    other = _records_ids([replace(session(3), **other_session)], [replace(TUG, **other_measure)])
    assert len(other) == len(one) == 3  # the Procedure, its belt time, the measure
    assert not one & other, what
