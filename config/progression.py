"""The clinic's progression rules, as data (docs/plan.md): the phases of the protocol a user
goes through on the treadmill, what holds progression back, and a user's own settings.

A TOML file the clinic edits (``[programs] rules``; the shipped defaults are
``config/progression.toml``), validated here like a program: a key the rules do not have, or a
value out of its range, is refused with the field and the file named. ``config.loading``
checks the programs it names against the programs on disk.

The rules only shape the proposal for a user's next session (controller/plan.py), which the
clinician reads and decides on. The one rule the daemon enforces is the first-session rule
(SR-7), and it reads from here only whether a clinician may confirm a first session.
"""

from __future__ import annotations

from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from treadguard.safety.limits import HARD_CAP_S

# A program's name, as in its file (safety/programs.py) and a phase's.
Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")]
# Sessions a week: [fewest, most], 1 to 7.
SessionsAWeek = Annotated[
    tuple[Annotated[int, Field(ge=1, le=7)], Annotated[int, Field(ge=1, le=7)]],
    Field(description="[fewest, most] sessions a week"),
]
UserCode = Annotated[str, Field(min_length=1, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _ordered(week: tuple[int, int], where: str) -> None:
    if week[0] > week[1]:
        raise ValueError(
            f"{where}sessions_a_week is [fewest, most]: {week[0]} is more than {week[1]}"
        )


class FirstSessionRules(_Strict):
    """A user's first treadmill session: the program, how often, and who may say it counts."""

    # A first-session program (its file says first_session = true).
    program: Name = "first_session"
    sessions_a_week: SessionsAWeek = (3, 4)
    # A first session counts once its belt time reached the program's shortest cap (cap_s_min)
    # or it ran to its cap. True: a clinician may also confirm one that did not
    # (confirm_first_session); the safety core then lets the user start the later programs.
    clinician_may_confirm: bool = True

    @model_validator(mode="after")
    def _week(self) -> Self:
        _ordered(self.sessions_a_week, "")
        return self


class HoldRules(_Strict):
    """What holds progression back: the next session is proposed on the same program with the
    same cap as the last one, and the proposal says why."""

    # Pain after the last session at least this many points above pain before it (0-10 scale).
    pain_rise: int = Field(2, ge=1, le=10)
    # The last session ended in an emergency stop.
    emergency_stop: bool = True


class Phase(_Strict):
    """A phase of the protocol after the first session: its program, from which week on the
    treadmill (week 1: the week of the first session that counts), how often, and how the cap
    grows."""

    name: Name
    title: str = Field(min_length=1, max_length=80)
    program: Name
    from_week: int = Field(ge=1, le=104)
    sessions_a_week: SessionsAWeek
    # A session that ran to its cap, with nothing holding progression back, raises the next
    # session's cap by this much (up to the program's cap_s_max); 0: the program's default cap
    # throughout.
    cap_step_s: float = Field(60.0, ge=0.0, le=180.0)

    @model_validator(mode="after")
    def _week(self) -> Self:
        _ordered(self.sessions_a_week, "")
        return self


def _default_phases() -> list[Phase]:
    # The protocol (issue 15): the treadmill from week 3, reverse walking 3-4 times a week;
    # from week 6 (the fourth week on the treadmill) intervals, 2-3 times a week.
    return [
        Phase(
            name="reverse_walking",
            title="Reverse walking",
            program="reverse_walking",
            from_week=1,
            sessions_a_week=(3, 4),
        ),
        Phase(
            name="intervals",
            title="Intervals",
            program="intervals",
            from_week=4,
            sessions_a_week=(2, 3),
        ),
    ]


class UserPlan(_Strict):
    """What the clinic set for one user (by their code, never a name): a phase to keep them in
    (the first session still comes first) and a cap of their own, both within the programs'
    limits. Without one, the rules decide."""

    phase: Name | None = None
    cap_s: float | None = Field(None, gt=0.0, le=HARD_CAP_S)
    note: str | None = Field(None, min_length=1, max_length=200)


class ProgressionRules(_Strict):
    first_session: FirstSessionRules = FirstSessionRules()
    hold: HoldRules = HoldRules()
    # After the first session, in order of from_week; the first from week 1.
    phase: list[Phase] = Field(default_factory=_default_phases, min_length=1, max_length=12)
    user: dict[UserCode, UserPlan] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _phases_in_order(self) -> Self:
        names = [p.name for p in self.phase]
        if len(set(names)) != len(names):
            raise ValueError(f"phase names must differ: {', '.join(names)}")
        if self.phase[0].from_week != 1:
            raise ValueError(
                f"phase: the first phase ({self.phase[0].name}) begins in week 1 (the week of "
                f"the first session), not week {self.phase[0].from_week}"
            )
        weeks = [p.from_week for p in self.phase]
        if weeks != sorted(set(weeks)):
            raise ValueError(f"phase: from_week must rise from phase to phase: {weeks}")
        for code, plan in self.user.items():
            if plan.phase is not None and plan.phase not in names:
                raise ValueError(
                    f"user.{code}.phase: no phase named {plan.phase!r} (known: {', '.join(names)})"
                )
        return self

    def phase_named(self, name: str) -> Phase | None:
        return next((p for p in self.phase if p.name == name), None)
