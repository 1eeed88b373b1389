"""The hazard log's schema and its CI gate (controller/hazard_log.py), on small logs, source
trees and JUnit XML files made here; and the shipped log (docs/hazards.toml) against the tree.
No pytest run is needed: the gate only reads the JUnit XML a run wrote."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from treadguard.controller.cli import build_parser
from treadguard.controller.hazard_log import (
    LOG_PATH,
    MATRIX_PATH,
    SAFETY_DOC_PATH,
    SELECTION_PROPERTY,
    WHOLE_SUITE,
    HazardLog,
    HazardLogError,
    Outcome,
    check_log,
    check_run,
    gate,
    load_log,
    main,
    read_junit,
    render_matrix,
    requirements_in,
    review_findings_in,
)
from treadguard.simulator.trackmaster_device import INJECTION_KINDS

ROOT = Path(__file__).resolve().parents[1]

# A repository in miniature: two requirements, one review finding, a code file and a test file.
SAFETY_DOC = """\
# Safety requirements

| ID | requirement | implemented in | proved by |
|---|---|---|---|
| SR-1 | speed envelope | x | y |
| SR-2 | rate limit | x | y |

### The review's findings and their tests

| # | hazard | SR | test |
|---|---|---|---|
| 1 | a stop that never came | 2 | `test_a.py::test_stop` |

More text; a table after a later heading is not the review's:

## Elsewhere

| 9 | not a finding | - | - |
"""
CODE = "def envelope() -> None: ...\n\nclass Ramp:\n    def rate(self) -> None: ...\n"
TESTS = """\
import pytest

def test_band() -> None: ...

def test_stop() -> None: ...

@pytest.mark.parametrize("x", [1, 2])
def test_ramp(x: int) -> None: ...
"""


def _log_data() -> dict[str, Any]:
    return {
        "requirement": {
            "SR-1": {"title": "speed envelope", "code": ["safety/core.py::envelope"]},
            "SR-2": {"title": "rate limit", "code": ["safety/core.py::Ramp::rate", "safety"]},
        },
        "hardware": {"HW-STOP": {"title": "the stop button", "clinic_keeps": "within reach"}},
        "fault": {"tm-garbage": {"device": "Trackmaster", "inject": "--inject garbage"}},
        "incident": {"restart": {"what": "a treadmill that restarted after STOP"}},
        "hazard": [
            {
                "id": "H-01",
                "title": "Belt too fast",
                "patient_meets": "a belt above the band",
                "causes": [{"kind": "operator", "what": "asks for 2 mph"}],
                "before": {"severity": "critical", "likelihood": "occasional"},
                "after": {"severity": "critical", "likelihood": "remote"},
                "controls": ["SR-1", "HW-STOP"],
                "verification": ["tests/test_a.py::test_band"],
                "incidents": ["restart"],
            },
            {
                "id": "H-02",
                "title": "Stop delayed",
                "patient_meets": "a belt that stops late",
                "causes": [{"kind": "drive", "what": "answers garbage"}],
                "before": {"severity": "serious", "likelihood": "probable"},
                "after": {"severity": "serious", "likelihood": "remote"},
                "controls": ["SR-2"],
                "verification": ["tests/test_a.py::test_stop", "tests/test_a.py::test_ramp"],
                "review": [1],
                "faults": ["tm-garbage"],
            },
        ],
    }


LOG_TOML = """\
[requirement.SR-1]
title = "speed envelope"
code = ["safety/core.py::envelope"]

[requirement.SR-2]
title = "rate limit"
code = ["safety/core.py::Ramp::rate", "safety"]

[hardware.HW-STOP]
title = "the stop button"
clinic_keeps = "within reach"

[fault.tm-garbage]
device = "Trackmaster"
inject = "--inject garbage"

[incident.restart]
what = "a treadmill that restarted after STOP"

[[hazard]]
id = "H-01"
title = "Belt too fast"
patient_meets = "a belt above the band"
causes = [{ kind = "operator", what = "asks for 2 mph" }]
before = { severity = "critical", likelihood = "occasional" }
after = { severity = "critical", likelihood = "remote" }
controls = ["SR-1", "HW-STOP"]
verification = ["tests/test_a.py::test_band"]
incidents = ["restart"]

[[hazard]]
id = "H-02"
title = "Stop delayed"
patient_meets = "a belt that stops late"
causes = [{ kind = "drive", what = "answers garbage" }]
before = { severity = "serious", likelihood = "probable" }
after = { severity = "serious", likelihood = "remote" }
controls = ["SR-2"]
verification = ["tests/test_a.py::test_stop", "tests/test_a.py::test_ramp"]
review = [1]
faults = ["tm-garbage"]
"""

ALL_PASS = [
    ("tests.test_a", "test_band", "passed"),
    ("tests.test_a", "test_stop", "passed"),
    ("tests.test_a", "test_ramp[1]", "passed"),
    ("tests.test_a", "test_ramp[2]", "passed"),
]


def junit_xml(cases: list[tuple[str, str, str]], selection: str | None = WHOLE_SUITE) -> str:
    """A JUnit XML file as pytest writes it (xunit2): one testcase per (classname, name,
    outcome), a failure, error or skipped child for those outcomes; and, unless None, the
    selection the run was given (tests/conftest.py's property)."""
    props = ""
    if selection is not None:
        props = (
            f'<properties><property name="{SELECTION_PROPERTY}" value="{selection}" /></properties>'
        )
    body = [props]
    for classname, name, outcome in cases:
        child = {
            "passed": "",
            "failed": '<failure message="assert 1 == 2">assert 1 == 2</failure>',
            "error": '<error message="failed on teardown">boom</error>',
            "skipped": '<skipped type="pytest.skip" message="no broker">no broker</skipped>',
        }[outcome]
        body.append(
            f'<testcase classname="{classname}" name="{name}" time="0.01">{child}</testcase>'
        )
    return (
        '<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" '
        f'errors="0" failures="0" skipped="0" tests="{len(cases)}">{"".join(body)}'
        "</testsuite></testsuites>"
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "docs").mkdir()
    (tmp_path / SAFETY_DOC_PATH).write_text(SAFETY_DOC)
    (tmp_path / "safety").mkdir()
    (tmp_path / "safety" / "core.py").write_text(CODE)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_a.py").write_text(TESTS)
    (tmp_path / LOG_PATH).write_text(LOG_TOML)
    (tmp_path / MATRIX_PATH).write_text(render_matrix(load_log(tmp_path / LOG_PATH)))
    return tmp_path


def write_junit(
    path: Path, cases: list[tuple[str, str, str]], selection: str | None = WHOLE_SUITE
) -> Path:
    path.write_text(junit_xml(cases, selection))
    return path


def messages(problems: list[Any]) -> list[str]:
    return [str(p) for p in problems]


# --------------------------------------------------------------------------- the schema


def test_the_miniature_log_checks_out(repo: Path) -> None:
    junit = write_junit(repo / "junit.xml", ALL_PASS)
    problems, count = gate(repo, junit)
    assert messages(problems) == []
    assert count == 2


def test_the_log_and_the_toml_say_the_same() -> None:
    """The dict the checks below start from is the TOML the gate tests read."""
    import tomllib

    assert HazardLog.model_validate(tomllib.loads(LOG_TOML)) == HazardLog.model_validate(
        _log_data()
    )


def _critical_left_occasional(data: dict[str, Any]) -> None:
    data["hazard"][0]["before"]["likelihood"] = "frequent"
    data["hazard"][0]["after"]["likelihood"] = "occasional"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda d: d["hazard"][0].update(controls=["SR-x"]), "controls"),
        (lambda d: d["hazard"][0].update(verification=["test_a.py::test_band"]), "verification"),
        (lambda d: d["hazard"][0].update(verification=["tests/test_a.py"]), "verification"),
        (lambda d: d["hazard"][0].update(id="hazard one"), "id"),
        (lambda d: d["hazard"][0]["before"].update(severity="deadly"), "severity"),
        (lambda d: d["hazard"][0]["causes"][0].update(kind="gremlins"), "kind"),
        (lambda d: d["hazard"][0].update(causes=[]), "causes"),
        (lambda d: d["hazard"][0].update(severity="critical"), "severity"),  # unknown key
        (lambda d: d["hazard"][1].update(id="H-01"), "H-01 is used twice"),
        # Control makes a risk no worse, and leaves it acceptable.
        (
            lambda d: d["hazard"][0]["after"].update(likelihood="probable"),
            "above the risk before",
        ),
        (_critical_left_occasional, "not acceptable"),
    ],
)
def test_the_schema_refuses(change: Any, says: str) -> None:
    data = copy.deepcopy(_log_data())
    change(data)
    with pytest.raises(ValidationError, match=says):
        HazardLog.model_validate(data)


def test_a_log_that_does_not_fit_the_schema_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "hazards.toml"
    path.write_text(LOG_TOML.replace('likelihood = "remote"', 'likelihood = "rare"', 1))
    with pytest.raises(HazardLogError, match=r"hazard\.0\.after\.likelihood"):
        load_log(path)
    path.write_text("[[hazard]\n")
    with pytest.raises(HazardLogError, match=r"hazards\.toml"):
        load_log(path)


# --------------------------------------------------------------------------- the log's checks


def check(repo: Path, data: dict[str, Any], doc: str = SAFETY_DOC) -> list[str]:
    return messages(check_log(HazardLog.model_validate(data), doc, repo))


def test_a_hazard_without_a_control_or_a_test_is_named(repo: Path) -> None:
    data = _log_data()
    data["hazard"][1]["controls"] = []
    data["hazard"][0]["verification"] = []
    got = check(repo, data)
    assert "H-02: has no control" in got
    assert "H-01: has no verification (no test)" in got
    assert "SR-2 is a control of no hazard" in got  # H-02 was its only hazard


def test_a_test_that_does_not_exist_is_named_with_its_hazard(repo: Path) -> None:
    data = _log_data()
    data["hazard"][0]["verification"] = [
        "tests/test_a.py::test_bnad",
        "tests/test_gone.py::test_band",
        "tests/test_a.py::test_ramp[3]",  # a parametrization: only its function is checked here
    ]
    assert check(repo, data) == [
        "H-01: test tests/test_a.py::test_bnad does not exist: "
        "tests/test_a.py defines no test_bnad",
        "H-01: test tests/test_gone.py::test_band does not exist: "
        "tests/test_gone.py does not exist",
    ]


def test_a_requirement_missing_from_the_log_or_from_every_hazard_is_named(repo: Path) -> None:
    doc = SAFETY_DOC.replace(
        "| SR-2 | rate limit | x | y |", "| SR-2 | x | y | z |\n| SR-3 | x | y | z |"
    )
    assert check(repo, _log_data(), doc) == [
        "SR-3 of docs/safety.md has no [requirement.SR-3]",
        "SR-3 is a control of no hazard",
    ]
    data = _log_data()
    data["hazard"][0]["controls"] = ["SR-2", "HW-STOP"]
    assert check(repo, data) == ["SR-1 is a control of no hazard"]


def test_a_control_or_code_the_log_does_not_define_is_named(repo: Path) -> None:
    data = _log_data()
    data["hazard"][0]["controls"] = ["SR-1", "SR-9", "HW-KEY", "HW-STOP"]
    data["requirement"]["SR-1"]["code"] = ["safety/core.py::clamp", "safety/gone.py"]
    data["requirement"]["SR-4"] = {"title": "grip", "code": ["safety"]}
    assert check(repo, data) == [
        "[requirement.SR-4] is not in docs/safety.md's table",
        "SR-1's code safety/core.py::clamp: safety/core.py defines no clamp",
        "SR-1's code safety/gone.py: safety/gone.py does not exist",
        "H-01: names the control SR-9, which the log defines not",
        "H-01: names the control HW-KEY, which the log defines not",
    ]


def test_every_finding_fault_and_incident_must_be_covered(repo: Path) -> None:
    data = _log_data()
    data["hazard"][1]["review"] = [2]
    data["hazard"][1]["faults"] = ["tm-silent"]
    data["hazard"][0]["incidents"] = []
    assert check(repo, data) == [
        "H-02: names the fault tm-silent, which [fault] has not",
        "review finding 1 is covered by no hazard",
        "H-02: cites review finding 2, not in docs/safety.md",
        "fault tm-garbage is covered by no hazard",
        "incident restart is covered by no hazard",
    ]


def test_the_review_findings_are_read_from_their_table_only() -> None:
    assert review_findings_in(SAFETY_DOC) == [1]
    assert requirements_in(SAFETY_DOC) == ["SR-1", "SR-2"]
    assert review_findings_in("# no review here\n| 1 | x |\n") == []


# --------------------------------------------------------------------------- this run's tests


def test_a_run_given_a_selection_is_refused_whatever_its_tests_did(repo: Path) -> None:
    """A reference without a parametrization id stands for every parametrization; the XML of
    a run given a selection (here one parametrization of test_ramp deselected, -k) cannot tell
    which it left out, so the gate refuses that run, however well its tests did."""
    one_ramp = [c for c in ALL_PASS if c[1] != "test_ramp[2]"]
    assert run_problems(repo, one_ramp) == []  # what the XML alone would let through
    junit = write_junit(repo / "junit.xml", one_ramp, selection="-k 'not ramp and 2'")
    (problem,) = messages(gate(repo, junit)[0])
    assert "given a selection of the suite (-k 'not ramp and 2')" in problem
    assert "whole suite's run only" in problem


def test_a_run_whose_xml_does_not_say_what_it_was_given_is_refused(repo: Path) -> None:
    junit = write_junit(repo / "junit.xml", ALL_PASS, selection=None)
    (problem,) = messages(gate(repo, junit)[0])
    assert "does not say whether the run was the whole suite" in problem


def _config(args: list[str] | None = None, **options: Any) -> Any:
    """What run_selection reads of pytest's config: the paths given (None: the testpaths)
    and the options."""
    defaults: dict[str, Any] = {
        "keyword": "",
        "markexpr": "",
        "deselect": [],
        "ignore": [],
        "ignore_glob": [],
        "lf": False,
        "stepwise": False,
        "collectonly": False,
        "maxfail": 0,
    }
    return SimpleNamespace(
        option=SimpleNamespace(**{**defaults, **options}),
        args_source=pytest.Config.ArgsSource.TESTPATHS
        if args is None
        else pytest.Config.ArgsSource.ARGS,
        args=args if args is not None else ["tests"],
        rootpath=ROOT,
        invocation_params=SimpleNamespace(dir=ROOT),
        getini=lambda name: ["tests"],
    )


@pytest.mark.parametrize(
    ("config", "said"),
    [
        pytest.param(_config(), WHOLE_SUITE, id="whole"),
        pytest.param(_config(["tests"]), WHOLE_SUITE, id="tests-named"),
        pytest.param(_config(["tests/test_a.py"]), "paths tests/test_a.py", id="a-file"),
        pytest.param(_config(["tests/test_a.py::test_x"]), "paths tests/test_a.py::", id="id"),
        pytest.param(_config(keyword="not ramp"), "-k 'not ramp'", id="k"),
        pytest.param(_config(markexpr="slow"), "-m 'slow'", id="m"),
        pytest.param(_config(deselect=["tests/test_a.py::t[1]"]), "--deselect", id="deselect"),
        pytest.param(_config(ignore=["tests/test_a.py"]), "--ignore", id="ignore"),
        pytest.param(_config(lf=True), "--last-failed", id="lf"),
        pytest.param(_config(maxfail=1), "--maxfail 1", id="x"),
    ],
)
def test_the_suite_says_in_its_junit_what_its_run_was_given(config: Any, said: str) -> None:
    """tests/conftest.py's run_selection: WHOLE_SUITE only for a run of the whole suite."""
    from tests.conftest import run_selection

    if said == WHOLE_SUITE:
        assert run_selection(config) == WHOLE_SUITE
    else:
        assert said in run_selection(config)


def run_problems(repo: Path, cases: list[tuple[str, str, str]]) -> list[str]:
    junit = write_junit(repo / "junit.xml", cases)
    return messages(check_run(load_log(repo / LOG_PATH), read_junit(junit)))


def test_a_test_that_failed_in_this_run_is_named_with_its_hazard(repo: Path) -> None:
    cases = [c if c[1] != "test_stop" else (c[0], c[1], "failed") for c in ALL_PASS]
    assert run_problems(repo, cases) == [
        "H-02: test tests/test_a.py::test_stop did not pass: test_stop failed"
    ]


def test_one_failed_or_skipped_parametrization_fails_the_reference(repo: Path) -> None:
    cases = [*ALL_PASS[:2], ("tests.test_a", "test_ramp[1]", "skipped")]
    cases.append(("tests.test_a", "test_ramp[2]", "error"))
    assert run_problems(repo, cases) == [
        "H-02: test tests/test_a.py::test_ramp did not pass: test_ramp[1] skipped, "
        "test_ramp[2] error"
    ]


def test_a_test_that_did_not_run_is_named(repo: Path) -> None:
    # Deselected, or its module failed to import: absent from the XML.
    assert run_problems(repo, ALL_PASS[1:]) == [
        "H-01: test tests/test_a.py::test_band did not run in this run"
    ]
    # Another module's test of the same name is not it.
    other = [("tests.test_b", "test_band", "passed"), *ALL_PASS[1:]]
    assert run_problems(repo, other) == [
        "H-01: test tests/test_a.py::test_band did not run in this run"
    ]


def test_a_reference_to_one_parametrization_needs_only_that_one(repo: Path) -> None:
    text = (
        (repo / LOG_PATH)
        .read_text()
        .replace('"tests/test_a.py::test_ramp"]', '"tests/test_a.py::test_ramp[2]"]')
    )
    (repo / LOG_PATH).write_text(text)
    cases = [*ALL_PASS[:2], ("tests.test_a", "test_ramp[1]", "failed")]
    cases.append(("tests.test_a", "test_ramp[2]", "passed"))
    assert run_problems(repo, cases) == []
    # A prefix of a name is not a parametrization of it.
    assert run_problems(repo, [*ALL_PASS[:2], ("tests.test_a", "test_ramp[22]", "passed")]) == [
        "H-02: test tests/test_a.py::test_ramp[2] did not run in this run"
    ]


def test_a_teardown_error_after_a_pass_counts_as_an_error(tmp_path: Path) -> None:
    # pytest reports a test that passed and then failed in teardown as two testcase entries.
    junit = write_junit(
        tmp_path / "j.xml",
        [("tests.test_a", "test_band", "passed"), ("tests.test_a", "test_band", "error")],
    )
    assert read_junit(junit) == {("tests.test_a", "test_band"): Outcome.ERROR}


def test_a_missing_or_broken_junit_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HazardLogError, match="cannot read the JUnit XML"):
        read_junit(tmp_path / "absent.xml")
    (tmp_path / "cut.xml").write_text("<testsuites><testsuite>")
    with pytest.raises(HazardLogError, match="cannot read the JUnit XML"):
        read_junit(tmp_path / "cut.xml")


# --------------------------------------------------------------------------- the matrix


def test_a_matrix_that_drifted_from_the_log_fails_and_is_rewritten(repo: Path) -> None:
    junit = write_junit(repo / "junit.xml", ALL_PASS)
    fresh = (repo / MATRIX_PATH).read_text()
    (repo / MATRIX_PATH).write_text(fresh.replace("Belt too fast", "Belt fast"))
    problems, _ = gate(repo, junit, write=False)
    assert messages(problems) == [f"{MATRIX_PATH} is not the matrix the log generates"]
    assert (repo / MATRIX_PATH).read_text() != fresh
    problems, _ = gate(repo, junit)
    assert messages(problems) == [
        f"{MATRIX_PATH} is not the matrix the log generates; rewritten, commit it"
    ]
    assert (repo / MATRIX_PATH).read_text() == fresh
    assert gate(repo, junit)[0] == []


def test_the_matrix_traces_each_hazard_to_its_requirements_code_and_tests(repo: Path) -> None:
    matrix = (repo / MATRIX_PATH).read_text()
    h2 = matrix[matrix.index("### H-02") :]
    h2 = h2[: h2.index("\n## ")]
    assert "| SR-2 | rate limit | `safety/core.py::Ramp::rate`<br>`safety` |" in h2
    assert "- `tests/test_a.py::test_stop`" in h2
    assert "review finding 1" in h2
    assert "fault `tm-garbage`" in h2
    assert "| HW-STOP | the stop button | kept by the clinic: within reach |" in matrix


# --------------------------------------------------------------------------- the command


def test_the_command_names_the_hazard_and_the_test_and_exits_1(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = [c if c[1] != "test_band" else (c[0], c[1], "failed") for c in ALL_PASS]
    junit = write_junit(repo / "junit.xml", cases)
    assert main(["--root", str(repo), "--junit", str(junit)]) == 1
    err = capsys.readouterr().err
    assert "H-01: test tests/test_a.py::test_band did not pass: test_band failed" in err


def test_the_command_reads_the_runs_junit_file_by_default(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--root", str(repo)]) == 1
    assert "cannot read the JUnit XML" in capsys.readouterr().err
    (repo / ".run").mkdir()
    write_junit(repo / ".run" / "junit.xml", ALL_PASS)
    assert main(["--root", str(repo)]) == 0
    assert "2 hazards" in capsys.readouterr().out
    assert main(["--root", str(repo), "--log-only"]) == 0


# --------------------------------------------------------------------------- the shipped log


def test_the_shipped_hazard_log_checks_out() -> None:
    """docs/hazards.toml against this tree: every SR, finding, fault and incident covered, every
    test and code reference there. (That the tests ran and passed is for the gate after the
    whole suite.)"""
    log = load_log(ROOT / LOG_PATH)
    assert messages(check_log(log, (ROOT / SAFETY_DOC_PATH).read_text(), ROOT)) == []
    assert len(review_findings_in((ROOT / SAFETY_DOC_PATH).read_text())) == 17


def test_the_committed_traceability_matrix_is_the_generated_one() -> None:
    generated = render_matrix(load_log(ROOT / LOG_PATH))
    assert (ROOT / MATRIX_PATH).read_text() == generated, (
        f"{MATRIX_PATH} drifted from {LOG_PATH}: run"
        " `python -m treadguard.controller.hazard_log --log-only` and commit the result"
    )


def _sim_device_options() -> dict[str, set[str]]:
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    device_parser = commands.choices["sim-device"]
    (devices,) = [a for a in device_parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {
        name: {opt for action in sub._actions for opt in action.option_strings}
        for name, sub in devices.choices.items()
    }


# Options of `treadguard sim-device` that set a device up rather than make it fail, or time a
# fault another option chooses.
NOT_FAULTS = {
    "-h", "--help", "--link", "--log-level", "--tcp", "--rtu", "--baud", "--parity",
    "--device-id", "--mph-per-hz", "--register-map", "--inject-after", "--inject-for",
}  # fmt: skip
DEVICE_OF = {"trackmaster": "Trackmaster", "modbus": "VFD"}


def test_every_fault_the_simulated_drives_inject_is_in_the_log() -> None:
    log = load_log(ROOT / LOG_PATH)
    for command, options in _sim_device_options().items():
        injects = [f.inject for f in log.fault.values() if f.device == DEVICE_OF[command]]
        for option in sorted(options - NOT_FAULTS):
            assert any(option in text.split() for text in injects), (command, option)
    trackmaster = [f.inject for f in log.fault.values() if f.device == "Trackmaster"]
    for kind in INJECTION_KINDS:
        assert f"--inject {kind}" in trackmaster, kind
    modbus = " ".join(f.inject for f in log.fault.values() if f.device == "VFD")
    for side in ("reads", "writes"):
        assert f"--exception-on {side}" in modbus, side
