"""Programs of the reverse-walking protocol, as data.

A program is a TOML file under ``config/programs/``; ``config.loading`` reads the files (the
safety core does no I/O) and validates each against :class:`Program`, which holds the hard limits
of the safety requirements (docs/requirements.md): a program that breaks one is refused with the
field that breaks it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from treadguard.safety.limits import (
    HARD_CAP_FIRST_SESSION_S,
    HARD_CAP_S,
    HARD_INTERVAL_S,
    HARD_INTERVALS,
    HARD_MAX_MPH,
    HARD_MIN_MPH,
    SHORTEST_CAP_FIRST_SESSION_S,
    SafetyLimits,
)


class ProgramKind(StrEnum):
    CONTINUOUS = "continuous"
    INTERVALS = "intervals"


class Program(BaseModel):
    """One program. Times are belt-moving seconds, speeds mph."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$")
    title: str = Field(min_length=1, max_length=80)
    kind: ProgramKind = ProgramKind.CONTINUOUS
    # A program meant for a user's first treadmill session has the stricter cap.
    first_session: bool = False
    min_mph: float = Field(HARD_MIN_MPH, ge=HARD_MIN_MPH, le=HARD_MAX_MPH)
    max_mph: float = Field(HARD_MAX_MPH, ge=HARD_MIN_MPH, le=HARD_MAX_MPH)
    start_mph: float = Field(HARD_MIN_MPH, ge=HARD_MIN_MPH, le=HARD_MAX_MPH)
    # Automatic progression: +step_mph every step_every_s of belt-moving time while the user
    # holds on with both hands. 0 turns it off.
    step_mph: float = Field(0.0, ge=0.0, le=0.2)
    step_every_s: float = Field(0.0, ge=0.0)
    cap_s_default: float = Field(gt=0.0)
    cap_s_min: float = Field(gt=0.0)
    cap_s_max: float = Field(gt=0.0)
    # Intervals only: belt-moving seconds per interval and standstill seconds between them.
    interval_s: float = Field(HARD_INTERVAL_S, gt=0.0, le=HARD_INTERVAL_S)
    rest_s: float = Field(60.0, ge=10.0, le=600.0)

    @model_validator(mode="after")
    def _within_hard_limits(self) -> Self:
        if not self.min_mph <= self.start_mph <= self.max_mph:
            raise ValueError(
                f"start_mph {self.start_mph} is outside the band {self.min_mph}-{self.max_mph}"
            )
        if not self.cap_s_min <= self.cap_s_default <= self.cap_s_max:
            raise ValueError(
                f"cap_s_default {self.cap_s_default} is outside cap_s_min-cap_s_max "
                f"({self.cap_s_min}-{self.cap_s_max})"
            )
        if (self.step_mph > 0) != (self.step_every_s > 0):
            raise ValueError("step_mph and step_every_s must both be 0 or both be positive")
        if self.kind is ProgramKind.INTERVALS:
            hard = HARD_INTERVALS * self.interval_s
            if self.cap_s_max > hard:
                raise ValueError(
                    f"cap_s_max {self.cap_s_max} allows more than {HARD_INTERVALS} intervals "
                    f"of {self.interval_s} s (hard limit {hard} s)"
                )
        # SR-7: the first-session limit holds whatever the kind, intervals included.
        hard = HARD_CAP_FIRST_SESSION_S if self.first_session else HARD_CAP_S
        if (self.first_session or self.kind is not ProgramKind.INTERVALS) and self.cap_s_max > hard:
            kind = "a first-session program" if self.first_session else "a program"
            raise ValueError(
                f"cap_s_max {self.cap_s_max} exceeds the hard limit of {hard} s for {kind}"
            )
        # SR-7: a first session's cap is 3-5 min; one that ran to a shorter cap would count as
        # the first session had.
        if self.first_session and self.cap_s_min < SHORTEST_CAP_FIRST_SESSION_S:
            raise ValueError(
                f"cap_s_min {self.cap_s_min} is below {SHORTEST_CAP_FIRST_SESSION_S:g} s, the "
                "shortest cap a first-session program may have (its cap is 3-5 min)"
            )
        return self

    def band_within(self, limits: SafetyLimits) -> tuple[float, float]:
        """The speeds this program may run at under ``limits``: its own band inside the
        daemon's safety band (config/loading.py refuses a program whose band misses it)."""
        return max(limits.min_mph, self.min_mph), min(limits.max_mph, self.max_mph)
