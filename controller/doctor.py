"""``treadguard doctor``: the checklist a technician runs after wiring a board (docs/doctor.md).

Each check says what it found and, when it fails, a plain fix. The checks look at the board as
the service will meet it: files and devices as the service's user (``treadguard``) may use
them, the drive and the sensors through the daemon's own drivers and readers, the broker with
the daemon's own account. Nothing here moves the belt unless ``--belt`` asks: the drive is only
polled (every driver sends its stop word first on connecting). A Trackmaster reports its
deadman (CDS) only in a running belt's state, so only ``--belt`` (the technician present) reads
it back: the driver's own start (``A0``) at a walking pace, one state read, and its stop. The
MQTT probes are a command the daemon would
only ever see as a heartbeat (the daemon must be stopped for the check, which is checked
first) and a reply with an id no tablet asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import grp
import hashlib
import ipaddress
import itertools
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import aiomqtt

from treadguard.config.loading import ConfigError, LoadedConfig
from treadguard.config.schema import (
    GpioInputSection,
    ModbusDriveSection,
    ModbusInputSection,
    SimulatedDriveSection,
    TrackmasterDriveSection,
    input_name,
)
from treadguard.contract.mqtt import SensorPayloadError, Topics, parse_sensor_payload
from treadguard.controller.broker_config import (
    DEBIAN_MOSQUITTO_CONF,
    AclSyntaxError,
    ConfLine,
    ConfRefused,
    Guarded,
    Listener,
    MosquittoConf,
    Socket,
    breaches,
    file_lines,
    host_port,
    listening,
    owner_words,
    parse_acl,
    path_in_root,
    process_name,
    process_sockets,
    read_mosquitto_conf,
    socket_owners,
    unusual_characters,
)
from treadguard.controller.doctor_page import SITE as PAGE_SITE
from treadguard.controller.doctor_page import check_page, seen
from treadguard.controller.doctor_relays import relays
from treadguard.controller.drives import build_driver
from treadguard.controller.journal import (
    SCHEMA_VERSION,
    WARN_FRACTION,
    drive_identity,
    journal_in_use,
)
from treadguard.controller.journal import schema_version as journal_schema_version
from treadguard.controller.mqtt_settings import (
    BrokerSettings,
    broker_settings,
    query_broker_settings,
)
from treadguard.controller.network_probe import (
    NGINX_DIR,
    NGINX_UNREADABLE,
    WEBSOCKET_PATHS,
    Directive,
    NginxUnreadable,
    board_addresses,
    mqtt_answers,
    nginx_files,
    nginx_paths,
    nginx_proxy_targets,
    nginx_unasked,
    parse_nginx,
    targets,
)
from treadguard.controller.preflight import load_runnable
from treadguard.controller.sensors import SensorHub
from treadguard.controller.treadmill_lock import drive_lock_names, is_held, topic_lock_name
from treadguard.drivers.regular_file import read_regular
from treadguard.drivers.trackmaster import TrackmasterDriver
from treadguard.drivers.trackmaster_codec import BeltState
from treadguard.safety.inputs import FallReading, GripReading, Hand, Sensor

INSTALL_DOC = "docs/install-raspberry-pi.md"


class Verdict(StrEnum):
    OK = "ok"
    FAIL = "FAIL"
    NONE = "-"  # nothing of this kind to check on this board (counts as passed)
    # Not checked, so not proven: does not count as passed (the fix says how to check it).
    TODO = "TODO"


def _printable(text: str) -> str:
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate no file name gives: its code shown
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    fix: str = ""

    def __post_init__(self) -> None:
        # A file's name need not be UTF-8 (read, it holds surrogate escapes): shown with its
        # odd bytes as \xNN, as ls -b shows them, so that it is said, and never crashes the
        # printing of the report.
        for name in ("detail", "fix"):
            object.__setattr__(self, name, _printable(getattr(self, name)))

    def as_json(self) -> dict[str, str]:
        return {
            "check": self.name,
            "verdict": self.verdict.value,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class DoctorOptions:
    service_user: str = "treadguard"
    tablet_username: str | None = None
    tablet_password: str | None = None
    # How long the drive, each sensor and each broker probe get to answer.
    wait_s: float = 3.0
    # --walk: the technician is asked to touch each sensor; ``say`` prints the request.
    walk: bool = False
    walk_wait_s: float = 30.0
    # --belt: start a Trackmaster's belt briefly to read its CDS back (the technician present).
    belt: bool = False
    # Asked, with BELT_PROMPT, right before the belt is started: True only for the typed word.
    # The default refuses: the belt never starts on a confirmation nobody gave.
    confirm: Callable[[str], Awaitable[bool]] = field(default=lambda _prompt: _refused())
    say: Callable[[str], None] = print
    # The broker's configuration as installed: Debian's main file, which names the rest.
    mosquitto_conf: Path = DEBIAN_MOSQUITTO_CONF
    # nginx's configuration: the paths of its locations are asked for MQTT over WebSockets.
    nginx_dir: Path = NGINX_DIR


async def _refused() -> bool:
    return False


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Every check passed: none failed, none was left unchecked."""
        return all(c.verdict in (Verdict.OK, Verdict.NONE) for c in self.checks)

    @property
    def failed(self) -> bool:
        return any(c.verdict is Verdict.FAIL for c in self.checks)

    def add(self, check: Check) -> None:
        self.checks.append(check)


# ------------------------------------------------------------------ the service's user


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gids: frozenset[int]

    def may(self, path: Path, want: int) -> bool:
        """Whether this account may ``want`` (a mix of 4 read, 2 write, 1 search) ``path``
        by its mode bits, and search every folder on the way to it."""
        if self.uid == 0:
            return True
        try:
            for folder in reversed(path.absolute().parents):
                if not self._bits(folder.stat()) & 1:
                    return False
            return self._bits(path.stat()) & want == want
        except OSError:
            return False

    def blocker(self, path: Path, want: int) -> Path | None:
        """What keeps this account from ``want`` on ``path``: the first folder on the way it
        may not search, or ``path`` itself; None if nothing does."""
        if self.uid == 0:
            return None
        try:
            for folder in reversed(path.absolute().parents):
                if not self._bits(folder.stat()) & 1:
                    return folder
            return None if self._bits(path.stat()) & want == want else path
        except OSError:
            return path

    def _bits(self, st: os.stat_result) -> int:
        if st.st_uid == self.uid:
            return (st.st_mode >> 6) & 7
        if st.st_gid in self.gids:
            return (st.st_mode >> 3) & 7
        return st.st_mode & 7


def service_account(name: str) -> Account | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return Account(name, entry.pw_uid, frozenset(os.getgrouplist(name, entry.pw_gid)))


def _no_account(name: str) -> Check:
    return Check(
        "service user",
        Verdict.FAIL,
        f"there is no user {name!r} on this machine",
        "scripts/install creates it; or name the user the service runs as with --service-user",
    )


def _name(lookup: Callable[[int], Any], number: int) -> str:
    try:
        return str(lookup(number)[0])
    except KeyError:
        return str(number)


# What the udev rules of INSTALL_DOC give a device, and the step that has the whole rule.
SERIAL_RULE = ('GROUP="dialout", MODE="0660"', "step 2")
GPIO_RULE = ('SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="treadguard", MODE="0660"', "step 3")


def _access_fix(account: Account, path: Path, rule: tuple[str, str]) -> str:
    """Joining the device's group helps only when that group may read and write it, and never
    root's group: otherwise the device itself must be given to a group by a udev rule."""
    st = path.stat()
    owner = _name(pwd.getpwuid, st.st_uid)
    group = _name(grp.getgrgid, st.st_gid)
    if st.st_gid != 0 and st.st_mode & 0o060 == 0o060:
        return (
            f"add {account.name} to the group {group} (sudo usermod -aG {group} {account.name}), "
            "then restart the service"
        )
    udev, step = rule
    return (
        f"{path} is {owner}:{group}, mode {stat.S_IMODE(st.st_mode):04o}: give it to a group of "
        f"{account.name} with a udev rule ({udev}; {INSTALL_DOC}, {step}), then "
        "sudo udevadm control --reload && sudo udevadm trigger"
    )


# ------------------------------------------------------------------ the checks


def check_configuration(path: Path) -> tuple[Check, LoadedConfig | None]:
    try:
        loaded = load_runnable(path)
    except ConfigError as exc:
        return (
            Check(
                "configuration",
                Verdict.FAIL,
                f"{path}: " + "; ".join(exc.problems),
                f"correct the file (treadguard check-config {path} lists every problem)",
            ),
            None,
        )
    cfg = loaded.config
    inputs = cfg.sensors.effective_inputs()
    sensors = f"{len(inputs)} sensor input(s)" if inputs else "the built-in simulated user"
    return (
        Check(
            "configuration",
            Verdict.OK,
            f"{path}: treadmill {cfg.treadmill.id}, {_drive_words(loaded)}, {sensors}",
        ),
        loaded,
    )


def _configuration_unreadable(loaded: LoadedConfig, account: Account | None) -> Check | None:
    """A FAIL when the service's user may not read what the daemon reads of its configuration
    (the doctor, as root, reads anything): the file, the rules, the programs' folder and each
    program file in it. Each is named with what lets the user in: a folder on the way it may
    not enter needs a+x (a+r on the files would change nothing), a file a+r."""
    if account is None:
        return None
    folder = loaded.resolve(loaded.config.programs.dir)
    try:
        programs = sorted(p for p in folder.iterdir() if p.suffix == ".toml")
    except OSError:
        programs = []  # the folder itself is judged below
    wanted = [
        (loaded.path, 4),
        *([(loaded.rules_path, 4)] if loaded.rules_path is not None else []),
        (folder, 5),
        *((p, 4) for p in programs),
    ]
    closed: dict[Path, None] = {}  # folders on the way it may not enter, in order
    unread: dict[Path, int] = {}
    for path, want in wanted:
        blocker = account.blocker(path, want)
        if blocker is None:
            continue
        if blocker == path:
            unread[path] = want
        else:
            closed[blocker] = None
    if not closed and not unread:
        return None
    said, fixes = [], []
    if closed:
        names = " ".join(str(p) for p in closed)
        said.append(f"{', '.join(str(p) for p in closed)} cannot be entered by {account.name}")
        fixes.append(f"sudo chmod a+x {names}")
    if unread:
        names = " ".join(str(p) for p in unread)
        said.append(f"{', '.join(str(p) for p in unread)} cannot be read by {account.name}")
        wants = {"a+rx" if w == 5 else "a+r" for w in unread.values()}
        fixes.append(f"sudo chmod {'a+rx' if 'a+rx' in wants else 'a+r'} {names}")
    return Check(
        "configuration",
        Verdict.FAIL,
        f"{'; '.join(said)}, the service's user: treadguard would not start",
        f"{'; '.join(fixes)}; the passwords belong in /etc/treadguard/environment, which "
        "systemd reads as root",
    )


def _drive_words(loaded: LoadedConfig) -> str:
    drive = loaded.config.drive
    match drive:
        case TrackmasterDriveSection():
            return f"Trackmaster on {drive.port}"
        case ModbusDriveSection(transport="tcp"):
            return f"Modbus VFD at {drive.host}:{drive.tcp_port}"
        case ModbusDriveSection():
            return f"Modbus VFD on {drive.serial_port}"
        case _:
            return "the built-in simulated drive"


def _me() -> str:
    """The user the doctor itself runs as."""
    return _name(pwd.getpwuid, os.geteuid())


def _unreadable(path: Path, what: str) -> Check | None:
    """A failed check when the doctor itself cannot read ``path`` (or search a folder on the
    way to it); None when it can, or when there is nothing at ``path``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        reason = exc.strerror or str(exc)
    else:
        if not stat.S_ISREG(st.st_mode):
            return Check(
                what,
                Verdict.FAIL,
                f"{path} is not a file (the journal's path, [journal] path)",
                f"move what is at {path} aside, or name the journal's file in [journal] path",
            )
        if os.access(path, os.R_OK, effective_ids=True):
            return None
        reason = "Permission denied"
    return Check(
        what,
        Verdict.FAIL,
        f"{path} cannot be read by the doctor, which runs as {_me()} ({reason}): "
        + (
            "whether treadguard is running on it cannot be told"
            if what == "service stopped"
            else "the journal is not checked"
        ),
        "run the doctor as root (sudo, as docs/install-raspberry-pi.md section 5 does): it "
        "then also checks that the service's user may write the journal",
    )


def check_daemon_stopped(loaded: LoadedConfig) -> Check:
    journal = loaded.resolve(loaded.config.journal.path)
    # A journal the doctor cannot open says nothing about the daemon: never "not running".
    unreadable = _unreadable(journal, "service stopped")
    if unreadable is not None:
        return unreadable
    try:
        running = journal_in_use(journal)
    except OSError as exc:
        return Check(
            "service stopped",
            Verdict.FAIL,
            f"{journal} cannot be opened by the doctor, which runs as {_me()}: {exc}",
            "run the doctor as root (sudo, as docs/install-raspberry-pi.md section 5 does)",
        )
    if running:
        return Check(
            "service stopped",
            Verdict.FAIL,
            f"treadguard is running on this treadmill (it holds the lock on {journal}), so "
            "the drive, the sensors and the broker cannot be checked without disturbing it",
            "sudo systemctl stop treadguard, run the doctor, then sudo systemctl start treadguard",
        )
    # A treadguard process on another journal (a copied configuration) may still hold this
    # treadmill's topics or its drive (controller/treadmill_lock.py).
    broker = broker_settings(loaded)
    drive = drive_identity(loaded.config.drive)
    holds = [f"the topics {broker.prefix} on the broker at port {broker.port}"] * is_held(
        topic_lock_name(broker.port, broker.prefix)
    )
    if any(is_held(name) for name in drive_lock_names(loaded.config.drive)):
        holds.append(f"the {drive}")
    if holds:
        return Check(
            "service stopped",
            Verdict.FAIL,
            f"a treadguard process holds {' and '.join(holds)} (the service, or a run from "
            "another configuration), so the drive, the sensors and the broker cannot be "
            "checked without disturbing it",
            "stop it (sudo systemctl stop treadguard; ps -ef | grep treadguard finds one run "
            "by hand), run the doctor, then start the service again",
        )
    return Check("service stopped", Verdict.OK, "treadguard is not running on this treadmill")


def serial_devices(loaded: LoadedConfig) -> list[tuple[str, Path]]:
    cfg = loaded.config
    found: list[tuple[str, Path]] = []
    drive = cfg.drive
    if isinstance(drive, TrackmasterDriveSection):
        found.append(("the treadmill's serial port", Path(drive.port)))
    elif isinstance(drive, ModbusDriveSection) and drive.serial_port is not None:
        found.append(("the drive's RS-485 port", Path(drive.serial_port)))
    for entry in cfg.sensors.effective_inputs():
        if isinstance(entry, ModbusInputSection) and entry.serial_port is not None:
            found.append((f"sensor {input_name(entry)}'s RS-485 port", Path(entry.serial_port)))
    return found


def check_serial(loaded: LoadedConfig, account: Account | None, user: str) -> list[Check]:
    devices = serial_devices(loaded)
    if not devices:
        return [Check("serial port", Verdict.NONE, "no serial device in the configuration")]
    checks = []
    for what, path in dict.fromkeys(devices):
        if not path.exists():
            checks.append(
                Check(
                    "serial port",
                    Verdict.FAIL,
                    f"{what}, {path}, does not exist",
                    "plug the USB adapter in; a name such as /dev/treadmill comes from a udev "
                    f"rule ({INSTALL_DOC}, step 2): udevadm info -a /dev/ttyUSB0 shows the "
                    "adapter's attributes",
                )
            )
        elif not stat.S_ISCHR(path.stat().st_mode):
            checks.append(
                Check(
                    "serial port",
                    Verdict.FAIL,
                    f"{what}, {path}, is not a device",
                    "name the adapter's device (/dev/ttyUSB0 or its udev name) in the "
                    "configuration",
                )
            )
        elif account is None:
            checks.append(_no_account(user))
        elif not account.may(path, 6):
            checks.append(
                Check(
                    "serial port",
                    Verdict.FAIL,
                    f"{what}, {path}, cannot be read and written by {account.name}",
                    _access_fix(account, path, SERIAL_RULE),
                )
            )
        else:
            checks.append(
                Check("serial port", Verdict.OK, f"{what}, {path}: {account.name} may use it")
            )
    return checks


def check_gpio(loaded: LoadedConfig, account: Account | None, user: str) -> list[Check]:
    lines = [e for e in loaded.config.sensors.effective_inputs() if isinstance(e, GpioInputSection)]
    if not lines:
        return [Check("GPIO", Verdict.NONE, "no GPIO input in the configuration")]
    checks = []
    for entry in lines:
        chip = Path(entry.chip)
        name = input_name(entry)
        if not chip.exists():
            checks.append(
                Check(
                    "GPIO",
                    Verdict.FAIL,
                    f"sensor {name}: the GPIO chip {chip} does not exist",
                    CHIPS_FIX,
                )
            )
            continue
        if account is None:
            checks.append(_no_account(user))
            continue
        if not account.may(chip, 6):
            checks.append(
                Check(
                    "GPIO",
                    Verdict.FAIL,
                    f"sensor {name}: {chip} cannot be used by {account.name}",
                    _access_fix(account, chip, GPIO_RULE),
                )
            )
            continue
        problem = _gpio_line_problem(chip, entry.line)
        if problem is not None:
            detail, fix = problem
            checks.append(Check("GPIO", Verdict.FAIL, f"sensor {name}: {detail}", fix))
        else:
            checks.append(
                Check("GPIO", Verdict.OK, f"sensor {name}: line {entry.line} of {chip} present")
            )
    return checks


CHIPS_FIX = (
    "ls /dev/gpiochip* lists the chips (gpiodetect names them); on a Raspberry Pi 5 the header "
    "is /dev/gpiochip4, on earlier ones /dev/gpiochip0"
)


def _gpio_line_problem(chip: Path, line: int | str) -> tuple[str, str] | None:
    """What is wrong with ``line`` of ``chip``, and its fix; None: the line is there."""
    try:
        import gpiod  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return (
            "libgpiod's Python binding (gpiod) is not installed",
            "scripts/install --update installs treadguard with it",
        )
    lines_fix = f"gpioinfo {chip} lists the chip's lines and their names"
    # libgpiod's own test: a device of another kind (a serial port, /dev/null) would otherwise
    # fail below with an errno ("No such file or directory") that names no cause.
    if not gpiod.is_gpiochip_device(str(chip)):
        return f"{chip} is not a GPIO chip", CHIPS_FIX
    try:
        with gpiod.Chip(str(chip)) as opened:
            count = int(opened.get_info().num_lines)
            if isinstance(line, int):
                if line < count:
                    return None
                return f"{chip} has {count} lines, no line {line}", lines_fix
            opened.line_offset_from_id(line)
            return None
    except (OSError, ValueError) as exc:
        return f"line {line} on {chip}: {exc}", lines_fix


# --belt: the speed the Trackmaster is started at to read its CDS back; slow enough to step on
# and off, and above every known model's minimum (0.2 mph).
BELT_PROBE_MPH = 0.5
BELT_WORD = "START"
BELT_PROMPT = (
    f"The belt will start at {BELT_PROBE_MPH} mph for about a second. Stand clear of the belt "
    f"and type {BELT_WORD} (then Enter):"
)


def _recorder(
    readings: dict[Sensor, tuple[float, bool]],
) -> Callable[[GripReading | FallReading], None]:
    """A sensor hub's sink that keeps each sensor's newest reading (time, value)."""

    def submit(reading: GripReading | FallReading) -> None:
        if isinstance(reading, FallReading):
            readings[Sensor.FALL] = (reading.t, reading.fallen)
        else:
            role = Sensor.GRIP_LEFT if reading.hand is Hand.LEFT else Sensor.GRIP_RIGHT
            readings[role] = (reading.t, reading.held)

    return submit


async def check_drive(
    loaded: LoadedConfig, options: DoctorOptions, broker: BrokerSettings
) -> list[Check]:
    drive = loaded.config.drive
    if isinstance(drive, SimulatedDriveSection):
        return [Check("drive", Verdict.NONE, "the built-in simulated drive")]
    driver = build_driver(loaded, time.monotonic)
    task = asyncio.create_task(driver.run())
    status = None
    cds: Check | None = None
    try:
        deadline = time.monotonic() + options.wait_s
        while time.monotonic() < deadline and not task.done():
            status = driver.status()
            if status is not None and status.fault is None:
                break
            await asyncio.sleep(0.05)  # polling a status the driver's own task updates
        healthy = status is not None and status.fault is None
        if healthy and options.belt and isinstance(driver, TrackmasterDriver):
            cds = await _read_cds_back(driver, loaded, options, broker)
    finally:
        await _ended([task])
    where = _drive_words(loaded)
    if status is None or status.fault is not None:
        said = status.fault if status is not None and status.fault else "no answer"
        return [Check("drive", Verdict.FAIL, f"{where}: {said}", _drive_fix(loaded, said))]
    if cds is not None:
        return [cds]
    answers = f"{where} answers (belt {status.speed_mph:.2f} mph)"
    if isinstance(drive, ModbusDriveSection):
        deadman = "its communication time-out (09.03) and fault action (09.02) read back safe"
        return [Check("drive", Verdict.OK, f"{answers}; deadman: {deadman}")]
    # The protocol reports the CDS only in the running belt's state (D0 32 or D0 33): a stopped
    # belt says D0 31 either way, and nothing here moves the belt unless asked. A deadman not
    # read back is not proven: not checked, never ok.
    return [
        Check(
            "drive",
            Verdict.TODO,
            f"{answers}; deadman: not checked: its CDS was not read back: a Trackmaster reports "
            f"it only while the belt runs (D0 32 on, D0 33 off); --belt starts the belt at "
            f"{BELT_PROBE_MPH} mph with A0 to read it, and treadguard commission's deadman step "
            "proves it stops the belt",
            "run treadguard doctor --belt with the technician at the treadmill (the belt clear)",
        )
    ]


async def _read_cds_back(
    driver: TrackmasterDriver,
    loaded: LoadedConfig,
    options: DoctorOptions,
    broker: BrokerSettings,
) -> Check:
    """--belt: once the technician typed the word and no configured sensor reports a user on
    the belt, start the belt with A0 (the driver's own start, which arms the CDS) at
    BELT_PROBE_MPH, read the belt's state back (D0 32: running with CDS; D0 33: without), and
    stop it again. A cancellation anywhere (a signal: diagnose_or_signal) reaches check_drive's
    ``finally``, whose cancelled driver writes its stop (A2) on the way out."""
    where = _drive_words(loaded)
    async with _sensor_watch(loaded, broker, options) as readings:
        if not await options.confirm(BELT_PROMPT):
            return Check(
                "drive",
                Verdict.FAIL,
                f"{where}: --belt: the belt was not started ({BELT_WORD} was not typed)",
                f"run again at the treadmill, the belt clear, and type {BELT_WORD}",
            )
        on_belt = await _user_on_belt(loaded, readings, options.wait_s)
        if on_belt is not None:
            return Check(
                "drive",
                Verdict.FAIL,
                f"{where}: --belt: the belt was not started: {on_belt}",
                "nobody on the belt, both rails let go and the fall input clear, then run "
                "again (the sensors check below shows what each sensor reports)",
            )
        options.say(f"belt: stand clear: the belt starts at {BELT_PROBE_MPH} mph for a moment")
        driver.command_speed(0.0)  # the driver starts only after a stop it was asked for
        driver.command_speed(BELT_PROBE_MPH)
        seen = driver.belt_states_seen
        running = {BeltState.RUNNING_CDS, BeltState.RUNNING_WITHOUT_CDS}

        def answered() -> bool:
            status = driver.status()
            return (
                bool(seen & running)
                or (status is not None and status.fault is not None)
                # Someone stepped on or took a rail: stop at once, whatever was read.
                or _user_seen(readings) is not None
            )

        try:
            await _until(answered, options.wait_s)
        except BaseException:
            # Cancelled (a signal) with the belt starting: the stop is asked for now, while
            # the driver's task still runs, not after the sensors' readers have ended.
            driver.command_speed(0.0)
            raise
        status = driver.status()
        fault = status.fault if status is not None else None
        driver.command_speed(0.0)
        stepped_on = _user_seen(readings)

    def stopped() -> bool:
        status = driver.status()
        return not driver.stopping and status is not None and status.speed_mph == 0.0

    standstill = await _until(stopped, options.wait_s)
    if stepped_on is not None:
        return Check(
            "drive",
            Verdict.FAIL,
            f"{where}: --belt: stopped at once: {stepped_on} while the belt ran",
            "nobody on the belt, both rails let go and the fall input clear, then run again",
        )
    if BeltState.RUNNING_WITHOUT_CDS in seen:
        return Check(
            "drive",
            Verdict.FAIL,
            f"{where}: started with A0, the belt ran with its communication-disconnect stop "
            "(CDS) disabled (D0 33): it would keep running if treadguard fell silent",
            "have the treadmill's CDS turned on in its own setup (its service menu or its "
            "maker: it must stop the belt 500 ms after the host falls silent); treadguard "
            "stops every session on it at once until then",
        )
    if BeltState.RUNNING_CDS not in seen:
        said = fault or f"the belt did not start within {options.wait_s:g} s"
        return Check("drive", Verdict.FAIL, f"{where}: --belt: {said}", _drive_fix(loaded, said))
    if not standstill:
        return Check(
            "drive",
            Verdict.FAIL,
            f"{where}: the belt did not report standstill within {options.wait_s:g} s of A2",
            "stop the belt at the treadmill (its stop button or safety key) and check the "
            "drive before any session (docs/drivers.md)",
        )
    return Check(
        "drive",
        Verdict.OK,
        f"{where} answers; deadman: started with A0 at {BELT_PROBE_MPH} mph, the belt read back "
        "running with its CDS on (D0 32), then stopped",
    )


@contextlib.asynccontextmanager
async def _sensor_watch(
    loaded: LoadedConfig, broker: BrokerSettings, options: DoctorOptions
) -> AsyncIterator[dict[Sensor, tuple[float, bool]]]:
    """The configured sensors read through the daemon's own readers while the body runs: each
    role's latest (time, asserted). No sensor inputs (the simulated user): nothing to read."""
    readings: dict[Sensor, tuple[float, bool]] = {}
    inputs = loaded.config.sensors.effective_inputs()
    if not inputs:
        yield readings
        return

    hub = SensorHub(inputs, _recorder(readings))
    tasks = [asyncio.create_task(run) for run in hub.build_sources(time.monotonic)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            if hub.mqtt_names:
                topics = Topics(broker.prefix)
                client = await stack.enter_async_context(_client(broker, options.wait_s))
                for name in hub.mqtt_names:
                    await client.subscribe(topics.sensor(name))
                tasks.append(asyncio.create_task(_feed(client, hub, topics, [])))
            yield readings
    finally:
        await _ended(tasks)


def _user_seen(readings: dict[Sensor, tuple[float, bool]]) -> str | None:
    """What says someone is on the belt: a rail held, a fall signalled; None: nothing."""
    for role, (_t, asserted) in readings.items():
        if asserted:
            return f"the {ROLE_WORDS[role]} reports {_state_words(role, asserted)}"
    return None


async def _user_on_belt(
    loaded: LoadedConfig, readings: dict[Sensor, tuple[float, bool]], wait_s: float
) -> str | None:
    """Why the belt must not start: a sensor reports a user, or a configured sensor has not
    been read (nobody can say the belt is clear); None: every sensor reads clear."""
    if not loaded.config.sensors.effective_inputs():
        return None
    await _until(lambda: len(readings) == len(Sensor), wait_s)
    missing = [ROLE_WORDS[role] for role in Sensor if role not in readings]
    if missing:
        return f"no reading from the {', '.join(missing)} in {wait_s:g} s"
    return _user_seen(readings)


def _drive_fix(loaded: LoadedConfig, said: str) -> str:
    if "09.0" in said:
        return (
            "set the drive's parameters on its keypad: 09.03 communication time-out 0.1-1.0 s "
            "(not 0), 09.02 communication fault action a stop (docs/drivers.md)"
        )
    drive = loaded.config.drive
    if isinstance(drive, TrackmasterDriveSection):
        return (
            "check the cable and that the treadmill is on; the baud rate (drive.baud) must "
            "match the treadmill's (docs/drivers.md); and that drive.port is the treadmill's "
            f"adapter ({drive.port} may be another device: ls -l /dev/serial/by-id names each "
            "USB adapter by its maker and serial number; name it that way)"
        )
    if isinstance(drive, ModbusDriveSection) and drive.transport == "rtu":
        return (
            "check the cable, the drive's address and its Modbus settings (docs/drivers.md); "
            f"and that drive.serial_port is the drive's adapter ({drive.serial_port} may be "
            "another device: ls -l /dev/serial/by-id names each USB adapter)"
        )
    return "check the cable, the drive's address and its Modbus settings (docs/drivers.md)"


async def check_sensors(
    loaded: LoadedConfig, broker: BrokerSettings, options: DoctorOptions
) -> list[Check]:
    cfg = loaded.config
    inputs = cfg.sensors.effective_inputs()
    if not inputs:
        return [Check("sensors", Verdict.NONE, "the built-in simulated user (no sensor inputs)")]
    readings: dict[Sensor, tuple[float, bool]] = {}

    hub = SensorHub(inputs, _recorder(readings))
    tasks = [asyncio.create_task(run) for run in hub.build_sources(time.monotonic)]
    topics = Topics(broker.prefix)
    problems: list[str] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            if hub.mqtt_names:
                client = await stack.enter_async_context(_client(broker, options.wait_s))
                for name in hub.mqtt_names:
                    await client.subscribe(topics.sensor(name))
                tasks.append(asyncio.create_task(_feed(client, hub, topics, problems)))
            return await _judge_sensors(cfg.safety.sensor_timeout_s, readings, options)
    except aiomqtt.MqttError as exc:
        return [
            Check(
                "sensors",
                Verdict.FAIL,
                f"the MQTT sensors cannot be read: {exc}",
                "see the broker check below",
            )
        ]
    finally:
        await _ended(tasks)


# How long a cancelled reader or driver may take to end (a driver sends its stop word on the
# way out, bounded by its own request time-out): the checklist goes on after it either way.
END_WAIT_S = 5.0


async def _ended(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait for them, within END_WAIT_S: a client whose exit swallows
    the cancellation must not hold up the checklist."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=END_WAIT_S)


async def _feed(
    client: aiomqtt.Client, hub: SensorHub, topics: Topics, problems: list[str]
) -> None:
    prefix = topics.sensor("")
    async for message in client.messages:
        name = str(message.topic).removeprefix(prefix)
        payload = message.payload if isinstance(message.payload, bytes) else b""
        parsed = parse_sensor_payload(payload)
        if isinstance(parsed, SensorPayloadError):
            problems.append(f"{name}: {parsed}")
            continue
        hub.stamped(name, parsed.ts, time.monotonic(), parsed.value)


ROLE_WORDS = {Sensor.GRIP_LEFT: "left grip", Sensor.GRIP_RIGHT: "right grip", Sensor.FALL: "fall"}


def _state_words(role: Sensor, asserted: bool) -> str:
    if role is Sensor.FALL:
        return "fall signalled" if asserted else "no fall"
    return "held" if asserted else "not held"


async def _judge_sensors(
    timeout_s: float, readings: dict[Sensor, tuple[float, bool]], options: DoctorOptions
) -> list[Check]:
    await _until(lambda: len(readings) == len(Sensor), options.wait_s)
    # Then one more timeout's worth: a reading must keep coming, not have come once.
    await asyncio.sleep(timeout_s)  # the span over which freshness is judged, not a sync
    now = time.monotonic()
    checks = []
    for role in Sensor:
        got = readings.get(role)
        if got is None:
            checks.append(
                Check(
                    "sensors",
                    Verdict.FAIL,
                    f"{ROLE_WORDS[role]}: no reading in {options.wait_s:g} s",
                    "check the sensor's wiring or, for an MQTT sensor, that it publishes on "
                    "its topic with the sensor account (docs/install-raspberry-pi.md, step 3)",
                )
            )
        elif now - got[0] > timeout_s:
            checks.append(
                Check(
                    "sensors",
                    Verdict.FAIL,
                    f"{ROLE_WORDS[role]}: the last reading is {now - got[0]:.1f} s old "
                    f"(stale after {timeout_s:g} s)",
                    "the sensor stopped reporting, or what it reports is old by its own time "
                    "stamps (a stamp that stands still, readings held back on the way): check "
                    "its wiring, power, network and clock",
                )
            )
        else:
            checks.append(
                Check(
                    "sensors",
                    Verdict.OK,
                    f"{ROLE_WORDS[role]}: {_state_words(role, got[1])}, fresh",
                )
            )
    if options.walk and all(c.verdict is Verdict.OK for c in checks):
        checks += await _walk(readings, options)
    return checks


WALK = [
    (Sensor.GRIP_LEFT, True, "hold the left rail now"),
    (Sensor.GRIP_LEFT, False, "let go of the left rail"),
    (Sensor.GRIP_RIGHT, True, "hold the right rail now"),
    (Sensor.GRIP_RIGHT, False, "let go of the right rail"),
    (Sensor.FALL, True, "trigger the fall input now"),
    (Sensor.FALL, False, "clear the fall input"),
]


async def _walk(readings: dict[Sensor, tuple[float, bool]], options: DoctorOptions) -> list[Check]:
    checks = []
    for role, want, ask in WALK:
        options.say(f"walk: {ask}")

        def flipped(role: Sensor = role, want: bool = want) -> bool:
            return readings[role][1] is want

        before = {other: readings[other][1] for other in readings if other is not role}
        seen = await _until(flipped, options.walk_wait_s)
        words = _state_words(role, want)
        if seen:
            checks.append(Check("sensor walk", Verdict.OK, f"{ROLE_WORDS[role]}: {words} seen"))
        else:
            # Another input that followed the touch instead: two inputs swapped in the wiring
            # or the configuration (the left rail's wire on the right grip's line).
            moved = [o for o, was in before.items() if readings[o][1] is not was]
            instead = "".join(
                f"; the {ROLE_WORDS[o]} changed instead (to {_state_words(o, readings[o][1])}): "
                "the two inputs may be swapped"
                for o in moved
            )
            checks.append(
                Check(
                    "sensor walk",
                    Verdict.FAIL,
                    f"{ROLE_WORDS[role]}: {words} not seen in {options.walk_wait_s:g} s" + instead,
                    "the input does not follow the touch: check its wiring, its polarity "
                    "(active = high or low) and that the right line is configured for it"
                    + (
                        "; swap the two inputs' lines (or wires) if the other one followed it"
                        if moved
                        else ""
                    ),
                )
            )
            break
    return checks


async def _until(condition: Callable[[], bool], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while not condition():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)  # readings arrive on the readers' own tasks
    return True


def _client(
    broker: BrokerSettings,
    wait_s: float,
    *,
    username: str | None = None,
    password: str | None = None,
    as_daemon: bool = True,
) -> aiomqtt.Client:
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username if as_daemon else username,
        password=broker.password if as_daemon else password,
        identifier=f"tg-doctor-{uuid.uuid4().hex[:12]}",
        protocol=aiomqtt.ProtocolVersion.V5,
        tls_context=None if broker.tls is None else broker.tls.context(),
        timeout=wait_s,
    )


async def check_broker(broker: BrokerSettings, options: DoctorOptions) -> list[Check]:
    where = f"{broker.host}:{broker.port}"
    account = broker.username or "anonymous"
    logged_in = False
    try:
        async with _client(broker, options.wait_s) as daemon:
            logged_in = True
            checks = [
                Check("broker", Verdict.OK, f"{where} accepts the daemon's login ({account})")
            ]
            checks.append(await _anonymous_probe(broker, options))
            checks += await _acl_probes(daemon, broker, options)
            return checks
    except aiomqtt.MqttCodeError as exc:
        if logged_in:
            return [_dropped(where, account, exc)]
        # The broker answered the connection, and refused it (its CONNACK's reason).
        said = str(exc).lower()
        fix = (
            "the daemon's password (TREADGUARD_MQTT__PASSWORD in /etc/treadguard/environment) "
            "must match its entry in the broker's password file (mosquitto_passwd)"
            if "authori" in said or "password" in said
            else "the broker's log says why (journalctl -u mosquitto)"
        )
        return [Check("broker", Verdict.FAIL, f"{where} refused {account}: {exc}", fix)]
    except aiomqtt.MqttError as exc:
        if logged_in:
            return [_dropped(where, account, exc)]
        # Nothing answered the connection: no broker there, or one not listening on that port.
        return [
            Check(
                "broker",
                Verdict.FAIL,
                f"nothing answers at {where}: {exc}",
                "start the broker (sudo systemctl start mosquitto) and check [mqtt] host and port",
            )
        ]


async def _page(broker: BrokerSettings, options: DoctorOptions) -> list[Check]:
    tablet = (options.tablet_username, options.tablet_password)
    verdicts = await check_page(options.nginx_dir, broker, tablet, options.wait_s)
    if verdicts is None:
        where = options.nginx_dir / PAGE_SITE
        return [Check("page", Verdict.NONE, f"no treadguard site ({where}): no page served here")]
    return [
        Check(
            "page",
            Verdict.OK if v.ok else Verdict.TODO if v.todo else Verdict.FAIL,
            v.detail,
            v.fix,
        )
        for v in verdicts
    ]


ANONYMOUS_FIX = (
    "allow_anonymous false in /etc/mosquitto/conf.d/treadguard.conf, as in "
    "config/mosquitto/treadguard.conf, and an account for every client ([mqtt] username for "
    "the daemon; docs/mqtt-security.md); then sudo systemctl restart mosquitto"
)


async def _anonymous_probe(broker: BrokerSettings, options: DoctorOptions) -> Check:
    """A login without a user name (and without a password): the broker must refuse it."""
    where = f"{broker.host}:{broker.port}"
    try:
        async with _client(broker, options.wait_s, as_daemon=False):
            pass
    except aiomqtt.MqttCodeError as exc:
        return Check(
            "anonymous login", Verdict.OK, f"{where} refuses a client without an account ({exc})"
        )
    except aiomqtt.MqttError as exc:
        return Check(
            "anonymous login",
            Verdict.TODO,
            f"not checked: a login without an account ended without the broker's answer: {exc}",
            "the broker's log says why (journalctl -u mosquitto); then run the doctor again",
        )
    return Check(
        "anonymous login",
        Verdict.FAIL,
        f"{where} accepts a client without an account (no user name, no password): anyone who "
        "reaches the broker may then do what the ACL grants before its first user line, and "
        "without an ACL everything, a treadmill's commands included",
        ANONYMOUS_FIX,
    )


def _dropped(where: str, account: str, exc: Exception) -> Check:
    return Check(
        "broker",
        Verdict.FAIL,
        f"{where} dropped the daemon's connection ({account}): {exc}",
        "the broker's log says why (journalctl -u mosquitto)",
    )


async def _acl_probes(
    daemon: aiomqtt.Client, broker: BrokerSettings, options: DoctorOptions
) -> list[Check]:
    topics = Topics(broker.prefix)
    if broker.username is not None and options.tablet_username is None:
        return [
            Check(
                "broker ACL",
                Verdict.FAIL,
                "not checked: the tablet's account was not given",
                "run again with --tablet-username tablet and its password in "
                "TREADGUARD_TABLET_PASSWORD",
            )
        ]
    tablet_name = options.tablet_username or "anonymous"
    try:
        async with _client(
            broker,
            options.wait_s,
            username=options.tablet_username,
            password=options.tablet_password,
            as_daemon=False,
        ) as tablet:
            checks = []
            probe = f"doctor-{uuid.uuid4().hex[:12]}"
            # The tablet commands, the daemon reads: a heartbeat, the one command that changes
            # nothing (and the daemon is stopped).
            await daemon.subscribe(topics.cmd)
            command = json.dumps({"id": probe, "type": "heartbeat"}).encode()
            got = await _published_and_seen(tablet, daemon, topics.cmd, command, options.wait_s)
            checks.append(
                Check(
                    "broker ACL",
                    Verdict.OK if got else Verdict.FAIL,
                    f"{tablet_name} may command {topics.cmd} and the daemon reads it"
                    if got
                    else f"a command from {tablet_name} on {topics.cmd} did not reach the "
                    "daemon's account",
                    "" if got else _acl_fix(broker),
                )
            )
            # The daemon publishes, the tablet reads: a reply to an id no tablet asked.
            await tablet.subscribe(topics.reply)
            reply = json.dumps({"id": probe, "ok": True, "doctor": True}).encode()
            got = await _published_and_seen(daemon, tablet, topics.reply, reply, options.wait_s)
            checks.append(
                Check(
                    "broker ACL",
                    Verdict.OK if got else Verdict.FAIL,
                    f"the daemon may publish on {topics.reply} and {tablet_name} reads it"
                    if got
                    else f"a reply from the daemon's account on {topics.reply} did not reach "
                    f"{tablet_name}",
                    "" if got else _acl_fix(broker),
                )
            )
            return checks
    except aiomqtt.MqttError as exc:
        return [
            Check(
                "broker ACL",
                Verdict.FAIL,
                f"the broker refused the tablet's login ({tablet_name}): {exc}",
                "check the tablet's password (TREADGUARD_TABLET_PASSWORD) against the broker's "
                "password file",
            )
        ]


def _acl_fix(broker: BrokerSettings) -> str:
    return (
        f"the broker's ACL must grant these topics for the prefix {broker.prefix} "
        "(config/mosquitto/acl, docs/mqtt-security.md); then sudo systemctl restart mosquitto"
    )


async def _published_and_seen(
    sender: aiomqtt.Client,
    reader: aiomqtt.Client,
    topic: str,
    payload: bytes,
    wait_s: float,
) -> bool:
    # A denied publish is acknowledged and dropped by the broker: only its arrival tells.
    await sender.publish(topic, payload, qos=1)
    return await seen(reader, payload, wait_s)


RUN_AS_ROOT = "run the doctor as root (sudo, as docs/install-raspberry-pi.md section 5 does)"
SNIPPET_FIX = (
    "install treadguard's Mosquitto snippet as /etc/mosquitto/conf.d/treadguard.conf (sudo "
    "install -m 0644 /opt/treadguard/config/mosquitto/treadguard.conf /etc/mosquitto/conf.d/; "
    "scripts/install does), then sudo systemctl restart mosquitto"
)


def _not_read(what: str, exc: OSError, fix: str = RUN_AS_ROOT) -> Check:
    name = exc.filename if exc.filename is not None else "?"
    if isinstance(exc, PermissionError):
        return Check(
            what,
            Verdict.TODO,
            f"not checked: {name} cannot be read by the doctor, which runs as {_me()}",
            RUN_AS_ROOT,
        )
    return Check(what, Verdict.TODO, f"not checked: {name}: {exc.strerror or exc}", fix)


def check_broker_files(
    loaded: LoadedConfig, broker: BrokerSettings, options: DoctorOptions
) -> list[Check]:
    """The broker's configuration as installed (the main file and what it includes), the ACL
    it names, and what its process listens on."""
    elsewhere = not_this_board(broker.host)
    if elsewhere is not None:
        # The files and sockets read here are this board's broker's; the daemon's may be
        # another, and a good broker here on the same port would stand in for it.
        return [
            Check(
                name,
                Verdict.TODO,
                f"not checked: [mqtt] host {elsewhere}: the broker the daemon uses is not "
                f"this board's, and {what} are judged where it runs",
                "run the doctor on the broker's machine, or set [mqtt] host = "
                '"127.0.0.1" for this board\'s own broker',
            )
            for name, what in (
                ("broker config", "its configuration and ACL"),
                ("listeners", "its listeners"),
            )
        ]
    try:
        conf = read_mosquitto_conf(options.mosquitto_conf)
    except ConfRefused as exc:
        return [
            Check(
                "broker config",
                Verdict.FAIL,
                str(exc),
                "name the folder exactly, nothing after it (include_dir /etc/mosquitto/conf.d, "
                "as Debian's mosquitto.conf), then sudo systemctl restart mosquitto",
            ),
            *check_listeners(broker, None),
        ]
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            fix = (
                "install Mosquitto (scripts/install does), or name the broker's configuration "
                "with --mosquitto-conf FILE"
            )
        else:  # there, but no file: a pipe, a folder
            fix = (
                "name the broker's configuration file with --mosquitto-conf FILE (Debian's is "
                f"{DEBIAN_MOSQUITTO_CONF})"
            )
        return [_not_read("broker config", exc, fix), *check_listeners(broker, None)]
    named: set[int] = set()  # other Mosquittos named, not named again as relays
    return [
        *(
            Check(
                "broker config",
                Verdict.FAIL,
                problem,
                "retype the line with plain spaces (cat -A FILE marks control characters), "
                "then sudo systemctl restart mosquitto",
            )
            for problem in conf.unusual
        ),
        _judge_conf(conf),
        *_judge_client_ids(conf),
        *_judge_bridges(conf, broker.prefix),
        *_running_conf(broker, options.mosquitto_conf, conf),
        *_other_brokers(broker, named),
        *_relays(broker, options, named),
        *_judge_acl(conf, loaded, broker),
        *check_listeners(broker, conf),
    ]


# (Not http_dir: nginx serves the page on a board, and Mosquitto would serve any file of the
# folder named, a password file put there included, to anyone who reaches the listener.)
# What a board's broker configuration may say: Debian's own mosquitto.conf, treadguard's
# snippet, TLS, logging and the bounds on what the broker holds. A setting outside it is one
# the doctor does not judge, and some change who may publish what past the password file and
# the ACL: a plugin (dynamic security, an auth plugin) with accounts of its own, a bridge
# (connection, topic: one that loops back to this broker turns a topic an account may write
# into the commands), port and bind_address (Mosquitto's default listener, wherever they
# stand), mount_point (topics moved under a prefix), a certificate's name taken as the account
# (use_identity_as_username). Failed closed: such a board is not passed.
KNOWN_SETTINGS = frozenset(
    {
        # Debian's mosquitto.conf
        "pid_file", "persistence", "persistence_location", "persistence_file", "log_dest",
        "include_dir",
        # who may do what, and the listeners
        "allow_anonymous", "password_file", "acl_file", "per_listener_settings",
        "use_username_as_clientid", "listener", "protocol", "socket_domain", "user",
        # TLS
        "certfile", "keyfile", "cafile", "capath", "crlfile", "dhparamfile", "ciphers",
        "ciphers_tls1.3", "tls_version", "require_certificate", "psk_hint", "psk_file",
        # bounds and behaviour
        "max_packet_size", "message_size_limit", "max_queued_messages", "max_queued_bytes",
        "max_inflight_messages", "max_inflight_bytes", "max_keepalive", "max_connections",
        "max_qos", "memory_limit", "queue_qos0_messages", "retain_available",
        "set_tcp_nodelay", "persistent_client_expiration", "autosave_interval",
        "autosave_on_changes", "upgrade_outgoing_qos", "allow_zero_length_clientid",
        "auto_id_prefix", "check_retain_source", "sys_interval", "connection_messages",
        "log_type", "log_timestamp", "log_timestamp_format", "log_facility",
        "websockets_log_level", "websockets_headers_size",
    }
)  # fmt: skip


def _judge_conf(conf: MosquittoConf) -> Check:
    read = ", ".join(str(path) for path, _ in conf.files)
    problems = [f"{path} is empty (0 bytes)" for path in conf.empty_files()]
    for line in conf.lines:
        if line.key not in KNOWN_SETTINGS:
            problems.append(
                f"{line.key} ({line.where}): a setting the doctor does not judge; some "
                "(plugin, a bridge's connection, port, mount_point) let others publish past "
                "the password file and the ACL"
            )
    # Any line, not only the last: Mosquitto puts each security line (acl_file, password_file,
    # allow_anonymous) where the setting points when it reads it, so one read while it was on
    # belongs to a listener, and is out of force if the setting ends off.
    for per_listener in conf.lines:
        if per_listener.key == "per_listener_settings" and per_listener.first_word not in (
            "false",
            "0",
        ):
            problems.append(
                f"per_listener_settings {per_listener.value} ({per_listener.where}): the "
                "accounts and ACL read while it is on are a listener's own, which the doctor "
                "does not judge, and out of force once it is off"
            )
    for listener in conf.listeners():
        if listener.port == 0:
            # Mosquitto 2.0's unix socket listener (listener 0 PATH): a board needs none, and
            # a local program relaying through it is not seen among the broker's TCP clients.
            problems.append(
                f"{listener.line.key} {listener.line.value} ({listener.line.where}): a unix "
                "socket listener, which a board does not need and whose clients the doctor "
                "does not see"
            )
    anonymous = conf.last("allow_anonymous")
    if anonymous is None:
        problems.append("no allow_anonymous false")
    elif anonymous.first_word not in ("false", "0"):
        problems.append(
            f"allow_anonymous {anonymous.value} ({anonymous.where}): clients without an "
            "account are let in"
        )
    if conf.last("password_file") is None:
        problems.append("no password_file: no account can log in, or any name is taken as one")
    if conf.last("acl_file") is None:
        problems.append("no acl_file: every account may read and write every topic")
    if problems:
        return Check(
            "broker config", Verdict.FAIL, f"read {read}: " + "; ".join(problems), SNIPPET_FIX
        )
    settings = ", ".join(
        f"{line.key} {line.value}"
        for line in (conf.last(key) for key in ("allow_anonymous", "password_file", "acl_file"))
        if line is not None
    )
    return Check("broker config", Verdict.OK, f"{read}: {settings}")


def _judge_client_ids(conf: MosquittoConf) -> list[Check]:
    """Every listener binds each client's id to its account (``use_username_as_clientid
    true``, the last such line of the listener deciding). In Mosquitto 2.0.11 it is a setting
    of one listener (src/conf.c: cur_listener), none of the broker's, and a client id is one
    namespace across the listeners: on a listener without it, any account logs in with the
    daemon's client id and the broker drops the daemon's connection (its Will says offline;
    the session ends in an emergency stop). Mosquitto's default listener counts too, when a
    setting outside any listener opens it."""
    listeners = [(f"listener {it.line.value} ({it.line.where})", it) for it in conf.listeners()]
    default = conf.default_listener()
    if default is not None:
        listeners.insert(
            0,
            (
                f"Mosquitto's default listener (port {default.port}), opened by "
                f"'{default.line.key} {default.line.value}' ({default.line.where}), before any "
                "listener line of that file,",
                default,
            ),
        )
    checks = []
    for shown, listener in listeners:
        value = listener.settings.get("use_username_as_clientid")
        # (conf__parse_bool: the first word after the key, split at spaces)
        if (value or "").lstrip(" ").partition(" ")[0] in ("true", "1"):
            continue
        said = (
            "has no use_username_as_clientid true"
            if value is None
            else (f"has use_username_as_clientid {value}")
        )
        checks.append(
            Check(
                "broker config",
                Verdict.FAIL,
                f"{shown} {said}: a client there keeps the client id it sends, and any account "
                "logging in with the daemon's client id drops the daemon's connection (a "
                "client id is one namespace across the listeners)",
                "put the line use_username_as_clientid true under that listener line (a "
                "setting of each listener, as in config/mosquitto/treadguard.conf), then sudo "
                "systemctl restart mosquitto",
            )
        )
    return checks


def _judge_bridges(conf: MosquittoConf, prefix: str) -> list[Check]:
    """A bridge (``connection``) with a ``topic`` line that brings messages in (``in``,
    ``both``, any case): Mosquitto 2.0.11 checks no message a bridge brings in against the ACL,
    so whoever may publish on the far broker commands the belt or speaks for its sensors if
    the topic, its prefixes and its remapping reach the treadmill's. Which topics a line
    brings in is not judged: Mosquitto's reading of the words after the direction (a word
    beginning with # ends the line there, a prefix is put before the pattern) has been
    misread before, and a board needs nothing brought in. ``topic PATTERN [out|in|both ...]``,
    ``out`` by default."""
    checks = []
    bridge: ConfLine | None = None
    for line in conf.lines:
        if line.key == "connection":
            bridge = line
            continue
        if line.key != "topic" or bridge is None:
            continue
        words = line.value.split()
        # Mosquitto reads the direction without regard to case (strcasecmp): IN is in. Any
        # word there but "out" is taken as bringing in (a word it refuses stops the broker).
        direction = words[1].lower() if len(words) > 1 else "out"
        if direction == "out":
            continue
        checks.append(
            Check(
                "broker config",
                Verdict.FAIL,
                f"{line.where} ('topic {line.value}'): the bridge {bridge.value} "
                f"({bridge.where}) brings messages in, and Mosquitto checks no message a "
                "bridge brings in against the ACL: whoever may publish on the far broker could "
                f"command the treadmill or speak for its sensors ({prefix}/)",
                "bridge only out of this broker (topic PATTERN out); then sudo systemctl "
                "restart mosquitto",
            )
        )
    return checks


def _running_conf(broker: BrokerSettings, judged: Path, conf: MosquittoConf) -> list[Check]:
    """Whether the broker listening on [mqtt] port runs the configuration judged: the file
    its command line names (-c, --config-file), from /proc. A broker started with another
    file, or with none (Mosquitto's defaults: no passwords, no ACL), is not judged by reading
    this one. Nothing when its process cannot be seen (the listeners check says so)."""
    _, owners = _port_owners(broker.port)
    if not owners:
        return []
    pids = sorted(set(owners.values()))
    if len(pids) > 1:
        # Which one a client reaches depends on the address it dials: the one not judged
        # may let every account command.
        return [
            Check(
                "broker config",
                Verdict.FAIL,
                f"{len(pids)} processes listen on port {broker.port} ([mqtt] port): "
                + ", ".join(f"{process_name(p)} (pid {p})" for p in pids)
                + "; the doctor judges one configuration, and cannot tell which of them a "
                "client reaches",
                "stop all but the board's broker (sudo ss -ltnp to see them), then run the "
                "doctor again",
            )
        ]
    pid = pids[0]
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return []
    # Mosquitto reads every file named, each in turn: all of them are what it runs.
    named = [
        os.path.join(cwd, os.fsdecode(value))
        for flag, value in itertools.pairwise(argv)
        if flag in (b"-c", b"--config-file")
    ]
    who = f"{process_name(pid)} (pid {pid})"
    if not named:
        return [
            Check(
                "broker config",
                Verdict.FAIL,
                f"{who} listens on port {broker.port} and was started without a configuration "
                "file (no -c): it runs Mosquitto's defaults, not the file judged here",
                "start it as Debian's unit does (sudo systemctl restart mosquitto: "
                f"mosquitto -c {judged})",
            )
        ]
    others = [n for n in named if os.path.realpath(n) != os.path.realpath(judged)]
    if others:
        return [
            Check(
                "broker config",
                Verdict.FAIL,
                f"{who} listens on port {broker.port} and runs {', '.join(named)}, not "
                f"{judged} alone, the file judged here: what the broker lets each account do "
                "was not all read",
                f"start the broker with {judged} alone (sudo systemctl restart mosquitto), or "
                f"run the doctor with --mosquitto-conf {named[-1]} if that one alone is it",
            )
        ]
    return (
        _seen_alike(pid, who, conf, cwd)
        or _changed_since_start(pid, who, conf, cwd)
        or _not_in_force(pid, who)
    )


# What scripts/install last restarted the broker with: each file's sha256 (sha256sum's format),
# written right after the restart.
IN_FORCE_RECORD = Path("/var/lib/treadguard-install/mosquitto-in-force")


def _not_in_force(pid: int, who: str, record: Path | None = None) -> list[Check]:
    """Whether the files the installer last restarted the broker with hold what they held
    then, while the broker has run since that restart (started before the record was written):
    it runs what the record says. A folder swapped for a copy with mv (/etc/mosquitto put back
    from a backup) keeps its files' old change times, which the check above passes; their
    content differs. A broker restarted since by anyone else: the record says nothing of it."""
    record = IN_FORCE_RECORD if record is None else record
    try:
        written = record.stat().st_mtime
        text = read_regular(record).decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return []  # not installed by scripts/install
    except OSError as exc:
        return [_not_read("broker config", exc)]
    started = _process_started(pid)
    if started is None or started > written:
        return []
    differ = []
    for line in text.splitlines():
        digest, _, name = line.partition(" ")
        name = name.removeprefix(" ").removeprefix("*")
        if not name or line.startswith("\\"):
            continue  # sha256sum's escaped names: none of the installer's
        try:
            now = hashlib.sha256(read_regular(Path(name))).hexdigest()
        except OSError:
            now = None
        if now != digest:
            differ.append(name)
    if not differ:
        return []
    when = datetime.fromtimestamp(written).isoformat(sep=" ", timespec="seconds")
    return [
        Check(
            "broker config",
            Verdict.TODO,
            f"not checked: {', '.join(differ)} {'is' if len(differ) == 1 else 'are'} not what "
            f"the installer last restarted {who} with ({record}, {when}), and it has run since "
            "then: it runs that, not the files judged (a folder put back from a copy with mv "
            "keeps its files' old change times)",
            "sudo systemctl restart mosquitto (between sessions), then run the doctor again",
        )
    ]


def _seen_alike(pid: int, who: str, conf: MosquittoConf, cwd: str) -> list[Check]:
    """Whether the broker's process finds the files judged here at their paths: in a mount
    namespace of its own (a systemd drop-in's BindPaths, a container), or under another root
    (chroot, RootDirectory=), another file can be there. Compared through /proc/PID/root,
    file by file and folder listing by folder, always."""
    try:
        os.stat(f"/proc/{pid}/root")
    except OSError:
        return [
            Check(
                "broker config",
                Verdict.TODO,
                f"not checked: whether {who} finds the files judged here at their paths (the "
                f"doctor, running as {_me()}, cannot see its root)",
                RUN_AS_ROOT,
            )
        ]
    # Compared however it runs: a chroot shares the doctor's mount namespace, not its root.
    differ = []
    for path in _broker_paths(conf, cwd):
        try:
            # Its links followed in its own root: an absolute one met under /proc/PID/root
            # would be followed from the doctor's.
            there = path_in_root(pid, path)
            mine, seen = path.stat(), there.stat()
            same = (mine.st_dev, mine.st_ino) == (seen.st_dev, seen.st_ino)
            if same and path.is_dir():
                same = sorted(os.listdir(path)) == sorted(os.listdir(there))
        except (OSError, RuntimeError):
            same = False
        if not same:
            differ.append(str(path))
    if not differ:
        return []
    return [
        Check(
            "broker config",
            Verdict.FAIL,
            f"{who} runs in a mount namespace of its own and finds other files than the doctor "
            f"at {', '.join(differ)}: what it lets each account do is not what was judged",
            "remove what binds or mounts other files over the broker's (systemctl cat "
            "mosquitto: BindPaths, BindReadOnlyPaths, TemporaryFileSystem), then sudo "
            "systemctl restart mosquitto",
        )
    ]


def _mosquittos() -> list[int]:
    """Every Mosquitto process of this board, by its name (comm) or its executable."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        names = []
        with contextlib.suppress(OSError):
            names.append((proc / "comm").read_text().strip())
        with contextlib.suppress(OSError):
            names.append(os.path.basename(os.readlink(proc / "exe")).removesuffix(" (deleted)"))
        if "mosquitto" in names:
            found.append(int(proc.name))
    return sorted(found)


def _is_here(host: str) -> bool:
    """Whether ``host`` is, or may be, this board: only an address shown to be another
    machine's (one no socket here can be bound to), or a multicast one, is not (a name that
    does not resolve may, by the time a bridge dials it)."""
    why = not_this_board(host)
    return why is None or not why.endswith(("not an address of this board", "broadcast address"))


def _bridges_here(pid: int, judged_ports: set[int]) -> str | None:
    """Why another Mosquitto may bring messages into this board's broker, in words: a bridge
    (connection) of its configuration whose address is this board, at a port that may lead
    to the board's broker (_leads_in: one of ``judged_ports``, a relay's), or a configuration
    the doctor cannot read as it runs it (unreadable, or changed since it started). Its files
    are read as it sees them, through its own root (a container, a mount namespace of its
    own). None for one that runs files with no such bridge, or Mosquitto's defaults (no -c:
    no bridge at all)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return f"its command line cannot be read by the doctor, which runs as {_me()}"
    named = [
        os.path.join(cwd, os.fsdecode(value))
        for flag, value in itertools.pairwise(argv)
        if flag in (b"-c", b"--config-file")
    ]
    started = _process_started(pid)
    for name in named:
        # Read as it sees them: through its own root, its links followed there (a container,
        # a mount namespace of its own).
        links: list[Path] = []

        def there(path: Path, links: list[Path] = links) -> Path:
            return path_in_root(pid, os.path.join(cwd, path), links=links)

        try:
            conf = read_mosquitto_conf(there(Path(name)), seen_from=there)
            # Where a bridge may stand: its configuration's files and include_dir folders (its
            # ACL and passwords, changed since, bring nothing into the board's broker).
            read = [p for p, _ in conf.files]
            read += [there(Path(line.raw)) for line in conf.lines if line.key == "include_dir"]
            when = {str(p): p.stat().st_ctime for p in read}
            when |= {str(link): link.lstat().st_ctime for link in links}
        except (OSError, RuntimeError, ConfRefused) as exc:
            return f"its configuration {name} cannot be read by the doctor as it runs it ({exc})"
        changed = [
            p for p, at in when.items() if started is None or changed_after_start(at, started)
        ]
        if changed:
            return (
                f"what it runs is not known from {name}: {', '.join(changed)} changed since it "
                "started"
            )
        bridge: ConfLine | None = None
        for line in conf.lines:
            if line.key == "connection":
                bridge = line
            elif bridge is not None and line.key in ("address", "addresses"):
                for target in line.value.split():
                    host, port = bridge_target(target)
                    if _is_here(host) and _leads_in(port, judged_ports):
                        return (
                            f"its bridge {bridge.value} ({bridge.where}) connects to this "
                            f"board, at {target} ({line.where})"
                        )
    return None


def bridge_target(word: str) -> tuple[str, int]:
    """A bridge's ``address`` word as host and port: ``HOST:PORT``, else the host alone at
    Mosquitto's default port (1883); an IPv6 literal's brackets go."""
    host, _, port = word.rpartition(":")
    if not (port.isascii() and port.isdigit()):  # "²" is a digit to Python, not to atoi
        host, port = word, "1883"  # Mosquitto's default
    return host.strip("[]"), int(port)


def _leads_in(port: int, judged_ports: set[int]) -> bool:
    """Whether a connection to ``port`` of this board may reach the board's broker: one of its
    own ports, or one where anything but a Mosquitto listens, or nothing yet (a relay, the
    board's broker once it listens there). A port of another Mosquitto is that one's."""
    if port in judged_ports:
        return True
    there = {s.inode for s in listening() if s.port == port}
    owners = socket_owners(there) if there else {}
    return not owners or any(process_name(p) != "mosquitto" for p in owners.values())


OTHER_BROKER_FIX = (
    "a board runs one broker, Debian's mosquitto with treadguard's snippet: stop the other "
    "and keep it from starting again (sudo systemctl disable --now UNIT, systemctl status PID "
    "names its unit; a container: stop it), or remove its bridge to this board; then run the "
    "doctor again"
)


def _judged_broker(broker: BrokerSettings) -> tuple[set[int], set[int]]:
    """The processes listening on [mqtt] port (the board's broker: one, else a failure of its
    own) and every port they listen on (its TLS and WebSockets listeners too)."""
    _, owners = _port_owners(broker.port)
    judged = set(owners.values())
    ports = {broker.port}
    for one in judged:
        with contextlib.suppress(OSError):
            inodes = process_sockets(one)
            ports |= {s.port for s in listening(Path(f"/proc/{one}/net")) if s.inode in inodes}
    return judged, ports


def _other_brokers(broker: BrokerSettings, named: set[int] | None = None) -> list[Check]:
    """Every Mosquitto of this board but the one on [mqtt] port, judged for a way into it: a
    bridge from another broker brings in whatever that broker's own clients publish, under
    the bridge's account (the tablet's, say), and the other broker's accounts and ACL (or
    none: anonymous clients) are not the board's. Nothing to say while the broker on the
    port cannot be seen (the listeners check says so). Each one named is added to ``named``."""
    judged, ports = _judged_broker(broker)
    if not judged:
        return []
    checks = []
    for pid in _mosquittos():
        if pid in judged:
            continue
        who = f"{process_name(pid)} (pid {pid})"
        why = _bridges_here(pid, ports)
        if why is None:
            continue
        if named is not None:
            named.add(pid)
        checks.append(
            Check(
                "broker config",
                Verdict.TODO,
                f"not checked: {who} is another Mosquitto on this board besides the broker on "
                f"port {broker.port} ([mqtt] port), and {why}: what its own clients publish "
                "may reach the treadmill under its bridge's account, by its accounts and ACL, "
                "not the board's",
                OTHER_BROKER_FIX,
            )
        )
    return checks


def _relays(broker: BrokerSettings, options: DoctorOptions, named: set[int]) -> list[Check]:
    """The board's broker's clients on this board that relay for others (doctor_relays): any
    program, whatever its name, holding a connection to one of the broker's ports and
    listening, or connected beyond the board. Not judged here: the doctor itself, the broker,
    another Mosquitto already named (``named``), treadguard's own unit, and the board's own
    nginx (its routes are the network check's). Nothing to say while the broker cannot be
    seen (the listeners check says so)."""
    judged, ports = _judged_broker(broker)
    exempt = {os.getpid(), *judged, *named}
    for master in _nginx_masters():
        if _nginx_not_board(master, options.nginx_dir) is None:
            exempt |= {master.pid, *_children(master.pid)}
    checks = []
    for pid in sorted(judged):
        here = {a.ip for a in board_addresses(Path(f"/proc/{pid}/net"))}
        for found in relays(pid, ports, exempt, here):
            checks.append(
                Check("broker config", Verdict.TODO, f"not checked: {found.said}", found.fix)
            )
    return checks


def _coarse_tick() -> float:
    """One tick of the kernel's coarse clock, which stamps a file's change time (up to a tick
    behind the true time); 10 ms (HZ 100, the coarsest) if it cannot be asked."""
    try:
        tick = time.clock_getres(CLOCK_REALTIME_COARSE)
    except OSError:
        return 0.01
    return tick if 0 < tick <= 0.01 else 0.01


CLOCK_REALTIME_COARSE = 5  # Linux's clock id (time has no name for it)
COARSE_TICK_S = _coarse_tick()


def changed_after_start(when: float, started: float) -> bool:
    """Whether a change stamped ``when`` (a change time) may have come after a process that
    started at ``started`` (_process_started: never late, a clock tick early at most) read
    its files. A change time is stamped from the coarse clock, up to COARSE_TICK_S behind the
    true time: a change stamped later than a tick before the computed start may have come
    after the true start, and no later time is known by which the process had read its files
    (Mosquitto 2.0.11 reads them before it listens, but when it began to listen is recorded
    nowhere). So nothing after the start is let through: a file written in the last tick
    before the process started is taken as changed too (restarting it again settles it)."""
    return when > started - COARSE_TICK_S


def _broker_paths(conf: MosquittoConf, cwd: str) -> list[Path]:
    """The files and folders a broker's configuration was read from: its files, the folders
    of its include_dir lines, its password file and ACL (a relative one is the broker's
    working folder's)."""
    keys = ("include_dir", "acl_file", "password_file")
    paths = [path for path, _ in conf.files]
    paths += [
        # include_dir takes the rest of its line whole, blanks too; acl_file and password_file
        # are trimmed.
        Path(line.raw if line.key == "include_dir" else line.value)
        for line in conf.lines
        if line.key in keys
    ]
    return [Path(cwd, p) for p in paths]


def links_on_the_way(path: Path, budget: int = 40) -> list[Path]:
    """Every symbolic link met while resolving ``path``: in the folders above it, each link
    of a chain, and in what a link points to (at most ``budget``; RuntimeError past it, a loop
    of links)."""
    found: list[Path] = []
    pending = list(Path(os.path.abspath(path)).parts)
    here = Path(pending.pop(0))
    while pending:
        part = pending.pop(0)
        step = here / part
        if step.is_symlink():
            found.append(step)
            if len(found) > budget:
                raise RuntimeError(f"more than {budget} links on the way to {path}")
            target = Path(os.readlink(step))
            if target.is_absolute():
                here = Path(target.anchor)
            pending[:0] = [p for p in target.parts if p != target.anchor]
            continue
        here = here.parent if part == ".." else here if part == "." else step
    return found


def _quiet_folders(read: list[Path]) -> list[Path]:
    """The folders holding files the broker read that hold nothing else (the installer's
    /etc/mosquitto/treadguard: its password file and ACL). A folder's change time moves when a
    name in it is added, removed or renamed, and when it is itself renamed: for such a folder
    each of those is a change to what the broker read, or the folder swapped for another with
    mv (a backup put back), never another program's file."""
    names = {os.path.abspath(path) for path in read}
    found = []
    for folder in sorted({os.path.dirname(name) for name in names}):
        try:
            inside = os.listdir(folder)
        except OSError:
            continue
        if inside and all(os.path.join(folder, name) in names for name in inside):
            found.append(Path(folder))
    return found


def _process_started(pid: int) -> float | None:
    """When process ``pid`` started, in unix seconds, from /proc, at most a clock tick (10 ms)
    early; None if it cannot be read. The kernel counts it in ticks since boot on the boot
    clock: now, less the time since then."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        # Field 22, counted after the command's name, which may hold spaces and parentheses.
        ticks = float(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None
    # The wall clock read first: the time between the two readings makes the start come out
    # earlier, never later.
    now = time.time()
    since = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return now - since


def _changed_since_start(pid: int, who: str, conf: MosquittoConf, cwd: str) -> list[Check]:
    """Whether a file or folder the configuration was read from changed after the broker
    started: then it may run what is no longer there (a bridge's file removed since, a listener
    edited out) or not yet what is, and the files judged are not known to be what it runs. The
    change time (ctime) is judged, which no tool sets back, of each file and of the link that
    names it; a folder's changes with the files added to it, removed or renamed."""
    # The password file and the ACL too: a reload re-reads them, but whether one came after
    # the last change cannot be told, and one put in force and then changed back is not what
    # the files say.
    changed = _changed_paths(pid, _broker_paths(conf, cwd))
    if not changed:
        return []
    return [
        Check(
            "broker config",
            Verdict.TODO,
            f"not checked: {who} started before {', '.join(changed)} last changed, so what it "
            "runs may not be what was judged",
            "sudo systemctl restart mosquitto, then run the doctor again",
        )
    ]


def _changed_paths(pid: int, read: list[Path]) -> list[str]:
    """Which of the files and folders ``read`` (and the folders holding only them) changed
    after process ``pid`` started, in words; none if its start cannot be read."""
    started = _process_started(pid)
    if started is None:
        return []
    changed = []
    for path in read + _quiet_folders(read):
        try:
            # The file and every link met on the way to it (a folder link re-pointed and
            # back). Not the folders above it, but those holding nothing else: a folder's
            # change time moves with every file added to it.
            when = max(
                [path.stat().st_ctime] + [link.lstat().st_ctime for link in links_on_the_way(path)]
            )
        except (OSError, RuntimeError):  # gone, or a loop of links
            changed.append(f"{path} (gone)")
            continue
        if changed_after_start(when, started):
            changed.append(str(path))
    return changed


def _guarded(loaded: LoadedConfig, broker: BrokerSettings) -> list[Guarded]:
    """The topics only some accounts may write, for this treadmill's prefix."""
    topics = Topics(broker.prefix)
    daemon = broker.username
    queries = query_broker_settings(loaded).username
    sensors = f"sensors-{loaded.config.treadmill.id}"
    daemon_words = f"the daemon's account ({daemon})" if daemon else "the daemon's account"
    queries_words = f"the query account ({queries})" if queries else "the query account"

    def is_daemon(account: str) -> bool:
        return account == daemon

    def is_queries(account: str) -> bool:
        return account == queries

    return [
        Guarded(
            topics.cmd,
            lambda a: a == "tablet" or a.startswith("tablet-"),
            "the tablet accounts (tablet, tablet-*)",
        ),
        *(
            Guarded(topic, is_daemon, daemon_words)
            for topic in (topics.reply, topics.state, topics.events, topics.availability)
        ),
        Guarded(f"{broker.prefix}/query/+/reply", is_queries, queries_words),
        # This treadmill's sensor accounts only: another treadmill's could say "held" for a
        # user here who has let go (sensors-tm-01, and a second device's sensors-tm-01@NAME:
        # no treadmill's id holds an "@", where sensors-tm-01-b may be treadmill tm-01-b's).
        Guarded(
            topics.sensor("#"),
            lambda a: a == sensors or a.startswith(f"{sensors}@"),
            f"this treadmill's sensor accounts ({sensors}, {sensors}@*)",
        ),
    ]


def _unusual_checks(path: Path, data: bytes) -> list[Check]:
    return [
        Check(
            "ACL file",
            Verdict.FAIL,
            problem,
            "retype the line with plain spaces (an editor that shows control characters: "
            f"cat -A {path} marks them), then sudo systemctl restart mosquitto",
        )
        for problem in unusual_characters(path, file_lines(data))
    ]


def _judge_acl(conf: MosquittoConf, loaded: LoadedConfig, broker: BrokerSettings) -> list[Check]:
    named = conf.last("acl_file")
    if named is None:
        return []  # the broker config check says so
    path = Path(named.value)
    try:
        data = read_regular(path)
        lines = parse_acl(path, data)
    except FileNotFoundError:
        return [
            Check(
                "ACL file",
                Verdict.FAIL,
                f"{path} ({named.where}) does not exist: Mosquitto does not start without it",
                f"install config/mosquitto/acl as {path} (scripts/install does), then sudo "
                "systemctl restart mosquitto",
            )
        ]
    except OSError as exc:
        return [_not_read("ACL file", exc)]
    except AclSyntaxError as exc:
        return [
            *_unusual_checks(path, data),
            Check(
                "ACL file",
                Verdict.FAIL,
                f"{exc}: Mosquitto does not start with it",
                "correct the line (config/mosquitto/acl shows the shipped ACL), then sudo "
                "systemctl restart mosquitto",
            ),
        ]
    guarded = _guarded(loaded, broker)
    found = breaches(lines, guarded)
    checks = _unusual_checks(path, data)
    if not found and not checks:
        return [
            Check(
                "ACL file",
                Verdict.OK,
                f"{path}: only {guarded[0].who} may write {guarded[0].topic}, only "
                f"{guarded[1].who} the daemon's topics, only {guarded[5].who} the query "
                f"replies, only {guarded[6].who} the sensor readings",
            )
        ]
    for breach in found:
        owner = breach.line.owner
        plain = [
            f"{topic} (only {who} may)"
            for topic, who, why in zip(breach.topics, breach.who, breach.why, strict=True)
            if not why
        ]
        said = [f"{owner_words(owner)} may write {'; '.join(plain)}"] if plain else []
        said += [
            f"{why} (only {who} may)"
            for who, why in zip(breach.who, breach.why, strict=True)
            if why
        ]
        checks.append(
            Check(
                "ACL file",
                Verdict.FAIL,
                f"{breach.line.where}: {'; '.join(said)}",
                f"delete the line from {breach.line.file}, or narrow its topic to what that "
                "account needs (config/mosquitto/acl has each account's block); then sudo "
                "systemctl restart mosquitto",
            )
        )
    return checks


def not_this_board(host: str) -> str | None:
    """Why ``host`` ([mqtt] host) may not be this board, or None: every address it resolves to
    is one of the board's own, one a socket can be bound to (loopback included). A name that
    does not resolve, or a kernel that binds any address (ip_nonlocal_bind), cannot be told."""
    for knob in ("ipv4/ip_nonlocal_bind", "ipv6/ip_nonlocal_bind"):
        with contextlib.suppress(OSError):
            if Path(f"/proc/sys/net/{knob}").read_text(encoding="ascii").strip() != "0":
                return f"{host!r} cannot be told from another machine's: {knob} is on"
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        return f"{host!r} does not resolve ({exc})"
    for family, kind, proto, _, address in found:
        ip = ipaddress.ip_address(str(address[0]).split("%")[0])
        if ip.is_multicast or str(ip) == "255.255.255.255":
            # A socket binds these (UDP), but no broker is reached at one.
            return f"{host!r} is {address[0]}, a multicast or broadcast address"
        try:
            with socket.socket(family, kind, proto) as probe:
                probe.bind((address[0], 0, *address[2:]))
        except OSError:
            return f"{host!r} is {address[0]}, not an address of this board"
    return None


def _port_owners(port: int) -> tuple[bool, dict[int, int]]:
    """Whether anything on this board listens on ``port``, and the processes holding those
    sockets that the doctor can see (socket inode -> pid): the broker's, for [mqtt] port."""
    ours = [s for s in listening() if s.port == port]
    return bool(ours), socket_owners({s.inode for s in ours}) if ours else {}


def check_listeners(broker: BrokerSettings, conf: MosquittoConf | None) -> list[Check]:
    """What the broker's process listens on, from the kernel's socket tables: only loopback,
    but for TLS listeners. The process is the one listening on the daemon's port."""
    heard, owners = _port_owners(broker.port)
    if not heard:
        return [
            Check(
                "listeners",
                Verdict.TODO,
                f"not checked: nothing on this board listens on port {broker.port} ([mqtt] port)",
                "start the broker (sudo systemctl start mosquitto); a broker on another "
                "machine: check there that only its TLS listeners are open to the network "
                "(ss -ltnp)",
            )
        ]
    if not owners:
        return [
            Check(
                "listeners",
                Verdict.TODO,
                f"not checked: the process listening on port {broker.port} cannot be seen by "
                f"the doctor, which runs as {_me()}",
                RUN_AS_ROOT,
            )
        ]
    pid = min(owners.values())
    name = process_name(pid)
    try:
        inodes = process_sockets(pid)
    except OSError as exc:
        return [_not_read("listeners", exc)]
    sockets = [s for s in listening(Path(f"/proc/{pid}/net")) if s.inode in inodes]
    listeners = conf.listeners() if conf else []
    # Each socket judged by the listener lines that bind it: the same port, and its own
    # address (or every address, for a listener without one). Two listeners on one port are
    # two sockets, one of them perhaps without TLS.
    open_sockets: list[tuple[Socket, list[Listener]]] = []  # not loopback, not TLS
    tls: list[str] = []
    local: list[str] = []
    for sock in sorted(sockets, key=lambda s: (s.port, s.address)):
        binding = [it for it in listeners if it.port == sock.port and it.binds(sock.address)]
        if sock.loopback:
            local.append(sock.shown)
        elif binding and all(it.tls for it in binding):
            tls.append(sock.shown)
        else:
            open_sockets.append((sock, binding))
    who = f"{name} (pid {pid})"
    if not open_sockets:
        said = f"{who} listens on loopback only: {', '.join(local)}"
        if tls:
            said += f"; with TLS on {', '.join(tls)}"
        return [Check("listeners", Verdict.OK, said)]
    # One failure for each listener line (its sockets on IPv4 and IPv6 together).
    grouped: dict[tuple[int, str], tuple[list[str], Listener | None]] = {}
    for sock, binding in open_sockets:
        listener = binding[0] if binding else None
        key = (sock.port, listener.line.where if listener is not None else "")
        grouped.setdefault(key, ([], listener))[0].append(sock.shown)
    checks = []
    for (port, _), (shown, listener) in grouped.items():
        where = (
            f" ({listener.line.where})"
            if listener is not None
            else " (no listener line of the configuration binds it)"
        )
        if listener is not None and listener.settings.get("protocol") == "websockets":
            fix = (
                f"socket_domain ipv4 under the line listener {port} 127.0.0.1, as in "
                "config/mosquitto/treadguard.conf (without it Mosquitto 2.0.11 listens on "
                "every address); then sudo systemctl restart mosquitto"
            )
        else:
            fix = (
                f"bind it to loopback (listener {port} 127.0.0.1), or give it TLS (certfile "
                "and keyfile, as the 8883 listener of config/mosquitto/treadguard.conf); then "
                "sudo systemctl restart mosquitto"
            )
        checks.append(
            Check(
                "listeners",
                Verdict.FAIL,
                f"{who} listens on {', '.join(shown)}{where} without TLS: open to the network, "
                "where anyone reaches the broker and every password crosses in the clear",
                fix,
            )
        )
    return checks


PROBE_FIX = (
    "serve MQTT to the network only over TLS: the tablet page's wss through nginx on 443 "
    "(config/nginx/treadguard.conf), other devices Mosquitto's TLS listener; bind plain "
    "listeners to 127.0.0.1, remove the relay, or the proxy's plain-http location passing to "
    "the broker (nginx's port 80 only redirects to https)"
)


NGINX_ELSEWHERE = "not the board's broker"


def _passed_elsewhere(nginx: Path, broker_port: int | None) -> list[str]:
    """nginx's proxy_pass lines that do not lead to the board's broker, in words: the board's
    broker is the one process listening on [mqtt] port (``broker_port``; None: none judged
    here), and a proxy_pass must name one of its own sockets by a loopback address. Any other
    target (a second broker's WebSockets listener, a bridge into the board's, a relay, a name)
    answers by accounts and rules the doctor has not judged."""
    passes = nginx_proxy_targets(nginx)
    if not passes:
        return []
    judged: set[tuple[str, int]] = set()
    judged_pid: int | None = None
    if broker_port is not None:
        _, owners = _port_owners(broker_port)
        if len(set(owners.values())) == 1:
            judged_pid = next(iter(owners.values()))
            with contextlib.suppress(OSError):
                inodes = process_sockets(judged_pid)
                judged = {
                    (s.address, s.port)
                    for s in listening(Path(f"/proc/{judged_pid}/net"))
                    if s.inode in inodes
                }
    board = "the board's broker" + (
        f", {process_name(judged_pid)} (pid {judged_pid}) on port {broker_port}"
        if judged_pid is not None
        else " (none judged on this board)"
    )
    said = []
    for shown, host, port in passes:
        if port is None:
            said.append(f"{shown} passes requests on to {host}, {NGINX_ELSEWHERE}: not judged")
            continue
        ip = ipaddress.ip_address(host)

        def binds(address: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ip) -> bool:
            # Of the target's own family: a socket on [::] may be IPv6-only (Mosquitto makes
            # it so), leaving 127.0.0.1 at that port to any other program.
            bound = ipaddress.ip_address(address)
            return bound.version == ip.version and (bound.is_unspecified or bound == ip)

        if ip.is_loopback and any(p == port and binds(a) for a, p in judged):
            continue
        there = [s for s in listening() if s.port == port and binds(s.address)]
        owners_there = socket_owners({s.inode for s in there}) if there else {}
        holders = sorted({f"{process_name(p)} (pid {p})" for p in owners_there.values()})
        holder = (
            f"where {', '.join(holders)} listens"
            if holders
            else ("where nothing the doctor can see listens" if there else "where nothing listens")
        )
        said.append(
            f"{shown} passes requests on to {host_port(host, port)}, {holder}, "
            f"{NGINX_ELSEWHERE} ({board}): what answers there is not judged"
        )
    return said


LOCALNET_FIX = (
    "sudo sysctl -w net.ipv4.conf.all.route_localnet=0 (and each interface named: "
    "net.ipv4.conf.IFACE.route_localnet=0), remove what sets it (grep -r route_localnet "
    "/etc/sysctl.conf /etc/sysctl.d; a container runtime, a port-forwarding tool), and any "
    "forward to 127.0.0.1 (sudo iptables -t nat -S; sudo nft list ruleset); a broker for the "
    "network listens with TLS (Mosquitto's 8883 listener)"
)


def route_localnet(conf: Path = Path("/proc/sys/net/ipv4/conf")) -> list[str] | None:
    """The interfaces (and "all", "default") of this network namespace whose route_localnet
    is on, the kernel then routing packets from the network to 127.0.0.0/8 (what a
    firewall's DNAT to 127.0.0.1 needs); None if that cannot be read."""
    try:
        entries = sorted(conf.iterdir())
    except OSError:
        return None
    on = []
    for entry in entries:
        try:
            value = (entry / "route_localnet").read_text(encoding="ascii").strip()
        except FileNotFoundError:
            continue  # an interface gone since it was listed
        except (OSError, UnicodeError):
            return None
        if value != "0":
            on.append(entry.name)
    return on


def check_route_localnet(conf: Path = Path("/proc/sys/net/ipv4/conf")) -> list[Check]:
    """Whether the kernel may carry the network's connections to a listener on loopback (the
    broker's): route_localnet on anywhere leaves the network check TODO, for a forward to
    127.0.0.1 (a DNAT rule: firewalld's forward-port, a container's published port, the
    well-known recipe that exposes a loopback-only service) is no socket the probe can see,
    and the firewall's rules are not read."""
    on = route_localnet(conf)
    if on == []:
        return []
    said = (
        "route_localnet cannot be read (/proc/sys/net/ipv4/conf/*/route_localnet)"
        if on is None
        else f"route_localnet is on for {', '.join(on)} (/proc/sys/net/ipv4/conf/"
        f"{on[0]}/route_localnet)"
    )
    return [
        Check(
            "network MQTT",
            Verdict.TODO,
            f"not checked: {said}: the kernel then carries connections from the network to "
            "127.0.0.1, so a firewall rule forwarding a port there (DNAT) makes a listener on "
            "loopback, the broker's plain one included, reachable from the network in the "
            "clear; such a rule is no socket the probe can ask",
            LOCALNET_FIX,
        )
    ]


async def check_network(
    wait_s: float,
    net: Path = Path("/proc/net"),
    nginx: Path = NGINX_DIR,
    broker_port: int | None = None,
) -> list[Check]:
    """Every TCP socket of the board listening beyond loopback, whichever process holds it,
    asked for MQTT in the clear through the board's own address (network_probe), over
    WebSockets at /mqtt, / and the paths of nginx's locations (under ``nginx``); where nginx
    passes requests on: only to the board's broker, the one on ``broker_port``; and whether
    the kernel may forward the network's connections to loopback (route_localnet)."""
    checks = await _check_sockets(wait_s, net, nginx, broker_port)
    if not board_addresses(net):
        return checks  # nothing on the board is reachable from a network
    localnet = check_route_localnet()
    if localnet:
        # Not shown closed: a forward to a loopback listener is not asked.
        return [c for c in checks if c.verdict is not Verdict.OK] + localnet
    return checks


async def _check_sockets(
    wait_s: float, net: Path, nginx: Path, broker_port: int | None
) -> list[Check]:
    sockets = [s for s in listening(net) if not s.loopback]
    board = board_addresses(net)
    if not board:
        return [
            Check(
                "network MQTT",
                Verdict.OK,
                "this board has no address but loopback: nothing on it is reachable from a network",
            )
        ]
    if not sockets:
        return [
            Check(
                "network MQTT",
                Verdict.OK,
                f"nothing listens beyond loopback (addresses {', '.join(a.ip for a in board)})",
            )
        ]
    owners = socket_owners({s.inode for s in sockets})
    timeout_s = min(wait_s, 3.0)
    paths = WEBSOCKET_PATHS + tuple(nginx_paths(nginx))
    probes = [(sock, address) for sock in sockets for address in targets(sock.address, board)]
    answers = await asyncio.gather(
        *(mqtt_answers(address, sock.port, timeout_s, paths) for sock, address in probes)
    )
    checks = []
    asked: list[str] = []
    reached: set[Socket] = set()
    tried: dict[Socket, list[str]] = {}
    for (sock, address), probe in zip(probes, answers, strict=True):
        shown = address.shown(sock.port)
        tried.setdefault(sock, []).append(shown)
        if probe.reached:
            reached.add(sock)
        if probe.how is None:
            if probe.reached:
                asked.append(shown)
            continue
        checks.append(
            Check(
                "network MQTT",
                Verdict.FAIL,
                f"{_holder(owners, sock)} listens on {sock.shown}: from the network, at {shown}, "
                f"{probe.how}: MQTT without TLS, every password in the clear",
                PROBE_FIX,
            )
        )
    # A socket no connection reached, still listening: not shown closed to MQTT. (One that is
    # gone since was some program's passing listener: nothing to ask any more.)
    still = {s.inode for s in listening(net)}
    for sock, where in tried.items():
        if sock in reached or sock.inode not in still:
            continue
        checks.append(
            Check(
                "network MQTT",
                Verdict.TODO,
                f"not checked: {_holder(owners, sock)} listens on {sock.shown}, but no "
                f"connection to it could be made at {', '.join(where)} (the board's own "
                "address): whether MQTT answers there in the clear is not known",
                "ask it from another machine on that network (mosquitto_sub -h ADDRESS -p "
                "PORT -t x, and for WebSockets curl with an Upgrade: websocket header); a "
                "firewall rule that drops the board's own connections: let them through",
            )
        )
    if checks:
        return checks
    said = ", ".join(dict.fromkeys(asked)) or "none reachable"
    unasked = nginx_unloaded(nginx) + nginx_unasked(nginx) + _passed_elsewhere(nginx, broker_port)
    if unasked:
        # Not asked is not shown closed: a location there may pass MQTT on in the clear.
        fix = (
            "ask those from another machine on the network (curl with an Upgrade: "
            "websocket header at each path and name, over plain http); or keep nginx's "
            "plain-http server to the shipped redirect (config/nginx/treadguard.conf)"
        )
        if any(NGINX_ELSEWHERE in said_one for said_one in unasked):
            fix = (
                "pass the page's /mqtt on only to the board's broker, its WebSockets listener "
                "on 127.0.0.1 (proxy_pass http://127.0.0.1:9001, config/nginx/treadguard.conf), "
                "stop what listens at the other port, then sudo nginx -t && sudo systemctl "
                f"reload nginx; {fix}"
            )
        if any(NGINX_NOT_ITS in said_one for said_one in unasked):
            fix = (
                "stop the nginx that does not run the board's /etc/nginx (sudo ss -ltnp shows "
                "it; a container: stop it, or publish none of its ports), or start the board's "
                f"as Debian's unit does (sudo systemctl restart nginx); {fix}"
            )
        if any(NGINX_UNREADABLE in said_one for said_one in unasked):
            fix = (
                "sudo nginx -t names what nginx cannot read: correct that file, then sudo "
                f"systemctl reload nginx; {fix}"
            )
        return [
            Check(
                "network MQTT",
                Verdict.TODO,
                f"not all checked: no MQTT in the clear from the network at {said}, but "
                + "; ".join(unasked),
                fix,
            )
        ]
    return [
        Check(
            "network MQTT",
            Verdict.OK,
            f"no MQTT in the clear from the network (plain or WebSockets) at {said}",
        )
    ]


NGINX_NOT_ITS = "the paths asked are not its"
# What a -g may say without the doctor losing track of what nginx serves (Debian's unit:
# -g 'daemon on; master_process on;').
_NGINX_GLOBALS = frozenset(
    {"daemon", "master_process", "pid", "error_log", "worker_processes", "user", "pcre_jit"}
)


@dataclass(frozen=True)
class NginxMaster:
    """An nginx process that loads a configuration (a master, or one running alone with
    master_process off): its pid, the configuration file as it names it (in its own root and
    mount namespace), and what its -g adds that the doctor does not account for."""

    pid: int
    conf: str
    added: str = ""
    # Why its configuration file cannot be told (its executable unread, no nginx's build).
    unknown: str = ""


def _is_nginx(proc: Path) -> bool:
    """Whether a process is nginx: by its name (comm), its executable or its title."""
    with contextlib.suppress(OSError):
        if (proc / "comm").read_text().strip() == "nginx":
            return True
    with contextlib.suppress(OSError):
        if os.path.basename(os.readlink(proc / "exe")).removesuffix(" (deleted)") == "nginx":
            return True
    with contextlib.suppress(OSError):
        return (proc / "cmdline").read_bytes().startswith(b"nginx:")
    return False


def _parent(proc: Path) -> int | None:
    try:
        stat = (proc / "stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _nginx_options(words: list[str], titled: bool) -> tuple[str | None, str | None, str]:
    """nginx's prefix (-p), configuration file (-c) and -g directives from its command line,
    as its ngx_get_options reads them (flags may be joined: -qc FILE; a value glued on:
    -cFILE), None for a prefix or file not given (the build's own, nginx_build). From a
    master's title the words were joined with blanks: a -g runs to the next flag, and a title
    that cannot be read back one way only (a word that is no flag nor a flag's value, a -c or
    -p given twice: a path holding a blank, "-c '/tmp/x -c /etc/nginx/nginx.conf'") raises
    ValueError."""
    prefix: str | None = None
    conf: str | None = None
    added: list[str] = []
    given: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if titled and not word.startswith("-"):
            raise ValueError(
                f"its title ({' '.join(words)!r}) cannot be read back into the words it was "
                "started with (a path holding a blank)"
            )
        if word.startswith("-"):
            for at, flag in enumerate(word[1:], start=2):
                if flag not in "cpges":
                    continue
                value = word[at:]
                if not value and i + 1 < len(words):
                    i += 1
                    value = words[i]
                if flag == "g" and titled:
                    while i + 1 < len(words) and not words[i + 1].startswith("-"):
                        i += 1
                        value += " " + words[i]
                if flag == "c":
                    conf = value
                elif flag == "p":
                    prefix = value
                elif flag == "g":
                    added.append(value)
                given.append(flag)
                break
        i += 1
    if titled and (given.count("c") > 1 or given.count("p") > 1):
        raise ValueError(
            f"its title ({' '.join(words)!r}) names more than one -c or -p: a path holding a "
            "blank cannot be told from two"
        )
    return prefix, conf, " ".join(added)


NGINX_CONFIGURE = b"configure arguments:"
NGINX_DEFAULT_PREFIX = "/usr/local/nginx"  # nginx's configure, without --prefix
NGINX_DEFAULT_CONF = "conf/nginx.conf"  # nginx's configure, without --conf-path


def nginx_build(data: bytes) -> tuple[str, str]:
    """The prefix and configuration file an nginx executable was built with, from its bytes
    (never run): nginx -V prints its configure line from one string of the executable,
    "configure arguments:" and the arguments, to the line's end. --prefix (none: nginx's
    /usr/local/nginx; empty: the working folder) and --conf-path (none: conf/nginx.conf; a
    relative one is the prefix's), the last of each deciding, as nginx's configure reads
    them. ValueError saying why, when that string is not found or cannot be read."""
    found = set()
    at = data.find(NGINX_CONFIGURE)
    while at >= 0:
        start = at + len(NGINX_CONFIGURE)
        ends = [e for e in (data.find(b"\n", start), data.find(b"\0", start)) if e >= 0]
        found.add(data[start : min(ends) if ends else len(data)])
        at = data.find(NGINX_CONFIGURE, start)
    if not found:
        raise ValueError("its executable holds no nginx configure line")
    if len(found) > 1:
        raise ValueError("its executable holds more than one nginx configure line")
    line = os.fsdecode(found.pop())
    try:
        # The configure script quotes an argument holding a blank in single quotes.
        words = shlex.split(line)
    except ValueError as exc:
        raise ValueError(f"its configure line cannot be read ({exc})") from None
    prefix, conf = NGINX_DEFAULT_PREFIX, NGINX_DEFAULT_CONF
    for word in words:
        if word.startswith("--prefix="):
            prefix = word.removeprefix("--prefix=")
        elif word.startswith("--conf-path="):
            conf = word.removeprefix("--conf-path=")
    return prefix, conf


NGINX_EXECUTABLE_MAX = 64 * 1024 * 1024  # nginx is a few MB; a larger file is not read whole


def _executable(proc: Path) -> bytes:
    """A process's executable's bytes, at most NGINX_EXECUTABLE_MAX (ValueError past it: any
    user may run a huge file under nginx's name)."""
    with (proc / "exe").open("rb") as exe:
        data = exe.read(NGINX_EXECUTABLE_MAX + 1)
    if len(data) > NGINX_EXECUTABLE_MAX:
        raise ValueError(
            f"its executable is larger than {NGINX_EXECUTABLE_MAX // (1024 * 1024)} MB, which "
            "no nginx is: not read"
        )
    return data


def _nginx_masters() -> list[NginxMaster]:
    """Every nginx process that loads a configuration: found by its name or executable as
    well as by its title, so a master (titled "nginx: master process ...") and an nginx
    running alone (master_process off, its command line as started) are both found; its
    workers (children of an nginx titled master) left out. Its configuration: -c (or -cFILE),
    else the one its executable was built with (nginx_build: Debian's /etc/nginx/nginx.conf,
    nginx.org's too, OpenResty's or a source build's another); a relative one from its
    prefix (-p, else the build's) and its working folder, as the process names it."""
    found = []
    nginx = {int(p.name): p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_nginx(p)}
    for pid, proc in sorted(nginx.items()):
        try:
            argv = [os.fsdecode(w) for w in (proc / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        while argv and not argv[-1]:
            argv.pop()
        title = " ".join(argv).split()
        titled = title[:3] == ["nginx:", "master", "process"]
        if not titled and (title[:1] == ["nginx:"] or _parent(proc) in nginx):
            continue  # a worker, a cache manager: its master loads the configuration
        # Its executable read, never run, through /proc (the file it was started from, even
        # replaced or removed since): an nginx holds its configure line, and one that does not
        # is no nginx, whatever its title says (a relay titled "nginx: master process ...").
        try:
            built_prefix, built_conf = nginx_build(_executable(proc))
            # The title read back (a master's: its words joined with blanks).
            prefix, conf, added = _nginx_options(title[4:] if titled else argv[1:], titled)
        except OSError as exc:
            why = f"its executable cannot be read by the doctor, which runs as {_me()} ({exc})"
            found.append(NginxMaster(pid, "", "", unknown=why))
            continue
        except ValueError as exc:
            found.append(NginxMaster(pid, "", "", unknown=str(exc)))
            continue
        try:
            cwd = os.readlink(proc / "cwd")
        except OSError:
            cwd = "/"
        if conf is None or (prefix is None and not os.path.isabs(conf)):
            prefix = built_prefix if prefix is None else prefix
            conf = built_conf if conf is None else conf
        path = os.path.join(cwd, prefix or "", conf)
        found.append(NginxMaster(pid, os.path.normpath(path), added))
    return found


def _same_file(mine: Path, theirs: Path) -> bool:
    try:
        here, there = mine.stat(), theirs.stat()
        same = (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
        if same and mine.is_dir():
            same = sorted(os.listdir(mine)) == sorted(os.listdir(theirs))
    except OSError:
        return False
    return same


def _nginx_not_board(master: NginxMaster, root: Path) -> str | None:
    """Why an nginx process is not known to serve the board's configuration under ``root``,
    in words; None if it finds the very files judged (nginx.conf, the folders and files the
    probe reads) at their paths, compared through its own root (a mount namespace of its own:
    a container on the host's network, a systemd drop-in's BindPaths; another root)."""
    want = Path(os.path.abspath(root / "nginx.conf"))
    if master.unknown:
        return f"runs a configuration the doctor cannot tell: {master.unknown}"
    if master.added:
        try:
            added = parse_nginx(master.added)
        except NginxUnreadable:
            added = (Directive("-g", (), (), 1),)
        if any(d.name not in _NGINX_GLOBALS or d.block is not None for d in added):
            return f"runs with -g {master.added!r}, which the doctor does not read"
    try:
        os.stat(f"/proc/{master.pid}/root")
        conf_there = path_in_root(master.pid, master.conf)
    except (OSError, RuntimeError):
        return (
            f"runs {master.conf}, which the doctor, running as {_me()}, cannot see as the "
            "process does"
        )
    if not _same_file(want, conf_there):
        if master.conf != str(want):
            return f"runs {master.conf}, not {want}"
        return (
            f"finds another file than the doctor at {want} (a mount namespace or root of its own)"
        )
    differ = []
    for path in nginx_files(root):
        if not path.exists():
            continue
        try:
            there = path_in_root(master.pid, os.path.abspath(path))
        except (OSError, RuntimeError):
            differ.append(str(path))
            continue
        if not _same_file(path, there):
            differ.append(str(path))
    if differ:
        return (
            f"finds other files than the doctor at {', '.join(differ)} (a mount namespace or "
            "root of its own)"
        )
    return None


def _children(pid: int) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            found.append(int(proc.name))
    return found


def nginx_unloaded(root: Path = NGINX_DIR) -> list[str]:
    """nginx's files (nginx_files) changed after the running nginx last loaded them, and an
    nginx running another configuration, in words: the probe asks the paths the files name,
    and nginx may serve others (a location edited out, a site unlinked, without a reload). It
    loads them when it starts and on each reload, which starts new workers once they are read:
    its oldest worker's start (or the master's) is the latest it is known to run them by.
    Judged by change time, as the broker's files are (_changed_since_start), with the same
    limits; a lone worker respawned after a crash runs what the master loaded, and looks new."""
    said = []
    beyond = {s.inode for s in listening() if not s.loopback}
    for found in _nginx_masters():
        master = found.pid
        why = _nginx_not_board(found, root)
        if why is not None:
            # Its paths are not the ones asked; one on loopback only is no one's on the network.
            try:
                heard = bool(process_sockets(master) & beyond)
                where = "listens beyond loopback"
            except OSError:
                heard = True
                where = f"its sockets cannot be seen by the doctor, which runs as {_me()}"
            if heard:
                said.append(f"nginx (pid {master}) {why}, and {where}: {NGINX_NOT_ITS}")
            continue
        # The oldest of its workers: one of an older generation still serving a connection
        # (a WebSocket in the clear) runs the configuration of before the reload, and one
        # respawned after a crash runs the one the master loaded, not the files since.
        starts = [_process_started(pid) for pid in _children(master)] or [_process_started(master)]
        known = [when for when in starts if when is not None]
        if not known:
            continue
        loaded = min(known)
        changed = []
        for path in nginx_files(root):
            try:
                when = max(
                    [path.stat().st_ctime]
                    + [link.lstat().st_ctime for link in links_on_the_way(path)]
                )
            except (OSError, RuntimeError):
                continue
            if changed_after_start(when, loaded):
                changed.append(str(path))
        if changed:
            said.append(
                f"nginx (pid {master}) last loaded its configuration before "
                f"{', '.join(changed)} changed, so the paths asked may not be those it serves "
                "(sudo nginx -t && sudo systemctl reload nginx)"
            )
    return said


def _holder(owners: dict[int, int], sock: Socket) -> str:
    pid = owners.get(sock.inode)
    return (
        f"{process_name(pid)} (pid {pid})" if pid is not None else "a process the doctor cannot see"
    )


def check_clock(timedatectl: str | None = None) -> Check:
    """Synchronised to a time server: systemd's word for it where there is systemd, else the
    kernel's (adjtimex says TIME_ERROR while the clock is not synchronised)."""
    tool = timedatectl or shutil.which("timedatectl")
    synced: bool | None = None
    how = ""
    if tool is not None:
        done = subprocess.run(
            [tool, "show", "-p", "NTPSynchronized", "--value"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip() in ("yes", "no"):
            synced = done.stdout.strip() == "yes"
            how = "timedatectl"
    if synced is None:
        synced = _kernel_synchronised()
        how = "the kernel's clock status"
    if synced:
        return Check("clock", Verdict.OK, f"synchronised ({how})")
    return Check(
        "clock",
        Verdict.FAIL,
        f"not synchronised ({how}): the journal's times and the commissioning's expiry would "
        "be wrong",
        "sudo timedatectl set-ntp true, and let the board reach a time server (the clinic's "
        "router, or pool.ntp.org); a board without a real-time clock needs the network at boot",
    )


def _kernel_synchronised() -> bool:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    buffer = ctypes.create_string_buffer(512)  # struct timex, zeroed: modes 0 reads only
    state = int(libc.adjtimex(buffer))
    time_error = 5
    return state >= 0 and state != time_error


def check_journal(loaded: LoadedConfig, account: Account | None, user: str) -> list[Check]:
    cfg = loaded.config.journal
    path = loaded.resolve(cfg.path).absolute()
    folder = path.parent
    limit = cfg.max_size_mb * 1e6
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    checks = []
    unreadable = _unreadable(path, "journal")
    if unreadable is not None:
        return [unreadable]
    if account is None:
        checks.append(_no_account(user))
    elif not account.may(existing, 3):
        return [
            Check(
                "journal",
                Verdict.FAIL,
                f"{folder} cannot be written by {account.name}",
                f"sudo install -d -o {account.name} -m 0750 {folder} (scripts/install does)",
            )
        ]
    elif path.exists() and not account.may(path, 6):
        return [
            Check(
                "journal",
                Verdict.FAIL,
                f"{path} cannot be written by {account.name}",
                f"sudo chown {account.name} {path}",
            )
        ]
    used = _journal_bytes(path)
    free = shutil.disk_usage(existing).free
    if path.exists():
        try:
            version, damage = _read_journal(path)
        except sqlite3.Error as exc:
            return [
                *checks,
                Check(
                    "journal",
                    Verdict.FAIL,
                    f"{path} cannot be read: {exc}",
                    "move it aside (keep it: it is the clinic's record) and start afresh",
                ),
            ]
        if version > SCHEMA_VERSION:
            return [
                *checks,
                Check(
                    "journal",
                    Verdict.FAIL,
                    f"{path} was written by a newer treadguard (schema {version})",
                    "update treadguard (scripts/install --update)",
                ),
            ]
        if damage:
            return [
                *checks,
                Check(
                    "journal",
                    Verdict.FAIL,
                    f"{path} is damaged: {'; '.join(damage)}",
                    "move it aside (keep it: it is the clinic's record; sqlite3 FILE .recover "
                    "may save its rows) and start afresh",
                ),
            ]
    if used >= WARN_FRACTION * limit:
        checks.append(
            Check(
                "journal",
                Verdict.FAIL,
                f"{path} is {used / limit:.0%} of its limit ({cfg.max_size_mb:g} MB)",
                "back it up (treadguard backup FILE) and archive it, or raise journal.max_size_mb",
            )
        )
    elif free + used < limit * 1.1:
        checks.append(
            Check(
                "journal",
                Verdict.FAIL,
                f"the disk has {free / 1e6:.0f} MB free; the journal may grow to "
                f"{cfg.max_size_mb * 1.1:g} MB",
                "free space on the disk, or lower journal.max_size_mb",
            )
        )
    else:
        checks.append(
            Check(
                "journal",
                Verdict.OK,
                f"{path}: writable, {used / 1e6:.1f} of {cfg.max_size_mb:g} MB used, "
                f"{free / 1e6:.0f} MB free on the disk",
            )
        )
    return checks


def _read_journal(path: Path) -> tuple[int, list[str]]:
    """The journal's schema version, and what SQLite's quick_check finds wrong with it (none:
    sound). sqlite3.Error when not even its header can be read."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        version = journal_schema_version(db)
        # The version is in the file's header, which reads fine on a journal with a damaged
        # page: every page is read once here, or the damage is first met when the daemon
        # next reads or writes that page.
        try:
            found = [str(row[0]) for row in db.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            return version, [str(exc)]
    return version, [] if found == ["ok"] else found


def _journal_bytes(path: Path) -> int:
    total = 0
    for part in (path, path.with_name(path.name + "-wal")):
        with contextlib.suppress(OSError):
            total += part.stat().st_size
    return total


# ------------------------------------------------------------------ the whole checklist


async def diagnose(path: Path, options: DoctorOptions) -> Report:
    report = Report()
    config_check, loaded = check_configuration(path)
    report.add(config_check)
    if loaded is None:
        return report
    user = options.service_user
    account = service_account(user)
    unreadable = _configuration_unreadable(loaded, account)
    if unreadable is not None:
        report.add(unreadable)
    stopped = check_daemon_stopped(loaded)
    report.add(stopped)
    for check in check_serial(loaded, account, user) + check_gpio(loaded, account, user):
        report.add(check)
    broker = broker_settings(loaded)
    if stopped.verdict is Verdict.OK:
        for check in await _guarded_list("drive", check_drive(loaded, options, broker)):
            report.add(check)
        for check in await _guarded_list("sensors", check_sensors(loaded, broker, options)):
            report.add(check)
        broker_checks = await _guarded_list("broker", check_broker(broker, options))
        for check in broker_checks:
            report.add(check)
        if all(check.verdict is not Verdict.FAIL for check in broker_checks):
            # The page's route to that broker, as a tablet takes it (nginx's https site).
            for check in await _guarded_list("page", _page(broker, options)):
                report.add(check)
    # The broker's files and sockets are only read: checked with the daemon running too.
    try:
        for check in check_broker_files(loaded, broker, options):
            report.add(check)
    except Exception as exc:
        report.add(
            Check("broker config", Verdict.FAIL, f"the check itself failed: {exc!r}", "report this")
        )
    for check in await _guarded_list(
        "network MQTT",
        check_network(
            options.wait_s,
            nginx=options.nginx_dir,
            broker_port=broker.port if not_this_board(broker.host) is None else None,
        ),
    ):
        report.add(check)
    report.add(check_clock())
    for check in check_journal(loaded, account, user):
        report.add(check)
    return report


async def diagnose_or_signal(path: Path, options: DoctorOptions) -> Report | signal.Signals:
    """diagnose(), or the signal (SIGINT, SIGTERM, SIGHUP: Ctrl-C, a kill, an SSH session
    dropping) that ended it. A signal cancels the checklist like any cancellation, so every
    driver's stop goes out on the way (a Trackmaster's A2, with --belt its belt running) instead
    of the process dying with the belt running; later signals are ignored, so that the stop in
    progress is not itself cut short (SIGKILL remains)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    caught: list[signal.Signals] = []

    def on_signal(signum: signal.Signals) -> None:
        if not caught:
            task.cancel()
        caught.append(signum)

    ended = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    for signum in ended:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        report = await diagnose(path, options)
    except asyncio.CancelledError:
        if not caught:
            raise
        task.uncancel()
        return caught[0]
    finally:
        for signum in ended:
            loop.remove_signal_handler(signum)
    # A cancellation some client swallowed on its way out: the checklist is still cut short.
    return caught[0] if caught else report


async def confirm_on_terminal(prompt: str, write: Callable[[str], None]) -> bool:
    """``prompt`` on ``write`` and a line read from the terminal on stdin: True only for
    BELT_WORD. Anything typed before the prompt is dropped first, so a word typed ahead (or
    pasted with other commands) starts nothing. Read through the event loop, so that a signal
    still ends the wait."""
    fd = sys.stdin.fileno()
    with contextlib.suppress(termios.error):
        termios.tcflush(fd, termios.TCIFLUSH)
    write(prompt)
    loop = asyncio.get_running_loop()
    line: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not line.done():
            line.set_result(os.read(fd, 1024))

    loop.add_reader(fd, readable)
    try:
        return (await line).decode(errors="replace").strip() == BELT_WORD
    finally:
        loop.remove_reader(fd)


async def _guarded_list(name: str, work: Awaitable[list[Check]]) -> list[Check]:
    """A check that fails in a way nobody foresaw is a failed check with the reason, and the
    checklist goes on."""
    try:
        return await work
    except Exception as exc:
        return [Check(name, Verdict.FAIL, f"the check itself failed: {exc!r}", "report this")]


def render(report: Report, config: Path) -> str:
    width = max(len(c.name) for c in report.checks)
    lines = [f"treadguard doctor: {config}"]
    for check in report.checks:
        lines.append(f"  {check.verdict.value:<4}  {check.name:<{width}}  {check.detail}")
        if check.fix:
            lines.append(f"  {'':<4}  {'':<{width}}  fix: {check.fix}")
    lines.append(summary(report))
    return "\n".join(lines)


def summary(report: Report) -> str:
    total = len(report.checks)
    failed = sum(c.verdict is Verdict.FAIL for c in report.checks)
    unchecked = sum(c.verdict is Verdict.TODO for c in report.checks)
    if failed == 0 and unchecked == 0:
        return "all checks passed"
    said = []
    if failed:
        said.append(f"{failed} of {total} checks failed")
    if unchecked:
        said.append(f"{unchecked} of {total} not checked (TODO)")
    return ", ".join(said) + ": the board is not proven safe to use"


def as_json(report: Report) -> dict[str, Any]:
    return {
        "passed": report.passed,
        "failed": report.failed,
        "checks": [c.as_json() for c in report.checks],
    }
