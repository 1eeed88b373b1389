"""The commissioning gate and the stop-quality watch attacked through the real processes:
``treadguard run`` daemons on a private Mosquitto, ``treadguard commission`` (guided, simulated,
``--status``) and the journal edited with sqlite3, as a technician or a crash would leave it.

Each test states what it tries and what must hold (docs/commissioning.md, docs/stop-watch.md;
H-42, H-43; SR-3, SR-10, SR-16)."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from tests.clinician import SESSION_WAIT_S, clinician, ok, refused
from tests.daemon_process import ROOT, DaemonProcess, daemon_config, treadguard_cli
from tests.mosquitto import Broker, body
from treadguard.config.loading import load_config
from treadguard.controller.commission import nominal_proofs
from treadguard.controller.journal import (
    DAY_S,
    Journal,
    JournalError,
    Machine,
    journal_in_use,
    seed_commissioning,
)
from treadguard.controller.system import COMMISSIONING_REFRESH_S
from treadguard.controller.wallclock import STEP_FILE_ENV

WORN = 'kind = "simulator"\nbrake_wear = 0.6'
GUIDED_PROMPT_S = 60.0  # the guided run's start-up (broker, drive, sensors) and its E-STOP step


def _journal_of(broker: Broker, tm: str) -> Path:
    return broker.workdir / f"journal-{tm}.sqlite"


def _seed(config: Path, ended_at: float) -> None:
    """A passed commissioning ending at ``ended_at``, as `treadguard commission` writes it."""
    loaded = load_config(config)
    journal = Journal.open(loaded.resolve(loaded.config.journal.path))
    try:
        seed_commissioning(
            journal,
            ended_at,
            nominal_proofs(loaded),
            machine=Machine.of(loaded.config),
            technician="test",
        )
    finally:
        journal.close()


# ------------------------------------------------------------------ claim 2: a run cut short


def _proven(path: Path) -> list[str]:
    """The steps of the newest commissioning run with a passed proof on disk."""
    if not path.exists():
        return []
    journal = Journal.read_only(path)
    try:
        runs = journal.commissioning_runs()
        return [p.step for p in journal.proofs(runs[-1].id) if p.passed] if runs else []
    except JournalError:
        return []
    finally:
        journal.close()


def test_a_guided_run_sigkilled_mid_run_is_never_passed(broker: Broker) -> None:
    """`treadguard commission` (guided, the daemon's assembly) SIGKILLed after its E-STOP proof
    passed, while it waits for the technician: the run is on record cut short (no outcome),
    `--status` says not current (exit 1) and names it, and the next run starts afresh."""
    tm = "tm-killed"
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm, sensors="simulator")
    proc = subprocess.Popen(
        [sys.executable, "-m", "treadguard.controller.cli", "commission", "--config", str(config)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        deadline = time.monotonic() + GUIDED_PROMPT_S
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if line.startswith(">> "):
                # Enter as each request is asked (stand on the belt; give the E-STOP): one
                # typed ahead answers nothing.
                proc.stdin.write("\n")
                proc.stdin.flush()
            if "pass E-STOP command" in line:
                break
        assert any("pass E-STOP command" in line for line in seen), "".join(seen)
        # The proof is committed within the journal's half-second batch: once it is on disk,
        # the run is cut short with one stop proven.
        journaled = time.monotonic() + 5.0
        while not _proven(_journal_of(broker, tm)) and time.monotonic() < journaled:
            time.sleep(0.05)  # polling the journal another process writes
        proc.send_signal(signal.SIGKILL)  # mid-run: the next proof (a grip) is under way
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    journal = Journal.read_only(_journal_of(broker, tm))
    (row,) = journal.commissioning_runs()
    assert row.outcome is None
    assert row.ended_at is None
    assert [(p.step, p.passed) for p in journal.proofs(row.id)] == [("estop", True)]
    journal.close()
    status = treadguard_cli("commission", "--status", "--config", str(config))
    assert status.returncode == 1, status.stdout + status.stderr
    assert "was cut short" in status.stdout, status.stdout


@pytest.mark.asyncio
async def test_a_hand_finished_run_that_proved_one_stop_does_not_count(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    tm = "tm-handmade"
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm)
    loaded = load_config(config)
    path = _journal_of(broker, tm)
    journal = Journal.open(path)
    # What a SIGKILL after the first proof leaves (test above): a run with no outcome.
    run = journal.begin_commissioning(
        time.time() - 600.0, technician="t", simulated=False, machine=Machine.of(loaded.config)
    )
    journal.record_proof(run, nominal_proofs(loaded)[0], time.time() - 590.0)
    journal.close()
    with closing(sqlite3.connect(path)) as db:
        db.execute(
            "UPDATE commissioning SET outcome = 'passed', ended_at = ? WHERE id = ?",
            (time.time() - 60.0, run),
        )
        db.commit()
    status = treadguard_cli("commission", "--status", "--config", str(config))
    make_daemon(treadmill_id=tm, commissioned=False)
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        reply = await doc.command("start_session", user="u-1")
    # Both the record (`--status`, exit 0 only if current) and the daemon must refuse it.
    assert (status.returncode, reply["ok"]) == (1, False), (status.stdout, reply)
    refused(reply, "preconditions_unmet")


@pytest.mark.asyncio
async def test_a_commissioning_whose_figures_are_no_baseline_takes_no_patient(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    tm = "tm-absurd"
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm)
    _seed(config, time.time() - 60.0)
    with closing(sqlite3.connect(_journal_of(broker, tm))) as db:
        db.execute(
            "UPDATE commissioning_proofs SET deceleration_mph_per_s = 1e6 WHERE kind = 'emergency'"
        )
        db.commit()
    make_daemon(treadmill_id=tm, commissioned=False)
    async with clinician(broker, tm) as doc:
        state = await doc.until(lambda s: s["stale"] == [], within=10.0)
        assert state["stop_watch"]["emergency"]["baseline"] is False  # the watch is off
        refused(await doc.command("start_session", user="u-1"), "preconditions_unmet")


# ------------------------------------------------------------------ claim 1: one process


def test_a_commissioning_is_refused_beside_a_daemon_whose_journal_is_a_symlink(
    broker: Broker, tmp_path: Path
) -> None:
    tm = "tm-symlink"
    store = tmp_path / "data"
    store.mkdir()
    target = store / "treadguard.sqlite"
    Journal.open(target).close()
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm)
    _journal_of(broker, tm).symlink_to(target)
    daemon = DaemonProcess(config, tmp_path / "d.log", commissioned=False)
    daemon.start()
    try:
        deadline = time.monotonic() + 10.0
        while not journal_in_use(target) and time.monotonic() < deadline and daemon.alive():
            time.sleep(0.05)  # polling for the daemon to take the journal's lock
        assert journal_in_use(target), daemon.log_text()
        second = treadguard_cli("commission", "--simulated", "--config", str(config))
        assert second.returncode == 1, second.stdout + second.stderr
        assert "in use by another process" in second.stdout + second.stderr
    finally:
        daemon.stop()


# ------------------------------------------------------------------ claim 1: the clock


@pytest.mark.asyncio
async def test_a_clock_behind_at_start_then_stepped_forward_does_not_stretch_the_record(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    """SR-16, claim 1: a board whose clock is 10 days behind at start-up (no real-time clock,
    a stale saved time) reads a record with 10 days more to run than it has; NTP steps the
    clock forward. The record's true expiry, seconds later, still refuses the next start: the
    expiry is the record's, not the one the wrong clock gave at start-up."""
    tm = "tm-behind"
    step = tmp_path / "wall-step"
    step.write_text(str(-10 * DAY_S), encoding="utf-8")
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm)
    expires = time.time() + 20.0
    _seed(config, expires - 90 * DAY_S)
    make_daemon({STEP_FILE_ENV: str(step)}, treadmill_id=tm, commissioned=False)
    async with clinician(broker, tm) as doc:
        state = await doc.until(lambda s: s["stale"] == [], within=10.0)
        assert state["commissioning"]["current"] is True
        step.write_text("0", encoding="utf-8")  # NTP steps the clock to the right time
        within = expires - time.time() + 2 * COMMISSIONING_REFRESH_S
        expired = body(
            await doc.tab.next(
                f"{doc.p}/events",
                lambda m: body(m)["type"] == "commissioning_expired",
                within=within,
            )
        )
        assert "expired" in expired["detail"]
        assert time.time() >= expires - 1.0  # not before its time either
        message = refused(await doc.command("start_session", user="u-1"), "preconditions_unmet")
        assert "commissioning expired" in message


@pytest.mark.asyncio
async def test_a_board_in_1970_refuses_until_ntp_then_starts(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    """Claim 1 through the real daemon: a board without a real-time clock boots in 1970; the
    record (passed an hour ago) is dated after its clock and is not trusted; NTP steps the
    clock and the next read (within COMMISSIONING_REFRESH_S) counts it."""
    tm = "tm-1970"
    step = tmp_path / "wall-step"
    step.write_text(str(100_000.0 - time.time()), encoding="utf-8")
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm)
    _seed(config, time.time() - 3600.0)
    make_daemon({STEP_FILE_ENV: str(step)}, treadmill_id=tm, commissioned=False)
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        message = refused(await doc.command("start_session", user="u-1"), "preconditions_unmet")
        assert "dated after now" in message
        step.write_text("0", encoding="utf-8")
        await doc.tab.next(
            f"{doc.p}/state",
            lambda m: body(m)["commissioning"]["current"] is True,
            within=2 * COMMISSIONING_REFRESH_S,
        )
        await doc.start_running("u-1")


# ------------------------------------------------------------------ claim 3: the watch


@pytest.mark.asyncio
async def test_a_restart_between_two_slow_stops_does_not_forgive_the_first(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    tm = "tm-nightly"
    first = make_daemon(treadmill_id=tm, drive=WORN)
    async with clinician(broker, tm) as doc:
        await doc.start_running("u-1", program="first_session")
        ok(await doc.command("estop"))
        warning = await doc.event("maintenance_warning")
        assert warning["slow_in_a_row"] == 1
        await doc.reset_when_allowed()
    assert first.stop() == 0
    make_daemon(treadmill_id=tm, drive=WORN)
    async with clinician(broker, tm) as doc:
        await doc.start_running("u-2", program="first_session")
        ok(await doc.command("estop"))
        checked = await doc.event("stop_checked")
        assert checked["verdict"] == "slow", checked
        assert checked["slow_in_a_row"] == 2, checked
        faulted = await doc.state(
            lambda s: s["state"] == "fault" and s["stop_watch"]["fault_pending"],
            within=SESSION_WAIT_S,
        )
        assert faulted["latched"]["cause"] == "drive_fault"


@pytest.mark.asyncio
async def test_a_good_stop_of_the_other_kind_between_two_slow_ones_does_not_hide_the_brake(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """Claim 3, through the daemon on a worn simulated brake: a slow E-STOP, then a clinician's
    stop (controlled, which a 60 % worn brake still follows: the ramp limits it), then a second
    slow E-STOP. The controlled stop is of the other kind and leaves the emergency run as it
    is: the second slow E-STOP latches the drive_fault."""
    tm = "tm-mixed"
    make_daemon(treadmill_id=tm, drive=WORN)
    async with clinician(broker, tm) as doc:
        await doc.start_running("u-1", program="first_session")
        ok(await doc.command("estop"))
        assert (await doc.event("maintenance_warning"))["kind"] == "emergency"
        await doc.reset_when_allowed()
        await doc.start_running("u-1", program="first_session")
        ok(await doc.command("stop"))
        controlled = await doc.event("stop_checked")
        assert (controlled["kind"], controlled["verdict"]) == ("controlled", "good"), controlled
        await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
        await doc.start_running("u-1", program="first_session")
        ok(await doc.command("estop"))
        faulted = await doc.state(
            lambda s: s["state"] == "fault" and s["stop_watch"]["fault_pending"],
            within=SESSION_WAIT_S,
        )
        assert faulted["latched"]["cause"] == "drive_fault"


@pytest.mark.asyncio
async def test_no_tablet_payload_makes_a_start_a_proof_run(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """Claim 1 over MQTT: on an uncommissioned treadmill, a start that claims to be a proof run
    (the field in every spelling, the commissioning tool's user) is refused, never started."""
    tm = "tm-claims"
    make_daemon(treadmill_id=tm, commissioned=False)
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        for extra in (
            {"proof": True},
            {"proof_run": True},
            {"user": "commissioning", "program": "first_session", "target_mph": 0.8},
            {"user": "commissioning", "proof": True, "cap_s": 180},
        ):
            fields = {"user": "u-1", **extra}
            reply = await doc.command("start_session", **fields)
            assert reply["ok"] is False, (extra, reply)
            assert reply["error"]["code"] in ("preconditions_unmet", "invalid_command"), reply
        state = await doc.until(lambda s: s["state"] == "idle", within=5.0)
        assert state["commissioning"]["current"] is False


@pytest.mark.asyncio
async def test_an_unreadable_commissioning_row_is_no_commissioning_and_no_crash(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """Claim 1, a journal row written by hand while a patient walks (sqlite3 beside the
    daemon): a passed run whose ended_at is text. The session under way goes on and is
    stopped by the clinician; the next daemon on that journal serves the tablet and refuses
    every start (no readable commissioning), rather than crash."""
    tm = "tm-garbage"
    first = make_daemon(treadmill_id=tm)
    async with clinician(broker, tm) as doc:
        await doc.start_running("u-1", program="first_session")
        with closing(sqlite3.connect(_journal_of(broker, tm), timeout=5.0)) as db:
            # For this treadmill and drive: a row of another's would not count at all.
            db.execute(
                "INSERT INTO commissioning (started_at, ended_at, outcome, treadmill, drive)"
                " VALUES (?, 'yesterday', 'passed', ?, 'simulator')",
                (time.time(), tm),
            )
            db.commit()
        ok(await doc.command("stop"))
        await doc.state(lambda s: s["state"] == "idle", within=SESSION_WAIT_S)
    assert first.stop() == 0
    second = make_daemon(treadmill_id=tm, commissioned=False)
    try:
        async with clinician(broker, tm) as doc:
            await doc.until(lambda s: s["stale"] == [], within=10.0)
            refused(await doc.command("start_session", user="u-2"), "preconditions_unmet")
    finally:
        assert second.alive(), second.log_text()[-2000:]
