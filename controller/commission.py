"""``treadguard commission``: a technician proves every stop source on the machine.

Before a treadmill's first patient session, and again every ``commissioning.every_days``, each
way the belt can be stopped is shown to stop it, on the machine, through the same assembly the
daemon runs (:class:`controller.system.System`): an E-STOP (the command the tablet sends), each
grip released (a warning each) and both (an emergency stop), the fall input, the drive's own
deadman (its link cut with the belt at ``commissioning.proof_mph``) and the controlled stop at
a session's cap. Every stop's trigger-to-standstill time and the belt's deceleration are
measured and journaled; the passed run's figures become the treadmill's baseline per kind of
stop (:meth:`controller.journal.Journal.commissioned_baselines`). Until a run has passed and
while it is current, the safety core refuses every patient session (``preconditions_unmet``).

The procedure is a generator: it yields what it needs, an :class:`Ask` (the technician does
something on the machine and confirms) or a :class:`Wait` (a condition on the controller, with
a bound), and is played by a runner: :func:`run_simulated` on the virtual clock, where a
simulated technician performs every action on the simulated treadmill (unattended, so tests
run it for real).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from enum import StrEnum

from treadguard.config.loading import LoadedConfig
from treadguard.config.schema import CommissioningSection, SimulatedDriveSection
from treadguard.contract.mqtt import JsonObject
from treadguard.controller.control import Timers
from treadguard.controller.drives import in_process_rig
from treadguard.controller.journal import CommissioningOutcome, JournalError, ProofRecord
from treadguard.controller.system import System, open_journal
from treadguard.drivers.base import DriveStatus, failure_of
from treadguard.safety.decisions import (
    ACCEPTED,
    Accepted,
    Cause,
    Event,
    EventType,
    RefusalCode,
    Refused,
    Reply,
    State,
)
from treadguard.safety.inputs import (
    CommissionAbort,
    CommissioningCommand,
    DriveFailure,
    EStop,
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    Reset,
    StartSession,
)
from treadguard.safety.limits import STANDSTILL_MPH
from treadguard.safety.stop_baseline import StopKind
from treadguard.simulator.virtual_loop import VirtualLoop

PROOF_USER = "commissioning"  # the proof runs' sessions in the journal
HEARTBEAT_S = 1.0  # the commissioning tool is the tablet during the proof runs
POLL_S = 0.05  # how often a runner looks at a Wait's condition
SPEED_MARGIN_MPH = 0.02  # the belt counts as at the proof speed this close to it
SETTLE_S = 10.0  # a start, a reset, a warning: each is given this long
TECHNICIAN_WATCH_S = 15.0  # the simulated technician watches a belt run down this long at most


class Act(StrEnum):
    """What the technician is asked to do on the machine."""

    STAND_ON = "stand_on"  # on the belt, both hands on the grip sensors
    GIVE_ESTOP = "give_estop"
    RELEASE_LEFT = "release_left"
    RELEASE_RIGHT = "release_right"
    RELEASE_BOTH = "release_both"
    HOLD_BOTH = "hold_both"
    FALL = "fall"
    STAND_UP = "stand_up"
    CUT_LINK = "cut_link"
    RESTORE_LINK = "restore_link"  # once the belt stands still: its answer is when it did


ASK_TEXT = {
    Act.STAND_ON: "Stand on the belt and hold both handrail grips; keep holding until told.",
    Act.GIVE_ESTOP: (
        "The belt runs at the proof speed: press E-STOP on the tablet page, then confirm "
        "(a confirmation alone sends the same command)."
    ),
    Act.RELEASE_LEFT: "Let go of the LEFT grip only (keep the right one held).",
    Act.RELEASE_RIGHT: "Let go of the RIGHT grip only (keep the left one held).",
    Act.RELEASE_BOTH: "Let go of BOTH grips and keep them released.",
    Act.HOLD_BOTH: "Hold both grips again.",
    Act.FALL: "Trigger the fall input (the fall sensor's test, or the fall detector's cue).",
    Act.STAND_UP: "Clear the fall input.",
    Act.CUT_LINK: "Unplug the drive's cable now (the link to the drive is cut, belt running).",
    Act.RESTORE_LINK: "When the belt stands still, plug the drive's cable back in and confirm.",
}


class ProofStep(StrEnum):
    ESTOP = "estop"
    GRIP_LEFT = "grip_left"
    GRIP_RIGHT = "grip_right"
    GRIPS = "grips"
    FALL = "fall"
    DEADMAN = "deadman"
    CAP = "cap"


STEP_TITLES = {
    ProofStep.ESTOP: "E-STOP command",
    ProofStep.GRIP_LEFT: "left grip released",
    ProofStep.GRIP_RIGHT: "right grip released",
    ProofStep.GRIPS: "both grips released",
    ProofStep.FALL: "fall input",
    ProofStep.DEADMAN: "drive deadman (link cut)",
    ProofStep.CAP: "controlled stop at the cap",
}


@dataclass(frozen=True)
class Ask:
    """The technician does ``act`` and confirms; the answer is the time they did (for
    RESTORE_LINK: the time they saw the belt stand still)."""

    act: Act

    @property
    def text(self) -> str:
        return ASK_TEXT[self.act]


@dataclass(frozen=True)
class Wait:
    """Until ``until()`` holds, at most ``within`` seconds; the answer is whether it held."""

    what: str
    until: Callable[[], bool]
    within: float


Procedure = Generator[Ask | Wait, float | bool, "CommissioningResult"]


@dataclass
class CommissioningResult:
    run: int | None
    outcome: CommissioningOutcome
    proofs: list[ProofRecord] = field(default_factory=list)
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.outcome is CommissioningOutcome.PASSED


@dataclass
class _Stop:
    """An emergency stop or fault latched by the core, or the controlled stop at the cap:
    when, why, and the belt's speed then."""

    t: float
    cause: str
    speed_mph: float
    # The newest drive status's time when it happened (for a lost link: about when it was cut).
    status_t: float | None = None


class Commissioner:
    """The procedure over a :class:`System`: it starts the proof runs, gives the E-STOP and
    the resets, plays the tablet's heartbeat, and measures each stop from the controller's
    own drive statuses."""

    def __init__(
        self,
        system: System,
        *,
        technician: str,
        simulated: bool,
        echo: Callable[[str], None] = lambda _line: None,
    ) -> None:
        self.system = system
        self.cfg: CommissioningSection = system.loaded.config.commissioning
        self.program = system.loaded.config.programs.default
        self.technician = technician
        self.simulated = simulated
        self.echo = echo
        self._latch: _Stop | None = None
        self._cap_stop: _Stop | None = None
        self._warned: set[str] = set()
        self._standstill_t: float | None = None
        self._run: int | None = None
        # The proof run under way: the session this run started itself (no other is used).
        self._session: str | None = None
        # What the run is at, for the tablet (GuidedRun): the proof under way, and the last
        # proof's outcome and figures.
        self.step: ProofStep | None = None
        self.last_proof: ProofRecord | None = None
        # The deadman's proof: the drive's first status once its cut link is back.
        self._link_back: DriveStatus | None = None
        system.subscribe(self._on_event, name="commissioning")
        system.status_watchers.append(self._on_status)

    # ------------------------------------------------------------------ watching

    def _on_event(self, event: Event) -> None:
        status = self.system.controller.last_status
        speed = status.speed_mph if status is not None else 0.0
        if event.type in (EventType.ESTOP, EventType.FAULT) and self._latch is None:
            cause = str(event.fields.get("cause"))
            self._latch = _Stop(event.t, cause, speed, None if status is None else status.t)
        elif event.type is EventType.STOPPING and event.fields.get("reason") == "cap":
            self._cap_stop = _Stop(event.t, "cap", speed)
        elif event.type is EventType.GRIP_WARNING:
            self._warned.add(str(event.fields.get("hand")))

    def _on_status(self, status: DriveStatus) -> None:
        """Every status the control tick reads: during the deadman's proof, once the link
        was lost (the drive_link latch), the first status the drive answers again is kept. A
        status still carrying the link's fault is the loss being reported, not an answer."""
        latch = self._latch
        if self.step is not ProofStep.DEADMAN or self._link_back is not None or latch is None:
            return
        if latch.cause != Cause.DRIVE_LINK.value:
            return
        lost_after = latch.status_t if latch.status_t is not None else latch.t
        if status.t <= lost_after:
            return
        if status.fault is not None and failure_of(status.fault) is DriveFailure.LINK:
            return
        self._link_back = status

    def heartbeat(self) -> None:
        """The tablet's heartbeat, every HEARTBEAT_S while the tool runs (SR-12)."""
        clock = self.system.clock
        self.system.execute(Heartbeat(t=clock.time()))
        clock.call_at(clock.time() + HEARTBEAT_S, self.heartbeat)

    def _status(self) -> DriveStatus | None:
        return self.system.controller.last_status

    def _at_speed(self) -> bool:
        """The run's own proof session runs at the proof speed (a session it did not start
        is never taken for one)."""
        status = self._status()
        snap = self.system.core.snapshot()
        return (
            snap.state is State.RUNNING
            and self._session is not None
            and snap.session is not None
            and snap.session.id == self._session
            and status is not None
            and status.speed_mph >= self.cfg.proof_mph - SPEED_MARGIN_MPH
        )

    def _still(self) -> bool:
        status = self._status()
        return status is not None and status.speed_mph <= STANDSTILL_MPH

    def _standstill_after(self, t: float) -> Callable[[], bool]:
        """A condition: a drive status after ``t`` shows standstill (its time is kept)."""

        def still() -> bool:
            status = self._status()
            if status is not None and status.t >= t and status.speed_mph <= STANDSTILL_MPH:
                self._standstill_t = status.t
                return True
            return False

        self._standstill_t = None
        return still

    # ------------------------------------------------------------------ the procedure

    def procedure(self) -> Procedure:
        journal = self.system.journal
        wall = self.system.wall
        if journal is None:
            return CommissioningResult(
                None,
                CommissioningOutcome.ABORTED,
                detail=f"the journal cannot be written ({self.system.journal_problem})",
            )
        try:
            run = journal.begin_commissioning(
                wall(),
                technician=self.technician,
                simulated=self.simulated,
                machine=self.system.machine,
            )
        except JournalError as exc:
            return CommissioningResult(None, CommissioningOutcome.ABORTED, detail=str(exc))
        self._run = run
        result = CommissioningResult(run, CommissioningOutcome.PASSED)
        self.step = ProofStep.ESTOP  # standing on the belt is the first proof's preparation
        yield Ask(Act.STAND_ON)
        for step in ProofStep:
            self.step = step
            proof = yield from self._prove(step)
            self.last_proof = proof
            result.proofs.append(proof)
            verdict = "pass" if proof.passed else "FAIL"
            figures = ""
            if proof.standstill_s is not None:
                figures = f": standstill after {proof.standstill_s:.2f} s"
                if proof.deceleration_mph_per_s is not None:
                    figures += f", {proof.deceleration_mph_per_s:.2f} mph/s"
            self.echo(f"  {verdict:4} {STEP_TITLES[step]}{figures}; {proof.detail}")
            try:
                journal.record_proof(run, proof, wall())
            except JournalError as exc:
                result.outcome, result.detail = CommissioningOutcome.ABORTED, str(exc)
                return result
            if not proof.passed:
                result.outcome = CommissioningOutcome.FAILED
                result.detail = f"{STEP_TITLES[step]}: {proof.detail}"
                break
        yield from self._settle()
        try:
            journal.end_commissioning(run, wall(), result.outcome, result.detail)
        except JournalError as exc:
            result.outcome, result.detail = CommissioningOutcome.ABORTED, str(exc)
        return result

    def abort(self, detail: str) -> CommissioningResult:
        """The run given up part way: journaled as aborted (it proves nothing)."""
        journal = self.system.journal
        if self._run is not None and journal is not None:
            try:
                journal.end_commissioning(
                    self._run, self.system.wall(), CommissioningOutcome.ABORTED, detail
                )
            except JournalError as exc:
                detail += f" (not journaled: {exc})"
        return CommissioningResult(self._run, CommissioningOutcome.ABORTED, detail=detail)

    def _settle(self) -> Generator[Ask | Wait, float | bool, bool]:
        """Back to idle at standstill, any latch reset (SR-6: standstill, cause cleared)."""
        system = self.system
        if system.core.latch is not None:
            yield Wait("standstill", self._still, SETTLE_S)

            def reset() -> bool:
                reply = system.execute(Reset(t=system.clock.time()))
                return isinstance(reply, Accepted) or system.core.latch is None

            if not (yield Wait("the reset", reset, SETTLE_S)):
                return False
        self._latch = None
        self._cap_stop = None
        self._warned.clear()
        return True

    def _start(self) -> Generator[Ask | Wait, float | bool, str | None]:
        """A proof run at the proof speed; None once the belt runs at it, else why not."""
        system = self.system
        if system.core.latch is None and self._at_speed():
            return None  # the proof run under way goes on (the grips' proofs share one)
        if not (yield from self._settle()):
            return f"the latch could not be reset: {system.core.latch}"
        refusal = ""

        def start() -> bool:
            nonlocal refusal
            if system.core.state is not State.IDLE:
                return False
            reply = system.execute(
                StartSession(
                    t=system.clock.time(),
                    user=PROOF_USER,
                    program=self.program,
                    # The shortest cap the program allows: the cap's proof waits for it.
                    cap_s=system.loaded.programs[self.program].cap_s_min,
                    target_mph=self.cfg.proof_mph,
                ),
                proof_run=True,
            )
            refusal = "" if isinstance(reply, Accepted) else getattr(reply, "message", "")
            if isinstance(reply, Accepted):
                started = system.core.snapshot().session
                self._session = None if started is None else started.id
            return isinstance(reply, Accepted)

        # A reset's readings and statuses may take a report interval to come fresh: a start
        # is tried again while refused, for a few seconds.
        if not (yield Wait("the proof run's start", start, SETTLE_S)):
            return f"the proof run did not start: {refusal}"
        lim = system.loaded.config.safety
        ramp = lim.countdown_s + self.cfg.proof_mph / lim.accel_mph_s + SETTLE_S
        if not (yield Wait("the proof speed", self._at_speed, ramp)):
            return f"the belt did not reach {self.cfg.proof_mph:g} mph"
        return None

    def _prove(self, step: ProofStep) -> Generator[Ask | Wait, float | bool, ProofRecord]:
        if step in (ProofStep.GRIP_LEFT, ProofStep.GRIP_RIGHT):
            return (yield from self._prove_one_grip(step))
        if step is ProofStep.DEADMAN:
            return (yield from self._prove_deadman())
        if step is ProofStep.CAP:
            return (yield from self._prove_cap())
        return (yield from self._prove_emergency(step))

    def _prove_emergency(self, step: ProofStep) -> Generator[Ask | Wait, float | bool, ProofRecord]:
        cause, act, undo = {
            ProofStep.ESTOP: (Cause.REMOTE_ESTOP, Act.GIVE_ESTOP, None),
            ProofStep.GRIPS: (Cause.GRIP_LOST, Act.RELEASE_BOTH, Act.HOLD_BOTH),
            ProofStep.FALL: (Cause.FALL, Act.FALL, Act.STAND_UP),
        }[step]
        kind = StopKind.EMERGENCY
        why = yield from self._start()
        if why is not None:
            return ProofRecord(step.value, kind, False, detail=why)
        yield Ask(act)
        if act is Act.GIVE_ESTOP and self._latch is None:
            # The tablet's E-STOP (unless the tablet page gave it already): the same command,
            # through the same path.
            self.system.execute(EStop(t=self.system.clock.time()))
        lim = self.system.loaded.config.safety
        latched = yield Wait("the stop", lambda: self._latch is not None, lim.grip_debounce_s + 2)
        if not latched or self._latch is None:
            # The stop source did not stop the belt: stopped now, the tablet's E-STOP way,
            # before anything more is asked of the technician standing on it, and the run
            # ends failed.
            self.system.execute(EStop(t=self.system.clock.time()))
            return ProofRecord(
                step.value,
                kind,
                False,
                detail="no emergency stop followed (the belt was stopped with an E-STOP)",
            )
        record = yield from self._measure(step, kind, self.cfg.max_emergency_standstill_s)
        if undo is not None:
            yield Ask(undo)
        if self._latch.cause != cause.value:
            return ProofRecord(
                step.value,
                kind,
                False,
                detail=f"stopped with cause {self._latch.cause}, not {cause}",
            )
        return record

    def _measure(
        self, step: ProofStep, kind: StopKind | None, bound: float
    ) -> Generator[Ask | Wait, float | bool, ProofRecord]:
        stop = self._latch if kind is StopKind.EMERGENCY else self._cap_stop
        if stop is None:
            return ProofRecord(step.value, kind, False, detail="no stop to measure")
        still = yield Wait("standstill", self._standstill_after(stop.t), bound + SETTLE_S)
        if not still or self._standstill_t is None:
            return ProofRecord(
                step.value, kind, False, detail=f"no standstill within {bound + SETTLE_S:g} s"
            )
        return _figures(step, kind, stop.speed_mph, self._standstill_t - stop.t, bound)

    def _prove_one_grip(self, step: ProofStep) -> Generator[Ask | Wait, float | bool, ProofRecord]:
        hand = Hand.LEFT if step is ProofStep.GRIP_LEFT else Hand.RIGHT
        why = yield from self._start()
        if why is not None:
            return ProofRecord(step.value, None, False, detail=why)
        yield Ask(Act.RELEASE_LEFT if hand is Hand.LEFT else Act.RELEASE_RIGHT)
        warned = yield Wait(f"the {hand.value} grip's warning", lambda: hand in self._warned, 2.0)
        yield Ask(Act.HOLD_BOTH)
        if not warned:
            return ProofRecord(step.value, None, False, detail=f"no {hand.value} grip warning")
        if self._latch is not None:
            return ProofRecord(
                step.value, None, False, detail=f"one grip stopped the belt ({self._latch.cause})"
            )
        self._warned.discard(hand.value)
        return ProofRecord(step.value, None, True, detail=f"{hand.value} grip warning, belt ran on")

    def _prove_deadman(self) -> Generator[Ask | Wait, float | bool, ProofRecord]:
        step = ProofStep.DEADMAN
        why = yield from self._start()
        if why is not None:
            return ProofRecord(step.value, None, False, detail=why)
        status = self._status()
        speed = status.speed_mph if status is not None else self.cfg.proof_mph
        self._link_back = None
        cut_t = yield Ask(Act.CUT_LINK)
        seen_t = yield Ask(Act.RESTORE_LINK)
        assert isinstance(cut_t, float)
        assert isinstance(seen_t, float)
        latch = self._latch
        if latch is None or latch.cause != Cause.DRIVE_LINK.value:
            why = "no drive_link fault while the cable was out"
            if latch is not None:
                why += f" (latched {latch.cause} instead)"
            return ProofRecord(step.value, None, False, detail=why)
        if latch.status_t is not None:
            # The last status the drive answered is when the link was cut (within a poll),
            # closer than the technician's confirmation, which comes after the pull.
            cut_t = min(cut_t, latch.status_t)
        # The link is back: the drive's FIRST status must show the belt at standstill, stopped
        # by the drive itself while nothing reached it. Any later status could show a belt
        # stopped by treadguard's own latched stop, which goes out as soon as the link is back
        # (a drive without a communication time-out, its cable plugged back while the belt
        # still ran, would pass on it).
        answered = yield Wait(
            "the drive's first status", lambda: self._link_back is not None, SETTLE_S
        )
        back = self._link_back
        if not answered or back is None:
            return ProofRecord(
                step.value, None, False, detail="no status from the drive once the link was back"
            )
        if back.speed_mph > STANDSTILL_MPH:
            return ProofRecord(
                step.value,
                None,
                False,
                detail=(
                    f"the belt was still moving ({back.speed_mph:.2f} mph) when the drive "
                    "answered again: its communication time-out did not stop it"
                ),
            )
        bound = self.cfg.max_deadman_standstill_s
        # Not a baseline: the drive's own deadman, not a stop treadguard commands. Standstill
        # came no later than the technician saw it, nor than the first status showing it.
        return _figures(step, None, speed, min(seen_t, back.t) - cut_t, bound)

    def _prove_cap(self) -> Generator[Ask | Wait, float | bool, ProofRecord]:
        step = ProofStep.CAP
        kind = StopKind.CONTROLLED
        why = yield from self._start()
        if why is not None:
            return ProofRecord(step.value, kind, False, detail=why)
        session = self.system.core.snapshot().session
        cap = session.cap_s if session is not None else 0.0
        if not (yield Wait("the cap", lambda: self._cap_stop is not None, cap + SETTLE_S)):
            return ProofRecord(step.value, kind, False, detail=f"no stop at the cap ({cap:g} s)")
        return (yield from self._measure(step, kind, self.cfg.max_controlled_standstill_s))


def _figures(
    step: ProofStep, kind: StopKind | None, speed: float, standstill_s: float, bound: float
) -> ProofRecord:
    standstill_s = max(standstill_s, 0.0)
    decel = speed / standstill_s if standstill_s > 0 else None
    passed = standstill_s <= bound
    detail = f"from {speed:.2f} mph; bound {bound:g} s"
    if not passed:
        detail = f"standstill took {standstill_s:.2f} s, over the bound of {bound:g} s"
    return ProofRecord(step.value, kind, passed, round(standstill_s, 3), decel, detail)


def nominal_proofs(loaded: LoadedConfig) -> list[ProofRecord]:
    """The figures a passed run on the simulated treadmill shows (the simulated drive's
    braking; its defaults for a wire drive), for journals seeded with a commissioning
    (:func:`controller.journal.seed_commissioning`)."""
    cfg = loaded.config
    drive = (
        cfg.drive
        if isinstance(cfg.drive, SimulatedDriveSection)
        else SimulatedDriveSection(kind="simulator")
    )
    mph = cfg.commissioning.proof_mph
    emergency = mph / drive.estop_decel_mph_s
    deadman = drive.deadman_s + drive.lag_s + mph / drive.decel_mph_s
    controlled = drive.lag_s + mph / min(cfg.safety.decel_mph_s, drive.decel_mph_s)
    proofs = []
    for step in ProofStep:
        if step in (ProofStep.GRIP_LEFT, ProofStep.GRIP_RIGHT):
            proofs.append(ProofRecord(step.value, None, True, detail="grip warning, belt ran on"))
            continue
        kind: StopKind | None = StopKind.EMERGENCY
        took, bound = emergency, cfg.commissioning.max_emergency_standstill_s
        if step is ProofStep.DEADMAN:
            kind, took, bound = None, deadman, cfg.commissioning.max_deadman_standstill_s
        elif step is ProofStep.CAP:
            kind, took = StopKind.CONTROLLED, controlled
            bound = cfg.commissioning.max_controlled_standstill_s
        proofs.append(_figures(step, kind, mph, took, bound))
    return proofs


# ---------------------------------------------------------------------- the simulated machine


class SimulatedMachine:
    """The simulated treadmill and a simulated technician on it: the in-process belt and its
    drive, and the grip and fall sensors reporting what the technician does."""

    def __init__(self, loaded: LoadedConfig, loop: VirtualLoop) -> None:
        self.loop = loop
        self.rig = in_process_rig(loaded, loop.time)
        self.hands = {Hand.LEFT: True, Hand.RIGHT: True}
        self.fallen = False
        self.report_s = loaded.config.sensors.report_interval_s
        self.system: System | None = None

    def attach(self, system: System) -> None:
        self.system = system
        self._report()

    def _report(self) -> None:
        system = self.system
        assert system is not None
        t = self.loop.time()
        for hand, held in self.hands.items():
            system.submit_reading(GripReading(t=t, hand=hand, held=held))
        system.submit_reading(FallReading(t=t, fallen=self.fallen))
        self.loop.call_at(t + self.report_s, self._report)

    def perform(self, act: Act) -> float:
        if act is Act.RELEASE_LEFT:
            self.hands[Hand.LEFT] = False
        elif act is Act.RELEASE_RIGHT:
            self.hands[Hand.RIGHT] = False
        elif act is Act.RELEASE_BOTH:
            self.hands = {Hand.LEFT: False, Hand.RIGHT: False}
        elif act in (Act.HOLD_BOTH, Act.STAND_ON):
            self.hands = {Hand.LEFT: True, Hand.RIGHT: True}
        elif act is Act.FALL:
            self.fallen = True
        elif act is Act.STAND_UP:
            self.fallen = False
        elif act is Act.CUT_LINK:
            self.rig.unplug()
        elif act is Act.RESTORE_LINK:
            return self._restore_at_standstill()
        return self.loop.time()

    def _restore_at_standstill(self) -> float:
        """The technician watches the belt run down, then plugs the cable back in: the
        answer is when they saw it stand still (the simulated belt's last moving moment)."""
        belt = self.rig.belt
        give_up = self.loop.time() + TECHNICIAN_WATCH_S
        while self.loop.time() < give_up:
            belt.advance(self.loop.time())
            if not belt.moving():
                break
            self.loop.run_until(self.loop.time() + POLL_S)
        seen = self.loop.time()
        if not belt.moving() and belt.last_moving_t is not None:
            seen = min(seen, belt.last_moving_t)
        self.rig.plug()
        return seen


def play_virtual(
    procedure: Procedure,
    loop: VirtualLoop,
    perform: Callable[[Act], float],
    echo: Callable[[str], None],
) -> CommissioningResult:
    """Plays the procedure on the virtual clock; every Ask is performed by ``perform``."""
    answer: float | bool | None = None
    while True:
        try:
            item = procedure.send(answer) if answer is not None else next(procedure)
        except StopIteration as done:
            result: CommissioningResult = done.value
            return result
        if isinstance(item, Ask):
            echo(f"  technician: {item.text}")
            answer = float(perform(item.act))
            continue
        deadline = loop.time() + item.within
        held = item.until()
        while not held and loop.time() < deadline:
            loop.run_until(min(deadline, loop.time() + POLL_S))
            held = item.until()
        answer = held


def run_simulated(
    loaded: LoadedConfig,
    journal_path: object = None,
    *,
    technician: str = "simulated technician",
    echo: Callable[[str], None] = lambda _line: None,
    wall: Callable[[], float] | None = None,
    machine: Callable[[LoadedConfig, VirtualLoop], SimulatedMachine] = SimulatedMachine,
) -> CommissioningResult:
    """The whole commissioning, unattended, on the simulated treadmill and the virtual clock,
    through the daemon's own assembly; its record goes into the journal at ``journal_path``
    (None: in memory). ``wall``: the records' wall clock (default: the real one; the virtual
    run takes a fraction of a second of it, so its records are stamped when it really ran)."""
    from pathlib import Path

    loop = VirtualLoop()
    wall_now = wall if wall is not None else time.time
    sim = machine(loaded, loop)
    path = None if journal_path is None else Path(str(journal_path))
    opened = open_journal(path, max_size_mb=loaded.config.journal.max_size_mb, wall=wall_now)
    system = System(loaded, loop, sim.rig.driver, opened, wall=wall_now)
    commissioner = Commissioner(system, technician=technician, simulated=True, echo=echo)
    system.start(restore_faults=False)  # commissioning is what clears a worn-brake fault
    sim.attach(system)
    commissioner.heartbeat()

    def tick(k: int) -> None:
        system.tick()
        loop.call_at((k + 1) * system.period_s, tick, k + 1)

    loop.call_at(0.0, tick, 0)
    # The daemon's start-up: the drive answers and the belt is confirmed still first.
    loop.run_until(1.0)
    try:
        return play_virtual(commissioner.procedure(), loop, sim.perform, echo)
    finally:
        system.close()


# ---------------------------------------------------------------------- the real machine


class Aborted(Exception):
    """The technician gave up (end of input, or "q")."""


AskTechnician = Callable[[Ask], Awaitable[float]]


async def play_realtime(
    procedure: Procedure,
    clock: Timers,
    ask: AskTechnician,
    *,
    shown: Callable[[Ask | Wait], None] = lambda _item: None,
    aborted: Callable[[], str | None] = lambda: None,
) -> CommissioningResult:
    """Plays the procedure in real time beside the running daemon: every Ask goes to the
    technician (``ask``), every Wait is looked at every POLL_S while the control loop runs.
    ``shown`` hears of each item as it comes (the tablet shows it); ``aborted`` says why the
    technician gave up, if they did, and is looked at while a Wait runs too (an Ask's own
    answer raises :class:`Aborted`)."""
    answer: float | bool | None = None
    while True:
        try:
            item = procedure.send(answer) if answer is not None else next(procedure)
        except StopIteration as done:
            result: CommissioningResult = done.value
            return result
        shown(item)
        if isinstance(item, Ask):
            answer = float(await ask(item))
            continue
        deadline = clock.time() + item.within
        held = item.until()
        while not held and clock.time() < deadline:
            why = aborted()
            if why is not None:
                raise Aborted(why)
            await asyncio.sleep(POLL_S)
            held = item.until()
        answer = held


TERMINAL_PROMPT = "   [Enter when done, q to give up; or Confirm on the tablet page] "


def proof_json(proof: ProofRecord | None) -> JsonObject | None:
    """A proof's outcome and figures, as the tablet shows them."""
    if proof is None:
        return None
    step = ProofStep(proof.step)
    return {
        "step": proof.step,
        "title": STEP_TITLES[step],
        "passed": proof.passed,
        "standstill_s": proof.standstill_s,
        "deceleration_mph_per_s": (
            None if proof.deceleration_mph_per_s is None else round(proof.deceleration_mph_per_s, 3)
        ),
        "detail": proof.detail,
    }


class GuidedRun:
    """A commissioning run on the real machine as the technician meets it, on the terminal
    and on the tablet page at once (:class:`controller.system.CommissioningDesk`): what it
    asks or waits for, published in the state; a confirmation from either, whichever comes
    first, answers the request; an abort from either stops the belt and ends the run.

    A tablet's confirmation names the request it answers (step and ask): one meant for an
    earlier request (a stale tap, a double tap) is refused, never taken for the next one.

    The terminal is read for the whole run, by the event loop (:class:`TerminalLines`), not
    only while a request is asked: ``q`` or the end of input gives up at any moment, also
    while the run waits for the belt. Enter answers the request asked now; typed when nothing
    is asked, or the first one after the tablet answered a request (it was typed for that
    one), it answers nothing, and the terminal says so."""

    def __init__(
        self,
        commissioner: Commissioner,
        clock: Timers,
        *,
        started_at: float,
        echo: Callable[[str], None],
        terminal: TerminalLines | None,
    ) -> None:
        self.commissioner = commissioner
        self.clock = clock
        self.started_at = started_at
        self.echo = echo
        self.terminal = terminal
        self.aborted: str | None = None
        self.result: CommissioningResult | None = None
        self._item: Ask | Wait | None = None
        self._asked: asyncio.Future[float] | None = None
        # The tablet answered a request since the terminal's last line: the next line was
        # typed for that request, and answers nothing.
        self._tablet_answered = False

    # ------------------------------------------------------------------ the state

    def as_json(self) -> JsonObject:
        step = self.commissioner.step
        out: JsonObject = {
            "step": None if step is None else step.value,
            "title": None if step is None else STEP_TITLES[step],
            "index": None if step is None else list(ProofStep).index(step) + 1,
            "of": len(ProofStep),
            "started_at": round(self.started_at, 3),
            "ask": None,
            "prompt": "",
            "waiting": None,
            "last_proof": proof_json(self.commissioner.last_proof),
            "outcome": None,
            "detail": "",
        }
        if self.result is not None:
            out["outcome"] = self.result.outcome.value
            out["detail"] = self.result.detail
        elif self.aborted is not None:
            out["outcome"] = CommissioningOutcome.ABORTED.value
            out["detail"] = self.aborted
        elif isinstance(self._item, Ask):
            out.update(ask=self._item.act.value, prompt=self._item.text, waiting="technician")
        elif isinstance(self._item, Wait):
            out.update(prompt=f"Wait: the treadmill is waiting for {self._item.what}.")
            out["waiting"] = "belt"
        return out

    def show(self, item: Ask | Wait) -> None:
        self._item = item

    # ------------------------------------------------------------------ the answers

    def answer(self, command: CommissioningCommand) -> Reply:
        """The tablet's confirm or abort (System.execute hands it over). Never raises."""
        if isinstance(command, CommissionAbort):
            self.abort("the technician gave up on the tablet")
            return ACCEPTED
        if self.result is not None or self.aborted is not None:
            outcome = self.result.outcome.value if self.result is not None else "aborted"
            return Refused(
                RefusalCode.PRECONDITIONS_UNMET,
                f"the commissioning run has ended ({outcome}): there is nothing to confirm",
            )
        item, step = self._item, self.commissioner.step
        if not isinstance(item, Ask) or step is None or self._asked is None or self._asked.done():
            what = item.what if isinstance(item, Wait) else "the next step"
            return Refused(
                RefusalCode.NOT_ALLOWED,
                f"nothing to confirm now: the treadmill is waiting for {what}",
            )
        if (command.step, command.ask) != (step.value, item.act.value):
            return Refused(
                RefusalCode.NOT_ALLOWED,
                f"this confirmation was for another request ({command.step}: {command.ask}) "
                f"than the one now asked ({STEP_TITLES[step]}: {item.text}) and was not taken: "
                "confirm again once that is done",
            )
        self._asked.set_result(self.clock.time())
        self._tablet_answered = self.terminal is not None
        self.echo("   confirmed on the tablet page")
        return ACCEPTED

    def abort(self, why: str) -> None:
        """The technician gives up: the belt gets an emergency stop at once, whatever the run
        is doing (an abort always stops), and the run ends as aborted."""
        self.commissioner.system.execute(EStop(t=self.clock.time()))
        if self.result is None and self.aborted is None:
            self.aborted = why
            self.echo(f"\n  aborted: {why}")
        if self._asked is not None and not self._asked.done():
            self._asked.set_exception(Aborted(why))

    async def ask(self, item: Ask) -> float:
        """An Ask, answered by the terminal or the tablet, whichever comes first."""
        if self.aborted is not None:
            raise Aborted(self.aborted)
        asked: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._asked = asked
        self.echo(f"\n>> {item.text}")
        if self.terminal is not None:
            self.echo(TERMINAL_PROMPT)
        try:
            return await asked
        finally:
            self._asked = None

    # ------------------------------------------------------------------ the terminal

    def listen(self) -> None:
        """Reads the terminal from now until :meth:`stop_listening` (the run's whole time)."""
        if self.terminal is not None:
            self.terminal.start(self._line)

    def stop_listening(self) -> None:
        if self.terminal is not None:
            self.terminal.stop()

    def _line(self, line: str | None) -> None:
        if self.result is not None or self.aborted is not None:
            return  # the run is over
        if line is None:
            self.abort("the end of input")
            return
        if line.strip().lower() in ("q", "quit"):
            self.abort("the technician gave up")
            return
        asked = self._asked
        stale, self._tablet_answered = self._tablet_answered, False
        if asked is None or asked.done():
            self.echo("   (nothing is asked now: that Enter answers nothing)")
            return
        if stale:
            # Typed for a request the tablet answered meanwhile: it answers nothing.
            self.echo(
                "   (that Enter came after the tablet confirmed the step before; press Enter again)"
            )
            return
        asked.set_result(self.clock.time())


class TerminalLines:
    """The technician's terminal, a file descriptor (stdin) read by the event loop as lines
    arrive (``add_reader``): no thread is left blocked in a read, so the run can be given up
    at any moment and the process exits cleanly after it. ``None`` is the end of input (or a
    terminal that cannot be read). A descriptor the loop cannot watch (a regular file, which
    never blocks) is read a piece per turn of the loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = b""
        self._on_line: Callable[[str | None], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watched = False

    def start(self, on_line: Callable[[str | None], None]) -> None:
        self._on_line = on_line
        self._loop = loop = asyncio.get_running_loop()
        try:
            loop.add_reader(self.fd, self._readable)
            self._watched = True
        except PermissionError:  # a regular file (or /dev/null): ready at every turn
            loop.call_soon(self._poll_file)
        except (OSError, ValueError):  # no terminal at all (stdin closed)
            loop.call_soon(self._ended)

    def stop(self) -> None:
        if self._watched and self._loop is not None:
            self._loop.remove_reader(self.fd)
        self._watched = False
        self._on_line = None

    def _poll_file(self) -> None:
        if self._on_line is None:
            return
        if self._readable() and self._loop is not None:
            self._loop.call_soon(self._poll_file)

    def _ended(self) -> None:
        on_line = self._on_line
        self.stop()
        if on_line is not None:
            on_line(None)

    def _readable(self) -> bool:
        """Reads what is there; False once the input has ended."""
        try:
            chunk = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:  # a terminal hung up (a pty's EIO): the end of input
            chunk = b""
        if not chunk:
            rest, self._buffer = self._buffer, b""
            if rest and self._on_line is not None:
                self._on_line(rest.decode(errors="replace"))
            self._ended()
            return False
        self._buffer += chunk
        while b"\n" in self._buffer and self._on_line is not None:
            line, _, self._buffer = self._buffer.partition(b"\n")
            self._on_line(line.decode(errors="replace"))
        return True


STDIN_FD = 0


def guided_errand(
    *,
    technician: str,
    echo: Callable[[str], None],
    results: list[CommissioningResult],
    terminal: int | None = STDIN_FD,
) -> Callable[[System], Awaitable[object]]:
    """The commissioning run beside the daemon on the real machine (``Daemon(errand=...)``),
    the technician guided on the terminal and on the tablet page (``terminal``: the file
    descriptor of the terminal's input, read for the whole run; None: the tablet only). A run
    given up is journaled as aborted, the belt stopped."""

    async def errand(system: System) -> object:
        commissioner = Commissioner(system, technician=technician, simulated=False, echo=echo)
        # The daemon's start-up: the belt confirmed still, the sensors read, before the first
        # proof run is tried.
        await asyncio.sleep(1.0)
        commissioner.heartbeat()
        lines = None if terminal is None else TerminalLines(terminal)
        run = GuidedRun(
            commissioner, system.clock, started_at=system.wall(), echo=echo, terminal=lines
        )
        system.commissioning_run = run
        procedure = commissioner.procedure()
        run.listen()
        try:
            result = await play_realtime(
                procedure, system.clock, run.ask, shown=run.show, aborted=lambda: run.aborted
            )
        except Aborted as exc:
            procedure.close()
            system.execute(EStop(t=system.clock.time()))
            result = commissioner.abort(f"aborted: {exc}")
        except asyncio.CancelledError:
            # The daemon was told to end (a signal: SSH dropped, Ctrl-C); its shutdown stops
            # the belt under control. The run is journaled as aborted, saying so, and the
            # command says what became of it.
            procedure.close()
            results.append(commissioner.abort("cut short: treadguard was told to end"))
            raise
        finally:
            run.stop_listening()
        # Kept on the tablet, with its outcome, until the daemon goes.
        run.result = result
        results.append(result)
        return result

    return errand
