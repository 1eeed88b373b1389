"""Which commissioning counts (docs/commissioning.md, "What counts"; H-43, H-42): a run counts
only for the treadmill and the drive it was made on, a run on the simulator only for a
treadmill whose drive is the simulator, a run recorded before treadguard kept what it proved
for none; and of the runs that count, the newest finished one decides, so a failed proof
test takes the treadmill out of service.

Through the real commands (``treadguard commission --simulated`` and ``--status``, ``treadguard
run`` on a Modbus drive), the journal, and the daemon's assembly on the virtual clock."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from tests.clinician import clinician, refused
from tests.daemon_process import PROGRAMS_DIR, ROOT, DaemonProcess, daemon_config, treadguard_cli
from tests.mosquitto import Broker
from treadguard.config.loading import load_config
from treadguard.config.schema import ModbusDriveSection, TrackmasterDriveSection
from treadguard.controller.commission import nominal_proofs
from treadguard.controller.drives import in_process_rig
from treadguard.controller.journal import (
    SIMULATOR_DRIVE,
    Journal,
    Machine,
    ProofRecord,
    drive_identity,
    seed_commissioning,
)
from treadguard.controller.system import System, open_journal
from treadguard.safety.core import STOP_WATCH_FAULT
from treadguard.safety.decisions import Cause, Event, EventType, JsonScalar
from treadguard.safety.stop_baseline import StopKind
from treadguard.simulator.virtual_loop import VirtualLoop

SIM = ROOT / "config" / "sim.toml"
REGISTER_MAP = ROOT / "config" / "drives" / "delta-vfd-e.toml"
DAY = 86_400.0


def _sim_config(path: Path, tm: str, journal: Path, extra: str = "") -> Path:
    """config/sim.toml as a bench's copy: its own treadmill id, pointed at ``journal``."""
    text = SIM.read_text(encoding="utf-8")
    text = text.replace('id = "tm-sim"', f'id = "{tm}"')
    text = text.replace('dir = "programs"', f"dir = '{PROGRAMS_DIR.as_posix()}'")
    text = text.replace('path = "../.run/journal.sqlite"', f"path = '{journal.as_posix()}'")
    path.write_text(text + extra, encoding="utf-8")
    return path


def _proofs() -> list[ProofRecord]:
    return [
        ProofRecord("estop", StopKind.EMERGENCY, True, 0.3, 2.4),
        ProofRecord("grip_left", None, True),
        ProofRecord("grip_right", None, True),
        ProofRecord("grips", StopKind.EMERGENCY, True, 0.5, 1.6),
        ProofRecord("fall", StopKind.EMERGENCY, True, 0.4, 2.0),
        ProofRecord("deadman", None, True, 1.7, 0.45),
        ProofRecord("cap", StopKind.CONTROLLED, True, 2.0, 0.4),
    ]


# ------------------------------------------------------------------ what a run proved


def test_a_drive_is_told_by_its_kind_and_where_it_is_reached() -> None:
    tm = TrackmasterDriveSection(kind="trackmaster", port="/dev/ttyUSB0")
    assert drive_identity(tm) == "trackmaster on /dev/ttyUSB0"
    assert drive_identity(tm.model_copy(update={"baud": 9600})) == drive_identity(tm)
    assert drive_identity(tm.model_copy(update={"port": "/dev/ttyUSB1"})) != drive_identity(tm)
    vfd = ModbusDriveSection(
        kind="modbus", transport="tcp", host="10.0.0.5", mph_per_hz=0.05, device_id=1
    )
    assert "10.0.0.5:502 unit 1" in drive_identity(vfd)
    for other in ({"device_id": 2}, {"tcp_port": 5020}, {"host": "10.0.0.6"}):
        assert drive_identity(vfd.model_copy(update=other)) != drive_identity(vfd), other
    rtu = vfd.model_copy(update={"transport": "rtu", "host": None, "serial_port": "/dev/rs485"})
    assert "rtu /dev/rs485 unit 1" in drive_identity(rtu)


def test_a_run_counts_only_for_the_treadmill_and_drive_it_was_made_on(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite")
    bench = Machine("tm-a", SIMULATOR_DRIVE)
    real = Machine("tm-a", "trackmaster on /dev/ttyUSB0")
    seed_commissioning(journal, 1000.0, _proofs(), machine=bench, simulated=True)
    assert journal.commissioning_status(2000.0, every_days=90, machine=bench).current
    # The simulator's run, read by the real treadmill of the same id.
    status = journal.commissioning_status(2000.0, every_days=90, machine=real)
    assert not status.current
    assert "made on the simulator" in status.detail
    assert journal.commissioned_baselines(2000.0, every_days=90, machine=real) == {}
    # Another treadmill, the same simulated drive.
    other = journal.commissioning_status(
        2000.0, every_days=90, machine=Machine("tm-b", SIMULATOR_DRIVE)
    )
    assert not other.current
    assert "made for treadmill tm-a / drive simulator" in other.detail
    # The real treadmill proven on the machine: it counts for it, not for another port.
    seed_commissioning(journal, 3000.0, _proofs(), machine=real, simulated=False)
    assert journal.commissioning_status(4000.0, every_days=90, machine=real).current
    assert journal.commissioned_baselines(4000.0, every_days=90, machine=real)
    moved = Machine("tm-a", "trackmaster on /dev/ttyUSB1")
    status = journal.commissioning_status(4000.0, every_days=90, machine=moved)
    assert not status.current
    assert "drive trackmaster on /dev/ttyUSB0" in status.detail
    # The bench's simulator counts its guided runs (not simulated) and its simulated ones.
    assert journal.commissioning_status(4000.0, every_days=90, machine=bench).current


def test_a_run_recorded_before_treadguard_kept_what_it_proved_counts_for_none(
    tmp_path: Path,
) -> None:
    """A journal of schema version 5 (no treadmill, no drive on its runs) with a passed run:
    read as it is (`commission --status`) and opened to write (migrated to version 6), it is
    no commissioning, and the detail says one must be run again."""
    path = tmp_path / "j.sqlite"
    journal = Journal.open(path)
    seed_commissioning(journal, time.time() - 60.0, _proofs(), machine=Machine("tm-sim", "x"))
    journal.close()
    with closing(sqlite3.connect(path)) as db:  # as version 5 wrote it
        db.execute("ALTER TABLE commissioning DROP COLUMN treadmill")
        db.execute("ALTER TABLE commissioning DROP COLUMN drive")
        db.execute("PRAGMA user_version = 5")
        db.commit()
    config = _sim_config(tmp_path / "sim.toml", "tm-sim", path)
    status = treadguard_cli("commission", "--status", "--json", "--config", str(config))
    assert status.returncode == 1, status.stdout + status.stderr
    assert "must be run again" in json.loads(status.stdout)["detail"]
    journal = Journal.open(path)  # migrated
    (row,) = journal.commissioning_runs()
    assert (row.outcome, row.treadmill, row.drive) == ("passed", None, None)
    machine = Machine("tm-sim", SIMULATOR_DRIVE)
    detail = journal.commissioning_status(time.time(), every_days=90, machine=machine).detail
    assert "must be run again" in detail
    journal.close()


# ------------------------------------------------------------------ the real commands


@pytest.mark.asyncio
async def test_a_commissioning_on_the_simulator_does_not_put_a_real_treadmill_in_service(
    broker: Broker, tmp_path: Path, modbus_device: str
) -> None:
    """`treadguard commission --simulated` with a bench's simulator configuration pointed at
    the journal of a real treadmill (another id, a Modbus drive): `commission --status` of the
    real treadmill says not current (exit 1) and why, and its daemon refuses a patient's
    start naming it. Before, both took the simulator's run for the treadmill's."""
    journal = tmp_path / "journal.sqlite"
    bench = _sim_config(tmp_path / "bench.toml", "tm-sim-bench", journal)
    done = treadguard_cli(
        "commission", "--simulated", "--technician", "nobody", "--config", str(bench)
    )
    assert done.returncode == 0, done.stdout + done.stderr
    host, _, port = modbus_device.rpartition(":")
    drive = (
        f'kind = "modbus"\ntransport = "tcp"\nhost = "{host}"\ntcp_port = {port}\n'
        f"register_map = '{REGISTER_MAP.as_posix()}'\nmph_per_hz = 0.05"
    )
    real = daemon_config(
        tmp_path, broker.port, treadmill_id="tm-02-room3", sensors="mqtt", drive=drive
    )
    real.write_text(
        real.read_text().replace(
            (tmp_path / "journal-tm-02-room3.sqlite").as_posix(), journal.as_posix()
        )
    )
    status = treadguard_cli("commission", "--status", "--config", str(real))
    assert status.returncode == 1, status.stdout + status.stderr
    assert "made on the simulator" in status.stdout, status.stdout
    # Another bench treadmill's simulator, on the bench's journal: not the bench's run either.
    other = _sim_config(tmp_path / "other.toml", "tm-sim-other", journal)
    status = treadguard_cli("commission", "--status", "--config", str(other))
    assert status.returncode == 1, status.stdout + status.stderr
    assert "made for treadmill tm-sim-bench" in status.stdout, status.stdout
    daemon = DaemonProcess(real, tmp_path / "real.log", commissioned=False)
    daemon.start()
    try:
        async with clinician(broker, "tm-02-room3") as doc:
            state = await doc.state(lambda s: s["speed_mph"] is not None, within=15.0)
            assert state["commissioning"]["current"] is False, state["commissioning"]
            message = refused(
                await doc.command("start_session", user="patient-1"), "preconditions_unmet"
            )
            assert "made on the simulator" in message
    finally:
        daemon.stop()


@pytest.mark.asyncio
async def test_a_failed_proof_test_takes_the_treadmill_out_of_service(
    make_daemon: Callable[..., DaemonProcess], broker: Broker, tmp_path: Path
) -> None:
    """Commissioned; the periodic proof test (`treadguard commission --simulated`) then fails
    its first step: `--status` says not current (exit 1), naming the failed run and its step,
    and the daemon refuses a patient's start with the same words. A run that passes again puts
    the treadmill back in service."""
    tm = "tm-proof-failed"
    journal = broker.workdir / f"journal-{tm}.sqlite"
    good = _sim_config(tmp_path / "good.toml", tm, journal)
    assert treadguard_cli("commission", "--simulated", "--config", str(good)).returncode == 0
    slow = "\n[commissioning]\nmax_emergency_standstill_s = 0.1\n"
    failing = _sim_config(tmp_path / "failing.toml", tm, journal, slow)
    failed = treadguard_cli("commission", "--simulated", "--config", str(failing))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    status = treadguard_cli("commission", "--status", "--config", str(good))
    assert status.returncode == 1, status.stdout + status.stderr
    assert "(no. 2" in status.stdout, status.stdout
    assert "its estop step failed" in status.stdout, status.stdout
    daemon = make_daemon(treadmill_id=tm, commissioned=False)
    async with clinician(broker, tm) as doc:
        await doc.until(lambda s: s["stale"] == [], within=10.0)
        message = refused(await doc.command("start_session", user="u-1"), "preconditions_unmet")
        assert "its estop step failed" in message, message
    assert daemon.stop() == 0  # one process a journal: the next run needs it
    assert treadguard_cli("commission", "--simulated", "--config", str(good)).returncode == 0
    assert treadguard_cli("commission", "--status", "--config", str(good)).returncode == 0


# ------------------------------------------------------------------ the worn brake


def test_a_simulated_run_does_not_clear_a_real_treadmill_s_worn_brake_fault(
    tmp_path: Path,
) -> None:
    """A real treadmill (a Trackmaster) commissioned on the machine, then its worn-brake fault
    journaled; a simulated run into its journal afterwards proves nothing of its brake: the
    daemon's assembly, started, latches the fault again (H-42). A run on the machine clears
    it."""
    sim = load_config(SIM)
    drive = TrackmasterDriveSection(kind="trackmaster", port="/dev/ttyS9")
    loaded = replace(sim, config=sim.config.model_copy(update={"drive": drive}))
    machine = Machine.of(loaded.config)
    path = tmp_path / "j.sqlite"
    now = 1_800_000_000.0
    journal = Journal.open(path)
    seed_commissioning(
        journal, now - 30 * DAY, nominal_proofs(loaded), machine=machine, simulated=False
    )
    fault: dict[str, JsonScalar] = {
        "cause": "drive_fault",
        "detail": f"{STOP_WATCH_FAULT}: the belt stopped too slowly twice in a row",
    }
    journal.record(Event(EventType.FAULT, 0.0, fault), now - 2 * DAY)
    journal.commit()
    seed_commissioning(
        journal,
        now - DAY,
        nominal_proofs(loaded),
        machine=Machine(machine.treadmill, SIMULATOR_DRIVE),
    )
    journal.close()

    def latched_after_start(at: float) -> Cause | None:
        loop = VirtualLoop()
        rig = in_process_rig(sim, loop.time)  # a belt to drive; the configuration is the real one's
        opened = open_journal(path, max_size_mb=64, wall=lambda: at + loop.time())
        system = System(loaded, loop, rig.driver, opened, wall=lambda: at + loop.time())
        try:
            system.start()
            loop.run_until(0.5)
            latch = system.core.latch
            return None if latch is None else latch.cause
        finally:
            system.close()

    assert latched_after_start(now) is Cause.DRIVE_FAULT  # and journaled again, at now
    journal = Journal.open(path)
    run = seed_commissioning(
        journal, now + 60.0, nominal_proofs(loaded), machine=machine, simulated=False
    )
    journal.close()
    assert run > 0
    assert latched_after_start(now + DAY) is None
