"""The stop-quality watch: does every stop still stop as well as when it was commissioned?

Klipper's ``verify_heater`` checks that a heater really heats; this checks that a stop really
stops. Pure logic (no clock, no I/O): the safety core measures each stop (from the decision
that commanded 0 to the first drive status showing standstill) and hands the measurement here.

The comparison. A stop is *slow* when its mean deceleration (the belt's speed at the trigger
over the time to standstill) is below its kind's baseline by more than the margin:
``baseline / measured > 1 + margin``. That is also its time to standstill compared with the
baseline's at the same speed (the baseline's mean deceleration times the stop's own trigger
speed): a stop from 1.2 mph takes longer than one from 0.8 mph with the same brake, so a raw
comparison of times would call a good brake slow after a faster walk. One test, read both ways.

Fail closed. A measurement whose numbers are not finite, or whose time is not positive, is
never a good stop: it counts as a slow one (the belt could not be shown to stop as it should).
A stop from below :data:`MIN_MEASURED_MPH` is not judged at all: at a crawl the drive's fixed
latency dominates and the mean deceleration says nothing about the brake. Neither is a stop
that was interrupted (the drive stopped answering, reported a fault, or the stop itself was a
drive fault or a feedback mismatch: the drive was not braking as commanded), nor one of a kind
with no baseline: those are *not measured*, they neither count as slow nor end a run of slow
stops.

Two in a row. Slow stops are counted per kind (emergency and controlled brake differently and
have their own baselines): the first slow stop of a kind raises a maintenance warning, the
second in a row of that kind latches a ``drive_fault``. "In a row" means consecutive *judged*
stops of the same kind: a good stop of that kind ends the run; a stop of the other kind and a
stop not measured do not. New baselines (commissioning again, after the brake was serviced)
start every count afresh.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from treadguard.safety.stop_baseline import StopBaseline, StopKind

DEFAULT_MARGIN = 0.30
# Below this speed at the trigger a stop is not judged (the latency of the drive and of its
# status dominate the mean deceleration). Below the session band's floor (0.8 mph).
MIN_MEASURED_MPH = 0.5
# No proof stop is made from faster than a treadmill belt runs (its drives stop at 12 mph).
MAX_BASELINE_MPH = 12.0
SLOW_IN_A_ROW_TO_FAULT = 2


class Verdict(StrEnum):
    GOOD = "good"
    SLOW = "slow"
    # Not a measurement of braking: no verdict, the run of slow stops goes on unchanged.
    NO_BASELINE = "no_baseline"
    BELOW_MIN_SPEED = "below_min_speed"
    # Decided by the one who measures (the safety core): the stop ended without a standstill
    # status to time it by, or the drive was not braking as commanded.
    INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class StopMeasurement:
    kind: StopKind
    speed_at_trigger_mph: float
    # From the trigger to the first status showing standstill.
    standstill_s: float

    @property
    def deceleration_mph_per_s(self) -> float:
        """Mean deceleration; NaN when it cannot be computed (never a good number)."""
        v, t = self.speed_at_trigger_mph, self.standstill_s
        if not (math.isfinite(v) and math.isfinite(t) and t > 0.0):
            return math.nan
        return v / t

    def as_baseline(self) -> StopBaseline:
        """This stop as the yardstick of its kind: for commissioning, which then measures its
        proof stops exactly as every later stop is measured (the fields of a ``stop_checked``
        event). ValueError if it cannot be one (not finite, not > 0)."""
        baseline = StopBaseline(self.kind, self.standstill_s, self.deceleration_mph_per_s)
        problem = baseline_problem(self.kind, baseline)
        if problem is not None:
            raise ValueError(problem)
        return baseline


@dataclass(frozen=True, slots=True)
class Judgement:
    verdict: Verdict
    measurement: StopMeasurement
    baseline: StopBaseline | None
    # The baseline's time to standstill at this stop's trigger speed (NaN if none).
    expected_standstill_s: float
    # How many judged stops of this kind in a row were slow, this one included.
    slow_in_a_row: int
    warn: bool
    fault: bool


def baseline_problem(kind: StopKind, baseline: StopBaseline) -> str | None:
    """Why this baseline cannot be a yardstick, in words; None if it can."""
    if baseline.kind is not kind:
        return f"the {kind.value} baseline is marked {baseline.kind.value}"
    for name in ("standstill_s", "deceleration_mph_per_s"):
        value = getattr(baseline, name)
        if not (math.isfinite(value) and value > 0.0):
            return f"the {kind.value} baseline's {name} must be finite and > 0, not {value!r}"
    # Time and deceleration together say from what speed the proof stop was made. A stop
    # from below MIN_MEASURED_MPH is never judged, so it cannot be a yardstick either; one
    # from above any belt's speed is a typing slip (against 1e-6 mph/s, a brake that has
    # lost 90 % of its deceleration would be a good one).
    speed = baseline.standstill_s * baseline.deceleration_mph_per_s
    if not (MIN_MEASURED_MPH <= speed <= MAX_BASELINE_MPH):
        return (
            f"the {kind.value} baseline ({baseline.standstill_s!r} s at"
            f" {baseline.deceleration_mph_per_s!r} mph/s) is a stop from {speed:.3g} mph:"
            f" no proof stop is made from outside {MIN_MEASURED_MPH}-{MAX_BASELINE_MPH:g} mph"
        )
    return None


def margin_problem(margin: float) -> str | None:
    if not (math.isfinite(margin) and margin > 0.0):
        return f"the margin must be finite and > 0, not {margin!r}"
    return None


def yardstick(baseline: StopBaseline, ramp_mph_per_s: float | None) -> StopBaseline:
    """The baseline a stop is judged against. A controlled stop follows the commanded ramp
    down, however good the brake: under a ramp gentler than the baseline's deceleration (a
    clinic that made ``safety.decel_mph_s`` stricter after commissioning), the ramp is what a
    brake as new achieves, and a stop the ramp made slow is no worn brake."""
    ramp = ramp_mph_per_s
    if (
        baseline.kind is not StopKind.CONTROLLED
        or ramp is None
        or not (math.isfinite(ramp) and ramp > 0.0)
        or ramp >= baseline.deceleration_mph_per_s
    ):
        return baseline
    speed = baseline.standstill_s * baseline.deceleration_mph_per_s
    return StopBaseline(baseline.kind, speed / ramp, ramp)


def expected_standstill_s(baseline: StopBaseline, speed_mph: float) -> float:
    """The time the commissioned brake would take to stop the belt from ``speed_mph``."""
    return speed_mph / baseline.deceleration_mph_per_s


def slow_after_s(baseline: StopBaseline, speed_mph: float, margin: float) -> float:
    """A stop from ``speed_mph`` still not at standstill this long after its trigger is slow,
    whatever comes next."""
    return expected_standstill_s(baseline, speed_mph) * (1.0 + margin)


def is_slow(baseline: StopBaseline, m: StopMeasurement, margin: float) -> bool:
    """Slow, or not a number: fail closed. Written so that any NaN lands on "slow"."""
    decel = m.deceleration_mph_per_s
    return not (decel * (1.0 + margin) >= baseline.deceleration_mph_per_s)


class StopWatch:
    """The baselines, the margin and the runs of slow stops per kind."""

    def __init__(self, margin: float = DEFAULT_MARGIN) -> None:
        problem = margin_problem(margin)
        if problem is not None:
            raise ValueError(problem)
        self.margin = margin
        self.baselines: dict[StopKind, StopBaseline] = {}
        self.slow_in_a_row: dict[StopKind, int] = {kind: 0 for kind in StopKind}

    def set_baselines(self, baselines: Mapping[StopKind, StopBaseline]) -> None:
        """The commissioned yardsticks (all at once: a kind left out has none). Every count of
        slow stops starts again. A baseline that cannot be one is refused (ValueError) and
        nothing changes."""
        checked: dict[StopKind, StopBaseline] = {}
        for kind, baseline in baselines.items():
            kind = StopKind(kind)
            problem = baseline_problem(kind, baseline)
            if problem is not None:
                raise ValueError(problem)
            checked[kind] = baseline
        self.baselines = checked
        self.slow_in_a_row = {kind: 0 for kind in StopKind}

    def carry(self, slow_in_a_row: Mapping[StopKind, int]) -> None:
        """Runs of slow stops judged before (by this treadmill's watch before a restart,
        against the same baselines) go on from where they were. A count that is not a whole
        number of at least one is none."""
        for kind, count in slow_in_a_row.items():
            if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                self.slow_in_a_row[StopKind(kind)] = count

    def baseline(self, kind: StopKind, ramp_mph_per_s: float | None = None) -> StopBaseline | None:
        """The yardstick for a stop of this kind (see :func:`yardstick`); None if none."""
        baseline = self.baselines.get(kind)
        return None if baseline is None else yardstick(baseline, ramp_mph_per_s)

    def judge(
        self,
        m: StopMeasurement,
        *,
        ramp_mph_per_s: float | None = None,
        standstill: bool = True,
    ) -> Judgement:
        """Judge one measured stop and count it. ``ramp_mph_per_s``: the controlled ramp in
        force (see :func:`yardstick`). ``standstill`` False: judged before the belt stood still
        (still moving when the stop was overdue, or the drive faulted during it), so its
        standstill comes after the time measured: slow, fail closed, also where that time
        alone lies within the margin by the core's time tolerance."""
        baseline = self.baseline(m.kind, ramp_mph_per_s)
        kind = m.kind
        if baseline is None:
            return self._unjudged(Verdict.NO_BASELINE, m, None)
        v = m.speed_at_trigger_mph
        if math.isfinite(v) and v < MIN_MEASURED_MPH:
            return self._unjudged(Verdict.BELOW_MIN_SPEED, m, baseline)
        expected = expected_standstill_s(baseline, v) if math.isfinite(v) else math.nan
        if not standstill or is_slow(baseline, m, self.margin):
            self.slow_in_a_row[kind] += 1
            count = self.slow_in_a_row[kind]
            return Judgement(
                Verdict.SLOW,
                m,
                baseline,
                expected,
                count,
                warn=True,
                fault=count >= SLOW_IN_A_ROW_TO_FAULT,
            )
        self.slow_in_a_row[kind] = 0
        return Judgement(Verdict.GOOD, m, baseline, expected, 0, warn=False, fault=False)

    def _unjudged(
        self, verdict: Verdict, m: StopMeasurement, baseline: StopBaseline | None
    ) -> Judgement:
        return Judgement(
            verdict, m, baseline, math.nan, self.slow_in_a_row[m.kind], warn=False, fault=False
        )
