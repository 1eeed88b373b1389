"""The scenario runner at its edges: steps and checks at the very end of a real-time run, an
event the timeline has no words for, a history the journal cannot hold."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from treadguard.config.loading import load_config
from treadguard.controller.simulation import (
    ScenarioResult,
    SimulationError,
    run_realtime,
    run_virtual,
)
from treadguard.simulator.scenario import load_scenario

ROOT = Path(__file__).resolve().parents[1]
SIM = load_config(ROOT / "config" / "sim.toml")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text, encoding="utf-8")
    return path


# A long history makes the run's set-up (before its first step is scheduled) take a few
# hundredths of a second, which the speed-up turns into most of a scenario second.
WORLD = '[world]\nhistory = { "someone" = 1000 }\n'


def small_journal(tmp_path: Path) -> Path:
    """config/sim.toml with a journal of 0.1 MB."""
    config = tmp_path / "small.toml"
    text = (ROOT / "config" / "sim.toml").read_text(encoding="utf-8")
    text = text.replace('path = "../.run/journal.sqlite"', 'path = "j.sqlite"\nmax_size_mb = 0.1')
    text = text.replace('dir = "programs"', f"dir = '{(ROOT / 'config' / 'programs').as_posix()}'")
    config.write_text(text, encoding="utf-8")
    return config


AT_END = 'name = "t"\nend = 2\n' + WORLD + '[[step]]\nat = 2\nexpect_state = "idle"\n'
STILL_TO_END = (
    'name = "t"\nend = 2\n'
    + WORLD
    + '[[step]]\nat = 0.5\nexpect_state = "idle"\nexpect_still_until = 2\n'
)


@pytest.mark.parametrize("text", [AT_END, STILL_TO_END], ids=["step-at-end", "still-until-end"])
def test_a_step_at_end_passes_in_real_time_as_it_does_on_the_virtual_clock(
    tmp_path: Path, text: str
) -> None:
    """The format allows a step (or its expect_still_until) at ``end`` exactly; the virtual run
    plays it, and so must a real-time one, whose steps count from the run's start (a little
    after its clock's zero): ``end`` counts from there too."""
    path = write(tmp_path, text)
    scenario = load_scenario(path)
    virtual = run_virtual(scenario, str(path), SIM)
    assert virtual.passed, virtual.failures
    realtime: ScenarioResult = asyncio.run(run_realtime(scenario, str(path), SIM, speed=20.0))
    assert realtime.passed, realtime.failures


def test_a_journal_warning_gets_its_timeline_line(tmp_path: Path) -> None:
    """A journal near its limit publishes journal_warning; the scenario's recorder gives it a
    line like every other event (an event it had no words for once failed in the listener)."""
    config = small_journal(tmp_path)
    path = write(
        tmp_path,
        'name = "t"\nconfig = "small.toml"\nend = 2\n[world]\nhistory = { "p-1" = 140 }\n'
        '[expect]\nevents_include = ["journal_warning"]\n',
    )
    result = run_virtual(load_scenario(path), str(path), load_config(config))
    assert result.passed, result.failures
    assert any("journal" in line for line in result.timeline), result.timeline


def test_a_history_the_journal_cannot_hold_is_an_error_not_a_crash(tmp_path: Path) -> None:
    config = small_journal(tmp_path)
    path = write(tmp_path, 'name = "t"\nend = 2\n[world]\nhistory = { "p-1" = 1000 }\n')
    with pytest.raises(SimulationError, match="history"):
        run_virtual(load_scenario(path), str(path), load_config(config))
