"""Fixtures shared by the MQTT tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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
