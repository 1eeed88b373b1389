"""The stop-quality watch through the real System (controller/system.py): the shipped
scenarios of a worn brake and a good one, played by the scenario runner on the virtual clock,
with the simulator's belt; the scenario format's baselines and brake wear; the configuration's
margin; sim-device's --brake-wear."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import structlog.testing
from pydantic import ValidationError

from tests.test_config import _treadguard_cmd, assert_refused, check_config, valid_config, write
from treadguard.config.loading import load_config
from treadguard.config.schema import StopWatchSection
from treadguard.controller.drives import in_process_rig
from treadguard.controller.simulation import ScenarioRun, run_virtual
from treadguard.safety.decisions import EventType
from treadguard.safety.stop_baseline import StopBaseline, StopKind
from treadguard.simulator.belt import Belt, BeltParams
from treadguard.simulator.scenario import ScenarioError, load_scenario
from treadguard.simulator.virtual_loop import VirtualLoop

ROOT = Path(__file__).resolve().parents[1]
SIM = load_config(ROOT / "config" / "sim.toml")
SCENARIOS = ROOT / "simulator" / "scenarios"


def played(name: str) -> ScenarioRun:
    """The scenario played to its end, the run kept to look at its events."""
    scenario = load_scenario(SCENARIOS / name)
    loop = VirtualLoop()
    run = ScenarioRun(scenario, name, SIM, loop)
    run.start()
    run.schedule_ticks()
    loop.run_until(run.end_at)
    result = run.finish()
    assert result.passed, result.failures
    return run


def test_a_worn_brake_warns_on_its_first_slow_stop_and_latches_on_its_second() -> None:
    run = played("worn_brake.toml")
    seen = [
        (e.type, e.fields.get("verdict"), e.fields.get("cause"))
        for e in run.events
        if e.type
        in (EventType.STOP_CHECKED, EventType.MAINTENANCE_WARNING, EventType.ESTOP, EventType.FAULT)
    ]
    assert seen == [
        (EventType.ESTOP, None, "remote_estop"),
        (EventType.STOP_CHECKED, "good", None),  # the brake as new
        (EventType.ESTOP, None, "remote_estop"),
        (EventType.STOP_CHECKED, "slow", None),  # worn: the first slow stop
        (EventType.MAINTENANCE_WARNING, None, None),
        (EventType.ESTOP, None, "grip_lost"),
        (EventType.STOP_CHECKED, "slow", None),  # the second in a row
        (EventType.MAINTENANCE_WARNING, None, None),
        (EventType.FAULT, None, "drive_fault"),
    ]
    [fault] = [e for e in run.events if e.type is EventType.FAULT]
    assert str(fault.fields["detail"]).startswith("stop_watch: emergency stop")
    assert "twice in a row" in str(fault.fields["detail"])
    state = run.system.stop_watch_state()
    assert state["fault_pending"] is True
    assert state["emergency"] == {"baseline": True, "slow_in_a_row": 2, "last": "slow"}


def test_a_good_brake_never_warns_over_many_stops_of_both_kinds() -> None:
    run = played("good_brake_many_stops.toml")
    checked = [e for e in run.events if e.type is EventType.STOP_CHECKED]
    verdicts = [(e.fields["kind"], e.fields["verdict"]) for e in checked]
    assert len(verdicts) == 11
    assert {v for _, v in verdicts} == {"good", "below_min_speed"}
    assert {k for k, v in verdicts if v == "good"} == {"emergency", "controlled"}
    assert not [e for e in run.events if e.type is EventType.MAINTENANCE_WARNING]


def test_a_commissioned_treadmill_s_stops_are_the_baselines_a_worn_brake_is_caught_by(
    tmp_path: Path,
) -> None:
    """No stop_baselines in the world: the scenario's commissioning (a passed run on record,
    the default world) gives them, as treadguard commission would on the machine."""
    path = tmp_path / "s.toml"
    path.write_text(
        'name = "t"\nend = 40\n[world]\nbrake_wear = 0.6\nhistory = { "p" = 1 }\n'
        '[[step]]\nat = 1\ndo = "start_session"\nuser = "p"\n'
        '[[step]]\nat = 20\ndo = "estop"\n'
        '[[step]]\nat = 25\ndo = "reset"\n'
        '[[step]]\nat = 26\ndo = "start_session"\nuser = "p"\n'
        '[[step]]\nat = 36\ndo = "estop"\n'
        '[expect]\nevents_include = ["maintenance_warning"]\nfaults = ["drive_fault"]\n',
        encoding="utf-8",
    )
    result = run_virtual(load_scenario(path), str(path), SIM)
    assert result.passed, result.failures
    slow = [line for line in result.timeline if "emergency stop from" in line and "slow" in line]
    assert len(slow) == 2, result.timeline
    assert not [line for line in result.timeline if "no_baseline" in line]


BASELINE = "stop_baselines = {{ emergency = {{ {} }} }}"


@pytest.mark.parametrize(
    ("world", "field"),
    [
        (BASELINE.format("standstill_s = 0, deceleration_mph_per_s = 3"), "emergency.standstill_s"),
        (
            BASELINE.format("standstill_s = 0.3, deceleration_mph_per_s = nan"),
            "emergency.deceleration_mph_per_s",
        ),
        (
            BASELINE.format("standstill_s = inf, deceleration_mph_per_s = 3"),
            "emergency.standstill_s",
        ),
        (BASELINE.format("standstill_s = 0.3"), "emergency.deceleration_mph_per_s"),
        (
            "stop_baselines = { braking = { standstill_s = 0.3, deceleration_mph_per_s = 3 } }",
            "braking[key]",
        ),
        ("brake_wear = 1.0", None),
        ("brake_wear = -0.1", None),
    ],
)
def test_bad_baselines_and_wear_in_a_scenario_are_refused_naming_the_field(
    tmp_path: Path, world: str, field: str | None
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(f'name = "t"\nend = 10\n[world]\n{world}\n', encoding="utf-8")
    where = "world.brake_wear" if field is None else f"world.stop_baselines.{field}"
    with pytest.raises(ScenarioError, match=re.escape(where + ":")):
        load_scenario(path)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ('do = "brake_wear"', "needs wear"),
        ('do = "brake_wear"\nwear = 1.5', "less than 1"),
        ('do = "estop"\nwear = 0.5', "does not take wear"),
    ],
)
def test_the_brake_wear_action_needs_a_wear_below_1(
    tmp_path: Path, step: str, message: str
) -> None:
    path = tmp_path / "s.toml"
    path.write_text(f'name = "t"\nend = 10\n[[step]]\nat = 1\n{step}\n', encoding="utf-8")
    with pytest.raises(ScenarioError, match=message):
        load_scenario(path)


def test_a_worn_belt_brakes_with_what_is_left_of_its_deceleration() -> None:
    for wear, decel in ((0.0, 3.0), (0.6, 1.2)):
        belt = Belt(BeltParams(lag_s=0.0, deadman_s=100.0, brake_wear=wear))
        belt.host_command(0.0, 0.8)
        belt.advance(10.0)
        belt.host_emergency_stop(10.0)
        belt.advance(10.1)
        assert belt.speed_mph == pytest.approx(0.8 - decel * 0.1)
    with pytest.raises(ValueError, match="brake_wear"):
        Belt(BeltParams(brake_wear=1.0))


# --------------------------------------------------------------------------- configuration


def test_the_margin_defaults_to_30_percent_and_reaches_the_core() -> None:
    assert SIM.config.stop_watch.margin_pct == 30.0
    run = ScenarioRun(load_scenario(SCENARIOS / "worn_brake.toml"), "w", SIM, VirtualLoop())
    assert run.core.snapshot().stop_watch.margin == pytest.approx(0.3)  # type: ignore[union-attr]


@pytest.mark.parametrize("margin", [0.0, -5.0, float("nan"), float("inf"), 150.0])
def test_a_margin_that_is_not_finite_and_above_0_is_refused(margin: float) -> None:
    with pytest.raises(ValidationError, match="margin_pct"):
        StopWatchSection(margin_pct=margin)


@pytest.mark.parametrize("value", ["0", "nan", "inf", "-1", "101"])
def test_check_config_names_the_margin(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, valid_config(extra=f"[stop_watch]\nmargin_pct = {value}"))
    found = assert_refused(check_config(path))
    assert "stop_watch.margin_pct" in found, found


def test_check_config_takes_a_margin_from_the_environment(tmp_path: Path) -> None:
    path = write(tmp_path, valid_config())
    found = assert_refused(check_config(path, {"TREADGUARD_STOP_WATCH__MARGIN_PCT": "nan"}))
    assert "stop_watch.margin_pct" in found, found


@pytest.mark.parametrize("value", ["1", "-0.1", "nan", "x"])
def test_sim_device_refuses_a_brake_wear_outside_0_to_1(value: str) -> None:
    proc = subprocess.run(
        [*_treadguard_cmd(), "sim-device", "trackmaster", "--brake-wear", value],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--brake-wear" in proc.stderr


@pytest.mark.parametrize(
    ("config", "standstill_s", "coarse"),
    [
        ("sim.toml", 0.25, False),  # a 50 ms tick against 0.25 s: 20 %, inside 30 %
        ("sim.toml", 0.1, True),  # 50 %
        ("example-trackmaster.toml", 0.31, True),  # its 100 ms poll: 32 %
    ],
)
def test_a_baseline_shorter_than_the_status_period_allows_is_logged(
    config: str, standstill_s: float, coarse: bool
) -> None:
    loaded = load_config(ROOT / "config" / config)
    loop = VirtualLoop()
    # The System with that configuration (a Trackmaster's, say), on a simulated belt.
    run = ScenarioRun(
        load_scenario(SCENARIOS / "worn_brake.toml"),
        "w",
        loaded,
        loop,
        rig=in_process_rig(SIM, loop.time),
    )
    baseline = StopBaseline(StopKind.EMERGENCY, standstill_s, 0.8 / standstill_s)
    with structlog.testing.capture_logs() as logs:
        run.system.set_stop_baselines({StopKind.EMERGENCY: baseline})
    warned = [entry for entry in logs if entry["event"] == "stop_baseline_coarse"]
    assert bool(warned) is coarse, logs
    assert any(entry["event"] == "stop_baselines_set" for entry in logs)
