"""The proposal for a user's next session (controller/plan.py, docs/plan.md): worked examples
of each rule, and properties over any history: it never raises, always names a reason, and
never proposes more than the first-session limit to a user whose first session does not count,
by the same rule the daemon enforces (Journal.has_history, SR-7)."""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime
from operator import add
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from treadguard.config.loading import load_config
from treadguard.config.progression import ProgressionRules, UserPlan
from treadguard.controller.first_session import counts
from treadguard.controller.journal import Journal, MeasureRow, SessionRow
from treadguard.controller.plan import (
    UserRecord,
    _Asker,
    _last_session,
    _rules_gave,
    measure_trends,
    propose,
)
from treadguard.safety.decisions import Event, EventType, JsonScalar
from treadguard.safety.limits import HARD_CAP_FIRST_SESSION_S

ROOT = Path(__file__).resolve().parents[1]
SIM = load_config(ROOT / "config" / "sim.toml")
PROGRAMS = SIM.programs
RULES = SIM.rules
LONDON = ZoneInfo("Europe/London")
DAY = 86_400.0
T0 = datetime(2026, 12, 1, 10, 0, tzinfo=UTC).timestamp()  # a Tuesday


def session(
    n: int,
    program: str,
    reason: str | None,
    belt_s: float | None,
    *,
    cap_s: float | None = None,
    day: float = 0.0,
    user: str = "p-1",
) -> SessionRow:
    cap = cap_s if cap_s is not None else PROGRAMS[program].cap_s_default
    start = T0 + day * DAY
    ended = None if reason is None else start + (belt_s or 0.0) + 10
    return SessionRow(n, user, program, cap, start, ended, reason, belt_s, 0.8)


def pain(before: int, after: int) -> dict[str, dict[str, Any]]:
    return {"before": {"when": "before", "pain": before}, "after": {"when": "after", "pain": after}}


def plan(record: UserRecord, rules: ProgressionRules = RULES, *, day: float = 1.0) -> Any:
    return propose(record, rules, PROGRAMS, zone=LONDON, now=T0 + day * DAY)


# ----------------------------------------------------------------------------- examples


def test_a_new_user_is_proposed_the_first_session() -> None:
    got = plan(UserRecord("p-1"))
    assert (got.program, got.cap_s, got.phase, got.held) == (
        "first_session",
        180.0,
        "first_session",
        False,
    )
    assert got.reason == "First treadmill session, 3 min: no treadmill session on record"
    assert got.sessions_a_week == (3, 4)
    assert not got.first_session_counted


def test_a_first_session_of_3_s_does_not_count_and_the_reason_says_so() -> None:
    got = plan(UserRecord("p-1", [session(1, "first_session", "operator_stop", 3.0)]))
    assert got.program == "first_session"
    assert not got.first_session_counted
    assert got.reason == (
        "First treadmill session, 3 min: first session again: session 1 on 2026-12-01 had 3 s "
        "of belt time, less than the 3 min a first session needs (a clinician may confirm it "
        "counts)"
    )


def test_a_first_session_that_ended_in_a_stop_or_fault_is_said_as_it_ended() -> None:
    lost = plan(UserRecord("p-1", [session(1, "first_session", "tablet_lost", 240.0)]))
    assert lost.reason == (
        "First treadmill session, 3 min: first session again: session 1 on 2026-12-01 ended: "
        "no tablet heartbeat (the page was hidden or lost its link) (a clinician may confirm it "
        "counts)"
    )
    fell = plan(UserRecord("p-1", [session(1, "first_session", "estop", 20.0)]))
    assert "session 1 on 2026-12-01 ended in an emergency stop" in fell.reason
    other = plan(UserRecord("p-1", [session(1, "reverse_walking", "estop", 20.0)]))
    assert other.reason == (
        "First treadmill session, 3 min: no first session on record yet; the last session (1) "
        "ended: emergency stop"
    )


def test_a_first_session_to_its_cap_moves_the_user_on_to_reverse_walking() -> None:
    got = plan(UserRecord("p-1", [session(1, "first_session", "cap", 179.0)]))
    assert (got.program, got.cap_s, got.held, got.week) == ("reverse_walking", 300.0, False, 1)
    assert got.reason == "Reverse walking, 5 min: first session completed 2026-12-01"
    assert got.first_session_counted


def test_a_clinician_s_confirmation_counts_and_is_named() -> None:
    record = UserRecord(
        "p-1",
        [session(1, "first_session", "operator_stop", 3.0)],
        confirmed={1: {"clinician": "c-7", "ts": T0}},
    )
    got = plan(record)
    assert got.program == "reverse_walking"
    assert got.reason == "Reverse walking, 5 min: first session of 2026-12-01 confirmed by c-7"
    # Where the clinic's rules leave it to belt time, a confirmation on record counts for
    # nothing, here as in the daemon.
    strict = RULES.model_copy(
        update={
            "first_session": RULES.first_session.model_copy(update={"clinician_may_confirm": False})
        }
    )
    again = plan(record, strict)
    assert again.program == "first_session"
    assert "may confirm" not in again.reason


def test_pain_that_rose_2_points_or_more_holds_the_user_where_they_are() -> None:
    first = session(1, "first_session", "cap", 180.0)
    held = plan(UserRecord("p-1", [first], outcomes={1: pain(2, 5)}))
    assert (held.program, held.cap_s, held.held) == ("first_session", 180.0, True)
    assert held.reason == (
        "First treadmill session, 3 min: held at first treadmill session: pain rose 3 points in "
        "session 1 on 2026-12-01 (2 before, 5 after)"
    )
    assert held.first_session_counted  # it counts: the daemon lets them start reverse walking
    assert not plan(UserRecord("p-1", [first], outcomes={1: pain(2, 3)})).held
    assert not plan(UserRecord("p-1", [first], outcomes={1: {"after": {"pain": 9}}})).held


def test_an_emergency_stop_holds_the_program_and_the_cap() -> None:
    sessions = [
        session(1, "first_session", "cap", 180.0),
        session(2, "reverse_walking", "cap", 300.0, cap_s=300.0, day=2),
        session(3, "reverse_walking", "estop", 40.0, cap_s=360.0, day=4),
    ]
    got = plan(UserRecord("p-1", sessions), day=5)
    assert (got.program, got.cap_s, got.held) == ("reverse_walking", 360.0, True)
    assert got.reason == (
        "Reverse walking, 6 min: held at reverse walking: session 3 on 2026-12-05 ended in an "
        "emergency stop"
    )


def test_a_session_treadguard_stopped_during_holds_as_an_emergency_stop_does() -> None:
    """A crash, or a mains E-STOP that cuts the board's power too: the next start-up closes the
    session as interrupted, its belt time unknown. It is the last session all the same (never
    skipped for the one before it), and its pain entered is weighed."""
    sessions = [
        session(1, "first_session", "cap", 180.0),
        session(2, "reverse_walking", "cap", 300.0, cap_s=300.0, day=1),
        session(3, "reverse_walking", "interrupted", None, cap_s=360.0, day=2),
    ]
    got = plan(UserRecord("p-1", sessions, outcomes={3: pain(2, 6)}), day=3)
    assert (got.program, got.cap_s, got.held) == ("reverse_walking", 360.0, True)
    assert got.reason == (
        "Reverse walking, 6 min: held at reverse walking: session 3 on 2026-12-03 was cut "
        "short: treadguard stopped during it, so how it ended is not known; pain rose 4 points "
        "in session 3 on 2026-12-03 (2 before, 6 after)"
    )
    calm = plan(UserRecord("p-1", sessions), day=3)
    assert calm.held
    assert "session 2" not in calm.reason, calm.reason
    no_stop_hold = RULES.model_copy(
        update={"hold": RULES.hold.model_copy(update={"emergency_stop": False})}
    )
    unheld = plan(UserRecord("p-1", sessions), no_stop_hold, day=3)
    assert not unheld.held
    assert "session 3 on 2026-12-03 ended with its belt time not known" in unheld.reason


def test_a_hold_proposes_no_more_than_the_rules_gave_the_session_that_holds() -> None:
    """Session 2 ran its 5 min cap; session 3 was started at 8 min by hand, and treadguard
    stopped during it (or it ended in an emergency stop). Held, the user is proposed the
    6 min the rules gave session 3, never the 8 min no session of theirs has run to."""
    for how, belt in (("interrupted", None), ("estop", 40.0)):
        sessions = [
            session(1, "first_session", "cap", 180.0),
            session(2, "reverse_walking", "cap", 300.0, cap_s=300.0, day=1),
            session(3, "reverse_walking", how, belt, cap_s=480.0, day=2),
        ]
        got = plan(UserRecord("p-1", sessions), day=3)
        assert (got.held, got.cap_s) == (True, 360.0), got.reason
        assert got.reason.endswith("(at most the 6 min the rules gave session 3)"), got.reason


def test_a_hold_after_a_harder_program_started_by_hand_proposes_the_one_the_rules_gave() -> None:
    """Week 1: the first session counted, then intervals started by hand, ended in an
    emergency stop. The rules gave that session reverse walking at 5 min: held, the user is
    proposed that, never the intervals no rule has given them yet."""
    for how, belt in (("estop", 2.0), ("interrupted", None)):
        sessions = [
            session(1, "first_session", "cap", 180.0),
            session(2, "intervals", how, belt, day=1),
        ]
        got = plan(UserRecord("p-1", sessions), day=2)
        assert (got.held, got.program, got.cap_s) == (True, "reverse_walking", 300.0), got.reason
        assert got.reason.endswith("(at most reverse walking, 5 min, as the rules gave session 2)")


def test_a_hold_never_proposes_more_than_the_same_record_without_it() -> None:
    """Week 1: the first session, reverse walking to its 5 min cap, then intervals started by
    hand at 8 min and run to their cap. Without a pain rise the next proposal is reverse
    walking at its default 5 min (the last session was another program); with one, the hold
    once proposed the 6 min the rules gave the intervals session, more than no hold."""
    sessions = [
        session(1, "first_session", "cap", 180.0),
        session(2, "reverse_walking", "cap", 300.0, day=1),
        session(3, "intervals", "cap", 480.0, cap_s=480.0, day=2),
    ]
    free = plan(UserRecord("p-1", sessions), day=3)
    assert (free.held, free.program, free.cap_s) == (False, "reverse_walking", 300.0), free.reason
    got = plan(UserRecord("p-1", sessions, outcomes={3: pain(2, 5)}), day=3)
    assert (got.held, got.program, got.cap_s) == (True, "reverse_walking", 300.0), got.reason
    assert got.reason.startswith("Reverse walking, 5 min: held at intervals: pain rose 3 points")
    assert got.reason.endswith("(at most reverse walking, 5 min, as without the hold)")


def test_holds_one_after_another_never_climb_above_what_the_rules_gave() -> None:
    """Two sessions started by hand at 8 min, each ended in an emergency stop: the rules gave
    the first of them 5 min, and the second's hold is no more than the first's was."""
    sessions = [
        session(1, "first_session", "cap", 180.0),
        session(2, "reverse_walking", "estop", 20.0, cap_s=480.0, day=1),
        session(3, "reverse_walking", "estop", 20.0, cap_s=480.0, day=2),
    ]
    got = plan(UserRecord("p-1", sessions), day=3)
    assert (got.held, got.program, got.cap_s) == (True, "reverse_walking", 300.0), got.reason
    assert got.reason.endswith("(at most the 5 min the rules gave session 3)"), got.reason


def test_a_session_started_by_hand_and_stopped_early_is_proposed_no_more_than_the_rules_gave() -> (
    None
):
    """The rules gave session 2 reverse walking at 5 min; it was started by hand at 8 min and
    stopped after 9 s. "The same cap" is the 5 min the rules gave it, never the 8 min the
    user has never walked; nor does an emergency stop in an 8 min session after it climb to
    8 min through it."""
    sessions = [
        session(1, "first_session", "cap", 180.0),
        session(2, "reverse_walking", "operator_stop", 9.0, cap_s=480.0, day=1),
    ]
    got = plan(UserRecord("p-1", sessions), day=2)
    assert (got.held, got.program, got.cap_s) == (False, "reverse_walking", 300.0), got.reason
    assert got.reason.endswith("(at most the 5 min the rules gave session 2)"), got.reason
    sessions.append(session(3, "reverse_walking", "estop", 7.0, cap_s=480.0, day=2))
    held = plan(UserRecord("p-1", sessions), day=3)
    assert (held.held, held.program, held.cap_s) == (True, "reverse_walking", 300.0), held.reason


def test_what_a_session_cut_short_carries_forward_is_bounded_program_first_then_cap() -> None:
    """A session cut short without a hold proposes "the same cap" of its program: never more
    (program first, then cap) than the rules gave it, whichever program that was. Intervals
    started by hand at 10 min and stopped after 20 s carry neither the intervals nor the
    10 min the rules did not give, in week 4 as in week 3, after a hold or not."""
    first = session(1, "first_session", "cap", 180.0)
    ran = session(2, "reverse_walking", "cap", 300.0, day=1)
    # Week 3: the rules gave session 3 reverse walking at 6 min (session 2 ran its 5 min).
    for how in ("operator_stop", "grip_released"):
        hand = session(3, "intervals", how, 20.0, cap_s=600.0, day=15)
        got = plan(UserRecord("p-1", [first, ran, hand]), day=22)
        assert (got.held, got.program, got.cap_s) == (False, "reverse_walking", 360.0), got.reason
        assert got.reason.endswith(
            "(at most reverse walking, 6 min, as the rules gave session 3)"
        ), got.reason
    # Week 4: session 3 held at reverse walking 6 min (an emergency stop); session 4 was
    # intervals started by hand at 10 min, stopped after 20 s. The rules gave it the hold.
    held = session(3, "reverse_walking", "estop", 20.0, cap_s=360.0, day=22)
    hand = session(4, "intervals", "operator_stop", 20.0, cap_s=600.0, day=23)
    got = plan(UserRecord("p-1", [first, ran, held, hand]), day=24)
    assert (got.program, got.cap_s) == ("reverse_walking", 360.0), got.reason
    assert got.reason.endswith("(at most reverse walking, 6 min, as the rules gave session 4)")
    # Week 4: session 3 reverse walking cut short without a hold; the rules gave session 4
    # intervals at 8 min (the phase's start), and that is its bound, named as it was given.
    short = session(3, "reverse_walking", "operator_stop", 20.0, cap_s=360.0, day=22)
    got = plan(UserRecord("p-1", [first, ran, short, hand]), day=24)
    assert (got.program, got.cap_s) == ("intervals", 480.0), got.reason
    assert got.reason.endswith("(at most the 8 min the rules gave session 4)"), got.reason


def test_a_hold_is_not_left_by_a_session_of_the_held_proposal_cut_short() -> None:
    """Held at reverse walking 6 min in week 4 (an emergency stop in week 3, the intervals
    phase begun): the held proposal run and stopped after 10 s (the user struggled again, the
    tablet was lost) proposes reverse walking 6 min again, never the intervals the phase would
    give; so does a first session held after a pain rise, its held run cut short."""
    first = session(1, "first_session", "cap", 180.0)
    ran = session(2, "reverse_walking", "cap", 300.0, day=1)
    stopped = session(3, "reverse_walking", "estop", 40.0, cap_s=360.0, day=20)
    assert plan(UserRecord("p-1", [first, ran, stopped]), day=22).held
    for how in ("operator_stop", "tablet_lost"):
        again = session(4, "reverse_walking", how, 10.0, cap_s=360.0, day=22)
        got = plan(UserRecord("p-1", [first, ran, stopped, again]), day=23)
        assert (got.program, got.cap_s) == ("reverse_walking", 360.0), got.reason
    pain = {1: {"before": {"when": "before", "pain": 2}, "after": {"when": "after", "pain": 5}}}
    held = plan(UserRecord("p-1", [first], outcomes=pain), day=1)
    assert (held.held, held.program) == (True, "first_session"), held.reason
    again = session(2, "first_session", "operator_stop", 20.0, cap_s=180.0, day=1)
    got = plan(UserRecord("p-1", [first, again], outcomes=pain), day=2)
    assert (got.program, got.cap_s) == ("first_session", 180.0), got.reason


def test_a_later_session_of_the_first_session_program_never_moves_the_user_on_as_a_first() -> None:
    """Only the user's own first session moves them on as one. A gentler first-session session
    run under a hold and stopped after 3 min 5 s (enough belt time to count as a first
    session, were it the first) keeps the hold's bound: held at reverse walking 6 min by a
    pain rise in week 5, never intervals; held at the first session by an emergency stop, the
    first session again. One that ran to its cap is never said to be a first session."""
    first = session(1, "first_session", "cap", 180.0)
    ran = session(2, "reverse_walking", "cap", 300.0, day=2)
    sore = session(3, "reverse_walking", "cap", 360.0, cap_s=360.0, day=30)
    held = plan(UserRecord("p-1", [first, ran, sore], outcomes={3: pain(2, 6)}), day=32)
    assert (held.held, held.program, held.cap_s) == (True, "reverse_walking", 360.0), held
    gentle = session(4, "first_session", "operator_stop", 185.0, cap_s=300.0, day=32)
    got = plan(UserRecord("p-1", [first, ran, sore, gentle], outcomes={3: pain(2, 6)}), day=33)
    assert (got.program, got.cap_s) == ("reverse_walking", 360.0), got.reason
    assert "first session completed" not in got.reason, got.reason

    fell = session(3, "first_session", "estop", 40.0, day=3)
    held = plan(UserRecord("p-1", [first, ran, fell]), day=4)
    assert (held.held, held.program, held.cap_s) == (True, "first_session", 180.0), held
    gentle = session(4, "first_session", "operator_stop", 185.0, cap_s=300.0, day=4)
    got = plan(UserRecord("p-1", [first, ran, fell, gentle]), day=5)
    assert (got.program, got.cap_s) == ("first_session", 180.0), got.reason

    full = session(3, "first_session", "cap", 180.0, day=40)
    got = plan(UserRecord("p-1", [first, ran, full]), day=41)
    assert "first session completed" not in got.reason, got.reason
    assert got.reason.startswith("Intervals, "), got.reason


def test_what_the_rules_gave_the_session_after_a_first_session_cut_short_is_the_next_program() -> (
    None
):
    """A first session that counts though it did not run to its cap (confirmed by a clinician,
    or stopped by them after 3 min of belt time): the rules gave the session after it reverse
    walking at 5 min, never the first session again. A reverse walking session started by
    hand at 8 min and stopped after 9 s (or ended in an emergency stop) is bounded by that."""
    confirmed = {1: {"clinician": "c-1"}}
    for first, confirmations in (
        (session(1, "first_session", "operator_stop", 30.0), confirmed),
        (session(1, "first_session", "operator_stop", 210.0), {}),
    ):
        hand = session(2, "reverse_walking", "operator_stop", 9.0, cap_s=480.0, day=1)
        got = plan(UserRecord("p-1", [first, hand], confirmed=confirmations), day=2)
        assert (got.held, got.program, got.cap_s) == (False, "reverse_walking", 300.0), got.reason
        assert got.reason.endswith("(at most the 5 min the rules gave session 2)"), got.reason
        again = session(3, "reverse_walking", "operator_stop", 9.0, cap_s=480.0, day=2)
        got = plan(UserRecord("p-1", [first, hand, again], confirmed=confirmations), day=3)
        assert (got.program, got.cap_s) == ("reverse_walking", 300.0), got.reason
        assert got.reason.endswith("(at most the 5 min the rules gave session 3)"), got.reason
        fell = session(2, "reverse_walking", "estop", 9.0, cap_s=480.0, day=1)
        got = plan(UserRecord("p-1", [first, fell], confirmed=confirmations), day=2)
        assert (got.held, got.program, got.cap_s) == (True, "reverse_walking", 300.0), got.reason
        assert got.reason.endswith("(at most the 5 min the rules gave session 2)"), got.reason


def test_the_attempt_named_for_confirming_is_the_latest_in_which_the_belt_moved() -> None:
    """A first session stopped after 22 s, then a start stopped in its countdown: the reason
    names the one a clinician may confirm (the daemon refuses the empty one), and offers no
    confirmation where the belt never moved at all."""
    tried = session(1, "first_session", "operator_stop", 22.0)
    empty = session(2, "first_session", "operator_stop", 0.0, day=1)
    got = plan(UserRecord("p-1", [tried, empty]), day=2)
    assert "session 1 on 2026-12-01 had 22 s of belt time" in got.reason, got.reason
    assert got.reason.endswith("(a clinician may confirm it counts)"), got.reason
    got = plan(UserRecord("p-1", [empty]), day=2)
    assert "may confirm" not in got.reason, got.reason


def test_a_record_of_holds_only_is_proposed_for_however_long_it_is() -> None:
    """Every session after the first ended in an emergency stop, 1,500 of them: the bound on a
    hold asks the record before the last session once, never once a session (Python's
    recursion stops at 1,000)."""
    sessions = [session(1, "first_session", "cap", 180.0)] + [
        session(n, "reverse_walking", "estop", 40.0, cap_s=300.0, day=n / 10)
        for n in range(2, 1502)
    ]
    got = plan(UserRecord("p-1", sessions), day=151)
    assert (got.held, got.program, got.cap_s) == (True, "reverse_walking", 300.0), got.reason


def test_a_first_session_just_short_of_its_minimum_is_not_said_to_have_reached_it() -> None:
    """179.6 s does not count against 3 min: the reason must not round it up to the 3 min it
    says it falls short of."""
    got = plan(UserRecord("p-1", [session(1, "first_session", "operator_stop", 179.6)]))
    assert not got.first_session_counted
    assert "had 2 min 59 s of belt time, less than the 3 min" in got.reason, got.reason


def test_the_cap_grows_after_a_session_that_ran_to_it_and_stays_after_one_stopped_early() -> None:
    first = session(1, "first_session", "cap", 180.0)
    ran = session(2, "reverse_walking", "cap", 300.0, cap_s=300.0, day=2)
    got = plan(UserRecord("p-1", [first, ran]), day=3)
    assert got.cap_s == 360.0
    assert (
        got.reason
        == "Reverse walking, 6 min: session 2 on 2026-12-03 ran its 5 min cap: 1 min more"
    )
    stopped = session(3, "reverse_walking", "operator_stop", 130.0, cap_s=360.0, day=4)
    same = plan(UserRecord("p-1", [first, ran, stopped]), day=5)
    assert same.cap_s == 360.0
    assert "ended at 2 min 10 s of its 6 min cap (stopped from a tablet)" in same.reason
    longest = session(4, "reverse_walking", "cap", 480.0, cap_s=480.0, day=6)
    top = plan(UserRecord("p-1", [first, ran, longest]), day=7)
    assert top.cap_s == 480.0  # the program's cap_s_max
    assert "the program's longest" in top.reason


def test_from_the_fourth_week_on_the_treadmill_intervals_are_proposed() -> None:
    first = session(1, "first_session", "cap", 180.0)
    later = session(2, "reverse_walking", "cap", 480.0, cap_s=480.0, day=20)
    got = plan(UserRecord("p-1", [first, later]), day=21)
    assert (got.program, got.cap_s, got.phase, got.week) == ("intervals", 480.0, "intervals", 4)
    assert got.sessions_a_week == (2, 3)
    assert got.reason == (
        "Intervals, 8 min: week 4 on the treadmill (first session 2026-12-01), intervals from "
        "week 4"
    )


def test_the_clinic_s_own_settings_for_a_user_are_kept_and_said() -> None:
    rules = RULES.model_copy(
        update={"user": {"p-1": UserPlan(phase="reverse_walking", cap_s=420.0, note="knee")}}
    )
    first = session(1, "first_session", "cap", 180.0)
    later = session(2, "reverse_walking", "cap", 300.0, cap_s=300.0, day=20)
    got = plan(UserRecord("p-1", [first, later]), rules, day=21)
    assert (got.program, got.cap_s, got.note) == ("reverse_walking", 420.0, "knee")
    assert "the clinic set p-1's cap to 7 min" in got.reason
    assert "the clinic keeps p-1 in reverse walking" in got.reason
    # Not before the first session counts, and never above the first-session program's cap.
    new = plan(UserRecord("p-1"), rules)
    assert (new.program, new.cap_s) == ("first_session", 300.0)


def test_a_user_s_own_cap_outside_the_program_s_limits_is_said_with_the_cap_proposed() -> None:
    """The clinic's cap for a user is kept within the program's limits; the reason then says
    which cap the session gets, never only the clinic's (a 2 min cap proposed as 3 min must not
    read as 2 min)."""
    short = RULES.model_copy(update={"user": {"p-1": UserPlan(cap_s=120.0)}})
    new = plan(UserRecord("p-1"), short)
    assert (new.program, new.cap_s) == ("first_session", 180.0)
    assert "the clinic set p-1's cap to 2 min (3 min here: the program's shortest)" in new.reason, (
        new.reason
    )
    first = session(1, "first_session", "cap", 180.0)
    later = session(2, "reverse_walking", "cap", 300.0, cap_s=300.0, day=5)
    got = plan(UserRecord("p-1", [first, later]), short, day=6)
    assert (got.program, got.cap_s) == ("reverse_walking", 300.0)
    assert "the clinic set p-1's cap to 2 min (5 min here: the program's shortest)" in got.reason
    long = RULES.model_copy(update={"user": {"p-1": UserPlan(cap_s=420.0)}})
    top = plan(UserRecord("p-1"), long)
    assert top.cap_s == 300.0
    assert "the clinic set p-1's cap to 7 min (5 min here: the program's longest)" in top.reason
    # Within a second of the program's shortest: both figures would read "3 min".
    close = RULES.model_copy(update={"user": {"p-1": UserPlan(cap_s=179.6)}})
    near = plan(UserRecord("p-1"), close)
    assert near.cap_s == 180.0
    assert "cap to 179.6 s (3 min here: the program's shortest)" in near.reason, near.reason
    within = RULES.model_copy(update={"user": {"p-1": UserPlan(cap_s=240.0)}})
    kept = plan(UserRecord("p-1"), within)
    assert kept.cap_s == 240.0
    assert kept.reason.endswith("the clinic set p-1's cap to 4 min"), kept.reason


def test_measures_show_the_baseline_the_latest_and_whether_it_is_better() -> None:
    rows = [
        MeasureRow(1, "p-1", "tug", 12.0, "2026-11-20", T0, None),
        MeasureRow(2, "p-1", "koos", 55.0, "2026-11-20", T0, "c-7"),
        MeasureRow(3, "p-1", "tug", 9.5, "2027-01-10", T0, None),
        MeasureRow(4, "p-1", "koos", 48.0, "2027-01-10", T0, None),
        MeasureRow(5, "p-1", "walk_10m", 8.2, "2026-11-20", T0, None),
    ]
    got = {m.kind: (m.baseline, m.latest, m.change) for m in measure_trends(rows)}
    assert got == {
        "tug": ("12.0 s, 2026-11-20", "9.5 s, 2027-01-10", "-2.5 s, better"),
        "koos": ("55, 2026-11-20", "48, 2027-01-10", "-7, worse"),
        "walk_10m": ("8.2 s, 2026-11-20", "-", "-"),
    }
    assert [m.kind for m in measure_trends(rows)] == ["tug", "koos", "walk_10m"]


# ----------------------------------------------------------------------------- properties

REASONS = st.sampled_from(
    [None, "cap", "completed", "operator_stop", "estop", "fault", "tablet_lost", "start_aborted",
     "interrupted", "shutdown"]
)  # fmt: skip
FLOATS = st.one_of(
    st.none(),
    st.floats(min_value=-10.0, max_value=1e4),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)

CAPS = st.sampled_from([180.0, 240.0, 300.0, 360.0, 420.0, 480.0])


@st.composite
def records(draw: st.DrawFn) -> UserRecord:
    names = [*PROGRAMS, "history", "removed_program"]
    rows = []
    start = T0
    for n in range(1, draw(st.integers(0, 8)) + 1):
        # Any float, or a cap a program offers (a session run to it: its belt time).
        cap = draw(st.one_of(st.floats(allow_nan=True, allow_infinity=True), CAPS))
        # Anywhere in time, or days after the session before, as a course of sessions goes.
        start = draw(
            st.one_of(
                st.floats(min_value=-400 * DAY, max_value=400 * DAY).map(lambda d: T0 + d),
                st.floats(min_value=0.0, max_value=4 * DAY).map(functools.partial(add, start)),
            )
        )
        reason = draw(REASONS)
        rows.append(
            SessionRow(
                n, "p-1", draw(st.sampled_from(names)), cap, start,
                None if reason is None else start + 100, reason,
                draw(st.one_of(FLOATS, st.just(cap))), None,
            )
        )  # fmt: skip
    ids = [r.id for r in rows]
    entry = st.fixed_dictionaries(
        {"pain": st.one_of(st.integers(-3, 14), st.none(), st.booleans(), st.text(max_size=2))}
    )
    outcomes = draw(
        st.dictionaries(
            st.sampled_from(ids) if ids else st.nothing(),
            st.dictionaries(st.sampled_from(["before", "after", "x"]), entry, max_size=3),
        )
    )
    confirmed = draw(
        st.dictionaries(
            st.sampled_from(ids) if ids else st.nothing(),
            st.fixed_dictionaries({}, optional={"clinician": st.text(max_size=5)}),
        )
    )
    return UserRecord("p-1", rows, outcomes=outcomes, confirmed=confirmed)


RULESETS = st.sampled_from(
    [
        RULES,
        RULES.model_copy(
            update={
                "first_session": RULES.first_session.model_copy(
                    update={"clinician_may_confirm": False}
                )
            }
        ),
        RULES.model_copy(update={"user": {"p-1": UserPlan(phase="intervals", cap_s=480.0)}}),
        RULES.model_copy(update={"user": {"p-1": UserPlan(cap_s=30.0, note="n")}}),
    ]
)


@settings(max_examples=400, deadline=None)
@given(
    record=records(),
    rules=RULESETS,
    now=st.floats(min_value=T0 - 800 * DAY, max_value=T0 + 800 * DAY),
)
def test_any_history_gets_a_proposal_with_a_reason_within_the_program_s_limits(
    record: UserRecord, rules: ProgressionRules, now: float
) -> None:
    got = propose(record, rules, PROGRAMS, zone=LONDON, now=now)
    program = PROGRAMS[got.program]
    assert got.reason.startswith(f"{program.title}, ")
    assert len(got.reason) > len(program.title) + 8  # the cap and a why after it
    assert math.isfinite(got.cap_s)
    assert program.cap_s_min <= got.cap_s <= program.cap_s_max
    # The daemon's rule, asked the way it asks (controller/first_session.py): a user whose
    # first session does not count is proposed the first-session program, within its limit.
    minimum = {n: p.cap_s_min for n, p in PROGRAMS.items() if p.first_session}
    others = {n for n, p in PROGRAMS.items() if not p.first_session}
    may = rules.first_session.clinician_may_confirm
    had = any(
        counts(s.program, s.end_reason, s.belt_moving_s, first_session_minimum=minimum,
               other_programs=others, confirmed=may and s.id in record.confirmed)
        for s in record.sessions
    )  # fmt: skip
    assert got.first_session_counted is had
    if not had:
        assert program.first_session
        assert got.cap_s <= HARD_CAP_FIRST_SESSION_S


def _proposed_before(record: UserRecord, rules: ProgressionRules, last: SessionRow) -> Any:
    """What the rules proposed for ``last`` when it began: from the record before it."""
    before = UserRecord(
        "p-1",
        [s for s in record.sessions if s.id < last.id],
        outcomes=record.outcomes,
        confirmed=record.confirmed,
    )
    return propose(before, rules, PROGRAMS, zone=LONDON, now=last.started_at)


def _rules_gave_last(record: UserRecord, rules: ProgressionRules) -> tuple[Any, SessionRow] | None:
    """plan._rules_gave for the record's last session, as propose() asks it (None where it
    would not: no first session counts, or no last session)."""
    ask = _Asker(record, rules, PROGRAMS, LONDON)
    first, last = ask.first(), _last_session(record.sessions)
    if first is None or last is None:
        return None
    return _rules_gave(ask, last, first), last


def _rank(proposal: Any, rules: ProgressionRules) -> tuple[int, float]:
    """How much a proposal asks of a user: its program's phase (a first session before any),
    then its cap."""
    order = [phase.program for phase in rules.phase]
    if PROGRAMS[proposal.program].first_session:
        return -1, proposal.cap_s
    return (order.index(proposal.program) if proposal.program in order else len(order)), (
        proposal.cap_s
    )


@settings(max_examples=400, deadline=None)
@given(record=records(), rules=RULESETS)
def test_a_hold_never_asks_more_than_the_rules_gave_the_session_that_holds(
    record: UserRecord, rules: ProgressionRules
) -> None:
    """Whatever was started by hand and however many holds came one after another: a held
    proposal is no more (program, then cap) than the proposal the rules made before the
    session that holds."""
    last = _last_session(record.sessions)
    if last is None:
        return
    got = propose(record, rules, PROGRAMS, zone=LONDON, now=last.started_at + DAY)
    if not got.held:
        return
    gave = _proposed_before(record, rules, last)
    assert _rank(got, rules) <= _rank(gave, rules), (got.reason, gave.reason)


@settings(max_examples=2000, deadline=None)
@given(record=records(), rules=RULESETS)
def test_a_hold_never_asks_more_than_the_same_record_with_no_rule_that_holds(
    record: UserRecord, rules: ProgressionRules
) -> None:
    """A hold holds progression back and never moves a user on: whatever the record, the
    proposal is no more (program, then cap) than under the same rules with nothing that
    holds (no pain rise large enough, emergency stops not holding)."""
    last = _last_session(record.sessions)
    now = (last.started_at if last is not None else T0) + DAY
    got = propose(record, rules, PROGRAMS, zone=LONDON, now=now)
    unheld_rules = rules.model_copy(
        update={"hold": rules.hold.model_copy(update={"pain_rise": 10**9, "emergency_stop": False})}
    )
    free = propose(record, unheld_rules, PROGRAMS, zone=LONDON, now=now)
    assert not free.held
    assert _rank(got, rules) <= _rank(free, rules), (got.reason, free.reason)


@settings(max_examples=400, deadline=None)
@given(record=records(), rules=RULESETS)
def test_after_a_session_cut_short_the_program_s_cap_is_no_more_than_the_rules_gave_it(
    record: UserRecord, rules: ProgressionRules
) -> None:
    """A session that did not run to its cap (stopped early, a hold or not): the next
    proposal of the same program asks no longer a cap than the rules gave that session."""
    last = _last_session(record.sessions)
    if last is None or last.end_reason in ("cap", "completed"):
        return
    got = propose(record, rules, PROGRAMS, zone=LONDON, now=last.started_at + DAY)
    gave = _proposed_before(record, rules, last)
    own = rules.user.get("p-1")
    if got.program == gave.program == last.program and (own is None or own.cap_s is None):
        assert got.cap_s <= gave.cap_s, (got.reason, gave.reason)


@settings(max_examples=400, deadline=None)
@given(record=records(), rules=RULESETS)
def test_what_the_rules_gave_a_session_is_what_they_proposed_before_it(
    record: UserRecord, rules: ProgressionRules
) -> None:
    """The bound's walk back through the sessions that held or were cut short, without
    recursion, comes to the proposal the rules made before the last session: the one named
    in the reason ("as the rules gave session 4")."""
    got = _rules_gave_last(record, rules)
    if got is None:
        return
    gave, last = got
    before = _proposed_before(record, rules, last)
    assert (gave.program, gave.cap_s) == (before.program, before.cap_s), (
        gave.reason,
        before.reason,
    )


@settings(max_examples=400, deadline=None)
@given(record=records(), rules=RULESETS)
def test_after_a_session_cut_short_nothing_asks_more_than_the_rules_gave_it(
    record: UserRecord, rules: ProgressionRules
) -> None:
    """A session that did not run to its cap: the next proposal is no more than the rules gave
    it, program first, then cap, whatever its program (a hold on an earlier phase's program
    is not lost to the phase's). Only a first session that counts moves the user on."""
    last = _last_session(record.sessions)
    own = rules.user.get("p-1")
    if last is None or last.end_reason in ("cap", "completed") or own is not None:
        return
    got = propose(record, rules, PROGRAMS, zone=LONDON, now=last.started_at + DAY)
    gave = _proposed_before(record, rules, last)
    if _rank(got, rules) > _rank(gave, rules):
        # Only the user's own first session, counted, moves them on past it.
        first = _Asker(record, rules, PROGRAMS, LONDON).first()
        assert first is not None, (got.reason, gave.reason)
        assert first.id == last.id, (got.reason, gave.reason)
        assert ": first session " in got.reason, (got.reason, gave.reason)


@settings(max_examples=60, deadline=None)
@given(record=records(), may_confirm=st.booleans())
def test_the_journal_s_answer_and_the_proposal_agree_on_the_first_session(
    record: UserRecord, may_confirm: bool
) -> None:
    """The daemon asks Journal.has_history at a start; the proposal reads the same record:
    written to a journal, any history gets the same answer from both."""
    journal = Journal.in_memory()
    for s in record.sessions:
        started: dict[str, JsonScalar] = {
            "session_id": str(s.id), "user": s.user, "program": s.program,
            "cap_s": s.cap_s if math.isfinite(s.cap_s) else 180.0,  # a session's cap is a number
        }  # fmt: skip
        journal.record(Event(EventType.SESSION_STARTED, 0.0, started), s.started_at)
        if s.end_reason is not None:
            ended: dict[str, JsonScalar] = {
                "session_id": str(s.id), "reason": s.end_reason, "belt_moving_s": s.belt_moving_s,
            }  # fmt: skip
            journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), s.started_at + 100)
    for n in record.confirmed:
        confirmed: dict[str, JsonScalar] = {"session_id": str(n), "user": "p-1"}
        journal.record(Event(EventType.FIRST_SESSION_CONFIRMED, 0.0, confirmed), T0)
    rules = RULES.model_copy(
        update={
            "first_session": RULES.first_session.model_copy(
                update={"clinician_may_confirm": may_confirm}
            )
        }
    )
    minimum = {n: p.cap_s_min for n, p in PROGRAMS.items() if p.first_session}
    others = {n for n, p in PROGRAMS.items() if not p.first_session}
    read = journal.user_record("p-1")
    got = propose(read, rules, PROGRAMS, zone=LONDON, now=T0)
    assert got.first_session_counted is journal.has_history(
        "p-1", minimum, other_programs=others, confirmations=may_confirm
    )
    journal.close()
