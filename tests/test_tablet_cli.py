"""``treadguard tablet ...`` as a technician runs it: real subprocesses against a private
Mosquitto and the real daemon (``treadguard run`` on the simulated belt, simulated user).

A whole session started from the command line and kept alive past the heartbeat grace by a
running ``watch`` alone (SR-12); a speed outside the band refused with ``out_of_range`` and
exit 1 (SR-15); an emergency stop and its reset, and a reset with nothing latched; no daemon,
a stopped daemon and no broker (exit 3, saying why); ``watch`` surviving a broker restart and
rewriting its line in place on a terminal.

Every wait is bounded: on a line of the CLI's output or an MQTT message, with a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.daemon_process import DaemonProcess, daemon_config
from tests.mosquitto import (
    WAIT_S,
    Broker,
    Tablet,
    body,
    free_port,
    have_mosquitto,
    password_file,
    tablet,
    text_is,
)
from treadguard.config.loading import WALL_STEP_FILE_ENV
from treadguard.safety.limits import SafetyLimits

ROOT = Path(__file__).resolve().parents[1]
ACL = ROOT / "config" / "mosquitto" / "acl"
CLI = [sys.executable, "-m", "treadguard.controller.cli", "tablet"]
# The daemon's own settings and overrides of the developer's shell must not leak in.
ENV = {
    **{k: v for k, v in os.environ.items() if not k.upper().startswith("TREADGUARD_")},
    "PYTHONPATH": str(ROOT),
}
RUN_BOUND_S = 20.0  # one CLI command: start-up, connection, the reply
SESSION_WAIT_S = 10.0  # a 3 s countdown, and some
GRACE_S = SafetyLimits().heartbeat_grace_s  # SR-12: 5 s

# One status line of `watch`:
# "online | running | latched none | grip L held, R held | no fall | stale none |
#  belt 0.95 mph, target 1.00 | session ...".
BELT = re.compile(r"^belt (?P<speed>\S+) mph, target (?P<target>\S+)$")


# ----------------------------------------------------------------------------- helpers


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


async def tablet_cli(
    config: Path, *args: str, env: dict[str, str] | None = None, config_flag: bool = True
) -> Result:
    """``treadguard tablet [--config FILE] ARGS...`` to its end, bounded by RUN_BOUND_S."""
    prefix = ["--config", str(config)] if config_flag else []
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *prefix,
        *args,
        cwd=ROOT,
        env={**ENV, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(RUN_BOUND_S):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"treadguard tablet {' '.join(args)} did not end") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@dataclass(frozen=True)
class Status:
    availability: str
    state: str
    speed: float | None
    target: float | None
    session: str
    grip: str
    latched: str


def parse_status(line: str) -> Status | None:
    """A status line of ``watch`` (not an event, not "broker lost, reconnecting")."""
    parts = line.split(" | ")
    if len(parts) != 8:
        return None
    belt = BELT.match(parts[6])
    if belt is None:
        return None

    def num(text: str) -> float | None:
        return None if text == "?" else float(text)

    return Status(
        availability=parts[0],
        state=parts[1],
        speed=num(belt["speed"]),
        target=num(belt["target"]),
        session=parts[7],
        grip=parts[3],
        latched=parts[2],
    )


def is_status(line: str, where: Callable[[Status], bool]) -> bool:
    status = parse_status(line)
    return status is not None and where(status)


class Watch:
    """``treadguard tablet watch`` in the background, its stdout a pipe (not a terminal)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def line(self, where: Callable[[str], bool], within: float = WAIT_S) -> str:
        """The next line that satisfies ``where``, within ``within`` seconds."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(within):
                while True:
                    raw = await self.proc.stdout.readline()
                    if not raw:
                        raise AssertionError(f"watch ended early; it printed {self.lines}")
                    self.lines.append(raw.decode().rstrip("\n"))
                    if where(self.lines[-1]):
                        return self.lines[-1]
        except TimeoutError:
            raise AssertionError(f"no such line within {within} s; got {self.lines}") from None

    async def all_of(self, *wanted: Callable[[str], bool], within: float = WAIT_S) -> list[str]:
        """Lines that satisfy each of ``wanted``, in any order (state and events are separate
        topics: the contract promises no order between them), within ``within`` seconds."""
        found: dict[int, str] = {}

        def match(line: str) -> bool:
            for i, where in enumerate(wanted):
                if i not in found and where(line):
                    found[i] = line
            return len(found) == len(wanted)

        await self.line(match, within)
        return [found[i] for i in range(len(wanted))]

    async def status(
        self, where: Callable[[Status], bool], within: float = WAIT_S
    ) -> tuple[Status, str]:
        line = await self.line(lambda line: is_status(line, where), within)
        status = parse_status(line)
        assert status is not None
        return status, line

    async def end(self, signum: int | None = signal.SIGINT) -> int:
        """Signal it (None: let ``--for`` end it), read the rest of its output, its code."""
        if signum is not None:
            self.proc.send_signal(signum)
        async with asyncio.timeout(WAIT_S):
            out, _ = await self.proc.communicate()
        self.lines += out.decode().splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode


@asynccontextmanager
async def watching(config: Path, *args: str) -> AsyncIterator[Watch]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        "--config",
        str(config),
        "watch",
        *args,
        cwd=ROOT,
        env=ENV,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        yield Watch(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@asynccontextmanager
async def daemon(
    broker: Broker, tmp_path: Path, tm: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[Path, Tablet]]:
    """The real daemon on the simulated belt, and a test-side subscriber that has seen it
    come online. Yields the configuration file (for ``--config``) and the subscriber.
    ``env``: the daemon's overrides of the environment."""
    config = daemon_config(tmp_path, broker.port, treadmill_id=tm, sensors="simulator")
    process = DaemonProcess(config, tmp_path / f"{tm}.log", env={**ENV, **(env or {})})
    p = f"treadmill/{tm}"
    process.start()
    try:
        async with tablet(broker, f"{p}/availability", f"{p}/state", f"{p}/cmd") as tab:
            await tab.next(f"{p}/availability", text_is("online"))
            yield config, tab
    finally:
        process.stop()


def payload_has(fragment: bytes) -> Callable[[aiomqtt.Message], bool]:
    return lambda m: isinstance(m.payload, bytes) and fragment in m.payload


def state_of(message: aiomqtt.Message) -> dict[str, Any]:
    state = body(message)
    assert isinstance(state, dict)
    return state


# ----------------------------------------------------------------------------- a session


@pytest.mark.asyncio
async def test_sr12_whole_session_from_the_cli_kept_alive_by_watch(
    broker: Broker, tmp_path: Path
) -> None:
    """start, run past the heartbeat grace with only ``watch`` sending heartbeats (SR-12),
    speed 1.0 ok, speed 1.5 refused out_of_range with exit 1 (SR-15), stop ok."""
    tm = "tm-session"
    p = f"treadmill/{tm}"
    async with daemon(broker, tmp_path, tm) as (config, tab), watching(config) as watch:
        await watch.status(
            lambda s: (
                s.availability == "online" and s.state == "idle" and s.grip == "grip L held, R held"
            )
        )

        started = await tablet_cli(config, "start", "--user", "alice")
        assert (started.code, started.out) == (0, "ok\n"), started
        assert "tablet watch" in started.err, started
        assert "heartbeat grace" in started.err, started
        assert "SR-" not in started.err, started  # plain words, no requirement numbers
        # The command as a tablet sends it: QoS 1, not retained, a fresh id, only given fields.
        start_cmd = await tab.next(f"{p}/cmd", payload_has(b"start_session"))
        assert (start_cmd.qos, start_cmd.retain) == (1, False)
        command = body(start_cmd)
        assert isinstance(command, dict)
        assert re.fullmatch(r"[0-9a-f]{32}", command.pop("id"))
        assert command == {"type": "start_session", "user": "alice"}

        await watch.status(lambda s: s.state == "countdown")
        running, _ = await watch.status(lambda s: s.state == "running", SESSION_WAIT_S)
        assert running.session.startswith("session alice/first_session ")

        faster = await tablet_cli(config, "speed", "1.0")
        assert (faster.code, faster.out) == (0, "ok\n"), faster
        at_target, _ = await watch.status(lambda s: s.target == 1.0)
        assert at_target.state == "running"
        assert at_target.speed is not None
        assert 0.0 <= at_target.speed <= 1.2

        too_fast = await tablet_cli(config, "speed", "1.5")
        assert too_fast.code == 1, too_fast
        assert too_fast.out.startswith("refused: out_of_range: "), too_fast
        await watch.line(
            lambda line: (
                line.startswith("event command_refused: ") and "set_speed -> out_of_range" in line
            )
        )
        last_command = time.time()  # every command counts as presence, a refused one too

        # SR-12: from here only `watch` speaks for the tablet. Past the grace, still running.
        async with asyncio.timeout(GRACE_S + 4.0):
            while True:
                state = state_of(await tab.next(f"{p}/state"))
                if state["ts"] < last_command:
                    continue  # queued since the daemon came online
                assert state["state"] == "running", f"the session did not survive: {state}"
                if state["ts"] > last_command + GRACE_S + 1.0:
                    break
        # What kept it: one heartbeat a second, each with an id of its own, QoS 1, not retained.
        ids = set()
        for _ in range(int(GRACE_S)):
            message = await tab.next(f"{p}/cmd", payload_has(b'"heartbeat"'))
            assert (message.qos, message.retain) == (1, False)
            beat = state_of(message)
            assert set(beat) == {"id", "type"}, beat
            ids.add(beat["id"])
        assert len(ids) == int(GRACE_S)

        stopped = await tablet_cli(config, "stop")
        assert (stopped.code, stopped.out) == (0, "ok\n"), stopped
        await watch.status(lambda s: s.state == "stopping")
        ended, _ = await watch.all_of(
            lambda line: line.startswith("event session_ended: "),
            lambda line: is_status(line, lambda s: s.state == "idle" and s.session == "no session"),
            within=SESSION_WAIT_S,
        )
        assert "ended: operator_stop" in ended

        assert await watch.end(signal.SIGINT) == 0
    assert not any("tablet_lost" in line for line in watch.lines), watch.lines


@pytest.mark.asyncio
async def test_estop_then_reset_and_a_reset_with_nothing_latched(
    broker: Broker, tmp_path: Path
) -> None:
    """reset with nothing latched is refused not_allowed (exit 1); estop latches; reset
    clears it. Then, with the daemon stopped, a command times out naming "offline" (exit 3)."""
    tm = "tm-estop"
    p = f"treadmill/{tm}"
    async with daemon(broker, tmp_path, tm) as (config, tab):
        nothing = await tablet_cli(config, "reset")
        assert nothing.code == 1, nothing
        assert nothing.out.startswith("refused: not_allowed: "), nothing

        estop = await tablet_cli(config, "estop")
        assert (estop.code, estop.out) == (0, "ok\n"), estop
        latched = state_of(await tab.next(f"{p}/state", lambda m: state_of(m)["state"] == "estop"))
        assert latched["latched"]["cause"] == "remote_estop"

        reset = await tablet_cli(config, "reset")
        assert (reset.code, reset.out) == (0, "ok\n"), reset
        cleared = state_of(await tab.next(f"{p}/state", lambda m: state_of(m)["state"] == "idle"))
        assert cleared["latched"] is None

    # The daemon said "offline" (retained) as it stopped.
    gone = await tablet_cli(config, "heartbeat", "--timeout", "1")
    assert gone.code == 3, gone
    assert "no reply to heartbeat" in gone.err, gone
    assert "availability is offline" in gone.err, gone


# A slip left in what the daemon read when it started, which the tablet needs none of.
SLIPS_ELSEWHERE = {
    "the rules file": ("progression.toml", "[[[ a slip\n", {}),
    "the clinic's time zone": ("config", "\n[clinic]\ntimezone = 'Mars/Olympus'\n", {}),
    "an unknown key": ("config", "\n[stop_watch]\nmargin_pctt = 30\n", {}),
    "a drive's kind from the environment": ("config", "", {"TREADGUARD_DRIVE__KIND": "nope"}),
}


@pytest.mark.asyncio
@pytest.mark.parametrize("slip", list(SLIPS_ELSEWHERE))
async def test_an_estop_goes_out_whatever_the_rest_of_the_configuration_says(
    broker: Broker, tmp_path: Path, slip: str
) -> None:
    """The clinic edits the rules or the configuration while the daemon runs (the documented
    way: edit, restart between sessions) and leaves a slip somewhere a tablet command needs
    nothing of: a stop or an E-STOP from the command line still goes out and is carried out.
    Only the treadmill's and the broker's settings are read for it."""
    tm = "tm-slip"
    p = f"treadmill/{tm}"
    where, added, env = SLIPS_ELSEWHERE[slip]
    async with daemon(broker, tmp_path, tm) as (config, tab):
        edited = config if where == "config" else config.parent / where
        edited.write_text(
            (edited.read_text(encoding="utf-8") if edited.exists() else "") + added,
            encoding="utf-8",
        )
        estop = await tablet_cli(config, "estop", env=env)
        assert (estop.code, estop.out) == (0, "ok\n"), estop
        latched = state_of(await tab.next(f"{p}/state", lambda m: state_of(m)["state"] == "estop"))
        assert latched["latched"]["cause"] == "remote_estop"
        stop = await tablet_cli(config, "stop", env=env)
        assert stop.code in (0, 1), stop  # answered (nothing to stop now is a refusal)


# ----------------------------------------------------------------------------- failures


@pytest.mark.asyncio
async def test_no_daemon_times_out_saying_availability_was_never_seen(
    broker: Broker, tmp_path: Path
) -> None:
    """Broker up, daemon never started: exit 3 and why; ``watch --for`` ends by itself."""
    config = daemon_config(tmp_path, broker.port, treadmill_id="tm-nobody")
    result = await tablet_cli(config, "start", "--user", "alice", "--timeout", "1")
    assert result.code == 3, result
    assert result.out == ""
    assert "treadmill/tm-nobody/availability) was never seen" in result.err, result

    async with watching(config, "--for", "1", "--no-heartbeat") as watch:
        assert await watch.end(signum=None) == 0
    assert watch.lines == ["availability never seen | no state yet"], watch.lines


@pytest.mark.asyncio
async def test_no_broker_exits_3_naming_host_and_port(tmp_path: Path) -> None:
    """Nothing listens on the port: exit 3, the message names host:port; the port comes from
    --port, or from TREADGUARD_MQTT__PORT over the configuration file."""
    port = free_port()
    config = daemon_config(tmp_path, 1883, treadmill_id="tm-nobroker")
    for args, env in (
        (("--port", str(port), "stop"), None),
        (("watch", "--port", str(port)), None),
        (("stop",), {"TREADGUARD_MQTT__PORT": str(port)}),
    ):
        result = await tablet_cli(config, *args, env=env)
        assert result.code == 3, (args, result)
        assert f"cannot connect to the MQTT broker at 127.0.0.1:{port}" in result.err, result


@pytest.mark.asyncio
async def test_login_with_the_password_from_the_environment(tmp_path: Path) -> None:
    """A broker with logins and the shipped ACL (SR-15: only the tablet's account may
    command): the password comes from TREADGUARD_TABLET_PASSWORD, never from the command line;
    a wrong one is exit 3 with the broker's reason; an account the ACL does not let command
    gets no reply, exit 3, and the message says the daemon is online."""
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed (scripts/test installs it)")
    accounts = {"treadguard": "daemon-pw", "tablet": "tab-pw", "dashboard": "dash-pw"}
    passwd = password_file(tmp_path / "passwd", accounts)
    # As root, Mosquitto drops to the mosquitto user before it reads the password file, and
    # that user cannot read pytest's private tmp_path.
    stay_root = "user root\n" if os.geteuid() == 0 else ""
    secured = Broker(
        tmp_path,
        f"allow_anonymous false\npassword_file {passwd}\nacl_file {ACL}\n{stay_root}",
    )
    secured.start()
    tm = "tm-login"
    config = daemon_config(
        tmp_path,
        secured.port,
        treadmill_id=tm,
        mqtt_extra='username = "treadguard"\npassword = "daemon-pw"',
    )
    process = DaemonProcess(config, tmp_path / f"{tm}.log", env=ENV)
    process.start()
    try:
        login = {"TREADGUARD_TABLET_PASSWORD": "tab-pw"}
        async with asyncio.timeout(SESSION_WAIT_S):
            while True:  # bounded: until the daemon, which logs in too, answers
                result = await tablet_cli(
                    config, "--username", "tablet", "heartbeat", "--timeout", "1", env=login
                )
                if result.code != 3:
                    break
        assert (result.code, result.out) == (0, "ok\n"), result

        wrong = {"TREADGUARD_TABLET_PASSWORD": "nope"}
        refused = await tablet_cli(config, "--username", "tablet", "heartbeat", env=wrong)
        assert refused.code == 3, refused
        assert f"cannot connect to the MQTT broker at 127.0.0.1:{secured.port}" in refused.err
        assert "authorized" in refused.err.lower(), refused

        watcher = {"TREADGUARD_TABLET_PASSWORD": "dash-pw"}
        ignored = await tablet_cli(
            config, "--username", "dashboard", "stop", "--timeout", "1", env=watcher
        )
        assert ignored.code == 3, ignored
        assert "availability is 'online', yet it did not answer" in ignored.err, ignored
    finally:
        process.stop()
        secured.kill()


@pytest.mark.asyncio
async def test_bad_arguments_exit_2(tmp_path: Path) -> None:
    """argparse's exit 2: a missing --user, a speed that is not a finite number."""
    config = daemon_config(tmp_path, free_port(), treadmill_id="tm-args")
    for args in (("start",), ("speed", "nan"), ("speed", "fast"), ("watch", "--for", "0")):
        result = await tablet_cli(config, *args)
        assert result.code == 2, (args, result)


# ----------------------------------------------------------------------------- watch


@pytest.mark.asyncio
async def test_watch_survives_a_broker_restart(broker: Broker, tmp_path: Path) -> None:
    """The broker killed and restarted under a running ``watch``: it says so once and shows
    the daemon's availability again once the broker has it."""
    tm = "tm-restart"
    p = f"treadmill/{tm}"
    config = daemon_config(tmp_path, broker.port, treadmill_id=tm)
    async with watching(config, "--no-heartbeat") as watch:
        await watch.line(lambda line: line == "availability never seen | no state yet")
        async with tablet(broker) as tab:  # stands in for the daemon's "online"
            await tab.publish(f"{p}/availability", b"online", retain=True)
        await watch.line(lambda line: line == "online | no state yet")

        broker.kill()  # no persistence: the retained "online" dies with it
        await watch.line(lambda line: line == "broker lost, reconnecting")
        await asyncio.to_thread(broker.start)
        await watch.line(lambda line: line == "availability never seen | no state yet")
        async with tablet(broker) as tab:
            await tab.publish(f"{p}/availability", b"online", retain=True)
        await watch.line(lambda line: line == "online | no state yet")

        assert await watch.end(signal.SIGTERM) == 0
    assert watch.lines.count("broker lost, reconnecting") == 1, watch.lines


@pytest.mark.asyncio
async def test_sr14_watch_keeps_a_persistent_session_and_gets_the_events_it_was_away_for(
    broker: Broker, tmp_path: Path
) -> None:
    """``watch`` with this device's client id: killed (a tablet whose battery died), an
    estop event published while it is gone, then started again: the broker held the event
    for its session and the watch shows it, once, though it was published twice (QoS 1 sends
    again what it has no PUBACK for; the event id shows the second copy)."""
    tm = "tm-away"
    p = f"treadmill/{tm}"
    config = daemon_config(tmp_path, broker.port, treadmill_id=tm)
    device = ("--no-heartbeat", "--client-id", "ward-3-tablet")
    async with watching(config, *device) as watch:
        await watch.line(lambda line: line == "availability never seen | no state yet")
        watch.proc.kill()  # no DISCONNECT: gone as a tablet whose link drops
        await watch.proc.wait()
    estop = {"type": "estop", "ts": time.time(), "cause": "fall", "event_id": "b007-3"}
    async with tablet(broker) as tab:  # stands in for the daemon
        await tab.publish(f"{p}/events", json.dumps(estop).encode())
        await tab.publish(f"{p}/events", json.dumps(estop).encode())
        await tab.publish(f"{p}/availability", b"online", retain=True)
    async with watching(config, *device) as watch:
        await watch.line(lambda line: line.startswith("event estop: EMERGENCY STOP: fall"))
        await watch.line(lambda line: line == "online | no state yet")
        assert await watch.end(signal.SIGTERM) == 0
    assert sum(line.startswith("event estop") for line in watch.lines) == 1, watch.lines


def test_watch_on_a_terminal_rewrites_its_line_in_place(broker: Broker, tmp_path: Path) -> None:
    """stdout a terminal: the status line is redrawn with a carriage return and a clear to the
    end of the line, not printed as new lines."""
    config = daemon_config(tmp_path, broker.port, treadmill_id="tm-tty")
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*CLI, "--config", str(config), "watch", "--for", "1", "--no-heartbeat"],
            cwd=ROOT,
            env=ENV,
            stdout=slave,
            stderr=subprocess.PIPE,
        )
        os.close(slave)
        slave = -1
        output = b""
        deadline = time.monotonic() + RUN_BOUND_S
        while time.monotonic() < deadline:  # bounded: until the watch closes the terminal
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the other end is closed
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(timeout=WAIT_S) == 0
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    text = output.decode()
    assert "\ravailability never seen | no state yet\x1b[K" in text, repr(text)
    assert text.endswith("\n"), repr(text)
    assert text.count("\n") == 1, repr(text)  # only the final one: the rest is rewritten


def test_watch_names_a_wired_input_that_cannot_be_read() -> None:
    from treadguard.controller.tablet import status_line

    state = {
        "state": "idle",
        "grip": {"left": False, "right": True},
        "fall": False,
        "stale": ["grip_left"],
        "latched": None,
        "speed_mph": 0.0,
        "target_mph": 0.0,
        "session": None,
        "sensor_problems": {"grip_left": "cannot request lines 17 of /dev/gpiochip0: busy"},
    }
    line = status_line(True, "online", state)
    assert "stale grip_left | inputs grip_left: cannot request lines 17 of /dev/gpiochip0" in line
    del state["sensor_problems"]
    assert "inputs" not in status_line(True, "online", state)


# ----------------------------------------------------------------------------- commissioning


@pytest.mark.asyncio
async def test_the_commissioning_commands_outside_a_run_are_refused_naming_why(
    broker: Broker, tmp_path: Path
) -> None:
    """commission-confirm and commission-abort are the contract's commands: a daemon with no
    commissioning run refuses both (exit 1, preconditions_unmet); a confirm without the
    request it answers is a bad argument (exit 2)."""
    async with daemon(broker, tmp_path, "tm-cli-commission") as (config, _tab):
        for args in (
            ("commission-confirm", "--step", "estop", "--ask", "stand_on"),
            ("commission-abort",),
        ):
            result = await tablet_cli(config, *args)
            assert result.code == 1, (args, result)
            assert result.out.startswith("refused: preconditions_unmet: no commissioning run"), (
                result
            )
        incomplete = await tablet_cli(config, "commission-confirm", "--step", "estop")
        assert incomplete.code == 2, incomplete


def test_watch_names_the_commissioning_request_and_how_to_confirm_it() -> None:
    from treadguard.controller.tablet import status_line

    run: dict[str, Any] = {
        "step": "grip_left",
        "index": 2,
        "of": 7,
        "ask": "release_left",
        "prompt": "Let go of the LEFT grip only (keep the right one held).",
        "waiting": "technician",
        "outcome": None,
    }
    state = {"state": "running", "commissioning": {"run": run}}
    line = status_line(True, "online", state)
    assert line.endswith(
        "commissioning step 2/7 --step grip_left --ask release_left: Let go of the LEFT grip "
        "only (keep the right one held)."
    ), line
    run.update(waiting="belt", ask=None)
    assert status_line(True, "online", state).endswith("commissioning step 2/7: waiting")
    run["outcome"] = "passed"
    assert status_line(True, "online", state).endswith("commissioning passed")


# ----------------------------------------------------------------------------- the plan


@pytest.mark.asyncio
async def test_a_measure_and_a_confirmation_from_the_command_line(
    broker: Broker, tmp_path: Path
) -> None:
    """measure sends record_measure (ok, or refused with the daemon's words and exit 1);
    confirm-first-session sends confirm_first_session."""
    async with daemon(broker, tmp_path, "tm-cli-plan") as (config, _tab):
        done = await tablet_cli(config, "measure", "p-9", "tug", "11.5", "--clinician", "c-7")
        assert (done.code, done.out) == (0, "ok\n"), done
        high = await tablet_cli(config, "measure", "p-9", "womac", "97")
        assert high.code == 1, high
        assert high.out == "refused: out_of_range: a WOMAC is 0 to 96, not 97\n", high
        late = await tablet_cli(config, "measure", "p-9", "koos", "50", "--date", "2999-01-01")
        assert late.code == 1, late
        assert late.out.startswith("refused: out_of_range: date 2999-01-01 is after today"), late
        unknown = await tablet_cli(config, "confirm-first-session", "42")
        assert unknown.code == 1, unknown
        assert unknown.out == "refused: not_allowed: no session 42 on record\n", unknown


@pytest.mark.asyncio
async def test_the_entries_of_the_record_are_stamped_in_the_daemon_s_clock(
    broker: Broker, tmp_path: Path
) -> None:
    """outcome-before, outcome-after, confirm-first-session and measure stamp their command
    (the daemon refuses an entry of the record without one): in the daemon's clock, not the
    computer's, so a daemon whose clock is 30 s behind this one (a board that started before
    network time set it right) takes them, where a stamp of this computer's clock would be
    refused as sent in the future."""
    step = tmp_path / "wall-step"
    step.write_text("-30", encoding="utf-8")
    env = {WALL_STEP_FILE_ENV: str(step)}
    async with daemon(broker, tmp_path, "tm-cli-stamp", env) as (config, tab):
        p = "treadmill/tm-cli-stamp"
        runs = [
            (["outcome-before", "42", "--pain", "3"], "outcome_before", "no session 42"),
            (
                ["outcome-after", "42", "--pain", "3", "--user", "p-9"],
                "outcome_after",
                "no session 42",
            ),
            (
                ["confirm-first-session", "42", "--user", "p-9"],
                "confirm_first_session",
                "no session 42",
            ),
            (["measure", "p-9", "tug", "11.5"], "record_measure", None),
        ]
        for args, kind, refusal in runs:
            done = await tablet_cli(config, *args)
            daemon_now = time.time() - 30.0
            if refusal is None:
                assert (done.code, done.out) == (0, "ok\n"), done
            else:
                assert done.code == 1, done
                assert done.out.startswith("refused: not_allowed: "), done
                assert refusal in done.out, done
            sent = body(await tab.next(f"{p}/cmd", payload_has(f'"{kind}"'.encode())))
            assert isinstance(sent, dict)
            assert daemon_now - 3.0 < sent["ts"] <= daemon_now, (kind, sent, daemon_now)
            assert sent.get("user") == (
                "p-9" if "--user" in args or kind == "record_measure" else None
            )
