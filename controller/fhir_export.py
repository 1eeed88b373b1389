"""``treadguard export --fhir`` (docs/fhir.md): the journal's sessions as a FHIR R4 Bundle.

Pure: journal rows in (sessions, their events, the users' measures), the Bundle's JSON out,
built and validated with fhir.resources' R4B models. The elements used here are the same in
R4 (4.0.1) and R4B (4.3.0). Per user a ``Patient`` (identified by the user's code, the only
thing treadguard knows of a person); per session a ``Procedure`` and its ``Observation``s:
belt minutes, pain before and after, perceived exertion, each ``partOf`` its Procedure; per
measure (TUG, KOOS, WOMAC, 10 m walk) an ``Observation`` of the Patient. Every id is a UUID 5
of the treadmill and what names the record (see :func:`resource_id`), so the same journal exports
to the same Bundle, byte for byte, and a session of another journal to ids of its own.

A journal is read as it is: a value that cannot be what its field says (a pain of "x", a time
that is no time) is exported as absent *with the reason and the value as written* in a note,
never dropped and never raised.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from fhir.resources.R4B.annotation import Annotation
from fhir.resources.R4B.bundle import Bundle, BundleEntry
from fhir.resources.R4B.codeableconcept import CodeableConcept
from fhir.resources.R4B.coding import Coding
from fhir.resources.R4B.identifier import Identifier
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.period import Period
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.quantity import Quantity
from fhir.resources.R4B.reference import Reference
from fhir.resources.R4B.resource import Resource

from treadguard.contract.measures import MEASURES, MeasureKind
from treadguard.controller import report_text as t
from treadguard.controller.journal import EventRow, MeasureRow, SessionRow
from treadguard.controller.plan import MeasureInForce, measures_in_force, outcomes_of
from treadguard.controller.report import Clinic, how_it_ended
from treadguard.safety.decisions import EventType

# The namespace of every id this export makes (UUID 5, RFC 9562 section 5.5). Never change
# it: a changed namespace gives every resource a new id, and a receiver would take a second
# export of the same sessions for new ones.
NAMESPACE = uuid.UUID("60682a07-9ccc-4fa9-af4e-f60343c13520")

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"


@dataclass(frozen=True)
class Code:
    """A code of a code system, with the display its publisher gives it (docs/fhir.md says
    where each one was taken from)."""

    system: str
    code: str
    display: str

    def concept(self, text: str | None = None) -> CodeableConcept:
        coding = Coding(system=self.system, code=self.code, display=self.display)
        return CodeableConcept(coding=[coding], text=text)


# The session: SNOMED CT's exercise therapy, on a powered treadmill.
EXERCISE_THERAPY = Code(SNOMED, "229065009", "Exercise therapy (regime/therapy)")
POWERED_TREADMILL = Code(SNOMED, "466021001", "Treadmill, powered")
# What is observed of it.
EXERCISE_DURATION = Code(LOINC, "55411-3", "Exercise duration")
PAIN_SEVERITY = Code(
    LOINC, "72514-3", "Pain severity - 0-10 verbal numeric rating [Score] - Reported"
)
PERCEIVED_EXERTION = Code(LOINC, "82289-0", "Rating of perceived exertion [Score]")
# A user's measures (measure_observation).
TUG = Code(
    LOINC,
    "89423-8",
    "Time to rise from chair, walk 10 feet and back, and return to sitting [TUG]",
)
KOOS = Code(LOINC, "72091-2", "Knee injury and Osteoarthritis Outcome Score [KOOS]")

ACTIVITY = Code(OBSERVATION_CATEGORY, "activity", "Activity")
SURVEY = Code(OBSERVATION_CATEGORY, "survey", "Survey")
EXAM = Code(OBSERVATION_CATEGORY, "exam", "Exam")
ABSENT_ERROR = Code(DATA_ABSENT, "error", "Error")

# How a session ended, as Procedure.status (R4's EventStatus): ran as the program planned.
PLANNED_ENDS = frozenset({"cap", "completed"})
SCORE_HIGHEST = 10
# Measures a clinician times (category exam); the others are questionnaires (survey).
TIMED_TESTS = frozenset({MeasureKind.TUG, MeasureKind.WALK_10M})


@dataclass(frozen=True)
class MeasureCode:
    code: Code | None  # None: no standard code found for it; the text says what it is
    text: str
    unit: str  # UCUM
    unit_words: str


# Every kind of contract/measures.py (a test keeps the two the same). WOMAC and the 10 m walk
# have no code here: docs/fhir.md says why.
MEASURE_CODES: dict[str, MeasureCode] = {
    MeasureKind.TUG: MeasureCode(TUG, "Timed Up and Go", "s", "s"),
    MeasureKind.KOOS: MeasureCode(KOOS, "KOOS score (0-100, 100: no problems)", "{score}", "score"),
    MeasureKind.WOMAC: MeasureCode(
        None, "WOMAC total score (0-96, 0: no problems)", "{score}", "score"
    ),
    MeasureKind.WALK_10M: MeasureCode(None, "10 metre walk test, time", "s", "s"),
}


def resource_id(treadmill: str, *keys: object) -> str:
    """A resource's id: the UUID 5 of the treadmill and the keys that name its record, so the
    same record always has the same id (and two treadmills' session 3 never share one).

    A session's or a measure's number is the journal's own and not enough: a journal restored
    from a backup numbers its next session as the backup did, and a fresh one starts again at
    1, and a receiver that updates by id would put a later session of another patient in the
    place of an earlier one. Their keys also hold the user and the time the journal stored
    (see :func:`record_keys`)."""
    # ASCII JSON: one text for one set of keys, whatever characters a user code holds (a
    # lone surrogate in a damaged journal too, which has no UTF-8).
    name = json.dumps([treadmill, *keys], default=str)
    return str(uuid.uuid5(NAMESPACE, name))


def record_keys(number: object, user: object, at: object) -> tuple[object, ...]:
    """What names a session (or a measure) across journals: its number, its user and its start
    (or recording) time exactly as the journal stores it, never rounded: re-exporting it gives
    the same keys, and two sessions in two journals share them only if they are one session (a
    restored backup's copy of it)."""
    # A float's JSON is its shortest text that reads back to it: the time to the last bit.
    return (number, user, at)


def _url(resource: Resource) -> str:
    return f"urn:uuid:{resource.id}"


def _ref(resource: Resource) -> Reference:
    return Reference(reference=_url(resource))


def namespace_uri(treadmill: str, what: str) -> str:
    """The identifier system of this treadmill's user codes, session numbers or clinician
    codes: a URI of its own (urn:uuid), as these codes mean something on one treadmill only."""
    return f"urn:uuid:{resource_id(treadmill, 'namespace', what)}"


def _text(value: object) -> str | None:
    """``value`` as a FHIR string: text as it is, anything else as its JSON; characters FHIR
    strings may not hold (controls other than tab and line breaks, lone surrogates, Unicode
    whitespace other than the space) replaced. None where nothing would be left."""
    if value is None:
        return None
    raw = value if isinstance(value, str) else json.dumps(value, default=str)
    clean = "".join(_char(c) for c in raw).strip()
    return clean or None


def _as_entered(value: object) -> str | None:
    """A clinician's note as a FHIR string: as entered, its blanks at either end kept (a
    JSON string may hold them) and a note of blanks alone kept; only characters FHIR strings
    may not hold replaced (see ``_char``). None for no note, or an empty one."""
    if value is None:
        return None
    raw = value if isinstance(value, str) else json.dumps(value, default=str)
    return "".join(_note_char(c) for c in raw) or None


def _note_char(c: str) -> str:
    """A note's character: Unicode's blanks (an ideographic space, a no-break space, a line
    separator) are the clinician's, and a note (FHIR markdown) holds them; only controls and
    lone surrogates are replaced."""
    return c if c.isspace() and ord(c) > 0x9F else _char(c)


def _char(c: str) -> str:
    if c in "\t\r\n":
        return c
    if 0xD800 <= ord(c) <= 0xDFFF or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F:
        return "\ufffd"
    return " " if c.isspace() else c


def code_value(code: object) -> str | None:
    """A code (a user's, a clinician's) as an ``Identifier.value``, lossless: two codes the
    journal keeps apart are two values. ``_text`` would make "p 1" and "p", U+3000 (an
    ideographic space), "1" the same; here each character a FHIR string may not hold as it is (see
    ``_char``), every whitespace but an ordinary space inside the code (FHIR trims strings at
    their ends; a tab or line break in a code is not seen) and the backslash are written as
    ``\\uXXXX``, so the value reads back to the code. A code that is no text (a damaged
    journal) is its JSON, as in ``_text``. None for an empty code."""
    if code is None:
        return None
    if not isinstance(code, str):
        code = json.dumps(code, default=str)
    if not code:
        return None
    last = len(code) - 1
    return "".join(c if _kept(c, inner=0 < n < last) else _escaped(c) for n, c in enumerate(code))


def _kept(c: str, *, inner: bool) -> bool:
    """Whether a code's character is written as it is: one a FHIR string holds, not
    whitespace (but for an ordinary space inside the code), and not the escapes' backslash."""
    if c == "\\" or _char(c) != c:
        return False
    return not c.isspace() or (c == " " and inner)


def _escaped(c: str) -> str:
    # Every character escaped is in the BMP (controls, surrogates, Unicode spaces, "\\"):
    # four hex digits each, so the escapes cannot run into the characters after them.
    return f"\\u{ord(c):04x}"


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def moment(ts: object, zone: ZoneInfo) -> str | None:
    """A unix time as a FHIR dateTime, to the second, with the clinic's offset at that moment;
    None for a time that is none (not a number, or outside the years 1 to 9999)."""
    v = _finite(ts)
    if v is None:
        return None
    try:
        when = datetime.fromtimestamp(v, zone)
        offset = when.utcoffset()
        if offset is not None and offset.seconds % 60:
            # A local mean time of before standard time (New York's -04:56:02 until 1883):
            # FHIR writes an offset in hours and minutes, so the moment is written in UTC.
            when = when.astimezone(UTC)
    except (OverflowError, OSError, ValueError):
        return None
    if not 1 <= when.year <= 9999:
        return None
    return when.isoformat(timespec="seconds")


def _as_written(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


def _note(
    text: str | None, *, author: str | None = None, time: str | None = None
) -> list[Annotation]:
    if text is None:
        return []
    return [Annotation(text=text, authorString=author, time=time)]


def procedure_status(session: SessionRow) -> str:
    """R4's Procedure.status for a session: completed when it ran to its cap or its
    program's end; in-progress while open; not-done when the belt never moved (a start
    aborted, a stop before the belt ran); stopped when it ended early after the belt ran (an
    emergency stop, a fault, the clinician's stop, a lost tablet); unknown when the journal
    cannot say how far it got."""
    reason = session.end_reason
    if reason is None:
        return "in-progress"
    if reason in PLANNED_ENDS:
        return "completed"
    if reason == "start_aborted":
        return "not-done"
    belt = _finite(session.belt_moving_s)
    if belt is None or belt < 0:
        return "unknown"
    return "stopped" if belt > 0 else "not-done"


@dataclass(frozen=True)
class _Entry:
    """The newest of the clinician's entries of one kind (before, after) of a session."""

    fields: Mapping[str, Any]
    entered: str | None  # when it was made
    corrected: bool  # an earlier entry of the same kind was made and this one replaced it


def _entries(events: Sequence[EventRow], zone: ZoneInfo) -> dict[str, _Entry]:
    newest = outcomes_of(events)  # the reports' rule: the newest entry of each kind wins
    found: dict[str, _Entry] = {}
    for when, fields in newest.items():
        made = [
            e
            for e in events
            if e.type == EventType.OUTCOME_RECORDED and str(e.fields.get("when")) == when
        ]
        found[when] = _Entry(fields, moment(made[-1].ts, zone), corrected=len(made) > 1)
    return found


class _Session:
    """The resources of one session, with what they share."""

    def __init__(
        self,
        session: SessionRow,
        events: Sequence[EventRow],
        *,
        clinic: Clinic,
        patient: Patient,
    ) -> None:
        self.session = session
        self.events = events
        self.clinic = clinic
        self.patient = patient
        self.start = moment(session.started_at, clinic.zone)
        end = moment(session.ended_at, clinic.zone)
        self.end_problem: str | None = None
        began, ended = _finite(session.started_at), _finite(session.ended_at)
        if end is None and session.ended_at is not None:
            self.end_problem = (
                f"the journal's end time ({_as_written(session.ended_at)}) is no time"
            )
        elif end is not None and began is not None and ended is not None and ended < began:
            # A period ends after it starts (FHIR's per-1): the start is kept, the end said.
            self.end_problem = f"the journal's end time ({end}) is before its start"
            end = None
        self.end = end
        self.procedure = self._procedure()

    def _id(self, *keys: object) -> str:
        s = self.session
        return resource_id(
            self.clinic.treadmill, "session", *record_keys(s.id, s.user, s.started_at), *keys
        )

    def _period(self) -> Period | None:
        if self.start is None and self.end is None:
            return None
        return Period(start=self.start, end=self.end)

    def _procedure(self) -> Procedure:
        s = self.session
        status = procedure_status(s)
        ended = how_it_ended(s, self.events)
        title = self.clinic.title(s.program)
        said = [
            f"treadguard session {s.id} on treadmill {self.clinic.treadmill}",
            f"program: {title}" + (f" ({s.program})" if title != s.program else ""),
        ]
        # Figures the journal holds; one it lost (a session cut short) is left out, not "-".
        if _finite(s.cap_s) is not None:
            said.append(f"session cap {t.duration(s.cap_s, whole_minutes=True)}")
        if _finite(s.max_speed_mph) is not None:
            said.append(f"top speed {t.mph(s.max_speed_mph)}")
        said.append(f"ended: {ended}")
        if self.start is None:
            said.append(f"the journal's start time ({_as_written(s.started_at)}) is no time")
        if self.end_problem is not None:
            said.append(self.end_problem)
        return Procedure(
            id=self._id("procedure"),
            identifier=[
                Identifier(system=namespace_uri(self.clinic.treadmill, "sessions"), value=str(s.id))
            ],
            status=status,
            statusReason=None if status == "completed" else CodeableConcept(text=_text(ended)),
            code=EXERCISE_THERAPY.concept(_text(f"Treadmill session: {title}")),
            subject=_ref(self.patient),
            performedPeriod=self._period(),
            usedCode=[POWERED_TREADMILL.concept()],
            note=_note(_text("; ".join(said))) + self._confirmations() or None,
        )

    def _confirmations(self) -> list[Annotation]:
        """A clinician's confirmation that the session counts as the user's first treadmill
        session (docs/plan.md: it lets the user start the later programs), each as a note by
        that clinician at the time they made it. Every one on record: the first is the one
        the plan goes by."""
        notes: list[Annotation] = []
        for e in self.events:
            if e.type != EventType.FIRST_SESSION_CONFIRMED:
                continue
            clinician = e.fields.get("clinician")
            who = None if clinician is None else _text(clinician)
            made = moment(e.ts, self.clinic.zone)
            said = "confirmed as the user's first treadmill session"
            said += f" by {who}" if who is not None else " by a clinician"
            if made is not None:
                said += f", {made}"
            else:
                said += f" (the journal's time of it, {_as_written(e.ts)}, is no time)"
            notes += _note(_text(said), author=who, time=made)
        return notes

    def resources(self) -> list[Resource]:
        found: list[Resource] = [self.procedure]
        duration = self._duration()
        if duration is not None:
            found.append(duration)
        entries = _entries(self.events, self.clinic.zone)
        for when in ("before", "after"):
            if when in entries:
                found.append(self._pain(when, entries[when]))
        after = entries.get("after")
        if after is not None and after.fields.get("exertion") is not None:
            found.append(self._exertion(after))
        return found

    def _observation(self, key: str, **fields: Any) -> Observation:
        return Observation(
            id=self._id(key),
            partOf=[_ref(self.procedure)],
            subject=_ref(self.patient),
            **fields,
        )

    def _duration(self) -> Observation | None:
        """Belt-moving minutes (the belt's time, not the session's: the countdown and a
        stop's run-down are not exercise)."""
        raw = self.session.belt_moving_s
        if raw is None:
            return None  # an open session, or one cut short before its belt time was known
        belt = _finite(raw)
        value: dict[str, Any]
        if belt is None or belt < 0:
            value = {
                "dataAbsentReason": ABSENT_ERROR.concept(),
                "note": _note(_text(f"the journal's belt time is {_as_written(raw)} s")),
            }
        else:
            value = {"valueQuantity": _quantity(belt / 60, "min", "min", places=2)}
        period = self._period()
        return self._observation(
            "exercise-duration",
            status="final" if self.session.end_reason is not None else "preliminary",
            category=[ACTIVITY.concept()],
            code=EXERCISE_DURATION.concept("Belt-moving time of the session"),
            effectivePeriod=period,
            **value,
        )

    def _pain(self, when: str, entry: _Entry) -> Observation:
        # The score describes the user at the session's start (before) or end (after),
        # whenever the clinician entered it: that is its effective time; the entry's own
        # time is `issued`. An after-entry for a session still open: the entry's time.
        effective = self.start if when == "before" else (self.end or entry.entered)
        return self._score(
            f"pain-{when}",
            entry,
            PAIN_SEVERITY,
            f"Pain severity {when} the session (0-10)",
            entry.fields.get("pain"),
            effective=effective or entry.entered,
            notes=entry.fields.get("notes"),
        )

    def _exertion(self, entry: _Entry) -> Observation:
        return self._score(
            "exertion",
            entry,
            PERCEIVED_EXERTION,
            "Rating of perceived exertion during the session (0-10)",
            entry.fields.get("exertion"),
            effective=self.end or entry.entered,
            notes=None,
        )

    def _score(
        self,
        key: str,
        entry: _Entry,
        code: Code,
        text: str,
        raw: object,
        *,
        effective: str | None,
        notes: object,
    ) -> Observation:
        clinician = entry.fields.get("clinician")
        who = None if clinician is None else _text(clinician)
        score = _finite(raw)
        value: dict[str, Any]
        problem = None
        if score is not None and 0 <= score <= SCORE_HIGHEST:
            value = {"valueQuantity": _quantity(score, "{score}", "score", places=1)}
        else:
            value = {"dataAbsentReason": ABSENT_ERROR.concept()}
            problem = f"the entry holds {_as_written(raw)}, not a score from 0 to 10"
        note = _note(_text(problem), time=entry.entered)
        if notes is not None:
            note += _note(_as_entered(notes), author=who, time=entry.entered)
        return self._observation(
            key,
            status="amended" if entry.corrected else "final",
            category=[SURVEY.concept()],
            code=code.concept(text),
            effectiveDateTime=effective,
            issued=entry.entered,
            performer=_clinician(self.clinic.treadmill, clinician),
            note=note or None,
            **value,
        )


def _clinician(treadmill: str, code: object) -> list[Reference] | None:
    """The clinician who entered it, by their code (a logical reference: treadguard has no
    Practitioner resource, only the code), as ``performer``; None for no code."""
    value = code_value(code)
    if value is None:
        return None
    identifier = Identifier(system=namespace_uri(treadmill, "clinicians"), value=value)
    return [Reference(type="Practitioner", identifier=identifier)]


def _quantity(value: float, code: str, unit: str, *, places: int) -> Quantity:
    """``value`` to ``places`` decimals at most, trailing zeros dropped: 1.59, 4, 12.5."""
    # A Decimal from the rounded text: the JSON holds 1.59, never 1.5900000000000001.
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text == "-0":  # -0, or a negative value that rounds to 0: no sign, as the reports
        text = "0"
    return Quantity(value=Decimal(text), unit=unit, system=UCUM, code=code)


def patient(treadmill: str, user: str) -> Patient:
    """The user as a Patient: their code as the identifier and nothing else (treadguard keeps
    no name, birth date or sex)."""
    code = code_value(user)
    return Patient(
        id=resource_id(treadmill, "user", user),
        identifier=None
        if code is None
        else [Identifier(system=namespace_uri(treadmill, "users"), value=code)],
    )


def measure_observation(entry: MeasureInForce, *, clinic: Clinic, subject: Patient) -> Observation:
    """One of a user's measures (TUG, KOOS, WOMAC, 10 m walk) as an Observation of the day it
    was taken, issued when it was recorded. One a kind and day, as the reports show it: the
    last entered, ``amended`` when it corrects an earlier entry, under the first entry's id
    (a correction amends the resource a receiver already has)."""
    measure, first = entry.last, entry.first
    known = MEASURE_CODES.get(measure.kind)
    value: dict[str, Any]
    number = _finite(measure.value)
    if known is None:
        code = CodeableConcept(text=_text(f"treadguard measure {measure.kind}"))
        unit, unit_words = "1", "1"
    else:
        code = (
            known.code.concept(known.text)
            if known.code is not None
            else CodeableConcept(text=known.text)
        )
        unit, unit_words = known.unit, known.unit_words
    if number is None:
        value = {
            "dataAbsentReason": ABSENT_ERROR.concept(),
            "note": _note(_text(f"the journal's value is {_as_written(measure.value)}")),
        }
    else:
        # The number the reports show: to the kind's resolution (contract/measures.py; a
        # stopwatch's hundredths), which a value an older journal holds may be finer than.
        kept = MEASURES[MeasureKind(measure.kind)] if known is not None else None
        places = 3 if kept is None else kept.places
        value = {"valueQuantity": _quantity(number, unit, unit_words, places=places)}
    day = measure.measured_on if _is_day(measure.measured_on) else None
    recorded = moment(measure.recorded_at, clinic.zone)
    return Observation(
        id=resource_id(
            clinic.treadmill,
            "measure",
            *record_keys(first.id, first.user, first.recorded_at),
        ),
        status="amended" if entry.entries > 1 else "final",
        category=[EXAM.concept() if measure.kind in TIMED_TESTS else SURVEY.concept()],
        code=code,
        subject=_ref(subject),
        effectiveDateTime=day or recorded,
        issued=recorded,
        performer=_clinician(clinic.treadmill, measure.clinician),
        **value,
    )


def _is_day(text: object) -> bool:
    if not isinstance(text, str) or len(text) != 10:
        return False
    try:
        datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        return False
    return True


def sessions_bundle(
    sessions: Sequence[SessionRow],
    events: Mapping[int, Sequence[EventRow]],
    *,
    clinic: Clinic,
    measures: Sequence[MeasureRow] = (),
    user: str | None = None,
) -> Bundle:
    """The sessions (all of one user, with ``user``; else everyone's, a Patient each) and
    their events (by session id) as a Bundle of type collection: each Patient, then each
    session's Procedure and Observations, oldest first, then the measures."""
    patients: dict[str, Patient] = {}
    resources: list[Resource] = []
    for s in sessions:
        if s.user not in patients:
            patients[s.user] = patient(clinic.treadmill, s.user)
        one = _Session(s, events.get(s.id, ()), clinic=clinic, patient=patients[s.user])
        resources += one.resources()
    for kept in measures_in_force(measures):
        m = kept.last
        if m.user not in patients:
            patients[m.user] = patient(clinic.treadmill, m.user)
        resources.append(measure_observation(kept, clinic=clinic, subject=patients[m.user]))
    if user is not None and user not in patients:
        patients[user] = patient(clinic.treadmill, user)
    held = [*patients.values(), *resources]
    entries = [BundleEntry(fullUrl=_url(r), resource=r) for r in held]
    return Bundle(
        # Named by what it holds: the same export again is the same Bundle, while another
        # journal's (a restored backup's, a new card's) is another, which a receiver that
        # keeps Bundles by id keeps beside it.
        id=resource_id(clinic.treadmill, "bundle", user, sorted(str(r.id) for r in held)),
        type="collection",
        entry=entries or None,
    )


def bundle_json(bundle: Bundle) -> str:
    """The Bundle as JSON text, indented for a person to read, with a final newline."""
    return bundle.model_dump_json(exclude_none=True, indent=2) + "\n"


def export_fhir(
    sessions: Sequence[SessionRow],
    events: Mapping[int, Sequence[EventRow]],
    *,
    clinic: Clinic,
    measures: Sequence[MeasureRow] = (),
    user: str | None = None,
) -> str:
    """Journal rows in, the Bundle's JSON out (``treadguard export --fhir``)."""
    return bundle_json(
        sessions_bundle(sessions, events, clinic=clinic, measures=measures, user=user)
    )
