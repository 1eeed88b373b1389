"""A commissioning beside the treadguard service, through the real processes: ``treadguard
run`` with a patient's session under way, on a private Mosquitto, and ``treadguard commission``
started without stopping it (docs/commissioning.md, "One process per journal"; H-43).

The process that finds the journal held must leave everything alone: no MQTT connection under
the daemon's client id and state topic (the running daemon would take it for a rival and
emergency-stop the patient's belt), no drive. And while a commissioning runs (the service
stopped), no start but its own proof runs' is taken."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from tests.clinician import clinician, refused, sensor_user
from tests.daemon_process import ROOT, DaemonProcess, daemon_config, treadguard_cli
from tests.guided_commissioning import RUN_WAIT_S, run_of, state_where
from tests.mosquitto import Broker, body
from treadguard.config.loading import load_config
from treadguard.controller.commission import (
    Commissioner,
    SimulatedMachine,
    nominal_proofs,
    play_virtual,
)
from treadguard.controller.journal import Journal, Machine, seed_commissioning
from treadguard.controller.system import System, open_journal
from treadguard.safety.core import STOP_WATCH_FAULT
from treadguard.safety.decisions import Accepted, Event, EventType, JsonScalar, State
from treadguard.safety.inputs import StartSession
from treadguard.simulator.virtual_loop import VirtualLoop

SIM = ROOT / "config" / "sim.toml"
COMMAND_S = 60.0  # the bound of one refused treadguard command (it ends by itself at once)


@pytest.mark.asyncio
@pytest.mark.parametrize("journal", ["same", "another"], ids=["same-journal", "another-journal"])
@pytest.mark.parametrize("command", [("commission",), ("run",)], ids=["commission", "run"])
async def test_a_second_process_for_the_treadmill_leaves_the_patients_belt_alone(
    broker: Broker, tmp_path: Path, command: tuple[str, ...], journal: str
) -> None:
    """The service runs a patient's session; `treadguard commission` (guided) or a second
    `treadguard run` for the same treadmill, on the same configuration or on a copy of it
    naming another journal, is refused (exit 1, saying so) without ever publishing on the
    treadmill's topics or touching that other journal: every state the tablet saw meanwhile
    is the service's, the session runs on and nothing is latched."""
    tm = "tm-beside"
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm)
    service = DaemonProcess(config, tmp_path / "service.log")
    service.start()
    other_journal = tmp_path / "copied" / "journal.sqlite"
    if journal == "another":
        copied = (
            config.read_text(encoding="utf-8")
            .replace(f"journal-{tm}.sqlite'", "copied/journal.sqlite'")
            .replace(f"{broker.workdir.as_posix()}/copied/", f"{tmp_path.as_posix()}/copied/")
        )
        assert "copied/journal.sqlite" in copied
        config = tmp_path / "copied.toml"
        config.write_text(copied, encoding="utf-8")
    p = f"treadmill/{tm}"
    try:
        async with clinician(broker, tm) as doc:
            await doc.until(lambda s: s["stale"] == [], within=10.0)
            running = await doc.start_running("patient-1")
            instance, session = running["instance"], running["session"]["id"]
            doc.tab.drain(f"{p}/state")
            second = await asyncio.to_thread(
                treadguard_cli, *command, "--config", str(config), timeout=COMMAND_S
            )
            said = second.stdout + second.stderr
            assert second.returncode == 1, said
            assert f"another treadguard process speaks for treadmill/{tm}" in said, said
            assert not other_journal.exists()
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


def _worn_brake_on_record(config: Path) -> None:
    """The journal of ``config``'s treadmill: commissioned an hour ago, and since then the
    stop-quality watch's worn-brake fault (two slow emergency stops), as the daemon journals
    it."""
    loaded = load_config(config)
    journal = Journal.open(loaded.resolve(loaded.config.journal.path))
    try:
        now = time.time()
        seed_commissioning(
            journal,
            now - 3600.0,
            nominal_proofs(loaded),
            machine=Machine.of(loaded.config),
            technician="test",
        )
        fault: dict[str, JsonScalar] = {
            "cause": "drive_fault",
            "detail": f"{STOP_WATCH_FAULT}: the belt stopped too slowly twice in a row",
        }
        journal.record(Event(EventType.FAULT, 0.0, fault), now - 60.0)
        journal.commit()
    finally:
        journal.close()


@pytest.mark.asyncio
async def test_no_patient_session_starts_while_a_commissioning_runs_even_on_a_worn_brake(
    broker: Broker,
) -> None:
    """A worn-brake fault on record; the technician starts `treadguard commission` (the
    brake not serviced) and the run waits for them to stand on the belt. Meanwhile the
    clinic's tablet starts a patient's session: refused (not_allowed, a commissioning run is
    under way), the belt stays still, and the refusal is published like the core's."""
    tm = "tm-worn-commission"
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm, sensors="mqtt")
    _worn_brake_on_record(config)
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "treadguard.controller.cli", "commission", "--config", str(config)),
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,  # a terminal that never answers: it waits at "stand on"
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    try:
        async with sensor_user(broker, tm), clinician(broker, tm) as doc:
            waiting = await state_where(
                doc,
                lambda s: (run_of(s) or {}).get("ask") == "stand_on" and s["stale"] == [],
                RUN_WAIT_S,
            )
            assert waiting["state"] == "idle", waiting
            reply = await doc.command("start_session", user="patient-7")
            message = refused(reply, "not_allowed")
            assert "commissioning run is under way" in message
            refusal = await doc.event("command_refused")
            assert refusal["command"] == "start_session", refusal
            seen = [body(m) for m in doc.tab.drain(f"{doc.p}/state")]
            assert all(s["session"] is None for s in seen), seen
    finally:
        assert proc.stdin is not None
        proc.stdin.close()  # the end of input: the run is given up, the daemon ends
        try:
            async with asyncio.timeout(COMMAND_S):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


def test_the_procedure_never_takes_a_session_it_did_not_start_for_a_proof_run() -> None:
    """A session not the run's own (a patient's, started before the run) runs at the proof
    speed when the run comes to its first proof: the run does not take it for its proof run
    (its E-STOP would stop the patient's belt and count that stop as the treadmill's proof); it
    waits for the belt to be free to start its own, and failing that, the proof fails. The
    daemon's assembly and the procedure on the virtual clock, the simulated treadmill."""
    loaded = load_config(SIM)
    loop = VirtualLoop()
    machine = SimulatedMachine(loaded, loop)

    def wall() -> float:
        return 1_800_000_000.0 + loop.time()

    opened = open_journal(None, max_size_mb=64, wall=wall)
    assert opened.journal is not None
    seed_commissioning(
        opened.journal, wall() - 60.0, nominal_proofs(loaded), machine=Machine.of(loaded.config)
    )
    system = System(loaded, loop, machine.rig.driver, opened, wall=wall)
    commissioner = Commissioner(system, technician="t", simulated=True)
    system.start(restore_faults=False)
    machine.attach(system)
    commissioner.heartbeat()

    def tick(k: int) -> None:
        system.tick()
        loop.call_at((k + 1) * system.period_s, tick, k + 1)

    loop.call_at(0.0, tick, 0)
    loop.run_until(1.0)
    proof_mph = loaded.config.commissioning.proof_mph
    patient = system.execute(StartSession(loop.time(), "patient-7", target_mph=proof_mph))
    assert isinstance(patient, Accepted), patient
    snap = system.core.snapshot()
    assert snap.session is not None
    theirs = snap.session.id
    loop.run_until(20.0)  # the countdown and the ramp: the patient's belt at the proof speed
    assert system.core.state is State.RUNNING
    result = play_virtual(commissioner.procedure(), loop, machine.perform, lambda _line: None)
    first = result.proofs[0]
    assert (first.step, first.passed) == ("estop", False), first
    assert "did not start" in first.detail
    snap = system.core.snapshot()
    assert snap.latched is None, snap.latched  # the patient's belt was never stopped by it
    assert snap.session is not None
    assert snap.session.id == theirs
    system.close()


@pytest.mark.asyncio
async def test_a_second_process_on_the_services_drive_under_another_id_is_refused(
    broker: Broker, tmp_path: Path, modbus_device: str
) -> None:
    """The service drives a VFD on Modbus TCP as tm-a; a copy of its configuration under
    another treadmill id (another journal, other topics) but the same drive, run as
    `treadguard run` or `treadguard commission`, would command the same belt, also with the
    drive's host named another way (localhost for 127.0.0.1): refused before it opens
    anything, saying so, and the service is left as it was."""
    host, _, port = modbus_device.rpartition(":")
    drive = (
        f'kind = "modbus"\ntransport = "tcp"\nhost = "{host}"\ntcp_port = {port}\n'
        f"register_map = '{(ROOT / 'config' / 'drives' / 'delta-vfd-e.toml').as_posix()}'\n"
        "mph_per_hz = 0.05"
    )
    service = DaemonProcess(
        daemon_config(tmp_path, broker.port, treadmill_id="tm-a", sensors="mqtt", drive=drive),
        tmp_path / "service.log",
    )
    service.start()
    # The same drive, named as the service names it and by other names for its host: a name,
    # and its IPv4 address written as IPv6 (IPv4-mapped), which reaches the same socket.
    assert host == "127.0.0.1", host
    spelt = drive.replace(f'host = "{host}"', 'host = "localhost"')
    mapped = drive.replace(f'host = "{host}"', f'host = "::ffff:{host}"')
    anywhere = drive.replace(f'host = "{host}"', 'host = "0.0.0.0"')  # this machine, to connect
    same = daemon_config(tmp_path, broker.port, treadmill_id="tm-b", sensors="mqtt", drive=drive)
    other = daemon_config(tmp_path, broker.port, treadmill_id="tm-c", sensors="mqtt", drive=spelt)
    v6 = daemon_config(tmp_path, broker.port, treadmill_id="tm-d", sensors="mqtt", drive=mapped)
    zeros = daemon_config(
        tmp_path, broker.port, treadmill_id="tm-e", sensors="mqtt", drive=anywhere
    )
    tries = (
        (("run",), same), (("commission",), same), (("run",), other), (("run",), v6),
        (("run",), zeros),
    )  # fmt: skip
    try:
        async with clinician(broker, "tm-a") as doc:
            await doc.state(lambda s: s["speed_mph"] is not None, within=15.0)
            for command, config in tries:
                second = await asyncio.to_thread(
                    treadguard_cli, *command, "--config", str(config), timeout=COMMAND_S
                )
                said = second.stdout + second.stderr
                assert second.returncode == 1, said
                assert "another treadguard process drives the modbus tcp" in said, said
            assert not (tmp_path / "journal-tm-b.sqlite").exists()
            assert not (tmp_path / "journal-tm-c.sqlite").exists()
            assert not (tmp_path / "journal-tm-d.sqlite").exists()
            assert not (tmp_path / "journal-tm-e.sqlite").exists()
            # Idle, the service publishes a state only on a change: none came, or none latched.
            seen = [body(m) for m in doc.tab.drain("treadmill/tm-a/state")]
            assert all(s["latched"] is None for s in seen), seen
    finally:
        service.stop()
    assert '"level": "error"' not in service.log_text()
