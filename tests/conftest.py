"""Fixtures shared by the MQTT tests: a private broker, and the real daemon on it."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _pytest import junitxml
from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]  # no types

from tests.daemon_process import ROOT, DaemonProcess, daemon_config
from tests.mosquitto import Broker, auth_lines, have_mosquitto
from tests.pki import OPENSSL, Pki, make_pki
from treadguard.controller.hazard_log import SELECTION_PROPERTY, WHOLE_SUITE

# The test files whose tests run the doctor, which takes the board's network in turns
# (tests/board_network.py): on workers of their own they would mostly wait for each other,
# a worker idle for minutes (measured: 388 s of waiting in 339 s of two workers). With them
# the installed-board tests, whose broker (in the systemd container's own root) has its files
# edited while it runs: the doctor judges every Mosquitto of the machine, and took that one
# for another broker on the board whose configuration changed since it started.
BOARD_NETWORK_FILES = ("tests/test_doctor", "tests/test_install.py")


class _BoardNetworkOnOneWorker(LoadFileScheduling):  # type: ignore[misc]
    """``--dist loadfile``, with the files named BOARD_NETWORK_FILES* one unit of work."""

    def _split_scope(self, nodeid: str) -> str:
        scope = str(super()._split_scope(nodeid))
        return "board-network" if scope.startswith(BOARD_NETWORK_FILES) else scope


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own
    return _BoardNetworkOnOneWorker(config, log)


def run_selection(config: pytest.Config) -> str:
    """What this run of pytest was given that leaves tests out (WHOLE_SUITE if nothing): the
    hazard gate judges only a run of the whole suite (controller/hazard_log.py)."""
    option = config.option
    said: list[str] = []
    if config.args_source is pytest.Config.ArgsSource.ARGS:
        whole = {(config.rootpath / p).resolve() for p in config.getini("testpaths")}
        given = {(config.invocation_params.dir / a).resolve() for a in config.args}
        if given != whole:
            said.append("paths " + " ".join(config.args))
    for flag, dest in (("-k", "keyword"), ("-m", "markexpr")):
        if getattr(option, dest, ""):
            said.append(f"{flag} {getattr(option, dest)!r}")
    for flag, dest in (
        ("--deselect", "deselect"),
        ("--ignore", "ignore"),
        ("--ignore-glob", "ignore_glob"),
    ):
        if getattr(option, dest, None):
            said.append(f"{flag} {' '.join(map(str, getattr(option, dest)))}")
    for flag, dest in (
        ("--last-failed", "lf"),
        ("--stepwise", "stepwise"),
        ("--collect-only", "collectonly"),
    ):
        if getattr(option, dest, False):
            said.append(flag)
    if getattr(option, "maxfail", 0):
        said.append(f"--maxfail {option.maxfail}")
    return "; ".join(said) if said else WHOLE_SUITE


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Says in the JUnit XML (if one is written, by the process that writes it) whether this
    run was the whole suite."""
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller writes the XML
    xml = config.stash.get(junitxml.xml_key, None)
    if xml is not None:
        xml.add_global_property(SELECTION_PROPERTY, run_selection(config))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A private, anonymous Mosquitto on a free port, for this test only."""
    if not have_mosquitto():
        if os.environ.get("CI"):
            pytest.fail("mosquitto is not installed: scripts/test installs it")
        pytest.skip("mosquitto is not installed (scripts/test installs it)")
    b = Broker(tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture
def make_daemon(broker: Broker, tmp_path: Path) -> Iterator[Callable[..., DaemonProcess]]:
    started: list[DaemonProcess] = []

    def make(
        env: dict[str, str] | None = None, *, commissioned: bool = True, **kwargs: Any
    ) -> DaemonProcess:
        """``treadguard run`` for the test's broker; ``kwargs`` go to daemon_config, ``env``
        to its environment (TREADGUARD_* overrides); ``commissioned``: its journal holds a
        current commissioning (DaemonProcess)."""
        tm = kwargs.setdefault("treadmill_id", f"tm-{len(started)}")
        daemon = DaemonProcess(
            daemon_config(broker.workdir, broker.port, **kwargs),
            tmp_path / f"{tm}.log",
            env,
            commissioned=commissioned,
        )
        daemon.start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()


@pytest.fixture
def modbus_device() -> Iterator[str]:
    """``treadguard sim-device modbus``: a simulated VFD on Modbus TCP, in a process of its own
    (it outlives any daemon a test kills); yields HOST:PORT."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "treadguard.controller.cli",
            "sim-device",
            "modbus",
            "--tcp",
            "127.0.0.1:0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            assert sel.select(20.0), "sim-device printed no address"
        yield proc.stdout.readline().strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def need(what: str, present: bool) -> None:
    if not present:
        why = f"{what} is not installed: scripts/test installs it"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    need("openssl", OPENSSL is not None)
    return make_pki(tmp_path / "tls")


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Broker]:
    """Mosquitto with the shipped accounts and ACL, and the WebSockets listener nginx passes
    /mqtt to: plain, on loopback, no http_dir."""
    need("mosquitto", have_mosquitto())
    broker = Broker(tmp_path, extra=auth_lines(tmp_path), websockets=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()
