"""The scenario file format: times, actions, expectations, and errors that name their field."""

from __future__ import annotations

from pathlib import Path

import pytest

from treadguard.safety.decisions import Cause, State
from treadguard.simulator.scenario import Action, ScenarioError, load_scenario

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "simulator" / "scenarios").glob("*.toml"))

HEADER = 'name = "test"\nend = "10:00"\n'


def write(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def step(body: str) -> str:
    return f"\n[[step]]\n{body}\n"


def load_error(path: Path) -> str:
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    message = str(info.value)
    assert str(path) in message, "the error names the file"
    return message


# --------------------------------------------------------------------------- times


@pytest.mark.parametrize(
    ("at", "seconds"),
    [
        ("12", 12.0),
        ("12.5", 12.5),
        ('"12.5"', 12.5),
        ('"0:45"', 45.0),
        ('"2:30"', 150.0),
        ('"2:30.5"', 150.5),
        ('"0:30.01"', 30.01),
        ('"10:00"', 600.0),
        ("0", 0.0),
    ],
)
def test_times_as_seconds_and_minutes_seconds(tmp_path: Path, at: str, seconds: float) -> None:
    path = write(tmp_path, HEADER + step(f'at = {at}\nexpect_state = "idle"'))
    scenario = load_scenario(path)
    assert scenario.step[0].at == pytest.approx(seconds, abs=1e-9)
    assert scenario.end == 600.0


@pytest.mark.parametrize("end", ['"1:00"', "60", "60.0", '"60"'])
def test_end_in_any_time_form(tmp_path: Path, end: str) -> None:
    scenario = load_scenario(write(tmp_path, f'name = "t"\nend = {end}\n'))
    assert scenario.end == 60.0
    assert scenario.step == []


def test_a_step_may_be_at_the_end(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "t"\nend = "1:00"\n' + step('at = 60\nexpect_state = "idle"'))
    assert load_scenario(path).step[0].at == 60.0


def test_actions_parameters_and_expectations_parse(tmp_path: Path) -> None:
    text = (
        HEADER
        + "[world]\nright_hand = false\n"
        + step(
            'at = 1\ndo = "start_session"\nuser = "p-1"\nprogram = "reverse_walking"\n'
            'cap_s = 300\ntarget_mph = 0.9\nexpect_reply = "ok"'
        )
        + step('at = 2\ndo = "set_speed"\nmph = 1.5\nexpect_reply = "out_of_range"')
        + step('at = 3\ndo = "release"\nhand = "both"')
        + step('at = 4\ndo = "sensor_silent"\nsensor = "fall"')
        + step(
            'at = 5\nexpect_state = "estop"\nexpect_latched = "sensor_stale"\n'
            "expect_speed_mph = [0, 0.1]"
        )
        + step('at = 6\ndo = "fall"\nexpect_state = "estop"')
        + '\n[expect]\nfinal_state = "estop"\nestops = ["sensor_stale"]\n'
    )
    scenario = load_scenario(write(tmp_path, text))
    start, speed, release, silent, check, fall = scenario.step
    assert start.do is Action.START_SESSION
    assert (start.user, start.program, start.cap_s, start.target_mph) == (
        "p-1",
        "reverse_walking",
        300,
        0.9,
    )
    assert speed.mph == 1.5
    assert release.hand == "both"
    assert silent.sensor == "fall"
    assert check.do is None
    assert check.expect_state is State.ESTOP
    assert check.expect_latched is Cause.SENSOR_STALE
    assert check.expect_speed_mph == [0, 0.1]
    assert fall.do is Action.FALL
    assert scenario.world.right_hand is False
    assert scenario.world.left_hand is True
    assert scenario.expect.estops == [Cause.SENSOR_STALE]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "names"),
    [
        # unknown action
        ('at = 1\ndo = "jump"', ["step[1].do"]),
        # a missing parameter
        ('at = 1\ndo = "release"', ["step[1]", "release", "hand"]),
        ('at = 1\ndo = "start_session"', ["step[1]", "start_session", "user"]),
        ('at = 1\ndo = "set_speed"', ["step[1]", "set_speed", "mph"]),
        ('at = 1\ndo = "sensor_silent"', ["step[1]", "sensor_silent", "sensor"]),
        # a parameter the action does not take
        ('at = 1\ndo = "fall"\nhand = "left"', ["step[1]", "fall", "hand"]),
        ('at = 1\ndo = "set_speed"\nmph = 1.0\nuser = "p"', ["step[1]", "set_speed", "user"]),
        # a parameter without an action
        ('at = 1\nhand = "left"\nexpect_state = "idle"', ["step[1]", "hand"]),
        # expect_reply on something that is not a tablet command
        ('at = 1\ndo = "release"\nhand = "both"\nexpect_reply = "ok"', ["step[1]", "expect_reply"]),
        ('at = 1\nexpect_reply = "ok"', ["step[1]", "expect_reply"]),
        # a step that neither acts nor expects
        ("at = 1", ["step[1]"]),
        # bad values
        ('at = 1\ndo = "release"\nhand = "middle"', ["step[1].hand"]),
        ('at = 1\nexpect_state = "flying"', ["step[1].expect_state"]),
        ('at = 1\ndo = "stop"\nexpect_reply = "maybe"', ["step[1].expect_reply"]),
        ("at = 1\nexpect_speed_mph = [1.0, 0.5]", ["step[1]", "expect_speed_mph"]),
        ("at = 1\nexpect_speed_mph = [1.0]", ["step[1].expect_speed_mph"]),
        # bad times
        ('at = "1:75"\nexpect_state = "idle"', ["step[1].at", "1:75"]),
        ('at = "soon"\nexpect_state = "idle"', ["step[1].at", "soon"]),
        ('at = "1:2:3"\nexpect_state = "idle"', ["step[1].at"]),
        ('at = -1\nexpect_state = "idle"', ["step[1].at"]),
        ('at = true\nexpect_state = "idle"', ["step[1].at"]),
        ('expect_state = "idle"', ["step[1].at"]),
        # unknown key in a step
        ('at = 1\ndo = "release"\nhnad = "left"', ["step[1].hnad"]),
        # the new actions and expectations
        ('at = 1\ndo = "sensor_stuck"\nsensor = "fall"', ["step[1]", "sensor_stuck", "value"]),
        ('at = 1\ndo = "drive_fault"\ndetail = ""', ["step[1].detail"]),
        ('at = 1\ndo = "drive_ok"\ndetail = "x"', ["step[1]", "drive_ok", "detail"]),
        ("at = 5\nexpect_still_until = 5", ["step[1]", "expect_still_until"]),
        ('at = 1\nafter = "landslide"\nexpect_state = "idle"', ["step[1].after"]),
        ('at = 1\ndo = "stop"\nexpect_reply = []', ["step[1].expect_reply"]),
        ('at = 1\ndo = "stop"\nexpect_reply = ["ok", "maybe"]', ["step[1].expect_reply"]),
    ],
)
def test_bad_step_names_the_step_and_field(tmp_path: Path, body: str, names: list[str]) -> None:
    good = step('at = 0.5\nexpect_state = "idle"')
    message = load_error(write(tmp_path, HEADER + good + step(body)))
    # The bad step is the second one in the file.
    names = [n.replace("step[1]", "step[2]") for n in names]
    for name in names:
        assert name in message, (name, message)
    assert "step[1]" not in message, "the good first step is not blamed"


def test_step_after_end_names_the_step(tmp_path: Path) -> None:
    text = (
        'name = "t"\nend = "1:00"\n'
        + step('at = 30\nexpect_state = "idle"')
        + step('at = "1:00.5"\nexpect_state = "idle"')
    )
    message = load_error(write(tmp_path, text))
    assert "step 2" in message
    assert "after end" in message


def test_belt_still_past_the_end_names_the_step(tmp_path: Path) -> None:
    text = 'name = "t"\nend = "1:00"\n' + step("at = 30\nexpect_still_until = 61")
    message = load_error(write(tmp_path, text))
    assert "step 1" in message
    assert "after end" in message


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('name = "t"\nend = 60\nnmae = "x"\n', "nmae"),
        ('name = "t"\nend = "soon"\n', "end"),
        ('name = "t"\n', "end"),
        ("end = 60\n", "name"),
        ('name = ""\nend = 60\n', "name"),
        ('name = "t"\nend = 60\n[world]\nleft_hand = false\nleft_foot = true\n', "world.left_foot"),
        ('name = "t"\nend = 60\n[expect]\nfinal_sate = "idle"\n', "expect.final_sate"),
        ('name = "t"\nend = 60\n[expect]\nestops = ["tripped"]\n', "expect.estops[1]"),
        ('name = "t"\nend = 60\n[expect]\nfinal_state = "flying"\n', "expect.final_state"),
        ('name = "t"\nend = 60\n[world]\nhistory = { "p-1" = -1 }\n', "world.history.p-1"),
        ('name = "t"\nend = 60\n[world]\nhistory = { "p-1" = "two" }\n', "world.history.p-1"),
        ('name = "t"\nend = 60\n[world]\nhistory = { "" = 2 }\n', "world.history.[key]"),
    ],
)
def test_bad_top_level_names_the_field(tmp_path: Path, text: str, field: str) -> None:
    message = load_error(write(tmp_path, text))
    assert f"{field}:" in message, message


def test_several_errors_are_all_named(tmp_path: Path) -> None:
    text = (
        HEADER
        + step('at = 1\ndo = "jump"')
        + step('at = 2\ndo = "release"')
        + step('at = "later"\nexpect_state = "idle"')
    )
    message = load_error(write(tmp_path, text))
    assert "step[1].do" in message
    assert "step[2]" in message
    assert "step[3].at" in message


def test_invalid_toml(tmp_path: Path) -> None:
    message = load_error(write(tmp_path, 'name = "t"\nend = \n'))
    assert "TOML" in message


def test_missing_file(tmp_path: Path) -> None:
    message = load_error(tmp_path / "nowhere.toml")
    assert "cannot read" in message


# --------------------------------------------------------------------------- shipped files


def test_scenarios_are_shipped() -> None:
    assert len(SHIPPED) >= 10


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_scenario_loads(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name
    assert scenario.step, "a scenario with no steps tests nothing"
    assert all(0 <= s.at <= scenario.end for s in scenario.step)
