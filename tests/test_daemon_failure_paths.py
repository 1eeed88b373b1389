"""Failure paths of the daemon's assembly (controller/system.py), in the real daemon over a real
Mosquitto, each failure planted in the daemon's own process (a sitecustomize on its path): a
stop or estop whose handling fails, a journal commit that fails on the way out."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.clinician import STANDSTILL_MPH, clinician, refused
from tests.daemon_process import ROOT, DaemonProcess
from tests.mosquitto import Broker

PLANT = '''
"""Test-only, in the daemon's process."""
import os
import sys

from treadguard.controller import journal
from treadguard.safety import core, inputs

FLAG = {flag!r}
MARKER = {marker!r}

_handle = core.SafetyCore.handle


def handle(self, event):
    # A stop or estop whose handling fails in a way nobody foresaw, once FLAG exists.
    if os.path.exists(FLAG) and isinstance(event, (inputs.Stop, inputs.EStop)):
        raise RuntimeError("planted: the stop's handling fails")
    return _handle(self, event)


core.SafetyCore.handle = handle

_commit = journal.Journal.commit


def commit(self):
    # The commit made on the way out (System.close, or the old Daemon.run's finally) fails.
    caller, outer = sys._getframe(1), sys._getframe(2)
    if caller.f_code.co_name in ("commit_journal", "_commit_journal") and (
        outer.f_code.co_name in ("close", "run")
        and outer.f_code.co_filename.endswith(("system.py", "daemon.py"))
    ):
        raise journal.JournalError("planted: disk I/O error at exit")
    return _commit(self)


journal.Journal.commit = commit
_close = journal.Journal.close


def close(self):
    with open(MARKER, "a") as f:
        f.write("closed\\n")
    return _close(self)


journal.Journal.close = close
'''


def plant(tmp_path: Path) -> tuple[dict[str, str], Path, Path]:
    where = tmp_path / "plant"
    where.mkdir()
    flag, marker = tmp_path / "fail-stops", tmp_path / "journal-closed"
    text = PLANT.format(flag=str(flag), marker=str(marker))
    (where / "sitecustomize.py").write_text(text, encoding="utf-8")
    return {"PYTHONPATH": f"{where}:{ROOT}"}, flag, marker


@pytest.mark.asyncio
@pytest.mark.parametrize("command", ["estop", "stop"])
async def test_a_stop_whose_handling_fails_leaves_the_belt_stopped(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path, command: str
) -> None:
    """daemon.md: "a stop or estop whose handling fails still reaches the driver". The belt
    must then stand still, not be driven back up by the next tick of a core that never heard
    of the stop."""
    env, flag, _ = plant(tmp_path)
    tm = f"tm-failing-{command}"
    make_daemon(treadmill_id=tm, env=env)
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        await doc.start_running("u-50", program="first_session")
        flag.touch()
        refused(await doc.command(command), "internal_error")
        # An estop brings 0.8 mph down within 0.3 s, a controlled stop within 2 s (0.8 mph/s
        # at the drive); give it 6 s.
        try:
            await doc.state(lambda s: s["speed_mph"] <= STANDSTILL_MPH, within=6.0)
        except TimeoutError:
            latest = doc.latest or {}
            pytest.fail(
                f"{command} answered internal_error, belt still at {latest.get('speed_mph')} mph "
                f"in state {latest.get('state')} 6 s later"
            )
        # Held there: the core, which never heard of the stop, still runs its session, and the
        # belt that does not follow it latches a feedback fault (SR-10); never driven again.
        speeds: list[float] = []

        def faulted(state: dict[str, Any]) -> bool:
            speeds.append(state["speed_mph"])
            return bool(state["state"] == "fault")

        fault = await doc.state(faulted, within=6.0)
        assert fault["latched"]["cause"] == "feedback_mismatch", fault
        assert max(speeds) <= STANDSTILL_MPH, (
            f"the belt moved again after the failed stop: {speeds}"
        )
        # The clinician resets; the hold ends with the core idle, and a new session runs.
        flag.unlink()
        await doc.reset_when_allowed()
        await doc.start_running("u-50", program="first_session")


@pytest.mark.asyncio
async def test_the_journal_is_closed_on_exit_even_when_the_last_commit_fails(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    env, _, marker = plant(tmp_path)
    tm = "tm-close"
    daemon = make_daemon(treadmill_id=tm, env=env)
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
    daemon.signal(signal.SIGTERM)
    code = await asyncio.to_thread(daemon.wait)
    log = daemon.log_text()
    assert "planted: disk I/O error at exit" in log, log[-2000:]
    assert code == 0, log[-3000:]
    assert marker.exists(), "Journal.close() was never called: " + log[-1500:]
