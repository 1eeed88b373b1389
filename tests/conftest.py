"""Fixtures shared by the MQTT tests: a private broker, and the real daemon on it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import DaemonProcess, daemon_config
from tests.mosquitto import Broker, have_mosquitto


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

    def make(env: dict[str, str] | None = None, **kwargs: Any) -> DaemonProcess:
        """``treadguard run`` for the test's broker; ``kwargs`` go to daemon_config, ``env``
        to its environment (TREADGUARD_* overrides)."""
        tm = kwargs.setdefault("treadmill_id", f"tm-{len(started)}")
        daemon = DaemonProcess(
            daemon_config(broker.workdir, broker.port, **kwargs), tmp_path / f"{tm}.log", env
        )
        daemon.start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        daemon.stop()
