"""When a session counts as a treadmill session had: the first-session rule's one definition.

The safety core refuses every program but a first-session one to a user with no treadmill
session had (SR-7); the journal answers whether there is one (``Journal.has_history``) and the
plan proposes the next session (controller/plan.py). Both ask :func:`counts`, so the proposal
and the core never disagree about where a user stands.

Programs are data (docs/plan.md): a clinic may rename or remove one, and the journal keeps its
sessions under the name they ran with. A session whose program is no longer among the clinic's
programs is judged fail-closed, as a first session against the largest current shortest cap:
a first session stopped after a few seconds stays one that does not count, whatever its
program is called now.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

# Sessions that count as a treadmill session had: the belt ran and the session ended as
# planned or by the clinician, not in a stop of any kind.
HISTORY_REASONS = ("cap", "completed", "operator_stop")
# Ended as the program planned: the belt ran to the session's cap (a session's cap is never
# below its program's shortest) or the program's end. A session the clinician stopped counts
# as a first session only with the shortest cap's belt time.
PLANNED_ENDS = ("cap", "completed")


def counts(
    program: str,
    end_reason: str | None,
    belt_moving_s: float | None,
    *,
    first_session_minimum: Mapping[str, float],
    other_programs: Collection[str] = (),
    confirmed: bool = False,
) -> bool:
    """Whether a session counts as a treadmill session had.

    ``first_session_minimum``: the first-session programs, with their shortest cap
    (``cap_s_min``): a session of one counts when it ran to its cap or its end, or for at
    least that long, or when a clinician confirmed it (``confirmed``: the clinic's rules let
    them, and one did). A session of any other program counts when it ended as planned or by
    the clinician with the belt moving. A session that ended in a stop of any kind never
    counts on its own; only a clinician's confirmation makes it count.

    ``other_programs``: the clinic's programs that are not first-session ones. A program in
    neither is no longer known (renamed or removed since): its session counts only with the
    largest shortest cap of ``first_session_minimum`` in belt time, however it ended, or with
    a clinician's confirmation (given, when it was, to a first-session program's session)."""
    known = program in first_session_minimum or program in other_programs
    if confirmed and (program in first_session_minimum or not known):
        return True
    belt = belt_moving_s if belt_moving_s is not None and belt_moving_s == belt_moving_s else 0.0
    if end_reason not in HISTORY_REASONS or not belt > 0.0:
        return False
    if not known:
        return belt >= max(first_session_minimum.values(), default=0.0)
    if end_reason in PLANNED_ENDS:
        return True
    return belt >= first_session_minimum.get(program, 0.0)
