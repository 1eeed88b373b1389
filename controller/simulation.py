"""Plays a scenario: the controller and a simulated world (belt, user, sensors, tablet) on one
clock, the virtual one (fast, deterministic) or asyncio's (real time, optionally sped up).

The world knows nothing of the controller's insides: it feeds the controller the inputs a
real treadmill, user and tablet would, and watches the belt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from treadguard.config.loading import LoadedConfig
from treadguard.config.schema import SimulatedDriveSection
from treadguard.contract.event_text import clock_text, describe
from treadguard.controller.commission import nominal_proofs
from treadguard.controller.control import Timers
from treadguard.controller.drives import Rig, in_process_rig, wire_rig
from treadguard.controller.journal import (
    DAY_S,
    Journal,
    JournalError,
    Machine,
    seed_commissioning,
)
from treadguard.controller.loop import ScaledClock, run_control_loop
from treadguard.controller.system import IN_MEMORY, System, open_journal
from treadguard.drivers.base import DriveStatus, TreadmillDriver
from treadguard.drivers.simulated import SimulatedDriver
from treadguard.safety.decisions import Accepted, EndReason, Event, EventType, JsonScalar, Refused
from treadguard.safety.inputs import (
    ConfirmFirstSession,
    EStop,
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    OutcomeAfter,
    OutcomeBefore,
    Reset,
    Sensor,
    SetSpeed,
    StartSession,
    Stop,
    TabletCommand,
)
from treadguard.safety.limits import HARD_CAP_FIRST_SESSION_S, HARD_MAX_MPH
from treadguard.simulator.scenario import IN_PROCESS_DRIVE_ACTIONS, Action, Scenario, Step
from treadguard.simulator.virtual_loop import VirtualLoop

HEARTBEAT_S = 1.0  # the tablet's heartbeat period (docs/tablet-contract.md)
SAMPLE_S = 0.1  # how often sessions and stops are checked for being over
RATE_WINDOW_S = 0.001  # shortest interval over which the commanded rate is measured
# The wall clock of a simulated run: its journal's records are stamped from this moment on,
# the same for every run (2026-01-05 09:00 UTC, a Monday morning at the clinic).
SIM_EPOCH = 1_767_603_600.0
# The belt time of each earlier session a scenario's history gives. Its program, "history",
# is none of the clinic's, so it counts only with any first-session program's shortest cap
# (controller/first_session.py): the first-session hard limit is at least that.
HISTORY_SESSION_S = HARD_CAP_FIRST_SESSION_S
# Iterating the Enum class costs a generator per reading round (it showed in the profile).
_SENSORS = tuple(Sensor)


class SimulationError(Exception):
    """The scenario cannot be played with this configuration."""


@dataclass
class StopRecord:
    kind: str
    cause: str
    t_s: float
    stop_latency_ms: float
    standstill_at_s: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "cause": self.cause,
            "t_s": _r(self.t_s),
            "stop_latency_ms": _r(self.stop_latency_ms),
            "standstill_at_s": None if self.standstill_at_s is None else _r(self.standstill_at_s),
        }


@dataclass
class SessionRecord:
    id: str
    user: str
    program: str
    cap_s: float
    started_s: float
    end_reason: str | None = None
    ended_s: float | None = None
    belt_moving_s: float = 0.0
    # Belt-moving time is counted until the belt stands still after the session ended.
    measuring: bool = True
    belt_moving_at_start: float = 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "program": self.program,
            "cap_s": _r(self.cap_s),
            "started_s": _r(self.started_s),
            "ended_s": None if self.ended_s is None else _r(self.ended_s),
            "end_reason": self.end_reason,
            "belt_moving_s": _r(self.belt_moving_s),
        }


@dataclass
class ScenarioResult:
    scenario: str
    name: str
    passed: bool
    final_state: str
    max_speed_mph: float
    max_commanded_mph: float
    max_accel_mph_s: float
    belt_moving_s: float
    cap_s: float | None
    estops: list[StopRecord]
    sessions: list[SessionRecord]
    refusals: list[str]
    failures: list[str]
    timeline: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "name": self.name,
            "passed": self.passed,
            "final_state": self.final_state,
            "max_speed_mph": _r(self.max_speed_mph),
            "max_commanded_mph": _r(self.max_commanded_mph),
            "max_accel_mph_s": _r(self.max_accel_mph_s),
            "belt_moving_s": _r(self.belt_moving_s),
            "cap_s": None if self.cap_s is None else _r(self.cap_s),
            "estops": [s.as_json() for s in self.estops],
            "sessions": [s.as_json() for s in self.sessions],
            "refusals": self.refusals,
            "failures": self.failures,
        }


def _r(x: float) -> float:
    return round(x, 3)


def _when(step: Step) -> str:
    """A step's time as its scenario gives it: "0:02.0", or "0:02.0 after estop"."""
    at = clock_text(step.at)
    return at if step.after is None else f"{at} after {step.after.value}"


def seed_history(journal: Journal, history: dict[str, int], before: float) -> None:
    """Earlier sessions for the scenario's users, as the daemon would have journaled them:
    each ran its belt for HISTORY_SESSION_S and ended as planned, an hour apart, all before
    ``before``. A user with none is on first-session rules (SR-7)."""
    ts = before - 3600.0 * sum(history.values())
    session_id = journal.last_session_id()
    for user, count in sorted(history.items()):
        for _ in range(count):
            session_id += 1
            started: dict[str, JsonScalar] = {
                "session_id": session_id,
                "user": user,
                "program": "history",
                "cap_s": HISTORY_SESSION_S,
            }
            journal.record(Event(EventType.SESSION_STARTED, 0.0, started), ts)
            ended: dict[str, JsonScalar] = {
                "session_id": session_id,
                "reason": EndReason.COMPLETED.value,
                "belt_moving_s": HISTORY_SESSION_S,
            }
            journal.record(Event(EventType.SESSION_ENDED, 0.0, ended), ts + HISTORY_SESSION_S)
            ts += 3600.0
    journal.commit()


class _RecordingDriver:
    """Wraps the run's driver, remembering every speed it was commanded (for SR-2 figures).

    Rates are measured on ``decided_at``, the time of the input the core acted on. On the
    virtual clock that is the clock itself; in real time the few milliseconds between an input
    and the driver call are loop latency (benchmarked on their own), which at a sped-up demo
    would otherwise be multiplied into apparent rate errors.
    """

    def __init__(self, driver: TreadmillDriver, decided_at: Callable[[], float]) -> None:
        self.inner = driver
        self._decided_at = decided_at
        self.max_commanded = 0.0
        self.max_up = 0.0
        self.max_down = 0.0
        self._last: tuple[float, float] | None = None

    def command_speed(self, mph: float, *, slowing: bool = False) -> None:
        self.inner.command_speed(mph, slowing=slowing)
        t = self._decided_at()
        # Comparisons, not max(): called on every input (max(a, b) keeps a unless b > a).
        if mph > self.max_commanded:
            self.max_commanded = mph
        if self._last is None:
            self._last = (t, mph)
            return
        t0, v0 = self._last
        # Slopes over at least a millisecond: inputs a few float ulps apart would otherwise
        # turn rounding noise into huge rates. A real step shows up over any window.
        if t - t0 >= RATE_WINDOW_S:
            rate = (mph - v0) / (t - t0)
            if rate > self.max_up:
                self.max_up = rate
            if -rate > self.max_down:
                self.max_down = -rate
            self._last = (t, mph)

    def emergency_stop(self) -> None:
        self.inner.emergency_stop()
        self._last = (self._decided_at(), 0.0)

    def status(self) -> DriveStatus | None:
        return self.inner.status()

    async def run(self) -> None:
        await self.inner.run()


class ScenarioRun:
    def __init__(
        self,
        scenario: Scenario,
        source: str,
        loaded: LoadedConfig,
        timers: Timers,
        *,
        echo: Callable[[str], None] | None = None,
        status_every_s: float = 30.0,
        time_scale: float = 1.0,
        rig: Rig | None = None,
    ) -> None:
        drive = loaded.config.drive
        if rig is None and not isinstance(drive, SimulatedDriveSection):
            raise SimulationError(
                f"{loaded.path}: drive.kind is {drive.kind!r}; the virtual clock needs "
                "drive.kind = 'simulator' (a wire driver runs in real time)"
            )
        wanted = sorted({s.do.value for s in scenario.step if s.do in IN_PROCESS_DRIVE_ACTIONS})
        if wanted and rig is not None and not isinstance(rig.driver, SimulatedDriver):
            raise SimulationError(
                f"{', '.join(wanted)} act on the in-process simulated drive; this run's drive "
                "is a wire driver (inject its faults with sim-device's options instead)"
            )
        self.scenario = scenario
        self.source = source
        self.loaded = loaded
        self.timers = timers
        self.echo = echo
        self.status_every_s = status_every_s
        # Scenario seconds per wall second: latencies are reported in wall milliseconds.
        self.time_scale = time_scale
        cfg = loaded.config
        self.rig = rig if rig is not None else in_process_rig(loaded, timers.time)
        self.belt = self.rig.belt
        self.driver = _RecordingDriver(self.rig.driver, lambda: self.core.now)
        t0 = timers.time()

        def wall() -> float:
            return SIM_EPOCH + (timers.time() - t0)

        # The daemon's own assembly (controller/system.py), with its journal in memory holding
        # the history the scenario gives its users.
        opened = open_journal(IN_MEMORY, max_size_mb=cfg.journal.max_size_mb, wall=wall)
        if opened.journal is not None:
            try:
                if scenario.world.commissioned:
                    # The treadmill's stops proven (docs/commissioning.md), as its journal
                    # would hold them; a world that says otherwise has no record.
                    seed_commissioning(
                        opened.journal,
                        SIM_EPOCH - DAY_S * scenario.world.commissioned_days_ago,
                        nominal_proofs(loaded),
                        # This treadmill and drive; on a drive of the wire, made on the machine
                        # (a run on the simulator would not count for it).
                        machine=Machine.of(cfg),
                        simulated=Machine.of(cfg).simulator,
                        technician="scenario",
                    )
                seed_history(opened.journal, scenario.world.history, SIM_EPOCH)
            except JournalError as exc:
                raise SimulationError(
                    f"the journal (journal.max_size_mb = {cfg.journal.max_size_mb:g}) cannot "
                    f"hold the scenario's [world] history: {exc}"
                ) from exc
        self.system = System(loaded, timers, self.driver, opened, wall=wall, time_scale=time_scale)
        self.core = self.system.core
        self.controller = self.system.controller
        world = scenario.world
        if world.stop_baselines:
            self.system.set_stop_baselines(
                {kind: b.baseline(kind) for kind, b in world.stop_baselines.items()}
            )
        if world.brake_wear:
            self.belt.wear_brake(world.brake_wear)
        self.system.subscribe(self._on_event, name="simulation")
        self.report_interval_s = cfg.sensors.report_interval_s
        self.tick_period_s = 1.0 / cfg.control.tick_hz
        self.hands = {Hand.LEFT: world.left_hand, Hand.RIGHT: world.right_hand}
        self.fallen = world.fallen
        self.tablet = world.tablet
        self.silent: set[Sensor] = set()
        self.stuck: dict[Sensor, bool] = {}
        # Steps timed from an event, by the event's type, until it first happens; and every
        # step not yet played (one left at the end failed to play).
        self._after: dict[EventType, list[Step]] = {}
        self._unplayed: set[int] = set()
        self.timeline: list[str] = []
        self.failures: list[str] = []
        self.events: list[Event] = []
        self.stops: list[StopRecord] = []
        self.sessions: list[SessionRecord] = []
        self.refusals: list[str] = []
        self._next_status_t = 0.0
        self._held: list[str] | None = None

    # ----------------------------------------------------------------- scheduling

    def start(self) -> None:
        t0 = self._t0 = self.timers.time()
        # One timer per distinct time, playing its steps in file order: asyncio's loop does not
        # keep timers due at the same time in the order they were scheduled (VirtualLoop does).
        self._unplayed = {id(step) for step in self.scenario.step}
        by_time: dict[float, list[Step]] = {}
        for step in self.scenario.step:
            if step.after is not None:
                self._after.setdefault(step.after, []).append(step)
            else:
                by_time.setdefault(step.at, []).append(step)
        for at, steps in by_time.items():
            self.timers.call_at(t0 + at, self._play_all, steps, t0)
        self.system.start()
        self._report_sensors()
        self._heartbeat()
        self.timers.call_at(t0 + SAMPLE_S, self._sample)

    def schedule_ticks(self) -> None:
        """Virtual mode: the control tick on the virtual clock (real time uses the asyncio loop)."""

        def tick(k: int) -> None:
            self.system.tick()
            self.timers.call_at(t0 + (k + 1) * self.tick_period_s, tick, k + 1)

        t0 = self.timers.time()
        self.timers.call_at(t0, tick, 0)

    def _report_sensors(self, k: int = 0) -> None:
        for sensor in _SENSORS:
            self._send_reading(sensor)
        self.timers.call_at(
            self._t0 + (k + 1) * self.report_interval_s, self._report_sensors, k + 1
        )

    def _send_reading(self, sensor: Sensor) -> None:
        if sensor in self.silent:
            return
        t = self.timers.time()
        stuck = self.stuck.get(sensor)
        if sensor is Sensor.FALL:
            fallen = self.fallen if stuck is None else stuck
            self.system.submit_reading(FallReading(t=t, fallen=fallen))
        else:
            hand = Hand.LEFT if sensor is Sensor.GRIP_LEFT else Hand.RIGHT
            held = self.hands[hand] if stuck is None else stuck
            self.system.submit_reading(GripReading(t=t, hand=hand, held=held))

    def _heartbeat(self, k: int = 0) -> None:
        if self.tablet:
            self.system.execute(Heartbeat(t=self.timers.time()))
        self.timers.call_at(self._t0 + (k + 1) * HEARTBEAT_S, self._heartbeat, k + 1)

    # ----------------------------------------------------------------- the belt, watched

    def _sample(self) -> None:
        # The belt integrates its own moving time at the physics step; here we only find out
        # when sessions and stops are over, which a coarse look is enough for.
        t = self.timers.time()
        belt = self.belt
        belt.advance(t)
        moving = belt.moving()
        for session in self.sessions:
            if session.measuring:
                session.belt_moving_s = belt.moving_s - session.belt_moving_at_start
                if not moving and session.end_reason is not None:
                    session.measuring = False
        for stop in self.stops:
            if stop.standstill_at_s is None and not moving:
                last = belt.last_moving_t
                stop.standstill_at_s = (
                    stop.t_s if last is None else max(stop.t_s, last - self.rig.belt_clock_offset)
                )
        speed = belt.speed_mph
        if moving and t >= self._next_status_t:
            self._next_status_t = t + self.status_every_s
            snap = self.core.snapshot()
            elapsed = ""
            if snap.session is not None:
                elapsed = (
                    f", belt time {clock_text(snap.session.elapsed_s)} of "
                    f"{clock_text(snap.session.cap_s)}"
                )
            self._line(f"belt {speed:.2f} mph, target {snap.target_mph:.2f} mph{elapsed}")
        self.timers.call_at(t + SAMPLE_S, self._sample)

    # ----------------------------------------------------------------- steps

    @property
    def end_at(self) -> float:
        """The clock's time at the scenario's ``end``: its steps count from start()."""
        return self._t0 + self.scenario.end

    def _play_all(self, steps: list[Step], origin: float) -> None:
        """``origin``: the clock's time the steps' ``at`` counts from (the start, or the
        event they are timed after)."""
        for step in steps:
            self._play(step, origin)

    def _play(self, step: Step, origin: float) -> None:
        self._unplayed.discard(id(step))
        if step.do is not None:
            self._act(step)
        self._check_step(step, origin)

    def _act(self, step: Step) -> None:
        t = self.timers.time()
        action = step.do
        match action:
            case Action.START_SESSION:
                assert step.user is not None
                self._command(
                    step, StartSession(t, step.user, step.program, step.cap_s, step.target_mph)
                )
            case Action.SET_SPEED:
                assert step.mph is not None
                self._command(step, SetSpeed(t, step.mph))
            case Action.STOP:
                self._command(step, Stop(t))
            case Action.ESTOP:
                self._command(step, EStop(t))
            case Action.RESET:
                self._command(step, Reset(t))
            case Action.OUTCOME_BEFORE | Action.OUTCOME_AFTER | Action.CONFIRM_FIRST_SESSION:
                session = self._session_of(step)
                if session is None:
                    return
                if action is Action.CONFIRM_FIRST_SESSION:
                    self._command(step, ConfirmFirstSession(t, session, step.clinician))
                else:
                    assert step.pain is not None
                    kind = OutcomeBefore if action is Action.OUTCOME_BEFORE else OutcomeAfter
                    self._command(
                        step,
                        kind(t=t, session_id=session, pain=step.pain, clinician=step.clinician),
                    )
            case Action.TABLET_LEAVES:
                self.tablet = False
                self._line("tablet goes away (no more heartbeats)")
            case Action.TABLET_RETURNS:
                self.tablet = True
                self._line("tablet is back")
                self.system.execute(Heartbeat(t))
            case Action.RELEASE | Action.GRIP:
                held = action is Action.GRIP
                assert step.hand is not None
                hands = list(Hand) if step.hand == "both" else [Hand(step.hand)]
                verb = "takes hold with" if held else "lets go with"
                self._line(f"user {verb} {step.hand} hand{'s' if step.hand == 'both' else ''}")
                for hand in hands:
                    self.hands[hand] = held
                for hand in hands:
                    self._send_reading(Sensor.GRIP_LEFT if hand is Hand.LEFT else Sensor.GRIP_RIGHT)
            case Action.FALL | Action.GET_UP:
                self.fallen = action is Action.FALL
                self._line("user falls" if self.fallen else "user is back on their feet")
                self._send_reading(Sensor.FALL)
            case Action.SENSOR_SILENT:
                assert step.sensor is not None
                self.silent.add(Sensor(step.sensor))
                self._line(f"sensor {step.sensor} goes silent")
            case Action.SENSOR_BACK:
                assert step.sensor is not None
                sensor = Sensor(step.sensor)
                self.silent.discard(sensor)
                self.stuck.pop(sensor, None)
                self._line(f"sensor {step.sensor} reports again")
                self._send_reading(sensor)
            case Action.DRIVE_UNPLUG:
                self.rig.unplug()
                self._line("drive cable unplugged")
            case Action.DRIVE_PLUG:
                self.rig.plug()
                self._line("drive cable plugged back in")
            case Action.SENSOR_STUCK:
                assert step.sensor is not None
                assert step.value is not None
                self.stuck[Sensor(step.sensor)] = step.value
                self.silent.discard(Sensor(step.sensor))  # a stuck sensor reports
                self._line(f"sensor {step.sensor} is stuck: it reports {step.value} from now on")
                self._send_reading(Sensor(step.sensor))
            case Action.DRIVE_FAULT:
                detail = step.detail or "reported by the drive"
                self._drive().report_fault(f"drive_fault: {detail}")
                self._line(f"drive reports a fault: {detail}")
            case Action.DRIVE_IGNORES_WRITES:
                self._drive().ignore_writes(True)
                self._line("drive ignores every write from now on (it still answers polls)")
            case Action.DRIVE_OK:
                self._drive().report_fault(None)
                self._drive().ignore_writes(False)
                self._line("drive is healthy again")
            case Action.BRAKE_WEAR:
                assert step.wear is not None
                self.belt.wear_brake(step.wear)
                self._line(f"the brake wears: it loses {step.wear * 100:g} % of its deceleration")

    def _session_of(self, step: Step) -> str | None:
        """The session a step names, or the newest of the run; None (a failure) without one."""
        if step.session_id is not None:
            return str(step.session_id)
        if self.sessions:
            return self.sessions[-1].id
        assert step.do is not None
        self._fail(f"{_when(step)} {step.do.value}: no session has started to name")
        return None

    def _command(self, step: Step, command: TabletCommand) -> None:
        # The command's own line comes first, then the events it caused.
        self._held = []
        try:
            reply = self.system.execute(command)
        finally:
            held, self._held = self._held, None
        assert reply is not None
        assert step.do is not None
        params = " ".join(
            f"{name}={getattr(step, name)}"
            for name in ("user", "program", "cap_s", "target_mph", "mph", "session_id", "pain")
            if getattr(step, name) is not None
        )
        what = f"tablet: {step.do.value}{' ' + params if params else ''}"
        if isinstance(reply, Accepted):
            got = "ok"
            self._line(f"{what} -> ok")
        else:
            assert isinstance(reply, Refused)
            got = reply.code.value
            self.refusals.append(got)
            self._line(f"{what} -> refused, {got}: {reply.message}")
        for line in held:
            self._emit_line(line)
        wanted = step.expect_reply
        if wanted is not None:
            allowed = [wanted] if isinstance(wanted, str) else wanted
            if got not in allowed:
                self._fail(
                    f"{_when(step)} {step.do.value}: expected reply "
                    f"{' or '.join(allowed)}, got {got}"
                )

    def _check_step(self, step: Step, origin: float) -> None:
        at = _when(step)
        if step.expect_state is not None and self.core.state is not step.expect_state:
            self._fail(
                f"{at} expected state {step.expect_state.value}, was {self.core.state.value}"
            )
        if step.expect_speed_mph is not None:
            self.belt.advance(self.timers.time())
            lo, hi = step.expect_speed_mph
            speed = self.belt.speed_mph
            if not lo - 1e-6 <= speed <= hi + 1e-6:
                self._fail(f"{at} expected belt speed {lo:g}-{hi:g} mph, was {speed:.3f} mph")
        if step.expect_latched is not None:
            latch = self.core.latch
            got = "none" if latch is None else latch.cause.value
            if got != step.expect_latched:
                self._fail(f"{at} expected latched {step.expect_latched}, was {got}")
        if step.expect_still_until is not None:
            self._watch_still(step, origin)
        if step.expect_proposal is not None:
            self._check_proposal(step)

    def _check_proposal(self, step: Step) -> None:
        wanted = step.expect_proposal
        assert wanted is not None
        at = _when(step)
        try:
            got = self.system.proposal(wanted.user)
        except JournalError as exc:
            self._fail(f"{at} expected a proposal for {wanted.user}: {exc}")
            return
        self._line(f"proposal for {wanted.user}: {got.reason}")
        if wanted.program is not None and got.program != wanted.program:
            self._fail(f"{at} expected {wanted.user}'s proposal on {wanted.program}: {got.reason}")
        if wanted.cap_s is not None and abs(got.cap_s - wanted.cap_s) > 1e-6:
            self._fail(
                f"{at} expected {wanted.user}'s proposed cap {wanted.cap_s:g} s: {got.reason}"
            )
        if wanted.held is not None and got.held is not wanted.held:
            held = "held" if wanted.held else "not held"
            self._fail(f"{at} expected {wanted.user}'s proposal {held}: {got.reason}")
        if wanted.reason_has is not None and wanted.reason_has not in got.reason:
            self._fail(
                f"{at} expected {wanted.user}'s proposal to say {wanted.reason_has!r}: {got.reason}"
            )

    def _watch_still(self, step: Step, origin: float) -> None:
        """The belt stands still from now until ``expect_still_until``: not moving now, and
        no moving time counted by the belt's physics (at its own step) by then."""
        assert step.expect_still_until is not None
        self.belt.advance(self.timers.time())
        if self.belt.moving():
            self._fail(
                f"{_when(step)} expected the belt still, it ran at {self.belt.speed_mph:.3f} mph"
            )
            return
        moved_before = self.belt.moving_s
        still_until = step.expect_still_until
        # From the step's origin, not from when it was played: a late step (real time) must
        # not push its check past the end of the run.
        until = max(self.timers.time(), origin + still_until)
        self._unplayed.add(id(step))  # until its check has run

        def check() -> None:
            self._unplayed.discard(id(step))
            self.belt.advance(self.timers.time())
            moved = self.belt.moving_s - moved_before
            if moved > 0.0 or self.belt.moving():
                self._fail(
                    f"{_when(step)} expected the belt still until "
                    f"{clock_text(still_until)}: it moved for {moved:.2f} s "
                    f"(top speed so far {self.belt.max_speed_mph:.3f} mph)"
                )

        self.timers.call_at(until, check)

    # ----------------------------------------------------------------- events

    def _drive(self) -> SimulatedDriver:
        driver = self.rig.driver
        assert isinstance(driver, SimulatedDriver)  # checked when the run was built
        return driver

    def _on_event(self, ev: Event) -> None:
        self.events.append(ev)
        timed_from_it = self._after.pop(ev.type, None)
        if timed_from_it:
            by_time: dict[float, list[Step]] = {}
            for step in timed_from_it:
                by_time.setdefault(step.at, []).append(step)
            for at, steps in by_time.items():
                self.timers.call_at(ev.t + at, self._play_all, steps, ev.t)
        f = ev.fields
        text = describe({"type": ev.type.value, **f})
        match ev.type:
            case EventType.SESSION_STARTED:
                self.sessions.append(
                    SessionRecord(
                        id=str(f["session_id"]),
                        user=str(f["user"]),
                        program=str(f["program"]),
                        cap_s=float(f["cap_s"] or 0.0),
                        started_s=ev.t,
                        belt_moving_at_start=self.belt.moving_s,
                    )
                )
            case EventType.SESSION_ENDED:
                for session in self.sessions:
                    if session.id == f["session_id"]:
                        session.end_reason = str(f["reason"])
                        session.ended_s = ev.t
            case EventType.BELT_STARTED:
                self._next_status_t = ev.t + self.status_every_s
            case EventType.ESTOP | EventType.FAULT:
                latency = float(f.get("stop_latency_ms") or 0.0) / self.time_scale
                self.stops.append(StopRecord(ev.type.value, str(f["cause"]), ev.t, latency))
                text += f", stop sent in {latency:.1f} ms"
            case EventType.COMMAND_REFUSED:
                text = ""  # the tablet line shows the refusal
            case _:
                pass
        if text:
            self._line(text)

    # ----------------------------------------------------------------- output

    def _line(self, text: str) -> None:
        t = self.timers.time()
        self.belt.advance(t)
        line = (
            f"{clock_text(t):>7} | {self.belt.speed_mph:4.2f} mph | "
            f"{self.core.state.value:<9} | {text}"
        )
        if self._held is not None and not text.startswith("tablet: "):
            self._held.append(line)
        else:
            self._emit_line(line)

    def _emit_line(self, line: str) -> None:
        self.timeline.append(line)
        if self.echo is not None:
            self.echo(line)

    def _fail(self, message: str) -> None:
        self.failures.append(message)
        self._line(f"EXPECTATION FAILED: {message}")

    def finish(self) -> ScenarioResult:
        exp = self.scenario.expect
        fails = self.failures
        if self.driver.max_commanded > HARD_MAX_MPH + 1e-9:
            fails.append(
                f"commanded {self.driver.max_commanded:.3f} mph, above the hard "
                f"limit {HARD_MAX_MPH} mph (SR-1)"
            )
        for s in self.sessions:
            if s.belt_moving_s > s.cap_s + 1e-9:
                fails.append(
                    f"session {s.id}: belt moved {s.belt_moving_s:.2f} s, above its "
                    f"cap of {s.cap_s:g} s (SR-7)"
                )
        lim = self.loaded.config.safety
        if self.driver.max_up > lim.accel_mph_s + 1e-6:
            fails.append(
                f"commanded speed rose at {self.driver.max_up:.3f} mph/s, faster than "
                f"{lim.accel_mph_s} mph/s (SR-2)"
            )
        if self.driver.max_down > lim.decel_mph_s + 1e-6:
            fails.append(
                f"commanded speed fell at {self.driver.max_down:.3f} mph/s outside an "
                f"emergency stop, faster than {lim.decel_mph_s} mph/s (SR-2)"
            )
        state = self.core.state
        if exp.final_state is not None and state is not exp.final_state:
            fails.append(f"expected final state {exp.final_state.value}, was {state.value}")
        estops = [s.cause for s in self.stops if s.kind == "estop"]
        faults = [s.cause for s in self.stops if s.kind == "fault"]
        if exp.estops is not None and estops != [c.value for c in exp.estops]:
            fails.append(f"expected emergency stops {[c.value for c in exp.estops]}, got {estops}")
        if exp.faults is not None and faults != [c.value for c in exp.faults]:
            fails.append(f"expected faults {[c.value for c in exp.faults]}, got {faults}")
        ends = [s.end_reason for s in self.sessions]
        if exp.sessions is not None and ends != [r.value for r in exp.sessions]:
            fails.append(f"expected sessions ending {[r.value for r in exp.sessions]}, got {ends}")
        if exp.max_speed_mph is not None and self.belt.max_speed_mph > exp.max_speed_mph + 1e-6:
            fails.append(
                f"belt reached {self.belt.max_speed_mph:.3f} mph, above {exp.max_speed_mph} mph"
            )
        programs = [s.program for s in self.sessions]
        if exp.programs is not None and programs != exp.programs:
            fails.append(f"expected sessions of programs {exp.programs}, got {programs}")
        if exp.refusals is not None and self.refusals != [c.value for c in exp.refusals]:
            fails.append(
                f"expected refusals {[c.value for c in exp.refusals]}, got {self.refusals}"
            )
        seen = {ev.type for ev in self.events}
        for t in exp.events_include:
            if t not in seen:
                fails.append(f"expected a {t.value} event, none happened")
        for t in exp.events_exclude:
            if t in seen:
                fails.append(f"expected no {t.value} event, one happened")
        for i, step in enumerate(self.scenario.step):
            if id(step) in self._unplayed:
                why = (
                    f"no {step.after.value} event happened"
                    if step.after is not None and step.after in self._after
                    else "it fell after the end of the run"
                )
                fails.append(f"step {i + 1} ({_when(step)}) was never played: {why}")
        last = self.sessions[-1] if self.sessions else None
        self.system.close()
        return ScenarioResult(
            scenario=self.source,
            name=self.scenario.name,
            passed=not fails,
            final_state=state.value,
            max_speed_mph=self.belt.max_speed_mph,
            max_commanded_mph=self.driver.max_commanded,
            max_accel_mph_s=max(self.driver.max_up, self.driver.max_down),
            belt_moving_s=max((s.belt_moving_s for s in self.sessions), default=0.0),
            cap_s=None if last is None else last.cap_s,
            estops=self.stops,
            sessions=self.sessions,
            refusals=self.refusals,
            failures=fails,
            timeline=self.timeline,
        )


def run_virtual(
    scenario: Scenario,
    source: str,
    loaded: LoadedConfig,
    *,
    echo: Callable[[str], None] | None = None,
) -> ScenarioResult:
    """The whole scenario on the virtual clock: deterministic, much faster than real time."""
    loop = VirtualLoop()
    run = ScenarioRun(scenario, source, loaded, loop, echo=echo)
    run.start()
    run.schedule_ticks()
    loop.run_until(scenario.end)
    return run.finish()


async def run_realtime(
    scenario: Scenario,
    source: str,
    loaded: LoadedConfig,
    *,
    echo: Callable[[str], None] | None = None,
    speed: float = 1.0,
) -> ScenarioResult:
    """The scenario on asyncio's clock with the real control loop; ``speed`` > 1 plays faster.

    With a Trackmaster or Modbus configuration the configured driver talks over a real pty or
    socket to a simulated device, in real time.
    """
    loop = asyncio.get_running_loop()
    wire = not isinstance(loaded.config.drive, SimulatedDriveSection)
    if wire and speed != 1.0:
        raise SimulationError("a run through a wire driver plays in real time: leave out --speed")
    clock = ScaledClock(loop, speed)
    rig = await wire_rig(loaded, clock.time, clock.origin) if wire else None
    try:
        run = ScenarioRun(
            scenario,
            source,
            loaded,
            clock,
            echo=echo,
            status_every_s=10.0,
            time_scale=speed,
            rig=rig,
        )
        if rig is not None and echo is not None:
            echo(f"        {rig.description}")
        run.start()
        period = 1.0 / loaded.config.control.tick_hz
        done = asyncio.Event()
        clock.call_at(run.end_at, done.set)
        async with asyncio.TaskGroup() as tg:
            control = tg.create_task(run_control_loop(run.system, clock, period), name="control")
            driver = tg.create_task(run.driver.run(), name="driver")
            await done.wait()
            control.cancel()
            driver.cancel()
        return run.finish()
    finally:
        if rig is not None:
            closing = rig.close()
            if asyncio.iscoroutine(closing):
                await closing
