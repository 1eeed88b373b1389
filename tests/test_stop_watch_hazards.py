"""Ways a worn brake escapes the stop-quality watch (H-42), or its fault is cleared without the
brake being commissioned again. Each test drives the real part (the safety core against the
simulator's belt physics, the real System playing a scenario) and fails while the hazard is
there. See docs/stop-watch.md for the rules these hold the watch to."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest

from tests.test_stop_watch import BASELINES, CONTROLLED, PROGRAMS, Bench
from tests.test_stop_watch_scenarios import SIM, played
from treadguard.controller.commission import run_simulated
from treadguard.controller.drives import in_process_rig
from treadguard.controller.journal import Journal
from treadguard.controller.system import System, open_journal
from treadguard.safety.core import SafetyCore
from treadguard.safety.decisions import Accepted, Event, EventType, Refused, State
from treadguard.safety.inputs import DriveFailure, DriveFeedback, EStop, Stop, Tick
from treadguard.safety.limits import SafetyLimits
from treadguard.safety.stop_baseline import StopBaseline, StopKind
from treadguard.safety.stop_watch import StopMeasurement
from treadguard.simulator.scenario import ScenarioError, load_scenario
from treadguard.simulator.virtual_loop import VirtualLoop


def _worn_brake_fault(bench: Bench) -> None:
    """Two slow emergency stops in a row: the worn-brake fault is latched."""
    for _ in range(2):
        bench.start()
        bench.estop()
        latch = bench.core.latch
        if latch is not None and latch.cause.value == "remote_estop":
            assert isinstance(bench.reset(), Accepted)
    assert bench.core.state is State.FAULT
    snap = bench.core.snapshot().stop_watch
    assert snap is not None
    assert snap.fault_pending


# ---------------------------------------------------------------- the fault's reset rule


@pytest.mark.parametrize(
    "given",
    [{}, {StopKind.CONTROLLED: CONTROLLED}],
    ids=["no_baselines", "only_the_other_kind"],
)
def test_h42_baselines_without_the_faulted_kind_do_not_clear_a_worn_brake_fault(
    given: dict[StopKind, StopBaseline],
) -> None:
    """The worn-brake fault is reset only after the brake was commissioned again. A call that
    sets no emergency baseline (none at all, or only the controlled one) is not that: it must
    not make the reset acceptable, and the belt must not run again on the worn brake with its
    stops no longer compared."""
    bench = Bench(wear=0.6)
    _worn_brake_fault(bench)
    bench.core.set_stop_baselines(given)
    bench.run(1.0)
    reply = bench.reset()
    assert isinstance(reply, Refused), (
        "the worn-brake fault was reset with no new emergency baseline; the emergency stops "
        "of the same worn brake are no longer compared: "
        f"{bench.core.snapshot().stop_watch}"
    )


def test_h42_system_set_stop_baselines_with_none_keeps_the_worn_brake_fault_pending() -> None:
    """The same through the real System after the shipped worn_brake scenario."""
    run = played("worn_brake.toml")
    assert run.system.stop_watch_state()["fault_pending"] is True
    run.system.set_stop_baselines({})
    assert run.system.stop_watch_state()["fault_pending"] is True


# ---------------------------------------------------------------- a baseline no stop could give


@pytest.mark.parametrize(
    ("standstill_s", "deceleration"),
    [
        (0.25, 1e-6),  # a stop from 0.00000025 mph
        (0.25, 0.04),  # 3.2 mph/s mistyped: a stop from 0.01 mph
        (2.1, 5e-324),  # the smallest float: every expected time is infinite
    ],
)
def test_h42_a_baseline_that_no_commissioned_stop_could_give_is_refused(
    standstill_s: float, deceleration: float
) -> None:
    """Fail closed. A baseline's time and deceleration say from what speed its stop was made
    (their product). A stop from below MIN_MEASURED_MPH is never judged, so no such stop can be
    a yardstick either; yet these are accepted, and against them a brake that has lost 90 % of
    its deceleration is a good one (test below)."""
    with pytest.raises(ValueError, match="emergency"):
        Bench().core.set_stop_baselines(
            {
                **BASELINES,
                StopKind.EMERGENCY: StopBaseline(StopKind.EMERGENCY, standstill_s, deceleration),
            }
        )


def test_h42_a_stop_from_a_crawl_is_refused_as_a_baseline() -> None:
    """Commissioning makes baselines with StopMeasurement.as_baseline: a proof stop from
    0.06 mph (a crawl, below MIN_MEASURED_MPH, one that the watch itself would not judge) must
    not become the yardstick."""
    with pytest.raises(ValueError, match="emergency"):
        StopMeasurement(StopKind.EMERGENCY, 0.06, 0.25).as_baseline()


SCENARIO_TINY_BASELINE = """
name = "A baseline no stop could give hides a brake that has lost 90 % of its deceleration"
end = "1:30"

[world]
history = { "p-101" = 3 }
stop_baselines = { emergency = { standstill_s = 0.25, deceleration_mph_per_s = 0.000001 } }
brake_wear = 0.9

[[step]]
at = 1
do = "start_session"
user = "p-101"
target_mph = 0.8
expect_reply = "ok"

[[step]]
at = 20
do = "estop"

[[step]]
at = 26
do = "reset"
expect_reply = "ok"

[[step]]
at = 30
do = "start_session"
user = "p-101"
target_mph = 0.8
expect_reply = "ok"

[[step]]
at = 50
do = "estop"
"""


def test_h42_a_scenario_baseline_no_stop_could_give_is_refused(tmp_path: Path) -> None:
    """Through the scenario format: a baseline of 0.25 s at 1e-06 mph/s (a proof stop from
    2.5e-07 mph), against which a brake taking 2.7 s to stop from 0.8 mph would not look worn,
    is refused with its field and the reason, and no scenario runs on it."""
    path = tmp_path / "tiny_baseline.toml"
    path.write_text(SCENARIO_TINY_BASELINE, encoding="utf-8")
    with pytest.raises(ScenarioError) as refused:
        load_scenario(path)
    said = str(refused.value)
    assert "world.stop_baselines.emergency" in said, said
    assert "no proof stop is made from outside 0.5-12 mph" in said, said


# ---------------------------------------------------------------- one standstill reading


def test_h42_one_standstill_reading_during_a_stop_does_not_make_a_worn_brake_good() -> None:
    """A stop ends at the first status showing standstill. One status that reads 0 while the
    belt still runs (a flaky speed readback) makes the slow stop of a worn brake a good one,
    and that good stop ends the run of slow stops: the next slow stop only warns again, and
    no fault is ever latched while one such reading falls in every other stop."""
    bench = Bench(wear=0.6)
    bench.start()
    bench.estop()
    assert bench.verdicts() == ["slow"]
    assert isinstance(bench.reset(), Accepted)
    bench.start()
    bench.submit(EStop(bench.t))
    bench.step()
    bench.step()
    assert bench.belt.speed_mph > 0.2  # the worn brake: still well above standstill
    bench.t = round(bench.t + bench.poll_s, 9)
    bench.status(bench.t, 0.0)  # the one reading of 0
    bench.run(3.0)
    assert bench.verdicts()[1] != "good", bench.verdicts()
    latch = bench.core.latch
    assert latch is not None
    assert latch.cause.value == "drive_fault", latch


# ---------------------------------------------------------------- a fault while braking


def test_h42_a_drive_that_reports_a_fault_while_braking_does_not_hide_a_worn_brake() -> None:
    """A stop during which the drive reports a fault (a VFD that trips on its DC bus while it
    brakes, and lets the belt coast) is dropped as "interrupted": it neither counts as slow nor
    ends a run. In an emergency stop the latch is already in place, so the fault adds no latch
    either, and once the drive reports healthy again the reset is accepted. A worn brake whose
    drive flags a fault in every hard stop is then never found, stop after stop, although each
    stop is slower than its baseline by far. A fault while braking is a worse stop, not no
    stop: fail closed."""
    bench = Bench(wear=0.6)
    for _ in range(2):
        bench.start()
        bench.submit(EStop(bench.t))
        for _ in range(4):  # 0.2 s: the drive reports a fault while it brakes
            bench.t = round(bench.t + bench.poll_s, 9)
            bench.submit(
                DriveFeedback(bench.t, bench.belt.host_poll(bench.t), DriveFailure.FAULT, "ov")
            )
            bench.submit(Tick(bench.t))
        bench.run(2.0)  # healthy statuses again, the belt stands
        assert bench.belt.speed_mph == 0.0
        if bench.core.latch is not None and bench.core.latch.cause.value == "remote_estop":
            assert isinstance(bench.reset(), Accepted)
    assert "slow" in bench.verdicts(), bench.verdicts()
    snap = bench.core.snapshot().stop_watch
    assert snap is not None
    assert snap.fault_pending, bench.verdicts()


# ---------------------------------------------------------------- the controlled ramp


def test_h42_a_brake_as_new_under_a_gentler_ramp_is_not_stopped_hard_by_the_watch() -> None:
    """The controlled baseline is ramp-limited (0.38 mph/s under the default 0.4 mph/s ramp).
    A clinic that makes the ramp gentler (``safety.decel_mph_s = 0.2``, allowed: stricter)
    keeps its baselines; then every controlled stop of a brake as new reads slow, and the
    second one, still ramping down with the patient on the belt, is turned into an emergency
    stop (the watch's drive_fault) mid-ramp. Either such a baseline is refused where the ramp
    cannot meet it, or a stop the ramp made slow is not a worn brake: the patient's gentle stop
    must not become a hard one."""
    bench = Bench()
    bench.core = SafetyCore(
        SafetyLimits(decel_mph_s=0.2),
        PROGRAMS,
        default_program="first_session",
        commissioned_until=math.inf,
    )
    try:
        bench.core.set_stop_baselines(BASELINES)
    except ValueError:
        return  # refused: the ramp cannot meet it
    for _ in range(2):
        bench.start(0.8)
        assert isinstance(bench.submit(Stop(bench.t)), Accepted)
        bench.run(6.0)
        assert bench.core.latch is None, (bench.verdicts(), bench.core.latch)
        assert bench.core.state is State.IDLE


# ---------------------------------------------------------------- commissioning clears it


def test_h42_a_brake_fault_on_record_does_not_block_the_commissioning_that_clears_it(
    tmp_path: Path,
) -> None:
    """A worn-brake fault on record is latched again at every start-up until the treadmill is
    commissioned again; the commissioning itself must not be held by it (its proof stops
    would be refused as latched, and the brake could never be proven again). After it passes,
    nothing is restored."""
    path = tmp_path / "journal.sqlite"
    journal = Journal.open(path)
    fault = Event(EventType.FAULT, 0.0, {"cause": "drive_fault", "detail": "stop_watch: slow"})
    journal.record(fault, time.time() - 60.0)
    journal.commit()
    journal.close()

    result = run_simulated(SIM, path)
    assert result.passed, result

    loop = VirtualLoop()
    opened = open_journal(path, max_size_mb=SIM.config.journal.max_size_mb, wall=time.time)
    system = System(SIM, loop, in_process_rig(SIM, loop.time).driver, opened, wall=time.time)
    system.start()
    assert system.core.latch is None
    assert system.stop_watch_state()["fault_pending"] is False
    system.close()
