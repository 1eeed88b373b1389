"""The ``treadguard`` command."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aiomqtt

import treadguard.config as config_package
from treadguard import __version__
from treadguard.config.loading import (
    CONFIG_ENV,
    INSTALLED_CONFIG,
    SIM_USER_PASSWORD_ENV,
    TABLET_PASSWORD_ENV,
    ConfigError,
    LoadedConfig,
    default_config,
    environment_problems,
    load_config,
    no_default_config,
)
from treadguard.config.schema import SimulatedDriveSection
from treadguard.contract.codes import code_problem, shown_code
from treadguard.contract.event_text import clock_text
from treadguard.controller.arg_types import named_path
from treadguard.controller.broker_config import DEBIAN_MOSQUITTO_CONF
from treadguard.controller.commission import CommissioningResult, guided_errand, run_simulated
from treadguard.controller.daemon import Daemon, JournalHeld
from treadguard.controller.doctor import (
    BELT_PROBE_MPH,
    BELT_WORD,
    DoctorOptions,
    confirm_on_terminal,
    diagnose_or_signal,
    render,
)
from treadguard.controller.doctor import as_json as doctor_json
from treadguard.controller.journal import (
    CommissioningStatus,
    EventRow,
    Journal,
    JournalError,
    Machine,
    MeasureRow,
    NoJournal,
    backup,
)
from treadguard.controller.logs import configure_logging
from treadguard.controller.mqtt_settings import broker_settings
from treadguard.controller.plan import (
    Proposal,
    UserRecord,
    measure_trends,
    outcomes_of,
    plan_text,
    propose,
)
from treadguard.controller.preflight import load_runnable
from treadguard.controller.simulation import (
    ScenarioResult,
    SimulationError,
    run_realtime,
    run_virtual,
)
from treadguard.controller.terminal_text import make_output_safe
from treadguard.drivers.vfd_codec import RegisterMap, RegisterMapError
from treadguard.simulator.belt import BeltParams
from treadguard.simulator.modbus_device import SimulatedVfd, serve_modbus_rtu, serve_modbus_tcp
from treadguard.simulator.mqtt_user import INSTRUCTIONS, InstructionError, serve_user, tell_user
from treadguard.simulator.mqtt_user import Broker as MqttBroker
from treadguard.simulator.scenario import ScenarioError, load_scenario
from treadguard.simulator.trackmaster_device import (
    INJECTION_KINDS,
    TrackmasterModel,
    serve_trackmaster,
)

if TYPE_CHECKING:
    from treadguard.controller.report import Clinic

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_UNREACHABLE = 3
# doctor: no check failed, but one or more were not checked (not proven: docs/doctor.md).
EXIT_NOT_CHECKED = 4

BUILTIN_CONFIG = Path(config_package.__file__).parent / "sim.toml"
DELTA_MAP = Path(config_package.__file__).parent / "drives" / "delta-vfd-e.toml"


def _config_for(path: Path, explicit: Path | None, scenario_config: Path | None) -> LoadedConfig:
    # A simulation builds the configured driver too: the checks of run, not only the file's.
    if explicit is not None:
        return load_runnable(explicit)
    if scenario_config is not None:
        resolved = (
            scenario_config if scenario_config.is_absolute() else path.parent / scenario_config
        )
        return load_runnable(resolved)
    return load_runnable(BUILTIN_CONFIG)


def _chosen_config(args: argparse.Namespace) -> Path | None:
    """--config, else $TREADGUARD_CONFIG, else the installed file; None (said on stderr) when
    none was named and the default is missing, or the environment misspells a variable (a
    misspelt TREADGUARD_CONFIG leaves the default in its place)."""
    if args.config is not None:
        return Path(args.config)
    misspelt = environment_problems()
    if misspelt:
        for line in misspelt:
            print(f"error: {line}", file=sys.stderr)
        return None
    path = default_config()
    problem = no_default_config(path)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return None
    return path


def _summary(result: ScenarioResult) -> str:
    verdict = "PASS" if result.passed else "FAIL"
    stops = ", ".join(f"{s.cause} at {clock_text(s.t_s)}" for s in result.estops) or "none"
    cap = "" if result.cap_s is None else f" of cap {result.cap_s:g} s"
    lines = [
        f"{verdict} {result.scenario}: {result.name}",
        f"  final state {result.final_state}; belt max {result.max_speed_mph:.2f} mph "
        f"(commanded max {result.max_commanded_mph:.2f}, rate max "
        f"{result.max_accel_mph_s:.2f} mph/s); belt moving {result.belt_moving_s:.1f} s{cap}; "
        f"stops: {stops}",
    ]
    lines += [f"  failed: {f}" for f in result.failures]
    return "\n".join(lines)


def cmd_simulate(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, "json" if args.json else "auto")
    all_passed = True
    for path in args.scenarios:
        try:
            scenario = load_scenario(path)
            loaded = _config_for(path, args.config, scenario.config)
        except (ScenarioError, ConfigError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        echo = None if args.json else print
        if echo is not None:
            print(f"== {path}: {scenario.name}")
        wire = not isinstance(loaded.config.drive, SimulatedDriveSection)
        if wire and not args.realtime and echo is not None:
            print(
                f"        drive.kind is {loaded.config.drive.kind!r}: playing in real time "
                "through the real driver against a simulated device"
            )
        try:
            if args.realtime or wire:
                result = asyncio.run(
                    run_realtime(scenario, str(path), loaded, echo=echo, speed=args.speed)
                )
            else:
                result = run_virtual(scenario, str(path), loaded, echo=echo)
        except SimulationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        all_passed &= result.passed
        if args.json:
            print(json.dumps(result.as_json(), sort_keys=False), flush=True)
        else:
            print(_summary(result), flush=True)
    return 0 if all_passed else EXIT_FAILED


def cmd_check_config(args: argparse.Namespace) -> int:
    """What run checks, no less: the file, and the parts run builds from it (SR-15)."""
    try:
        load_runnable(args.file)
    except ConfigError as exc:
        print(f"{exc.path}: {len(exc.problems)} error(s)")
        for problem in exc.problems:
            print(f"  {problem}")
        return EXIT_BAD_INPUT
    print("ok")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon: control loop, driver and the tablet contract over MQTT, until signalled."""
    try:
        loaded = load_runnable(args.config)
        logging_cfg = loaded.config.logging
        configure_logging(args.log_level or logging_cfg.level, logging_cfg.format)
        return asyncio.run(Daemon(loaded).run())
    except JournalHeld as exc:  # another treadguard drives this treadmill: nothing touched
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ConfigError as exc:  # found loading, or building a part: the field, no traceback
        print(f"{exc.path}: {len(exc.problems)} error(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _brake_wear(text: str) -> float:
    try:
        wear = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= wear < 1.0:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text} must be at least 0 and below 1")
    return wear


async def _serve_modbus(args: argparse.Namespace) -> None:
    rmap = RegisterMap.from_toml(args.register_map)
    vfd = SimulatedVfd(
        rmap,
        comm_fault_action=args.comm_fault_action,
        comm_timeout=round(args.comm_timeout_s * 10),
        mph_per_hz=args.mph_per_hz,
        device_id=args.device_id,
        belt_params=BeltParams(brake_wear=args.brake_wear),
    )
    # Fault injection (SR-9 tests by hand): see simulator/modbus_device.py.
    vfd.line_delay_s = args.line_delay_ms / 1000
    if args.exception is not None:
        vfd.answer_with_exception(
            args.exception,
            reads=args.exception_on in ("reads", "all"),
            writes=args.exception_on in ("writes", "all"),
            addresses=set(args.exception_register) if args.exception_register else None,
            for_s=args.exception_for_s,
        )
    if args.ignore_writes:
        vfd.ignore_writes()
    if args.tcp is not None:
        host, _, port = args.tcp.rpartition(":")
        server = await serve_modbus_tcp(host or "127.0.0.1", int(port), vfd=vfd)
        where = f"{server.host}:{server.port}"
    else:
        server = await serve_modbus_rtu(vfd=vfd, baudrate=args.baud, parity=args.parity)
        where = str(server.path)
    print(where, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
        await vfd.close()


def cmd_sim_device(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, "auto")
    try:
        if args.device == "trackmaster":
            model = TrackmasterModel(
                resume_last_speed=args.resume_last_speed, starts_with_cds=not args.no_cds
            )
            asyncio.run(
                serve_trackmaster(
                    model=model,
                    belt_params=BeltParams(brake_wear=args.brake_wear),
                    link_path=args.link,
                    line_delay_s=args.line_delay_ms / 1000,
                    inject=args.inject,
                    inject_after_s=args.inject_after,
                    inject_for_s=args.inject_for,
                )
            )
        else:
            if (args.tcp is None) == (not args.rtu):
                print("error: give exactly one of --tcp HOST:PORT and --rtu", file=sys.stderr)
                return EXIT_BAD_INPUT
            asyncio.run(_serve_modbus(args))
    except (OSError, RegisterMapError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


def _sim_user_broker(loaded: LoadedConfig, username: str | None) -> tuple[MqttBroker, str]:
    """The broker and the simulated user's own account: never the daemon's, which a broker
    with the shipped ACL does not let publish sensor readings (they would be dropped without
    a word, and the simulated user would look alive while reporting nothing)."""
    b = broker_settings(loaded)
    if username is None and b.username is not None:
        raise ConfigError(
            loaded.path,
            [
                f"mqtt.username: the broker needs a login, and {b.username!r} is the daemon's "
                "account, which may not publish sensor readings: give the simulated user an "
                f"account of its own with --username NAME (its password in "
                f"{SIM_USER_PASSWORD_ENV}) that the ACL lets write <prefix>/sensors/# and read "
                "<prefix>/simulator/user (docs/mqtt-security.md)"
            ],
        )
    password = os.environ.get(SIM_USER_PASSWORD_ENV) or None
    return MqttBroker(b.host, b.port, username, password), b.prefix


async def _serve_sim_user(broker: MqttBroker, prefix: str, interval_s: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(serve_user(broker, prefix, report_interval_s=interval_s, stop=stop))

    def on_signal() -> None:
        stop.set()
        task.cancel()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def cmd_sim_user(args: argparse.Namespace) -> int:
    """A simulated user's grip and fall sensors over MQTT, or one instruction to it."""
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        broker, prefix = _sim_user_broker(loaded, args.username)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        if args.tell is not None:
            asyncio.run(tell_user(broker, prefix, args.tell))
            print(f"told the simulated user on {prefix}: {args.tell}")
            return 0
        print(
            f"simulated user on {prefix} via {broker.host}:{broker.port}: both hands on the "
            "handrails; tell it what to do with: treadguard sim-user --tell 'release both'",
            flush=True,
        )
        asyncio.run(_serve_sim_user(broker, prefix, loaded.config.sensors.report_interval_s))
    except InstructionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except aiomqtt.MqttError as exc:
        print(f"error: MQTT broker {broker.host}:{broker.port}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return 0


def _read_journal(config: Path) -> tuple[LoadedConfig, Journal]:
    loaded = load_config(config)
    return loaded, Journal.read_only(loaded.resolve(loaded.config.journal.path).resolve())


def cmd_history(args: argparse.Namespace) -> int:
    """The sessions in the journal, oldest first: a table, or one JSON object a line."""
    try:
        loaded, journal = _read_journal(args.config)
        sessions = journal.sessions(args.user)
    except (ConfigError, JournalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.user is not None and not _user_taken(args.user, on_record=bool(sessions)):
        return EXIT_BAD_INPUT
    if args.json:
        for session in sessions:
            print(json.dumps(session.as_json()))
    elif sessions:
        from treadguard.controller.report import history_table

        print(history_table(sessions, loaded.config.clinic.zone()))
    else:
        print("no sessions" + (f" of {args.user}" if args.user else ""))
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    """A consistent copy of the journal, safe while the daemon runs (docs/daemon.md)."""
    try:
        loaded = load_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    source = loaded.resolve(loaded.config.journal.path).resolve()
    target: Path = args.file
    if _is_folder(target):  # a folder (a USB stick): the usual name, in it
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = target / f"journal-{loaded.config.treadmill.id}-{stamp}.sqlite"
    try:
        done = backup(source, target, machine=Machine.of(loaded.config), now=time.time())
    except JournalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(
        f"{done.path}: {done.sessions} session(s), schema version {done.schema_version}, "
        f"{done.size_bytes / 1e6:.1f} MB"
    )
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """The technician's checklist after wiring (docs/doctor.md); exit 0 only if all pass, 1 if
    one failed, EXIT_NOT_CHECKED if none failed but one was not checked."""
    belt = args.belt or args.belt_confirmed
    if belt and not args.belt_confirmed and not sys.stdin.isatty():
        print(
            f"error: --belt starts the belt, and asks for {BELT_WORD} on the terminal first; "
            "there is no terminal here: run it at the treadmill, or give --belt-confirmed "
            "(the belt clear, someone at the treadmill)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    # With --json, stdout carries the JSON alone: what is said to the technician goes to stderr.
    talk = sys.stderr if args.json else sys.stdout

    def say(text: str) -> None:
        print(text, file=talk, flush=True)

    async def confirm(prompt: str) -> bool:
        if args.belt_confirmed:
            return True
        return await confirm_on_terminal(prompt, say)

    options = DoctorOptions(
        service_user=args.service_user,
        tablet_username=args.tablet_username,
        tablet_password=os.environ.get(TABLET_PASSWORD_ENV) or None,
        wait_s=args.wait_s,
        walk=args.walk,
        walk_wait_s=args.walk_wait_s,
        belt=belt,
        confirm=confirm,
        say=say,
        mosquitto_conf=args.mosquitto_conf,
    )
    configure_logging("error", "auto")
    report = asyncio.run(diagnose_or_signal(args.config, options))
    if isinstance(report, signal.Signals):
        print(
            f"treadguard doctor: interrupted by {report.name}; the drive was told to stop "
            "(no report)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if args.json:
        print(json.dumps(doctor_json(report)))
    else:
        print(render(report, args.config))
    if report.passed:
        return 0
    return EXIT_FAILED if report.failed else EXIT_NOT_CHECKED


def _clinic(loaded: LoadedConfig) -> Clinic:
    # The reports' modules (jinja2, matplotlib and numpy behind them) are imported by the
    # commands that write reports, never by the daemon's `run`.
    from treadguard.controller.report import Clinic

    cfg = loaded.config
    titles = {name: program.title for name, program in loaded.programs.items()}
    return Clinic(treadmill=cfg.treadmill.id, zone=cfg.clinic.zone(), titles=titles)


def _write(text: str, out: Path, what: str) -> bool:
    """``text`` to ``out``; False (said on stderr) when it cannot be written there."""
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"error: cannot write the {what} to {out}: {exc.strerror or exc}", file=sys.stderr)
        return False
    return True


def _out_path(given: Path | None, name: str) -> Path:
    out = given if given is not None else Path(name)
    return out / name if _is_folder(out) else out  # --out /tmp: the usual name, in that folder


def _is_folder(path: Path) -> bool:
    """Whether ``path`` is a folder; False where that cannot be told (a folder on the way this
    user may not enter, a name too long): writing there says why."""
    try:
        return path.is_dir()
    except OSError:
        return False


def cmd_report(args: argparse.Namespace) -> int:
    """One session as a self-contained HTML page: facts, speed against time, events."""
    try:
        loaded, journal = _read_journal(args.config)
        session = journal.session(args.session)
        if session is None:
            print(f"error: no session {args.session} in the journal", file=sys.stderr)
            return EXIT_BAD_INPUT
        from treadguard.controller.report import session_report

        page = session_report(
            session,
            journal.events(session.id),
            journal.samples(session.id),
            clinic=_clinic(loaded),
            written=time.time(),
        )
    except (ConfigError, JournalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = _out_path(args.out, f"session-{session.id}.html")
    if not _write(page, out, "report"):
        return EXIT_BAD_INPUT
    print(out)
    return 0


def _file_name(user: str) -> str:
    # A user code is printable text, and may hold a slash or a space: not in a file's name.
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in user).lstrip(".") or "_"


def _user_taken(user: str, *, on_record: bool) -> bool:
    """Whether a command goes on with the user's code it was given: one the contract takes
    (contract/codes.py, the check of every code a person types), or one an older journal holds
    (``on_record``), whose record stays readable, said on stderr with its escapes. Otherwise
    the contract's refusal, on stderr."""
    problem = code_problem(user, "user")
    if problem is None:
        return True
    if on_record:
        held = code_problem(user, f"user {shown_code(user)}")
        print(
            f"warning: {held}: its record is shown as the journal holds it, that character "
            "as an escape; new records under this code are refused",
            file=sys.stderr,
        )
        return True
    print(f"error: {problem}", file=sys.stderr)
    return False


def cmd_patient(args: argparse.Namespace) -> int:
    """Every session of one user as a self-contained HTML page: the trend and a row each."""
    try:
        loaded, journal = _read_journal(args.config)
        sessions = journal.sessions(args.user)
        if not _user_taken(args.user, on_record=bool(sessions)):
            return EXIT_BAD_INPUT
        if not sessions:
            print(f"error: no sessions of {args.user!r} in the journal", file=sys.stderr)
            return EXIT_BAD_INPUT
        from treadguard.controller.report import patient_report

        record = journal.user_record(args.user)
        page = patient_report(
            args.user,
            sessions,
            clinic=_clinic(loaded),
            written=time.time(),
            outcomes=record.outcomes,
            proposal=_proposal(loaded, record),
            measures=record.measures,
        )
    except (ConfigError, JournalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    out = _out_path(args.out, f"patient-{_file_name(args.user)}.html")
    if not _write(page, out, "report"):
        return EXIT_BAD_INPUT
    print(out)
    return 0


def _proposal(loaded: LoadedConfig, record: UserRecord) -> Proposal:
    return propose(
        record,
        loaded.rules,
        loaded.programs,
        zone=loaded.config.clinic.zone(),
        now=time.time(),
    )


def cmd_plan(args: argparse.Namespace) -> int:
    """The proposal for a user's next session and why, and their measures (docs/plan.md)."""
    user = args.user
    try:
        loaded, journal = _read_journal(args.config)
        record = journal.user_record(user)
    except (ConfigError, JournalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not _user_taken(user, on_record=bool(record.sessions or record.measures)):
        return EXIT_BAD_INPUT
    proposal = _proposal(loaded, record)
    trends = measure_trends(record.measures)
    if args.json:
        body = proposal.as_json()
        body["measures"] = [m.__dict__ for m in trends]
        print(json.dumps(body))
        return 0
    print(plan_text(proposal, trends, sessions=len(record.sessions)))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """The sessions as CSV (one row a session) or as a FHIR R4 Bundle (docs/fhir.md), on
    stdout or to --out."""
    try:
        loaded, journal = _read_journal(args.config)
        sessions = journal.sessions(args.user)
        events: dict[int, list[EventRow]] = {}
        measures: list[MeasureRow] = []
        events = {s.id: journal.events(s.id) for s in sessions}
        if args.fhir:
            measures = journal.measures(args.user)
    except (ConfigError, JournalError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.user is not None and not _user_taken(args.user, on_record=bool(sessions or measures)):
        return EXIT_BAD_INPUT
    if args.user is not None and not sessions and not measures:
        # A user with measures but no session yet (a baseline) has a record to export.
        print(f"error: no sessions of {args.user!r} in the journal", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.fhir:
        # fhir.resources and its models, for this command only.
        from treadguard.controller.fhir_export import export_fhir

        text = export_fhir(
            sessions, events, clinic=_clinic(loaded), measures=measures, user=args.user
        )
        suffix = ".fhir.json"
    else:
        from treadguard.controller.report import sessions_csv

        outcomes = {session: outcomes_of(rows) for session, rows in events.items()}
        text = sessions_csv(sessions, clinic=_clinic(loaded), outcomes=outcomes)
        suffix = ".csv"
    if args.out is None:
        sys.stdout.write(text)
        return 0
    name = f"sessions-{loaded.config.treadmill.id}"
    if args.user is not None:
        name += f"-{_file_name(args.user)}"
    out = _out_path(args.out, name + suffix)
    if not _write(text, out, "sessions"):
        return EXIT_BAD_INPUT
    print(out)
    return 0


def _commission_status(loaded: LoadedConfig, *, as_json: bool) -> int:
    """The commissioning record, read-only: exit 0 only if current."""
    path = loaded.resolve(loaded.config.journal.path).resolve()
    every = loaded.config.commissioning.every_days
    try:
        journal = Journal.read_only(path)
        machine = Machine.of(loaded.config)
        status = journal.commissioning_status(time.time(), every_days=every, machine=machine)
        baselines = journal.commissioned_baselines(time.time(), every_days=every, machine=machine)
        known = True
    except NoJournal as exc:  # no journal yet: nothing on record
        status = CommissioningStatus(False, f"no commissioning on record ({exc})")
        baselines, known = {}, True
    except JournalError as exc:  # there, but unreadable here: it may hold a current one
        status = CommissioningStatus(False, f"the journal cannot be read ({exc})", known=False)
        baselines, known = {}, False
    if as_json:
        body = status.as_json()
        body["baselines"] = {
            k.value: {
                "standstill_s": b.standstill_s,
                "deceleration_mph_per_s": b.deceleration_mph_per_s,
            }
            for k, b in baselines.items()
        }
        print(json.dumps(body))
    else:
        known = known and status.known
        verdict = "current" if status.current else "NOT CURRENT" if known else "NOT KNOWN"
        print(f"commissioning of {loaded.config.treadmill.id}: {verdict}: {status.detail}")
        for kind, b in baselines.items():
            print(
                f"  baseline {kind.value}: standstill {b.standstill_s:.2f} s, "
                f"{b.deceleration_mph_per_s:.2f} mph/s"
            )
        if known and not status.current:
            print("  patient sessions are refused until `treadguard commission` passes")
    return 0 if status.current else EXIT_FAILED


def cmd_commission(args: argparse.Namespace) -> int:
    """Prove every stop source on the machine (docs/commissioning.md), or show the record."""
    try:
        loaded = load_config(args.config) if args.status else load_runnable(args.config)
    except ConfigError as exc:
        print(f"{exc.path}: {len(exc.problems)} error(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.status:
        return _commission_status(loaded, as_json=args.json)
    cfg = loaded.config
    journal_path = loaded.resolve(cfg.journal.path).resolve()
    print(
        f"commissioning {cfg.treadmill.id}: every stop source proven at "
        f"{cfg.commissioning.proof_mph:g} mph; journal {journal_path}",
        flush=True,
    )
    if args.simulated:
        if not isinstance(cfg.drive, SimulatedDriveSection):
            print(
                f"error: --simulated needs drive.kind = 'simulator' (this one is "
                f"{cfg.drive.kind!r}): on a real drive a technician proves the stops",
                file=sys.stderr,
            )
            return EXIT_BAD_INPUT
        configure_logging(args.log_level, "auto")
        result = run_simulated(loaded, journal_path, technician=args.technician, echo=print)
    else:
        # On the machine: the daemon's whole assembly (driver, sensors, the tablet over MQTT),
        # the technician guided here. Stop the treadguard service first.
        configure_logging(args.log_level, cfg.logging.format)
        results: list[CommissioningResult] = []
        errand = guided_errand(technician=args.technician, echo=print, results=results)
        try:
            asyncio.run(Daemon(loaded, errand=errand).run())
        except JournalHeld as exc:  # the service runs: nothing was connected or touched
            print(f"error: {exc}", file=sys.stderr)
            print("commissioning aborted: stop the treadguard service first", file=sys.stderr)
            return EXIT_FAILED
        if not results:
            print("error: the commissioning did not run (see the log)", file=sys.stderr)
            return EXIT_FAILED
        result = results[0]
    print(f"commissioning {result.outcome.value}" + (f": {result.detail}" if result.detail else ""))
    return 0 if result.passed else EXIT_FAILED


def _number(
    low: float, *, above: bool = False, inf: bool = False, high: float = math.inf
) -> Callable[[str], float]:
    """An argparse type: a number at least ``low`` (above it, with ``above``) and at most
    ``high``, never NaN, and infinite only where ``inf`` allows it; a bad one is argparse's
    plain error naming the option."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if math.isnan(value) or (math.isinf(value) and not inf):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if value < low or (above and value == low):
            bound = f"above {low:g}" if above else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"must be {bound}: {text!r}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high:g}: {text!r}")
        return value

    return parse


def _integer(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number from ``low`` to ``high`` (0x.. accepted)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}: {text!r}")
        return value

    return parse


def _session_number(text: str) -> int:
    """An argparse type: a session's number, in the digits 0-9 (int() would also take other
    scripts' digits, and report session 3 for an Arabic-Indic three)."""
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"not a session number (the digits 0-9): {text!r}")
    return int(text)


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT with a port 0-65535: {text!r}")
    return text


LOG_LEVELS = ["debug", "info", "warning", "error"]


def _log_level_option(
    parser: argparse.ArgumentParser, whose: str, default: str | None = "warning"
) -> None:
    parser.add_argument(
        "--log-level",
        default=default,
        choices=LOG_LEVELS,
        help=f"how much of {whose} log to print (default: {default})"
        if default is not None
        else f"how much of {whose} log to print (default: the configuration's logging.level)",
    )


INSTALLED_HELP = (
    f"the configuration file (default: ${CONFIG_ENV}, else {INSTALLED_CONFIG}; "
    "config/sim.toml in a checkout is the built-in simulated treadmill)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="treadguard",
        description="Safety controller for reverse-walking sessions on a motorized treadmill.",
    )
    parser.add_argument("--version", action="version", version=f"treadguard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="play scenarios against the simulated treadmill")
    sim.add_argument(
        "scenarios",
        nargs="+",
        type=named_path,
        metavar="SCENARIO",
        help="scenario files (.toml, docs/scenarios.md); simulator/scenarios/ has examples",
    )
    sim.add_argument("--json", action="store_true", help="one JSON object per scenario")
    sim.add_argument("--realtime", action="store_true", help="real time instead of virtual")
    sim.add_argument(
        "--speed",
        type=_number(0.0, above=True),
        default=1.0,
        help="with --realtime: play this many times faster than real time",
    )
    sim.add_argument(
        "--config",
        type=named_path,
        default=None,
        help="configuration (default: the scenario's, else config/sim.toml)",
    )
    _log_level_option(sim, "the controller's")
    sim.set_defaults(func=cmd_simulate)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=named_path, help="the configuration file to check")
    check.set_defaults(func=cmd_check_config)

    dev = sub.add_parser(
        "sim-device",
        help="serve a simulated treadmill on a pty or socket (prints its address first)",
    )
    dev_sub = dev.add_subparsers(dest="device", required=True)
    tm = dev_sub.add_parser("trackmaster", help="a Trackmaster treadmill on a pty")
    tm.add_argument(
        "--link",
        type=named_path,
        default=None,
        help="also keep a symlink at this path pointing at the current pty",
    )
    tm.add_argument(
        "--line-delay-ms", type=_number(0.0), default=0.0, help="delay every byte both ways"
    )
    tm.add_argument(
        "--inject",
        choices=INJECTION_KINDS,
        default=None,
        help="answer every request (the stop included) with this fault; SIGUSR1 toggles it",
    )
    tm.add_argument(
        "--inject-after",
        type=_number(0.0),
        default=0.0,
        metavar="S",
        help="begin the --inject fault this many seconds after start (default 0)",
    )
    tm.add_argument(
        "--inject-for",
        type=_number(0.0, above=True),
        default=None,
        metavar="S",
        help="how long the --inject fault lasts (default: for ever)",
    )
    tm.add_argument(
        "--resume-last-speed",
        action="store_true",
        help="a model that keeps its set speed through a stop and restarts at it on A0",
    )
    tm.add_argument(
        "--no-cds",
        action="store_true",
        help="a treadmill whose communication-disconnect stop is off in its own setup: A0 "
        "starts the belt without it (it reports D0 33, and runs on when its host falls silent)",
    )
    mb = dev_sub.add_parser("modbus", help="a Delta VFD-E style drive on Modbus TCP or RTU")
    mb.add_argument(
        "--tcp",
        type=_host_port,
        metavar="HOST:PORT",
        default=None,
        help="Modbus TCP on this address (port 0: any free one)",
    )
    mb.add_argument("--rtu", action="store_true", help="Modbus RTU on a pty")
    mb.add_argument(
        "--baud",
        type=_integer(300, 4_000_000),
        default=19200,
        help="RTU: bits a second (default 19200)",
    )
    mb.add_argument(
        "--parity", choices=["N", "E", "O"], default="N", help="RTU: parity (default N)"
    )
    mb.add_argument(
        "--device-id",
        type=_integer(1, 247),
        default=1,
        help="the drive's Modbus address, 1-247 (default 1)",
    )
    mb.add_argument(
        "--mph-per-hz",
        type=_number(0.0, above=True),
        default=0.05,
        help="belt speed per output hertz, as the treadmill's gearing gives (default 0.05)",
    )
    mb.add_argument(
        "--register-map",
        type=named_path,
        default=DELTA_MAP,
        help="the drive's register map (default: config/drives/delta-vfd-e.toml)",
    )
    mb.add_argument(
        "--comm-timeout-s",
        type=_number(0.0),
        default=0.5,
        help="parameter 09.03 (0 disables it: an unsafe drive the driver refuses)",
    )
    mb.add_argument(
        "--comm-fault-action",
        type=_integer(0, 65535),
        default=1,
        help="parameter 09.02: 0 warn and run on, 1 ramp to stop, 2 coast, 3 run on",
    )
    mb.add_argument("--line-delay-ms", type=_number(0.0), default=0.0, help="delay every request")
    mb.add_argument(
        "--exception",
        type=_integer(1, 255),
        default=None,
        metavar="CODE",
        help="answer requests with this Modbus exception code (e.g. 4, device failure)",
    )
    mb.add_argument(
        "--exception-on",
        choices=["reads", "writes", "all"],
        default="all",
        help="which requests get the --exception (default: all)",
    )
    mb.add_argument(
        "--exception-register",
        type=_integer(0, 65535),
        action="append",
        default=[],
        metavar="ADDR",
        help="only requests touching this register (repeatable; default: every register)",
    )
    mb.add_argument(
        "--exception-for-s",
        type=_number(0.0, above=True, inf=True),
        default=math.inf,
        help="answer with the --exception this long, then normally (default: for ever)",
    )
    mb.add_argument(
        "--ignore-writes",
        action="store_true",
        help="answer writes but apply none (command source on the keypad)",
    )
    for p in (tm, mb):
        _log_level_option(p, "the device's")
        p.add_argument(
            "--brake-wear",
            type=_brake_wear,
            default=0.0,
            metavar="FRACTION",
            help="a worn brake: this fraction (0 to below 1) of every deceleration is lost",
        )
    dev.set_defaults(func=cmd_sim_device)

    user = sub.add_parser(
        "sim-user",
        help="a simulated user's grip and fall sensors over MQTT (or --tell it what to do)",
    )
    user.add_argument(
        "--config",
        type=named_path,
        default=BUILTIN_CONFIG,
        help="the configuration whose broker and sensors to use (default: config/sim.toml)",
    )
    user.add_argument(
        "--username",
        default=None,
        metavar="NAME",
        help=f"the simulated user's broker account (its password in {SIM_USER_PASSWORD_ENV}); "
        "default: none, for the simulator's own broker",
    )
    user.add_argument(
        "--tell",
        metavar="INSTRUCTION",
        default=None,
        help="send one instruction to the running simulated user: " + "; ".join(INSTRUCTIONS),
    )
    user.set_defaults(func=cmd_sim_user)

    history = sub.add_parser("history", help="the sessions in the journal")
    history.add_argument("--config", type=named_path, default=None, help=INSTALLED_HELP)
    history.add_argument("--user", default=None, help="only this user's sessions")
    history.add_argument("--json", action="store_true", help="one JSON object a session")
    history.set_defaults(func=cmd_history, installed_config=True)

    doc = sub.add_parser(
        "doctor",
        help="check the board after wiring: configuration, serial port, GPIO, drive, sensors, "
        "broker, clock, journal; exit 0 only if all pass (1: one failed; 4: none failed, but "
        "one was not checked)",
    )
    doc.add_argument("--config", type=named_path, default=None, help=INSTALLED_HELP)
    doc.add_argument(
        "--walk",
        action="store_true",
        help="then ask for each sensor to be touched (hold the left rail, ...) and watch it flip",
    )
    doc.add_argument(
        "--belt",
        action="store_true",
        help=f"a Trackmaster: start the belt at {BELT_PROBE_MPH} mph for a moment to read its "
        "communication-disconnect stop back (the belt clear; it stops again at once); asks for "
        f"{BELT_WORD} on the terminal first, and never starts it while a sensor reports a user",
    )
    doc.add_argument(
        "--belt-confirmed",
        action="store_true",
        help=f"--belt without asking for {BELT_WORD} (no terminal: someone at the treadmill "
        "has made sure the belt is clear)",
    )
    doc.add_argument("--json", action="store_true", help="one JSON object: each check's verdict")
    doc.add_argument(
        "--service-user",
        default="treadguard",
        metavar="NAME",
        help="the user the service runs as, whose access to devices and the journal is checked "
        "(default: treadguard)",
    )
    doc.add_argument(
        "--tablet-username",
        default=None,
        metavar="NAME",
        help="the tablet's broker account, to check that the ACL lets it command (its password "
        f"in {TABLET_PASSWORD_ENV})",
    )
    doc.add_argument(
        "--wait-s",
        type=_number(0.0, above=True, high=60.0),
        default=3.0,
        metavar="S",
        help="how long the drive, the sensors and the broker get to answer (default 3)",
    )
    doc.add_argument(
        "--mosquitto-conf",
        type=named_path,
        default=DEBIAN_MOSQUITTO_CONF,
        metavar="FILE",
        help="the broker's main configuration file, whose include_dir and acl_file are read too "
        f"(default: {DEBIAN_MOSQUITTO_CONF}, Debian's)",
    )
    doc.add_argument(
        "--walk-wait-s",
        type=_number(0.0, above=True, high=600.0),
        default=30.0,
        metavar="S",
        help="with --walk: how long each touch is waited for (default 30)",
    )
    doc.set_defaults(func=cmd_doctor, installed_config=True)

    keep = sub.add_parser(
        "backup",
        help="copy the journal to FILE (or into a folder), safe while the daemon runs",
    )
    keep.add_argument(
        "file",
        type=named_path,
        metavar="FILE",
        help="the copy to write (never overwritten), or a folder to write it in",
    )
    keep.add_argument("--config", type=named_path, default=None, help=INSTALLED_HELP)
    keep.set_defaults(func=cmd_backup, installed_config=True)

    report = sub.add_parser(
        "report", help="one session as an HTML page: speed against time, with its events"
    )
    report.add_argument(
        "session",
        type=_session_number,
        metavar="SESSION",
        help="the session's number (treadguard history)",
    )
    report.add_argument("--config", type=named_path, default=None, help=INSTALLED_HELP)
    report.add_argument(
        "--out", type=named_path, default=None, help="the page to write (default session-N.html)"
    )
    report.set_defaults(func=cmd_report, installed_config=True)

    patient = sub.add_parser(
        "patient", help="every session of one user as an HTML page: the trend and a row each"
    )
    patient.add_argument("user", metavar="USER", help="the user's code (treadguard history)")
    patient.add_argument("--config", type=named_path, default=None, help=INSTALLED_HELP)
    patient.add_argument(
        "--out",
        type=named_path,
        default=None,
        help="the page to write (default patient-USER.html)",
    )
    patient.set_defaults(func=cmd_patient, installed_config=True)

    plan = sub.add_parser(
        "plan", help="the proposal for a user's next session and why, and their measures"
    )
    plan.add_argument("user", metavar="USER", help="the user's code (treadguard history)")
    plan.add_argument("--config", type=named_path, default=None, help=INSTALLED_HELP)
    plan.add_argument("--json", action="store_true", help="one JSON object")
    plan.set_defaults(func=cmd_plan, installed_config=True)

    export = sub.add_parser("export", help="the sessions in the journal as a file for other tools")
    form = export.add_mutually_exclusive_group(required=True)
    form.add_argument(
        "--csv", action="store_true", help="CSV, one row a session (times with the clinic's offset)"
    )
    form.add_argument(
        "--fhir",
        action="store_true",
        help="a FHIR R4 Bundle (JSON): a Patient per user, a Procedure and Observations a session",
    )
    export.add_argument(
        "--user", default=None, help="only this user's sessions (with --fhir, and measures)"
    )
    export.add_argument("--config", type=named_path, default=None, help=INSTALLED_HELP)
    export.add_argument(
        "--out", type=named_path, default=None, help="the file to write (default: standard output)"
    )
    export.set_defaults(func=cmd_export, installed_config=True)

    com = sub.add_parser(
        "commission",
        help="prove every stop source on the machine (before patient sessions), or --status",
    )
    com.add_argument("--config", type=named_path, default=None, help=INSTALLED_HELP)
    com.add_argument(
        "--status",
        action="store_true",
        help="show the commissioning record (no daemon needed); exit 0 only if current",
    )
    com.add_argument("--json", action="store_true", help="with --status: one JSON object")
    com.add_argument(
        "--simulated",
        action="store_true",
        help="on the simulated treadmill, unattended: a simulated technician does every step",
    )
    com.add_argument("--technician", default="", help="who proves the stops (journaled)")
    _log_level_option(com, "the daemon's")
    com.set_defaults(func=cmd_commission, installed_config=True)

    run = sub.add_parser(
        "run", help="the daemon: drive the treadmill and serve the tablet over MQTT"
    )
    run.add_argument("--config", type=named_path, default=None, help=INSTALLED_HELP)
    _log_level_option(run, "the daemon's", default=None)
    run.set_defaults(func=cmd_run, installed_config=True)
    from treadguard.controller.tablet import add_tablet_parser

    add_tablet_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    make_output_safe()  # first: argparse's own messages may name what was typed
    args = build_parser().parse_args(argv)
    if getattr(args, "installed_config", False) and args.config is None:
        # run, commission, history, report, patient, export, backup: the installed
        # configuration, never the simulator unless asked for.
        chosen = _chosen_config(args)
        if chosen is None:
            return EXIT_BAD_INPUT
        args.config = chosen
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (`treadguard history | head -1`): nothing more to say to it.
        # Standard output is pointed at nothing so that the interpreter's own flush at exit
        # does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
