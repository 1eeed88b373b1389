"""A commissioning beside the treadguard service, through the real processes: ``treadguard
run`` with a patient's session under way, on a private Mosquitto, and ``treadguard commission``
started without stopping it (docs/commissioning.md, "One process per journal"; H-43).

The process that finds the journal held must leave everything alone: no MQTT connection under
the daemon's client id and state topic (the running daemon would take it for a rival and
emergency-stop the patient's belt), no drive."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from tests.clinician import clinician
from tests.daemon_process import ROOT, DaemonProcess, daemon_config
from tests.mosquitto import Broker, body

COMMAND_S = 60.0  # the bound of one refused treadguard command (it ends by itself at once)


def _treadguard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "treadguard.controller.cli", *args],
        cwd=ROOT,
        input="",  # the terminal's end of input: a guided run that did start would abort
        capture_output=True,
        text=True,
        timeout=COMMAND_S,
        check=False,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.asyncio
@pytest.mark.parametrize("command", [("commission",), ("run",)], ids=["commission", "run"])
async def test_a_second_process_on_a_held_journal_leaves_the_patients_belt_alone(
    broker: Broker, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """The service runs a patient's session; `treadguard commission` (guided) or a second
    `treadguard run` on the same configuration is refused for the journal's lock (exit 1,
    saying so) without ever publishing on the treadmill's topics: every state the tablet saw
    meanwhile is the service's, the session runs on and nothing is latched."""
    tm = "tm-beside"
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm)
    service = DaemonProcess(config, tmp_path / "service.log")
    service.start()
    p = f"treadmill/{tm}"
    try:
        async with clinician(broker, tm) as doc:
            await doc.until(lambda s: s["stale"] == [], within=10.0)
            running = await doc.start_running("patient-1")
            instance, session = running["instance"], running["session"]["id"]
            doc.tab.drain(f"{p}/state")
            second = await asyncio.to_thread(_treadguard, *command, "--config", str(config))
            assert second.returncode == 1, second.stdout + second.stderr
            assert "in use by another process" in second.stdout + second.stderr, second.stdout
            # What the broker carried on the treadmill's state topic while the second process
            # lived has arrived once the service's next state has.
            seen = [body(m) for m in doc.tab.drain(f"{p}/state")]
            after = await doc.state(lambda s: True, within=10.0)
            seen += [body(m) for m in doc.tab.drain(f"{p}/state")]
            seen.append(after)
            others = {s.get("instance") for s in seen} - {instance}
            assert not others, f"another process published the state: {others}"
            assert after["state"] == "running", after
            assert after["session"]["id"] == session
            assert after["latched"] is None, after
    finally:
        service.stop()
    assert "mqtt_rival_daemon" not in service.log_text()
