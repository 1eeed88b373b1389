"""The safety core: a pure state machine (no asyncio, no I/O, no clock reads).

    idle -> countdown -> running -> stopping -> idle, with estop and fault latched.

Every input carries its time; :meth:`SafetyCore.handle` first lets time pass up to it (ramping
the commanded speed and counting belt-moving time), then applies the input, then checks every
rule, and returns a :class:`Decision`. Rules are derived from the latest readings and their
times rather than from counters, so the answer does not depend on how often the core is called;
:meth:`SafetyCore.next_deadline` tells the caller when the next time-based rule (a debounce, a
staleness time-out) falls due so that it can wake the core exactly then (SR-13).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from treadguard.safety.decisions import (
    ACCEPTED,
    ARMED_STATES,
    LATCHED_STATES,
    Cause,
    Decision,
    EndReason,
    Event,
    EventType,
    JsonScalar,
    RefusalCode,
    Refused,
    Reply,
    State,
)
from treadguard.safety.inputs import (
    GRIP_SENSOR,
    BrakeFaultOnRecord,
    Command,
    CommandLinkLost,
    Commissioning,
    DriveError,
    DriveFailure,
    DriveFeedback,
    EStop,
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    Input,
    JournalHealth,
    LoopOverrun,
    Reset,
    RivalDaemon,
    Sensor,
    SetSpeed,
    Shutdown,
    StartSession,
    Stop,
    Tick,
)
from treadguard.safety.limits import HARD_CAP_FIRST_SESSION_S, STANDSTILL_MPH, SafetyLimits
from treadguard.safety.programs import Program, ProgramKind
from treadguard.safety.stop_baseline import StopBaseline, StopKind
from treadguard.safety.stop_watch import (
    DEFAULT_MARGIN,
    MIN_MEASURED_MPH,
    Judgement,
    StopMeasurement,
    StopWatch,
    Verdict,
    slow_after_s,
)

_EPS = 1e-9
# Iterating an Enum class is slow next to a tuple, and these loops run on every input.
_SENSORS = tuple(Sensor)
_HANDS = tuple(Hand)


@dataclass(frozen=True, slots=True)
class _SensorView:
    stale: dict[Sensor, bool]
    grip: dict[Hand, bool]  # the hand holds on, by a fresh reading
    both_lost: bool
    any_stale: bool


# The states in which the belt may move and SR-4's grip-loss count runs (in a countdown a lost
# grip ends the session instead: the belt has not moved).
_GRIP_COUNTED = frozenset({State.RUNNING, State.STOPPING})


@dataclass
class _Reading:
    t: float
    value: bool


@dataclass
class _Session:
    number: int
    user: str
    program: Program
    cap_s: float
    target_mph: float
    intervals: int
    moving_s: float = 0.0
    interval_moving_s: float = 0.0
    interval_index: int = 0
    warned: bool = False
    auto_step: bool = True
    next_step_at_s: float = 0.0
    # Set while a controlled stop is under way; for intervals "rest" means a pause between two.
    stop_reason: EndReason | None = None
    resting: bool = False


@dataclass(frozen=True, slots=True)
class Latch:
    kind: State
    cause: Cause
    since: float
    detail: str = ""


@dataclass
class _OpenStop:
    """A stop being timed: from its trigger (the decision that commanded 0) to the first drive
    status after it showing standstill."""

    kind: StopKind
    trigger_t: float
    speed_mph: float  # the belt's speed by the last status at the trigger (inf: unreadable)
    last_status_t: float  # the newest drive status so far, to see a gap in them
    # The first status showing standstill, until the next one confirms it.
    standstill_t: float | None = None
    # The session it stopped (None: none ran): the next may start before the check comes.
    session_id: str | None = None


# Latched causes whose stop says nothing about the brake: the drive was not answering, reported
# a fault of its own, or was not following the command.
_NOT_BRAKING = frozenset({Cause.DRIVE_LINK, Cause.DRIVE_FAULT, Cause.FEEDBACK_MISMATCH})
# The detail of the drive_fault the watch latches (a reset needs new baselines: see _reset_unmet).
STOP_WATCH_FAULT = "stop_watch"


@dataclass(frozen=True, slots=True)
class StopWatchView:
    """What the stop-quality watch knows: per kind whether there is a baseline to compare
    with (none: no comparison for that kind), the run of slow stops, and the last stop's
    verdict; and whether a worn-brake fault waits for new baselines."""

    margin: float
    baselines: dict[StopKind, bool]
    slow_in_a_row: dict[StopKind, int]
    last: dict[StopKind, str]
    fault_pending: bool
    timing: StopKind | None


@dataclass(frozen=True, slots=True)
class SessionView:
    id: str
    user: str
    program: str
    elapsed_s: float
    cap_s: float
    remaining_s: float
    interval: int | None
    intervals: int | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    state: State
    commanded_mph: float
    target_mph: float
    belt_mph: float
    session: SessionView | None
    grip: dict[Hand, bool]
    fall: bool
    stale: tuple[Sensor, ...]
    latched: Latch | None
    countdown_s: float | None
    stop_watch: StopWatchView | None = None


@dataclass
class _Out:
    """What one call to handle() has decided so far."""

    events: list[Event] = field(default_factory=list)
    emergency_stop: bool = False


class SafetyCore:
    def __init__(
        self,
        limits: SafetyLimits,
        programs: Mapping[str, Program],
        *,
        default_program: str,
        t0: float = 0.0,
        sessions_before: int = 0,
        returning_program: str | None = None,
        commissioned_until: float | None = None,
        commissioning_detail: str = "no passed commissioning on record",
        stop_margin: float = DEFAULT_MARGIN,
    ) -> None:
        """``sessions_before``: how many sessions this treadmill has had (the journal knows),
        so that session ids stay unique across restarts. ``returning_program``: the program of
        a start that names none, for a user who has had a session before (default: the
        default program). ``commissioned_until``: the core's time at which the treadmill's
        last passed commissioning expires (None, the default: not commissioned, so no patient
        session starts until a :class:`Commissioning` input says otherwise). ``stop_margin``:
        how much slower than its baseline (0.3: 30 %) a stop may be before it is a slow one
        (safety/stop_watch.py)."""
        if default_program not in programs:
            raise ValueError(f"default program {default_program!r} is not among the programs")
        if returning_program is not None and returning_program not in programs:
            raise ValueError(f"program {returning_program!r} is not among the programs")
        self.limits = limits
        self.programs = dict(programs)
        self.default_program = default_program
        self.returning_program = returning_program or default_program
        self.now = t0
        self.state = State.IDLE
        self.commanded = 0.0
        self.target = 0.0
        self.session: _Session | None = None
        self.latch: Latch | None = None
        self._sessions_started = sessions_before
        self._journal_problem: str | None = None
        # Commissioning (the stop paths proven on this machine): until when, and why not. An
        # expiry that is no time (NaN, -inf) is no commissioning (fail closed).
        if commissioned_until is not None and not (
            math.isfinite(commissioned_until) or commissioned_until == math.inf
        ):
            commissioned_until = None
        self._commissioned_until = commissioned_until
        self._commissioning_detail = commissioning_detail
        # A record on hand that has expired is said at the first input (the journal keeps
        # it); no record at all has nothing to expire.
        self._expiry_reported = commissioned_until is None
        self._readings: dict[Sensor, _Reading] = {}
        # Derived from the readings and the time; computed at most once per input.
        self._view_cache: _SensorView | None = None
        # SR-4: the grip-loss count. Seconds with both hands lost count up, seconds with a grip
        # count down at the same rate, never below 0; the stop comes when it passes the
        # debounce. A timer that restarts on every touch would never stop a user who keeps
        # letting go (250 ms off, 100 ms on); this count does.
        self._grip_count = 0.0
        self._stale_reported: set[Sensor] = set()
        self._warned_hands: set[Hand] = set()
        self._drive_t: float | None = None
        self._drive_mph = 0.0
        self._drive_error_t: float | None = None
        # The health the newest drive status reports, and when a status last reported none.
        self._drive_fault: DriveFailure | None = None
        self._drive_ok_t: float | None = None
        self._mismatch_since: float | None = None
        self._heartbeat_t: float | None = None
        self._countdown_until = 0.0
        self._standing = True  # the command was 0 when the current input arrived
        self._out = _Out()
        # The last rule pass made no transition, so a second one at the same time over the same
        # view would do nothing (see handle and _restamped); and the last decision that had no
        # event, reply or emergency stop (see _quiet_decision).
        self._settled = False
        self._quiet: Decision | None = None
        # The last input changed nothing but a stamp (the short path of handle): the speed
        # commanded stands as the decision before left it, and no deadline came earlier
        # (a stamp only moves a time-out later), so the caller need do nothing about it.
        self.unchanged = False
        # The stop-quality watch (safety/stop_watch.py): no baselines until commissioning (or
        # a scenario) gives them, and so no comparison.
        self._stop_watch = StopWatch(stop_margin)
        self._open_stop: _OpenStop | None = None
        self._last_verdict: dict[StopKind, str] = {}
        # Set when the watch latched its drive_fault; cleared only by new baselines.
        self._brake_fault_t: float | None = None
        self._brake_fault_kind: StopKind | None = None

    # ----------------------------------------------------------------- public surface

    def handle(self, event: Input) -> Decision:
        if self._settled:
            if self._restamped(event):
                self.unchanged = True
                return self._quiet_decision()
            # Until this pass is through: one cut short by an exception settles nothing.
            self._settled = False
        self.unchanged = False
        self._out = _Out()
        self._standing = self.commanded == 0.0
        before = self.commanded
        self._advance_to(event.t)
        reply: Reply | None = None
        match event:
            case Tick():
                pass
            case GripReading() | FallReading():
                self._take_reading(event)
            case DriveFeedback(t=t, speed_mph=mph, fault=fault, detail=detail):
                first = self._drive_t is None
                if math.isfinite(t) and (self._drive_t is None or t >= self._drive_t):
                    self._drive_t = t
                    self._drive_mph = abs(mph) if math.isfinite(mph) else math.inf
                    self._drive_fault = fault
                    if fault is None:
                        self._drive_ok_t = t
                    else:
                        # SR-6/SR-9: every status that reports a fault is the fault again, so
                        # only a status after it that reports none clears it.
                        self._drive_error_t = t
                        self._latch(State.FAULT, _drive_cause(fault), detail or fault.value)
                    self._time_stop(t, fault)
                if first and self._drive_mph > STANDSTILL_MPH:
                    # SR-11: at start-up the belt should stand still; the stop commanded since
                    # then brings it down, and no start is accepted until it has.
                    self._emit(EventType.BELT_FOUND_MOVING, speed_mph=self._drive_mph)
            case DriveError(failure=failure, detail=detail):
                self._drive_error_t = self.now
                self._latch(State.FAULT, _drive_cause(failure), detail)
                self._stop_interrupted(f"the drive failed ({failure.value})")
            case LoopOverrun():
                self._stop_session(EndReason.LOOP_OVERRUN)
            case Shutdown():
                self._stop_session(EndReason.SHUTDOWN)
            case JournalHealth(writable=writable, detail=detail):
                self._journal_problem = None if writable else (detail or "cannot be written")
                if not writable:
                    self._latch(State.FAULT, Cause.JOURNAL, f"journal: {detail}")
            case Commissioning(until=until, detail=detail):
                # A non-finite or missing expiry is no commissioning (fail closed); +inf is
                # the one infinite value that means "does not expire" (tests, never the journal).
                ok = until is not None and (math.isfinite(until) or until == math.inf)
                self._commissioned_until = until if ok else None
                self._commissioning_detail = detail or "no passed commissioning on record"
                if self.commissioning_current():
                    self._expiry_reported = False  # said again when this one expires
                elif self._commissioned_until is None:
                    self._expiry_reported = True
            case RivalDaemon(detail=detail):
                self._latch(State.FAULT, Cause.RIVAL_DAEMON, detail or "another daemon")
            case CommandLinkLost():
                # SR-12: no command of the tablet's is known to reach the belt since: as a
                # tablet silent past the grace, at once (the rules below stop a session).
                self._heartbeat_t = None
            case BrakeFaultOnRecord(kind=kind, detail=detail):
                # Fail closed: an unknown kind is taken as the emergency stop's.
                known = {k.value: k for k in StopKind}
                self._brake_fault_kind = known.get(kind, StopKind.EMERGENCY)
                self._latch_brake_fault(f"on record before this start: {detail}")
            case _:
                reply = self._command(event)
        state = self.state
        self._check()
        if before < self.commanded and self.target < self.commanded:
            # An input that slows the belt (a stop, a lower speed, a fault) never first asks
            # for more than was asked before it, nor more than its new target: the ramp's step
            # for the time since the last input is taken only up to the higher of the two.
            # Otherwise a stop at the instant a countdown ends would ask the drive for the
            # ramp's first hundredth of a mph, and a stop during the ramp for a little more
            # than the speed last asked.
            self.commanded = max(before, self.target)
        s = self.session
        # A pass that made no transition leaves every rule where a second pass at this time,
        # over the same view, finds nothing to do: each acts once on what it reads, and only a
        # transition changes what an earlier rule reads (the command, the session's rest and
        # countdown). The one exception is the automatic speed step, which may be due again
        # after it stepped (belt time since the last input of more than one step period).
        self._settled = self.state is state and not (
            state is State.RUNNING
            and s is not None
            and s.auto_step
            and s.moving_s >= s.next_step_at_s
        )
        return self._decision(reply)

    def _decision(self, reply: Reply | None) -> Decision:
        out = self._out
        if out.events or out.emergency_stop or reply is not None:
            return Decision(
                state=self.state,
                speed_mph=self.commanded,
                target_mph=self.target,
                rate_mph_s=self._rate(),
                emergency_stop=out.emergency_stop,
                events=tuple(out.events),
                reply=reply,
            )
        return self._quiet_decision()

    def _quiet_decision(self) -> Decision:
        """The decision of an input that gave no event, no reply and no emergency stop."""
        rate = self._rate()
        # Most decisions repeat the last one: it is immutable, so the same object serves again
        # while every field is the very same object (identity: a recomputed float is a new
        # one, and -0.0 == 0.0 would pass for it).
        quiet = self._quiet
        if (
            quiet is None
            or quiet.state is not self.state
            or quiet.speed_mph is not self.commanded
            or quiet.target_mph is not self.target
            or quiet.rate_mph_s is not rate
        ):
            quiet = self._quiet = Decision(
                state=self.state,
                speed_mph=self.commanded,
                target_mph=self.target,
                rate_mph_s=rate,
                emergency_stop=False,
                events=(),
                reply=None,
            )
        return quiet

    def _restamped(self, event: Input) -> bool:
        """An input that changes nothing but a stamp, after a settled pass (see handle): it
        records the stamp and says so, and the rule pass is skipped.

        A grip or fall reading with the value its sensor last gave, stamped no earlier than
        that one and no later than the core's time, the sensor fresh; or a drive status with
        no fault after one with none, the same speed, stamped likewise, the drive fresh and
        no stop being timed (whose standstill a status confirms). Time does not move, what
        the rules read stays as it was (which sensors are stale, which hands hold on, the
        drive fresh, its speed and health), so they would find what the settled pass left
        them; a late release needs no correction (the hands are as they were) and a mismatch
        under way keeps its start."""
        now = self.now
        if isinstance(event, GripReading):
            sensor, value = GRIP_SENSOR[event.hand], event.held
        elif isinstance(event, FallReading):
            sensor, value = Sensor.FALL, event.fallen
        elif isinstance(event, DriveFeedback):
            drive_t = self._drive_t
            if (
                drive_t is None
                or event.fault is not None
                or self._drive_fault is not None
                or self._open_stop is not None
                # The speed the full pass would keep (a non-finite one is kept as inf).
                or abs(event.speed_mph) != self._drive_mph
                or not drive_t <= event.t <= now
                # Not fresh by _drive_fresh's own test: the status would freshen the drive. (A
                # settled pass with the drive silent was in no armed state, where nothing else
                # reads that; checked anyway, so that what the rules read stays as it was.)
                or now - drive_t >= self.limits.drive_timeout_s - _EPS
            ):
                return False
            self._drive_t = self._drive_ok_t = event.t
            return True
        else:
            return False
        old = self._readings.get(sensor)
        if (
            old is None
            or old.value is not value
            or not old.t <= event.t <= now
            # Stale by the view's own test: the reading would freshen the sensor.
            or now - old.t >= self.limits.sensor_timeout_s - _EPS
        ):
            return False
        old.t = event.t
        return True

    def commissioning_current(self) -> bool:
        """Whether a passed commissioning is on record and has not expired at the core's time."""
        until = self._commissioned_until
        return until is not None and self.now < until

    def commissioning_unmet(self) -> str | None:
        """Why a patient session may not start as far as commissioning goes, in words, with
        what to do; None when the commissioning is current."""
        if self.commissioning_current():
            return None
        what = (
            " is not commissioned"
            if self._commissioned_until is None
            else "'s commissioning expired"
        )
        return (
            f"the treadmill{what} ({self._commissioning_detail}): a technician must prove "
            "its stops with `treadguard commission` before patient sessions"
        )

    def next_deadline(self) -> float | None:
        """The earliest future time at which a rule may fire without any new input."""
        # Called after every input: each candidate compared as it comes, no list, no closure
        # (they showed in the virtual session's profile). The earliest candidate after now.
        lim = self.limits
        now = self.now
        best = math.inf
        timeout = lim.sensor_timeout_s
        reported = self._stale_reported
        for s, r in self._readings.items():
            if s not in reported:
                t = r.t + timeout
                if now < t < best:
                    best = t
        until = self._commissioned_until
        # The commissioning expires: its event goes out then.
        if until is not None and now < until < best and math.isfinite(until):
            best = until
        state = self.state
        if state in ARMED_STATES:
            if self._drive_t is not None:
                t = self._drive_t + lim.drive_timeout_s
                if now < t < best:
                    best = t
            if state in _GRIP_COUNTED and self._view().both_lost:
                t = now + max(0.0, lim.grip_debounce_s - self._grip_count)
                if now < t < best:
                    best = t
            if state is State.COUNTDOWN:
                t = self._countdown_until
                if now < t < best:
                    best = t
        return None if best == math.inf else best

    def snapshot(self) -> Snapshot:
        s = self.session
        view = None
        if s is not None:
            view = SessionView(
                id=str(s.number),
                user=s.user,
                program=s.program.name,
                elapsed_s=s.moving_s,
                cap_s=s.cap_s,
                remaining_s=max(0.0, s.cap_s - s.moving_s),
                interval=s.interval_index + 1 if s.program.kind is ProgramKind.INTERVALS else None,
                intervals=s.intervals if s.program.kind is ProgramKind.INTERVALS else None,
            )
        countdown = None
        if self.state is State.COUNTDOWN:
            countdown = max(0.0, self._countdown_until - self.now)
        fall = self._readings.get(Sensor.FALL)
        return Snapshot(
            state=self.state,
            commanded_mph=self.commanded,
            target_mph=self.target,
            # Unknown (not 0) until the drive answers, and once it has gone silent.
            belt_mph=self._drive_mph if self._drive_fresh() else math.inf,
            session=view,
            grip={hand: self._grip_ok(hand) for hand in _HANDS},
            fall=fall is not None and fall.value,
            stale=tuple(s for s in _SENSORS if self._stale(s)),
            latched=self.latch,
            countdown_s=countdown,
            stop_watch=self._stop_watch_view(),
        )

    def set_stop_baselines(
        self,
        baselines: Mapping[StopKind, StopBaseline],
        slow_in_a_row: Mapping[StopKind, int] | None = None,
    ) -> None:
        """The treadmill's commissioned stops, one per kind (a kind left out: no comparison
        for it). Every run of slow stops starts again, from ``slow_in_a_row`` where given
        (the runs the journal holds since that commissioning: a restart is no reset), and a
        worn-brake fault may be reset from now on (the brake was serviced and commissioned
        again). A baseline that cannot be one (not finite, not > 0, under the wrong kind)
        raises ValueError and changes nothing."""
        self._stop_watch.set_baselines(baselines)
        if slow_in_a_row:
            self._stop_watch.carry(slow_in_a_row)
        # Changed outside handle(): the next input gets a full rule pass (see handle).
        self._settled = False
        # Only a new baseline for the kind of stop that was too slow clears its fault: none at
        # all, or the other kind's alone, would switch the watch off for the worn brake.
        if self._brake_fault_kind is None or self._brake_fault_kind in baselines:
            self._brake_fault_t = None
            self._brake_fault_kind = None
        self._last_verdict = {}

    def _stop_watch_view(self) -> StopWatchView:
        w = self._stop_watch
        return StopWatchView(
            margin=w.margin,
            baselines={kind: kind in w.baselines for kind in StopKind},
            slow_in_a_row=dict(w.slow_in_a_row),
            last=dict(self._last_verdict),
            fault_pending=self._brake_fault_t is not None,
            timing=None if self._open_stop is None else self._open_stop.kind,
        )

    # ----------------------------------------------------------------- time

    def _advance_to(self, t: float) -> None:
        if not math.isfinite(t) or t <= self.now:
            return
        dt = t - self.now
        if self.state in _GRIP_COUNTED:
            self._count_grip_loss(t)
        self._forget()
        s = self.session
        if s is not None and self.commanded > 0.0:
            s.moving_s += dt
            s.interval_moving_s += dt
        self.now = t
        step = self._rate() * dt
        if self.target > self.commanded:
            self.commanded = min(self.target, self.commanded + step)
        else:
            self.commanded = max(self.target, self.commanded - step)

    def _rate(self) -> float:
        if self.target > self.commanded:
            return self.limits.accel_mph_s
        return self.limits.decel_mph_s

    # ----------------------------------------------------------------- inputs

    def _count_grip_loss(self, t: float) -> None:
        """SR-4: carry the grip-loss count from ``self.now`` to ``t``. Between two inputs the
        readings do not change, so each hand is lost from some moment on (a release: at once;
        a grip reading that goes stale: at its time-out) and both from the later of the two:
        the count goes down until then and up after."""
        both = max(self._lost_from(Hand.LEFT), self._lost_from(Hand.RIGHT))
        both = min(max(both, self.now), t)
        self._grip_count = max(0.0, self._grip_count - (both - self.now)) + (t - both)

    def _lost_from(self, hand: Hand) -> float:
        """From when this hand counts as lost, given its current reading (inf: not before the
        next reading)."""
        reading = self._readings.get(GRIP_SENSOR[hand])
        if reading is None or not reading.value:
            return -math.inf
        return reading.t + self.limits.sensor_timeout_s - _EPS

    def _both_lost_now(self) -> bool:
        return self._view().both_lost

    def _take_reading(self, event: GripReading | FallReading) -> None:
        if not math.isfinite(event.t):
            return  # SR-8: a reading whose time is not finite is no reading
        if isinstance(event, GripReading):
            sensor, value, unsafe = GRIP_SENSOR[event.hand], event.held, not event.held
        else:
            sensor, value, unsafe = Sensor.FALL, event.fallen, event.fallen
        old = self._readings.get(sensor)
        t = event.t
        if old is not None and t < old.t:
            if not unsafe:
                return  # a safe reading older than the newest is superseded by it
            # SR-8: an unsafe reading is never thrown away for arriving out of order. The
            # sensor's freshness stays that of its newest reading; the value is the unsafe one.
            t = old.t
        # Only a late release can need the grip count corrected; the hands before it are
        # looked at only then (it showed in the virtual session's profile).
        late_release = (
            isinstance(event, GripReading)
            and unsafe
            and event.t < self.now
            and self.state in _GRIP_COUNTED
        )
        both_lost_before = late_release and self._both_lost_now()
        self._readings[sensor] = _Reading(t=t, value=value)
        self._forget()
        if (
            late_release
            and isinstance(event, GripReading)
            and not both_lost_before
            and self._both_lost_now()
        ):
            # A release that arrives late: both hands have been off since it (or since the
            # other hand let go, if later), a time the count took for held and may have counted
            # down by as much. Adding both makes the count at least the true one: failing
            # closed, by at most the lateness.
            other = Hand.RIGHT if event.hand is Hand.LEFT else Hand.LEFT
            since = max(event.t, self._lost_from(other))
            if since < self.now:
                self._grip_count += 2.0 * (self.now - since)

    def _view(self) -> _SensorView:
        """Which sensors are stale and which hands hold on, now. Asked many times per input;
        the answer only changes with time or a new reading, so it is computed once and kept
        until :meth:`_forget`."""
        view = self._view_cache
        if view is None:
            readings, now = self._readings, self.now
            timeout = self.limits.sensor_timeout_s - _EPS
            stale = {}
            for sensor in _SENSORS:
                reading = readings.get(sensor)
                stale[sensor] = reading is None or now - reading.t >= timeout
            grip = {}
            for hand in _HANDS:
                sensor = GRIP_SENSOR[hand]
                reading = readings.get(sensor)
                grip[hand] = reading is not None and reading.value and not stale[sensor]
            both_lost = not any(grip.values())
            view = self._view_cache = _SensorView(stale, grip, both_lost, any(stale.values()))
        return view

    def _stale(self, sensor: Sensor) -> bool:
        return self._view().stale[sensor]

    def _grip_ok(self, hand: Hand) -> bool:
        return self._view().grip[hand]

    def _fall_signalled(self) -> Cause | None:
        """SR-5/SR-8: a fall, or a fall sensor that has gone silent, is a fall."""
        if self._stale(Sensor.FALL):
            return Cause.SENSOR_STALE
        reading = self._readings[Sensor.FALL]
        return Cause.FALL if reading.value else None

    def _forget(self) -> None:
        """Time passed or a reading changed: what was derived from them is out of date."""
        self._view_cache = None

    def _drive_fresh(self) -> bool:
        return (
            self._drive_t is not None
            and self.now - self._drive_t < self.limits.drive_timeout_s - _EPS
        )

    def _standstill(self) -> bool:
        return self._drive_fresh() and self._drive_mph <= STANDSTILL_MPH

    # ----------------------------------------------------------------- commands

    def _command(self, cmd: Command) -> Reply:
        # Any command proves the tablet is there (SR-12).
        self._heartbeat_t = self.now
        match cmd:
            case Heartbeat():
                return ACCEPTED
            case EStop(why=None):
                self._latch(State.ESTOP, Cause.REMOTE_ESTOP, "estop command")
                return ACCEPTED
            case EStop(why=str(why)):
                self._latch(State.ESTOP, Cause.SHUTDOWN, why)
                return ACCEPTED
            case StartSession():
                reply = self._start(cmd)
            case SetSpeed(mph=mph, clinician=clinician):
                reply = self._set_speed(mph, clinician)
            case Stop():
                reply = self._stop_command()
            case Reset():
                reply = self._reset()
        if isinstance(reply, Refused):
            self._emit(
                EventType.COMMAND_REFUSED,
                command=cmd.TYPE.value,
                code=reply.code.value,
                message=reply.message,
            )
        return reply

    def _start(self, cmd: StartSession) -> Reply:
        if self.state in LATCHED_STATES:
            return Refused(RefusalCode.LATCHED, self._latched_message())
        if self.state is not State.IDLE:
            return Refused(RefusalCode.NOT_ALLOWED, f"a session is already {self.state.value}")
        user = cmd.user.strip()
        if not user or len(user) > 64:
            return Refused(RefusalCode.INVALID_COMMAND, "user must be 1-64 characters")
        name = cmd.program or (self.returning_program if cmd.returning else self.default_program)
        program = self.programs.get(name)
        if program is None:
            known = ", ".join(sorted(self.programs))
            return Refused(RefusalCode.INVALID_COMMAND, f"unknown program {name!r}; known: {known}")
        if cmd.returning is False and not program.first_session:
            firsts = ", ".join(sorted(n for n, p in self.programs.items() if p.first_session))
            return Refused(
                RefusalCode.PRECONDITIONS_UNMET,
                f"cannot start: {user} has no first treadmill session on record (one that ran "
                f"to its cap, or for its shortest cap), so this is still their first: a "
                f"first-session program ({firsts}), not {program.name}",
            )
        cap = program.cap_s_default if cmd.cap_s is None else cmd.cap_s
        if not (math.isfinite(cap) and program.cap_s_min <= cap <= program.cap_s_max):
            return Refused(
                RefusalCode.OUT_OF_RANGE,
                f"cap_s {cap:g} is outside {program.name}'s limits "
                f"{program.cap_s_min:g}-{program.cap_s_max:g} s",
            )
        if (program.first_session or cmd.returning is False) and cap > HARD_CAP_FIRST_SESSION_S:
            # SR-7: a first session has the first-session hard limit whatever the program,
            # intervals included (the program's own check is the first line; this the last).
            return Refused(
                RefusalCode.OUT_OF_RANGE,
                f"cap_s {cap:g} is above the first-session hard limit of "
                f"{HARD_CAP_FIRST_SESSION_S:g} s of belt time",
            )
        target = program.start_mph if cmd.target_mph is None else cmd.target_mph
        band = self._band(program)
        if not (math.isfinite(target) and band[0] <= target <= band[1]):
            return Refused(RefusalCode.OUT_OF_RANGE, _band_message(target, band))
        unmet = self._start_unmet()
        commissioning = self.commissioning_unmet()
        if commissioning is not None and not cmd.proof:
            # Before anything else: a treadmill whose stops were never proven (or not lately)
            # takes no patient, whatever else holds.
            unmet.insert(0, commissioning)
        if unmet:
            return Refused(RefusalCode.PRECONDITIONS_UNMET, "cannot start: " + "; ".join(unmet))
        self._sessions_started += 1
        intervals = 1
        if program.kind is ProgramKind.INTERVALS:
            # Division, not floor division: 597 // 59.7 is 9.0 in floats (one short), while
            # 597 / 59.7 is 10.0; _EPS takes up a quotient a hair under a whole number.
            intervals = max(1, int(cap / program.interval_s + _EPS))
        self.session = _Session(
            number=self._sessions_started,
            user=user,
            program=program,
            cap_s=cap,
            target_mph=target,
            intervals=intervals,
            auto_step=program.step_mph > 0,
            next_step_at_s=program.step_every_s,
        )
        self._emit(
            EventType.SESSION_STARTED,
            session_id=str(self._sessions_started),
            user=user,
            program=program.name,
            cap_s=cap,
            target_mph=target,
        )
        self._begin_countdown(self.limits.countdown_s)
        return ACCEPTED

    def _band(self, program: Program) -> tuple[float, float]:
        return program.band_within(self.limits)

    def _start_unmet(self) -> list[str]:
        """SR-3: every precondition of a belt start that does not hold, in words."""
        unmet = []
        for hand in _HANDS:
            sensor = GRIP_SENSOR[hand]
            if self._stale(sensor):
                unmet.append(f"{hand.value} grip sensor has no fresh reading")
            elif not self._grip_ok(hand):
                unmet.append(f"{hand.value} hand is not on the handrail")
        fall = self._fall_signalled()
        if fall is Cause.SENSOR_STALE:
            unmet.append("fall sensor has no fresh reading")
        elif fall is Cause.FALL:
            unmet.append("a fall is signalled")
        if not self._drive_fresh():
            unmet.append("drive is not answering")
        elif self._drive_mph > STANDSTILL_MPH:
            unmet.append("belt is not at standstill")
        if self._drive_fault is not None:
            unmet.append("drive reports a fault")
        if self._journal_problem is not None:
            unmet.append(f"the session journal cannot be written ({self._journal_problem})")
        return unmet

    def _set_speed(self, mph: float, clinician: str | None) -> Reply:
        s = self.session
        if s is None or self.state not in (State.COUNTDOWN, State.RUNNING):
            return Refused(RefusalCode.NOT_ALLOWED, f"no running session ({self.state.value})")
        band = self._band(s.program)
        if not (math.isfinite(mph) and band[0] <= mph <= band[1]):
            return Refused(RefusalCode.OUT_OF_RANGE, _band_message(mph, band))
        # On the record: the session's target before and after, and who asked (SR-14).
        changed: dict[str, JsonScalar] = {
            "session_id": str(s.number),
            "from_mph": s.target_mph,
            "to_mph": mph,
        }
        if clinician is not None:
            changed["clinician"] = clinician
        self._emit(EventType.SPEED_CHANGED, **changed)
        s.target_mph = mph
        s.auto_step = False  # the clinician has taken over the speed
        if self.state is State.RUNNING and not s.resting:
            self.target = mph
        return ACCEPTED

    def _stop_command(self) -> Reply:
        if self.session is None or self.state not in ARMED_STATES:
            return Refused(RefusalCode.NOT_ALLOWED, f"no session to stop ({self.state.value})")
        self._stop_session(EndReason.OPERATOR_STOP)
        return ACCEPTED

    def _stop_session(self, reason: EndReason) -> None:
        """A controlled stop of the session in progress, if any (a countdown just ends)."""
        s = self.session
        if s is None or self.state not in ARMED_STATES:
            return
        if self.state is State.COUNTDOWN:
            self._end_session(reason)
        elif self.state is State.STOPPING:
            # Already slowing down, perhaps between intervals: this stop ends the session
            # there, instead of the rest and the next interval's countdown.
            s.stop_reason = reason
            s.resting = False
        else:
            self._begin_stop(reason)
            s.resting = False

    def _reset(self) -> Reply:
        latch = self.latch
        if latch is None:
            return Refused(RefusalCode.NOT_ALLOWED, f"nothing is latched ({self.state.value})")
        unmet = self._reset_unmet(latch)
        if unmet:
            return Refused(RefusalCode.PRECONDITIONS_UNMET, "cannot reset: " + "; ".join(unmet))
        self.latch = None
        self.state = State.IDLE
        self._mismatch_since = None
        self._emit(EventType.RESET, cleared=latch.cause.value)
        return ACCEPTED

    def _reset_unmet(self, latch: Latch) -> list[str]:
        """SR-6: confirmed standstill, and the cause cleared."""
        unmet = []
        if not self._drive_fresh():
            unmet.append("drive is not answering, standstill cannot be confirmed")
        elif self._drive_mph > STANDSTILL_MPH:
            unmet.append("belt is not at standstill")
        if latch.cause is Cause.JOURNAL and self._journal_problem is not None:
            unmet.append(f"the session journal cannot be written ({self._journal_problem})")
        if self._drive_fault is not None:
            unmet.append("drive still reports a fault")
        elif self._drive_error_t is not None and (
            self._drive_ok_t is None or self._drive_ok_t <= self._drive_error_t
        ):
            # SR-6: cleared means a status read after the fault that reports no fault.
            unmet.append("drive has not reported a healthy status since its fault")
        if self._brake_fault_t is not None:
            # A worn brake: the drive reports itself healthy all along, so a healthy status
            # proves nothing. Only the brake serviced and commissioned again (new baselines)
            # clears it: fail closed.
            unmet.append(
                "the belt stopped too slowly twice in a row: service the brake and commission "
                "the treadmill again (new stop baselines) first"
            )
        if latch.cause in (Cause.GRIP_LOST, Cause.SENSOR_STALE):
            for hand in _HANDS:
                if not self._grip_ok(hand):
                    unmet.append(f"{hand.value} grip is not held (or its sensor is silent)")
        fall = self._fall_signalled()
        if fall is Cause.FALL:
            unmet.append("a fall is still signalled")
        elif fall is Cause.SENSOR_STALE and latch.cause in (Cause.FALL, Cause.SENSOR_STALE):
            unmet.append("fall sensor has no fresh reading")
        return unmet

    def _latched_message(self) -> str:
        latch = self.latch
        assert latch is not None
        return f"{latch.kind.value} latched ({latch.cause.value}): reset first"

    # ----------------------------------------------------------------- transitions

    def _begin_countdown(self, seconds: float) -> None:
        self.state = State.COUNTDOWN
        self.target = 0.0
        self._countdown_until = self.now + seconds
        self._emit(EventType.COUNTDOWN, seconds=seconds)

    def _begin_stop(self, reason: EndReason) -> None:
        s = self.session
        assert s is not None
        s.stop_reason = reason
        self.state = State.STOPPING
        self.target = 0.0
        self._emit(EventType.STOPPING, reason=reason.value)
        if self._open_stop is None:
            self._start_timing(StopKind.CONTROLLED)

    def _end_session(self, reason: EndReason) -> None:
        s = self.session
        if s is None:
            return
        self._emit(
            EventType.SESSION_ENDED,
            session_id=str(s.number),
            reason=reason.value,
            belt_moving_s=round(s.moving_s, 3),
        )
        self.session = None
        if self.state not in LATCHED_STATES:
            self.state = State.IDLE
            self.target = 0.0

    def _latch(self, kind: State, cause: Cause, detail: str) -> None:
        if self.latch is not None:
            return  # already latched: the first cause stands, the belt is already stopping
        if cause is Cause.FEEDBACK_MISMATCH and self._open_stop is not None:
            # The belt lags a stop under way: that is the stop being slow, timed on as it was.
            pass
        elif cause in _NOT_BRAKING:
            self._stop_interrupted(f"the drive was not braking as commanded ({cause.value})")
        else:
            # An emergency stop, also one that takes over a controlled stop under way: timed
            # from here, at the speed the belt has now.
            self._start_timing(StopKind.EMERGENCY)
        self.state = kind
        self.latch = Latch(kind=kind, cause=cause, since=self.now, detail=detail)
        self.commanded = 0.0
        self.target = 0.0
        self._out.emergency_stop = True
        self._warned_hands.clear()
        if kind is State.ESTOP:
            self._emit(EventType.ESTOP, cause=cause.value, detail=detail)
        else:
            self._emit(EventType.FAULT, cause=cause.value, detail=detail)
        self._end_session(EndReason.ESTOP if kind is State.ESTOP else EndReason.FAULT)

    # ----------------------------------------------------------------- rules

    def _check(self) -> None:
        self._check_commissioning()
        self._check_staleness_events()
        self._check_stop_timing()
        self._check_drive()
        if self.state in ARMED_STATES:
            self._check_fall_and_grip()
        if self.state in ARMED_STATES:
            self._check_tablet()
        if self.state is State.COUNTDOWN:
            self._check_countdown()
        if self.state is State.RUNNING:
            self._check_running()
        if self.state is State.STOPPING:
            self._check_stopping()

    def _check_commissioning(self) -> None:
        """A commissioning that was current and no longer is: said once, in an event (the
        journal keeps it; a session under way runs on, only new starts are refused)."""
        if self._expiry_reported or self.commissioning_current():
            return
        self._expiry_reported = True
        self._emit(EventType.COMMISSIONING_EXPIRED, detail=self._commissioning_detail)

    def _check_staleness_events(self) -> None:
        sensors = self._view()
        if not sensors.any_stale and not self._stale_reported:
            return  # nothing went stale, nothing came back
        view = sensors.stale
        for sensor in _SENSORS:
            stale = view[sensor]
            if stale and sensor in self._readings and sensor not in self._stale_reported:
                self._stale_reported.add(sensor)
                self._emit(EventType.SENSOR_STALE, sensor=sensor.value)
            elif not stale:
                self._stale_reported.discard(sensor)

    def _check_drive(self) -> None:
        """SR-9 (decision half) and SR-10."""
        if self.state in LATCHED_STATES:
            return
        lim = self.limits
        if self.state in ARMED_STATES and not self._drive_fresh():
            self._latch(State.FAULT, Cause.DRIVE_LINK, "no answer from the drive")
            return
        if self._drive_t is None:
            return
        # At a commanded standstill any motion counts; otherwise the configured tolerance.
        tolerance = lim.feedback_tolerance_mph if self.commanded > 0 else STANDSTILL_MPH
        if abs(self._drive_mph - self.commanded) > tolerance:
            if self._mismatch_since is None:
                self._mismatch_since = self._drive_t
            if self.now - self._mismatch_since >= lim.feedback_window_s - _EPS:
                self._latch(
                    State.FAULT,
                    Cause.FEEDBACK_MISMATCH,
                    f"belt at {self._drive_mph:.2f} mph, commanded {self.commanded:.2f} mph",
                )
        else:
            self._mismatch_since = None

    def _check_fall_and_grip(self) -> None:
        """SR-4, SR-5, SR-8."""
        view = self._view()
        fall = self._fall_signalled()
        if fall is not None:
            self._latch(
                State.ESTOP, fall, "fall signalled" if fall is Cause.FALL else "fall sensor silent"
            )
            return
        s = self.session
        resting = s is not None and s.resting
        if self.state is State.COUNTDOWN:
            in_final_countdown = self._countdown_until - self.now <= self.limits.countdown_s
            if (not resting or in_final_countdown) and not all(view.grip.values()):
                self._end_session(EndReason.START_ABORTED)
            return
        grip = view.grip
        lost = [h for h in _HANDS if not grip[h]]
        for hand in lost:
            if hand not in self._warned_hands:
                self._warned_hands.add(hand)
                stale = view.stale[GRIP_SENSOR[hand]]
                self._emit(
                    EventType.GRIP_WARNING,
                    hand=hand.value,
                    cause="sensor_stale" if stale else "released",
                )
        self._warned_hands.intersection_update(lost)
        count = self._grip_count
        # The count passed the debounce (a late wake-up may find a hand back already; the stop
        # is still due). A debounce of 0 stops on any loss.
        if count >= self.limits.grip_debounce_s - _EPS and (len(lost) == 2 or count > _EPS):
            any_stale = any(view.stale[GRIP_SENSOR[h]] for h in _HANDS)
            cause = Cause.SENSOR_STALE if any_stale else Cause.GRIP_LOST
            self._latch(State.ESTOP, cause, "both hands off the handrails")

    def _check_tablet(self) -> None:
        """SR-12: the tablet gone for longer than the grace stops the session, unlatched."""
        if self.state is State.STOPPING:
            return
        if self._tablet_lost():
            if self.state is State.COUNTDOWN:
                self._end_session(EndReason.TABLET_LOST)
            else:
                self._begin_stop(EndReason.TABLET_LOST)

    def _tablet_lost(self) -> bool:
        last = self._heartbeat_t
        return last is None or self.now - last > self.limits.heartbeat_grace_s

    def _check_countdown(self) -> None:
        s = self.session
        assert s is not None
        if self.now < self._countdown_until - _EPS:
            return
        unmet = self._start_unmet()
        if unmet:
            self._end_session(EndReason.START_ABORTED)
            return
        s.resting = False
        s.interval_moving_s = 0.0
        self._grip_count = 0.0
        self.state = State.RUNNING
        self.target = s.target_mph
        self._emit(EventType.BELT_STARTED, target_mph=s.target_mph, interval=s.interval_index + 1)

    def _check_running(self) -> None:
        s = self.session
        assert s is not None
        if self._standing and self._start_unmet():
            # SR-3: the first command above 0 goes out only if the start preconditions still
            # hold now; an input since the end of the countdown may have broken one. Checked
            # on every input until the belt is commanded to move, the ones at the very instant
            # the countdown ended included (fail closed: a precondition that fails then and
            # holds again within the instant still ends the start).
            self.commanded = 0.0
            self._end_session(EndReason.START_ABORTED)
            return
        lim = self.limits
        stop_needs = self.commanded / lim.decel_mph_s + lim.cap_stop_margin_s
        if not s.warned and s.moving_s >= s.cap_s - lim.cap_warning_s - _EPS:
            s.warned = True
            self._emit(EventType.CAP_WARNING, remaining_s=round(s.cap_s - s.moving_s, 3))
        if s.moving_s + stop_needs >= s.cap_s:
            self._begin_stop(EndReason.CAP)
            return
        if s.program.kind is ProgramKind.INTERVALS:
            if s.interval_moving_s + stop_needs >= s.program.interval_s:
                last = s.interval_index + 1 >= s.intervals
                self._begin_stop(EndReason.COMPLETED)
                s.resting = not last
            return
        if s.auto_step and s.moving_s >= s.next_step_at_s:
            s.next_step_at_s += s.program.step_every_s
            # Progression only while the user holds on with both hands.
            if all(self._grip_ok(h) for h in _HANDS):
                band = self._band(s.program)
                new = min(band[1], round(s.target_mph + s.program.step_mph, 3))
                if new > s.target_mph:
                    s.target_mph = new
                    self.target = new
                    self._emit(EventType.SPEED_STEP, target_mph=new)

    def _check_stopping(self) -> None:
        s = self.session
        assert s is not None
        if self.commanded > 0.0 or not self._standstill():
            return
        if s.resting and self._tablet_lost():
            # SR-12: the tablet went silent during the stop: the session ends, no next interval.
            self._end_session(EndReason.TABLET_LOST)
            return
        if s.resting:
            s.interval_index += 1
            self._emit(
                EventType.INTERVAL_REST,
                interval=s.interval_index,
                intervals=s.intervals,
                rest_s=s.program.rest_s,
            )
            s.stop_reason = None
            self._begin_countdown(s.program.rest_s)
            return
        self._end_session(s.stop_reason or EndReason.OPERATOR_STOP)

    # ----------------------------------------------------------------- the stop-quality watch

    def _start_timing(self, kind: StopKind) -> None:
        """A stop's trigger: time it if the belt is known to be moving (a belt standing still
        has nothing to stop; an unknown speed, the drive silent, leaves nothing to time by)."""
        self._open_stop = None
        if self._drive_t is None or not self._drive_fresh():
            if self.commanded > 0.0:  # the belt was meant to move: a stop that cannot be timed
                self._last_verdict[kind] = Verdict.INTERRUPTED.value
                self._emit_stop_checked(
                    kind,
                    Verdict.INTERRUPTED,
                    "no fresh drive status at the trigger",
                    session_id=self._session_id(),
                )
            return
        if self._drive_mph <= STANDSTILL_MPH:
            return
        self._open_stop = _OpenStop(
            kind, self.now, self._drive_mph, self._drive_t, session_id=self._session_id()
        )

    def _session_id(self) -> str | None:
        return None if self.session is None else str(self.session.number)

    def _time_stop(self, t: float, fault: DriveFailure | None) -> None:
        """A drive status, the newest so far: the end of the stop being timed, if it shows
        standstill; a gap before it or a fault in it, the end of the timing."""
        op = self._open_stop
        if op is None:
            return
        if t <= op.trigger_t:
            op.last_status_t = max(op.last_status_t, t)
            return  # read before the trigger: no evidence of the stop
        if t - op.last_status_t >= self.limits.drive_timeout_s - _EPS:
            self._stop_interrupted("the drive did not answer during the stop")
        elif fault is not None:
            # A drive that faults while it brakes (a VFD tripping on its DC bus lets the belt
            # coast) made a worse stop, not no stop: judged as one that never stood still,
            # fail closed. (A stop the drive's own fault triggered is never timed.)
            self._open_stop = None
            self._judge(
                op,
                StopMeasurement(op.kind, op.speed_mph, math.inf),
                standstill=False,
                why=f"the drive reported a fault during the stop ({fault.value})",
            )
        elif self._drive_mph <= STANDSTILL_MPH:
            # Standstill by one status is a candidate; the next status confirms it (one
            # reading of 0 from a flaky readback must not make a slow stop good). The stop's
            # time is the candidate's.
            if op.standstill_t is None:
                op.standstill_t = t
                op.last_status_t = t
                return
            self._open_stop = None
            self._judge(
                op,
                StopMeasurement(op.kind, op.speed_mph, op.standstill_t - op.trigger_t),
                standstill=True,
            )
        else:
            op.standstill_t = None  # moving again: that reading of standstill was not one
            overdue = self._stop_overdue_at()
            if overdue is not None and t >= overdue - _EPS:
                # Still moving by a status read when the stop is already slower than the
                # margin allows, whatever comes next: judged now (the belt may never stop, and
                # a latched state watches no feedback mismatch). Only a status can show it:
                # silence is no evidence of a moving belt, nor of a stopped one.
                self._open_stop = None
                self._judge(
                    op,
                    StopMeasurement(op.kind, op.speed_mph, t - op.trigger_t),
                    standstill=False,
                )
            else:
                op.last_status_t = t

    def _check_stop_timing(self) -> None:
        op = self._open_stop
        if op is None:
            return
        if not self._drive_fresh():
            self._stop_interrupted("the drive stopped answering during the stop")

    def _stop_overdue_at(self) -> float | None:
        op = self._open_stop
        if op is None:
            return None
        baseline = self._stop_watch.baseline(op.kind, self.limits.decel_mph_s)
        if baseline is None or not math.isfinite(op.speed_mph):
            return None  # nothing to compare with / judged slow at standstill, fail closed
        if op.speed_mph < MIN_MEASURED_MPH:
            return None
        return op.trigger_t + slow_after_s(baseline, op.speed_mph, self._stop_watch.margin)

    def _stop_interrupted(self, why: str) -> None:
        op = self._open_stop
        if op is None:
            return
        self._open_stop = None
        self._last_verdict[op.kind] = Verdict.INTERRUPTED.value
        self._emit_stop_checked(op.kind, Verdict.INTERRUPTED, why, session_id=op.session_id)

    def _judge(self, op: _OpenStop, m: StopMeasurement, *, standstill: bool, why: str = "") -> None:
        j = self._stop_watch.judge(m, ramp_mph_per_s=self.limits.decel_mph_s, standstill=standstill)
        self._last_verdict[m.kind] = j.verdict.value
        self._emit_stop_checked(
            m.kind, j.verdict, why, j, standstill=standstill, session_id=op.session_id
        )
        if j.warn:
            self._emit(
                EventType.MAINTENANCE_WARNING,
                kind=m.kind.value,
                slow_in_a_row=j.slow_in_a_row,
                standstill_s=_finite_or_none(m.standstill_s),
                expected_standstill_s=_finite_or_none(j.expected_standstill_s),
                message=_slow_message(j, self._stop_watch.margin, standstill),
            )
        if j.fault:
            self._brake_fault_kind = m.kind
            self._latch_brake_fault(_slow_message(j, self._stop_watch.margin, standstill))

    def _latch_brake_fault(self, message: str) -> None:
        """Twice in a row too slow: a drive_fault, latched. An emergency stop's latch gives way
        to it (its reset is the stricter one); another fault's latch stays, with its own reset
        conditions, and a reset needs new baselines too (_reset_unmet)."""
        self._brake_fault_t = self.now
        detail = f"{STOP_WATCH_FAULT}: {message}"
        if self.latch is None:
            self._latch(State.FAULT, Cause.DRIVE_FAULT, detail)
            return
        if self.latch.kind is State.FAULT:
            return
        self.state = State.FAULT
        self.latch = Latch(kind=State.FAULT, cause=Cause.DRIVE_FAULT, since=self.now, detail=detail)
        self.commanded = 0.0
        self.target = 0.0
        self._out.emergency_stop = True
        self._emit(EventType.FAULT, cause=Cause.DRIVE_FAULT.value, detail=detail)
        self._end_session(EndReason.FAULT)

    def _emit_stop_checked(
        self,
        kind: StopKind,
        verdict: Verdict,
        why: str,
        j: Judgement | None = None,
        *,
        standstill: bool = True,
        session_id: str | None = None,
    ) -> None:
        fields: dict[str, JsonScalar] = {"kind": kind.value, "verdict": verdict.value}
        if session_id is not None:
            fields["session_id"] = session_id
        if j is not None:
            m = j.measurement
            fields["speed_mph"] = _finite_or_none(m.speed_at_trigger_mph)
            fields["standstill_s"] = _finite_or_none(m.standstill_s)
            fields["standstill_reached"] = standstill
            fields["deceleration_mph_per_s"] = _finite_or_none(m.deceleration_mph_per_s)
            if j.baseline is not None:
                fields["baseline_deceleration_mph_per_s"] = j.baseline.deceleration_mph_per_s
                fields["expected_standstill_s"] = _finite_or_none(j.expected_standstill_s)
            fields["slow_in_a_row"] = j.slow_in_a_row
        if verdict is Verdict.NO_BASELINE:
            why = f"no {kind.value} baseline, not compared: commission the treadmill"
        if why:
            fields["why"] = why
        self._emit(EventType.STOP_CHECKED, **fields)

    def _emit(self, type_: EventType, **fields: JsonScalar) -> None:
        self._out.events.append(Event(type=type_, t=self.now, fields=fields))


def _finite_or_none(x: float) -> float | None:
    return round(x, 3) if math.isfinite(x) else None


def _slow_message(j: Judgement, margin: float, standstill: bool) -> str:
    m = j.measurement
    assert j.baseline is not None
    took = (
        f"took {m.standstill_s:.2f} s to stop"
        if standstill
        else f"was not at standstill after {m.standstill_s:.2f} s"
    )
    if math.isfinite(m.speed_at_trigger_mph) and math.isfinite(m.standstill_s):
        against = (
            f"from {m.speed_at_trigger_mph:.2f} mph; when commissioned it stopped at "
            f"{j.baseline.deceleration_mph_per_s:.2f} mph/s, "
            f"{j.expected_standstill_s:.2f} s from that speed"
        )
    else:
        against = "(its speed or time could not be read, so it counts as slow)"
    row = "twice in a row" if j.fault else "once"
    return (
        f"{m.kind.value} stop {took} {against}: slower by more than {margin * 100:g} % "
        f"{row}; the brake may be worn"
    )


def _drive_cause(failure: DriveFailure) -> Cause:
    return Cause.DRIVE_LINK if failure is DriveFailure.LINK else Cause.DRIVE_FAULT


def _band_message(mph: float, band: tuple[float, float]) -> str:
    return f"{mph:g} mph is outside the band {band[0]:g}-{band[1]:g} mph"
