"""The real daemon (``treadguard run``) as a subprocess, on the built-in simulated belt, talking
to a test's private Mosquitto: what a tablet would find on the gym's network."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from subprocess import CompletedProcess
from unittest import mock

from treadguard.config.loading import ConfigError, load_config
from treadguard.controller.commission import nominal_proofs
from treadguard.controller.journal import Journal, JournalError, Machine, seed_commissioning

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS_DIR = ROOT / "config" / "programs"
# The shipped unit's priority (Nice=), which the tests' daemons run at too.
DAEMON_NICE = next(
    int(line.removeprefix("Nice="))
    for line in (ROOT / "config" / "systemd" / "treadguard.service").read_text().splitlines()
    if line.startswith("Nice=")
)
STOP_TIMEOUT_S = 15.0  # SR-11's 10 s standstill bound, and some


def daemon_config(
    tmp_path: Path,
    port: int,
    *,
    treadmill_id: str = "tm-test",
    sensors: str | None = "simulator",
    drive: str = 'kind = "simulator"',
    mqtt_extra: str = "",
    extra: str = "",
) -> Path:
    """A daemon configuration on the simulated drive for the broker on ``port``.

    ``sensors = "simulator"``: a built-in user who always holds on; ``"mqtt"``: the test
    publishes the grip and fall readings itself; None: ``[[sensors.inputs]]`` tables in
    ``extra`` say. ``drive``: the lines of the [drive] table.
    """
    path = tmp_path / f"daemon-{treadmill_id}.toml"
    path.write_text(
        f'[treadmill]\nid = "{treadmill_id}"\n\n'
        f"[programs]\ndir = '{PROGRAMS_DIR.as_posix()}'\n\n"
        f"[drive]\n{drive}\n\n"
        + (f'[sensors]\nsource = "{sensors}"\n\n' if sensors is not None else "")
        + f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n{mqtt_extra}\n\n'
        f"[journal]\npath = '{(tmp_path / f'journal-{treadmill_id}.sqlite').as_posix()}'\n\n"
        '[logging]\nlevel = "info"\nformat = "json"\n\n'
        f"{extra}\n",
        encoding="utf-8",
    )
    return path


def commission(config: Path, env: dict[str, str]) -> None:
    """The journal of the daemon at ``config`` (as it reads it, ``env``'s overrides included)
    gets a current commissioning, written the way ``treadguard commission`` writes one, unless
    it holds one already. A journal that cannot be opened is left as it is: the daemon reports
    it (the tests of a broken journal)."""
    try:
        with mock.patch.dict(os.environ, env):
            loaded = load_config(config)
    except ConfigError:
        return  # the daemon says what is wrong
    cfg = loaded.config
    try:
        journal = Journal.open(
            loaded.resolve(cfg.journal.path), max_size_mb=cfg.journal.max_size_mb
        )
    except JournalError:
        return
    try:
        now = time.time()
        machine = Machine.of(cfg)
        every = cfg.commissioning.every_days
        if not journal.commissioning_status(now, every_days=every, machine=machine).current:
            # On a drive of the wire, as a technician's run on the machine writes it (one on
            # the simulator would not count for it).
            seed_commissioning(
                journal,
                now - 60.0,
                nominal_proofs(loaded),
                machine=machine,
                simulated=machine.simulator,
                technician="test",
            )
    except JournalError:
        pass  # a journal too full to take it: the daemon refuses starts, and says why
    finally:
        journal.close()


def treadguard_cli(*args: str, stdin: str = "", timeout: float = 120.0) -> CompletedProcess[str]:
    """``treadguard ARGS`` from the tree under test, to its end, with ``stdin`` as its whole
    input (a guided run that did start would meet the end of its input and abort)."""
    return subprocess.run(
        [sys.executable, "-m", "treadguard.controller.cli", *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


class DaemonProcess:
    """``treadguard run --config FILE`` in its own process; its log goes to a file.
    ``commissioned``: its journal holds a current commissioning before it starts (as every
    treadmill that takes patients must); False leaves the journal as it is."""

    def __init__(
        self,
        config: Path,
        log: Path,
        env: dict[str, str] | None = None,
        *,
        commissioned: bool = True,
    ) -> None:
        self.config = config
        self.log = log
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.commissioned = commissioned
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.commissioned:
            commission(self.config, self.env)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    # Ahead of the test's own work, as the shipped unit puts it ahead of the
                    # board's other services (Nice=); not root: nice says so and runs it as is.
                    "nice",
                    "-n",
                    str(DAEMON_NICE),
                    sys.executable,
                    "-m",
                    "treadguard.controller.cli",
                    "run",
                    "--config",
                    str(self.config),
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not end in time. The exit code, if it ended."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT_S)
                return None
        return self.proc.returncode

    def break_configuration(self) -> None:
        """The configuration file broken on disk (the daemon read it when it started; its
        proposal worker looks at it again before each request)."""
        with self.config.open("a", encoding="utf-8") as config:
            config.write("\n[[[broken\n")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""
