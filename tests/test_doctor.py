"""``treadguard doctor`` against the simulated devices: all green on a healthy rig, and each
fault it checks, injected at the real part, named with its fix.

The rig is the board as installed: the shipped broker configuration (accounts and ACL), a
simulated Trackmaster (or VFD) in its own process on a real pty (or socket), grip and fall
sensors publishing over MQTT with their own account, and the journal in a folder of its own.
The clock's synchronisation is asked of ``timedatectl``, which the test provides on PATH (the
edge of the process), saying yes or no.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import ipaddress
import json
import os
import pwd
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import pytest

from tests.board_network import alone_on_the_network, board_network  # noqa: F401
from tests.daemon_process import PROGRAMS_DIR, ROOT
from tests.mosquitto import (
    ACL,
    PASSWORDS,
    SENSOR_TM,
    SENSORS,
    Broker,
    auth_lines,
    free_ports,
    have_mosquitto,
    network_addresses,
    password_file,
)
from tests.periodic import pause, periodic_elsewhere
from tests.pki import OPENSSL, make_pki
from treadguard.config.loading import load_config
from treadguard.controller.broker_config import (
    EVERY_ACCOUNT,
    AclSyntaxError,
    Guarded,
    breaches,
    file_lines,
    listening,
    parse_acl,
    read_acl,
    read_mosquitto_conf,
    unusual_characters,
)
from treadguard.controller.doctor import (
    Verdict,
    check_configuration,
    check_gpio,
    check_network,
    service_account,
)
from treadguard.controller.journal import SCHEMA_VERSION, Journal
from treadguard.controller.mqtt_settings import broker_settings
from treadguard.controller.network_probe import (
    Address,
    board_addresses,
    is_connack,
    location_paths,
    mqtt_connect,
    nginx_paths,
    targets,
    websocket_upgrade,
)
from treadguard.controller.treadmill_lock import hold_treadmill
from treadguard.drivers.trackmaster_codec import Command, CommandFrame
from treadguard.simulator.trackmaster_device import TrackmasterDevice, TrackmasterModel

CLI = [sys.executable, "-m", "treadguard.controller.cli"]
RUN_BOUND_S = 60.0
ROLES = ("grip_left", "grip_right", "fall")
# Nobody on the belt: both rails let go, no fall (--belt starts the belt only so).
NOBODY = {"grip_left": False, "grip_right": False, "fall": False}

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")


def first_line(proc: subprocess.Popen[str], timeout_s: float = 20.0) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout_s):
            raise AssertionError("sim-device printed nothing")
    return proc.stdout.readline().strip()


@contextlib.contextmanager
def sim_device(*args: str) -> Iterator[str]:
    """A simulated drive in its own process; its address (a pty, or HOST:PORT)."""
    proc = subprocess.Popen(
        [*CLI, "sim-device", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield first_line(proc)
    finally:
        proc.kill()
        proc.wait(timeout=10)


@dataclass
class Sensors:
    """Grip and fall sensors publishing their readings at 10 Hz with their own account."""

    port: int
    values: dict[str, bool] = field(
        default_factory=lambda: {"grip_left": True, "grip_right": True, "fall": False}
    )
    silent: set[str] = field(default_factory=set)
    # A sensor's own clock: this far from the board's (it advances all the same)...
    offset: dict[str, float] = field(default_factory=dict)
    # ...or stuck: every reading carries this one stamp (a bridge repeating its last reading).
    frozen: dict[str, float] = field(default_factory=dict)

    def stamp(self, role: str) -> float:
        return self.frozen.get(role, time.time() + self.offset.get(role, 0.0))

    async def run(self, stop: asyncio.Event) -> None:
        async with aiomqtt.Client(
            "127.0.0.1", self.port, username=SENSORS, password=PASSWORDS[SENSORS]
        ) as client:
            while not stop.is_set():
                for role, value in list(self.values.items()):
                    if role not in self.silent:
                        payload = json.dumps({"value": value, "ts": self.stamp(role)})
                        await client.publish(f"treadmill/{SENSOR_TM}/sensors/{role}", payload)
                await pause(stop, 0.1)  # the sensors' own reporting period


@dataclass
class Rig:
    tmp: Path
    broker: Broker
    bin_dir: Path
    drive: str = ""
    sensors_section: str = '[sensors]\nsource = "mqtt"\n'
    journal_extra: str = ""
    daemon_password: str = PASSWORDS["treadguard"]
    clock_synced: bool = True

    def config(self, extra: str = "") -> Path:
        path = self.tmp / "treadguard.toml"
        path.write_text(
            f'[treadmill]\nid = "{SENSOR_TM}"\n\n'
            f"[programs]\ndir = '{PROGRAMS_DIR.as_posix()}'\n\n"
            f"[drive]\n{self.drive}\n\n{self.sensors_section}\n"
            f'[mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port}\nusername = "treadguard"\n\n'
            f"[journal]\npath = '{(self.tmp / 'var' / 'journal.sqlite').as_posix()}'\n"
            f"{self.journal_extra}\n{extra}",
            encoding="utf-8",
        )
        return path

    def env(self) -> dict[str, str]:
        (self.bin_dir / "timedatectl").write_text(
            f"#!/bin/sh\necho {'yes' if self.clock_synced else 'no'}\n", encoding="utf-8"
        )
        (self.bin_dir / "timedatectl").chmod(0o755)
        return {
            **{k: v for k, v in os.environ.items() if not k.startswith("TREADGUARD_")},
            "PYTHONPATH": str(ROOT),
            "PATH": f"{self.bin_dir}:{os.environ['PATH']}",
            "TREADGUARD_MQTT__PASSWORD": self.daemon_password,
            "TREADGUARD_TABLET_PASSWORD": PASSWORDS["tablet"],
        }


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    broker = Broker(tmp_path, auth_lines(tmp_path))
    broker.start()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "var").mkdir()
    made = Rig(tmp_path, broker, bin_dir)
    try:
        yield made
    finally:
        made.broker.stop()  # the one the test left running (it may have swapped it)


def broker_with_acl(rig: Rig, acl: str) -> None:
    """The rig's broker replaced by one with the shipped accounts and this ACL text."""
    path = rig.tmp / "acl-edited"
    path.write_text(acl, encoding="utf-8")
    _broker_anew(rig, auth_lines(rig.tmp).replace(f"acl_file {ACL}", f"acl_file {path}"))


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted on ``folder``: a disk with that little room."""
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def filled_journal(path: Path, size: int) -> None:
    """A journal of about ``size`` bytes (its sessions table, and a table of filler)."""
    Journal.open(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("CREATE TABLE filler (b BLOB)")
        db.execute("INSERT INTO filler VALUES (?)", (b"x" * size,))
        db.commit()


def vfd_drive(address: str) -> str:
    """The [drive] lines of a Delta VFD on Modbus TCP at ``address`` (HOST:PORT)."""
    host, _, port = address.rpartition(":")
    return (
        f'kind = "modbus"\ntransport = "tcp"\nhost = "{host}"\ntcp_port = {port}\n'
        f"mph_per_hz = 0.05\nregister_map = '{ROOT / 'config' / 'drives' / 'delta-vfd-e.toml'}'"
    )


def root_only(device: Path) -> None:
    real = device.resolve()
    os.chown(real, 0, 0)
    real.chmod(0o600)


def dialout_only(device: Path) -> None:
    """As the udev rule of docs/install-raspberry-pi.md (step 2) leaves a real adapter."""
    real = device.resolve()
    os.chown(real, 0, grp.getgrnam("dialout").gr_gid)
    real.chmod(0o660)


@dataclass
class Outcome:
    code: int
    out: str

    def lines(self, check: str) -> list[str]:
        """The lines of one check (its verdict line and its fix)."""
        found, keep = [], False
        for line in self.out.splitlines():
            head = line[:8].strip()
            if head in ("ok", "FAIL", "-", "TODO"):
                keep = line[8:].lstrip().startswith(check + " ")
            elif not line.startswith("      "):
                keep = False
            if keep:
                found.append(line)
        return found

    def verdicts(self) -> dict[str, list[str]]:
        result = json.loads(self.out.splitlines()[-1])
        out: dict[str, list[str]] = {}
        for c in result["checks"]:
            out.setdefault(c["check"], []).append(c["verdict"])
        return out


def _broker_anew(rig: Rig, extra: str, *, websockets: bool = False) -> None:
    """The rig's broker replaced by one with ``extra`` configuration lines, started."""
    rig.broker.stop()
    rig.broker = Broker(rig.tmp, extra, websockets=websockets)
    rig.broker.start()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Bytes from ``reader`` on to ``writer`` until either end closes."""
    with contextlib.suppress(OSError):
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def publishing(sensors: Sensors) -> AsyncIterator[Sensors]:
    """The sensors publishing on a thread of their own (tests/periodic.py)."""
    async with periodic_elsewhere(sensors.run, "doctor-sensors"):
        yield sensors


async def doctor(
    rig: Rig,
    config: Path,
    *args: str,
    on_line: Callable[[str], None] | None = None,
    tablet: str = "tablet",
    tablet_password: str | None = None,
    started: list[asyncio.subprocess.Process] | None = None,
    stdin: int | None = subprocess.DEVNULL,
    prefix: tuple[str, ...] = (),
) -> Outcome:
    async with alone_on_the_network():  # its network check asks every socket of the board
        return await _doctor(
            rig, config, args, on_line, tablet, tablet_password, started, stdin, prefix
        )


async def _doctor(
    rig: Rig,
    config: Path,
    args: tuple[str, ...],
    on_line: Callable[[str], None] | None,
    tablet: str,
    tablet_password: str | None,
    started: list[asyncio.subprocess.Process] | None,
    stdin: int | None,
    prefix: tuple[str, ...],
) -> Outcome:
    env = rig.env()
    env["TREADGUARD_TABLET_PASSWORD"] = tablet_password or PASSWORDS[tablet]
    proc = await asyncio.create_subprocess_exec(
        *prefix,
        *CLI,
        "doctor",
        "--config",
        str(config),
        "--tablet-username",
        tablet,
        "--wait-s",
        "2",
        "--mosquitto-conf",
        str(rig.broker.conf),
        *args,
        cwd=rig.tmp,
        env=env,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    if started is not None:
        started.append(proc)
    assert proc.stdout is not None
    lines = []
    try:
        async with asyncio.timeout(RUN_BOUND_S):
            async for raw in proc.stdout:
                line = raw.decode()
                lines.append(line)
                if on_line is not None:
                    on_line(line.strip())
            code = await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    out = "".join(lines)
    assert "Traceback" not in out, out
    return Outcome(code, out)


def failed(outcome: Outcome, check: str, *words: str) -> str:
    """The failed check's text (verdict line and fix), which must hold ``words``."""
    assert outcome.code == 1, outcome.out
    text = "\n".join(outcome.lines(check))
    assert "  FAIL  " in text, outcome.out
    for word in words:
        assert word in text, outcome.out
    assert "fix: " in text, outcome.out
    return text


ALL_GREEN = {
    "configuration": ["ok"],
    "service stopped": ["ok"],
    "serial port": ["ok"],
    "GPIO": ["-"],
    "drive": ["ok"],
    "sensors": ["ok", "ok", "ok"],
    "broker": ["ok"],
    "anonymous login": ["ok"],
    "broker ACL": ["ok", "ok"],
    "page": ["-"],  # no treadguard site in this machine's nginx (tests/test_doctor_page.py)
    "broker config": ["ok"],
    "ACL file": ["ok"],
    "listeners": ["ok"],
    "network MQTT": ["ok"],
    "clock": ["ok"],
    "journal": ["ok"],
}


@pytest.mark.asyncio
async def test_a_healthy_board_passes_every_check(rig: Rig) -> None:
    """All green only with the Trackmaster's deadman read back (--belt, nobody on the belt);
    without --belt it is not checked, and the checklist says so (exit 4, not 0)."""
    with sim_device("trackmaster") as pty:
        rig.drive = f'kind = "trackmaster"\nport = "{pty}"'
        async with publishing(Sensors(rig.broker.port, values=dict(NOBODY))):
            text = await doctor(rig, rig.config(), "--service-user", "root", "--belt-confirmed")
            at_rest = await doctor(rig, rig.config(), "--service-user", "root", "--json")
    assert text.code == 0, text.out
    assert text.out.rstrip().endswith("all checks passed")
    verdicts = [line[:8].strip() for line in text.out.splitlines() if line[:2] == "  "]
    verdicts = [verdict for verdict in verdicts if verdict]  # not the fix lines
    assert set(verdicts) == {"ok", "-"}, text.out
    assert len(verdicts) == sum(map(len, ALL_GREEN.values())), text.out
    assert f"Trackmaster on {pty} answers" in text.out
    assert "running with its CDS on (D0 32), then stopped" in text.out
    assert "left grip: not held, fresh" in text.out
    assert "fall: no fall, fresh" in text.out
    assert "refuses a client without an account" in text.out
    assert f"listens on loopback only: 127.0.0.1:{rig.broker.port}" in text.out
    assert "only the tablet accounts (tablet, tablet-*) may write treadmill/tm-01/cmd" in text.out
    assert at_rest.code == 4, at_rest.out
    assert at_rest.verdicts() == {**ALL_GREEN, "drive": ["TODO"]}, at_rest.out
    result = json.loads(at_rest.out.splitlines()[-1])
    assert (result["passed"], result["failed"]) == (False, False), result
    drive = next(c for c in result["checks"] if c["check"] == "drive")
    assert "not checked: its CDS was not read back" in drive["detail"], drive
    assert drive["fix"].startswith("run treadguard doctor --belt with the technician"), drive


@pytest.mark.asyncio
async def test_the_walk_asks_for_each_sensor_and_sees_it_flip(rig: Rig) -> None:
    sensors = Sensors(rig.broker.port, values={r: False for r in ROLES})
    touches = {
        "walk: hold the left rail now": ("grip_left", True),
        "walk: let go of the left rail": ("grip_left", False),
        "walk: hold the right rail now": ("grip_right", True),
        "walk: let go of the right rail": ("grip_right", False),
        "walk: trigger the fall input now": ("fall", True),
        "walk: clear the fall input": ("fall", False),
    }
    asked: list[str] = []

    def technician(line: str) -> None:
        if line in touches:
            asked.append(line)
            role, value = touches[line]
            sensors.values[role] = value

    rig.drive = 'kind = "simulator"'
    async with publishing(sensors):
        done = await doctor(
            rig, rig.config(), "--service-user", "root", "--walk", on_line=technician
        )
    assert done.code == 0, done.out
    assert asked == list(touches)
    assert done.out.count("ok    sensor walk") == 6


@pytest.mark.asyncio
async def test_a_sensor_that_does_not_follow_the_touch_fails_the_walk(rig: Rig) -> None:
    sensors = Sensors(rig.broker.port, values={r: False for r in ROLES})
    with sim_device("trackmaster") as pty:
        rig.drive = f'kind = "trackmaster"\nport = "{pty}"'
        async with publishing(sensors):
            # Nobody touches anything: the left rail is never seen held.
            done = await doctor(
                rig, rig.config(), "--service-user", "root", "--walk", "--walk-wait-s", "2"
            )
    failed(done, "sensor walk", "left grip: held not seen in 2 s", "polarity")


@pytest.mark.asyncio
async def test_rails_swapped_in_the_wiring_are_named_by_the_walk(rig: Rig) -> None:
    """The left rail's wire on the right grip's line: asked to hold the left rail, the
    technician does, and the right grip changes. The walk says which one changed, and that the
    two may be swapped."""
    sensors = Sensors(rig.broker.port, values={r: False for r in ROLES})

    def technician(line: str) -> None:
        if line == "walk: hold the left rail now":
            sensors.values["grip_right"] = True  # the left rail, wired to the right's line

    rig.drive = 'kind = "simulator"'
    async with publishing(sensors):
        done = await doctor(
            rig,
            rig.config(),
            "--service-user", "root", "--walk", "--walk-wait-s", "2",
            on_line=technician,
        )  # fmt: skip
    failed(
        done,
        "sensor walk",
        "left grip: held not seen in 2 s; the right grip changed instead (to held): the two "
        "inputs may be swapped",
        "swap the two inputs' lines",
    )


# ------------------------------------------------------------------ each fault, injected


@pytest.mark.asyncio
async def test_an_invalid_configuration_is_named(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    done = await doctor(rig, rig.config("[mqtt.tls]\nca_fil = 'x'\n"))
    failed(done, "configuration", "mqtt.tls.ca_fil", "check-config")


@pytest.mark.asyncio
async def test_a_missing_serial_port(rig: Rig) -> None:
    rig.drive = 'kind = "trackmaster"\nport = "/dev/treadmill-not-plugged"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root")
    failed(done, "serial port", "/dev/treadmill-not-plugged, does not exist", "udev")
    failed(done, "drive", "/dev/treadmill-not-plugged")


@pytest.mark.asyncio
async def test_a_serial_port_the_service_user_may_not_use(rig: Rig) -> None:
    with sim_device("trackmaster") as pty:
        root_only(Path(pty))
        rig.drive = f'kind = "trackmaster"\nport = "{pty}"'
        async with publishing(Sensors(rig.broker.port)):
            done = await doctor(rig, rig.config(), "--service-user", "nobody")
    text = failed(
        done,
        "serial port",
        f"{pty}, cannot be read and written by nobody",
        f"{pty} is root:root, mode 0600",
        'udev rule (GROUP="dialout", MODE="0660"',
    )
    assert "usermod" not in text  # joining root's group would not help


@pytest.mark.asyncio
async def test_a_serial_port_of_a_group_the_service_user_is_not_in(rig: Rig) -> None:
    with sim_device("trackmaster") as pty:
        dialout_only(Path(pty))
        rig.drive = f'kind = "trackmaster"\nport = "{pty}"'
        async with publishing(Sensors(rig.broker.port)):
            done = await doctor(rig, rig.config(), "--service-user", "nobody")
    failed(
        done,
        "serial port",
        f"{pty}, cannot be read and written by nobody",
        "sudo usermod -aG dialout nobody",
    )


@pytest.mark.asyncio
async def test_a_service_user_that_does_not_exist(rig: Rig) -> None:
    with sim_device("trackmaster") as pty:
        rig.drive = f'kind = "trackmaster"\nport = "{pty}"'
        async with publishing(Sensors(rig.broker.port)):
            done = await doctor(rig, rig.config(), "--service-user", "no-such-user-here")
    failed(done, "service user", "no-such-user-here", "scripts/install")


@pytest.mark.asyncio
async def test_a_drive_that_does_not_answer(rig: Rig) -> None:
    with sim_device("trackmaster", "--inject", "silent") as pty:
        rig.drive = f'kind = "trackmaster"\nport = "{pty}"'
        async with publishing(Sensors(rig.broker.port)):
            done = await doctor(rig, rig.config(), "--service-user", "root")
    failed(done, "drive", f"Trackmaster on {pty}", "cable")


@pytest.mark.asyncio
async def test_a_vfd_whose_deadman_is_off(rig: Rig) -> None:
    with sim_device("modbus", "--tcp", "127.0.0.1:0", "--comm-timeout-s", "0") as address:
        rig.drive = vfd_drive(address)
        async with publishing(Sensors(rig.broker.port)):
            done = await doctor(rig, rig.config(), "--service-user", "root")
    failed(done, "drive", "09.03", "keypad")


@pytest.mark.asyncio
async def test_a_vfd_whose_deadman_is_on_passes(rig: Rig) -> None:
    with sim_device("modbus", "--tcp", "127.0.0.1:0") as address:
        rig.drive = vfd_drive(address)
        async with publishing(Sensors(rig.broker.port)):
            done = await doctor(rig, rig.config(), "--service-user", "root")
    assert done.code == 0, done.out
    assert "09.03" in "\n".join(done.lines("drive"))


@pytest.mark.asyncio
async def test_a_sensor_that_does_not_report(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port, silent={"fall"})):
        done = await doctor(rig, rig.config(), "--service-user", "root")
    text = failed(done, "sensors", "fall: no reading")
    assert "left grip: held, fresh" in done.out
    assert text.count("FAIL") == 1


@pytest.mark.asyncio
async def test_a_gpio_chip_that_is_not_there(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    rig.sensors_section = "".join(
        f"[[sensors.inputs]]\nkind = 'gpio'\nrole = '{role}'\nchip = '/dev/gpiochip99'\n"
        f"line = {n}\nbias = 'pull_up'\nactive = '{'high' if role == 'fall' else 'low'}'\n"
        for n, role in enumerate(ROLES)
    )
    done = await doctor(rig, rig.config(), "--service-user", "root")
    failed(done, "GPIO", "/dev/gpiochip99 does not exist", "gpiochip")


@pytest.mark.asyncio
async def test_the_daemon_s_password_is_wrong(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    rig.daemon_password = "not-the-password"
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root")
    failed(done, "broker", "refused treadguard", "mosquitto_passwd")


@pytest.mark.asyncio
async def test_an_account_the_acl_does_not_let_command(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root", tablet="dashboard")
    failed(done, "broker ACL", "a command from dashboard", "ACL")


@pytest.mark.asyncio
async def test_a_clock_that_is_not_synchronised(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    rig.clock_synced = False
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root")
    failed(done, "clock", "not synchronised (timedatectl)", "set-ntp")


@pytest.mark.asyncio
async def test_a_journal_near_its_limit(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    rig.journal_extra = "max_size_mb = 0.1\n"
    filled_journal(rig.tmp / "var" / "journal.sqlite", 90_000)
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root")
    failed(done, "journal", "of its limit (0.1 MB)", "treadguard backup")


@pytest.mark.asyncio
async def test_a_configuration_the_service_user_may_not_read(rig: Rig) -> None:
    """The doctor, run as root, reads the configuration; the service's user (here `nobody`,
    for whom the test's folder is closed) may not, and the service would not start: the
    folder it may not enter is named, with the fix that lets it in."""
    rig.drive = 'kind = "simulator"'
    config = rig.config()
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, config, "--service-user", "nobody")
    failed(
        done,
        "configuration",
        "cannot be entered by nobody, the service's user: treadguard would not start",
        "sudo chmod a+x",
    )


@pytest.mark.asyncio
async def test_a_journal_folder_the_service_user_may_not_write(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    (rig.tmp / "var").chmod(0o755)
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "nobody")
    failed(done, "journal", "cannot be written by nobody", "install -d")


@pytest.mark.asyncio
async def test_a_running_daemon_is_not_disturbed(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    lock = os.open(rig.tmp / "var" / "journal.sqlite", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        done = await doctor(rig, rig.config(), "--service-user", "root")
    finally:
        os.close(lock)
    failed(done, "service stopped", "treadguard is running", "systemctl stop treadguard")
    assert "drive" not in [line[8:].split("  ")[0].strip() for line in done.out.splitlines()]


@pytest.mark.asyncio
async def test_a_treadguard_process_on_another_journal_is_not_disturbed(rig: Rig) -> None:
    """A treadguard process run from a copy of the configuration naming another journal holds
    this treadmill's topics on the broker (controller/treadmill_lock.py), not this journal:
    the doctor still finds it, and checks nothing it would disturb."""
    rig.drive = 'kind = "simulator"'
    config = rig.config()
    broker = broker_settings(load_config(config))
    held = hold_treadmill(broker.port, broker.prefix)
    try:
        done = await doctor(rig, config, "--service-user", "root")
    finally:
        if held is not None:
            held.close()
    failed(
        done,
        "service stopped",
        f"a treadguard process holds the topics {broker.prefix} on the broker at port "
        f"{broker.port}",
        "systemctl stop treadguard",
    )
    assert "drive" not in [line[8:].split("  ")[0].strip() for line in done.out.splitlines()]


# ------------------------------------------------------------------ the Trackmaster's deadman


@pytest.mark.asyncio
async def test_the_belt_check_reads_the_trackmaster_s_cds_back(rig: Rig) -> None:
    said: list[str] = []
    with sim_device("trackmaster") as pty:
        rig.drive = f'kind = "trackmaster"\nport = "{pty}"'
        async with publishing(Sensors(rig.broker.port, values=dict(NOBODY))):
            done = await doctor(
                rig,
                rig.config(),
                "--service-user",
                "root",
                "--belt-confirmed",
                on_line=said.append,
            )
    assert done.code == 0, done.out
    assert said[0] == "belt: stand clear: the belt starts at 0.5 mph for a moment"
    drive = "\n".join(done.lines("drive"))
    assert "running with its CDS on (D0 32), then stopped" in drive, done.out


@pytest.mark.asyncio
async def test_a_trackmaster_whose_cds_is_off(rig: Rig) -> None:
    """A treadmill whose CDS is off in its own setup: A0 starts it without the deadman. At rest
    it cannot be told from a good one (D0 31 either way), and the doctor says it did not read
    the CDS back rather than call it on; --belt starts it and names the fault."""
    with sim_device("trackmaster", "--no-cds") as pty:
        rig.drive = f'kind = "trackmaster"\nport = "{pty}"'
        async with publishing(Sensors(rig.broker.port, values=dict(NOBODY))):
            at_rest = await doctor(rig, rig.config(), "--service-user", "root")
            running = await doctor(
                rig, rig.config(), "--service-user", "root", "--belt", "--belt-confirmed"
            )
    assert at_rest.code == 4, at_rest.out  # not checked: never all green
    at_rest_drive = "\n".join(at_rest.lines("drive"))
    assert "  TODO  drive" in at_rest_drive, at_rest.out
    assert "not checked: its CDS was not read back" in at_rest_drive, at_rest.out
    assert "fix: run treadguard doctor --belt" in at_rest_drive, at_rest.out
    failed(running, "drive", "disabled (D0 33)", "CDS turned on in its own setup")


# ------------------------------------------------------------------ the broker


@pytest.mark.asyncio
async def test_an_acl_that_does_not_let_the_daemon_publish(rig: Rig) -> None:
    shipped = ACL.read_text(encoding="utf-8")
    assert "topic write treadmill/+/reply\n" in shipped
    broker_with_acl(rig, shipped.replace("topic write treadmill/+/reply\n", "", 1))
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root")
    text = failed(done, "broker ACL", "a reply from the daemon's account", "ACL")
    assert text.count("FAIL") == 1  # the tablet's command still reaches the daemon
    assert f"tablet may command treadmill/{SENSOR_TM}/cmd" in done.out


@pytest.mark.asyncio
async def test_a_broker_that_is_not_running(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    config = rig.config()
    rig.broker.stop()
    done = await doctor(rig, config, "--service-user", "root")
    text = failed(done, "broker", "nothing answers", "sudo systemctl start mosquitto")
    assert "refused treadguard" not in text  # no broker answered, so none refused the login


@pytest.mark.asyncio
async def test_the_tablet_s_password_is_wrong(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(
            rig, rig.config(), "--service-user", "root", tablet_password="not-the-password"
        )
    failed(done, "broker ACL", "refused the tablet's login (tablet)", "TREADGUARD_TABLET_PASSWORD")
    assert "ok    broker           127.0.0.1" in done.out  # the daemon's own login is fine


# ------------------------------------------------------------------ a stale sensor


@pytest.mark.asyncio
async def test_a_sensor_that_reports_with_a_stamp_that_stands_still(rig: Rig) -> None:
    """The left grip keeps publishing, every reading with one old stamp: by its own stamps no
    reading is new, so it is stale though it is heard. The right grip's clock is a minute
    behind the board's and advances: fresh, as the daemon counts it (a stamp is compared only
    with the same sensor's earlier stamps, never with the board's clock)."""
    rig.drive = 'kind = "simulator"'
    sensors = Sensors(
        rig.broker.port,
        frozen={"grip_left": time.time() - 60.0},
        offset={"grip_right": -60.0},
    )
    async with publishing(sensors):
        done = await doctor(rig, rig.config(), "--service-user", "root")
    text = failed(
        done, "sensors", "left grip: the last reading is", "stale after 0.5 s", "time stamps"
    )
    assert text.count("FAIL") == 1
    assert "right grip: held, fresh" in done.out


# ------------------------------------------------------------------ the journal


@pytest.mark.asyncio
async def test_a_disk_with_too_little_room_for_the_journal(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    with small_disk(rig.tmp / "var", "4m"):
        full = await doctor(rig, rig.config(), "--service-user", "root")
        rig.journal_extra = "max_size_mb = 2\n"  # a limit the disk has room for
        fits = await doctor(rig, rig.config(), "--service-user", "root")
    failed(full, "journal", "the disk has 4 MB free", "free space on the disk")
    assert fits.lines("journal")[0].startswith("  ok    journal"), fits.out


@pytest.mark.asyncio
async def test_a_journal_from_a_newer_treadguard(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    path = rig.tmp / "var" / "journal.sqlite"
    Journal.open(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        db.commit()
    done = await doctor(rig, rig.config(), "--service-user", "root")
    failed(done, "journal", f"newer treadguard (schema {SCHEMA_VERSION + 1})", "--update")


@pytest.mark.asyncio
async def test_a_file_that_is_no_journal(rig: Rig) -> None:
    rig.drive = 'kind = "simulator"'
    (rig.tmp / "var" / "journal.sqlite").write_bytes(b"not a journal\n" * 300)
    done = await doctor(rig, rig.config(), "--service-user", "root")
    failed(done, "journal", "cannot be read: file is not a database", "move it aside")


@pytest.mark.asyncio
async def test_a_journal_with_a_damaged_page(rig: Rig) -> None:
    """Its header (and so its schema version) intact, a page of its records overwritten: a
    journal that opens and then fails the daemon on its first read of that page."""
    rig.drive = 'kind = "simulator"'
    path = rig.tmp / "var" / "journal.sqlite"
    Journal.open(path).close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("CREATE TABLE filler (n INTEGER, b TEXT)")
        db.executemany("INSERT INTO filler VALUES (?, ?)", [(i, "x" * 100) for i in range(2000)])
        db.commit()
        page = int(db.execute("PRAGMA page_size").fetchone()[0])
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
    with path.open("r+b") as file:
        file.seek(page * (pages - 3))
        file.write(b"\xa5" * page)
    done = await doctor(rig, rig.config(), "--service-user", "root")
    failed(done, "journal", "is damaged", "move it aside")


# ------------------------------------------------------------------ devices


@pytest.mark.asyncio
async def test_a_serial_port_that_is_a_plain_file(rig: Rig) -> None:
    port = rig.tmp / "treadmill"
    port.write_text("", encoding="utf-8")
    rig.drive = f'kind = "trackmaster"\nport = "{port}"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root")
    failed(done, "serial port", f"{port}, is not a device", "/dev/ttyUSB0")


def gpio_section(chip: str, lines: tuple[int | str, ...] = (0, 1, 2)) -> str:
    """Grip and fall contacts on ``lines`` of ``chip``."""
    return "".join(
        f"[[sensors.inputs]]\nkind = 'gpio'\nrole = '{role}'\nchip = '{chip}'\n"
        f"line = {line!r}\nbias = 'pull_up'\nactive = '{'high' if role == 'fall' else 'low'}'\n"
        for line, role in zip(lines, ROLES, strict=True)
    )


@pytest.mark.asyncio
async def test_a_gpio_chip_the_service_user_may_not_open(rig: Rig) -> None:
    """A character device only root may use, standing in for a /dev/gpiochipN that no udev
    rule gave to the service's group: the check reads the device's owner and mode."""
    with sim_device("trackmaster") as chip:
        root_only(Path(chip))
        rig.drive = 'kind = "simulator"'
        rig.sensors_section = gpio_section(chip)
        done = await doctor(rig, rig.config(), "--service-user", "nobody")
    text = failed(done, "GPIO", f"{chip} cannot be used by nobody", 'KERNEL=="gpiochip*"')
    assert "usermod" not in text  # joining root's group would not help


@pytest.mark.asyncio
async def test_a_device_that_is_not_a_gpio_chip(rig: Rig) -> None:
    """A character device that exists but is no GPIO chip (a serial port here), as libgpiod
    itself finds it."""
    with sim_device("trackmaster") as chip:
        rig.drive = 'kind = "simulator"'
        rig.sensors_section = gpio_section(chip)
        done = await doctor(rig, rig.config(), "--service-user", "root")
    text = failed(done, "GPIO", f"{chip} is not a GPIO chip", "gpiodetect")
    assert "gpioinfo" not in text  # it would fail on that device too


class FourLineChip:
    """Stands in for ``gpiod.Chip`` (this machine has no GPIO chip, nor the kernel's gpio-sim
    to make one): four lines, named GPIO0..GPIO3, as libgpiod reports a chip's."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __enter__(self) -> FourLineChip:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def get_info(self) -> object:
        return type("ChipInfo", (), {"num_lines": 4})()

    def line_offset_from_id(self, line: int | str) -> int:
        names = {f"GPIO{n}": n for n in range(4)}
        if line not in names:
            raise OSError(errno.ENOENT, "No such file or directory")
        return names[str(line)]


def test_gpio_lines_that_are_not_on_the_chip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gpiod

    monkeypatch.setattr(gpiod, "Chip", FourLineChip)
    monkeypatch.setattr(gpiod, "is_gpiochip_device", lambda path: True)
    chip = tmp_path / "gpiochip0"
    chip.write_text("", encoding="utf-8")
    config = tmp_path / "treadguard.toml"
    config.write_text(
        f'[treadmill]\nid = "{SENSOR_TM}"\n\n'
        f"[programs]\ndir = '{PROGRAMS_DIR.as_posix()}'\n\n"
        '[drive]\nkind = "simulator"\n\n' + gpio_section(str(chip), (1, 17, "GPIO9")),
        encoding="utf-8",
    )
    check, loaded = check_configuration(config)
    assert loaded is not None, check
    checks = check_gpio(loaded, service_account("root"), "root")
    assert [(c.verdict.value, c.detail) for c in checks] == [
        ("ok", f"sensor grip_left: line 1 of {chip} present"),
        ("FAIL", f"sensor grip_right: {chip} has 4 lines, no line 17"),
        ("FAIL", f"sensor fall: line GPIO9 on {chip}: [Errno 2] No such file or directory"),
    ]
    assert all("gpioinfo" in c.fix for c in checks[1:])


# ------------------------------------------------------------------ --belt: ended and refused


def _commands(device: TrackmasterDevice) -> list[Command]:
    return [r.request.command for r in device.received if isinstance(r.request, CommandFrame)]


async def _until_true(condition: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)  # the device's own clock moves the belt
    return True


@pytest.mark.asyncio
@pytest.mark.parametrize("cds", [True, False], ids=["cds", "no-cds"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
async def test_a_signal_while_the_belt_runs_stops_it(
    rig: Rig, signum: signal.Signals, cds: bool
) -> None:
    """Killed (an SSH session dropping, systemd, Ctrl-C) with the belt just started: the
    doctor's own stop (A2) goes out, even on a treadmill whose CDS would not stop the belt, and
    it ends with one line, no traceback, not 0."""
    async with TrackmasterDevice(TrackmasterModel(starts_with_cds=cds)) as device:
        pty = device.open_port()
        rig.drive = f'kind = "trackmaster"\nport = "{pty}"'
        sent: list[bool] = []

        # The start's answers are held back: the doctor is still waiting to read the running
        # belt's state when the signal comes, the moment that matters (the belt running).
        def held_from_start(chunk: bytes, _t: float) -> None:
            if bytes([Command.START]) in chunk:
                device.hold_replies()

        device.on_rx = held_from_start
        waiter: list[asyncio.Task[None]] = []
        procs: list[asyncio.subprocess.Process] = []

        async def on_stand_clear() -> None:
            assert await _until_true(lambda: device.running, 5.0)
            os.kill(procs[0].pid, signum)
            sent.append(True)

        def technician(line: str) -> None:
            if line.startswith("belt: stand clear"):
                waiter.append(asyncio.create_task(on_stand_clear()))

        async with publishing(Sensors(rig.broker.port, values=dict(NOBODY))):
            done = await doctor(
                rig,
                rig.config(),
                "--service-user",
                "root",
                "--belt",
                "--belt-confirmed",
                on_line=technician,
                started=procs,
            )
        await asyncio.gather(*waiter)
        device.release_replies()
        assert sent, done.out
        assert done.code != 0, done.out
        assert Command.START in _commands(device), done.out
        started = _commands(device).index(Command.START)
        assert Command.STOP in _commands(device)[started:], done.out
        assert await _until_true(lambda: not device.running and not device.belt.moving(), 10.0)
        assert device.cds_trips == [], "the CDS stopped the belt, not the doctor"
        last = done.out.strip().splitlines()[-1]
        assert last.startswith(f"treadguard doctor: interrupted by {signum.name}"), done.out


@pytest.mark.asyncio
async def test_the_belt_starts_only_when_confirmed_and_nobody_is_on_it(rig: Rig) -> None:
    """No terminal and no --belt-confirmed: refused before anything runs. On a terminal, a word
    other than START: not started. Confirmed, but a rail held or a fall signalled: not
    started. The treadmill never sees a start (A0)."""
    async with TrackmasterDevice() as device:
        rig.drive = f'kind = "trackmaster"\nport = "{device.open_port()}"'
        sensors = Sensors(rig.broker.port, values=dict(NOBODY))
        async with publishing(sensors):
            no_tty = await doctor(rig, rig.config(), "--service-user", "root", "--belt")
            master, slave = os.openpty()
            try:

                def technician(line: str) -> None:
                    if "type START (then Enter):" in line:
                        os.write(master, b"start me\n")

                not_typed = await doctor(
                    rig,
                    rig.config(),
                    "--service-user",
                    "root",
                    "--belt",
                    "--json",
                    stdin=slave,
                    on_line=technician,
                )
            finally:
                os.close(master)
                os.close(slave)
            sensors.values["grip_left"] = True
            held = await doctor(rig, rig.config(), "--service-user", "root", "--belt-confirmed")
            sensors.values["grip_left"] = False
            sensors.values["fall"] = True
            fallen = await doctor(rig, rig.config(), "--service-user", "root", "--belt-confirmed")
    assert no_tty.code == 2, no_tty.out
    assert "no terminal" in no_tty.out, no_tty.out
    assert not_typed.code == 1, not_typed.out
    assert "the belt was not started (START was not typed)" in not_typed.out, not_typed.out
    failed(held, "drive", "the belt was not started: the left grip reports held")
    failed(fallen, "drive", "the belt was not started: the fall reports fall signalled")
    assert Command.START not in _commands(device)


# ------------------------------------------------------------------ what must be refused


def need(what: str, present: bool) -> None:
    if not present:
        if os.environ.get("CI"):
            pytest.fail(f"{what}: scripts/test provides it")
        pytest.skip(what)


def without_root_s_powers() -> tuple[str, ...]:
    """The doctor run as root's uid without the capabilities that let root read and search
    any file (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH): the mode bits decide, as for a
    technician's own account. (A user other than root cannot run this machine's Python.)"""
    setpriv = shutil.which("setpriv")
    need("root and setpriv (util-linux) to drop root's powers", os.geteuid() == 0 and bool(setpriv))
    assert setpriv is not None
    return (setpriv, "--bounding-set", "-dac_override,-dac_read_search")


def check_names(outcome: Outcome) -> list[str]:
    return [
        line[8:].split("  ")[0].strip() for line in outcome.out.splitlines() if line[2:6].strip()
    ]


@pytest.mark.asyncio
async def test_acl_lines_that_let_others_write_what_must_be_refused(rig: Rig) -> None:
    """A line before any user line, the dashboard's block, a pattern: each lets someone write
    a topic that only its own account may, and each is a FAIL naming the file, the line and
    who. A second tablet's account commanding is no fault."""
    shipped = ACL.read_text(encoding="utf-8")
    assert shipped.rstrip().splitlines()[-1].startswith("topic ")  # the dashboard's block last
    assert "\nuser dashboard\n" in shipped
    acl = (
        "topic write treadmill/tm-01/state\n"
        + shipped
        + "topic write treadmill/+/cmd\n"
        + "user tablet-ward2\ntopic write treadmill/+/cmd\n"
        + "pattern readwrite treadmill/+/query/%u/reply\n"
    )
    dashboard_line = 1 + shipped.count("\n") + 1
    broker_with_acl(rig, acl)
    path = rig.tmp / "acl-edited"
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root")
    text = failed(
        done,
        "ACL file",
        f"{path}, line 1 ('topic write treadmill/tm-01/state'): a client without an account "
        "(a line before any user line) may write treadmill/tm-01/state (only the daemon's "
        "account (treadguard) may)",
        f"{path}, line {dashboard_line} ('topic write treadmill/+/cmd'): the account dashboard "
        "may write treadmill/tm-01/cmd (only the tablet accounts (tablet, tablet-*) may)",
        "every account (a pattern line applies to all) may write "
        "treadmill/tm-01/query/+/reply (only the query account (treadguard-queries) may)",
        f"delete the line from {path}",
    )
    assert text.count("  FAIL  ") == 3, done.out
    assert "tablet-ward2" not in text


def test_acl_topics_are_matched_as_mosquitto_matches_them(tmp_path: Path) -> None:
    """Wildcards on both sides, readwrite by default, a deny that takes a grant back, read
    lines and other treadmills' topics left alone."""
    acl = tmp_path / "acl"
    acl.write_text(
        "user dashboard\n"
        "topic #\n"  # no access word: read and write
        "topic deny treadmill/+/cmd\n"
        "user viewer\n"
        "topic read #\n"
        "user other-site\n"
        "topic write treadmill/tm-02/#\n"
        "topic write treadmill/tm-01\n"  # the prefix itself: no topic under it
        "user bridge\n"
        "topic write treadmill/tm-01/+\n"
        "pattern deny treadmill/%u/#\n",  # for some accounts only: takes nothing back
        encoding="utf-8",
    )
    guarded = [
        Guarded("treadmill/tm-01/cmd", lambda a: a == "tablet", "tablet"),
        Guarded("treadmill/tm-01/state", lambda a: a == "treadguard", "treadguard"),
        Guarded("treadmill/tm-01/query/+/reply", lambda a: False, "nobody"),
    ]
    found = {(b.line.owner, b.line.number): b.topics for b in breaches(read_acl(acl), guarded)}
    assert found == {
        ("dashboard", 2): ["treadmill/tm-01/state", "treadmill/tm-01/query/+/reply"],
        ("bridge", 10): ["treadmill/tm-01/cmd", "treadmill/tm-01/state"],
    }
    assert EVERY_ACCOUNT not in {owner for owner, _ in found}


@pytest.mark.asyncio
@pytest.mark.usefixtures("board_network")  # a broker listening beyond loopback
async def test_broker_listeners_open_to_the_network(rig: Rig) -> None:
    """Plain MQTT on every address, and WebSockets on 127.0.0.1 without socket_domain ipv4
    (which Mosquitto 2.0.11 binds to every address all the same): each a FAIL with its fix,
    seen in what the broker's process listens on. A TLS listener on every address is fine."""
    need("openssl", OPENSSL is not None)
    pki = make_pki(rig.tmp / "pki")
    plain, ws, tls = free_ports(3)
    _broker_anew(
        rig,
        auth_lines(rig.tmp)
        + f"listener {plain}\n"
        + f"listener {ws} 127.0.0.1\nprotocol websockets\n"
        + f"listener {tls}\n{pki.tls_lines()}",
    )
    # The first listener accepts before Mosquitto has opened the others: until all are there.
    # Each on more than loopback, as this Mosquitto binds them.
    assert await _until_true(
        lambda: {plain, ws, tls} <= {s.port for s in listening() if not s.loopback}, 10.0
    ), listening()
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root")
    text = failed(
        done,
        "listeners",
        f"{rig.broker.conf}, line",
        "without TLS: open to the network",
        f"bind it to loopback (listener {plain} 127.0.0.1)",
        f"socket_domain ipv4 under the line listener {ws} 127.0.0.1",
    )
    assert text.count("  FAIL  ") == 2, done.out
    assert f":{plain} " in text or f":{plain}," in text, text
    assert f":{ws} " in text or f":{ws}," in text, text
    assert f":{tls}" not in text, text


@pytest.mark.asyncio
async def test_an_empty_snippet_and_a_broker_that_lets_anyone_in(rig: Rig) -> None:
    """treadguard's snippet empty (0 bytes) and anonymous clients allowed: the files say so,
    and a login without an account is accepted. Then a snippet without its acl_file alone."""
    snippets = rig.tmp / "conf.d"
    snippets.mkdir()
    (snippets / "treadguard.conf").write_text("", encoding="utf-8")
    _broker_anew(rig, f"include_dir {snippets}\nallow_anonymous true\n")
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        empty = await doctor(rig, rig.config(), "--service-user", "root")
    failed(
        empty,
        "broker config",
        f"{snippets / 'treadguard.conf'} is empty (0 bytes)",
        "allow_anonymous true",
        "no password_file",
        "no acl_file",
        "/etc/mosquitto/conf.d/treadguard.conf",
    )
    failed(empty, "anonymous login", "accepts a client without an account", "allow_anonymous false")
    assert "ACL file" not in check_names(empty)

    _broker_anew(rig, auth_lines(rig.tmp).replace(f"acl_file {ACL}\n", ""))
    async with publishing(Sensors(rig.broker.port)):
        no_acl = await doctor(rig, rig.config(), "--service-user", "root")
    text = failed(no_acl, "broker config", "no acl_file: every account may read and write")
    assert "allow_anonymous" not in text.split("fix:")[0], text
    assert "ok    anonymous login" in no_acl.out


@pytest.mark.asyncio
async def test_an_acl_the_doctor_cannot_read_is_not_passed(rig: Rig) -> None:
    """The ACL readable by the broker (root) but not by the doctor's user: not checked, the
    fix to run as root, and the exit code not 0."""
    acl = rig.tmp / "acl-private"
    acl.write_bytes(ACL.read_bytes())
    os.chown(acl, pwd.getpwnam("nobody").pw_uid, -1)
    acl.chmod(0o600)
    _broker_anew(rig, auth_lines(rig.tmp).replace(f"acl_file {ACL}", f"acl_file {acl}"))
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(
            rig, rig.config(), "--service-user", "root", prefix=without_root_s_powers()
        )
    assert done.code == 4, done.out
    text = "\n".join(done.lines("ACL file"))
    assert f"  TODO  ACL file         not checked: {acl} cannot be read by the doctor" in text, text
    assert "fix: run the doctor as root" in text, text
    assert done.out.rstrip().endswith(
        "1 of 19 not checked (TODO): the board is not proven safe to use"
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("where", ["file", "folder", "fifo"])
async def test_a_journal_the_doctor_cannot_read(rig: Rig, where: str) -> None:
    """The journal (or its folder) another user's, mode 0600/0700, and the doctor not root; or
    a FIFO at the journal's path: whether the service runs cannot be told, so it is a failure
    naming the file, never "not running" (which would let the doctor drive the treadmill under
    a running daemon), never a traceback, never a wait."""
    rig.drive = 'kind = "simulator"'
    folder = rig.tmp / "var"
    path = folder / "journal.sqlite"
    prefix: tuple[str, ...] = ()
    if where == "fifo":
        os.mkfifo(path)
    else:
        Journal.open(path).close()
        nobody = pwd.getpwnam("nobody").pw_uid
        private = path if where == "file" else folder
        os.chown(private, nobody, -1)
        private.chmod(0o600 if where == "file" else 0o700)
        prefix = without_root_s_powers()
    done = await doctor(rig, rig.config(), "--service-user", "root", prefix=prefix)
    if where == "fifo":
        failed(done, "service stopped", f"{path} is not a file", "move what is at")
        failed(done, "journal", f"{path} is not a file")
    else:
        failed(
            done,
            "service stopped",
            f"{path} cannot be read by the doctor, which runs as root (Permission denied): "
            "whether treadguard is running on it cannot be told",
            "run the doctor as root",
        )
        failed(done, "journal", f"{path} cannot be read by the doctor", "run the doctor as root")
    assert "drive" not in check_names(done)  # nothing that would disturb a running daemon


# ------------------------------------------------------------------ read as Mosquitto reads


def _guards() -> list[Guarded]:
    return [
        Guarded("treadmill/tm-01/cmd", lambda a: a == "tablet" or a.startswith("tablet-"), "t"),
        Guarded("treadmill/tm-01/state", lambda a: a == "treadguard", "d"),
        Guarded("treadmill/tm-01/query/+/reply", lambda a: a == "treadguard-queries", "q"),
        Guarded("treadmill/tm-01/sensors/#", lambda a: a.startswith("sensors-"), "s"),
    ]


def _found(acl: bytes) -> dict[tuple[str | None, int], list[str]]:
    lines = parse_acl(Path("acl"), ACL.read_bytes() + acl)
    shipped = ACL.read_bytes().count(b"\n")
    return {(b.line.owner, b.line.number - shipped): b.topics for b in breaches(lines, _guards())}


def test_acl_decisions_follow_mosquitto_s_order() -> None:
    """Mosquitto 2.0.11 (mosquitto_acl_check_default): an account's own lines first, its deny
    lines before the others, the first matching line decides; the patterns only when none of
    its own lines matched. A pattern's deny takes no account's own grant back."""
    cmd = ["treadmill/tm-01/cmd"]
    # The account's own grant decides before any pattern.
    assert _found(
        b"user dashboard\ntopic write treadmill/+/cmd\npattern deny treadmill/+/cmd\n"
    ) == {("dashboard", 2): cmd}
    # Its own deny, wherever it stands, decides before its grant.
    assert _found(b"user dashboard\ntopic write treadmill/+/cmd\ntopic deny treadmill/#\n") == {}
    # A deny in another block of the same account is the same list.
    assert (
        _found(
            b"user dashboard\ntopic write treadmill/+/cmd\nuser other\nuser dashboard\n"
            b"topic deny treadmill/tm-01/cmd\n"
        )
        == {}
    )
    # A read line matching decides nothing: the pattern after it grants.
    assert _found(b"user dashboard\ntopic read treadmill/#\npattern write treadmill/+/cmd\n") == {
        (EVERY_ACCOUNT, 3): cmd
    }
    # A pattern deny stops a pattern grant, for accounts whose own lines decided nothing.
    assert _found(b"pattern write treadmill/+/cmd\npattern deny treadmill/+/cmd\n") == {}
    # Two denials that together leave no topic of the grant: none; that leave one: named.
    both = b"user x\ntopic deny treadmill/tm-01\ntopic deny treadmill/tm-01/+/#\n"
    assert _found(both + b"topic write treadmill/tm-01/#\n") == {}
    gap = b"user x\ntopic deny treadmill/tm-01\ntopic deny treadmill/tm-01/+\n"
    assert _found(gap + b"topic write treadmill/tm-01/#\n") == {
        ("x", 4): ["treadmill/tm-01/query/+/reply", "treadmill/tm-01/sensors/#"]
    }
    # Lines before any user line: clients without an account, the same order.
    assert _found(b"") == {}
    before = b"topic write treadmill/+/cmd\npattern deny treadmill/#\n"
    lines = parse_acl(Path("acl"), before + ACL.read_bytes())
    assert [(b.line.owner, b.line.number) for b in breaches(lines, _guards())] == [(None, 1)]
    # %u is the account's own name, %c any id a client chooses (a "/" in it included).
    assert _found(b"pattern write treadmill/%u/state\n") == {  # named tm-01, tm-01/sensors
        (EVERY_ACCOUNT, 1): ["treadmill/tm-01/state", "treadmill/tm-01/sensors/#"]
    }
    assert _found(b"pattern write treadmill/tm-01/%c\n") == {
        (EVERY_ACCOUNT, 1): [
            "treadmill/tm-01/cmd",
            "treadmill/tm-01/state",
            "treadmill/tm-01/query/+/reply",
            "treadmill/tm-01/sensors/#",
        ]
    }


def test_a_pattern_s_u_and_c_stand_for_any_name() -> None:
    """%u and %c in a pattern line are names Mosquitto takes whole, any characters ("/"
    included): a pattern that could write a guarded topic for some account's name or client's
    id is named with that name, whether or not the ACL has a user line for it. Denials are not
    weighed (fail closed); a read or deny pattern, or one no name reaches, is no fault."""

    def why(acl: bytes) -> list[tuple[str, str]]:
        lines = parse_acl(Path("acl"), ACL.read_bytes() + acl)
        return [
            (topic, reason)
            for b in breaches(lines, _guards())
            for topic, reason in zip(b.topics, b.why, strict=True)
        ]

    assert why(b"pattern write treadmill/tm-01/%u\n") == [
        (
            "treadmill/tm-01/cmd",
            "%u is any account's name: an account named cmd would write treadmill/tm-01/cmd",
        ),
        (
            "treadmill/tm-01/state",
            "%u is any account's name: an account named state would write treadmill/tm-01/state",
        ),
        (
            "treadmill/tm-01/query/+/reply",
            "%u is any account's name: an account named query/x/reply would write "
            "treadmill/tm-01/query/x/reply",
        ),
        (
            "treadmill/tm-01/sensors/#",
            "%u is any account's name: an account named sensors would write "
            "treadmill/tm-01/sensors",
        ),
    ]
    # No access word: read and write. A name may hold "/" and so span levels.
    assert why(b"pattern treadmill/%u/cmd\n") == [
        (
            "treadmill/tm-01/cmd",
            "%u is any account's name: an account named tm-01 would write treadmill/tm-01/cmd",
        ),
        (
            "treadmill/tm-01/sensors/#",
            "%u is any account's name: an account named tm-01/sensors would write "
            "treadmill/tm-01/sensors/cmd",
        ),
    ]
    assert why(b"pattern write treadmill/+/query/%u\n") == [
        (
            "treadmill/tm-01/query/+/reply",
            "%u is any account's name: an account named x/reply would write "
            "treadmill/tm-01/query/x/reply",
        )
    ]
    # A deny after it is not weighed: still named.
    assert why(b"pattern write treadmill/%u/cmd\npattern deny treadmill/+/cmd\n")
    # Read, deny, other treadmills, and a level no name can make: nothing.
    for harmless in (
        b"pattern read treadmill/%u/cmd\n",
        b"pattern deny treadmill/%u/cmd\n",
        b"pattern write treadmill/tm-02/%u\n",
        b"pattern write treadmill/tm-01/query/%u/x\n",
        b"pattern write devices/%u/#\n",
    ):
        assert why(harmless) == [], harmless
    # The shipped ACL has no pattern line and stays clean.
    assert not [line for line in ACL.read_bytes().split(b"\n") if line.startswith(b"pattern")]
    assert breaches(parse_acl(Path("acl"), ACL.read_bytes()), _guards()) == []


def test_acl_lines_are_read_as_mosquitto_reads_them(tmp_path: Path) -> None:
    """Lines end at \\n only (a vertical tab or U+2028 ends none), words are split at spaces
    only, a comment starts at the line's first character; a line Mosquitto refuses is named.
    Any line with a control character or a Unicode separator is named too."""
    hidden = b"user dashboard\n# see ticket 42\x0buser tablet\ntopic write treadmill/+/cmd\n"
    assert _found(hidden) == {("dashboard", 3): ["treadmill/tm-01/cmd"]}
    lines = file_lines(ACL.read_bytes() + hidden)
    shipped = ACL.read_bytes().count(b"\n")
    assert unusual_characters(Path("acl"), lines) == [
        f"acl, line {shipped + 2} holds U+000B (a vertical tab), which Mosquitto and the "
        "doctor may read differently: remove it"
    ]
    separator = "user dashboard\n# note\u2028user tablet\ntopic write treadmill/+/cmd\n"
    assert _found(separator.encode()) == {("dashboard", 3): ["treadmill/tm-01/cmd"]}
    assert unusual_characters(Path("acl"), file_lines(separator.encode()))
    assert unusual_characters(Path("acl"), file_lines(b"user tablet\xc2\xa0\n"))
    assert unusual_characters(Path("acl"), file_lines(b"# a\ttab in a comment\r\n")) == []
    # Spaces around words and a CRLF ending are Mosquitto's to trim too.
    assert _found(b"user  dashboard \r\n  topic  write  treadmill/+/cmd\r\n") == {
        ("dashboard", 2): ["treadmill/tm-01/cmd"]
    }
    # No access word: the word is the topic, read and write.
    assert [(a.access, a.topic) for a in parse_acl(Path("a"), b"topic deny\n")] == [
        ("readwrite", "deny")
    ]
    for refused in (
        b"  # an indented comment\n",
        b"topic\twrite treadmill/+/cmd\n",
        b"topic writ treadmill/+/cmd\n",
        b"topic write treadmill/cm+\n",
        b"user\n",
        b"Topic write x\n",
    ):
        with pytest.raises(AclSyntaxError):
            parse_acl(Path("a"), refused)


def test_the_broker_s_files_are_read_as_mosquitto_reads_them(tmp_path: Path) -> None:
    """The configuration: lines end at \\n only, a listener's settings never cross into
    another file (each starts with Mosquitto's default listener), and a control character in
    any line is named."""
    snippets = tmp_path / "conf.d"
    snippets.mkdir()
    main = tmp_path / "mosquitto.conf"
    main.write_bytes(
        b"listener 8883\ninclude_dir " + str(snippets).encode() + b"\ncertfile /c\nkeyfile /k\n"
    )
    (snippets / "a.conf").write_bytes(
        b"allow_anonymous false\n# old: allow_anonymous true\x0ballow_anonymous true\n"
        b"listener 1884abc\n"
    )
    (snippets / "b.conf").write_bytes(b"certfile /c\nkeyfile /k\n")
    conf = read_mosquitto_conf(main)
    anonymous = conf.last("allow_anonymous")
    assert anonymous is not None
    assert anonymous.value == "false"
    assert [(it.port, it.address, it.tls) for it in conf.listeners()] == [
        (8883, None, True),  # the main file's lines after include_dir are its listener's
        (1884, None, False),  # atoi; b.conf's certificate is the default listener's
    ]
    assert conf.unusual == [
        f"{snippets / 'a.conf'}, line 2 holds U+000B (a vertical tab), which Mosquitto and "
        "the doctor may read differently: remove it"
    ]


def test_the_network_probe_sends_nothing_a_device_would_act_on() -> None:
    """The CONNECT and the WebSocket upgrade hold no Trackmaster command byte (0xA0 to 0xAC)
    and no Modbus TCP protocol number 0; a CONNACK is told from other first bytes."""
    sent = [mqtt_connect(), websocket_upgrade("192.0.2.1:80", "/mqtt", bytes(16))]
    for data in sent:
        assert not any(0xA0 <= b <= 0xAC for b in data), data
        assert data[2:4] != b"\x00\x00", data
    assert b"\x00\x17treadguard-doctor-probe" in sent[0]
    assert is_connack(b"\x20\x02\x00\x05")
    assert not is_connack(b"SSH-2.0-OpenSSH")
    assert not is_connack(b"HTTP/1.1 400 Bad Request")


def _proc_net(folder: Path, listening_on: list[tuple[str, int, int]], if_inet6: str) -> Path:
    """A stand-in for /proc/net: ``tcp6`` with these sockets listening (address, port,
    inode), ``if_inet6`` as given, no IPv4 addresses."""
    folder.mkdir()
    rows = ["  sl  local_address rem_address st tx_queue rx_queue tr tm->when ... inode"]
    for n, (address, port, inode) in enumerate(listening_on):
        raw = ipaddress.IPv6Address(address).packed
        words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)).hex().upper()
        rows.append(
            f"{n}: {words}:{port:04X} 00000000000000000000000000000000:0000 0A "
            f"00000000:00000000 00:00000000 00000000 0 0 {inode} 1"
        )
    (folder / "tcp6").write_text("\n".join(rows) + "\n")
    (folder / "if_inet6").write_text(if_inet6)
    return folder


def test_a_link_local_address_is_reached_through_its_interface(tmp_path: Path) -> None:
    """An IPv6 link-local address is asked through its interface (its index the scope id of
    the connection); a socket on :: of a board with no global IPv6 address through a
    link-local one."""
    net = _proc_net(
        tmp_path / "net",
        [],
        "fe800000000000000000000000000001 07 40 20 80     lan0\n"
        "00000000000000000000000000000001 01 80 10 80       lo\n",
    )
    board = board_addresses(net)
    assert board == [Address("fe80::1", "lan0", 7)]
    assert targets("fe80::1", board) == board
    assert targets("::", board) == board
    assert board[0].sockaddr(1884) == ("fe80::1", 1884, 0, 7)
    assert board[0].shown(1884) == "[fe80::1%lan0]:1884"


@pytest.mark.asyncio
async def test_a_socket_the_probe_cannot_reach_is_not_checked(tmp_path: Path) -> None:
    """A socket listening on a link-local address the probe cannot connect to (its interface
    gone from under it here): not checked, naming the address, never "no MQTT"."""
    net = _proc_net(
        tmp_path / "net",
        [("fe80::1", 1884, 987654321)],
        "fe800000000000000000000000000001 7ffffff0 40 20 80     lan9\n",
    )
    (check,) = await check_network(1.0, net, nginx=tmp_path / "no-nginx")
    assert check.verdict is Verdict.TODO, check
    assert check.detail.startswith(
        "not checked: a process the doctor cannot see listens on [fe80::1]:1884, but no "
        "connection to it could be made at [fe80::1%lan9]:1884"
    ), check.detail
    # Nothing but loopback: nothing reachable, passed.
    bare = _proc_net(tmp_path / "bare", [("fe80::1", 1884, 987654321)], "")
    (check,) = await check_network(1.0, bare, nginx=tmp_path / "no-nginx")
    assert check.verdict is Verdict.OK, check
    assert "no address but loopback" in check.detail


def _link_local() -> tuple[str, str] | None:
    """A link-local IPv6 address of this machine and its interface, if it has one."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            words = line.split()
            if len(words) >= 6 and words[3] == "20":
                return str(ipaddress.IPv6Address(bytes.fromhex(words[0]))), words[5]
    return None


@pytest.mark.asyncio
async def test_plain_mqtt_on_a_link_local_address_is_found(rig: Rig, tmp_path: Path) -> None:
    """A relay bound to the board's link-local address (fe80::...%IF) to the broker: asked
    through that interface, a FAIL naming it."""
    found = _link_local()
    need("a link-local IPv6 address", found is not None)
    assert found is not None
    address, interface = found
    async with relay(rig.broker.port, f"{address}%{interface}") as port:
        checks = await check_network(3.0, nginx=tmp_path / "no-nginx")
    ours = [c for c in checks if f":{port}: from the network" in c.detail]
    assert [c.verdict for c in ours] == [Verdict.FAIL], checks
    assert (
        f"listens on [{address}]:{port}: from the network, at [{address}%{interface}]:{port}, "
        "a plain MQTT CONNECT was answered with a CONNACK"
    ) in ours[0].detail


def test_nginx_s_location_paths_are_read(tmp_path: Path) -> None:
    """Literal, = and ^~ locations of sites-enabled/* and conf.d/*.conf, in order, each once,
    bounded; regex and named locations and comments left out."""
    assert location_paths(
        "server { listen 80; # location /commented { }\n"
        "  location = /ws { proxy_pass http://127.0.0.1:9001; }\n"
        "  location / { return 301 https://$host$request_uri; }\n"
        "  location ^~ /live/ { }\n  location =/exact { }\n"
        "  location ~ \\.php$ { }\n  location ~* /regex { }\n  location @named { }\n"
        '  location\n    "/quoted"\n  { location /nested { } }\n}\n'
    ) == ["/ws", "/", "/live/", "/exact", "/quoted", "/nested"]
    root = tmp_path / "nginx"
    (root / "sites-enabled").mkdir(parents=True)
    (root / "conf.d").mkdir()
    (root / "sites-enabled" / "a").write_text("location /mqtt { } location = /ws { }\n")
    (root / "conf.d" / "b.conf").write_text("location /ws { } location /b { }\n")
    (root / "conf.d" / "c.conf.off").write_text("location /off { }\n")
    assert nginx_paths(root) == ["/ws", "/b"]
    (root / "conf.d" / "many.conf").write_text(
        "".join(f"location /p{n} {{ }}\n" for n in range(40))
    )
    assert len(nginx_paths(root)) == 16
    assert nginx_paths(tmp_path / "none") == []


@contextlib.asynccontextmanager
async def path_proxy(to_port: int, path: str, host: str | None = None) -> AsyncIterator[int]:
    """An HTTP server on every address passing only ``path`` on to 127.0.0.1:``to_port`` (as
    nginx's location = PATH with proxy_pass), and with ``host`` only for that Host header (as
    nginx's server_name), 404 for any other; the port it listens on."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            head = await reader.readuntil(b"\r\n\r\n")
            wanted = head.startswith(f"GET {path} HTTP/1.1\r\n".encode())
            if host is not None:
                wanted = wanted and f"\r\nHost: {host}\r\n".encode() in head
            if not wanted:
                writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", to_port)
            up_writer.write(head)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        writer.close()

    async with alone_on_the_network():  # it listens beyond loopback
        server = await asyncio.start_server(serve, "0.0.0.0", 0)
        try:
            yield int(server.sockets[0].getsockname()[1])
        finally:
            server.close()


@pytest.mark.asyncio
async def test_websockets_at_a_path_of_nginx_s_configuration_are_found(
    rig: Rig, tmp_path: Path
) -> None:
    """A plain-http server passing MQTT over WebSockets at /ws only: found when nginx's
    enabled configuration has that location, and not asked where it has none."""
    need("an IPv4 address other than loopback", any(":" not in a for a in network_addresses()))
    _broker_anew(rig, auth_lines(rig.tmp), websockets=True)
    assert rig.broker.ws_port is not None
    nginx = tmp_path / "nginx"
    (nginx / "sites-enabled").mkdir(parents=True)
    (nginx / "sites-enabled" / "treadguard").write_text(
        "server {\n  listen 80;\n  location = /ws {\n    proxy_pass http://127.0.0.1:9001;\n"
        "  }\n  location / { return 301 https://$host$request_uri; }\n}\n"
    )
    async with path_proxy(rig.broker.ws_port, "/ws") as port:
        without = await check_network(3.0, nginx=tmp_path / "no-nginx")
        checks = await check_network(3.0, nginx=nginx)
    assert not [c for c in without if f":{port}: from the network" in c.detail], without
    ours = [c for c in checks if f":{port}: from the network" in c.detail]
    assert [c.verdict for c in ours] == [Verdict.FAIL], checks
    assert "an MQTT CONNECT over plain WebSockets (GET /ws) was answered" in ours[0].detail


@contextlib.asynccontextmanager
async def relay(to_port: int, host: str = "0.0.0.0") -> AsyncIterator[int]:
    """A relay on ``host`` (every address: a socat) to 127.0.0.1:``to_port``; the port it
    listens on."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", to_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async with alone_on_the_network():  # it listens beyond loopback
        server = await asyncio.start_server(serve, host, 0)
        try:
            yield int(server.sockets[0].getsockname()[1])
        finally:
            server.close()


@pytest.mark.asyncio
@pytest.mark.usefixtures("board_network")  # a broker listening beyond loopback
async def test_plain_mqtt_reachable_from_the_network_through_a_relay(rig: Rig) -> None:
    """Mosquitto on loopback only, but a relay on every address passes plain MQTT to it, and
    another plain WebSockets (nginx's port 80 passing /mqtt on): each a FAIL naming the
    address, the port and the process, found by asking there from the board's own address.
    Mosquitto's TLS listener on every address answers neither in the clear and passes."""
    board = network_addresses()
    need("an address other than loopback", bool(board))
    need("openssl", OPENSSL is not None)
    pki = make_pki(rig.tmp / "pki")
    (tls,) = free_ports(1)
    _broker_anew(
        rig,
        auth_lines(rig.tmp) + f"listener {tls}\n{pki.tls_lines()}",
        websockets=True,
    )
    assert rig.broker.ws_port is not None
    rig.drive = 'kind = "simulator"'
    async with (
        relay(rig.broker.port) as plain,
        relay(rig.broker.ws_port) as ws,
        publishing(Sensors(rig.broker.port)),
    ):
        assert await _until_true(lambda: tls in {s.port for s in listening()}, 10.0)
        done = await doctor(rig, rig.config(), "--service-user", "root")
    me = f"(pid {os.getpid()})"
    text = failed(
        done,
        "network MQTT",
        f"listens on 0.0.0.0:{plain}: from the network, at {board[0]}:{plain}, a plain MQTT "
        "CONNECT was answered with a CONNACK",
        f"listens on 0.0.0.0:{ws}: from the network, at {board[0]}:{ws}, an MQTT CONNECT over "
        "plain WebSockets (GET /mqtt) was answered with a CONNACK",
        me,
        "serve MQTT to the network only over TLS",
    )
    assert text.count("  FAIL  ") == 2, done.out
    assert f":{tls}" not in text, text


@pytest.mark.asyncio
@pytest.mark.usefixtures("board_network")  # a broker listening beyond loopback
async def test_two_listeners_on_one_port_are_judged_each_by_its_own(rig: Rig) -> None:
    """listener P on the board's address, plain, and listener P 127.0.0.1 with TLS: the TLS of
    the one is not the other's. The socket on the network fails, with its own line."""
    board = [a for a in network_addresses() if ":" not in a]
    need("an IPv4 address other than loopback", bool(board))
    need("openssl", OPENSSL is not None)
    pki = make_pki(rig.tmp / "pki")
    (port,) = free_ports(1)
    _broker_anew(
        rig,
        auth_lines(rig.tmp)
        + f"listener {port} {board[0]}\nlistener {port} 127.0.0.1\n{pki.tls_lines()}",
    )
    assert await _until_true(
        lambda: (board[0], port) in {(s.address, s.port) for s in listening()}, 10.0
    )
    rig.drive = 'kind = "simulator"'
    async with publishing(Sensors(rig.broker.port)):
        done = await doctor(rig, rig.config(), "--service-user", "root")
    lines = rig.broker.conf.read_text().splitlines()
    number = lines.index(f"listener {port} {board[0]}") + 1
    text = failed(
        done,
        "listeners",
        f"listens on {board[0]}:{port} ({rig.broker.conf}, line {number}) without TLS",
    )
    assert text.count("  FAIL  ") == 1, done.out
    failed(done, "network MQTT", f"at {board[0]}:{port}, a plain MQTT CONNECT")


@pytest.mark.asyncio
async def test_acl_faults_mosquitto_acts_on_are_named(rig: Rig) -> None:
    """The dashboard's own grant with a pattern deny after it, and a tablet's user line hidden
    after a vertical tab in a comment: the real broker lets the dashboard command, and the
    doctor names the dashboard's line (and the vertical tab)."""
    shipped = ACL.read_bytes()
    cases = {
        "pattern deny": b"user dashboard\ntopic write treadmill/+/cmd\n"
        b"pattern deny treadmill/+/cmd\n",
        "vertical tab": b"user dashboard\n# ticket 42\x0buser tablet\n"
        b"topic write treadmill/+/cmd\n",
    }
    rig.drive = 'kind = "simulator"'
    for name, extra in cases.items():
        broker_with_acl(rig, (shipped + extra).decode())
        assert await _delivered(rig, "dashboard"), name
        async with publishing(Sensors(rig.broker.port)):
            done = await doctor(rig, rig.config(), "--service-user", "root")
        lines = (shipped + extra).split(b"\n")
        last = len(lines) - lines[::-1].index(b"topic write treadmill/+/cmd")
        failed(
            done,
            "ACL file",
            f"line {last} ('topic write treadmill/+/cmd'): the account dashboard may write "
            "treadmill/tm-01/cmd",
        )
        if name == "vertical tab":
            failed(done, "ACL file", f"line {last - 1} holds U+000B (a vertical tab)", "cat -A")


@pytest.mark.asyncio
async def test_a_pattern_s_u_gives_an_account_named_like_a_topic_the_command(rig: Rig) -> None:
    """Accounts named cmd and tm-01, which no user line names, and a pattern that lets each
    account write a topic of its own name: the real broker lets each command the treadmill,
    and the doctor names the pattern line with the name that does it."""
    shipped = ACL.read_text(encoding="utf-8")
    passwords = {**PASSWORDS, "cmd": "cmd-secret", "tm-01": "tm-01-secret"}
    passwd = password_file(rig.tmp / "passwd-more", passwords)
    rig.drive = 'kind = "simulator"'
    for pattern, account in (
        ("pattern write treadmill/tm-01/%u", "cmd"),
        ("pattern write treadmill/%u/cmd", "tm-01"),
    ):
        acl = rig.tmp / "acl-pattern"
        acl.write_text(f"{shipped}{pattern}\n", encoding="utf-8")
        _broker_anew(
            rig,
            auth_lines(rig.tmp)
            .replace(f"acl_file {ACL}", f"acl_file {acl}")
            .replace(f"password_file {rig.tmp / 'passwd'}", f"password_file {passwd}"),
        )
        assert await _delivered(rig, account, passwords[account]), pattern
        async with publishing(Sensors(rig.broker.port)):
            done = await doctor(rig, rig.config(), "--service-user", "root")
        number = shipped.count("\n") + 1
        failed(
            done,
            "ACL file",
            f"{acl}, line {number} ('{pattern}'): %u is any account's name: an account named "
            f"{account} would write treadmill/tm-01/cmd (only the tablet accounts",
        )


async def _delivered(rig: Rig, account: str, password: str | None = None) -> bool:
    """Whether a command ``account`` publishes reaches the daemon's account."""
    topic = f"treadmill/{SENSOR_TM}/cmd"
    async with (
        aiomqtt.Client(
            "127.0.0.1", rig.broker.port, username="treadguard", password=PASSWORDS["treadguard"]
        ) as daemon,
        aiomqtt.Client(
            "127.0.0.1",
            rig.broker.port,
            username=account,
            password=PASSWORDS[account] if password is None else password,
        ) as other,
    ):
        await daemon.subscribe(topic, qos=1)
        await other.publish(topic, b'{"id":"x","type":"heartbeat"}', qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3.0):
                async for _ in daemon.messages:
                    return True
    return False
