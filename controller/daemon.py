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
import traceback
from dataclasses import dataclass, replace
from typing import Any

import structlog

from config.loading import LoadedConfig
from config.schema import SimulatedDriveSection
from controller.control import Controller
from controller.drives import build_driver, in_process_rig
from controller.journal import WARN_FRACTION, Journal, JournalError
from controller.loop import LoopHealth, ScaledClock, run_control_loop
from controller.mqtt_contract import (
    CommandReply,
    JsonObject,
    SensorPayloadError,
    encode_programs,
    parse_sensor_payload,
)
from controller.mqtt_link import TabletLink, unix_mapper
from controller.mqtt_settings import broker_settings
from controller.refusals import RefusalCoalescer
from controller.sensors import SensorHub
from controller.systemd import Notifier
from controller.wallclock import wall_clock
from drivers.base import TreadmillDriver
from safety.core import SafetyCore
from safety.decisions import (
    ARMED_STATES,
    LATCHED_STATES,
    Event,
    EventType,
    JsonScalar,
    RefusalCode,
    Refused,
    Reply,
)
from safety.inputs import (
    Command,
    EStop,
    FallReading,
    GripReading,
    Hand,
    JournalHealth,
    LoopOverrun,
    RivalDaemon,
    Shutdown,
    StartSession,
    Stop,
    Tick,
)
from safety.limits import STANDSTILL_MPH

SHUTDOWN_BOUND_S = 10.0  # SR-11: how long a shutdown waits for standstill
SENSOR_WARN_EVERY_S = 5.0  # a sensor publishing garbage is logged at most this often
JOURNAL_PERIOD_S = 0.5  # speed samples and a commit, at least this often
LATE_TICKS_TO_STOP = 3  # ticks more than two periods late within 20 periods: the session stops
FAILURE_LOG_EVERY_S = 1.0  # an unexpected failure of a command's handling: logged this often


def _reason(exc: Exception) -> str:
    """SQLite's own words for a journal error; the type too for anything unforeseen."""
    return str(exc) if isinstance(exc, JournalError) else f"{type(exc).__name__}: {exc}"


@dataclass
class _SensorHealth:
    bad: int = 0
    last_warned: float = -SENSOR_WARN_EVERY_S


class Daemon:
    def __init__(self, loaded: LoadedConfig, *, logger: Any = None) -> None:
        self.loaded = loaded
        self._log = logger if logger is not None else structlog.get_logger("treadguard")
        self._signals = 0
        self._signalled = asyncio.Event()
        self._bad_payloads: dict[str, _SensorHealth] = {}
        self.drive_description = ""
        self.journal: Journal | None = None
        self._journal_problem: str | None = None
        self._journal_reported = False
        self._sessions_before = 0
        self.notifier = Notifier()
        self._ready = False
        self._clean_exit = False
        self._last_watchdog = -math.inf
        # One coalescer for every refusal, the core's and the contract's (SR-14).
        self.refusals = RefusalCoalescer()
        self._journal_used = 0.0
        self._journal_warned = False
        self._failures = 0
        self._failure_logged_t = -math.inf
        # The one wall clock (SR-16): for the journal's records and the published ts only.
        self.wall = wall_clock()
        # Built in run(): they need the running event loop.
        self.core: SafetyCore
        self.controller: Controller
        self.link: TabletLink
        self.clock: ScaledClock
        self.driver: TreadmillDriver

    # ------------------------------------------------------------------ assembly

    def _assemble(self) -> None:
        loaded, cfg = self.loaded, self.loaded.config
        self.clock = clock = ScaledClock(asyncio.get_running_loop())
        self.health = LoopHealth(1.0 / cfg.control.tick_hz, late_ticks_to_stop=LATE_TICKS_TO_STOP)
        self.to_unix = unix_mapper(clock.time, self.wall)
        self._open_journal()
        self.core = SafetyCore(
            cfg.safety,
            loaded.programs,
            default_program=cfg.programs.default,
            returning_program=cfg.programs.returning,
            t0=clock.time(),
            sessions_before=self._sessions_before,
        )
        if isinstance(cfg.drive, SimulatedDriveSection):
            self.driver = in_process_rig(loaded, clock.time).driver
            self.drive_description = "in-process simulated belt"
        else:
            self.driver = build_driver(loaded, clock.time)
            self.drive_description = f"{cfg.drive.kind} driver"
        self.controller = Controller(self.core, self.driver, clock, logger=self._log)
        self.sensors = SensorHub(cfg.sensors.effective_inputs(), self._submit_reading)
        self._programs = encode_programs(
            loaded.programs,
            cfg.safety,
            default=cfg.programs.default,
            returning=cfg.programs.returning,
        )
        mqtt, broker = cfg.mqtt, broker_settings(loaded)
        treadmill_id = cfg.treadmill.id
        self.link = TabletLink(
            treadmill_id=treadmill_id,
            host=broker.host,
            port=broker.port,
            prefix=broker.prefix,
            username=broker.username,
            password=broker.password,
            tls=broker.tls,
            identifier=mqtt.client_id,
            keepalive_s=mqtt.keepalive_s,
            state_period_s=mqtt.state_period_s,
            backoff_max_s=mqtt.backoff_max_s,
            execute=self._execute,
            extra_state=self._extra_state,
            snapshot=self.core.snapshot,
            now=clock.time,
            to_unix=self.to_unix,
            sensors=self.sensors.mqtt_names,
            on_sensor=self._on_sensor_message,
            before_publish=self._commit_journal,
            on_refused=self._refused_before_the_core,
            on_rival=self._rival_daemon,
            logger=self._log.bind(part="mqtt"),
        )
        # Wiring by listener order, each under the controller's guard: refusals pass the
        # coalescer first; then the journal, so an event is on disk before the link can
        # publish it (SR-14); then the link; then systemd's status line.
        self.controller.gate = self._admit_event
        self.controller.subscribe(self._journal_event, name="journal")
        self.controller.subscribe(self.link.on_event, name="mqtt")
        self.controller.subscribe(self._on_event_status, name="systemd-status")

    # ------------------------------------------------------------------ journal (SR-14)

    def _open_journal(self) -> None:
        """Open the journal and close what a crash left open. A journal that cannot be opened
        does not stop the daemon: it serves the tablet with a latched fault that says why,
        and starts no session."""
        cfg = self.loaded.config.journal
        path = self.loaded.resolve(cfg.path)
        try:
            self.journal = Journal.open(path, max_size_mb=cfg.max_size_mb)
            interrupted = self.journal.close_interrupted(self.wall())
            self._sessions_before = self.journal.last_session_id()
        except JournalError as exc:
            self.journal = None
            self._journal_problem = str(exc)
            return
        if interrupted:
            self._log.warning("sessions_interrupted", sessions=interrupted, journal=str(path))

    def _journal_event(self, event: Event) -> None:
        if self.journal is not None:
            try:
                # Records keep real wall time, stepped or not (the published ts does not).
                self.journal.record(event, self.wall() - (self.clock.time() - event.t))
            except Exception as exc:
                # A record that cannot be written, for whatever reason, foreseen or not, is a
                # journal failure (fail closed, SR-14): never an exception out of the listener.
                self._journal_failed(_reason(exc))

    def tick(self) -> None:
        """The control tick, with what watches it: the loop's health (a tick more than two
        periods late is logged; LATE_TICKS_TO_STOP within twenty periods stop the session),
        systemd's watchdog (pinged only from here, so only while the loop really ticks) and the
        session's top speed for the journal (its samples, twice a second, would miss a
        peak)."""
        now = self.clock.time()
        self.health.observe(now)
        if self.health.overrun:
            self.health.overrun = False
            self._log.error("control_loop_overrun", **self.health.as_json())
            self.controller.submit(
                LoopOverrun(t=now, detail=f"{LATE_TICKS_TO_STOP} ticks late within a second")
            )
        elif self.health.last_lag_s > 2 * self.health.period_s:
            self._log.warning("control_tick_late", lag_ms=round(self.health.last_lag_s * 1e3, 1))
        self.controller.tick()
        if not self._ready:
            self._ready = True  # the loop ticks and has commanded the belt to stand still
            self.notifier.notify(READY="1", STATUS=self._status_text())
        watchdog = self.notifier.watchdog_s
        if watchdog is not None and now - self._last_watchdog >= watchdog:
            self._last_watchdog = now
            self.notifier.notify(WATCHDOG="1")
        if self.journal is not None:
            status = self.driver.status()
            if status is not None:
                self.journal.observe_speed(status.speed_mph)

    def _status_text(self) -> str:
        snap = self.core.snapshot()
        text = snap.state.value
        if snap.session is not None:
            text += f", session {snap.session.id} ({snap.session.user})"
        if snap.latched is not None:
            text += f", latched {snap.latched.cause.value}"
        return text

    def _extra_state(self) -> JsonObject:
        """The state's extensions (MQTT-API.md allows new fields): the control loop's lag, the
        programs a tablet may offer, and which wired sensor inputs cannot be read, and why."""
        loop: JsonObject = {**self.health.as_json()}
        journal: JsonObject = {
            "used_pct": round(self._journal_used * 100.0),
            "nearly_full": self._journal_warned,
        }
        extra: JsonObject = {"loop": loop, "programs": self._programs, "journal": journal}
        problems = self.sensors.problems()
        if problems:
            extra["sensor_problems"] = {**problems}
        return extra

    def _on_event_status(self, _event: Event) -> None:
        self.notifier.notify(STATUS=self._status_text())

    def _commit_journal(self) -> None:
        if self.journal is not None:
            try:
                self.journal.commit()
            except Exception as exc:  # called by the link's outbox: never raised into it
                self._journal_failed(_reason(exc))

    def _journal_tick(self) -> None:
        """Twice a second: the counts of refusals whose second has ended, the belt's speed
        while a session is open, a commit (so the journal is up to date even while nothing is
        published: a broker that is down) and a look at how full the journal is."""
        self.clock.call_at(self.clock.time() + JOURNAL_PERIOD_S, self._journal_tick)
        for counted in self.refusals.due(self.clock.time()):
            self.controller.publish(counted)
        if self.journal is not None:
            snap = self.core.snapshot()
            try:
                if snap.session is not None:
                    self.journal.sample(self.wall(), snap.belt_mph, snap.target_mph)
                self.journal.commit()
                self._journal_used = self.journal.used_fraction()
            except Exception as exc:
                self._journal_failed(_reason(exc))
            self._warn_journal_nearly_full()

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
        if self._journal_problem is not None:
            return
        self._journal_problem = detail
        self.journal = None
        self._log.error("journal_failed", error=detail)
        # Not from inside the listener that found it: the controller is still delivering the
        # events of the input that caused the write.
        asyncio.get_running_loop().call_soon(self._report_journal_problem)

    def _report_journal_problem(self) -> None:
        assert self._journal_problem is not None
        if self._journal_reported:
            return
        self._journal_reported = True
        self.controller.submit(
            JournalHealth(t=self.clock.time(), writable=False, detail=self._journal_problem)
        )

    def _execute(self, command: Command) -> Reply | None:
        """A tablet command; a start carries the user's history from the journal.

        Should its handling fail unexpectedly, a stop still reaches the driver (fail closed)
        and the exception goes on to the contract, which answers ``internal_error`` and hands
        it to the link's log and to :meth:`_refused_before_the_core` (SR-15)."""
        try:
            if isinstance(command, StartSession):
                if self._signals:
                    return Refused(RefusalCode.NOT_ALLOWED, "the daemon is shutting down")
                command = replace(command, returning=self._returning(command.user))
            if self._journal_problem is not None:
                # Found during this read (its report is only scheduled): the core hears of it
                # before the command, so no start goes ahead on a journal known to be broken.
                self._report_journal_problem()
            return self.controller.submit(command).reply
        except Exception:
            if isinstance(command, EStop):
                self.driver.emergency_stop()
            elif isinstance(command, Stop):
                self.driver.command_speed(0.0)
            raise

    def _admit_event(self, event: Event) -> bool:
        """The controller's gate: a refusal the coalescer holds back is counted instead; the
        count of a second that has ended goes out first."""
        admitted = self.refusals.admit(event)
        for counted in self.refusals.take_closed():
            self.controller.publish(counted)
        return admitted

    def _refused_before_the_core(self, reply: CommandReply, kind: str | None) -> None:
        """A command the link refused itself (malformed, retained, too old, or whose handling
        failed): a command_refused event like the core's, through the same coalescer,
        journaled before the reply goes out and published (SR-14)."""
        assert reply.error is not None
        fields: dict[str, JsonScalar] = {
            "command": kind if kind is not None else "unreadable",
            "code": reply.error.value,
            "message": reply.message,
        }
        event = Event(EventType.COMMAND_REFUSED, self.clock.time(), fields)
        if self._admit_event(event):
            self.controller.publish(event)

    def _rival_daemon(self, instance: str) -> None:
        """Another daemon publishes this treadmill's state: two controllers for one belt, each
        answering some of the tablet's commands (an estop among them) for the wrong belt. A
        fault: the belt stops and stays latched until a reset (SR-12, SR-13)."""
        self.controller.submit(
            RivalDaemon(
                t=self.clock.time(),
                detail=f"another daemon ({instance}) publishes this treadmill's state",
            )
        )

    def _returning(self, user: str) -> bool:
        if self.journal is None:
            return False  # no history to go by: first-session rules, the strictest
        try:
            return self.journal.has_history(user.strip())
        except JournalError as exc:
            self._journal_failed(str(exc))
            return False

    # ------------------------------------------------------------------ sensors

    def _submit_reading(self, reading: GripReading | FallReading) -> None:
        """The sensor readers' dispatcher (GPIO, Modbus, MQTT): a reading whose handling fails
        unexpectedly is logged (at most once a second, with a count) and lost, so its sensor
        goes stale, unsafe (SR-8); it never ends the reader's task, nor the daemon (SR-15)."""
        try:
            self.controller.submit(reading)
        except Exception as exc:
            self._failures += 1
            now = self.clock.time()
            if now - self._failure_logged_t >= FAILURE_LOG_EVERY_S:
                self._failure_logged_t = now
                self._log.error(
                    "sensor_reading_failed",
                    count=self._failures,
                    error=repr(exc),
                    traceback="".join(traceback.format_exception(exc)),
                )

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
            self.controller.submit(GripReading(t=t, hand=hand, held=True))
        self.controller.submit(FallReading(t=t, fallen=False))
        self.clock.call_at(t + self.loaded.config.sensors.report_interval_s, self._simulated_user)

    # ------------------------------------------------------------------ lifecycle

    def _on_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            self._log.info("shutdown_requested", signal=signal.Signals(signum).name)
            self.notifier.notify(STOPPING="1", STATUS="stopping the belt, then exiting")
        else:
            self._log.warning("second_signal_emergency_stop", signal=signal.Signals(signum).name)
            self.controller.submit(EStop(t=self.clock.time()))
        self._signalled.set()

    def _at_standstill(self) -> bool:
        snap = self.core.snapshot()
        return (
            snap.state not in ARMED_STATES
            and snap.commanded_mph == 0.0
            and snap.belt_mph <= STANDSTILL_MPH
        )

    async def _shutdown(self) -> None:
        """SR-11: controlled stop, standstill (bounded), then out; an emergency stop if the
        belt is not at standstill by the bound."""
        self.controller.submit(Shutdown(t=self.clock.time()))
        deadline = self.clock.time() + SHUTDOWN_BOUND_S
        period = 1.0 / self.loaded.config.control.tick_hz
        # Polled at the tick period: the control loop keeps running meanwhile and is what
        # brings the belt down; this only watches for the end.
        while not self._at_standstill():
            if self.clock.time() >= deadline:
                self._log.error("shutdown_standstill_timeout", bound_s=SHUTDOWN_BOUND_S)
                self.controller.submit(EStop(t=self.clock.time()))
                break
            await asyncio.sleep(period)
        self._log.info("shutdown_complete", state=self.core.state.value)

    async def _control(self) -> None:
        """The control loop; if it ends other than by a clean shutdown (a failure of its own or
        of another task), the drive is told to stop at once, while its I/O task still runs."""
        try:
            await run_control_loop(self, self.clock, 1.0 / self.loaded.config.control.tick_hz)
        except BaseException:
            if not self._clean_exit:
                self.driver.emergency_stop()
            raise

    async def run(self) -> int:
        self._assemble()
        # What start-up built lives as long as the daemon: out of the collector's sight, a
        # full collection (measured at 12 ms) no longer scans it, and the loop stalls less.
        gc.collect()
        gc.freeze()
        cfg = self.loaded.config
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
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
            if self._journal_problem is not None:
                self._report_journal_problem()
            self._journal_tick()
            if cfg.sensors.source == "simulator":
                self._simulated_user()
            async with asyncio.TaskGroup() as tg:
                control = tg.create_task(self._control(), name="control")
                driver = tg.create_task(self.driver.run(), name="driver")
                link = tg.create_task(self.link.run(), name="mqtt")
                inputs = [
                    tg.create_task(run, name="sensor-input")
                    for run in self.sensors.build_sources(self.clock.time)
                ]
                await self._signalled.wait()
                await self._shutdown()
                # The link goes first, while the loop still ticks: it publishes the final
                # state and "offline" before the daemon is gone.
                link.cancel()
                await asyncio.wait([link])
                self._clean_exit = True
                control.cancel()
                driver.cancel()
                for task in inputs:
                    task.cancel()
            clean = True
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            if not clean or self.core.state in LATCHED_STATES:
                # Whatever ended us, the belt is told to stop the fastest way it can.
                self.driver.emergency_stop()
            else:
                self.driver.command_speed(0.0)
            if self.journal is not None:
                self._commit_journal()
                self.journal.close()
        return 0
