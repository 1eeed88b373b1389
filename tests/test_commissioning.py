"""Commissioning (docs/commissioning.md): no patient session on a treadmill whose stops have
not been proven on the machine, or not lately.

The rule in the safety core (pure, property-tested over any clock step), the journal's record
and its expiry, the configuration's section, the scenarios, and ``treadguard commission`` end
to end on the simulator, against the real daemon too."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.clinician import clinician, ok, refused, sensor_user
from tests.commission_terminal import ENDED, PROMPT, commission
from tests.daemon_process import ROOT, DaemonProcess, daemon_config, treadguard_cli
from tests.guided_commissioning import (
    RUN_WAIT_S,
    Technician,
    guided_config,
    guided_daemon,
    next_request,
    run_of,
    state_where,
)
from tests.mosquitto import Broker
from tests.test_safety_examples import PROGRAMS_DIR
from treadguard.config.loading import ConfigError, load_config, load_programs
from treadguard.controller.commission import (
    Aborted,
    Act,
    Ask,
    Commissioner,
    GuidedRun,
    ProofStep,
    SimulatedMachine,
    TerminalLines,
    nominal_proofs,
    run_simulated,
)
from treadguard.controller.drives import in_process_rig
from treadguard.controller.journal import (
    DAY_S,
    SIMULATOR_DRIVE,
    CommissioningOutcome,
    Journal,
    Machine,
    ProofRecord,
    seed_commissioning,
)
from treadguard.controller.simulation import run_virtual
from treadguard.controller.system import COMMISSIONING_REFRESH_S, System, open_journal
from treadguard.safety.core import SafetyCore
from treadguard.safety.decisions import ACCEPTED, Accepted, EventType, RefusalCode, Refused
from treadguard.safety.inputs import (
    CommissionConfirm,
    Commissioning,
    DriveFeedback,
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    StartSession,
    Stop,
    Tick,
)
from treadguard.safety.limits import SafetyLimits
from treadguard.safety.stop_baseline import StopKind
from treadguard.simulator.scenario import load_scenario
from treadguard.simulator.virtual_loop import VirtualLoop

SIM = ROOT / "config" / "sim.toml"
SCENARIOS = ROOT / "simulator" / "scenarios"
PROGRAMS = load_programs(PROGRAMS_DIR)
SIM_MACHINE = Machine("tm-sim", SIMULATOR_DRIVE)  # config/sim.toml's treadmill and drive

# ------------------------------------------------------------------------- the core's rule


def _core(until: float | None) -> SafetyCore:
    return SafetyCore(
        SafetyLimits(), PROGRAMS, default_program="first_session", commissioned_until=until
    )


def _ready(core: SafetyCore, t: float) -> None:
    """Every other precondition of a start holds at ``t``: grips held, no fall, the drive
    answering at standstill, the tablet there."""
    core.handle(GripReading(t, Hand.LEFT, True))
    core.handle(GripReading(t, Hand.RIGHT, True))
    core.handle(FallReading(t, False))
    core.handle(DriveFeedback(t, 0.0))
    core.handle(Heartbeat(t))


# A record's expiry as data: on record until some time, none, or not a time at all.
UNTIL = st.one_of(
    st.none(),
    st.floats(min_value=-1e9, max_value=1e9, allow_nan=False),
    st.sampled_from([math.nan, -math.inf, math.inf]),
)
# Time steps of any size: a tick, minutes, the days a record lasts, years.
STEP = st.one_of(
    st.floats(min_value=0.0, max_value=1.0),
    st.floats(min_value=0.0, max_value=1e4),
    st.floats(min_value=0.0, max_value=1e9),
)
ACTION = st.one_of(
    st.tuples(st.just("commissioning"), UNTIL),
    st.tuples(st.just("start"), st.booleans()),  # a patient's start, or a proof run's
)


@settings(max_examples=300, deadline=None)
@given(
    initial=UNTIL,
    plan=st.lists(st.tuples(STEP, ACTION), min_size=1, max_size=25),
)
def test_no_patient_session_starts_without_a_current_commissioning(
    initial: float | None, plan: list[tuple[float, tuple[str, object]]]
) -> None:
    """Whatever the record says and however far the clock moves between inputs: a patient's
    start is accepted exactly when a commissioning is on record whose expiry lies ahead of
    the core's time; a refusal names the commissioning; a proof run's start is never refused
    for it."""
    core = _core(initial)
    t = 0.0
    until = initial if initial is not None and (math.isfinite(initial) or initial > 0) else None
    for step, (kind, value) in plan:
        t += step
        if kind == "commissioning":
            assert value is None or isinstance(value, float)
            core.handle(Commissioning(t, value, "as the journal says"))
            until = value if value is not None and (math.isfinite(value) or value > 0) else None
            continue
        _ready(core, t)
        proof = bool(value)
        decision = core.handle(StartSession(t, "p-1", returning=False, proof=proof))
        current = until is not None and t < until
        started = any(e.type is EventType.SESSION_STARTED for e in decision.events)
        assert started == isinstance(decision.reply, Accepted)
        if proof:
            assert started, decision.reply
        else:
            assert started == current, (t, until, decision.reply)
            if not current:
                assert isinstance(decision.reply, Refused)
                assert decision.reply.code is RefusalCode.PRECONDITIONS_UNMET
                assert "treadguard commission" in decision.reply.message
        assert core.commissioning_current() == current
        core.handle(Stop(t))  # the countdown ends: idle again for the next start
        assert core.session is None


def test_the_expiry_is_an_event_once_at_the_time_it_falls_due() -> None:
    """The core wakes for the expiry (it is its next deadline) and says it once, at the time
    it falls due; a new commissioning's expiry is said again."""
    core = _core(100.0)
    assert core.next_deadline() == 100.0
    expired: list[float] = []
    for t in (50.0, 99.9, 100.0, 100.1, 500.0):
        decision = core.handle(Tick(t))
        expired += [e.t for e in decision.events if e.type is EventType.COMMISSIONING_EXPIRED]
    assert expired == [100.0]
    core.handle(Commissioning(600.0, 1000.0, "passed again"))
    assert core.commissioning_current()
    decision = core.handle(Tick(1000.0))
    assert [e.type for e in decision.events] == [EventType.COMMISSIONING_EXPIRED]


def test_an_expired_record_at_start_up_is_said_at_the_first_input_and_none_is_not() -> None:
    expired = _core(-5.0).handle(Tick(0.0))
    assert [e.type for e in expired.events] == [EventType.COMMISSIONING_EXPIRED]
    assert _core(None).handle(Tick(0.0)).events == ()


# ------------------------------------------------------------------------- the journal


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


def test_a_passed_run_is_current_for_every_days_and_then_expires(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite")
    assert not journal.commissioning_status(1e9, every_days=90, machine=SIM_MACHINE).current
    assert journal.commissioned_baselines(1e9, every_days=90, machine=SIM_MACHINE) == {}
    passed_at = 1_800_000_000.0
    seed_commissioning(journal, passed_at, _proofs(), technician="A. Tech", machine=SIM_MACHINE)
    status = journal.commissioning_status(passed_at + 10.0, every_days=90, machine=SIM_MACHINE)
    assert status.current, status
    assert status.expires_at == passed_at + 90 * DAY_S
    assert journal.commissioning_status(
        passed_at + 90 * DAY_S - 1, every_days=90, machine=SIM_MACHINE
    ).current
    late = journal.commissioning_status(passed_at + 90 * DAY_S, every_days=90, machine=SIM_MACHINE)
    assert not late.current
    assert "expired" in late.detail
    # Fewer days asked for: the same record expires sooner.
    assert not journal.commissioning_status(
        passed_at + 2 * DAY_S, every_days=1, machine=SIM_MACHINE
    ).current
    # A record dated after now is not trusted.
    assert not journal.commissioning_status(
        passed_at - 60.0, every_days=90, machine=SIM_MACHINE
    ).current
    baselines = journal.commissioned_baselines(passed_at + 10.0, every_days=90, machine=SIM_MACHINE)
    assert baselines[StopKind.EMERGENCY].standstill_s == pytest.approx(0.4)
    assert baselines[StopKind.EMERGENCY].deceleration_mph_per_s == pytest.approx(2.0)
    assert baselines[StopKind.CONTROLLED].standstill_s == pytest.approx(2.0)
    assert (
        journal.commissioned_baselines(passed_at + 91 * DAY_S, every_days=90, machine=SIM_MACHINE)
        == {}
    )


TRACKMASTER = Machine("tm-01", "trackmaster on /dev/treadmill")


def test_a_failed_or_aborted_run_proves_nothing_and_is_on_record(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite")
    run = journal.begin_commissioning(1000.0, technician="t", simulated=False, machine=SIM_MACHINE)
    journal.record_proof(run, ProofRecord("estop", StopKind.EMERGENCY, False, 3.5, 0.2), 1010.0)
    journal.end_commissioning(run, 1020.0, CommissioningOutcome.FAILED, "E-STOP too slow")
    status = journal.commissioning_status(2000.0, every_days=90, machine=SIM_MACHINE)
    assert not status.current
    assert "no. 1" in status.detail
    assert "its estop step failed" in status.detail
    # A run cut short (no outcome) proves nothing either.
    journal.begin_commissioning(3000.0, technician="t", simulated=False, machine=SIM_MACHINE)
    assert not journal.commissioning_status(4000.0, every_days=90, machine=SIM_MACHINE).current
    seed_commissioning(journal, 5000.0, _proofs(), machine=SIM_MACHINE)
    assert journal.commissioning_status(5500.0, every_days=90, machine=SIM_MACHINE).current
    assert [r.outcome for r in journal.commissioning_runs()] == ["failed", None, "passed"]


def test_a_failed_proof_test_withdraws_the_pass_before_it_until_one_passes_again(
    tmp_path: Path,
) -> None:
    """A periodic proof test that does not pass takes the treadmill out of service (H-43):
    failed, naming the run and its failed step; given up (q, the tablet's Abort, perhaps as
    the belt failed to stop) or cut short (a signal, a crash); made through another drive path
    of the same treadmill too. Only a run that passes puts it back."""
    journal = Journal.open(tmp_path / "j.sqlite")
    seed_commissioning(journal, 5000.0, _proofs(), machine=SIM_MACHINE)
    again = journal.begin_commissioning(
        6000.0, technician="t", simulated=False, machine=SIM_MACHINE
    )
    journal.record_proof(again, ProofRecord("estop", StopKind.EMERGENCY, True, 0.3, 2.4), 6010.0)
    journal.record_proof(
        again,
        ProofRecord("fall", StopKind.EMERGENCY, False, None, None, "no emergency stop followed"),
        6020.0,
    )
    journal.end_commissioning(
        again, 6100.0, CommissioningOutcome.FAILED, "fall input: no emergency stop followed"
    )
    status = journal.commissioning_status(7000.0, every_days=90, machine=SIM_MACHINE)
    assert not status.current, status
    assert f"no. {again}" in status.detail
    assert "its fall step failed: no emergency stop followed" in status.detail
    assert journal.commissioned_baselines(7000.0, every_days=90, machine=SIM_MACHINE) == {}
    # Given up, or cut short: the failure still stands.
    gave_up = journal.begin_commissioning(
        7100.0, technician="t", simulated=False, machine=SIM_MACHINE
    )
    journal.end_commissioning(gave_up, 7200.0, CommissioningOutcome.ABORTED, "gave up")
    journal.begin_commissioning(7300.0, technician="t", simulated=False, machine=SIM_MACHINE)
    assert (
        "its fall step failed"
        in journal.commissioning_status(7400.0, every_days=90, machine=SIM_MACHINE).detail
    )
    # A failure on another treadmill's record withdraws nothing of this one's.
    other = Machine("tm-other", SIMULATOR_DRIVE)
    seed_commissioning(journal, 8000.0, _proofs(), machine=SIM_MACHINE)
    theirs = journal.begin_commissioning(8100.0, technician="t", simulated=False, machine=other)
    journal.end_commissioning(theirs, 8200.0, CommissioningOutcome.FAILED, "fall input")
    assert journal.commissioning_status(8300.0, every_days=90, machine=SIM_MACHINE).current
    # Given up after a pass: out of service until a run passes again.
    gave_up = journal.begin_commissioning(
        8400.0, technician="t", simulated=False, machine=SIM_MACHINE
    )
    journal.end_commissioning(gave_up, 8500.0, CommissioningOutcome.ABORTED, "q typed")
    status = journal.commissioning_status(8600.0, every_days=90, machine=SIM_MACHINE)
    assert not status.current, status
    assert f"run (no. {gave_up}) was given up" in status.detail, status
    # Cut short after a pass: the same.
    seed_commissioning(journal, 8700.0, _proofs(), machine=SIM_MACHINE)
    cut = journal.begin_commissioning(8800.0, technician="t", simulated=False, machine=SIM_MACHINE)
    status = journal.commissioning_status(8900.0, every_days=90, machine=SIM_MACHINE)
    assert not status.current, status
    assert f"run (no. {cut}) was cut short" in status.detail, status
    # Failed on the same drive under another treadmill id (a typo): withdrawn as well.
    seed_commissioning(journal, 8950.0, _proofs(), machine=TRACKMASTER, simulated=False)
    assert journal.commissioning_status(8960.0, every_days=90, machine=TRACKMASTER).current
    typo = Machine("tm-1", TRACKMASTER.drive)
    mistyped = journal.begin_commissioning(8970.0, technician="t", simulated=False, machine=typo)
    journal.end_commissioning(mistyped, 8980.0, CommissioningOutcome.FAILED, "fall input")
    assert not journal.commissioning_status(8990.0, every_days=90, machine=TRACKMASTER).current
    # Failed through another path to the same treadmill's drive: withdrawn as well.
    seed_commissioning(journal, 9000.0, _proofs(), machine=SIM_MACHINE)
    assert journal.commissioning_status(9050.0, every_days=90, machine=SIM_MACHINE).current
    by_path = Machine(SIM_MACHINE.treadmill, "trackmaster on /dev/ttyUSB0")
    failed = journal.begin_commissioning(9100.0, technician="t", simulated=False, machine=by_path)
    journal.end_commissioning(failed, 9200.0, CommissioningOutcome.FAILED, "fall input")
    status = journal.commissioning_status(9300.0, every_days=90, machine=SIM_MACHINE)
    assert not status.current, status
    assert f"no. {failed}" in status.detail, status


def test_a_journal_from_before_commissioning_gains_its_tables_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    """The migration: a journal file written before the commissioning tables existed is
    read as not commissioned (read-only, as `commission --status` does), and opened for
    writing it gains the tables with its sessions intact."""
    path = tmp_path / "old.sqlite"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(
            "CREATE TABLE sessions (id INTEGER PRIMARY KEY, user TEXT NOT NULL, program TEXT"
            " NOT NULL, cap_s REAL NOT NULL, started_at REAL NOT NULL, ended_at REAL,"
            " end_reason TEXT, belt_moving_s REAL, max_speed_mph REAL);"
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, ts REAL NOT NULL,"
            " type TEXT NOT NULL, session_id INTEGER, fields TEXT NOT NULL);"
            "CREATE TABLE samples (session_id INTEGER NOT NULL, ts REAL NOT NULL,"
            " speed_mph REAL, target_mph REAL);"
            "INSERT INTO sessions VALUES (7, 'p-1', 'first_session', 180, 1.0, 2.0, 'cap',"
            " 170, 0.8);"
        )
        db.commit()
    old = Journal.read_only(path)
    status = old.commissioning_status(1e9, every_days=90, machine=SIM_MACHINE)
    assert not status.current
    assert "cannot be read" in status.detail
    journal = Journal.open(path)
    assert journal.last_session_id() == 7
    seed_commissioning(journal, 1000.0, _proofs(), machine=SIM_MACHINE)
    assert journal.commissioning_status(2000.0, every_days=90, machine=SIM_MACHINE).current


# ------------------------------------------------------------------------- configuration


def _config(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "c.toml"
    text = SIM.read_text(encoding="utf-8").replace(
        'dir = "programs"', f"dir = '{(ROOT / 'config' / 'programs').as_posix()}'"
    )
    path.write_text(text + f"\n[commissioning]\n{section}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("section", "names"),
    [
        ("every_days = 0", "commissioning.every_days"),
        ("every_days = 400", "commissioning.every_days"),
        ("max_emergency_standstill_s = -1", "commissioning.max_emergency_standstill_s"),
        ("proof_mph = 1.5", "commissioning.proof_mph"),
        ("evry_days = 30", "commissioning.evry_days"),
    ],
)
def test_a_bad_commissioning_setting_is_refused_naming_it(
    tmp_path: Path, section: str, names: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, section))
    assert any(names in problem for problem in caught.value.problems), caught.value.problems


def test_the_commissioning_settings_are_read(tmp_path: Path) -> None:
    cfg = load_config(_config(tmp_path, "every_days = 30\nproof_mph = 0.9")).config.commissioning
    assert (cfg.every_days, cfg.proof_mph) == (30, 0.9)


# ------------------------------------------------------------------------- scenarios


def test_the_scenario_of_an_uncommissioned_treadmill_refuses_naming_commissioning() -> None:
    path = SCENARIOS / "uncommissioned_treadmill_refused.toml"
    scenario = load_scenario(path)
    result = run_virtual(scenario, str(path), load_config(SIM))
    assert result.passed, result.failures
    assert result.sessions == []
    assert any("treadguard commission" in line for line in result.timeline), result.timeline


def test_the_same_world_commissioned_starts_the_session() -> None:
    """The control of the scenario above: with a commissioning on record (the default) the
    very same starts are accepted, so the refusal is the commissioning's."""
    path = SCENARIOS / "uncommissioned_treadmill_refused.toml"
    scenario = load_scenario(path)
    world = scenario.world.model_copy(update={"commissioned": True})
    result = run_virtual(scenario.model_copy(update={"world": world}), str(path), load_config(SIM))
    assert not result.passed
    assert result.sessions, "a commissioned treadmill should have started the session"


# ------------------------------------------------------------------------- the command


def _journaled_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "sim.toml"
    text = SIM.read_text(encoding="utf-8")
    text = text.replace('dir = "programs"', f"dir = '{(ROOT / 'config' / 'programs').as_posix()}'")
    text = text.replace(
        'path = "../.run/journal.sqlite"', f"path = '{(tmp_path / 'j.sqlite').as_posix()}'"
    )
    path.write_text(text + extra, encoding="utf-8")
    return path


def test_commission_simulated_passes_records_the_baseline_and_status_says_current(
    tmp_path: Path,
) -> None:
    config = _journaled_config(tmp_path)
    before = treadguard_cli("commission", "--status", "--config", str(config))
    assert before.returncode == 1, before.stdout + before.stderr
    assert "NOT CURRENT" in before.stdout
    run = treadguard_cli(
        "commission", "--simulated", "--technician", "T. Test", "--config", str(config)
    )
    assert run.returncode == 0, run.stdout + run.stderr
    for step in ("E-STOP command", "both grips released", "fall input", "drive deadman", "cap"):
        assert step in run.stdout, run.stdout
    assert "commissioning passed" in run.stdout
    status = treadguard_cli("commission", "--status", "--json", "--config", str(config))
    assert status.returncode == 0, status.stdout + status.stderr
    body = json.loads(status.stdout)
    assert body["current"] is True
    assert set(body["baselines"]) == {"emergency", "controlled"}
    # Measured from the simulated drive: its emergency braking is 3 mph/s, the core's
    # controlled ramp 0.4 mph/s (config/sim.toml), both from 0.8 mph.
    assert 2.0 < body["baselines"]["emergency"]["deceleration_mph_per_s"] < 4.0
    assert 0.2 < body["baselines"]["controlled"]["deceleration_mph_per_s"] < 0.45
    journal = Journal.read_only(tmp_path / "j.sqlite")
    (row,) = journal.commissioning_runs()
    assert (row.outcome, row.technician, row.simulated) == ("passed", "T. Test", True)
    assert [p.step for p in journal.proofs(row.id)] == [s.value for s in ProofStep]
    assert all(p.passed for p in journal.proofs(row.id))


def test_commission_status_of_a_journal_it_cannot_read_says_so_not_that_none_is_on_record(
    tmp_path: Path,
) -> None:
    """A journal there but unreadable (damaged, or another user's) may hold a current
    commissioning: the status is not known, and is never said to be "no commissioning"."""
    config = _journaled_config(tmp_path)
    (tmp_path / "j.sqlite").write_bytes(b"not a database, " * 512)
    status = treadguard_cli("commission", "--status", "--config", str(config))
    assert status.returncode == 1, status.stdout + status.stderr
    first = status.stdout.splitlines()[0]
    assert ": NOT KNOWN: the journal cannot be read (cannot read " in first, status.stdout
    assert "no commissioning on record" not in status.stdout
    (tmp_path / "none").mkdir()
    missing = _journaled_config(tmp_path / "none")
    absent = treadguard_cli("commission", "--status", "--config", str(missing))
    assert absent.returncode == 1, absent.stdout + absent.stderr
    assert ": NOT CURRENT: no commissioning on record (no journal at " in absent.stdout


@pytest.mark.skipif(shutil.which("capsh") is None, reason="needs capsh (Debian's libcap2-bin)")
@pytest.mark.skipif(os.geteuid() != 0, reason="drops root's file capabilities: needs root")
def test_commission_status_with_a_seal_it_may_not_read_is_not_known(tmp_path: Path) -> None:
    """The journal readable but its seal not, by whoever asks (root without its file
    capabilities stands in for a clinic's login): the service reads both, and may well be
    commissioned. The status is not known, never "not current, sessions refused"."""
    config = _journaled_config(tmp_path)
    run = treadguard_cli("commission", "--simulated", "--config", str(config))
    assert run.returncode == 0, run.stdout + run.stderr
    seal = tmp_path / "j.sqlite-commissioning"
    seal.chmod(0)

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        command = shlex.join(
            [sys.executable, "-m", "treadguard.controller.cli", "commission", "--status",
             *extra, "--config", str(config)]
        )  # fmt: skip
        return subprocess.run(
            ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", command],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )

    said = status()
    assert said.returncode == 1, said.stdout + said.stderr
    assert ": NOT KNOWN: " in said.stdout, said.stdout
    assert "Permission denied" in said.stdout, said.stdout
    assert "patient sessions are refused" not in said.stdout, said.stdout
    body = json.loads(status("--json").stdout)
    assert (body["current"], body["known"]) == (False, False), body


def test_commission_status_of_an_expired_record_fails(tmp_path: Path) -> None:
    config = _journaled_config(tmp_path, "\n[commissioning]\nevery_days = 30\n")
    loaded = load_config(config)
    result = run_simulated(loaded, tmp_path / "j.sqlite", wall=lambda: time.time() - 31 * DAY_S)
    assert result.passed, result
    status = treadguard_cli("commission", "--status", "--config", str(config))
    assert status.returncode == 1, status.stdout
    assert "expired" in status.stdout


def test_a_run_that_fails_a_proof_is_journaled_failed_and_proves_nothing(tmp_path: Path) -> None:
    """A drive whose emergency stop is too slow for the bound: the first proof fails, the
    run ends there, failed, and the treadmill stays uncommissioned."""
    config = _journaled_config(tmp_path, "\n[commissioning]\nmax_emergency_standstill_s = 0.1\n")
    loaded = load_config(config)
    result = run_simulated(loaded, tmp_path / "j.sqlite")
    assert result.outcome is CommissioningOutcome.FAILED
    assert [p.step for p in result.proofs] == ["estop"]
    assert "over the bound" in result.detail
    journal = Journal.read_only(tmp_path / "j.sqlite")
    assert not journal.commissioning_status(time.time(), every_days=90, machine=SIM_MACHINE).current
    assert [r.outcome for r in journal.commissioning_runs()] == ["failed"]


class _FallWiredToNothing(SimulatedMachine):
    """A fall input that never reports a fall (wired to the wrong input); what the technician
    does is kept."""

    def __init__(self, loaded: Any, loop: Any) -> None:
        super().__init__(loaded, loop)
        self.done: list[Act] = []

    def perform(self, act: Act) -> float:
        self.done.append(act)
        if act is Act.FALL:
            return self.loop.time()
        return super().perform(act)


def test_a_stop_source_that_does_not_stop_the_belt_fails_its_proof_with_an_estop_at_once(
    tmp_path: Path,
) -> None:
    """The fall input does not stop the belt: the belt is stopped the E-STOP's way at once,
    before anything more is asked of the technician standing on it (not "clear the fall
    input" with the belt still running), and the run ends failed."""
    made: list[_FallWiredToNothing] = []

    def machine(loaded: Any, loop: Any) -> SimulatedMachine:
        made.append(_FallWiredToNothing(loaded, loop))
        return made[-1]

    result = run_simulated(load_config(SIM), None, machine=machine)
    assert result.outcome is CommissioningOutcome.FAILED, result
    fall = next(p for p in result.proofs if p.step == "fall")
    assert not fall.passed
    assert fall.detail == "no emergency stop followed (the belt was stopped with an E-STOP)"
    acts = made[0].done
    assert acts[-1] is Act.FALL, acts  # nothing asked after it
    assert not made[0].rig.belt.moving()


def test_the_seeded_figures_are_those_a_simulated_run_measures(tmp_path: Path) -> None:
    """The journals tests seed (scenarios, test daemons) hold what a real run on the same
    simulated treadmill measures, within a control tick and the drive's lag."""
    loaded = load_config(SIM)
    measured = {p.step: p for p in run_simulated(loaded, None).proofs}
    for seeded in nominal_proofs(loaded):
        real = measured[seeded.step]
        assert (seeded.kind, seeded.passed) == (real.kind, real.passed)
        if seeded.standstill_s is not None:
            assert real.standstill_s == pytest.approx(seeded.standstill_s, abs=0.25), seeded.step


# ------------------------------------------------------------------------- the daemon


@pytest.mark.asyncio
async def test_the_daemon_refuses_until_commissioned_then_starts_and_publishes_it(
    broker: Broker, tmp_path: Path
) -> None:
    """The real daemon on an uncommissioned journal: the state says so and a start is refused
    naming the commissioning. A commissioning cannot run while the daemon holds the journal
    (two processes would number sessions apart); with the daemon stopped `treadguard
    commission --simulated` passes, and the daemon started again publishes it as current and
    starts a session."""
    tm = "tm-commission"
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm)
    daemon = DaemonProcess(config, tmp_path / "d1.log", commissioned=False)
    daemon.start()
    try:
        async with clinician(broker, tm) as doc:
            state = await doc.until(lambda s: s["stale"] == [], within=10.0)
            assert state["commissioning"]["current"] is False
            assert state["commissioning"]["expires_at"] is None
            message = refused(
                await doc.command("start_session", user="u-c1"), "preconditions_unmet"
            )
            assert "treadguard commission" in message
            busy = await asyncio.to_thread(
                treadguard_cli, "commission", "--simulated", "--config", str(config)
            )
            assert busy.returncode == 1, busy.stdout + busy.stderr
            assert "in use by another process" in busy.stdout
    finally:
        daemon.stop()
    run = await asyncio.to_thread(
        treadguard_cli, "commission", "--simulated", "--config", str(config)
    )
    assert run.returncode == 0, run.stdout + run.stderr
    daemon = DaemonProcess(config, tmp_path / "d2.log", commissioned=False)
    daemon.start()
    try:
        async with clinician(broker, tm) as doc:
            # (The first daemon's last state may still be retained: the new one's is awaited.)
            state = await doc.state(lambda s: s["commissioning"]["current"], within=10.0)
            assert state["commissioning"]["expires_at"] > time.time()
            await doc.start_running("u-c1")
    finally:
        daemon.stop()


def test_the_system_sees_a_record_that_appears_or_a_clock_that_was_wrong(tmp_path: Path) -> None:
    """The daemon's assembly reads the record again every COMMISSIONING_REFRESH_S: a record
    dated after the wall clock at start-up (a board without a real-time clock, before NTP)
    counts once the clock is right, without a restart."""
    loaded = load_config(SIM)
    path = tmp_path / "j.sqlite"
    passed_at = 1_800_000_000.0
    seed_commissioning(Journal.open(path), passed_at, _proofs(), machine=SIM_MACHINE)
    loop = VirtualLoop()
    clock_error = [-3600.0]  # the wall clock an hour behind at start-up

    def wall() -> float:
        return passed_at + 60.0 + loop.time() + clock_error[0]

    rig = in_process_rig(loaded, loop.time)
    opened = open_journal(path, max_size_mb=64, wall=wall)
    system = System(loaded, loop, rig.driver, opened, wall=wall)
    system.start()
    loop.run_until(1.0)
    assert not system.core.commissioning_current()
    assert "dated after now" in str(system.commissioning_state()["detail"])
    clock_error[0] = 0.0  # NTP steps the clock
    loop.run_until(COMMISSIONING_REFRESH_S + 1.0)
    assert system.core.commissioning_current()
    assert system.commissioning_state()["current"] is True
    system.close()


def test_make_daemon_journals_hold_a_commissioning(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    daemon = make_daemon(treadmill_id="tm-seeded")
    journal = Journal.read_only(broker.workdir / "journal-tm-seeded.sqlite")
    assert journal.commissioning_status(
        time.time(), every_days=90, machine=Machine("tm-seeded", SIMULATOR_DRIVE)
    ).current
    assert daemon.alive()


def test_a_tablet_start_cannot_claim_to_be_a_proof_run() -> None:
    """Only the commissioning tool starts a proof run on an uncommissioned treadmill: a start
    through System.execute (every tablet command's way) has its proof flag cleared."""
    loaded = load_config(SIM)
    loop = VirtualLoop()
    machine = SimulatedMachine(loaded, loop)

    def wall() -> float:
        return 1_800_000_000.0 + loop.time()

    opened = open_journal(None, max_size_mb=64, wall=wall)
    system = System(loaded, loop, machine.rig.driver, opened, wall=wall)
    system.start()
    machine.attach(system)

    def tick(k: int) -> None:
        system.tick()
        system.execute(Heartbeat(loop.time()))
        loop.call_at((k + 1) * system.period_s, tick, k + 1)

    loop.call_at(0.0, tick, 0)
    loop.run_until(1.0)
    claimed = system.execute(StartSession(loop.time(), "p-1", proof=True))
    assert isinstance(claimed, Refused)
    assert "treadguard commission" in claimed.message
    proof = system.execute(StartSession(loop.time(), "commissioning"), proof_run=True)
    assert isinstance(proof, Accepted), proof


@pytest.mark.asyncio
async def test_the_guided_commissioning_runs_beside_the_daemon_and_fails_a_proof_not_done(
    broker: Broker, tmp_path: Path
) -> None:
    """`treadguard commission` without --simulated: the daemon's whole assembly, the
    technician asked on the terminal (here Enter confirms every request as it is asked). The
    E-STOP is proven through it; the grip sensors are the built-in simulated user, who never
    lets go, so the left grip's proof fails and the run ends there: journaled failed, no
    commissioning."""
    tm = "tm-guided"
    config = daemon_config(broker.workdir, broker.port, treadmill_id=tm, sensors="simulator")
    async with commission(config, tmp_path) as proc:
        asked = 0
        while True:
            at = await proc.until(f"^{PROMPT}|^{ENDED}", 120.0, after=asked)
            if not proc.lines[at].startswith(PROMPT):
                break
            asked = at + 1
            await proc.type("")
        code = await proc.exit_code(30.0)
    assert code == 1, proc.text
    assert "pass E-STOP command" in proc.text, proc.text
    assert "FAIL left grip released" in proc.text, proc.text
    journal = Journal.read_only(broker.workdir / f"journal-{tm}.sqlite")
    (row,) = journal.commissioning_runs()
    assert (row.outcome, row.simulated) == ("failed", False)
    assert [(p.step, p.passed) for p in journal.proofs(row.id)] == [
        ("estop", True),
        ("grip_left", False),
    ]
    assert not journal.commissioning_status(
        time.time(), every_days=90, machine=Machine("tm-guided", SIMULATOR_DRIVE)
    ).current


# ------------------------------------------------------------- the guided run, from the tablet


def test_the_commissioning_commands_are_refused_outside_a_run_naming_why(
    make_daemon: Callable[..., DaemonProcess], broker: Broker
) -> None:
    """A daemon serving patients has no run to confirm or abort: both are refused
    (preconditions_unmet, naming the run), and nothing about the belt changes."""

    async def check() -> None:
        async with clinician(broker, "tm-norun") as doc:
            state = await doc.until(lambda s: s["stale"] == [], within=10.0)
            assert state["commissioning"]["run"] is None
            for kind, fields in (
                ("commission_confirm", {"step": "estop", "ask": "stand_on"}),
                ("commission_abort", {}),
            ):
                message = refused(await doc.command(kind, **fields), "preconditions_unmet")
                assert "no commissioning run is under way" in message
            event = await doc.event("command_refused")
            assert event["command"] == "commission_confirm"
            await doc.start_running("u-norun")  # no latch, no refusal of what follows

    make_daemon(treadmill_id="tm-norun", sensors="simulator")
    asyncio.run(check())


@pytest.mark.asyncio
async def test_the_guided_run_is_confirmed_from_the_tablet_step_by_step_and_passes(
    broker: Broker,
) -> None:
    """`treadguard commission` on the machine, every request answered by the tablet's
    commission_confirm: the state says which step of 7 and what to do; a confirmation for
    another request (a stale or double tap) is refused and the run still asks the same; the
    figures of each passed proof are published; the run passes and is on record."""
    tm = "tm-guided-tablet"
    config = guided_config(broker.workdir, broker.port, tm)
    async with (
        guided_daemon(config) as guided,
        clinician(broker, tm) as doc,
        sensor_user(broker, tm) as user,
    ):
        technician = Technician(guided, user)
        done: set[tuple[str, str]] = set()
        indices = []
        figures = {}
        while True:
            run = await next_request(doc, done)
            if run["outcome"] is not None:
                break
            assert run["of"] == 7
            assert run["prompt"]
            indices.append(run["index"])
            proof = run["last_proof"]
            if proof is not None:
                assert proof["passed"] is True, proof
                figures[proof["step"]] = proof
            if not done:
                # Before anything is confirmed: a tap meant for a later request is not taken.
                stale = await doc.command("commission_confirm", step="grip_left", ask="hold_both")
                assert "was not taken" in refused(stale, "not_allowed")
            await technician.perform(run["ask"])
            ok(await doc.command("commission_confirm", step=run["step"], ask=run["ask"]))
            done.add((run["step"], run["ask"]))
            if run["ask"] == "stand_on":
                # The same confirmation again (a second tap): the run has moved on.
                again = await doc.command("commission_confirm", step="estop", ask="stand_on")
                refused(again, "not_allowed")
        assert run["outcome"] == "passed", run
        assert indices == sorted(indices)
        # Every step but the cap's asks something of the technician (the cap is waited for).
        assert set(indices) == set(range(1, 7))
        assert run["last_proof"]["step"] == "cap"
        assert run["last_proof"]["passed"] is True
        assert {"estop", "grip_left", "grip_right", "grips", "fall"} <= set(figures)
        assert figures["estop"]["standstill_s"] > 0
        result = await guided.ended()
    assert result.passed, result
    journal = Journal.read_only(broker.workdir / f"journal-{tm}.sqlite")
    (row,) = journal.commissioning_runs()
    assert (row.outcome, row.simulated, row.technician) == ("passed", False, "T. Tester")
    assert [p.passed for p in journal.proofs(row.id)] == [True] * 7
    assert journal.commissioning_status(
        time.time(), every_days=90, machine=Machine("tm-guided-tablet", SIMULATOR_DRIVE)
    ).current


@pytest.mark.asyncio
async def test_an_abort_from_the_tablet_stops_the_belt_at_once_and_the_run_is_aborted(
    broker: Broker,
) -> None:
    """commission_abort while the run waits for the belt (coming up to the proof speed, not
    a request of the technician's): an emergency stop at once, and the run journaled as
    aborted, as `q` on the terminal does."""
    tm = "tm-guided-abort"
    config = guided_config(broker.workdir, broker.port, tm)
    async with (
        guided_daemon(config) as guided,
        clinician(broker, tm) as doc,
        sensor_user(broker, tm),
    ):
        run = await next_request(doc, set())
        assert (run["step"], run["ask"], run["index"]) == ("estop", "stand_on", 1)
        ok(await doc.command("commission_confirm", step="estop", ask="stand_on"))

        def moving_up(state: dict[str, Any]) -> bool:
            run = run_of(state)
            speed = state["speed_mph"]
            return (
                run is not None
                and run["waiting"] == "belt"
                and isinstance(speed, float)
                and speed > 0.2
            )

        await state_where(doc, moving_up, RUN_WAIT_S)
        # Nothing to confirm while the run waits for the belt.
        busy = await doc.command("commission_confirm", step="estop", ask="give_estop")
        assert "waiting for" in refused(busy, "not_allowed")
        ok(await doc.command("commission_abort"))
        state = await doc.until(lambda s: s["latched"] is not None, within=2.0)
        assert state["latched"]["cause"] == "remote_estop"
        await doc.until(lambda s: s["speed_mph"] is not None and s["speed_mph"] <= 0.05, within=5.0)
        result = await guided.ended()
    assert result.outcome is CommissioningOutcome.ABORTED
    assert "gave up on the tablet" in result.detail
    journal = Journal.read_only(broker.workdir / f"journal-{tm}.sqlite")
    (row,) = journal.commissioning_runs()
    assert row.outcome == "aborted"
    assert not journal.commissioning_status(
        time.time(), every_days=90, machine=Machine("tm-guided-abort", SIMULATOR_DRIVE)
    ).current


@pytest.mark.asyncio
async def test_the_terminal_and_the_tablet_answer_one_request_whichever_comes_first() -> None:
    """The guided run's requests on the daemon's assembly (the simulated treadmill): the
    tablet confirms while the terminal is still reading; the Enter typed then, for the request
    the tablet answered, answers nothing (the terminal says so), and the next Enter answers the
    next request. A confirmation naming another request is refused and leaves the request
    open; q gives up with an emergency stop, and the tablet's confirm is refused after."""
    loaded = load_config(SIM)
    loop = VirtualLoop()
    machine = SimulatedMachine(loaded, loop)
    opened = open_journal(None, max_size_mb=64, wall=lambda: 1_800_000_000.0 + loop.time())
    system = System(loaded, loop, machine.rig.driver, opened, wall=lambda: 1_800_000_000.0)
    system.start(restore_faults=False)
    read_end, write_end = os.pipe()  # the terminal
    stale_enter = asyncio.Event()

    def echo(line: str) -> None:
        if "press Enter again" in line:
            stale_enter.set()

    def type_line(line: str) -> None:
        os.write(write_end, line.encode() + b"\n")

    commissioner = Commissioner(system, technician="t", simulated=False, echo=echo)
    terminal = TerminalLines(read_end)
    run = GuidedRun(commissioner, loop, started_at=0.0, echo=echo, terminal=terminal)
    system.commissioning_run = run
    commissioner.step = ProofStep.ESTOP
    run.listen()

    async def asked(act: Act) -> asyncio.Task[float]:
        run.show(Ask(act))
        task = asyncio.create_task(run.ask(Ask(act)))
        await asyncio.sleep(0)  # the task takes the request (no wait on time: one turn)
        assert run.as_json()["ask"] == act.value
        return task

    first = await asked(Act.STAND_ON)
    assert system.execute(CommissionConfirm(loop.time(), "estop", "stand_on")) == ACCEPTED
    async with asyncio.timeout(5.0):
        await first
    second = await asked(Act.GIVE_ESTOP)
    wrong = system.execute(CommissionConfirm(loop.time(), "estop", "stand_on"))
    assert isinstance(wrong, Refused)
    assert wrong.code is RefusalCode.NOT_ALLOWED
    type_line("")  # typed for the request the tablet answered
    async with asyncio.timeout(5.0):
        await stale_enter.wait()
    assert not second.done()
    type_line("")
    async with asyncio.timeout(5.0):
        await second
    third = await asked(Act.HOLD_BOTH)
    type_line("q")
    with pytest.raises(Aborted):
        async with asyncio.timeout(5.0):
            await third
    assert system.core.latch is not None
    assert run.as_json()["outcome"] == "aborted"
    late = system.execute(CommissionConfirm(loop.time(), "estop", "hold_both"))
    assert isinstance(late, Refused)
    assert late.code is RefusalCode.PRECONDITIONS_UNMET
    run.stop_listening()
    os.close(write_end)
    os.close(read_end)
    system.close()
