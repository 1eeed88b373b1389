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
from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]  # no types

from tests.daemon_process import ROOT, DaemonProcess, daemon_config
from tests.mosquitto import Broker, have_mosquitto

# The test files whose tests run the doctor, which takes the board's network in turns
# (tests/board_network.py): on workers of their own they would mostly wait for each other,
# a worker idle for minutes (measured: 388 s of waiting in 339 s of two workers).
BOARD_NETWORK_FILES = "tests/test_doctor"


class _BoardNetworkOnOneWorker(LoadFileScheduling):  # type: ignore[misc]
    """``--dist loadfile``, with the files named BOARD_NETWORK_FILES* one unit of work."""

    def _split_scope(self, nodeid: str) -> str:
        scope = str(super()._split_scope(nodeid))
        return "board-network" if scope.startswith(BOARD_NETWORK_FILES) else scope


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own
    return _BoardNetworkOnOneWorker(config, log)


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
