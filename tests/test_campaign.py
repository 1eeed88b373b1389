"""Randomised whole-system sessions (tests/campaign.py): thousands in CI, judged by an oracle
that reads the driver's calls, the belt's physics and the steps, not the core's state."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings

from tests.campaign import Oracle, describe, run_session, sessions
from treadguard.controller.simulation import ScenarioRun
from treadguard.safety.inputs import FallReading, GripReading
from treadguard.simulator.scenario import Scenario

SESSIONS = int(
    os.environ.get("TREADGUARD_CAMPAIGN_SESSIONS", 1000 if os.environ.get("CI") else 200)
)


@settings(
    max_examples=SESSIONS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(sessions())
def test_a_random_session_keeps_every_safety_rule_an_outsider_can_check(
    scenario: Scenario,
) -> None:
    note(describe(scenario))
    record = run_session(scenario)
    violations = Oracle(record).check()
    for line in record.result.timeline:
        note(line)
    assert not violations, violations


# The oracle's own tests: a defect planted in a run is found, through the same checks a
# campaign session gets (an oracle that cannot fail would pass every session above).


def _scenario(*steps: dict[str, object], end: float = 20.0, **world: object) -> Scenario:
    return Scenario.model_validate(
        {"name": "planted", "end": end, "world": world, "step": list(steps)}
    )


START = {"at": 1.0, "do": "start_session", "user": "p-001"}


def _violations(scenario: Scenario, plant: Callable[[ScenarioRun], None] | None) -> list[str]:
    return Oracle(run_session(scenario, plant)).check()


def _hiding(unsafe: Callable[[GripReading | FallReading], bool]) -> Callable[[ScenarioRun], None]:
    """A sensor path that turns the readings that would stop the belt into safe ones, on
    their way to the core."""

    def plant(run: ScenarioRun) -> None:
        submit = run.system.submit_reading

        def lying(reading: GripReading | FallReading) -> None:
            if unsafe(reading):
                if isinstance(reading, FallReading):
                    reading = replace(reading, fallen=False)
                else:
                    reading = replace(reading, held=True)
            submit(reading)

        run.system.submit_reading = lying  # type: ignore[method-assign]

    return plant


@pytest.mark.parametrize(
    ("steps", "plant", "rule"),
    [
        # A fall the core is never told of: SR-5.
        (
            [START, {"at": 8.0, "do": "fall"}],
            _hiding(lambda r: isinstance(r, FallReading) and r.fallen),
            "SR-5",
        ),
        # Both hands off, the core told they hold on: SR-4.
        (
            [START, {"at": 8.0, "do": "release", "hand": "both"}],
            _hiding(lambda r: isinstance(r, GripReading) and not r.held),
            "SR-4",
        ),
        # A hand off before the start, the core told it holds on: the belt starts, SR-3.
        (
            [{"at": 0.5, "do": "release", "hand": "left"}, START],
            _hiding(lambda r: isinstance(r, GripReading) and not r.held),
            "SR-3",
        ),
    ],
)
def test_the_oracle_finds_a_stop_that_never_came(
    steps: list[dict[str, object]], plant: Callable[[ScenarioRun], None], rule: str
) -> None:
    scenario = _scenario(*steps)
    assert _violations(scenario, None) == []
    found = _violations(scenario, plant)
    assert any(rule in v for v in found), found


def test_the_oracle_finds_a_belt_that_speeds_up_after_a_stop() -> None:
    """The field incident: after the tablet's stop, something asks the drive for more."""
    scenario = _scenario(
        START, {"at": 8.0, "do": "stop"}, {"at": 8.5, "do": "set_speed", "mph": 1.0}
    )

    def plant(run: ScenarioRun) -> None:
        execute = run.system.execute

        def after_a_stop_speeds_up(command: Any, *, proof_run: bool = False) -> Any:
            reply = execute(command, proof_run=proof_run)
            if command.TYPE.value == "set_speed":
                run.driver.command_speed(1.0)
            return reply

        run.system.execute = after_a_stop_speeds_up  # type: ignore[method-assign]

    assert _violations(scenario, None) == []
    found = _violations(scenario, plant)
    assert any("SR-6" in v for v in found), found


def test_the_oracle_finds_a_session_that_outlives_its_tablet() -> None:
    scenario = _scenario(START, {"at": 6.0, "do": "tablet_leaves"}, end=20.0)

    def plant(run: ScenarioRun) -> None:
        run.core.limits = run.core.limits.model_copy(update={"heartbeat_grace_s": 1e6})

    assert _violations(scenario, None) == []
    found = _violations(scenario, plant)
    assert any("SR-12" in v for v in found), found
