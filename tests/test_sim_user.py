"""``treadguard sim-user``: the simulated user's grip and fall sensors over MQTT, as the daemon
reads them (``<p>/sensors/<name>`` of docs/tablet-contract.md), told what to do from another
process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_process import ROOT
from tests.mosquitto import Broker, body, tablet

P = "treadmill/tm-sim"  # config/sim.toml's treadmill


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "treadguard.controller.cli", *args]


def env(port: int) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TREADGUARD_MQTT__PORT": str(port)}


@pytest.fixture
def sim_user(broker: Broker, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    with (tmp_path / "user.log").open("wb") as log:
        proc = subprocess.Popen(cli("sim-user"), cwd=ROOT, env=env(broker.port), stdout=log)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def tell(port: int, instruction: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli("sim-user", "--tell", instruction),
        cwd=ROOT,
        env=env(port),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.asyncio
async def test_readings_follow_what_the_user_is_told(
    broker: Broker, sim_user: subprocess.Popen[bytes]
) -> None:
    topics = [f"{P}/sensors/{name}" for name in ("grip_left", "grip_right", "fall")]
    async with tablet(broker, *topics) as tab:
        for topic, expected in zip(topics, (True, True, False), strict=True):
            reading = body(await tab.next(topic))
            assert isinstance(reading, dict)
            assert reading["value"] is expected
            assert isinstance(reading["ts"], float)

        told = await asyncio.to_thread(tell, broker.port, "release both")
        assert told.returncode == 0, told.stderr
        for topic in topics[:2]:
            await tab.next(topic, lambda m: json.loads(m.payload)["value"] is False)

        assert (await asyncio.to_thread(tell, broker.port, "fall")).returncode == 0
        await tab.next(topics[2], lambda m: json.loads(m.payload)["value"] is True)


def test_a_bad_instruction_is_refused_with_the_known_ones(broker: Broker) -> None:
    told = tell(broker.port, "dance")
    assert told.returncode == 2
    assert "unknown instruction 'dance'" in told.stderr
    assert "release left|right|both" in told.stderr


def test_no_broker_is_a_clear_error(tmp_path: Path) -> None:
    from tests.mosquitto import free_port

    port = free_port()
    told = tell(port, "fall")
    assert told.returncode == 3
    assert f"127.0.0.1:{port}" in told.stderr


def test_the_simulated_user_never_borrows_the_daemon_s_account() -> None:
    """With the daemon's login in the configuration, the simulated user would publish as the
    daemon, whose readings the shipped ACL drops without a word: it asks for its own."""
    secured = {**env(1883), "TREADGUARD_MQTT__USERNAME": "treadguard"}
    done = subprocess.run(
        cli("sim-user"), capture_output=True, text=True, timeout=30, cwd=ROOT, env=secured
    )
    assert done.returncode == 2
    assert "'treadguard' is the daemon's account" in done.stderr
    assert "--username NAME" in done.stderr
