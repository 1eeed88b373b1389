"""Property tests of the safety core: random worlds drive a SafetyCore, an oracle checks it.

Hypothesis draws a short *script* (world changes, commands, raw inputs, stretches of time); a
simulated world turns it into a stream of inputs: grip, fall and drive readings arrive every
50-100 ms (in some scripts every 100-250 ms, still inside the time-outs), drive feedback follows
the commanded speed, the tablet sends heartbeats, and the script's disturbances (a hand lets
go, a fall, a silent sensor, a silent drive, a belt that does not follow, a silent tablet,
arbitrary readings and commands with out-of-band, negative, NaN and infinite values, unknown
programs and odd caps) are mixed in. Time only goes forward, at most 0.25 s between inputs.

After every input an oracle written here checks SR-1..SR-8, SR-9/SR-10 and SR-12. It works from
the values of docs/requirements.md, from what the core was told and from what it answered
(decisions, replies, events), never from the core's internal flags. Every property test checks
every requirement; each test's scripts are weighted towards the situations of the requirements
in its name.

Besides the real programs of config/programs, the core gets two short test programs (caps of
10-40 s) so that many examples reach a cap within the time budget.

Examples per test: 300, ``CI=true`` 1000, or ``TREADGUARD_HYPOTHESIS_EXAMPLES=N``. Statistics
(how many examples moved the belt, reached a cap, latched, reset):
``pytest tests/test_safety_properties.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import math
import os
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from treadguard.config.loading import load_programs
from treadguard.safety.core import SafetyCore
from treadguard.safety.decisions import Accepted, Decision, EventType, State
from treadguard.safety.inputs import (
    DriveError,
    DriveFailure,
    DriveFeedback,
    EStop,
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    Input,
    Reset,
    SetSpeed,
    StartSession,
    Stop,
    Tick,
)
from treadguard.safety.limits import STANDSTILL_MPH, SafetyLimits
from treadguard.safety.programs import Program, ProgramKind

PROGRAMS_DIR = Path(__file__).resolve().parents[1] / "config" / "programs"
REAL_PROGRAMS: dict[str, Program] = load_programs(PROGRAMS_DIR)
# Real caps are 3-10 minutes of belt time, thousands of inputs each. Two short programs, checked
# by the same Program model, let many more examples reach a cap (and a narrower band, an
# automatic step and several intervals) within the time budget. Every real program is in the
# mix as well, and long examples reach the real caps.
SHORT_PROGRAMS = {
    "short_steps": Program(
        name="short_steps",
        title="Test: short, narrow band, steps",
        min_mph=0.9,
        max_mph=1.1,
        start_mph=0.9,
        step_mph=0.1,
        step_every_s=5,
        cap_s_default=25,
        cap_s_min=15,
        cap_s_max=40,
    ),
    "short_intervals": Program(
        name="short_intervals",
        title="Test: short intervals",
        kind=ProgramKind.INTERVALS,
        start_mph=1.0,
        interval_s=5,
        rest_s=10,
        cap_s_default=15,
        cap_s_min=10,
        cap_s_max=20,
    ),
}
assert not set(SHORT_PROGRAMS) & set(REAL_PROGRAMS)
PROGRAMS: dict[str, Program] = {**REAL_PROGRAMS, **SHORT_PROGRAMS}
LIMITS = SafetyLimits()

# The values of docs/requirements.md (the defaults), not read from the code.
BAND = (0.8, 1.2)  # SR-1
ACCEL_MPH_S, DECEL_MPH_S = 0.2, 0.4  # SR-2
COUNTDOWN_S = 3.0  # SR-3
DEBOUNCE_S = 0.3  # SR-4
SENSOR_TIMEOUT_S = 0.5  # SR-8
FEEDBACK_TOLERANCE_MPH, FEEDBACK_WINDOW_S = 0.3, 2.0  # SR-10
HEARTBEAT_GRACE_S = 5.0  # SR-12
HARD_CAP_FIRST_S, HARD_CAP_S, HARD_CAP_INTERVALS_S = 300.0, 480.0, 600.0  # SR-7 / programs
# docs/requirements.md gives no drive time-out; it is configuration.
DRIVE_TIMEOUT_S = LIMITS.drive_timeout_s

ARMED = frozenset({State.COUNTDOWN, State.RUNNING, State.STOPPING})
LATCHED = frozenset({State.ESTOP, State.FAULT})
SEEN_EVENTS = frozenset(
    {EventType.CAP_WARNING, EventType.INTERVAL_REST, EventType.SPEED_STEP, EventType.GRIP_WARNING}
)
MAX_STEP_MS = 250

EXAMPLES = int(
    os.environ.get("TREADGUARD_HYPOTHESIS_EXAMPLES", 1000 if os.environ.get("CI") else 300)
)
PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- the oracle


class Violation(AssertionError):
    pass


def _fresh(now: float, seen_t: float, timeout: float) -> bool:
    # Lenient at the exact boundary: the spec says "longer than its time-out".
    return now - seen_t <= timeout + 1e-9


def _standstill(mph: float) -> bool:
    return math.isfinite(mph) and abs(mph) <= STANDSTILL_MPH


@dataclass
class _Grip:
    t: float
    held: bool
    released_since: float  # start of the current release (meaningless while held)


@dataclass
class _Session:
    program: Program
    cap_s: float
    started_t: float
    moving_s: float = 0.0
    stop_requested: bool = False


@dataclass
class Oracle:
    """Follows the inputs and the decisions and checks docs/requirements.md after every step."""

    default_program: str
    t: float = 0.0
    speed: float = 0.0
    state: State = State.IDLE
    grip: dict[Hand, _Grip] = field(default_factory=dict)
    fall: tuple[float, bool] | None = None
    drive: tuple[float, float] | None = None
    drive_error_t: float | None = None
    # SR-3/SR-6: whether the newest drive status reports a fault, and when one last did not.
    drive_faulted: bool = False
    drive_ok_t: float | None = None
    # SR-4: both hands lost counts up, a grip counts down, never below 0.
    grip_count: float = 0.0
    last_command_t: float | None = None
    latched: bool = False
    latch_cause: str | None = None
    stale_at_latch: frozenset[str] = frozenset()
    session: _Session | None = None
    countdown_t: float | None = None
    ramp: str = "zero"
    mismatch_since: float | None = None
    steps: int = 0
    # What happened, for hypothesis.event() and the statistics.
    seen: set[str] = field(default_factory=set)
    moving_total_s: float = 0.0

    def fail(self, sr: str, message: str, inp: Input, d: Decision) -> None:
        raise Violation(
            f"{sr} violated at step {self.steps}, t={inp.t:.3f}: {message}\n"
            f"  input: {inp!r}\n  decision: {d!r}"
        )

    # -- what the world has told the core, as the spec reads it

    def _grip_ok(self, hand: Hand, now: float) -> bool:
        g = self.grip.get(hand)
        return g is not None and g.held and _fresh(now, g.t, SENSOR_TIMEOUT_S)

    def _fall_clear(self, now: float) -> bool:
        return (
            self.fall is not None
            and not self.fall[1]
            and _fresh(now, self.fall[0], SENSOR_TIMEOUT_S)
        )

    def _drive_fresh(self, now: float) -> bool:
        return self.drive is not None and _fresh(now, self.drive[0], DRIVE_TIMEOUT_S)

    def _standstill_confirmed(self, now: float) -> bool:
        return self.drive is not None and self._drive_fresh(now) and _standstill(self.drive[1])

    def _lost_since(self, hand: Hand) -> float | None:
        """SR-4/SR-8: since when this hand's grip is lost (released or its sensor silent)."""
        g = self.grip.get(hand)
        if g is None:
            return -math.inf
        if not g.held:
            return g.released_since
        stale_from = g.t + SENSOR_TIMEOUT_S
        return stale_from if self.t >= stale_from - 1e-9 else None

    def _stale_sensors(self, now: float) -> frozenset[str]:
        stale = {
            h.value
            for h in Hand
            if h not in self.grip or not _fresh(now, self.grip[h].t, SENSOR_TIMEOUT_S)
        }
        if self.fall is None or not _fresh(now, self.fall[0], SENSOR_TIMEOUT_S):
            stale.add("fall")
        return frozenset(stale)

    # -- one step

    def observe(self, inp: Input, d: Decision, core: SafetyCore) -> None:
        self.steps += 1
        now = inp.t
        dt = now - self.t
        assert dt >= 0, "the test world only goes forward in time"
        pre_speed, pre_state = self.speed, self.state
        speed, state, events = d.speed_mph, d.state, d.events
        accepted = type(d.reply) is Accepted
        if pre_state in (State.RUNNING, State.STOPPING):
            self._count_grip_loss(self.t, now)
        self.t = now

        kind = type(inp)
        if kind is GripReading:
            hand, held = inp.hand, inp.held  # type: ignore[union-attr]
            old = self.grip.get(hand)
            since = now
            if not held and old is not None and not old.held:
                since = old.released_since
            self.grip[hand] = _Grip(now, held, since)
        elif kind is FallReading:
            self.fall = (now, inp.fallen)  # type: ignore[union-attr]
        elif kind is DriveFeedback:
            self.drive = (now, inp.speed_mph)  # type: ignore[union-attr]
            self.drive_faulted = inp.fault is not None  # type: ignore[union-attr]
            if self.drive_faulted:
                self.drive_error_t = now
            else:
                self.drive_ok_t = now
        elif kind is DriveError:
            self.drive_error_t = now
        elif kind is not Tick:
            self.last_command_t = now

        if not (math.isfinite(speed) and speed >= 0.0):
            self.fail("SR-1", f"commanded speed {speed!r} is not a speed", inp, d)

        # SR-2: rate limit, except the emergency stop.
        if d.emergency_stop:
            if speed != 0.0:
                self.fail("SR-2", "an emergency stop must command 0 at once", inp, d)
        elif speed > pre_speed + ACCEL_MPH_S * dt + 1e-9:
            self.fail("SR-2", f"speed rose {pre_speed} -> {speed} in {dt:.3f} s", inp, d)
        elif speed < pre_speed - DECEL_MPH_S * dt - 1e-9:
            self.fail("SR-2", f"speed fell {pre_speed} -> {speed} in {dt:.3f} s", inp, d)

        # SR-7: belt-moving time of the session (any part of the step with a command above 0).
        s = self.session
        if s is not None:
            if pre_speed > 0.0 or speed > 0.0:
                s.moving_s += dt
                self.moving_total_s += dt
                if s.moving_s > s.cap_s + 1e-6:
                    self.fail("SR-7", f"belt moved {s.moving_s:.3f} s, cap {s.cap_s} s", inp, d)
            # The core's own count must stay under the cap too. It only grows while the belt
            # is commanded to move, so looking near the cap, at each stop and now and then
            # suffices.
            if pre_speed > 0.0 and (
                speed == 0.0 or s.moving_s > s.cap_s - 10.0 or self.steps % 64 == 0
            ):
                view = core.snapshot().session
                if view is not None and view.elapsed_s > view.cap_s + 1e-9:
                    self.fail("SR-7", f"elapsed {view.elapsed_s} above cap {view.cap_s}", inp, d)
                if view is not None and view.cap_s != s.cap_s:
                    self.fail("SR-7", f"cap {view.cap_s}, the command asked {s.cap_s}", inp, d)

        # SR-3: the belt leaves standstill only with every precondition met.
        if pre_speed == 0.0 and speed > 0.0:
            self.seen.add("belt moved")
            unmet = self._start_unmet(now)
            if unmet:
                self.fail("SR-3", "belt started although " + "; ".join(unmet), inp, d)
            self.countdown_t = None

        # SR-5: a fall while armed stops at once.
        if kind is FallReading and inp.fallen and pre_state in ARMED:  # type: ignore[union-attr]
            self.seen.add("fall while armed")
            stops = [e for e in events if e.type in (EventType.ESTOP, EventType.FAULT)]
            if not (speed == 0.0 and d.emergency_stop and state in LATCHED and stops):
                self.fail("SR-5", "a fall did not stop the belt in the same decision", inp, d)
            if state is State.ESTOP and stops[0].fields.get("cause") != "fall":
                self.fail("SR-5", f"estop cause {stops[0].fields} is not the fall", inp, d)

        if any(e.type is EventType.BELT_STARTED for e in events):
            # SR-4 counts loss while the belt moves: a new start (both hands held, SR-3)
            # begins a new count, before this decision is judged by it.
            self.grip_count = 0.0
        if state in ARMED:
            # SR-5/SR-8: never armed with a fall signalled or a silent fall sensor.
            if not self._fall_clear(now):
                self.fail("SR-5/SR-8", "armed with a fall signalled or its sensor silent", inp, d)
            # SR-9: never armed without a drive that answers.
            if not self._drive_fresh(now):
                self.fail("SR-9", "armed without a fresh answer from the drive", inp, d)
            # SR-4/SR-8: both hands lost longer than the debounce while running or stopping.
            if state is not State.COUNTDOWN:
                if self.grip_count > DEBOUNCE_S + 1e-6:
                    self.fail(
                        "SR-4",
                        f"grip-loss count {self.grip_count:.3f} s past the debounce, "
                        f"still {state.value}",
                        inp,
                        d,
                    )
                left, right = self._lost_since(Hand.LEFT), self._lost_since(Hand.RIGHT)
                if left is not None and right is not None:
                    since = max(left, right)
                    if now - since > DEBOUNCE_S + 1e-6:
                        self.fail(
                            "SR-4/SR-8",
                            f"both hands lost since {since:.3f} s, still {state.value}",
                            inp,
                            d,
                        )
            # SR-12: no command from the tablet for longer than the grace: not counting down
            # or running any more (a controlled stop is under way or the session is over).
            if state is not State.STOPPING and (
                self.last_command_t is None or now - self.last_command_t > HEARTBEAT_GRACE_S + 1e-9
            ):
                self.fail("SR-12", "the tablet is silent beyond the grace, session goes on", inp, d)

        # SR-9/SR-10: the drive.
        if kind is DriveError and not (state in LATCHED and speed == 0.0):
            self.fail("SR-9", "a drive error did not latch a fault", inp, d)
        if self.drive_faulted and kind is DriveFeedback and not (state in LATCHED and speed == 0.0):
            self.fail("SR-9", "a drive status reporting a fault did not latch one", inp, d)
        self._check_feedback(inp, d)

        # SR-6: latching stop and reset.
        if self.latched or d.emergency_stop or state in LATCHED or kind is Reset:
            self._check_latch(inp, d, accepted, now)

        # Session bookkeeping from the commands and the answers.
        if accepted and kind is StartSession:
            self._session_started(inp, d, now)  # type: ignore[arg-type]
        if accepted and kind is Stop and self.session is not None:
            self.session.stop_requested = True
        ended = False
        for e in events:
            if e.type is EventType.COUNTDOWN:
                self.countdown_t = now
            elif e.type is EventType.SESSION_ENDED:
                ended = True
                self.seen.add(f"session ended: {e.fields.get('reason')}")
                if self.session is not None and e.fields.get("reason") in ("cap", "completed"):
                    self.seen.add(f"session ran to its end: {self.session.program.name}")
            elif e.type is EventType.BELT_STARTED:
                self.grip_count = 0.0
            elif e.type is EventType.STOPPING:
                self.seen.add(f"stopping: {e.fields.get('reason')}")
            elif e.type in SEEN_EVENTS:
                self.seen.add(e.type.value)
        if ended or d.emergency_stop:
            self.session = None
            self.countdown_t = None

        # SR-1: the envelope.
        if speed != 0.0 or d.target_mph != 0.0 or pre_speed != 0.0:
            self._check_envelope(d, pre_speed, dt, inp)
        else:
            self.ramp = "zero"

        self.speed, self.state = speed, state

    def _count_grip_loss(self, start: float, end: float) -> None:
        """SR-4 as docs/requirements.md words it. A hand is lost from its release, or from when its
        "held" reading went stale (a hair later than the core may see it: lenient)."""

        def lost_from(hand: Hand) -> float:
            g = self.grip.get(hand)
            if g is None or not g.held:
                return -math.inf
            return g.t + SENSOR_TIMEOUT_S + 1e-9

        both = min(max(lost_from(Hand.LEFT), lost_from(Hand.RIGHT), start), end)
        self.grip_count = max(0.0, self.grip_count - (both - start)) + (end - both)

    def _start_unmet(self, now: float) -> list[str]:
        unmet = []
        s = self.session
        if s is None:
            unmet.append("no start_session was accepted for this session")
        else:
            if now - s.started_t < COUNTDOWN_S - 1e-9:
                unmet.append(f"start_session only {now - s.started_t:.3f} s ago")
            if s.stop_requested:
                unmet.append("a stop was accepted since the start")
        if self.countdown_t is None or now - self.countdown_t < COUNTDOWN_S - 1e-9:
            unmet.append("no countdown of at least 3 s was announced")
        for hand in Hand:
            if not self._grip_ok(hand, now):
                unmet.append(f"{hand.value} grip not held and fresh")
        if not self._fall_clear(now):
            unmet.append("the fall reading is not a fresh 'no fall'")
        if not self._standstill_confirmed(now):
            unmet.append(f"no fresh drive feedback at standstill ({self.drive})")
        if self.drive_faulted:
            unmet.append("the drive's newest status reports a fault")
        if self.latched:
            unmet.append("a stop is latched")
        return unmet

    def _check_feedback(self, inp: Input, d: Decision) -> None:
        drive = self.drive
        if drive is None or d.state in LATCHED:
            self.mismatch_since = None
            return
        belt = drive[1]
        if abs(abs(belt) - d.speed_mph) <= FEEDBACK_TOLERANCE_MPH:  # False for NaN and inf
            self.mismatch_since = None
            return
        if self.mismatch_since is None:
            self.mismatch_since = inp.t
        if inp.t - self.mismatch_since > FEEDBACK_WINDOW_S + 1e-6:
            self.fail(
                "SR-10",
                f"belt {belt} vs commanded {d.speed_mph} since "
                f"{self.mismatch_since:.3f} s, no fault",
                inp,
                d,
            )

    def _check_latch(self, inp: Input, d: Decision, accepted: bool, now: float) -> None:
        if (d.emergency_stop or d.state in LATCHED) and not self.latched:
            self.latched = True
            causes = [
                e.fields.get("cause")
                for e in d.events
                if e.type in (EventType.ESTOP, EventType.FAULT)
            ]
            self.latch_cause = str(causes[0]) if causes else None
            self.stale_at_latch = self._stale_sensors(now)
            self.seen.add(f"latched: {self.latch_cause}")
        if isinstance(inp, Reset) and accepted:
            if not self.latched:
                self.fail("SR-6", "a reset was accepted with nothing latched", inp, d)
            unmet = self._reset_unmet(now)
            if unmet:
                self.fail("SR-6", "reset accepted although " + "; ".join(unmet), inp, d)
            if d.state is not State.IDLE or d.speed_mph != 0.0 or d.target_mph != 0.0:
                self.fail("SR-6", "an accepted reset must leave idle at 0", inp, d)
            self.latched = False
            self.latch_cause = None
            self.seen.add("reset accepted")
        elif self.latched and (d.speed_mph != 0.0 or d.target_mph != 0.0 or d.state not in LATCHED):
            self.fail("SR-6", "latched, yet the belt may move or the latch is gone", inp, d)

    def _reset_unmet(self, now: float) -> list[str]:
        unmet = []
        if not self._standstill_confirmed(now):
            unmet.append(f"standstill not confirmed by fresh feedback ({self.drive})")
        cause = self.latch_cause
        if cause == "fall" and not self._fall_clear(now):
            unmet.append("the fall is not cleared")
        if cause == "grip_lost" and not all(self._grip_ok(h, now) for h in Hand):
            unmet.append("the grips are not held again")
        if cause == "sensor_stale":
            still = self.stale_at_latch & self._stale_sensors(now)
            if still:
                unmet.append(f"sensors still silent: {sorted(still)}")
        if cause == "drive_fault" and (
            self.drive is None or self.drive_error_t is None or self.drive[0] <= self.drive_error_t
        ):
            unmet.append("the drive has not answered since its fault")
        if self.drive_faulted:
            unmet.append("the drive's newest status reports a fault")
        if self.drive_error_t is not None and (
            self.drive_ok_t is None or self.drive_ok_t <= self.drive_error_t
        ):
            unmet.append("no status reporting no fault since the drive's fault (SR-6)")
        return unmet

    def _session_started(self, inp: StartSession, d: Decision, now: float) -> None:
        name = inp.program or self.default_program
        program = PROGRAMS.get(name)
        if program is None:
            self.fail("SR-15", f"accepted the unknown program {name!r}", inp, d)
            return
        cap = program.cap_s_default if inp.cap_s is None else inp.cap_s
        hard = (
            HARD_CAP_INTERVALS_S
            if program.kind is ProgramKind.INTERVALS
            else HARD_CAP_FIRST_S
            if program.first_session
            else HARD_CAP_S
        )
        if not (math.isfinite(cap) and program.cap_s_min <= cap <= program.cap_s_max <= hard):
            self.fail("SR-7", f"accepted cap {cap} for {name}", inp, d)
        tgt = inp.target_mph
        if tgt is not None and not (math.isfinite(tgt) and BAND[0] <= tgt <= BAND[1]):
            self.fail("SR-1", f"accepted target {tgt} outside the band", inp, d)
        if not any(
            e.type is EventType.COUNTDOWN and float(e.fields["seconds"] or 0) >= COUNTDOWN_S
            for e in d.events
        ):
            self.fail("SR-3", "an accepted start did not announce a countdown", inp, d)
        self.session = _Session(program=program, cap_s=cap, started_t=now)
        self.seen.add("session started")

    def _check_envelope(self, d: Decision, pre_speed: float, dt: float, inp: Input) -> None:
        speed, tgt = d.speed_mph, d.target_mph
        s = self.session
        if speed > 0.0 and s is None:
            self.fail("SR-1", "the belt is commanded to move outside any session", inp, d)
        if speed > 0.0 and d.state not in (State.RUNNING, State.STOPPING):
            self.fail("SR-1", f"commanded {speed} while {d.state.value}", inp, d)
        lo, hi = BAND
        if s is not None:
            lo, hi = max(lo, s.program.min_mph), min(hi, s.program.max_mph)
        if speed > hi + 1e-9:
            self.fail("SR-1", f"commanded {speed} above the band max {hi}", inp, d)
        if tgt != 0.0 and not (lo - 1e-9 <= tgt <= hi + 1e-9):
            self.fail("SR-1", f"target {tgt} is neither 0 nor inside {lo}-{hi}", inp, d)
        if speed == 0.0:
            self.ramp = "zero"
        elif speed >= lo - 1e-9:
            self.ramp = "band"
        else:  # below the band: only a ramp from 0 up, or down to 0
            # The decision that turns a ramp from 0 into a ramp to 0 (a stop) asks for the
            # speed it had, not the ramp's next step up; from the next decision on it falls.
            turning = False
            if pre_speed == 0.0:
                self.ramp = "up"
            elif self.ramp == "up" and (speed < pre_speed or (tgt == 0.0 and speed == pre_speed)):
                self.ramp = "down"  # a ramp from 0 turned into a ramp to 0 (a stop)
                turning = speed == pre_speed
            elif self.ramp == "band":
                self.ramp = "down"
            if self.ramp == "up" and (speed < pre_speed or (dt > 0 and speed == pre_speed)):
                self.fail("SR-1", f"holding {speed} below the band on the way up", inp, d)
            if self.ramp == "down" and (
                speed > pre_speed or (dt > 0 and speed == pre_speed and not turning)
            ):
                self.fail("SR-1", f"below the band at {speed} and not going to 0", inp, d)
            if self.ramp == "down" and tgt != 0.0:
                self.fail("SR-1", f"below the band going down, but target {tgt}", inp, d)


# --------------------------------------------------------------------------- the world

SOURCES = ("left", "right", "fall", "drive", "tablet")
LATCH_CAUSES = (
    "estop",
    "drive_error",
    "fall",
    "grips",
    "belt_stuck",
    "fall",
    "drive",
    "left",
    "fault_status",
)
HAND_OF = {"left": Hand.LEFT, "right": Hand.RIGHT}


class World:
    """A treadmill, a user and a tablet around the core. Time in integer milliseconds.

    Left alone it is well-behaved: both hands on the rails, no fall, every sensor and the
    drive answering every ``period_ms`` (50-100 ms, or 100-250), the belt following the
    command, the tablet sending a heartbeat every 0.2-2 s, a control tick whenever nothing
    else arrived for ``tick_ms``. Scripts change that.
    """

    def __init__(
        self, default_program: str, seed: int, period_ms: tuple[int, int], tick_ms: int
    ) -> None:
        self.core = SafetyCore(
            LIMITS, PROGRAMS, default_program=default_program, commissioned_until=math.inf
        )
        self.oracle = Oracle(default_program)
        self.rng = random.Random(seed)
        self.period_ms = period_ms
        self.tick_ms = tick_ms
        self.ms = 0
        self.last_input_ms = 0
        self.next_at = {src: self.rng.randrange(0, period_ms[1]) for src in SOURCES}
        self.hold = {Hand.LEFT: True, Hand.RIGHT: True}
        self.fallen = False
        self.silent: set[str] = set()
        self.belt = 0.0
        self.belt_offset = 0.0
        self.belt_stuck: float | None = None
        self.drive_fault: DriveFailure | None = None  # every status reports it while set
        self.commanded = 0.0
        self.inputs = 0

    @property
    def t(self) -> float:
        return self.ms / 1000.0

    def feed(self, inp: Input) -> Decision:
        d = self.core.handle(inp)
        self.oracle.observe(inp, d, self.core)
        self.commanded = d.speed_mph
        self.last_input_ms = self.ms
        self.inputs += 1
        return d

    def _belt_to(self, ms: int) -> None:
        dt = (ms - self.ms) / 1000.0
        if dt <= 0:
            return
        if self.belt_stuck is not None:
            goal = self.belt_stuck
        else:
            goal = self.commanded + self.belt_offset if self.commanded > 0 else 0.0
        if goal > self.belt:
            self.belt = min(goal, self.belt + 1.0 * dt)
        else:
            self.belt = max(goal, self.belt - 3.0 * dt)

    def _at(self, ms: int) -> None:
        self._belt_to(ms)
        self.ms = ms

    def run(self, duration_ms: int) -> None:
        end = self.ms + duration_ms
        while True:
            src = min(self.next_at, key=self.next_at.__getitem__)
            at = self.next_at[src]
            filler = self.last_input_ms + self.tick_ms
            if filler < at:
                if filler > end:
                    break
                self._at(max(filler, self.ms))
                self.feed(Tick(self.t))
                continue
            if at > end:
                break
            self._at(at)
            self._emit(src)
        self._at(end)

    def run_long(self, duration_ms: int) -> None:
        """run(), but a long stretch ends 3 s after no session is left: an idle treadmill
        has nothing more to show and would only cost time."""
        end, idle = self.ms + duration_ms, 0
        while self.ms < end and (duration_ms <= 10000 or idle < 3000):
            chunk = min(1000, end - self.ms)
            self.run(chunk)
            idle = idle + chunk if self.oracle.session is None else 0

    def _emit(self, src: str) -> None:
        lo, hi = self.period_ms
        if src == "tablet":
            self.next_at[src] = self.ms + self.rng.randint(200, 2000)
        else:
            self.next_at[src] = self.ms + self.rng.randint(lo, hi)
        if src in self.silent:
            return
        if src in HAND_OF:
            hand = HAND_OF[src]
            self.feed(GripReading(self.t, hand, self.hold[hand]))
        elif src == "fall":
            self.feed(FallReading(self.t, self.fallen))
        elif src == "drive":
            fault = self.drive_fault
            self.feed(DriveFeedback(self.t, self.belt, fault, "" if fault is None else "injected"))
        else:
            self.feed(Heartbeat(self.t))

    def fix(self) -> None:
        self.hold = {Hand.LEFT: True, Hand.RIGHT: True}
        self.fallen = False
        self.silent.clear()
        self.belt_offset = 0.0
        self.belt_stuck = None
        self.drive_fault = None

    def apply(self, action: tuple[object, ...]) -> None:
        kind = action[0]
        if kind == "run":
            self.run_long(int(action[1]))  # type: ignore[call-overload]
        elif kind == "run_session":  # run until the session is over, at most this long
            end = self.ms + int(action[1])  # type: ignore[call-overload]
            while self.oracle.session is not None and self.ms < end:
                self.run(min(1000, end - self.ms))
        elif kind == "stall":  # nothing at all arrives, only the control loop ticks
            saved = set(self.silent)
            self.silent.update(SOURCES)
            self.run(int(action[1]))  # type: ignore[call-overload]
            self.silent = saved
        elif kind == "session":  # a well-prepared start
            _, program, cap, tgt, settle = action
            self.fix()
            self.run(int(settle))  # type: ignore[call-overload]
            self.feed(StartSession(self.t, "pat", program, cap, tgt))  # type: ignore[arg-type]
        elif kind == "recover":  # everything back to normal, then a reset
            self.fix()
            self.run(int(action[1]))  # type: ignore[call-overload]
            self.feed(Reset(self.t))
        elif kind == "hold":
            self.hold[HAND_OF[str(action[1])]] = bool(action[2])
        elif kind == "fallen":
            self.fallen = bool(action[1])
        elif kind == "silent":
            (self.silent.add if action[2] else self.silent.discard)(str(action[1]))
        elif kind == "belt":
            _, how, value = action
            if how == "offset":
                self.belt_offset = float(value)  # type: ignore[arg-type]
            else:
                self.belt_stuck = None if value is None else float(value)  # type: ignore[arg-type]
        elif kind == "fix":
            self.fix()
        elif kind == "latch_cycle":
            # Something latches (or not, if nothing runs), time passes, maybe an early reset
            # (the cause may persist, the belt may still move), then the world recovers, a
            # reset, and maybe a new start.
            _, cause, during_ms, early_reset, settle_ms, restart = action
            if cause == "estop":
                self.feed(EStop(self.t))
            elif cause == "drive_error":
                self.feed(DriveError(self.t, DriveFailure.FAULT, "injected"))
            elif cause == "fall":
                self.fallen = True
            elif cause == "grips":
                self.hold = {Hand.LEFT: False, Hand.RIGHT: False}
            elif cause == "belt_stuck":
                self.belt_stuck = 0.7
            elif cause == "fault_status":
                self.drive_fault = DriveFailure.FAULT
            else:  # a silent sensor or drive
                self.silent.add(str(cause))
            self.run(int(during_ms))  # type: ignore[call-overload]
            if early_reset:
                self.feed(Reset(self.t))
            self.fix()
            self.run(int(settle_ms))  # type: ignore[call-overload]
            self.feed(Reset(self.t))
            if restart:
                self.feed(StartSession(self.t, "pat"))
                self.run(self.rng.randint(3000, 6000))
        elif kind == "grip_episode":
            # One hand lets go; maybe its sensor then goes silent; maybe the other hand lets go
            # too; then both hands are back on fresh sensors.
            _, first, released_ms, silent_ms, other_ms, after_ms = action
            hand = HAND_OF[str(first)]
            other = Hand.RIGHT if hand is Hand.LEFT else Hand.LEFT
            self.hold[hand] = False
            self.run(int(released_ms))  # type: ignore[call-overload]
            if silent_ms is not None:
                self.silent.add(str(first))
                self.run(int(silent_ms))  # type: ignore[call-overload]
            if other_ms is not None:
                self.hold[other] = False
                self.run(int(other_ms))  # type: ignore[call-overload]
            self.hold = {Hand.LEFT: True, Hand.RIGHT: True}
            self.silent -= {"left", "right"}
            self.run(int(after_ms))  # type: ignore[call-overload]
        elif kind == "input":
            self.feed(make_input(self.t, action[1:]))
        else:  # pragma: no cover
            raise AssertionError(action)


def make_input(t: float, spec: tuple[object, ...]) -> Input:
    kind = spec[0]
    if kind == "start":
        _, user, program, cap, tgt = spec
        return StartSession(t, str(user), program, cap, tgt)  # type: ignore[arg-type]
    if kind == "set_speed":
        return SetSpeed(t, float(spec[1]))  # type: ignore[arg-type]
    if kind == "grip":
        return GripReading(t, HAND_OF[str(spec[1])], bool(spec[2]))
    if kind == "fall":
        return FallReading(t, bool(spec[1]))
    if kind == "feedback":
        fault = None if spec[2] is None else DriveFailure(str(spec[2]))
        return DriveFeedback(t, float(spec[1]), fault, "" if fault is None else "injected")  # type: ignore[arg-type]
    if kind == "drive_error":
        return DriveError(t, DriveFailure(str(spec[1])), "injected")
    simple: dict[object, type[Stop | EStop | Reset | Heartbeat | Tick]] = {
        "stop": Stop,
        "estop": EStop,
        "reset": Reset,
        "heartbeat": Heartbeat,
        "tick": Tick,
    }
    return simple[kind](t)


# --------------------------------------------------------------------------- strategies
#
# Drawing is the slow part of hypothesis, so a script is a handful of 64-bit integers, each
# decoded into one action below (shrinking an integer towards 0 shrinks the action towards the
# first, simplest choices). The decoded script is what hypothesis prints for a failure.

T = TypeVar("T")
NAMES = sorted(PROGRAMS)
U64 = 2**64 - 1
SPEED_TABLE = (
    1.0,
    0.8,
    1.2,
    0.9,
    1.1,
    0.79,
    1.21,
    0.0,
    -0.0,
    -1.0,
    math.nan,
    math.inf,
    -math.inf,
    2.0,
    0.05,
    0.5,
    1e308,
    5e-324,
)
CAP_TABLE = (
    None,
    None,
    None,
    None,
    180.0,
    240.0,
    300.0,
    301.0,
    360.0,
    480.0,
    481.0,
    540.0,
    600.0,
    601.0,
    179.9,
    0.0,
    -1.0,
    math.nan,
    math.inf,
    -math.inf,
)
PROGRAM_TABLE = (None, None, *NAMES, *NAMES, "", "marathon", "First_Session")
USER_TABLE = ("pat", "pat", "pat", " pat ", "", "   ", "x" * 65)


class Bits:
    """Takes small choices off one drawn integer.

    Hypothesis draws mostly small integers; mixing the bits (splitmix64's finaliser, which
    keeps 0 at 0) spreads the choices evenly over their ranges.
    """

    def __init__(self, n: int) -> None:
        z = n & U64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
        self.n = z ^ (z >> 31)

    def take(self, k: int) -> int:
        v = self.n % k
        self.n //= k
        return v

    def pick(self, seq: Sequence[T]) -> T:
        return seq[self.take(len(seq))]

    def between(self, lo: int, hi: int) -> int:
        return lo + self.take(hi - lo + 1)

    def any_double(self) -> float:
        bits = random.Random(self.n).getrandbits(64)
        return float(struct.unpack("<d", bits.to_bytes(8, "little"))[0])

    def speed(self) -> float:
        how = self.take(5)
        if how == 0:
            return self.pick(SPEED_TABLE)
        if how in (1, 2):
            return 0.8 + self.take(4001) / 10000.0  # inside the band
        if how == 3:
            return -0.5 + self.take(250001) / 100000.0
        return self.any_double()

    def cap(self) -> float | None:
        how = self.take(4)
        if how < 2:
            return self.pick(CAP_TABLE)
        if how == 2:
            return float(self.between(0, 1000))
        return self.any_double()


@dataclass(frozen=True)
class Profile:
    """How one test's scripts are weighted."""

    weights: dict[str, int]
    run_ms: tuple[int, int]  # an ordinary stretch of time
    long_run_ms: tuple[int, int]  # a long one, 1 in long_one_in
    long_one_in: int = 10
    first_run_ms: tuple[int, int] = (3500, 7000)  # after the opening start
    # Sensor periods: the well-behaved 50-100 ms, or slower (still inside the time-outs).
    periods: tuple[tuple[int, int], ...] = ((50, 100), (100, 250), (100, 250))
    max_actions: int = 7
    open_with_session: int = 8  # out of 10
    session_programs: tuple[str | None, ...] = (None, *NAMES)
    # The opening run ends early once the session is over (the cap, a stop, a latch).
    first_run_to_end: bool = False
    # 1 in this many scripts opens with a real program run to its end (0: never).
    real_to_end_one_in: int = 0


@dataclass(frozen=True)
class Script:
    default_program: str
    seed: int
    period_ms: tuple[int, int]
    tick_ms: int
    actions: tuple[tuple[object, ...], ...]


def decode_session(b: Bits, programs: tuple[str | None, ...]) -> tuple[object, ...]:
    """A start prepared the way a clinic does it: everything fine, then start_session."""
    name = b.pick(programs)
    cap: float | None = None
    how = b.take(12)
    if how == 0:
        cap = b.cap()  # anything, mostly refused
    elif how < 4 and name is not None:
        program = PROGRAMS[str(name)]
        cap = program.cap_s_min + b.take(1001) / 1000.0 * (program.cap_s_max - program.cap_s_min)
    tgt = None if b.take(2) else b.pick((0.8, 1.0, 1.2))
    return ("session", name, cap, tgt, b.between(300, 1000))


def decode_action(profile: Profile, n: int) -> tuple[object, ...]:
    b = Bits(n)
    kinds = [k for k, w in profile.weights.items() for _ in range(w)]
    kind = str(b.pick(kinds))
    if kind == "run":
        lo, hi = profile.long_run_ms if b.take(profile.long_one_in) == 0 else profile.run_ms
        return ("run", b.between(lo, hi))
    if kind == "stall":
        return ("stall", b.between(0, 1500))
    if kind == "session":
        return decode_session(b, profile.session_programs)
    if kind == "recover":
        return ("recover", b.between(0, 2000))
    if kind == "hold":
        return ("hold", b.pick(("left", "right")), bool(b.take(2)))
    if kind == "fallen":
        return ("fallen", not b.take(2))
    if kind == "silent":
        return ("silent", b.pick(SOURCES), not b.take(2))
    if kind == "belt":
        if b.take(2):
            return ("belt", "offset", b.pick((0.0, 0.1, -0.2, 0.35, 0.6)))
        return ("belt", "stuck", b.pick((None, 0.0, 0.3, 1.0)))
    if kind == "fix":
        return ("fix",)
    if kind == "latch_cycle":
        return (
            "latch_cycle",
            b.pick(LATCH_CAUSES),
            b.between(0, 1500),
            bool(b.take(2)),
            b.between(0, 2000),
            bool(b.take(2)),
        )
    if kind == "grip_episode":
        first = b.pick(("left", "right"))
        return (
            "grip_episode",
            first,
            b.between(0, 1500),
            b.between(0, 800) if b.take(2) else None,
            b.between(0, 800) if b.take(3) else None,
            b.between(0, 1000),
        )
    if kind == "start":
        tgt = None if b.take(2) else b.speed()
        return ("input", "start", b.pick(USER_TABLE), b.pick(PROGRAM_TABLE), b.cap(), tgt)
    if kind == "set_speed":
        return ("input", "set_speed", b.speed())
    if kind == "grip":
        return ("input", "grip", b.pick(("left", "right")), bool(b.take(2)))
    if kind == "fall":
        return ("input", "fall", not b.take(2))
    if kind == "feedback":
        speed = b.speed() if b.take(2) else b.take(21) / 100.0 - 0.1
        fault = b.pick((None, None, None, *(f.value for f in DriveFailure)))
        return ("input", "feedback", speed, fault)
    if kind == "drive_error":
        return ("input", "drive_error", b.pick([f.value for f in DriveFailure]))
    return ("input", kind)  # stop, estop, reset, heartbeat, tick


def decode_script(profile: Profile, header: int, body: list[int]) -> Script:
    b = Bits(header)
    acts: list[tuple[object, ...]] = []
    if profile.real_to_end_one_in and b.take(profile.real_to_end_one_in) == 0:
        acts.append(decode_session(b, tuple(REAL_PROGRAMS)))
        acts.append(("run_session", 1_000_000))
    elif b.take(10) < profile.open_with_session:
        acts.append(decode_session(b, profile.session_programs))
        run = "run_session" if profile.first_run_to_end else "run"
        acts.append((run, b.between(*profile.first_run_ms)))
    acts += [decode_action(profile, n) for n in body]
    return Script(
        default_program=str(b.pick(NAMES)),
        seed=b.take(2**20),
        period_ms=profile.periods[b.take(len(profile.periods))],
        tick_ms=b.between(100, MAX_STEP_MS),
        actions=tuple(acts),
    )


def scripts(profile: Profile) -> st.SearchStrategy[Script]:
    return st.tuples(
        st.integers(0, U64), st.lists(st.integers(0, U64), max_size=profile.max_actions)
    ).map(lambda drawn: decode_script(profile, *drawn))


def play(script: Script) -> Oracle:
    note(f"decoded: {script!r}")
    world = World(script.default_program, script.seed, script.period_ms, script.tick_ms)
    world.run(world.rng.randint(0, 300))
    for action in script.actions:
        world.apply(action)
    oracle = world.oracle
    event(f"belt moved: {'belt moved' in oracle.seen}")
    for what in sorted(oracle.seen - {"belt moved"}):
        event(what)
    return oracle


# Every profile mixes a well-behaved world (runs) with disturbances, commands and raw inputs.
BASE = {
    "run": 8,
    "stall": 1,
    "session": 2,
    "recover": 2,
    "hold": 2,
    "fallen": 1,
    "silent": 1,
    "belt": 1,
    "fix": 1,
    "start": 1,
    "set_speed": 2,
    "stop": 1,
    "estop": 1,
    "reset": 1,
    "heartbeat": 1,
    "grip": 1,
    "fall": 1,
    "feedback": 1,
    "drive_error": 1,
    "tick": 1,
}


def profile(**changes: object) -> Profile:
    weights = {**BASE, **changes.pop("weights", {})}  # type: ignore[dict-item]
    defaults: dict[str, object] = {"run_ms": (0, 2500), "long_run_ms": (2500, 15000)}
    return Profile(weights=weights, **{**defaults, **changes})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the properties


@PROPERTY_SETTINGS
@given(scripts(profile(weights={"set_speed": 6, "start": 2, "stop": 2, "estop": 2, "hold": 3})))
def test_sr1_sr2_speed_envelope_and_rate_limit(script: Script) -> None:
    """SR-1: the command is 0, a ramp to or from 0, or inside the program's band, never above
    it, and an out-of-band request is refused (the target stays 0 or in the band).
    SR-2: the command changes by at most 0.2 mph/s up and 0.4 mph/s down, except that an
    emergency stop drops it to 0."""
    play(script)


@PROPERTY_SETTINGS
@given(
    scripts(
        profile(
            weights={
                "start": 3,
                "session": 4,
                "hold": 4,
                "fallen": 2,
                "silent": 3,
                "belt": 2,
                "stop": 2,
                "grip": 2,
                "fall": 2,
                "feedback": 2,
            },
            run_ms=(0, 3500),
            first_run_ms=(2500, 5000),
            long_one_in=16,
        )
    )
)
def test_sr3_start_preconditions(script: Script) -> None:
    """SR-3: the belt leaves 0 only on an accepted start at least 3 s earlier (countdown
    announced), with both grips held and fresh, no fall, a fresh drive at standstill, nothing
    latched, and no stop since."""
    play(script)


@PROPERTY_SETTINGS
@given(
    scripts(
        profile(
            weights={
                "grip_episode": 12,
                "hold": 4,
                "silent": 4,
                "grip": 3,
                "stall": 2,
                "fix": 3,
                "fallen": 3,
                "fall": 2,
                "estop": 0,
                "drive_error": 0,
                "stop": 0,
                "reset": 0,
                "start": 0,
                "set_speed": 1,
            },
            run_ms=(0, 800),
            long_run_ms=(800, 8000),
            first_run_ms=(3500, 6000),
            max_actions=6,
        )
    )
)
def test_sr4_sr5_sr8_grip_loss_fall_and_silent_sensors(script: Script) -> None:
    """SR-4: both hands lost for longer than 300 ms and the belt no longer runs or stops (one
    hand: a warning only). SR-5: a fall while counting down, running or stopping commands 0
    with an emergency stop in the same decision. SR-8: a silent sensor counts as grip lost or
    fall."""
    play(script)


@PROPERTY_SETTINGS
@given(
    scripts(
        profile(
            weights={
                "latch_cycle": 8,
                "estop": 2,
                "reset": 3,
                "recover": 3,
                "session": 4,
                "drive_error": 2,
                "fallen": 2,
                "start": 2,
                "belt": 2,
            },
            run_ms=(0, 2000),
            first_run_ms=(3500, 5500),
        )
    )
)
def test_sr6_latching_stop_and_reset(script: Script) -> None:
    """SR-6: after an emergency stop or fault the command stays 0 until an accepted reset; a
    reset is accepted only at confirmed standstill with the cause cleared and never moves the
    belt (a new start and its countdown are needed)."""
    play(script)


@PROPERTY_SETTINGS
@given(
    scripts(
        profile(
            weights={
                "run": 10,
                "stall": 0,
                "recover": 1,
                "fallen": 0,
                "silent": 0,
                "drive_error": 0,
                "estop": 0,
                "belt": 0,
                "hold": 2,
                "stop": 0,
                "set_speed": 3,
            },
            run_ms=(0, 10000),
            long_run_ms=(100000, 400000),
            long_one_in=12,
            first_run_ms=(12000, 45000),
            real_to_end_one_in=60,
            first_run_to_end=True,
            periods=((150, 250), (200, 250)),
            max_actions=4,
            open_with_session=9,
            session_programs=(*SHORT_PROGRAMS, *SHORT_PROGRAMS, None),
        )
    )
)
def test_sr7_session_cap(script: Script) -> None:
    """SR-7: the belt-moving time of a session (counted here, every step with a command above
    0) never exceeds its cap, and neither does the core's own elapsed time."""
    play(script)
