"""Scenarios run through the daemon's own assembly (controller/system.py) on the virtual clock:
the journal and the users' history, and the expectations a scenario can state. Each
expectation is shown failing when what it expects does not happen, so none passes for free.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from treadguard.config.loading import load_config
from treadguard.controller.drives import Rig, build_driver, in_process_rig
from treadguard.controller.simulation import (
    ScenarioResult,
    ScenarioRun,
    SimulationError,
    run_virtual,
)
from treadguard.safety.inputs import EStop, StartSession
from treadguard.simulator.scenario import Scenario, load_scenario
from treadguard.simulator.virtual_loop import VirtualLoop

ROOT = Path(__file__).resolve().parents[1]
SIM = load_config(ROOT / "config" / "sim.toml")


def play(tmp_path: Path, text: str) -> ScenarioResult:
    path = tmp_path / "scenario.toml"
    path.write_text(text, encoding="utf-8")
    return run_virtual(load_scenario(path), str(path), SIM)


START = """
[[step]]
at = 1
do = "start_session"
user = "{user}"
program = "{program}"
expect_reply = "{reply}"
"""


@pytest.mark.parametrize(
    ("history", "reply"),
    [
        ("", "preconditions_unmet"),  # no history: first-session rules (SR-7)
        ('[world]\nhistory = { "p-7" = 0 }\n', "preconditions_unmet"),
        ('[world]\nhistory = { "someone-else" = 4 }\n', "preconditions_unmet"),
        ('[world]\nhistory = { "p-7" = 1 }\n', "ok"),
    ],
)
def test_a_later_program_needs_a_session_on_record(
    tmp_path: Path, history: str, reply: str
) -> None:
    text = (
        'name = "t"\nend = 10\n'
        + history
        + START.format(user="p-7", program="reverse_walking", reply=reply)
    )
    result = play(tmp_path, text)
    assert result.passed, result.failures
    assert result.refusals == ([] if reply == "ok" else ["preconditions_unmet"])


def test_a_started_session_is_numbered_after_the_history_in_the_journal(tmp_path: Path) -> None:
    text = 'name = "t"\nend = 10\n[world]\nhistory = { "a" = 2, "b" = 3 }\n' + START.format(
        user="a", program="reverse_walking", reply="ok"
    )
    result = play(tmp_path, text)
    assert result.passed, result.failures
    assert [s.id for s in result.sessions] == ["6"]


def test_the_first_session_program_is_open_to_a_new_user(tmp_path: Path) -> None:
    text = 'name = "t"\nend = 10\n' + START.format(user="new", program="first_session", reply="ok")
    assert play(tmp_path, text).passed


def test_expect_reply_passes_on_any_listed_reply_and_fails_on_another(tmp_path: Path) -> None:
    either = START.format(user="p", program="first_session", reply="ok").replace(
        'expect_reply = "ok"', 'expect_reply = ["not_allowed", "ok"]'
    )
    assert play(tmp_path, 'name = "t"\nend = 5\n' + either).passed
    neither = either.replace('["not_allowed", "ok"]', '["not_allowed", "out_of_range"]')
    result = play(tmp_path, 'name = "t"\nend = 5\n' + neither)
    assert not result.passed
    assert any("not_allowed or out_of_range, got ok" in f for f in result.failures)


def test_belt_still_passes_while_idle_and_fails_once_it_moves(tmp_path: Path) -> None:
    idle = 'name = "t"\nend = 30\n[[step]]\nat = 1\nexpect_still_until = 30\n'
    assert play(tmp_path, idle).passed
    # The same window with a session started in it: the belt starts after the countdown.
    moving = idle + START.format(user="p", program="first_session", reply="ok").replace(
        "at = 1", "at = 2"
    )
    result = play(tmp_path, moving)
    assert not result.passed
    assert any("expected the belt still until 0:30.0" in f for f in result.failures)


def test_belt_still_fails_at_once_on_a_belt_already_moving(tmp_path: Path) -> None:
    text = (
        'name = "t"\nend = 40\n'
        + START.format(user="p", program="first_session", reply="ok")
        + "[[step]]\nat = 20\nexpect_still_until = 25\n"
    )
    result = play(tmp_path, text)
    assert any("0:20.0 expected the belt still, it ran at 0.8" in f for f in result.failures)


def test_a_step_timed_from_an_event_plays_that_long_after_it(tmp_path: Path) -> None:
    text = (
        'name = "t"\nend = 40\n'
        + START.format(user="p", program="first_session", reply="ok")
        + '[[step]]\nat = 20\ndo = "fall"\n'
        # The fall stops with no debounce (SR-5): the estop event is at 20 s.
        + '[[step]]\nafter = "estop"\nat = 0\nexpect_state = "estop"\n'
        + '[[step]]\nafter = "estop"\nat = 0.01\nexpect_speed_mph = [0.7, 0.8]\n'
        + '[[step]]\nafter = "estop"\nat = 5\nexpect_speed_mph = [0, 0]\n'
    )
    result = play(tmp_path, text)
    assert result.passed, result.failures
    # Too early to be stopped: that expectation is checked, and fails.
    early = text.replace("at = 5\nexpect_speed_mph = [0, 0]", "at = 0.1\nexpect_speed_mph = [0, 0]")
    result = play(tmp_path, early)
    assert any("0:00.1 after estop expected belt speed 0-0 mph" in f for f in result.failures)


def test_a_step_whose_event_never_comes_fails_the_run(tmp_path: Path) -> None:
    text = (
        'name = "t"\nend = 20\n'
        + START.format(user="p", program="first_session", reply="ok")
        + '[[step]]\nafter = "estop"\nat = 1\nexpect_state = "estop"\n'
        + '[[step]]\nafter = "belt_started"\nat = 30\nexpect_state = "running"\n'
    )
    result = play(tmp_path, text)
    assert not result.passed
    assert any(
        "step 2 (0:01.0 after estop) was never played: no estop event happened" in f
        for f in result.failures
    ), result.failures
    assert any("step 3" in f and "after the end of the run" in f for f in result.failures)


def test_a_stuck_fall_sensor_reporting_a_fall_stops_the_belt(tmp_path: Path) -> None:
    text = (
        'name = "t"\nend = 40\n'
        + START.format(user="p", program="first_session", reply="ok")
        + '[[step]]\nat = 20\ndo = "sensor_stuck"\nsensor = "fall"\nvalue = true\n'
        + '[[step]]\nat = 30\ndo = "reset"\nexpect_reply = "preconditions_unmet"\n'
        + '[expect]\nestops = ["fall"]\n'
    )
    result = play(tmp_path, text)
    assert result.passed, result.failures


def test_drive_actions_on_a_wire_drive_are_refused_before_the_run(tmp_path: Path) -> None:
    """drive_fault and its kin act on the in-process drive; a run through a wire driver (the
    real Trackmaster driver, built but never started) says so instead of doing nothing."""
    path = tmp_path / "s.toml"
    path.write_text('name = "t"\nend = 5\n[[step]]\nat = 1\ndo = "drive_fault"\n')
    scenario: Scenario = load_scenario(path)
    loop = VirtualLoop()
    inner = in_process_rig(SIM, loop.time)
    trackmaster = load_config(ROOT / "config" / "example-trackmaster.toml")
    wire = build_driver(trackmaster, loop.time, port="/dev/null")
    rig = Rig(belt=inner.belt, driver=wire, unplug=inner.unplug, plug=inner.plug)
    with pytest.raises(SimulationError, match="drive_fault act on the in-process simulated drive"):
        ScenarioRun(scenario, str(path), SIM, loop, rig=rig)


def test_an_estop_the_daemon_decides_holds_the_belt_when_the_core_fails_to_handle_it(
    tmp_path: Path,
) -> None:
    """A second signal's or the shutdown bound's emergency stop goes through
    System.emergency_stop, which never raises: a core that fails on it (planted here) still
    leaves the belt stopped, and held, since that core never heard of the stop."""
    path = tmp_path / "s.toml"
    path.write_text(
        'name = "t"\nend = 60\n' + START.format(user="p", program="first_session", reply="ok")
    )
    loop = VirtualLoop()
    run = ScenarioRun(load_scenario(path), str(path), SIM, loop)
    run.start()
    run.schedule_ticks()
    loop.run_until(30.0)
    assert run.belt.speed_mph > 0.7
    handle = run.core.handle

    def failing(event: object) -> object:
        if isinstance(event, EStop):
            raise RuntimeError("planted: the estop's handling fails")
        return handle(event)  # type: ignore[arg-type]

    run.core.handle = failing  # type: ignore[method-assign,assignment]
    run.system.emergency_stop("second signal")
    assert run.controller.held_stopped is not None
    loop.run_until(45.0)
    run.belt.advance(loop.time())
    assert run.belt.speed_mph == 0.0
    assert run.core.state.value == "fault"  # the held belt disagreed with the running core
    assert run.belt.max_speed_mph < 0.85


@pytest.mark.parametrize("failure", [RuntimeError, asyncio.CancelledError])
def test_a_tablet_estop_whose_handling_fails_in_any_way_holds_the_belt(
    tmp_path: Path, failure: type[BaseException]
) -> None:
    """A tablet's estop whose handling ends in an exception or in a cancellation (which is no
    Exception): the belt is stopped and held, and the failure still reaches the caller."""
    path = tmp_path / "s.toml"
    path.write_text(
        'name = "t"\nend = 60\n' + START.format(user="p", program="first_session", reply="ok")
    )
    loop = VirtualLoop()
    run = ScenarioRun(load_scenario(path), str(path), SIM, loop)
    run.start()
    run.schedule_ticks()
    loop.run_until(30.0)
    handle = run.core.handle

    def failing(event: object) -> object:
        if isinstance(event, EStop):
            raise failure("planted: the estop's handling fails")
        return handle(event)  # type: ignore[arg-type]

    run.core.handle = failing  # type: ignore[method-assign,assignment]
    with pytest.raises(failure):
        run.system.execute(EStop(loop.time()))
    assert run.controller.held_stopped is not None
    loop.run_until(45.0)
    run.belt.advance(loop.time())
    assert run.belt.speed_mph == 0.0


def test_a_start_accepted_and_then_failing_never_moves_the_belt(tmp_path: Path) -> None:
    """A start the core accepts, whose handling then fails (answered internal_error on the
    wire): its countdown would run on and start the belt though the tablet was told it
    failed. The belt is held at 0 instead, and the core, whose belt does not follow, latches
    a fault that a reset clears."""
    path = tmp_path / "s.toml"
    path.write_text('name = "t"\nend = 60\n')
    loop = VirtualLoop()
    run = ScenarioRun(load_scenario(path), str(path), SIM, loop)
    run.start()
    run.schedule_ticks()
    loop.run_until(1.0)
    handle = run.core.handle

    def accepted_then_failing(event: object) -> object:
        decision = handle(event)  # type: ignore[arg-type]
        if isinstance(event, StartSession):
            raise RuntimeError("planted: the start's handling fails after the core took it")
        return decision

    run.core.handle = accepted_then_failing  # type: ignore[method-assign,assignment]
    with pytest.raises(RuntimeError):
        run.system.execute(StartSession(loop.time(), "p", "first_session"))
    run.core.handle = handle  # type: ignore[method-assign]
    loop.run_until(30.0)
    run.belt.advance(loop.time())
    assert run.belt.max_speed_mph == 0.0
    assert run.core.state.value == "fault"
