"""Hard limits of the reverse-walking protocol and the configurable safety settings.

The hard limits are those of the safety requirements (docs/requirements.md). Configuration may
make a setting stricter, never looser: every bound below is enforced by pydantic when the
settings are loaded, so an unsafe file is refused with the name of the field instead of being
clamped.
"""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

# SR-1: the band the belt may run in once it has ramped up from standstill.
HARD_MIN_MPH = 0.8
HARD_MAX_MPH = 1.2
# SR-2: the fastest the commanded speed may change outside an emergency stop.
HARD_ACCEL_MPH_S = 0.2
HARD_DECEL_MPH_S = 0.4
# SR-7: no program may let the belt move longer than this in one session.
HARD_CAP_FIRST_SESSION_S = 5 * 60.0
# SR-7: a first session's cap is settable from 3 minutes up: a session that ran to its cap
# counts as the first session had (controller/first_session.py), so a shorter cap would let
# a few seconds on the belt open the later programs.
SHORTEST_CAP_FIRST_SESSION_S = 3 * 60.0
HARD_CAP_S = 8 * 60.0
# Intervals: at most ten one-minute intervals.
HARD_INTERVALS = 10
HARD_INTERVAL_S = 60.0
# Below this the belt counts as standing still (feedback noise of a real drive).
STANDSTILL_MPH = 0.05


class SafetyLimits(BaseModel):
    """The safety settings of one treadmill. Defaults are the requirements' defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_mph: float = Field(HARD_MIN_MPH, ge=HARD_MIN_MPH, le=HARD_MAX_MPH)
    max_mph: float = Field(HARD_MAX_MPH, ge=HARD_MIN_MPH, le=HARD_MAX_MPH)
    accel_mph_s: float = Field(HARD_ACCEL_MPH_S, gt=0.0, le=HARD_ACCEL_MPH_S)
    decel_mph_s: float = Field(HARD_DECEL_MPH_S, ge=0.1, le=HARD_DECEL_MPH_S)
    countdown_s: float = Field(3.0, ge=3.0, le=10.0)
    grip_debounce_s: float = Field(0.3, ge=0.0, le=0.3)
    sensor_timeout_s: float = Field(0.5, gt=0.0, le=0.5)
    drive_timeout_s: float = Field(0.5, gt=0.0, le=0.5)
    feedback_tolerance_mph: float = Field(0.3, gt=0.0, le=0.3)
    feedback_window_s: float = Field(2.0, gt=0.0, le=2.0)
    heartbeat_grace_s: float = Field(5.0, gt=0.0, le=5.0)
    cap_warning_s: float = Field(30.0, ge=30.0, le=120.0)
    # The controlled stop for the cap starts this much earlier than the ramp alone needs, so
    # that the belt, which follows the command with some lag, is at 0 by the cap (SR-7).
    cap_stop_margin_s: float = Field(1.0, ge=0.5, le=5.0)

    @model_validator(mode="after")
    def _band_is_ordered(self) -> Self:
        if self.min_mph > self.max_mph:
            raise ValueError(f"min_mph {self.min_mph} is above max_mph {self.max_mph}")
        return self
