"""``treadguard tablet ...``: a technician's MQTT client that speaks contract v1 like a tablet.

Each command (``start``, ``speed``, ``stop``, ``estop``, ``reset``, ``heartbeat``) connects,
subscribes to ``<p>/reply`` before it publishes, sends one command at QoS 1 (never retained, or
the daemon would refuse it) and waits, bounded by ``--timeout``, for the reply with its id.
``watch`` shows the daemon's state and events live and sends the tablet's heartbeat every
second, which is what keeps a session started from here running (SR-12). It keeps a persistent
MQTT session (a client id stable per device, no clean start, a session expiry), so the broker
holds the events published while it is away and hands them over when it is back (SR-14).

Exit codes: 0 ok, 1 refused by the daemon, 2 bad arguments or configuration, 3 no broker or no
reply (see ``docs/tablet-cli.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import hashlib
import json
import math
import os
import shutil
import signal
import socket
import ssl
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import TypeAdapter, ValidationError

import treadguard.config as config_package
from treadguard.config.loading import (
    CONFIG_ENV,
    INSTALLED_CONFIG,
    TABLET_PASSWORD_ENV,
    ConfigError,
    default_config,
    load_connection,
)
from treadguard.config.schema import MAX_PREFIX_CHARS, MqttTopicPrefix
from treadguard.contract.event_text import describe
from treadguard.contract.measures import MeasureKind
from treadguard.contract.mqtt import JsonObject, Topics, state_key, to_payload
from treadguard.controller.aio import in_own_task, wait_until_set
from treadguard.controller.arg_types import named_path
from treadguard.controller.mqtt_settings import broker_settings
from treadguard.safety.inputs import CommandType

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2  # argparse's own code for bad arguments, reused for a bad configuration
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C

PASSWORD_ENV = TABLET_PASSWORD_ENV
BUILTIN_CONFIG = Path(config_package.__file__).parent / "sim.toml"
DEFAULT_TIMEOUT_S = 5.0
TIMEOUT_MAX_S = 3600.0  # longer is no wait for a broker but a typing slip (1e29)
HEARTBEAT_PERIOD_S = 1.0  # docs/tablet-contract.md: a tablet sends one every second
KEEPALIVE_S = 5  # a broker gone without a word (a cable pulled) is noticed within ~1.5x this
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
EVENTS_REMEMBERED = 1024  # event ids kept to drop a second delivery of the same event
# How long the broker keeps a watch's session (and the QoS 1 events for it) while it is away.
SESSION_EXPIRY_S = 3600

_PREFIX: TypeAdapter[str] = TypeAdapter(MqttTopicPrefix)


class _Stopping(Exception):
    """Raised inside a watch connection's task group to end it when the watch is over."""


# ------------------------------------------------------------------------------- connection


@dataclass(frozen=True, slots=True)
class Connection:
    host: str
    port: int
    topics: Topics
    username: str | None
    password: str | None
    tls: ssl.SSLContext | None
    timeout_s: float
    client_id: str | None = None  # --client-id: this device's, for watch's persistent session

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def client(self, identifier: str, *, persistent: bool = False) -> aiomqtt.Client:
        """``persistent``: resume the session the broker keeps for ``identifier`` (its
        subscriptions, the QoS 1 messages that came while we were away) and ask it to keep
        the session for SESSION_EXPIRY_S after a disconnection."""
        connect = None
        if persistent:
            connect = Properties(PacketTypes.CONNECT)
            connect.SessionExpiryInterval = SESSION_EXPIRY_S
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            identifier=identifier,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=not persistent,
            properties=connect,
            keepalive=KEEPALIVE_S,
            timeout=self.timeout_s,
            tls_context=self.tls,
            # Without it every QoS 1 round trip costs ~88 ms (Nagle meets delayed ACKs).
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )


def _identifier() -> str:
    # Unique, so two technicians (or a watch and a start) never take over each other's
    # connection on a broker that leaves ids alone; the shipped one binds them to accounts, so
    # there each needs an account (docs/tablet-cli.md). 22 characters, within the 23 every
    # MQTT broker must accept.
    return f"tg-tablet-{uuid.uuid4().hex[:12]}"


def _watch_identifier(conn: Connection) -> str:
    """This device's watch: the same id every time (so the broker's session for it is found
    again), unless --client-id names one. Built from the host name, the login and the prefix;
    22 characters, within the 23 every MQTT broker must accept. The id only finds the session:
    a broker may replace it by the account's name (use_username_as_clientid)."""
    if conn.client_id is not None:
        return conn.client_id
    seed = f"{socket.gethostname()}\0{getpass.getuser()}\0{conn.topics.prefix}"
    return f"tg-watch-{hashlib.sha256(seed.encode()).hexdigest()[:13]}"


def _default_config() -> Path:
    """$TREADGUARD_CONFIG when it is set, whether or not there is a file there (a misspelt
    name must not send an E-STOP to another treadmill's topics); else the installed
    configuration where there is one, so a tablet on the board finds its broker; else the
    built-in one (a broker on this machine's port 1883), for trying the simulator."""
    named = os.environ.get(CONFIG_ENV)
    if named is not None:
        if not named.strip():
            raise ConfigError(
                Path(CONFIG_ENV), [f"{CONFIG_ENV} is set, but empty: name the file, or unset it"]
            )
        return default_config()
    return INSTALLED_CONFIG if INSTALLED_CONFIG.exists() else BUILTIN_CONFIG


def _connection(args: argparse.Namespace) -> Connection:
    """The broker and prefix: the configuration file (with its TREADGUARD_MQTT__* overrides),
    then the command line. Raises ConfigError, or OSError/ssl.SSLError for unusable TLS files."""
    # The treadmill and the broker alone: the rest of the file (the programs, the rules, the
    # clinic's zone, the drive) is the daemon's, and a slip there must not keep a stop or an
    # E-STOP from going out.
    loaded = load_connection(getattr(args, "config", None) or _default_config())
    broker = broker_settings(loaded)
    tls = None if broker.tls is None else broker.tls.context()
    username: str | None = getattr(args, "username", None)
    # The password never comes from the command line, where `ps` would show it to anyone; nor
    # from [mqtt] password, which is the daemon's own account, not a tablet's.
    password = os.environ.get(PASSWORD_ENV) or None
    if password is not None and username is None:
        print(f"warning: {PASSWORD_ENV} is set but --username is not: no login", file=sys.stderr)
    return Connection(
        host=getattr(args, "host", None) or broker.host,
        port=getattr(args, "port", None) or broker.port,
        topics=Topics(getattr(args, "prefix", None) or broker.prefix),
        username=username,
        password=password,
        tls=tls,
        timeout_s=getattr(args, "timeout", DEFAULT_TIMEOUT_S),
        client_id=getattr(args, "client_id", None),
    )


# --user on an entry of the record: the treadmill refuses it if the session is another user's.
_WHOSE = "whose session it is (their code): a session of anyone else is refused, not entered"


def _command(kind: CommandType, /, **fields: Any) -> JsonObject:
    """A contract command with a fresh id; fields left out (None) are not sent."""
    command: JsonObject = {"id": uuid.uuid4().hex, "type": kind.value}
    command.update({k: v for k, v in fields.items() if v is not None})
    return command


def _text(payload: Any) -> str:
    return payload.decode(errors="replace") if isinstance(payload, bytes) else str(payload)


def _json_object(payload: Any) -> dict[str, Any] | None:
    if not isinstance(payload, bytes | bytearray):
        return None
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------------- one command


# The entries of the record: the daemon refuses them unstamped (docs/tablet-contract.md).
STAMPED = frozenset(
    {
        CommandType.OUTCOME_BEFORE,
        CommandType.OUTCOME_AFTER,
        CommandType.CONFIRM_FIRST_SESSION,
        CommandType.RECORD_MEASURE,
    }
)


def _daemon_clock(reply: dict[str, Any]) -> float | None:
    """The daemon's clock less our monotonic one, from a reply's ``ts`` as it arrives (late
    by its way through the broker: a stamp made from it comes out a little old, never new);
    None for a reply without one (an older daemon)."""
    ts = reply.get("ts")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        return None
    return float(ts) - time.monotonic()


async def _send(conn: Connection, command: JsonObject) -> int:
    """Publish one command and wait for its reply; print the outcome; return the exit code.

    An entry of the record is stamped in the daemon's clock (not this computer's, nor the
    board's wall clock, which network time may have stepped since the daemon started): a
    heartbeat goes first, and its reply's ``ts`` tells the daemon's clock. (A heartbeat does
    nothing but say someone is there, as the entry itself does.)"""
    topics = conn.topics
    availability: str | None = None
    connected = False
    probe = _command(CommandType.HEARTBEAT) if command["type"] in STAMPED else None
    try:
        async with conn.client(_identifier()) as client:
            connected = True
            # Both before the command goes out, so neither the reply nor the retained
            # availability can pass us by.
            await client.subscribe(topics.reply, qos=1)
            await client.subscribe(topics.availability, qos=1)
            first = probe if probe is not None else command
            await client.publish(topics.cmd, to_payload(first), qos=1, retain=False)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(conn.timeout_s):
                    async for message in client.messages:
                        if message.topic.value == topics.availability:
                            availability = _text(message.payload)
                            continue
                        reply = _json_object(message.payload)
                        if reply is None:
                            continue
                        if probe is not None and _answers(reply, probe["id"]):
                            probe = None
                            offset = _daemon_clock(reply)
                            if offset is not None:
                                command["ts"] = round(time.monotonic() + offset, 3)
                            await client.publish(
                                topics.cmd, to_payload(command), qos=1, retain=False
                            )
                        elif _answers(reply, command["id"]):
                            return _print_reply(reply)
    except aiomqtt.MqttError as exc:
        doing = "lost the connection to" if connected else "cannot connect to"
        print(f"error: {doing} the MQTT broker at {conn.where}: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    print(_no_reply(conn, str(command["type"]), availability), file=sys.stderr)
    return EXIT_UNREACHABLE


def _answers(reply: dict[str, Any], command_id: Any) -> bool:
    """The reply is to this command: its id, or one of the ``ids`` of refusals coalesced
    under a flood (``rate_limited``)."""
    ids = reply.get("ids")
    return reply.get("id") == command_id or (isinstance(ids, list) and command_id in ids)


def _print_reply(reply: dict[str, Any]) -> int:
    if reply.get("ok") is True:
        print("ok")
        return EXIT_OK
    error = reply.get("error")
    error = error if isinstance(error, dict) else {}
    print(f"refused: {error.get('code', 'unknown')}: {error.get('message', '')}")
    return EXIT_REFUSED


def _no_reply(conn: Connection, kind: str, availability: str | None) -> str:
    topics = conn.topics
    said = (
        f"error: no reply to {kind} within {conn.timeout_s:g} s on {topics.reply} at {conn.where}"
    )
    if availability is None:
        return (
            f"{said}; the daemon's availability ({topics.availability}) was never seen: no "
            "daemon has connected with this prefix since the broker started (is `treadguard "
            "run` running? are the prefix and treadmill id right?)"
        )
    if availability == "offline":
        return f"{said}; the daemon's availability is offline: it is stopped or has lost the broker"
    return (
        f"{said}; the daemon's availability is {availability!r}, yet it did not answer (may "
        f"this account publish on {topics.cmd}?)"
    )


# ------------------------------------------------------------------------------- watch


def _fmt_num(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "?"


def status_line(connected: bool, availability: str | None, state: dict[str, Any] | None) -> str:
    """One line: ``online | running | latched none | grip L held, R held | ... | session ...``."""
    if not connected:
        parts = ["broker lost"]
    else:
        parts = [availability if availability is not None else "availability never seen"]
    if state is None:
        return " | ".join([*parts, "no state yet"])
    # What matters for safety first: a terminal cuts the line at its width.
    parts.append(str(state.get("state", "?")))
    latched = state.get("latched")
    if isinstance(latched, dict):
        parts.append(f"latched {latched.get('kind')}: {latched.get('cause')}")
    else:
        parts.append("latched none")
    grip = state.get("grip")
    grip = grip if isinstance(grip, dict) else {}
    hands = [
        f"{h} {'held' if grip.get(k) else 'released'}" for h, k in (("L", "left"), ("R", "right"))
    ]
    parts.append("grip " + ", ".join(hands))
    parts.append("FALL" if state.get("fall") else "no fall")
    stale = state.get("stale")
    parts.append("stale " + (",".join(map(str, stale)) if stale else "none"))
    problems = state.get("sensor_problems")
    if isinstance(problems, dict) and problems:
        # A wired input that cannot be read, and why: what a technician wiring it needs.
        parts.append("inputs " + "; ".join(f"{k}: {v}" for k, v in problems.items()))
    parts.append(
        f"belt {_fmt_num(state.get('speed_mph'))} mph, target {_fmt_num(state.get('target_mph'))}"
    )
    session = state.get("session")
    if isinstance(session, dict):
        parts.append(
            f"session {session.get('user')}/{session.get('program')} "
            f"{_fmt_num(session.get('elapsed_s'), 1)}/{_fmt_num(session.get('cap_s'), 0)} s, "
            f"{_fmt_num(session.get('remaining_s'), 1)} s left"
        )
    else:
        parts.append("no session")
    commissioning = state.get("commissioning")
    run = commissioning.get("run") if isinstance(commissioning, dict) else None
    if isinstance(run, dict):
        # A guided commissioning: what `tablet commission-confirm` names (--step, --ask).
        if run.get("outcome") is not None:
            parts.append(f"commissioning {run.get('outcome')}")
        elif run.get("waiting") == "technician":
            parts.append(
                f"commissioning step {run.get('index')}/{run.get('of')} "
                f"--step {run.get('step')} --ask {run.get('ask')}: {run.get('prompt')}"
            )
        else:
            parts.append(f"commissioning step {run.get('index')}/{run.get('of')}: waiting")
    return " | ".join(parts)


def event_line(event: dict[str, Any]) -> str:
    """``event <type>: <what happened>``, in the scenario timeline's words."""
    scalars = {
        k: v if v is None or isinstance(v, str | int | float | bool) else json.dumps(v)
        for k, v in event.items()
    }
    return f"event {event.get('type', '?')}: {describe(scalars)}"


class WatchView:
    """What ``watch`` prints. On a terminal the status line is rewritten in place; otherwise
    (a log, a pipe) a line is printed only when something other than the continuously moving
    numbers changed (``contract.mqtt.state_key``, as the daemon decides), so a log is not
    flooded at 4 lines a second."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self._events_seen: dict[str, None] = {}  # event ids, oldest first
        self.connected = False
        self.availability: str | None = None
        self.state: dict[str, Any] | None = None
        self._last_key: object = None
        self._drawn = False  # a status line is on the terminal's last row

    def _key(self) -> object:
        steady = None if self.state is None else state_key(self.state)
        return (self.connected, self.availability, steady)

    def show(self) -> None:
        line = status_line(self.connected, self.availability, self.state)
        if self.tty:
            # Cut to the terminal's width: a wrapped line cannot be rewritten with "\r".
            width = shutil.get_terminal_size().columns - 1
            sys.stdout.write("\r" + line[:width] + "\x1b[K")
            self._drawn = True
        elif (key := self._key()) != self._last_key:
            self._last_key = key
            sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def say(self, line: str) -> None:
        """A line of its own (an event, a lost broker), above the status line on a terminal."""
        if self.tty and self._drawn:
            sys.stdout.write("\r\x1b[K")
        sys.stdout.write(line + "\n")
        if self.tty and self._drawn:
            self.show()
        sys.stdout.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            sys.stdout.write("\n")  # leave the last status on screen, the prompt below it
            sys.stdout.flush()

    def on_message(self, topics: Topics, message: aiomqtt.Message) -> None:
        topic = message.topic.value
        if topic == topics.availability:
            self.availability = _text(message.payload)
            self.show()
        elif topic == topics.state:
            state = _json_object(message.payload)
            if state is not None:
                self.state = state
                self.show()
        elif topic == topics.events:
            event = _json_object(message.payload)
            if event is not None and self._first_time(event.get("event_id")):
                self.say(event_line(event))

    def _first_time(self, event_id: Any) -> bool:
        """An event delivered twice (QoS 1 resends one whose PUBACK was lost) is shown once."""
        if not isinstance(event_id, str):
            return True
        if event_id in self._events_seen:
            return False
        self._events_seen[event_id] = None
        while len(self._events_seen) > EVENTS_REMEMBERED:
            del self._events_seen[next(iter(self._events_seen))]
        return True


async def _heartbeats(client: aiomqtt.Client, topics: Topics, stop: asyncio.Event) -> None:
    """SR-12: one heartbeat a second, on a fixed schedule so that a slow publication does not
    make the gaps grow. Their replies are not read: only their absence would matter, and that
    is the daemon's to act on."""
    loop = asyncio.get_running_loop()
    due = loop.time()
    while not stop.is_set():
        await client.publish(
            topics.cmd, to_payload(_command(CommandType.HEARTBEAT)), qos=1, retain=False
        )
        due = max(due + HEARTBEAT_PERIOD_S, loop.time())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(due):
                await stop.wait()


async def _read(client: aiomqtt.Client, topics: Topics, view: WatchView) -> None:
    async for message in client.messages:
        view.on_message(topics, message)


async def _until(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Stopping


async def _watch_tasks(
    client: aiomqtt.Client, topics: Topics, view: WatchView, stop: asyncio.Event, *, heartbeat: bool
) -> None:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_read(client, topics, view))
        if heartbeat:
            tg.create_task(_heartbeats(client, topics, stop))
        tg.create_task(_until(stop))


async def _watch(conn: Connection, *, heartbeat: bool, duration_s: float | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if duration_s is not None:
        loop.call_later(duration_s, stop.set)
    view = WatchView(tty=sys.stdout.isatty())
    # One id for this device, the same on every run: the broker keeps the session (QoS 1
    # events included) while we are away, and drops a half-open connection of ours at once.
    identifier = _watch_identifier(conn)
    delay = BACKOFF_MIN_S
    ever_connected = False
    try:
        while not stop.is_set():
            failure: str | None = None
            try:
                # A fresh client every try, resuming the broker's session for this device.
                async with conn.client(identifier, persistent=True) as client:
                    ever_connected = True
                    delay = BACKOFF_MIN_S
                    view.connected = True
                    # Again on every connection: a broker restarted without persistence has
                    # forgotten the session; QoS 1, so the broker holds events for it.
                    for topic in (conn.topics.availability, conn.topics.state, conn.topics.events):
                        await client.subscribe(topic, qos=1)
                    view.show()
                    try:
                        # In a task of its own: on Python 3.11 a failed group leaves its task's
                        # cancellation count raised (controller/aio.py), and this one goes on.
                        await in_own_task(
                            _watch_tasks(client, conn.topics, view, stop, heartbeat=heartbeat),
                            name="tablet-watch-tasks",
                        )
                    except* _Stopping:
                        pass
            except* aiomqtt.MqttError as group:
                failure = "; ".join(str(e) for e in group.exceptions)
            if failure is not None:
                if not ever_connected:
                    print(
                        f"error: cannot connect to the MQTT broker at {conn.where}: {failure}",
                        file=sys.stderr,
                    )
                    return EXIT_UNREACHABLE
                if view.connected:  # once per loss, not once per failed retry
                    view.connected = False
                    view.availability = None  # unknown until the broker says it again
                    view.say("broker lost, reconnecting")
            # Never asyncio.timeout: it depends on the task's cancellation count.
            if not await wait_until_set(stop, delay):
                delay = min(delay * 2, BACKOFF_MAX_S)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        view.close()
    return EXIT_OK


# ------------------------------------------------------------------------------- the command


def cmd_tablet(args: argparse.Namespace) -> int:
    try:
        conn = _connection(args)
    except ConfigError as exc:
        print(f"{exc.path}: {len(exc.problems)} error(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, ssl.SSLError, ValueError) as exc:
        print(f"error: cannot use the TLS files of the configuration: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    match args.tablet_command:
        case "watch":
            return asyncio.run(_watch(conn, heartbeat=args.heartbeat, duration_s=args.for_s))
        case "start":
            command = _command(
                CommandType.START_SESSION,
                user=args.user,
                program=args.program,
                cap_s=args.cap_s,
                target_mph=args.target_mph,
            )
        case "speed":
            command = _command(CommandType.SET_SPEED, mph=args.mph, clinician=args.clinician)
        case "commission-confirm":
            command = _command(CommandType.COMMISSION_CONFIRM, step=args.step, ask=args.ask)
        case "commission-abort":
            command = _command(CommandType.COMMISSION_ABORT)
        case "outcome-before" | "outcome-after":
            kind = CommandType(args.tablet_command.replace("-", "_"))
            command = _command(
                kind,
                session_id=args.session_id,
                user=args.user,
                pain=args.pain,
                exertion=getattr(args, "exertion", None),
                notes=args.notes,
                clinician=args.clinician,
            )
        case "confirm-first-session":
            command = _command(
                CommandType.CONFIRM_FIRST_SESSION,
                session_id=args.session_id,
                user=args.user,
                clinician=args.clinician,
            )
        case "measure":
            command = _command(
                CommandType.RECORD_MEASURE,
                user=args.user,
                kind=args.kind,
                value=args.value,
                date=args.date,
                clinician=args.clinician,
            )
        case other:  # stop, estop, reset, heartbeat: no fields, named as on the wire
            command = _command(CommandType(other))
    try:
        code = asyncio.run(_send(conn, command))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    if code == EXIT_OK and args.tablet_command == "start":
        print(
            "note: the session needs the tablet's heartbeat: keep `treadguard tablet watch` "
            "running, or the daemon stops the session after the heartbeat grace",
            file=sys.stderr,
        )
    return code


def _host(text: str) -> str:
    if not text.strip():  # an empty one fell back to the configuration's, unsaid
        raise argparse.ArgumentTypeError("an empty host: name the broker's host or address")
    return text


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    if value > TIMEOUT_MAX_S:
        raise argparse.ArgumentTypeError(f"must be at most {TIMEOUT_MAX_S:g} s: {text!r}")
    return value


def _finite(text: str) -> float:
    # JSON has no NaN or infinity: such a value could not even be sent.
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _prefix(text: str) -> str:
    # The configuration's own rule (no wildcards, no leading or trailing "/"): a bad prefix is
    # a usage error here, not a crash inside the MQTT client.
    try:
        return _PREFIX.validate_python(text)
    except ValidationError:
        raise argparse.ArgumentTypeError(
            f"not a topic prefix (no wildcards, spaces, leading or trailing '/'; at most "
            f"{MAX_PREFIX_CHARS} characters): {text!r}"
        ) from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number (1-65535): {text!r}")
    return value


def _connection_options() -> argparse.ArgumentParser:
    # SUPPRESS: an option not given leaves no attribute, so the same option given before the
    # sub-command (on `tablet`) is not overwritten by the sub-command's default.
    opts = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    group = opts.add_argument_group("connection")
    group.add_argument(
        "--config",
        type=named_path,
        help="configuration for broker, prefix and TLS (default: $TREADGUARD_CONFIG, else "
        "/etc/treadguard/treadguard.toml if present, else the built-in config/sim.toml); "
        "TREADGUARD_MQTT__* variables override it",
    )
    group.add_argument("--host", type=_host, help="broker host (default: the configuration's)")
    group.add_argument("--port", type=_port, help="broker port (default: the configuration's)")
    group.add_argument(
        "--prefix", type=_prefix, help="topic prefix (default: treadmill/<treadmill.id>)"
    )
    group.add_argument(
        "--username",
        help=f"broker account (default: none); the password is read from {PASSWORD_ENV}",
    )
    group.add_argument(
        "--client-id",
        metavar="ID",
        help="this device's MQTT client id for watch's persistent session (default: one "
        "derived from the host name, the login and the prefix); give each watch its own",
    )
    group.add_argument(
        "--timeout",
        type=_positive,
        metavar="SECONDS",
        help=f"how long to wait for the broker and a reply (default {DEFAULT_TIMEOUT_S:g})",
    )
    return opts


def add_tablet_parser(sub: Any) -> None:
    """Register ``tablet`` on the main parser's sub-parsers (``sub.add_parser`` is used)."""
    opts = _connection_options()
    tablet = sub.add_parser(
        "tablet",
        parents=[opts],
        help="send tablet commands and watch the daemon over MQTT (contract v1)",
        description="A technician's tablet: every command waits for the daemon's reply. "
        "Exit codes: 0 ok, 1 refused, 2 bad arguments, 3 no broker or no reply.",
    )
    tablet.set_defaults(func=cmd_tablet)
    cmds = tablet.add_subparsers(dest="tablet_command", required=True, metavar="COMMAND")

    start = cmds.add_parser(
        "start", parents=[opts], help=f"start a session ({CommandType.START_SESSION})"
    )
    start.add_argument("--user", required=True, help="the user's code (never a name)")
    start.add_argument("--program", help="default: chosen by the daemon from the user's history")
    start.add_argument("--cap-s", type=_finite, metavar="S", help="belt-moving time cap in seconds")
    start.add_argument("--target-mph", type=_finite, metavar="X", help="first target speed")

    speed = cmds.add_parser(
        "speed", parents=[opts], help=f"change the target speed ({CommandType.SET_SPEED})"
    )
    speed.add_argument("mph", type=_finite, metavar="MPH", help="the new target speed in mph")
    speed.add_argument(
        "--clinician", metavar="CODE", help="who asks, for the record (a code, never a name)"
    )

    for kind, text in (
        (CommandType.OUTCOME_BEFORE, "the user's pain before a session (once it has started)"),
        (CommandType.OUTCOME_AFTER, "the user's pain and exertion after a session"),
    ):
        outcome = cmds.add_parser(kind.value.replace("_", "-"), parents=[opts], help=text)
        outcome.add_argument("session_id", metavar="SESSION", help="the session's id")
        outcome.add_argument(
            "--pain", type=int, required=True, metavar="0-10", help="the user's pain now, 0 to 10"
        )
        if kind is CommandType.OUTCOME_AFTER:
            outcome.add_argument(
                "--exertion", type=int, metavar="0-10", help="perceived exertion (CR10)"
            )
        outcome.add_argument("--user", metavar="USER", help=_WHOSE)
        outcome.add_argument("--notes", help="a few sentences for the record")
        outcome.add_argument("--clinician", metavar="CODE", help="who enters it (a code)")

    first = cmds.add_parser(
        "confirm-first-session",
        parents=[opts],
        help="confirm that a short first session counts as the user's first "
        f"({CommandType.CONFIRM_FIRST_SESSION}, docs/plan.md)",
    )
    first.add_argument("session_id", metavar="SESSION", help="the first session's id")
    first.add_argument("--user", metavar="USER", help=_WHOSE)
    first.add_argument("--clinician", metavar="CODE", help="who confirms it (a code)")

    measure = cmds.add_parser(
        "measure",
        parents=[opts],
        help=f"record one of a user's measures ({CommandType.RECORD_MEASURE}, docs/plan.md)",
    )
    measure.add_argument("user", metavar="USER", help="the user's code (never a name)")
    measure.add_argument(
        "kind",
        choices=[k.value for k in MeasureKind],
        help="tug (s), koos (0-100), womac (0-96) or walk_10m (s)",
    )
    measure.add_argument("value", type=_finite, metavar="VALUE", help="seconds, or the score")
    measure.add_argument(
        "--date", metavar="YYYY-MM-DD", help="the day it was taken (default: today, the clinic's)"
    )
    measure.add_argument("--clinician", metavar="CODE", help="who records it (a code)")

    for kind, text in (
        (CommandType.STOP, "controlled stop: ends the session"),
        (CommandType.ESTOP, "emergency stop (latched)"),
        (CommandType.RESET, "clear a latched stop or fault"),
        (CommandType.HEARTBEAT, "send one heartbeat"),
    ):
        cmds.add_parser(kind.value, parents=[opts], help=text)

    # A guided commissioning run's (docs/commissioning.md): the step and request to confirm
    # are the state's commissioning.run "step" and "ask", as `tablet watch --json` shows them.
    confirm = cmds.add_parser(
        "commission-confirm",
        parents=[opts],
        help=f"confirm the commissioning run's current request ({CommandType.COMMISSION_CONFIRM})",
    )
    confirm.add_argument("--step", required=True, help="the run's step, e.g. grip_left")
    confirm.add_argument("--ask", required=True, help="the run's request, e.g. release_left")
    cmds.add_parser(
        "commission-abort",
        parents=[opts],
        help=f"give the commissioning run up: an emergency stop ({CommandType.COMMISSION_ABORT})",
    )

    watch = cmds.add_parser(
        "watch",
        parents=[opts],
        help="live state and events; sends the heartbeat every second, which keeps a "
        "session started from here running",
    )
    watch.add_argument(
        "--no-heartbeat",
        dest="heartbeat",
        action="store_false",
        default=True,
        help="only watch: a session then stops after the heartbeat grace",
    )
    watch.add_argument(
        "--for",
        dest="for_s",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="end after this long (default: until SIGINT or SIGTERM)",
    )
