"""The controller and everything that watches it, assembled in one place.

``treadguard run`` (the daemon) and ``treadguard simulate`` (a scenario) both build a
:class:`System`; they differ only in the clock (asyncio's, or the virtual one), the journal's
file (the configured one, or one in memory) and what is on the far side of the driver and
the sensors. So a scenario exercises what ships: the journal and the user's history (the
first-session rule), the refusal coalescer, the control loop's health and the handling of a
command that fails unexpectedly.

A tablet command, top to bottom (the MQTT link parses and answers it; everything between is
here):

1. :meth:`System.execute`: a start gets the user's history from the journal (first-session
   rules for anyone without one); a journal found broken is reported to the core first.
2. ``Controller.submit`` -> ``SafetyCore.handle``: the decision; the driver is commanded (an
   emergency stop before anything else happens).
3. The decision's events pass :meth:`System._admit` (the refusal coalescer, SR-14), then each
   listener in turn, under the controller's guard: :meth:`System._journal_event` first, always
   (attached here, before anything else can be), so an event is written before anyone
   can publish it; then whatever the caller attached (the MQTT link, systemd's status line, a
   scenario's recorder).
4. The link commits the journal (:meth:`System.commit_journal`) before it publishes, and
   publishes only what a sync has covered (:meth:`System.journal_marks`), so nothing is
   published that is not on disk. In the daemon the syncs run on a worker thread
   (controller/journal_sync.py): a slow disk holds up what is published, never the loop.

A command the link refused itself (malformed, retained, too old, rate-limited) comes in at
:meth:`System.refused_before_the_core` and takes step 3 like the core's refusals.
"""

from __future__ import annotations

import math
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Protocol

import structlog

from treadguard.config.loading import LoadedConfig
from treadguard.contract.measures import MEASURES, MeasureKind, value_problem
from treadguard.contract.mqtt import CommandReply, JsonObject, encode_programs
from treadguard.controller.control import Controller, EventListener, TimerHandle, Timers
from treadguard.controller.journal import (
    WARN_FRACTION,
    CommissioningStatus,
    Journal,
    JournalError,
    JournalInUse,
    Machine,
)
from treadguard.controller.journal_sync import JournalSync
from treadguard.controller.loop import LoopHealth
from treadguard.controller.plan import Proposal, first_session_start, propose
from treadguard.controller.proposal_book import (
    NotKnown,
    ProposalSource,
    StartChoice,
    WorkedOutOnDemand,
)
from treadguard.controller.refusals import RefusalCoalescer, SpeedChangeCoalescer
from treadguard.drivers.base import DriveStatus, TreadmillDriver
from treadguard.safety.core import STOP_WATCH_FAULT, SafetyCore
from treadguard.safety.decisions import (
    ACCEPTED,
    ARMED_STATES,
    Event,
    EventType,
    JsonScalar,
    RefusalCode,
    Refused,
    Reply,
    State,
)
from treadguard.safety.inputs import (
    BrakeFaultOnRecord,
    CommandLinkLost,
    Commissioning,
    CommissioningCommand,
    ConfirmFirstSession,
    EStop,
    FallReading,
    GripReading,
    JournalHealth,
    LoopOverrun,
    OutcomeAfter,
    OutcomeBefore,
    OutcomeCommand,
    PlanCommand,
    RecordMeasure,
    RivalDaemon,
    StartSession,
    TabletCommand,
)
from treadguard.safety.limits import STANDSTILL_MPH
from treadguard.safety.stop_baseline import StopBaseline, StopKind

JOURNAL_PERIOD_S = 0.5  # speed samples and a commit, at least this often
LATE_TICKS_TO_STOP = 3  # ticks more than two periods late within 20 periods: the session stops
FAILURE_LOG_EVERY_S = 1.0  # an unexpected failure of a reading's handling: logged this often
IN_MEMORY = None  # the journal's path for a simulation: a database in memory
# How often the commissioning record is read again: a commissioning passed meanwhile, or a wall
# clock stepped since start-up (NTP on a board without a real-time clock), is seen this soon.
COMMISSIONING_REFRESH_S = 10.0


# Outside a guided commissioning run, its commands are refused with this (preconditions_unmet).
NO_COMMISSIONING_RUN = (
    "no commissioning run is under way: a technician starts one with `treadguard commission` "
    "(the treadguard service stopped), and its steps can then be confirmed here"
)


# While `treadguard commission` runs, every start but its own proof runs' is refused with this
# (not_allowed): a patient's session never runs on a machine whose stops are being proven.
COMMISSIONING_UNDER_WAY = (
    "a commissioning run is under way: no session starts but its own proof runs until it has "
    "ended and the treadguard service runs again"
)


class CommissioningDesk(Protocol):
    """A guided commissioning run as the tablet sees it (controller/commission.py): what it
    waits for, and its answer to the technician's confirm or abort."""

    def answer(self, command: CommissioningCommand) -> Reply: ...

    def as_json(self) -> JsonObject: ...


def _reason(exc: Exception) -> str:
    """SQLite's own words for a journal error; the type too for anything unforeseen."""
    return str(exc) if isinstance(exc, JournalError) else f"{type(exc).__name__}: {exc}"


@dataclass
class JournalOpened:
    """What opening the journal found: the journal, or why there is none."""

    journal: Journal | None
    problem: str | None = None
    interrupted: tuple[int, ...] = ()
    # Another process holds the journal's lock (the daemon, a commissioning run): this one
    # must not drive the treadmill at all (the daemon refuses to start, see Daemon).
    in_use: bool = False


def open_journal(
    path: Path | None, *, max_size_mb: float, wall: Callable[[], float]
) -> JournalOpened:
    """The journal at ``path`` (``None``: in memory), with what a crash left open closed.

    A journal that cannot be opened does not stop the daemon: it serves the tablet with a
    latched fault that says why, and starts no session."""
    try:
        journal = (
            Journal.in_memory(max_size_mb=max_size_mb)
            if path is None
            else Journal.open(path, max_size_mb=max_size_mb, exclusive=True)
        )
        interrupted = journal.close_interrupted(wall())
    except JournalError as exc:
        return JournalOpened(None, str(exc), in_use=isinstance(exc, JournalInUse))
    return JournalOpened(journal, None, tuple(interrupted))


# The most entries of the clinician's record (outcome_before, outcome_after) one session keeps:
# a few corrections are expected; a tablet sending them in a loop must not fill the journal.
OUTCOME_ENTRIES_MAX = 20
# The most measures of one kind a user keeps for one day: a correction or two, never a flood.
MEASURES_A_DAY_MAX = 5
# The most measures the whole clinic records in one of its days, whatever their users and
# dates: a tablet sending one a day for years of days, or for thousands of user codes, would
# otherwise fill the journal (SR-14) and so stop the belt. Far above a clinic's real day.
MEASURES_A_CLINIC_DAY_MAX = 200
# A measure dated more than a year back is a slip of the finger (2016 for 2026), not a
# baseline: taken as one, it would be the baseline every view compares with, for good.
MEASURE_DAYS_BACK = 366


class System:
    """The safety core, the controller and their watchers: journal, refusal coalescer,
    loop health. See the module's docstring for a command's way through it."""

    def __init__(
        self,
        loaded: LoadedConfig,
        clock: Timers,
        driver: TreadmillDriver,
        journal: JournalOpened,
        *,
        wall: Callable[[], float],
        time_scale: float = 1.0,
        logger: Any = None,
        proposals: ProposalSource | None = None,
    ) -> None:
        """``proposals``: what a start without a program gets (controller/proposal_book.py);
        by default worked out from the journal when a start asks (a virtual run: nothing waits
        on the command path there); the daemon passes its book, kept off the command path."""
        cfg = loaded.config
        self.loaded = loaded
        self.clock = clock
        self.driver = driver
        # The one wall clock (SR-16): for the journal's records only.
        self.wall = wall
        self._log = logger if logger is not None else structlog.get_logger("treadguard")
        self.journal = journal.journal
        self.journal_problem = journal.problem
        # The daemon's: syncs on a worker thread (sync_in_background). Without it (a virtual
        # run, a journal in memory) each commit syncs where it is made.
        self.journal_sync: JournalSync | None = None
        self._on_durable: Callable[[], None] | None = None
        # The journal's marks when it failed, kept until the core has latched the fault.
        self._marks_at_failure: tuple[int, float] | None = None
        self._journal_tick_handle: TimerHandle | None = None
        # A session of a first-session program counts as the user's first treadmill session
        # only with at least its shortest cap of belt time, or a clinician's confirmation where
        # the clinic's rules allow one (SR-7, controller/first_session.py): stopped after a few
        # seconds, the user is still on first-session rules.
        self._first_session_minimum = {
            name: program.cap_s_min
            for name, program in loaded.programs.items()
            if program.first_session
        }
        # The others: a session of a program in neither (renamed or removed since) is judged
        # as a first session, fail-closed (controller/first_session.py).
        self._other_programs = frozenset(
            name for name, program in loaded.programs.items() if not program.first_session
        )
        self._journal_reported = False
        self._journal_used = 0.0
        self._journal_warned = False
        # Seen on the wall (a sped-up simulation's ticks are scenario seconds apart).
        self._time_scale = time_scale
        self.period_s = 1.0 / cfg.control.tick_hz
        self.health = LoopHealth(self.period_s / time_scale, late_ticks_to_stop=LATE_TICKS_TO_STOP)
        self.shutting_down = False  # set by the daemon's first signal: no start from then on
        # A guided commissioning run beside the daemon (``treadguard commission``), if one is on.
        self.commissioning_run: CommissioningDesk | None = None
        # Called with the drive's status after every control tick (the same status until a
        # new one arrives): the commissioning run watches the first status after a cut link.
        self.status_watchers: list[Callable[[DriveStatus], None]] = []
        # Set for the whole life of a daemon that runs a commissioning (before it connects
        # anything): only the run's own proof starts are taken (COMMISSIONING_UNDER_WAY).
        self.proof_starts_only = False
        sessions_before = self._last_session_id()
        # This treadmill and its drive: only a commissioning made on them counts.
        self.machine = Machine.of(cfg)
        self.commissioning = self._read_commissioning()
        self.core = SafetyCore(
            cfg.safety,
            loaded.programs,
            default_program=cfg.programs.default,
            returning_program=cfg.programs.returning,
            t0=clock.time(),
            sessions_before=sessions_before,
            commissioned_until=self._commissioned_until(self.commissioning),
            commissioning_detail=self.commissioning.detail,
            stop_margin=cfg.stop_watch.margin_pct / 100.0,
        )
        self.controller = Controller(self.core, driver, clock, logger=self._log)
        # One coalescer for every refusal, the core's and the contract's (SR-14).
        self.refusals = RefusalCoalescer()
        # And one for speed changes: a flood of accepted set_speed cannot fill it either.
        self.speed_changes = SpeedChangeCoalescer()
        # The stop-quality watch's yardsticks: the current commissioning's stops.
        self._baselines_from: float | None = None
        self._take_commissioned_baselines(self.commissioning)
        self.controller.gate = self._admit
        self.controller.subscribe(self._journal_event, name="journal")
        if proposals is None and self.journal is not None:
            proposals = WorkedOutOnDemand(
                self.journal, loaded.rules, loaded.programs, zone=cfg.clinic.zone(), wall=wall
            )
        self.proposals = proposals
        if proposals is not None:
            # After the journal: an entry is worked out from a record that holds the event.
            self.controller.subscribe(proposals.on_event, name="proposals")
        self.programs: JsonObject = encode_programs(
            loaded.programs,
            cfg.safety,
            default=cfg.programs.default,
            returning=cfg.programs.returning,
        )
        self._reading_failures = 0
        self._reading_failure_logged_t = -math.inf

    def subscribe(self, listener: EventListener, *, name: str) -> None:
        """Hear every event after the journal has written it (the controller's guard: a
        listener that raises is logged and the others still hear the event)."""
        self.controller.subscribe(listener, name=name)

    def start(self, *, restore_faults: bool = True) -> None:
        """Once the clock runs: the journal's problem (if any) to the core, a worn-brake fault
        on record (``restore_faults``: not for a commissioning run, which is what clears it,
        and whose proof stops a latch would refuse), the journal's half-second tick."""
        if self.journal_problem is not None:
            self._report_journal_problem()
        if restore_faults:
            self._restore_brake_fault()
        self._journal_tick()
        self.clock.call_at(self.clock.time() + COMMISSIONING_REFRESH_S, self._commissioning_tick)

    def _restore_brake_fault(self) -> None:
        """A restart is no reset: a worn-brake fault on record after the last passed
        commissioning is latched again (only the brake proven again clears it)."""
        if self.journal is None:
            return  # no journal: the core has latched that already, and refuses starts
        try:
            record = self.journal.last_brake_fault(STOP_WATCH_FAULT)
        except JournalError as exc:
            self._journal_failed(str(exc))
            return
        if record is None:
            return
        ts, kind, detail = record
        passed = self.commissioning.passed_at
        if passed is not None and passed > ts:
            return  # commissioned again since: the brake was proven
        self._log.warning("brake_fault_on_record", kind=kind, at=ts, detail=detail)
        self.controller.submit(BrakeFaultOnRecord(t=self.clock.time(), kind=kind, detail=detail))

    # ------------------------------------------------------------------ the control tick

    def tick(self) -> None:
        """The control tick, with what watches it: the loop's health (a tick more than two
        periods late is logged; LATE_TICKS_TO_STOP within twenty periods stop the session)
        and the session's top speed for the journal (its samples, twice a second, would miss
        a peak)."""
        now = self.clock.time()
        self.health.observe(now / self._time_scale)
        if self.health.overrun:
            self.health.overrun = False
            self._log.error("control_loop_overrun", **self.health.as_json())
            self.controller.submit(
                LoopOverrun(t=now, detail=f"{LATE_TICKS_TO_STOP} ticks late within a second")
            )
        elif self.health.last_lag_s > 2 * self.health.period_s:
            self._log.warning("control_tick_late", lag_ms=round(self.health.last_lag_s * 1e3, 1))
        self.controller.tick()
        status = self.controller.last_status
        if status is not None:
            if self.journal is not None:
                self.journal.observe_speed(status.speed_mph)
            for watch in self.status_watchers:
                try:
                    watch(status)
                except Exception as exc:  # the control tick goes on whatever a watcher does
                    self._log.error("status_watcher_failed", error=repr(exc))

    def set_stop_baselines(
        self,
        baselines: Mapping[StopKind, StopBaseline],
        slow_in_a_row: Mapping[StopKind, int] | None = None,
    ) -> None:
        """The treadmill's commissioned stops (commissioning, or a scenario's world): every
        later stop of a kind is compared with its baseline; a kind left out is not compared
        (the state's ``stop_watch`` and each ``stop_checked`` event say so). New baselines start
        every run of slow stops again and let a worn-brake fault be reset. A baseline that
        cannot be one raises ValueError and nothing changes; logged either way."""
        try:
            self.core.set_stop_baselines(baselines, slow_in_a_row)
        except ValueError as exc:
            self._log.error("stop_baselines_refused", error=str(exc))
            raise
        self._log.info(
            "stop_baselines_set",
            kinds=sorted(kind.value for kind in baselines),
            missing=sorted(kind.value for kind in StopKind if kind not in baselines),
        )
        # A standstill is seen at a drive status: one status period late is as much as the
        # margin on a short stop, so a good brake may read slow (docs/stop-watch.md).
        period = self.status_period_s()
        margin = self.loaded.config.stop_watch.margin_pct / 100.0
        for kind, baseline in baselines.items():
            if period > margin * baseline.standstill_s:
                self._log.warning(
                    "stop_baseline_coarse",
                    kind=kind.value,
                    standstill_s=baseline.standstill_s,
                    status_period_s=period,
                    margin_pct=margin * 100.0,
                    message=(
                        f"one drive status period ({period:g} s) is more than "
                        f"{margin * 100:g} % of the {kind.value} stop's {baseline.standstill_s:g}"
                        " s: a good stop may read slow; poll the drive faster or widen "
                        "stop_watch.margin_pct"
                    ),
                )

    def status_period_s(self) -> float:
        """How often the drive's status is read: the driver's poll interval, or the control
        tick for the in-process simulated drive."""
        poll = getattr(self.loaded.config.drive, "poll_interval_s", None)
        return float(poll) if isinstance(poll, int | float) else self.period_s

    def stop_watch_state(self) -> JsonObject:
        """The state's ``stop_watch`` extension: the margin, and per kind whether there is a
        baseline (none: not compared), how many stops in a row were slow and the last verdict."""
        view = self.core.snapshot().stop_watch
        assert view is not None
        kinds: JsonObject = {}
        for kind in StopKind:
            kinds[kind.value] = {
                "baseline": view.baselines[kind],
                "slow_in_a_row": view.slow_in_a_row[kind],
                "last": view.last.get(kind),
            }
        return {
            "margin_pct": round(view.margin * 100.0, 3),
            "fault_pending": view.fault_pending,
            **kinds,
        }

    def at_standstill(self) -> bool:
        snap = self.core.snapshot()
        return (
            snap.state not in ARMED_STATES
            and snap.commanded_mph == 0.0
            and snap.belt_mph <= STANDSTILL_MPH
        )

    # ------------------------------------------------------------------ commands

    def execute(self, command: TabletCommand, *, proof_run: bool = False) -> Reply | None:
        """A tablet command; a start carries the user's history from the journal.
        ``proof_run``: a start of ``treadguard commission``'s, allowed on a treadmill whose
        commissioning is not current (every other start is refused then). A commissioning
        run's confirm or abort goes to the run (refused when there is none), never to the core.

        Should its handling fail unexpectedly, the belt is stopped and held (fail closed)
        and the exception goes on to the caller (the contract answers ``internal_error`` and
        hands it to :meth:`refused_before_the_core`, SR-15)."""
        try:
            if isinstance(command, CommissioningCommand):
                return self._to_commissioning_run(command)
            if isinstance(command, OutcomeCommand):
                return self._record_outcome(command)
            if isinstance(command, PlanCommand):
                return self._plan_command(command)
            if isinstance(command, StartSession):
                if self.shutting_down:
                    return Refused(RefusalCode.NOT_ALLOWED, "the daemon is shutting down")
                if self.proof_starts_only and not proof_run:
                    # A tablet's start while the stops are being proven: a worn-brake fault on
                    # record is not latched here (the proof runs must stop the belt to prove
                    # the brake), so nothing else may start at all.
                    self._refusal(
                        command.TYPE.value, RefusalCode.NOT_ALLOWED.value, COMMISSIONING_UNDER_WAY
                    )
                    return Refused(RefusalCode.NOT_ALLOWED, COMMISSIONING_UNDER_WAY)
                # A proof run (commissioning) only when the commissioning tool says so, never
                # because a command carried it.
                command = replace(command, returning=self._returning(command.user), proof=proof_run)
                if command.program is None and not proof_run:
                    chosen = self._from_history(command)
                    if isinstance(chosen, Refused):
                        return chosen
                    command = chosen
            if self.journal_problem is not None:
                # Found during this read (its report is only scheduled): the core hears of it
                # before the command, so no start goes ahead on a journal known to be broken.
                self._report_journal_problem()
            return self.controller.submit(command).reply
        except BaseException as exc:
            # Whatever ended the handling, a cancellation included, and whatever the command:
            # the core may have acted on it or not (a start accepted and then failing would
            # run its countdown though the tablet was told it failed). Fail closed: the belt
            # is stopped and held at 0 until the core itself is idle.
            self.controller.hold_stopped(f"{command.TYPE.value} failed: {exc!r}")
            raise

    def _from_history(self, command: StartSession) -> StartSession | Refused:
        """A start without a program: the program and cap (unless the start names one) of the
        user's proposal. For a user whose first session counts, as the book has it, holds
        included, refused saying why while their entry is not current; for one whose first
        session does not count yet, the rules' first-session program at the user's own cap or
        its default, as their proposal says (controller/plan.py), without the book. A cap
        above it is refused either way. A treadmill that is not idle leaves the start to the
        core, which refuses it for that."""
        if self.core.state is not State.IDLE:
            return command
        user = command.user.strip()
        chosen: StartChoice | NotKnown
        why = None if self.proposals is None else self.proposals.refusal()
        if why is not None:  # the rules on disk are not the ones this daemon runs
            chosen = NotKnown(why)
        elif not command.returning:
            program, cap_s = first_session_start(self.loaded.rules, self.loaded.programs, user)
            chosen = StartChoice(program, cap_s, "a first session")
        elif self.proposals is None:
            return command
        else:
            chosen = self.proposals.choice(user)
        if isinstance(chosen, NotKnown):
            reply = Refused(RefusalCode.PRECONDITIONS_UNMET, f"cannot start: {chosen.why}")
            self._refusal(command.TYPE.value, reply.code.value, reply.message)
            return reply
        if command.shown is not None and command.shown != (chosen.program, chosen.cap_s):
            # The tablet showed another start (the user's record changed since it asked):
            # started now, it would be more, or other, than the clinician saw.
            shown_program, shown_cap = command.shown
            reply = Refused(
                RefusalCode.PRECONDITIONS_UNMET,
                f"cannot start: a start from history gives {user} {chosen.program} at "
                f"{chosen.cap_s:g} s now ({chosen.reason}), not the {shown_program} at "
                f"{shown_cap:g} s shown: their record changed since; look at their history "
                "again, or choose a program",
            )
            self._refusal(command.TYPE.value, reply.code.value, reply.message)
            return reply
        if command.cap_s is not None and command.cap_s > chosen.cap_s:
            # A start from history asks for what the record proposes: more than that (above a
            # hold, say) is the clinician's to ask by naming the program.
            reply = Refused(
                RefusalCode.OUT_OF_RANGE,
                f"cap_s {command.cap_s:g} is above the {chosen.cap_s:g} s a start from history "
                f"gives {command.user.strip()} ({chosen.reason}): name the program to start "
                "it with a longer cap",
            )
            self._refusal(command.TYPE.value, reply.code.value, reply.message)
            return reply
        cap = chosen.cap_s if command.cap_s is None else command.cap_s
        return replace(command, program=chosen.program, cap_s=cap)

    def _record_outcome(self, command: OutcomeCommand) -> Reply:
        """The clinician's record of a session, journaled as an ``outcome_recorded`` event
        (and published like any other, once on disk). The session must be on record; the
        belt, the core and a session under way are not touched."""
        session_id = int(command.session_id)
        try:
            row = self.journal.session(session_id) if self.journal is not None else None
            entries = len(self.journal.outcome_entries(session_id)) if row and self.journal else 0
        except JournalError as exc:  # a journal that cannot be read: a journal failure
            self._journal_failed(str(exc))
            row, entries = None, 0
        if self.journal is None:
            reply = Refused(
                RefusalCode.PRECONDITIONS_UNMET,
                f"the journal cannot be written ({self.journal_problem or 'none open'})",
            )
        elif row is None:
            reply = Refused(RefusalCode.NOT_ALLOWED, f"no session {command.session_id} on record")
        elif command.user is not None and command.user != row.user:
            reply = _not_theirs(command.session_id, command.user)
        elif isinstance(command, OutcomeAfter) and row.ended_at is None:
            # The record after a session says how the user was after it: entered during it, it
            # would be dated before the session ended, and weighed by the plan as if after.
            reply = Refused(
                RefusalCode.NOT_ALLOWED,
                f"session {command.session_id} has not ended: the record after it is entered "
                "once it has",
            )
        elif entries >= OUTCOME_ENTRIES_MAX:
            # However fast a tablet sends them, a session's record stays a record (SR-14).
            reply = Refused(
                RefusalCode.NOT_ALLOWED,
                f"session {command.session_id} has {OUTCOME_ENTRIES_MAX} entries already; "
                "no more are kept",
            )
        else:
            fields: dict[str, JsonScalar] = {
                "session_id": command.session_id,
                "when": "before" if isinstance(command, OutcomeBefore) else "after",
                "pain": command.pain,
            }
            if isinstance(command, OutcomeAfter) and command.exertion is not None:
                fields["exertion"] = command.exertion
            if command.notes is not None:
                fields["notes"] = command.notes
            if command.clinician is not None:
                fields["clinician"] = command.clinician
            if self.proposals is not None:
                # The event names the session only: whose it is, so that only that user's
                # proposal is worked out again.
                self.proposals.session_of(command.session_id, row.user)
            self.controller.publish(Event(EventType.OUTCOME_RECORDED, command.t, fields))
            return ACCEPTED
        self._refusal(command.TYPE.value, reply.code.value, reply.message)
        return reply

    def _plan_command(self, command: PlanCommand) -> Reply:
        """A clinician's confirmation of a first session, or a user's measure: journaled as
        an event (and a measure in its own table), published once on disk, refused with the
        reason in words. The belt and the core are not touched; a confirmation reaches the
        core only as the user's history at their next start."""
        try:
            if isinstance(command, ConfirmFirstSession):
                reply, fields = self._confirmation(command)
            else:
                reply, fields = self._measure(command)
        except JournalError as exc:  # a journal that cannot be read: a journal failure
            self._journal_failed(str(exc))
            reply, fields = self._no_journal(), {}
        if isinstance(reply, Refused):
            self._refusal(command.TYPE.value, reply.code.value, reply.message)
            return reply
        kind = (
            EventType.FIRST_SESSION_CONFIRMED
            if isinstance(command, ConfirmFirstSession)
            else EventType.MEASURE_RECORDED
        )
        if command.clinician is not None:
            fields["clinician"] = command.clinician
        self.controller.publish(Event(kind, command.t, fields))
        return ACCEPTED

    def _no_journal(self) -> Refused:
        return Refused(
            RefusalCode.PRECONDITIONS_UNMET,
            f"the journal cannot be written ({self.journal_problem or 'none open'})",
        )

    def _confirmation(self, command: ConfirmFirstSession) -> tuple[Reply, dict[str, JsonScalar]]:
        """Whether a clinician may confirm this session as the user's first treadmill session,
        and the event's fields if so."""
        n = command.session_id
        if self.journal is None:
            return self._no_journal(), {}
        if not self.loaded.rules.first_session.clinician_may_confirm:
            return Refused(
                RefusalCode.NOT_ALLOWED,
                "the clinic's progression rules leave it to the belt time "
                "(first_session.clinician_may_confirm = false): a first session counts once "
                "it reaches its program's shortest cap",
            ), {}
        session = self.journal.session(int(n))
        if session is None:
            return Refused(RefusalCode.NOT_ALLOWED, f"no session {n} on record"), {}
        if command.user is not None and command.user != session.user:
            return _not_theirs(n, command.user), {}
        if session.program not in self._first_session_minimum:
            title = self.loaded.programs.get(session.program)
            named = session.program if title is None else title.title
            return Refused(
                RefusalCode.NOT_ALLOWED,
                f"session {n} was not a first session ({named}): only a first-session "
                "program's session can be confirmed",
            ), {}
        if session.ended_at is None:
            return Refused(
                RefusalCode.NOT_ALLOWED,
                f"session {n} is under way: confirm it once it has ended",
            ), {}
        belt = session.belt_moving_s
        if belt is None or not math.isfinite(belt):
            return Refused(
                RefusalCode.NOT_ALLOWED,
                f"session {n}'s belt time is not on record (treadguard stopped during it): "
                "there is no belt time to confirm",
            ), {}
        if not belt > 0.0:
            return Refused(
                RefusalCode.NOT_ALLOWED,
                f"the belt never moved in session {n}: there is no session to confirm",
            ), {}
        if int(n) in self.journal.confirmed_sessions(session.user):
            return Refused(RefusalCode.NOT_ALLOWED, f"session {n} is confirmed already"), {}
        # One first session a user, and their latest: their weeks on the treadmill count from
        # the one that counts (docs/plan.md), so confirming an older one, once another counts
        # or a later one was tried, would move them on by weeks. A session of theirs under way
        # is the latest: not while it runs.
        running = self.journal.newest_open_session()
        if running is not None and running != session.id:
            other = self.journal.session(running)
            if other is not None and other.user == session.user:
                return Refused(
                    RefusalCode.NOT_ALLOWED,
                    f"session {running} of the same user is under way: only a user's latest "
                    "session can be confirmed as their first, once it has ended",
                ), {}
        had = self.journal.first_session_had(
            session.user,
            self._first_session_minimum,
            other_programs=self._other_programs,
            confirmations=True,
        )
        if had is not None:
            whose = "the user's first treadmill session"
            return Refused(
                RefusalCode.NOT_ALLOWED,
                f"session {had} counts as {whose} already"
                if had == session.id
                else f"session {had} already counts as {whose}: there is no other to confirm",
            ), {}
        latest = self.journal.newest_session_of(session.user)
        if latest is not None and latest != session.id:
            return Refused(
                RefusalCode.NOT_ALLOWED,
                f"session {latest} of the same user came after session {n}: only a user's "
                "latest session can be confirmed as their first (their weeks on the treadmill "
                "count from it)",
            ), {}
        return ACCEPTED, {"session_id": n, "user": session.user}

    def _measure(self, command: RecordMeasure) -> tuple[Reply, dict[str, JsonScalar]]:
        """Whether a measure can be recorded (its value in its kind's range, its day a real
        one and not after today in the clinic's zone), and the event's fields if so."""
        try:
            kind = MeasureKind(command.kind)
        except ValueError:
            known = ", ".join(k.value for k in MeasureKind)
            return Refused(
                RefusalCode.INVALID_COMMAND, f"no measure {command.kind!r} (known: {known})"
            ), {}
        problem = value_problem(kind, command.value)
        if problem is not None:
            return Refused(RefusalCode.OUT_OF_RANGE, problem), {}
        zone = self.loaded.config.clinic.zone()
        today = datetime.fromtimestamp(self.wall(), zone).date()
        if command.date is None:
            day = today
        else:
            try:
                day = date.fromisoformat(command.date)
            except ValueError:
                return Refused(
                    RefusalCode.INVALID_COMMAND, f"date {command.date} is not a day (YYYY-MM-DD)"
                ), {}
            if day > today:
                return Refused(
                    RefusalCode.OUT_OF_RANGE,
                    f"date {day} is after today ({today} in {zone.key}): a measure is "
                    "recorded once it is taken",
                ), {}
            if (today - day).days > MEASURE_DAYS_BACK:
                return Refused(
                    RefusalCode.OUT_OF_RANGE,
                    f"date {day} is more than a year before today ({today} in {zone.key}): a "
                    "measure of this treatment is taken within the year (check the year)",
                ), {}
        if self.journal is None:
            return self._no_journal(), {}
        midnight = datetime.combine(today, time(0), zone).timestamp()
        if self.journal.measures_recorded_since(midnight) >= MEASURES_A_CLINIC_DAY_MAX:
            return Refused(
                RefusalCode.NOT_ALLOWED,
                f"{MEASURES_A_CLINIC_DAY_MAX} measures have been recorded today ({today} in "
                f"{zone.key}); no more are kept until tomorrow",
            ), {}
        if self.journal.measures_on(command.user, kind.value, day.isoformat()) >= (
            MEASURES_A_DAY_MAX
        ):
            # However fast a tablet sends them, a user's record stays a record (SR-14).
            return Refused(
                RefusalCode.NOT_ALLOWED,
                f"{command.user} has {MEASURES_A_DAY_MAX} {MEASURES[kind].title} measures for "
                f"{day} already; no more are kept",
            ), {}
        return ACCEPTED, {
            "user": command.user,
            "kind": kind.value,
            "value": command.value,
            "date": day.isoformat(),
        }

    def proposal(self, user: str) -> Proposal:
        """The proposal for ``user``'s next session (controller/plan.py), from the journal as
        it is now and the clinic's rules, dated in the clinic's zone. A journal that cannot be
        read raises JournalError (there is no proposal without the user's record)."""
        if self.journal is None:
            raise JournalError(f"the journal cannot be read ({self.journal_problem or 'none'})")
        return propose(
            self.journal.user_record(user.strip()),
            self.loaded.rules,
            self.loaded.programs,
            zone=self.loaded.config.clinic.zone(),
            now=self.wall(),
        )

    def _to_commissioning_run(self, command: CommissioningCommand) -> Reply:
        run = self.commissioning_run
        if run is None:
            reply: Reply = Refused(RefusalCode.PRECONDITIONS_UNMET, NO_COMMISSIONING_RUN)
        else:
            reply = run.answer(command)
        if isinstance(reply, Refused):
            # Journaled and published like the core's refusals (SR-14).
            self._refusal(command.TYPE.value, reply.code.value, reply.message)
        return reply

    def emergency_stop(self, why: str) -> None:
        """An emergency stop the daemon itself decides (a second signal, a shutdown past its
        bound). Should the core fail to handle it, the belt is stopped and held anyway
        (:meth:`Controller.hold_stopped`) and the failure is logged, not raised; only a
        cancellation or an exit goes on, after the hold."""
        try:
            self.controller.submit(EStop(t=self.clock.time(), why=why))
        except BaseException as exc:  # a cancellation too: the belt is held either way
            self._log.error(
                "emergency_stop_failed",
                why=why,
                error=repr(exc),
                traceback="".join(traceback.format_exception(exc)),
            )
            try:
                self.controller.hold_stopped(f"{why}: the estop failed: {exc!r}")
            except Exception as driver_exc:  # the driver's stop itself failed: nothing left here
                self._log.error("hold_stopped_failed", error=repr(driver_exc))
            if not isinstance(exc, Exception):
                raise  # a cancellation or an exit goes on, the belt held

    def refused_before_the_core(self, reply: CommandReply, kind: str | None) -> None:
        """A command the link refused itself (malformed, retained, too old, or whose handling
        failed): a command_refused event like the core's, through the same coalescer,
        journaled before the reply goes out and published (SR-14)."""
        assert reply.error is not None
        self._refusal(kind if kind is not None else "unreadable", reply.error.value, reply.message)

    def _refusal(self, command: str, code: str, message: str) -> None:
        """A command_refused event through the one coalescer, journaled and published."""
        fields: dict[str, JsonScalar] = {"command": command, "code": code, "message": message}
        event = Event(EventType.COMMAND_REFUSED, self.clock.time(), fields)
        if self._admit(event):
            self.controller.publish(event)

    def rival_daemon(self, detail: str) -> None:
        """Another controller for this treadmill on the broker (``detail`` says how it was
        seen): two controllers for one belt, each answering some of the tablet's commands (an
        estop among them) for the wrong belt. A fault: the belt stops and stays latched until
        a reset (SR-12, SR-13)."""
        self.controller.submit(RivalDaemon(t=self.clock.time(), detail=detail))

    def command_link_lost(self, detail: str) -> None:
        """The daemon's connection to the broker, the tablet's commands' way in, was lost
        (``detail`` says how): a session stops under control (SR-12)."""
        self.controller.submit(CommandLinkLost(t=self.clock.time(), detail=detail))

    def _admit(self, event: Event) -> bool:
        """The controller's gate: a refusal or a speed change a coalescer holds back is
        counted instead; the count of a second that has ended goes out first."""
        admitted = self.refusals.admit(event) and self.speed_changes.admit(event)
        for counted in [*self.refusals.take_closed(), *self.speed_changes.take_closed()]:
            self.controller.publish(counted)
        return admitted

    def _returning(self, user: str) -> bool:
        if self.journal is None:
            return False  # no history to go by: first-session rules, the strictest
        try:
            return self.journal.has_history(
                user.strip(),
                self._first_session_minimum,
                other_programs=self._other_programs,
                confirmations=self.loaded.rules.first_session.clinician_may_confirm,
            )
        except JournalError as exc:
            self._journal_failed(str(exc))
            return False

    # ------------------------------------------------------------------ sensor readings

    def submit_reading(self, reading: GripReading | FallReading) -> None:
        """The sensor readers' dispatcher (GPIO, Modbus, MQTT, a scenario's user): a reading
        whose handling fails unexpectedly is logged (at most once a second, with a count) and
        lost, so its sensor goes stale, unsafe (SR-8); it never ends the reader's task, nor
        the daemon (SR-15)."""
        try:
            self.controller.submit(reading)
        except Exception as exc:
            self._reading_failures += 1
            now = self.clock.time()
            if now - self._reading_failure_logged_t >= FAILURE_LOG_EVERY_S:
                self._reading_failure_logged_t = now
                self._log.error(
                    "sensor_reading_failed",
                    count=self._reading_failures,
                    error=repr(exc),
                    traceback="".join(traceback.format_exception(exc)),
                )

    # ------------------------------------------------------------------ journal (SR-14)

    def _last_session_id(self) -> int:
        if self.journal is None:
            return 0
        try:
            return self.journal.last_session_id()
        except JournalError as exc:
            self.journal_problem, self.journal = str(exc), None
            return 0

    def _journal_event(self, event: Event) -> None:
        if self.journal is not None:
            try:
                # Records keep real wall time, stepped or not (the published ts does not).
                self.journal.record(event, self.wall() - (self.clock.time() - event.t))
            except Exception as exc:
                # A record that cannot be written, for whatever reason, foreseen or not, is a
                # journal failure (fail closed, SR-14): never an exception out of the listener.
                self._journal_failed(_reason(exc))

    def sync_in_background(self, on_durable: Callable[[], None]) -> None:
        """From now on (on the running event loop) the journal's syncs run on a worker
        thread; ``on_durable`` is called after each sync that covered new records (the link
        looks again at what it may publish)."""
        if self.journal is None:
            return
        self._on_durable = on_durable
        self.journal_sync = JournalSync(
            self.journal,
            on_durable=on_durable,
            on_failure=self._journal_failed,
            # Between sessions, the belt standing still, nothing is written, so a checkpoint
            # copies the whole log and starts it over on its own thread; during one it could
            # not finish, and would only add syncs.
            may_checkpoint=lambda: self.core.session is None and self.at_standstill(),
            on_checkpoint_error=lambda reason: self._log.warning(
                "journal_checkpoint_failed", error=reason
            ),
        )

    def commit_journal(self) -> None:
        """Everything recorded so far committed and on its way to disk (synced here and now
        without a worker); the link calls it before it publishes, and publishes only what
        :meth:`journal_marks` says is on disk."""
        if self.journal is None:
            return
        if self.journal_sync is not None:
            self.journal_sync.request()  # never raises, never waits for the disk
            return
        try:
            self.journal.commit()
        except Exception as exc:  # called by the link's outbox: never raised into it
            self._journal_failed(_reason(exc))

    def journal_marks(self) -> tuple[int, float]:
        """The safety records written so far, and how many of them are on disk. Once the
        journal has failed nothing more can be, and the fault must be seen: from the moment
        the core has latched it, infinite (everything waiting goes out, the fault first of
        the state's changes); until then, as they were when it failed."""
        if self.journal is None:
            if self._marks_at_failure is not None and not self._journal_reported:
                return self._marks_at_failure
            return 0, math.inf
        written = self.journal.records
        if self.journal_sync is None:
            return written, written  # each commit syncs (commit_journal)
        return written, self.journal_sync.durable

    def close(self) -> None:
        """The last commit, then the journal closed, even when that commit fails (a failed
        commit lets go of the journal: held here, it is still closed). No journal tick after
        this one (it would write to a closed journal)."""
        if self._journal_tick_handle is not None:
            self._journal_tick_handle.cancel()
            self._journal_tick_handle = None
        if self.journal_sync is not None:
            self.journal_sync.close()  # the sync under way ends first
            self.journal_sync = None
        journal = self.journal
        if journal is None:
            return
        self.commit_journal()
        journal.close()

    def _journal_tick(self) -> None:
        """Twice a second: the counts of refusals whose second has ended, the belt's speed
        while a session is open, a commit (so the journal is up to date even while nothing is
        published: a broker that is down), a look at how full the journal is, and that its
        name still leads to it."""
        self._journal_tick_handle = self.clock.call_at(
            self.clock.time() + JOURNAL_PERIOD_S, self._journal_tick
        )
        now = self.clock.time()
        for counted in [*self.refusals.due(now), *self.speed_changes.due(now)]:
            self.controller.publish(counted)
        if self.journal is not None:
            snap = self.core.snapshot()
            try:
                # During a session, and after it until the belt stands still (the journal
                # knows which session that is).
                self.journal.sample(self.wall(), snap.belt_mph, snap.target_mph)
                self._journal_used = self.journal.used_fraction()
                # A journal moved or replaced on disk takes every record after it with it
                # (and the readers, history and proposals, read by the name): failed.
                replaced = self.journal.replaced()
            except Exception as exc:
                replaced = _reason(exc)
            if replaced is not None:
                self._journal_failed(replaced)
                return
            self.commit_journal()
            self._warn_journal_nearly_full()

    # ------------------------------------------------------------------ commissioning

    def _read_commissioning(self) -> CommissioningStatus:
        """The commissioning record, fail closed: no journal, no commissioning."""
        if self.journal is None:
            return CommissioningStatus(
                False, f"the journal cannot be read ({self.journal_problem or 'none open'})"
            )
        every = self.loaded.config.commissioning.every_days
        return self.journal.commissioning_status(
            self.wall(), every_days=every, machine=self.machine
        )

    def _commissioned_until(self, status: CommissioningStatus) -> float | None:
        """The record's expiry on the core's clock. An expired record gives a time already
        past (the core says so once, in a commissioning_expired event); a record the wall
        clock cannot place, or none, gives None."""
        expires = status.expires_at
        if expires is None:
            return None
        until = self.clock.time() + (expires - self.wall())
        if status.current or until <= self.clock.time():
            return until
        return None

    def _commissioning_tick(self) -> None:
        """The record read again: the core hears of any change (a new commissioning, a wall
        clock that was wrong at start-up). Expiry itself the core sees on its own clock."""
        self.clock.call_at(self.clock.time() + COMMISSIONING_REFRESH_S, self._commissioning_tick)
        before = self.commissioning
        self.commissioning = status = self._read_commissioning()
        self._take_commissioned_baselines(status)
        if (status.current, status.expires_at, status.detail) != (
            before.current,
            before.expires_at,
            before.detail,
        ):
            self.controller.submit(
                Commissioning(
                    t=self.clock.time(),
                    until=self._commissioned_until(status),
                    detail=status.detail,
                )
            )

    def _take_commissioned_baselines(self, status: CommissioningStatus) -> None:
        """A newly passed commissioning's stops become the stop-quality watch's baselines, once
        per commissioning: set again every refresh, the same baselines would count as new ones
        and let a worn-brake fault be reset without the brake being proven again."""
        if not status.current or status.passed_at == self._baselines_from:
            return
        assert self.journal is not None  # a current record was read from it
        self._baselines_from = status.passed_at
        every = self.loaded.config.commissioning.every_days
        try:
            baselines = self.journal.commissioned_baselines(
                self.wall(), every_days=every, machine=self.machine
            )
            # The slow stops judged against these baselines before a restart count on.
            carried = self.journal.slow_stops_in_a_row(since=status.passed_at or 0.0)
            if baselines:
                self.set_stop_baselines(baselines, carried)
                if carried:
                    self._log.warning(
                        "slow_stops_on_record", **{k.value: n for k, n in carried.items()}
                    )
        except (ValueError, JournalError) as exc:
            # Fail closed: no yardstick, so no stop is judged good (stop_checked says
            # no_baseline); the record stays as it is, the log says why.
            self._log.error("commissioned_baselines_unusable", error=_reason(exc))

    def commissioning_state(self) -> JsonObject:
        """The state's ``commissioning``: whether a session may start as far as commissioning
        goes (the core's own answer), why, and the record's times (unix seconds)."""
        status = self.commissioning
        return {
            "current": self.core.commissioning_current(),
            "detail": status.detail,
            "passed_at": status.passed_at,
            "expires_at": status.expires_at,
            # What a guided run waits for (docs/commissioning.md); null without one.
            "run": None if self.commissioning_run is None else self.commissioning_run.as_json(),
        }

    def journal_state(self) -> JsonObject:
        return {"used_pct": round(self._journal_used * 100.0), "nearly_full": self._journal_warned}

    def _warn_journal_nearly_full(self) -> None:
        """SR-14: a journal nearing its size limit warns the operator (log, event, and the
        state's ``journal`` field) well before it is full and faults."""
        if self._journal_warned or self._journal_used < WARN_FRACTION:
            return
        self._journal_warned = True
        limit_mb = self.loaded.config.journal.max_size_mb
        used_pct = round(self._journal_used * 100.0, 1)
        self._log.warning("journal_nearly_full", used_pct=used_pct, limit_mb=limit_mb)
        self.controller.publish(
            Event(
                EventType.JOURNAL_WARNING,
                self.clock.time(),
                {
                    "used_pct": used_pct,
                    "limit_mb": limit_mb,
                    "message": (
                        f"the journal is {used_pct:g} % full (limit {limit_mb:g} MB): archive "
                        "it or raise journal.max_size_mb before it fills and stops sessions"
                    ),
                },
            )
        )

    def _journal_failed(self, detail: str) -> None:
        """A full disk, a read-only file system: the belt stops, no session starts (the core
        latches a fault with cause "journal"), until the daemon is restarted with a journal
        that can be written."""
        if self.journal_problem is not None:
            return
        if self.journal is not None:
            self._marks_at_failure = self.journal_marks()
        self.journal_problem = detail
        self.journal = None
        self._log.error("journal_failed", error=detail)
        # Not from inside the listener that found it: the controller is still delivering the
        # events of the input that caused the write.
        self.clock.call_at(self.clock.time(), self._report_journal_problem)

    def _report_journal_problem(self) -> None:
        assert self.journal_problem is not None
        if self._journal_reported:
            return
        self._journal_reported = True
        self.controller.submit(
            JournalHealth(t=self.clock.time(), writable=False, detail=self.journal_problem)
        )
        # The fault is latched: what waited for a sync that will never come goes out now.
        if self._on_durable is not None:
            self._on_durable()


def _not_theirs(session_id: str, user: str) -> Refused:
    """An entry for ``user`` naming a session of another user: a mistyped session id. Whose
    it is is not said (the tablet asks the record of a user by their code)."""
    return Refused(
        RefusalCode.NOT_ALLOWED,
        f"session {session_id} is not {user}'s: check the session's number; nothing was entered",
    )
