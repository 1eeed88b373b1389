"""A user's plan: the proposal for their next session, from their record and the clinic's rules.

:func:`propose` is a pure function (no I/O, no clock: the time is an argument) from a
:class:`UserRecord` (the user's sessions, the clinician's outcome entries and confirmations,
their measures; ``Journal.user_record`` reads one) and the clinic's
:class:`~treadguard.config.progression.ProgressionRules` to a :class:`Proposal`: the phase, the
program and its cap, sessions a week, and the reason in words a clinician reads ("Reverse
walking, 5 min: first session completed 2026-12-01").

A proposal is advice for the clinician, who decides. The one rule the daemon enforces is the
first-session rule (SR-7), and both go by controller/first_session.py's ``counts``: a user
whose first session does not count is always proposed the first-session program, which is
the only one the daemon lets them start.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from treadguard.config.progression import Phase, ProgressionRules, UserPlan
from treadguard.contract.measures import MEASURES, Measure, MeasureKind
from treadguard.controller import report_text as t
from treadguard.controller.first_session import PLANNED_ENDS, counts
from treadguard.safety.decisions import EndReason, EventType
from treadguard.safety.programs import Program

if TYPE_CHECKING:
    # Annotations only: the journal builds records (Journal.user_record) with this module.
    from treadguard.controller.journal import EventRow, MeasureRow, SessionRow

FIRST_SESSION_PHASE = "first_session"
ESTOP = EndReason.ESTOP.value
# A session treadguard stopped during (a crash, or the board's power cut by a mains E-STOP),
# closed at the next start-up: how it ended, and its belt time, are not known.
INTERRUPTED = "interrupted"


def outcomes_of(events: Sequence[EventRow]) -> dict[str, Mapping[str, Any]]:
    """The newest ``before`` and ``after`` entries among a session's events (an entry made
    again corrects the one before it)."""
    newest: dict[str, Mapping[str, Any]] = {}
    for e in events:
        if e.type == EventType.OUTCOME_RECORDED:
            newest[str(e.fields.get("when"))] = e.fields
    return newest


@dataclass(frozen=True)
class UserRecord:
    """What the journal holds of one user (a code, never a name)."""

    user: str
    sessions: Sequence[SessionRow] = ()  # oldest first
    # Per session id: the newest "before" and "after" entries (outcomes_of).
    outcomes: Mapping[int, Mapping[str, Mapping[str, Any]]] = field(default_factory=dict)
    # Per session id: a clinician's confirmation that it counts as the first session.
    confirmed: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    measures: Sequence[MeasureRow] = ()


@dataclass(frozen=True)
class Proposal:
    """The next session, as proposed. ``reason`` says it all in words; the other fields are
    for a page or a program to show or use."""

    user: str
    phase: str  # "first_session", or the rules' phase name
    phase_title: str
    program: str
    program_title: str
    cap_s: float
    sessions_a_week: tuple[int, int]
    reason: str
    # Something held progression back (the reason says what).
    held: bool = False
    # Whether the user's first treadmill session counts (the daemon's rule, SR-7).
    first_session_counted: bool = False
    # Week on the treadmill (1: the week of the first session that counts); None before it.
    week: int | None = None
    # The clinic's note for this user, if it set one.
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        body = dict(self.__dict__)
        body["sessions_a_week"] = list(self.sessions_a_week)
        return body


def propose(
    record: UserRecord,
    rules: ProgressionRules,
    programs: Mapping[str, Program],
    *,
    zone: ZoneInfo,
    now: float,
) -> Proposal:
    """The proposal for ``record``'s user's next session at unix time ``now`` (dates in the
    clinic's ``zone``). ``programs`` and ``rules`` as config.loading checked them: every
    program the rules name is among ``programs``."""
    ask = _Asker(record, rules, programs, zone)
    first = ask.first()
    last = _last_session(record.sessions)
    if first is None:
        own = rules.user.get(record.user)
        note = None if own is None else own.note
        return _first_session_again(record, rules, programs, last, zone, note, ask.may_confirm)
    if last is None:  # a confirmed session in which the belt never moved: that one
        last = first
    return ask.after(first, last, now, lambda: _rules_gave(ask, last, first))


@dataclass(frozen=True)
class MeasureTrend:
    """One kind of a user's measures: the baseline (the first taken) and the latest, in words
    ("12.0 s, 2026-12-01"), and the change between them ("-2.5 s, better", "no change")."""

    kind: str
    title: str
    baseline: str
    latest: str  # "-" with one measure only
    change: str  # "-" with one measure only
    count: int


@dataclass(frozen=True)
class MeasureInForce:
    """A user's measure of one kind for one day as it stands: ``last``, the last entered (an
    entry made again for the same user, kind and day corrects the one before, as an entry of
    the clinician's record of a session does), ``first`` the first entered (whose identity a
    correction keeps), and how many entries there are (all stay on record)."""

    first: MeasureRow
    last: MeasureRow
    entries: int


def measures_in_force(measures: Sequence[MeasureRow]) -> list[MeasureInForce]:
    """Each user's measures, one a kind and day (the last entered), by day and then as first
    recorded."""
    days: dict[tuple[str, str, str], list[MeasureRow]] = {}
    for m in sorted(measures, key=lambda m: m.id):
        days.setdefault((m.user, m.kind, m.measured_on), []).append(m)
    kept = [MeasureInForce(rows[0], rows[-1], len(rows)) for rows in days.values()]
    return sorted(kept, key=lambda k: (k.first.measured_on, k.first.id))


def measure_trends(measures: Sequence[MeasureRow]) -> list[MeasureTrend]:
    """Per kind, in contract/measures.py's order, the baseline and the latest measure, each
    day's as it stands (a correction in force: measures_in_force). A kind this version does not
    know is shown by its code, its values as they are."""
    by_kind: dict[str, list[MeasureRow]] = {}
    for m in (k.last for k in measures_in_force(measures)):
        by_kind.setdefault(m.kind, []).append(m)
    order = {k.value: n for n, k in enumerate(MeasureKind)}
    trends = []
    for kind in sorted(by_kind, key=lambda k: (order.get(k, len(order)), k)):
        rows = by_kind[kind]
        known = MEASURES.get(MeasureKind(kind)) if kind in order else None
        title = kind if known is None else known.title

        def said(m: MeasureRow, known: Measure | None = known) -> str:
            value = f"{m.value:g}" if known is None else known.value_words(m.value)
            return f"{value}, {m.measured_on}"

        first, newest = rows[0], rows[-1]
        change = t.NONE
        if len(rows) > 1 and known is None:  # a newer version's kind: its values as they are
            delta = newest.value - first.value
            change = "no change" if delta == 0 else f"{delta:+g}"
        elif len(rows) > 1 and known is not None:
            # Between the numbers shown, to the measure's resolution: a change the views do
            # not show is none ("no change", never "+0.0, better").
            delta = known.shown(known.shown(newest.value) - known.shown(first.value))
            if delta == 0:
                change = "no change"
            else:
                better = (delta > 0) == known.higher_is_better
                unit = f" {known.unit}" if known.unit else ""
                change = f"{known.number_words(delta, sign=True)}{unit}, "
                change += "better" if better else "worse"
        trends.append(
            MeasureTrend(
                kind=kind,
                title=title,
                baseline=said(first),
                latest=said(newest) if len(rows) > 1 else t.NONE,
                change=change,
                count=len(rows),
            )
        )
    return trends


def plan_text(proposal: Proposal, trends: Sequence[MeasureTrend], *, sessions: int) -> str:
    """``treadguard plan``'s answer: the proposal and why, where the user stands, the
    measures."""
    weekly = "-".join(map(str, proposal.sessions_a_week))
    where = proposal.phase_title
    if proposal.week is not None:
        where += f", week {proposal.week} on the treadmill"
    lines = [
        f"User {t.code(proposal.user)}: {sessions} session{'s' if sessions != 1 else ''} on record",
        f"  next session: {proposal.reason}",
        f"  phase: {where}; {weekly} sessions a week",
        "  first session: "
        + ("counts" if proposal.first_session_counted else "not yet (first-session rules)"),
    ]
    if proposal.held:
        lines.append("  held back: see the reason above")
    if proposal.note is not None:
        lines.append(f"  the clinic's note: {proposal.note}")
    if trends:
        lines.append("  measures (baseline; latest; change):")
        lines += [f"    {m.title}: {m.baseline}; {m.latest}; {m.change}" for m in trends]
    else:
        lines.append("  measures: none recorded")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the parts


class _Asker:
    """propose()'s rules for one record: whether a session counts as the first, and the
    proposal after a given last session, from what the rules gave that session (asked only
    where the proposal carries the session's program and cap forward)."""

    def __init__(
        self,
        record: UserRecord,
        rules: ProgressionRules,
        programs: Mapping[str, Program],
        zone: ZoneInfo,
    ) -> None:
        self.record, self.rules, self.programs, self.zone = record, rules, programs, zone
        self.minimum = {name: p.cap_s_min for name, p in programs.items() if p.first_session}
        self.others = frozenset(name for name, p in programs.items() if not p.first_session)
        self.may_confirm = rules.first_session.clinician_may_confirm

    def counted(self, s: SessionRow, *, confirmations: bool = True) -> bool:
        confirmed = confirmations and self.may_confirm and s.id in self.record.confirmed
        return counts(
            s.program,
            s.end_reason,
            s.belt_moving_s,
            first_session_minimum=self.minimum,
            other_programs=self.others,
            confirmed=confirmed,
        )

    def first(self) -> SessionRow | None:
        """The user's first session that counts (the daemon's rule, SR-7)."""
        return next((s for s in self.record.sessions if self.counted(s)), None)

    def after(
        self, first: SessionRow, last: SessionRow, now: float, gave: Callable[[], Proposal]
    ) -> Proposal:
        """The proposal at ``now`` after ``last``, ``first`` counting as the user's first
        session; ``gave``: what the rules gave ``last`` (asked only if needed)."""
        record, rules, programs, zone = self.record, self.rules, self.programs, self.zone
        own = rules.user.get(record.user)
        note = None if own is None else own.note
        week = _week(first.started_at, now, zone)
        phase = _phase_at(rules, week, None if own is None else own.phase)
        gave = functools.cache(gave)  # a walk back: asked at most once here
        unheld = self._unheld(first, last, phase, week, own, note, gave)
        held = _holds(record, rules, last, zone)
        if not held:
            return unheld
        # Held: the program and cap of the session that holds, but never more than the rules
        # gave it. One started by hand with more (8 min after a 5 min session; intervals in
        # week 1) holds at what the rules proposed for it.
        ran, given = programs.get(last.program), gave()
        if ran is not None:
            program, cap = ran, _within(last.cap_s, ran)
        else:  # a program no longer among the clinic's: the one the rules gave
            program, cap = programs[given.program], given.cap_s
        words = f"held at {_lower_first(program.title)}: {held}"
        program, cap, bound = _at_most(rules, programs, program, cap, given, last)
        # Nor more than the same record proposes without the hold: a hold holds progression
        # back, it never moves a user on (intervals started by hand in week 1 to their cap are
        # followed by reverse walking at its default cap, held or not).
        without = programs[unheld.program]
        if _rank(rules, program, cap) > _rank(rules, without, unheld.cap_s):
            program, cap = without, unheld.cap_s
            bound = (
                f" (at most {_lower_first(unheld.program_title)}, {_cap(unheld.cap_s)}, as "
                f"without the hold)"
            )
        held_phase = _phase_of(rules, program) or phase
        return _proposal(
            record, rules, program, cap, words + bound, week, note, held_phase,
            held=True, counted=True,
        )  # fmt: skip

    def _unheld(
        self,
        first: SessionRow,
        last: SessionRow,
        phase: Phase,
        week: int,
        own: UserPlan | None,
        note: str | None,
        gave: Callable[[], Proposal],
    ) -> Proposal:
        """The proposal after ``last`` as if nothing held progression back."""
        record, rules, programs, zone = self.record, self.rules, self.programs, self.zone
        program = programs[phase.program]
        if last.id == first.id and last.program in self.minimum:
            # On from the user's own first session: the phase's program at its default cap.
            # Only that one: a later session of a first-session program (run gently under a
            # hold, say) moves on as any other session does, bounded if it was cut short.
            by = record.confirmed.get(last.id, {}).get("clinician") or "a clinician"
            day = t.day(last.started_at, zone)
            how = (
                f"first session completed {day}"
                if self.counted(last, confirmations=False)
                else f"first session of {day} confirmed by {by}"
            )
            cap, words = program.cap_s_default, how
        else:
            cap, words = _next_cap(program, phase, first, last, week, zone)
            if last.end_reason not in PLANNED_ENDS:
                # After a session cut short, never more than the rules gave it, whatever its
                # program: one started by hand at 8 min and stopped after 9 s proposes the
                # 5 min they gave; intervals started by hand, the reverse walking they gave;
                # and a session held at an earlier phase's program, cut short, stays there
                # rather than the hold being lost to the phase's program. Only a session that
                # ran as planned moves the user on.
                program, cap, bound = _at_most(rules, programs, program, cap, gave(), last)
                words += bound
        if own is not None and own.cap_s is not None:
            cap = _within(own.cap_s, program)
            words += _own_cap_words(record.user, own.cap_s, cap, program)
        if own is not None and own.phase is not None:
            words += f"; the clinic keeps {t.code(record.user)} in {_lower_first(phase.title)}"
        if program.name != phase.program:  # bounded to another phase's program: its phase
            phase = _phase_of(rules, program) or phase
        return _proposal(
            record, rules, program, cap, words, week, note, phase, held=False, counted=True
        )


def _at_most(
    rules: ProgressionRules,
    programs: Mapping[str, Program],
    program: Program,
    cap: float,
    gave: Proposal,
    last: SessionRow,
) -> tuple[Program, float, str]:
    """A program and cap carried forward from ``last`` (held, or cut short), bounded by what
    the rules gave ``last``: program first, then cap. The bound's words are "" if it did not
    bind."""
    given = programs[gave.program]
    if _rank(rules, given, gave.cap_s) >= _rank(rules, program, cap):
        return program, cap, ""
    if given.name == program.name:
        words = f" (at most the {_cap(gave.cap_s)} the rules gave session {last.id})"
    else:
        words = (
            f" (at most {_lower_first(gave.program_title)}, {_cap(gave.cap_s)}, as the "
            f"rules gave session {last.id})"
        )
    return given, gave.cap_s, words


def _first_session_again(
    record: UserRecord,
    rules: ProgressionRules,
    programs: Mapping[str, Program],
    last: SessionRow | None,
    zone: ZoneInfo,
    note: str | None,
    may_confirm: bool,
) -> Proposal:
    """No first session counts yet: the first-session program, always (the daemon lets the
    user start nothing else), and why."""
    program = programs[rules.first_session.program]
    own = rules.user.get(record.user)
    _, cap = first_session_start(rules, programs, record.user)
    firsts = [
        s for s in record.sessions if s.program in programs and programs[s.program].first_session
    ]
    tried = [s for s in firsts if s.ended_at is not None]
    if not record.sessions:
        words = "no treadmill session on record"
    elif not tried:
        words = "no first session on record yet"
    else:
        # The latest in which the belt moved, the one a clinician may confirm (a start stopped
        # in its countdown after it is no attempt), else the latest.
        moved = [x for x in tried if not (x.belt_moving_s is not None and x.belt_moving_s <= 0)]
        s = (moved or tried)[-1]
        on = f"session {s.id} on {t.day(s.started_at, zone)}"
        shortest = programs[s.program].cap_s_min
        belt = s.belt_moving_s if s.belt_moving_s is not None else math.nan
        if s.end_reason == ESTOP:
            words = f"first session again: {on} ended in an emergency stop"
        elif belt < shortest:  # NaN, belt time not on record, is not less: said below
            words = (
                f"first session again: {on} had {t.duration(belt, down=True)} of belt time, "
                f"less than the {t.duration(shortest, whole_minutes=True)} a first session needs"
            )
        else:
            words = f"first session again: {on} ended: {t.ended_by(s.end_reason)}"
        if may_confirm and moved:
            words += " (a clinician may confirm it counts)"
    if last is not None and last not in tried:
        ended = t.ended_by(last.end_reason)
        words += f"; the last session ({last.id}) ended: {ended}"
    if own is not None and own.cap_s is not None:
        words += _own_cap_words(record.user, own.cap_s, cap, program)
    return _proposal(
        record, rules, program, cap, words, None, note, None, held=False, counted=False
    )


def _next_cap(
    program: Program,
    phase: Phase,
    first: SessionRow,
    last: SessionRow,
    week: int,
    zone: ZoneInfo,
) -> tuple[float, str]:
    """The cap of the phase's program next time, and why."""
    if last.program != program.name:
        return program.cap_s_default, (
            f"week {week} on the treadmill (first session {t.day(first.started_at, zone)}), "
            f"{_lower_first(phase.title)} from week {phase.from_week}"
        )
    on = f"session {last.id} on {t.day(last.started_at, zone)}"
    cap = _within(last.cap_s, program)
    if last.end_reason not in PLANNED_ENDS:
        at = (
            "with its belt time not known"
            if last.belt_moving_s is None
            else f"at {t.duration(last.belt_moving_s)} of its {_cap(last.cap_s)} cap"
        )
        return cap, f"the same cap: {on} ended {at} ({t.ended_by(last.end_reason)})"
    if phase.cap_step_s <= 0 or cap >= program.cap_s_max:
        longest = " (the program's longest)" if cap >= program.cap_s_max else ""
        return cap, f"{on} ran its {_cap(last.cap_s)} cap; the same cap{longest}"
    raised = _within(cap + phase.cap_step_s, program)
    return raised, f"{on} ran its {_cap(last.cap_s)} cap: {_cap(raised - cap)} more"


def _rules_gave(ask: _Asker, last: SessionRow, first: SessionRow) -> Proposal:
    """The proposal the rules made for ``last`` when it began: what propose() said of the
    record as it stood then (``first``: the user's first session that counts).

    Without recursion: the sessions back from ``last`` whose next proposal hung on what the
    rules gave them (one that held, or was cut short: "the same cap", bounded the same way)
    are walked back once, to a session that ran as planned without a hold, or to the first
    session that counts, whatever way it ended (before it nothing is held, and what the rules
    gave the session after it is what propose() says with it counted). The proposals are
    then made forward from there, each from the one before it. A record of 1,500 holds costs
    one walk, not 1,500 nested proposals."""
    record = ask.record
    ordered = sorted(record.sessions, key=lambda s: s.id)
    index = {s.id: i for i, s in enumerate(ordered)}
    chain = [last]  # newest first
    gave: Proposal | None = None
    while first.id < chain[-1].id:
        # The session before, as propose() would take it from the record as it stood then.
        previous = _last_session(ordered, end=index[chain[-1].id]) or first
        if previous.end_reason in PLANNED_ENDS and not _holds(
            record, ask.rules, previous, ask.zone
        ):
            # Its next proposal hangs on nothing the rules gave it (never asked: a walk of
            # its own if it were).
            asked = _walk(ask, previous, first)
            gave = ask.after(first, previous, chain[-1].started_at, asked)
            break
        chain.append(previous)
    if gave is None:
        # The first session that counts (or one before it): the record before it has none,
        # so the rules gave it a first session, with no bound to ask.
        earliest = chain[-1]
        before = UserRecord(
            record.user,
            [s for s in ordered if s.id < earliest.id],
            outcomes=record.outcomes,
            confirmed=record.confirmed,
            measures=record.measures,
        )
        gave = propose(before, ask.rules, ask.programs, zone=ask.zone, now=earliest.started_at)
    for previous, session in zip(reversed(chain[1:]), reversed(chain[:-1]), strict=True):
        # Oldest first: what the rules gave ``previous`` gives what they gave ``session``.
        gave = ask.after(first, previous, session.started_at, _known(gave))
    return gave


def _walk(ask: _Asker, last: SessionRow, first: SessionRow) -> Callable[[], Proposal]:
    return lambda: _rules_gave(ask, last, first)


def _known(proposal: Proposal) -> Callable[[], Proposal]:
    return lambda: proposal


def asks_more(
    rules: ProgressionRules, programs: Mapping[str, Program], a: Proposal, b: Proposal
) -> bool:
    """Whether proposal ``a`` asks more of a user than ``b`` (program first, then cap)."""
    return _rank(rules, programs[a.program], a.cap_s) > _rank(rules, programs[b.program], b.cap_s)


def _rank(rules: ProgressionRules, program: Program, cap: float) -> tuple[int, float]:
    """How much a program and cap ask of a user: a first session's least, then each phase's
    program in the protocol's order, then a program no phase names (not known to ask less);
    then the cap."""
    order = [phase.program for phase in rules.phase]
    if program.first_session:
        return -1, cap
    return (order.index(program.name) if program.name in order else len(order)), cap


def _holds(
    record: UserRecord, rules: ProgressionRules, last: SessionRow | None, zone: ZoneInfo
) -> str:
    """What holds progression back after the last session, in words ("" for nothing)."""
    if last is None:
        return ""
    on = f"session {last.id} on {t.day(last.started_at, zone)}"
    why: list[str] = []
    if rules.hold.emergency_stop and last.end_reason == ESTOP:
        why.append(f"{on} ended in an emergency stop")
    if rules.hold.emergency_stop and last.end_reason == INTERRUPTED:
        # Not known to have ended otherwise: it may have been one (a mains E-STOP cuts the
        # board's power too). Failing closed, it holds as one does.
        why.append(
            f"{on} was cut short: treadguard stopped during it, so how it ended is not known"
        )
    entered = record.outcomes.get(last.id, {})
    before = _pain(entered.get("before", {}))
    after = _pain(entered.get("after", {}))
    if before is not None and after is not None and after - before >= rules.hold.pain_rise:
        rise = after - before
        points = f"{rise} point{'s' if rise != 1 else ''}"
        why.append(f"pain rose {points} in {on} ({before} before, {after} after)")
    return "; ".join(why)


def _proposal(
    record: UserRecord,
    rules: ProgressionRules,
    program: Program,
    cap: float,
    words: str,
    week: int | None,
    note: str | None,
    phase: Phase | None,
    *,
    held: bool,
    counted: bool,
) -> Proposal:
    if phase is None or program.first_session:
        name, title, weekly = (
            FIRST_SESSION_PHASE,
            program.title,
            rules.first_session.sessions_a_week,
        )
    else:
        name, title, weekly = phase.name, phase.title, phase.sessions_a_week
    return Proposal(
        user=record.user,
        phase=name,
        phase_title=title,
        program=program.name,
        program_title=program.title,
        cap_s=cap,
        sessions_a_week=weekly,
        reason=f"{program.title}, {_cap(cap)}: {words}",
        held=held,
        first_session_counted=counted,
        week=week,
        note=note,
    )


# ----------------------------------------------------------------------------- small rules


def _last_session(sessions: Sequence[SessionRow], end: int | None = None) -> SessionRow | None:
    """The newest session (of the first ``end``, all by default) that has ended and says
    something of the user: the belt moved, or it ended in an emergency stop, or treadguard
    stopped during it (its belt time is not known: the belt may have run for minutes). A start
    aborted before the belt moved says nothing."""
    for i in reversed(range(len(sessions) if end is None else end)):
        s = sessions[i]
        if s.ended_at is None:
            continue
        belt = s.belt_moving_s
        if s.end_reason in (ESTOP, INTERRUPTED) or (
            belt is not None and math.isfinite(belt) and belt > 0
        ):
            return s
    return None


def _week(started: float, now: float, zone: ZoneInfo) -> int:
    """Week on the treadmill at ``now``: 1 in the seven days from the first session's day."""
    try:
        days = (
            datetime.fromtimestamp(now, zone).date() - datetime.fromtimestamp(started, zone).date()
        ).days
    except (OverflowError, OSError, ValueError):  # a time no calendar holds
        return 1
    return max(days, 0) // 7 + 1


def _phase_at(rules: ProgressionRules, week: int, pinned: str | None) -> Phase:
    if pinned is not None:
        phase = rules.phase_named(pinned)
        if phase is not None:
            return phase
    current = rules.phase[0]
    for phase in rules.phase:
        if phase.from_week <= week:
            current = phase
    return current


def _phase_of(rules: ProgressionRules, program: Program) -> Phase | None:
    return next((p for p in rules.phase if p.program == program.name), None)


def first_session_start(
    rules: ProgressionRules, programs: Mapping[str, Program], user: str
) -> tuple[str, float]:
    """The program and cap proposed to ``user`` while no first session of theirs counts: the
    rules' first-session program, at the user's own cap (within the program's) or its
    default. Nothing of their record goes into it, so a start from history takes it without
    the record being read."""
    program = programs[rules.first_session.program]
    own = rules.user.get(user)
    cap = program.cap_s_default if own is None or own.cap_s is None else own.cap_s
    return program.name, _within(cap, program)


def _own_cap_words(user: str, own: float, cap: float, program: Program) -> str:
    """The clinic's cap for ``user``, and the cap proposed where the program's limits moved it:
    a 2 min cap proposed as 3 min must not read as 2 min."""
    said = _cap(own)
    if cap == own:
        return f"; the clinic set {t.code(user)}'s cap to {said}"
    if said == _cap(cap):  # 179.6 s and 180 s are both "3 min": the seconds, as set
        said = f"{own:.1f} s"
    words = f"; the clinic set {t.code(user)}'s cap to {said}"
    end = "shortest" if cap > own else "longest"
    return words + f" ({_cap(cap)} here: the program's {end})"


def _within(cap: float, program: Program) -> float:
    """A cap the program allows: within its cap_s_min-cap_s_max (its default for a cap that
    is no number)."""
    if not math.isfinite(cap):
        return program.cap_s_default
    return min(max(cap, program.cap_s_min), program.cap_s_max)


def _pain(entry: Mapping[str, Any]) -> int | None:
    pain = entry.get("pain")
    return pain if isinstance(pain, int) and not isinstance(pain, bool) else None


def _cap(seconds: float) -> str:
    return t.duration(seconds, whole_minutes=True)


def _lower_first(title: str) -> str:
    """ "Reverse walking" -> "reverse walking"; "KOOS" stays as it is."""
    head = title.split(" ", 1)[0]
    return title[:1].lower() + title[1:] if head[1:].islower() or len(head) == 1 else title
