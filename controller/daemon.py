"""The daemon (``treadguard run --config FILE``): control loop, driver and the tablet over MQTT.

One supervised ``TaskGroup`` holds the control loop, the driver's I/O and the MQTT link. The
link and the sensors reach the controller synchronously on the event loop's thread, so an
``estop`` command or a released grip goes to the driver the moment it arrives (SR-13), and
nothing the controller does waits for the broker: a broker that is down costs the tablet its
view, never the belt its stop. With the broker gone the tablet's heartbeat stops arriving, and
SR-12's grace period ends the session with a controlled stop.

Shutdown (SIGTERM, SIGINT): a session in progress gets a controlled stop, the daemon waits for
standstill (bounded by ``SHUTDOWN_BOUND_S``; an emergency stop past it), publishes the final
state and ``offline`` and exits 0. A second signal is an emergency stop at once. A restart never
resumes a session: the core starts idle, and a start needs a new command (SR-3, SR-11).
"""

from __future__ import annotations

import asyncio
import gc
import math
import signal
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog

from treadguard.config.loading import LoadedConfig
from treadguard.config.schema import SimulatedDriveSection
from treadguard.contract.mqtt import (
    JsonObject,
    SensorPayloadError,
    parse_sensor_payload,
)
from treadguard.controller.control import Controller
from treadguard.controller.drives import Rig, build_driver, in_process_rig
from treadguard.controller.journal import JournalError, drive_identity
from treadguard.controller.loop import ScaledClock, run_control_loop
from treadguard.controller.mqtt_link import LinkHooks, TabletLink, unix_mapper
from treadguard.controller.mqtt_settings import broker_settings
from treadguard.controller.proposal_book import BookKeeper
from treadguard.controller.queries import (
    RENDER_TIMEOUT_S,
    ClinicWords,
    QueryService,
    render_report,
)
from treadguard.controller.query_link import QueryLink
from treadguard.controller.sensors import SensorHub
from treadguard.controller.system import System, open_journal
from treadguard.controller.systemd import Notifier
from treadguard.controller.treadmill_lock import TreadmillHeld, hold_drive, hold_treadmill
from treadguard.controller.wallclock import wall_clock
from treadguard.drivers.base import TreadmillDriver
from treadguard.safety.core import SafetyCore
from treadguard.safety.decisions import (
    LATCHED_STATES,
    Event,
    EventType,
)
from treadguard.safety.inputs import (
    FallReading,
    GripReading,
    Hand,
    Shutdown,
    Tick,
)

SHUTDOWN_BOUND_S = 10.0  # SR-11: how long a shutdown waits for standstill
# Each ends the daemon the one way: the belt brought to a controlled stop, then out (a second,
# an emergency stop). SIGHUP: the terminal or SSH session of a command run by hand has gone.
# SIGQUIT (Ctrl-\), SIGUSR1 and SIGUSR2 would otherwise end the process at once, no stop sent.
ENDING_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)
SENSOR_WARN_EVERY_S = 5.0  # a sensor publishing garbage is logged at most this often
STATUS_EVERY_S = 1.0  # how often systemd's status line is looked at again
STATUS_GRACE_S = 5.0  # from start-up, before a drive or broker not reached is said there


@dataclass
class _SensorHealth:
    bad: int = 0
    last_warned: float = -SENSOR_WARN_EVERY_S


class JournalHeld(RuntimeError):
    """Another process (the service daemon, a commissioning run) drives this treadmill: its
    journal's lock, or the lock on its topics on the broker or on its drive, is held. Raised
    before anything is connected: this process must not speak
    for the treadmill on MQTT (under the daemon's client id and state topic it would take the
    running daemon's connection over, or be seen as its rival and stop the patient's belt),
    nor open the drive's port."""


# Work the daemon runs beside its own once it is up (``treadguard commission`` on the real
# machine): when it returns, the daemon shuts down as on a signal.
Errand = Callable[["System"], Awaitable[object]]


class Daemon:
    def __init__(
        self, loaded: LoadedConfig, *, logger: Any = None, errand: Errand | None = None
    ) -> None:
        self.loaded = loaded
        self.errand = errand
        self._log = logger if logger is not None else structlog.get_logger("treadguard")
        self._signals = 0
        self._signalled = asyncio.Event()
        self._bad_payloads: dict[str, _SensorHealth] = {}
        self.drive_description = ""
        self.notifier = Notifier()
        self._ready = False
        self._clean_exit = False
        self._last_watchdog = -math.inf
        self._status_said = ""  # systemd's status line, as last sent
        self._status_looked = -math.inf
        self._started = 0.0  # the clock's time at start-up (set in _assemble)
        # The treadmill's topics and its drive (controller/treadmill_lock.py), held for the
        # process's life; None: the system refused the lock.
        self._locks: list[socket.socket | None] = []
        # The one wall clock (SR-16): for the journal's records and the published ts only.
        self.wall = wall_clock()
        # Built in run(): they need the running event loop.
        self.rig: Rig | None = None  # the simulated drive's, when it is the one configured
        self.system: System
        self.link: TabletLink
        self.query_link: QueryLink
        self.clock: ScaledClock
        self.driver: TreadmillDriver

    # ------------------------------------------------------------------ assembly

    def _assemble(self) -> None:
        """The shared assembly (controller/system.py) on asyncio's clock, the configured
        journal and driver; then what only the daemon has: the sensor readers, the MQTT link
        and systemd's status line."""
        loaded, cfg = self.loaded, self.loaded.config
        self.clock = clock = ScaledClock(asyncio.get_running_loop())
        self._started = clock.time()
        self.to_unix = unix_mapper(clock.time, self.wall)
        journal_path = loaded.resolve(cfg.journal.path)
        # The treadmill's topics on its broker and its drive, then the journal, before the
        # drive, the sensors or the MQTT link are built: any of them held by another process
        # means another treadguard drives this treadmill, and this one leaves everything alone
        # (controller/treadmill_lock.py). (Any other journal problem is served: a latched
        # fault.)
        broker = broker_settings(loaded)
        drive = drive_identity(cfg.drive)
        try:
            self._locks.append(hold_treadmill(broker.port, broker.prefix))
            self._locks += hold_drive(cfg.drive)
        except TreadmillHeld as exc:
            self._log.error("treadmill_in_use", prefix=broker.prefix, drive=drive, error=str(exc))
            self._release_locks()
            raise JournalHeld(str(exc)) from exc
        if None in self._locks:
            self._log.warning(
                "treadmill_not_locked",
                message="the system refused a lock on this treadmill's topics or drive: a "
                "second treadguard process for it would be found only on the broker",
            )
        opened = open_journal(journal_path, max_size_mb=cfg.journal.max_size_mb, wall=self.wall)
        if opened.in_use:
            problem = opened.problem or f"the journal {journal_path} is in use"
            self._log.error("journal_in_use", journal=str(journal_path), error=problem)
            raise JournalHeld(problem)
        if opened.journal is not None and opened.journal.mode != "wal":
            # Every commit then syncs on the control loop: a slow disk holds the loop up.
            self._log.warning(
                "journal_not_wal",
                mode=opened.journal.mode,
                journal=str(journal_path),
                message="the file system refused SQLite's write-ahead log: each journal "
                "commit syncs on the control loop; put the journal on a local disk",
            )
        if opened.interrupted:
            self._log.warning(
                "sessions_interrupted", sessions=list(opened.interrupted), journal=str(journal_path)
            )
        if isinstance(cfg.drive, SimulatedDriveSection):
            # The rig is kept: a guided commissioning on the simulator unplugs its cable.
            self.rig = rig = in_process_rig(loaded, clock.time)
            self.driver = rig.driver
            self.drive_description = "in-process simulated belt"
        else:
            self.rig = None
            self.driver = build_driver(loaded, clock.time)
            self.drive_description = f"{cfg.drive.kind} driver"
        # What a start without a program gets: each user's proposal, worked out off the
        # command path (controller/proposal_book.py).
        self.proposals = (
            None
            if opened.journal is None
            else BookKeeper(
                loaded,
                wall=self.wall,
                commit=lambda: self.system.commit_journal(),
                identity=opened.journal.identity(),
                logger=self._log.bind(part="proposals"),
            )
        )
        self.system = system = System(
            loaded,
            clock,
            self.driver,
            opened,
            wall=self.wall,
            logger=self._log,
            proposals=self.proposals,
        )
        # A commissioning run (the errand): from the first moment, no start but its proof runs'.
        system.proof_starts_only = self.errand is not None
        self.sensors = SensorHub(cfg.sensors.effective_inputs(), system.submit_reading)
        # Read-only queries (history, a session's report): answered from the journal's file
        # off the loop, never by the safety core.
        self.queries = QueryService(
            journal=journal_path if opened.journal is not None else None,
            journal_identity=None if opened.journal is None else opened.journal.identity(),
            words=ClinicWords(
                zone=cfg.clinic.zone(),
                titles={name: p.title for name, p in loaded.programs.items()},
            ),
            reply=lambda account, payload: self.query_link.answer(account, payload),
            render=lambda session: render_report(
                loaded.path,
                session,
                timeout_s=RENDER_TIMEOUT_S,
                cache=journal_path.parent / "matplotlib",
            ),
            # A history's proposal: the book's (no journal: no history is answered at all).
            proposals=None if self.proposals is None else self.proposals.proposal,
            logger=self._log.bind(part="queries"),
        )
        self.link = TabletLink.configured(
            loaded,
            LinkHooks(
                execute=system.execute,
                snapshot=system.core.snapshot,
                now=clock.time,
                to_unix=self.to_unix,
                on_sensor=self._on_sensor_message,
                before_publish=system.commit_journal,
                journal_marks=system.journal_marks,
                on_refused=system.refused_before_the_core,
                on_rival=system.rival_daemon,
                on_link_lost=system.command_link_lost,
                extra_state=self._extra_state,
            ),
            sensors=self.sensors.mqtt_names,
            logger=self._log.bind(part="mqtt"),
        )
        # The queries on a connection of their own, under an account of their own: a flood of
        # them waits in its own stream, never in the commands' (controller/query_link.py).
        self.query_link = QueryLink.configured(
            loaded,
            self.queries.submit,
            journal_marks=system.journal_marks,
            logger=self._log.bind(part="queries"),
        )
        # After the journal, which System attached first: an event is on disk before the
        # link can publish it (SR-14).
        system.subscribe(self.link.on_event, name="mqtt")
        # The sessions a crash left open, closed as interrupted in the journal (which holds
        # their session_ended): said on the events topic too, once connected, so a tablet
        # that kept one open (the page asks for the record after its own) hears it is over.
        for session in opened.interrupted:
            try:
                row = None if opened.journal is None else opened.journal.session(session)
            except JournalError:  # read a moment ago; unread now, it is said without it
                row = None
            belt = None if row is None else row.belt_moving_s  # as its samples show it
            self.link.on_event(
                Event(
                    EventType.SESSION_ENDED,
                    clock.time(),
                    {"session_id": str(session), "reason": "interrupted", "belt_moving_s": belt},
                )
            )
        # The journal's syncs off the loop; each one that ends lets the link publish what it
        # covered.
        system.sync_in_background(on_durable=self._journal_durable)
        system.subscribe(self._on_event_status, name="systemd-status")

    def _journal_durable(self) -> None:
        self.link.state_changed()
        self.query_link.durable()

    @property
    def core(self) -> SafetyCore:
        return self.system.core

    @property
    def controller(self) -> Controller:
        return self.system.controller

    def tick(self) -> None:
        """The shared control tick, then systemd's watchdog (pinged only from here, so only
        while the loop really ticks)."""
        self.system.tick()
        if not self._ready:
            self._ready = True  # the loop ticks and has commanded the belt to stand still
            self._status_said = self._status_text()
            self.notifier.notify(READY="1", STATUS=self._status_said)
        elif self.clock.time() - self._status_looked >= STATUS_EVERY_S:
            self._status_looked = self.clock.time()
            self._refresh_status()
        watchdog = self.notifier.watchdog_s
        now = self.clock.time()
        if watchdog is not None and now - self._last_watchdog >= watchdog:
            self._last_watchdog = now
            self.notifier.notify(WATCHDOG="1")

    def _status_text(self) -> str:
        """systemd's status line (`systemctl status treadguard`): the state, and what keeps
        the treadmill from serving that the state alone does not say: a drive that does not
        answer, a broker that the daemon is not connected to (and why)."""
        snap = self.core.snapshot()
        text = snap.state.value
        if snap.session is not None:
            text += f", session {snap.session.id} ({snap.session.user})"
        if snap.latched is not None:
            text += f", latched {snap.latched.cause.value}"
        if self.clock.time() - self._started < STATUS_GRACE_S:
            return text  # the drive and the broker are still being reached
        if not math.isfinite(snap.belt_mph):
            text += "; the drive is not answering"
        if not self.link.connected:
            why = self.link.last_error
            text += "; not connected to the broker" + (f" ({why})" if why else "")
        return text

    def _refresh_status(self) -> None:
        """The status line again, where it changed (the drive and the broker change it without
        an event)."""
        text = self._status_text()
        if text != self._status_said:
            self._status_said = text
            self.notifier.notify(STATUS=text)

    def _extra_state(self) -> JsonObject:
        """The state's extensions (docs/tablet-contract.md allows new fields): the control
        loop's lag, the programs a tablet may offer, the journal's use, the commissioning
        (whether a session may start as far as it goes), the stop-quality watch, whether queries
        are answered, and which wired sensor inputs cannot be read, and why."""
        extra: JsonObject = {
            "loop": {**self.system.health.as_json()},
            "programs": self.system.programs,
            "journal": self.system.journal_state(),
            "commissioning": self.system.commissioning_state(),
            "stop_watch": self.system.stop_watch_state(),
            # The patient view's answers come on a connection of their own, which may be up
            # later than this one, or not at all (an account the broker refuses).
            "queries": {"connected": self.query_link.connected},
        }
        problems = self.sensors.problems()
        if problems:
            extra["sensor_problems"] = {**problems}
        return extra

    def _on_event_status(self, _event: Event) -> None:
        self._refresh_status()

    # ------------------------------------------------------------------ sensors

    def _on_sensor_message(self, name: str, payload: bytes) -> None:
        """A reading on ``<p>/sensors/<name>``. It counts from its arrival on the monotonic
        clock; its stamp is compared only with the same sensor's earlier stamps, never with
        our wall clock (SR-8, SR-16: safety/stamps.py). A payload that is not a reading, or a
        stamp that is no time, is no reading: the sensor goes stale, unsafe."""
        now = self.clock.time()
        reading = parse_sensor_payload(payload)
        if isinstance(reading, SensorPayloadError):
            self._bad_sensor_payload(name, reading.message, now)
            return
        if self.sensors.is_mqtt(name):
            # Time passes in the core up to the arrival first: a reading that counts as older
            # than the core's last input (it waited, or came out of order) then stops the belt
            # with a latency counted from its arrival, not from that earlier input.
            self.controller.submit(Tick(t=now))
            problem = self.sensors.stamped(name, reading.ts, now, reading.value)
            if problem is not None:
                self._bad_sensor_payload(name, problem, now)

    def _bad_sensor_payload(self, name: str, message: str, now: float) -> None:
        health = self._bad_payloads.setdefault(name, _SensorHealth())
        health.bad += 1
        if now - health.last_warned >= SENSOR_WARN_EVERY_S:
            health.last_warned = now
            self._log.warning(
                "sensor_payload_refused", sensor=name, error=message, count=health.bad
            )

    def _simulated_user(self) -> None:
        """sensors.source = "simulator": a user who holds on and never falls."""
        t = self.clock.time()
        for hand in Hand:
            self.system.submit_reading(GripReading(t=t, hand=hand, held=True))
        self.system.submit_reading(FallReading(t=t, fallen=False))
        self.clock.call_at(t + self.loaded.config.sensors.report_interval_s, self._simulated_user)

    # ------------------------------------------------------------------ lifecycle

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            self.system.shutting_down = True  # no session starts from now on
            self._log.info("shutdown_requested", signal=signal.Signals(signum).name)
            self.notifier.notify(STOPPING="1", STATUS="stopping the belt, then exiting")
        else:
            self._log.warning("second_signal_emergency_stop", signal=signal.Signals(signum).name)
            self.system.emergency_stop("second signal")
        self._signalled.set()

    async def _shutdown(self) -> None:
        """SR-11: controlled stop, standstill (bounded), then out; an emergency stop if the
        belt is not at standstill by the bound."""
        self.controller.submit(Shutdown(t=self.clock.time()))
        if self.driver.status() is None:
            # The drive has never answered since start-up: no start was accepted, so this
            # daemon never moved the belt, and no standstill will ever be reported to wait for
            # (waiting would only end in an emergency stop on record that nobody pressed).
            self._log.info("shutdown_complete", state=self.core.state.value, drive="never answered")
            return
        deadline = self.clock.time() + SHUTDOWN_BOUND_S
        period = self.system.period_s
        # Polled at the tick period: the control loop keeps running meanwhile and is what
        # brings the belt down; this only watches for the end.
        while not self.system.at_standstill():
            if self.clock.time() >= deadline:
                self._log.error("shutdown_standstill_timeout", bound_s=SHUTDOWN_BOUND_S)
                self.system.emergency_stop("shutdown past its bound")
                break
            await asyncio.sleep(period)
        self._log.info("shutdown_complete", state=self.core.state.value)

    async def _run_errand(self, errand: Errand) -> None:
        try:
            await errand(self.system)
        finally:
            self._signalled.set()  # done (or failed): the daemon's own shutdown follows

    async def _control(self) -> None:
        """The control loop; if it ends other than by a clean shutdown (a failure of its own or
        of another task), the drive is told to stop at once, while its I/O task still runs."""
        try:
            await run_control_loop(self, self.clock, self.system.period_s)
        except BaseException:
            if not self._clean_exit:
                self.driver.emergency_stop()
            raise

    async def run(self) -> int:
        try:
            self._assemble()
        except BaseException:
            self._release_locks()
            raise
        # What start-up built lives as long as the daemon: out of the collector's sight, a
        # full collection (measured at 12 ms) no longer scans it, and the loop stalls less.
        gc.collect()
        gc.freeze()
        cfg = self.loaded.config
        loop = asyncio.get_running_loop()
        for sig in ENDING_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        # A terminal's job control must not freeze the process driving a belt (Ctrl-Z during
        # a commissioning run: the belt would run on, commanded by no one).
        for sig in (signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
            signal.signal(sig, signal.SIG_IGN)
        self._log.info(
            "daemon_started",
            treadmill=cfg.treadmill.id,
            drive=self.drive_description,
            sensors=self.sensors.describe() or "built-in simulated user",
            mqtt=f"{cfg.mqtt.host}:{cfg.mqtt.port}",
            prefix=self.link.topics.prefix,
        )
        clean = False
        try:
            # A guided commissioning (the errand) is what clears a worn-brake fault on record: its
            # proof runs must stop the belt, so the fault is not latched in its core; every
            # other start is refused while it runs (System.proof_starts_only).
            self.system.start(restore_faults=self.errand is None)
            if cfg.sensors.source == "simulator":
                self._simulated_user()
            async with asyncio.TaskGroup() as tg:
                control = tg.create_task(self._control(), name="control")
                driver = tg.create_task(self.driver.run(), name="driver")
                link = tg.create_task(_until_cancelled(self.link.run(), "mqtt"), name="mqtt")
                queries = tg.create_task(self.queries.run(), name="queries")
                proposals = None
                if self.proposals is not None:
                    proposals = tg.create_task(self.proposals.run(), name="proposals")
                # Never raises but when cancelled: its failures are its own (logged, retried).
                query_link = tg.create_task(
                    _until_cancelled(self.query_link.run(), "queries-mqtt"), name="queries-mqtt"
                )
                inputs = [
                    tg.create_task(run, name="sensor-input")
                    for run in self.sensors.build_sources(self.clock.time)
                ]
                errand = None
                if self.errand is not None:
                    errand = tg.create_task(self._run_errand(self.errand), name="errand")
                await self._signalled.wait()
                if errand is not None:
                    # A signal ends a commissioning run part way (journaled as cut short): it
                    # must not go on starting proof runs, or resetting, on a stopping daemon.
                    errand.cancel()
                await self._shutdown()
                # The link goes first, while the loop still ticks: it publishes the final
                # state and "offline" before the daemon is gone.
                link.cancel()
                await asyncio.wait([link])
                self._clean_exit = True
                queries.cancel()
                if proposals is not None:
                    proposals.cancel()
                query_link.cancel()
                control.cancel()
                driver.cancel()
                for task in inputs:
                    task.cancel()
            clean = True
        finally:
            for sig in ENDING_SIGNALS:
                loop.remove_signal_handler(sig)
            if not clean or self.core.state in LATCHED_STATES:
                # Whatever ended us, the belt is told to stop the fastest way it can.
                self.driver.emergency_stop()
            else:
                self.driver.command_speed(0.0)
            self.system.close()
            self._release_locks()  # the belt told to stop, the journal closed: let go
        return 0

    def _release_locks(self) -> None:
        locks, self._locks = self._locks, []
        for lock in locks:
            if lock is not None:
                lock.close()


class LinkEnded(RuntimeError):
    """A link that runs until the daemon stops it ended by itself."""


async def _until_cancelled(run: Awaitable[None], name: str) -> None:
    """Run a link that must run until the daemon cancels it, and fail loudly if it ends any
    other way: the daemon's task group takes a task that returns, or that ends cancelled
    without being asked, for done, and the daemon would run on deaf (no state, no commands)
    while systemd saw it healthy. Raised, it ends the daemon (the belt is stopped) and
    systemd starts it again."""
    try:
        await run
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the daemon's own cancellation: a stop
        raise LinkEnded(f"the {name} link ended cancelled, not by the daemon") from None
    raise LinkEnded(f"the {name} link returned while the daemon runs")
