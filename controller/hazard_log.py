"""The hazard log (docs/hazards.toml): its schema, the CI gate over it, and the traceability
matrix it generates (docs/traceability.md).

The log is data: each hazard the patient can meet, its causes, its risk before and after
control, the controls (safety requirements SR-n, and what the clinic must keep: the
treadmill's own stop button, its safety key, the drive's own deadman) and the tests that
verify them. The gate (``python -m treadguard.controller.hazard_log``, run by ``scripts/test``
after a whole-suite pytest run) checks that

- every hazard has at least one control and at least one verification;
- every requirement of docs/safety.md's table is a control of some hazard, and every SR a
  hazard names is one of them; every code reference names a file (and a function or class in
  it) that exists;
- every finding of the independent review (docs/safety.md's table of them), every fault the
  simulated drives can inject and every field incident of the catalogues is covered by a hazard;
- every referenced test exists, ran in this run and passed, according to pytest's JUnit XML;
- docs/traceability.md is the matrix the log generates (it is rewritten when it is not).

A test reference is a pytest node id, ``tests/test_x.py::test_name``, which stands for the test
and every parametrization of it (each must pass), or ``tests/test_x.py::test_name[id]`` for
one parametrization.

The JUnit XML alone cannot tell which parametrizations a test has, so "every parametrization"
holds only of a run of the whole suite: a run given a selection (``-k``, ``-m``, node ids,
``--deselect``, ...) may have left some out. The suite's tests/conftest.py writes into the XML
what the run was given (the test suite's property ``treadguard_selection``: ``none`` for the
whole suite, else the selection); the gate refuses a run whose XML says a selection, or says
nothing.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

ROOT = Path(__file__).resolve().parent.parent
LOG_PATH = Path("docs/hazards.toml")
MATRIX_PATH = Path("docs/traceability.md")
SAFETY_DOC_PATH = Path("docs/safety.md")
JUNIT_PATH = Path(".run/junit.xml")
# The JUnit XML's test suite property saying what pytest was given (tests/conftest.py writes
# it): WHOLE_SUITE, or the selection in words.
SELECTION_PROPERTY = "treadguard_selection"
WHOLE_SUITE = "none"


class Severity(StrEnum):
    """How badly the patient can be hurt, worst credible case (ISO 14971's severity)."""

    NEGLIGIBLE = "negligible"
    MINOR = "minor"
    SERIOUS = "serious"
    CRITICAL = "critical"


class Likelihood(StrEnum):
    """How often the harm is expected, per treadmill in use (ISO 14971's probability)."""

    IMPROBABLE = "improbable"
    REMOTE = "remote"
    OCCASIONAL = "occasional"
    PROBABLE = "probable"
    FREQUENT = "frequent"


SEVERITY_MEANS: dict[Severity, str] = {
    Severity.NEGLIGIBLE: "no injury: a session ended early, a fright",
    Severity.MINOR: "a stumble or bruise, first aid at most",
    Severity.SERIOUS: (
        "an injury that needs medical care: a fall on the belt, a sprain, a friction burn"
    ),
    Severity.CRITICAL: "a fracture, a head injury or worse: a fall onto or off a moving belt",
}
LIKELIHOOD_MEANS: dict[Likelihood, str] = {
    Likelihood.IMPROBABLE: "not expected in the life of any treadmill",
    Likelihood.REMOTE: "not expected in the life of one treadmill, possible across many clinics",
    Likelihood.OCCASIONAL: "expected about once in the life of a treadmill",
    Likelihood.PROBABLE: "expected several times a year on a treadmill in daily use",
    Likelihood.FREQUENT: "expected most weeks",
}
# The acceptance policy for the risk left after control: the worst likelihood accepted for
# each severity. A critical or serious harm must be left no more than remote.
ACCEPTABLE_AFTER: dict[Severity, Likelihood] = {
    Severity.NEGLIGIBLE: Likelihood.FREQUENT,
    Severity.MINOR: Likelihood.OCCASIONAL,
    Severity.SERIOUS: Likelihood.REMOTE,
    Severity.CRITICAL: Likelihood.REMOTE,
}


def _rank(value: Severity | Likelihood) -> int:
    return list(type(value)).index(value)


class CauseKind(StrEnum):
    """Where a hazard starts."""

    SENSOR = "sensor"  # a grip or fall sensor, an I/O module
    WIRE = "wire"  # a cable, a contact's wiring, a serial or RS-485 line, a USB adapter
    DRIVE = "drive"  # the treadmill's controller or the VFD
    SOFTWARE = "software"  # treadguard itself, the tablet page
    OPERATOR = "operator"  # the clinician or technician
    PATIENT = "patient"
    CLOCK = "clock"  # a wall clock or a sensor's clock
    BROKER = "broker"  # the MQTT broker and the network to it
    HOST = "host"  # the board treadguard runs on: power, crash, restart
    CONFIGURATION = "configuration"  # the configuration file, the drive's parameters


_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
_SrId = Annotated[str, StringConstraints(pattern=r"^SR-[1-9][0-9]*$")]
_ControlId = Annotated[str, StringConstraints(pattern=r"^(SR-[1-9][0-9]*|HW-[A-Z]+)$")]
_HazardId = Annotated[str, StringConstraints(pattern=r"^H-[0-9]{2,3}$")]
_Key = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]*$")]
# tests/...py::name, optionally ::Class::name, optionally [parametrization]
_TestId = Annotated[str, StringConstraints(pattern=r"^tests/[\w/]+\.py(::[A-Za-z_]\w*)+(\[.+\])?$")]
# path, optionally ::name or ::Class::name (defined in that Python file)
_CodeRef = Annotated[str, StringConstraints(pattern=r"^[\w./-]+(::[A-Za-z_]\w*)*$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Risk(_Model):
    severity: Severity
    likelihood: Likelihood

    def label(self) -> str:
        return f"{self.severity.value}, {self.likelihood.value}"


class Cause(_Model):
    kind: CauseKind
    what: _Text


class Hazard(_Model):
    id: _HazardId
    title: _Text
    patient_meets: _Text
    causes: list[Cause] = Field(min_length=1)
    before: Risk
    after: Risk
    # Empty lists are allowed by the schema so that the gate names the hazard that lacks them.
    controls: list[_ControlId]
    verification: list[_TestId]
    review: list[int] = []  # numbers of the independent review's findings (docs/safety.md)
    faults: list[_Key] = []  # keys of [fault.*]
    incidents: list[_Key] = []  # keys of [incident.*]

    @model_validator(mode="after")
    def _risk_reduced_and_acceptable(self) -> Hazard:
        if _rank(self.after.severity) > _rank(self.before.severity) or _rank(
            self.after.likelihood
        ) > _rank(self.before.likelihood):
            raise ValueError(f"{self.id}: the risk after control is above the risk before it")
        worst = ACCEPTABLE_AFTER[self.after.severity]
        if _rank(self.after.likelihood) > _rank(worst):
            raise ValueError(
                f"{self.id}: a {self.after.severity.value} harm left {self.after.likelihood.value}"
                f" is not acceptable (at most {worst.value})"
            )
        return self


class Requirement(_Model):
    title: _Text
    code: list[_CodeRef] = Field(min_length=1)


class ClinicControl(_Model):
    title: _Text
    clinic_keeps: _Text


class Fault(_Model):
    device: _Text
    inject: _Text  # the option of `treadguard sim-device` or the simulator's API that makes it


class Incident(_Model):
    what: _Text


class HazardLog(_Model):
    requirement: dict[_SrId, Requirement]
    hardware: dict[Annotated[str, StringConstraints(pattern=r"^HW-[A-Z]+$")], ClinicControl]
    fault: dict[_Key, Fault]
    incident: dict[_Key, Incident]
    hazard: list[Hazard] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self) -> HazardLog:
        seen: set[str] = set()
        for h in self.hazard:
            if h.id in seen:
                raise ValueError(f"hazard id {h.id} is used twice")
            seen.add(h.id)
        return self


class HazardLogError(Exception):
    """The log cannot be read or does not fit its schema."""


def load_log(path: Path) -> HazardLog:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise HazardLogError(f"{path}: {e}") from e
    try:
        return HazardLog.model_validate(data)
    except ValidationError as e:
        lines = [f"{path} does not fit the hazard log's schema:"]
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {where}: {err['msg']}")
        raise HazardLogError("\n".join(lines)) from e


# --------------------------------------------------------------------------- docs/safety.md


_SR_ROW = re.compile(r"^\| (SR-[0-9]+) \|", re.MULTILINE)
_REVIEW_HEADING = "### The review's"
_REVIEW_ROW = re.compile(r"^\| ([0-9]+) \|", re.MULTILINE)


def requirements_in(safety_doc: str) -> list[str]:
    """The SR ids of docs/safety.md's table, in order."""
    return list(dict.fromkeys(_SR_ROW.findall(safety_doc)))


def review_findings_in(safety_doc: str) -> list[int]:
    """The numbers of the review's findings: the rows of the table under its heading."""
    start = safety_doc.find(_REVIEW_HEADING)
    if start < 0:
        return []
    section = safety_doc[start:]
    end = section.find("\n#", len(_REVIEW_HEADING))
    if end >= 0:
        section = section[:end]
    return [int(n) for n in _REVIEW_ROW.findall(section)]


# --------------------------------------------------------------------------- JUnit XML


class Outcome(StrEnum):
    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"


def read_junit(path: Path) -> dict[tuple[str, str], Outcome]:
    """(classname, name) -> outcome of every test case in pytest's JUnit XML. A case reported
    more than once (a teardown error after a pass) keeps its worst outcome."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise HazardLogError(f"cannot read the JUnit XML {path}: {e}") from e
    order = list(Outcome)
    outcomes: dict[tuple[str, str], Outcome] = {}
    for case in root.iter("testcase"):
        key = (case.get("classname", ""), case.get("name", ""))
        outcome = Outcome.PASSED
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                found = Outcome(child.tag if child.tag != "failure" else "failed")
                if order.index(found) > order.index(outcome):
                    outcome = found
        old = outcomes.get(key)
        if old is None or order.index(outcome) > order.index(old):
            outcomes[key] = outcome
    return outcomes


def junit_selection(path: Path) -> str | None:
    """What the run of pytest's JUnit XML at ``path`` was given (SELECTION_PROPERTY), None if
    the XML does not say."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise HazardLogError(f"cannot read the JUnit XML {path}: {e}") from e
    said = {
        prop.get("value")
        for prop in root.iter("property")
        if prop.get("name") == SELECTION_PROPERTY
    }
    if not said:
        return None
    if len(said) > 1:
        return " / ".join(sorted(str(s) for s in said))  # two runs' say: not one whole suite
    (value,) = said
    return value if value is not None else ""


def check_selection(junit: Path) -> list[Problem]:
    """The run judged was the whole suite: a reference without a parametrization id stands for
    every parametrization, which only a run of the whole suite has reported."""
    selection = junit_selection(junit)
    if selection == WHOLE_SUITE:
        return []
    if selection is None:
        why = (
            f"{junit} does not say whether the run was the whole suite (no {SELECTION_PROPERTY} "
            "property: not written by pytest with the suite's tests/conftest.py)"
        )
    else:
        why = f"{junit} is from a run given a selection of the suite ({selection})"
    return [
        Problem(
            None,
            why + ": the gate judges the whole suite's run only (a test's parametrizations "
            "left out of a selection cannot be told from the XML)",
        )
    ]


def junit_key(test_id: str) -> tuple[str, str, bool]:
    """What pytest's JUnit XML calls a node id: (classname, name, exact). ``exact`` is False
    when the id names no parametrization, so that it stands for every one of them."""
    path, *parts = test_id.split("::")
    module = path.removesuffix(".py").replace("/", ".")
    *classes, name = parts
    return ".".join([module, *classes]), name, "[" in name


def matching(test_id: str, outcomes: dict[tuple[str, str], Outcome]) -> dict[str, Outcome]:
    """The outcomes of the test cases a reference stands for, by their names."""
    classname, name, exact = junit_key(test_id)
    found: dict[str, Outcome] = {}
    for (cls, case), outcome in outcomes.items():
        if cls != classname:
            continue
        if case == name or (not exact and case.startswith(name + "[")):
            found[case] = outcome
    return found


# --------------------------------------------------------------------------- source files


def _defined_names(path: Path) -> frozenset[str]:
    """Every function and class name defined in a Python file, nested ones included, and
    ``Class::name`` for methods."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(
                f"{node.name}::{item.name}"
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return frozenset(names)


def _missing_in_source(root: Path, ref: str, names: dict[Path, frozenset[str]]) -> str | None:
    """Why ``path[::name...]`` names nothing that exists, or None. ``names`` caches the names
    each file defines (a check reads each file once)."""
    path, _, name = ref.partition("::")
    file = root / path
    if not file.exists():
        return f"{path} does not exist"
    if not name:
        return None  # a file or a folder (config/mosquitto)
    if file.suffix != ".py":
        return f"{path} is not a Python file, so it cannot name {name}"
    name = name.split("[", 1)[0]
    if file not in names:
        names[file] = _defined_names(file)
    if name not in names[file]:
        return f"{path} defines no {name}"
    return None


# --------------------------------------------------------------------------- the gate


@dataclass(frozen=True)
class Problem:
    hazard: str | None  # the hazard it concerns, if one
    message: str

    def __str__(self) -> str:
        return f"{self.hazard}: {self.message}" if self.hazard else self.message


def check_log(log: HazardLog, safety_doc: str, root: Path) -> list[Problem]:
    """Everything the gate checks that does not need a test run."""
    problems: list[Problem] = []
    names: dict[Path, frozenset[str]] = {}
    sr_ids = requirements_in(safety_doc)
    known_controls = set(log.requirement) | set(log.hardware)
    for sr in sr_ids:
        if sr not in log.requirement:
            problems.append(Problem(None, f"{sr} of docs/safety.md has no [requirement.{sr}]"))
    for sr in log.requirement:
        if sr not in sr_ids:
            problems.append(Problem(None, f"[requirement.{sr}] is not in docs/safety.md's table"))
    for sr, req in log.requirement.items():
        for ref in req.code:
            why = _missing_in_source(root, ref, names)
            if why:
                problems.append(Problem(None, f"{sr}'s code {ref}: {why}"))

    controlled: set[str] = set()
    for h in log.hazard:
        if not h.controls:
            problems.append(Problem(h.id, "has no control"))
        if not h.verification:
            problems.append(Problem(h.id, "has no verification (no test)"))
        for c in h.controls:
            if c not in known_controls:
                problems.append(Problem(h.id, f"names the control {c}, which the log defines not"))
            controlled.add(c)
        for ref in h.verification:
            why = _missing_in_source(root, ref, names)
            if why:
                problems.append(Problem(h.id, f"test {ref} does not exist: {why}"))
        for key in h.faults:
            if key not in log.fault:
                problems.append(Problem(h.id, f"names the fault {key}, which [fault] has not"))
        for key in h.incidents:
            if key not in log.incident:
                problems.append(
                    Problem(h.id, f"names the incident {key}, which [incident] has not")
                )
    for sr in sr_ids:
        if sr not in controlled:
            problems.append(Problem(None, f"{sr} is a control of no hazard"))
    for hw in log.hardware:
        if hw not in controlled:
            problems.append(Problem(None, f"{hw} is a control of no hazard"))

    findings = review_findings_in(safety_doc)
    if not findings:
        problems.append(Problem(None, "docs/safety.md lists no review findings"))
    cited = {n for h in log.hazard for n in h.review}
    for n in findings:
        if n not in cited:
            problems.append(Problem(None, f"review finding {n} is covered by no hazard"))
    for h in log.hazard:
        for n in h.review:
            if n not in findings:
                problems.append(Problem(h.id, f"cites review finding {n}, not in docs/safety.md"))
    faults = {k for h in log.hazard for k in h.faults}
    problems += [
        Problem(None, f"fault {k} is covered by no hazard") for k in log.fault if k not in faults
    ]
    incidents = {k for h in log.hazard for k in h.incidents}
    problems += [
        Problem(None, f"incident {k} is covered by no hazard")
        for k in log.incident
        if k not in incidents
    ]
    return problems


def check_run(log: HazardLog, outcomes: dict[tuple[str, str], Outcome]) -> list[Problem]:
    """Every referenced test ran in this run and passed."""
    problems: list[Problem] = []
    for h in log.hazard:
        for ref in h.verification:
            found = matching(ref, outcomes)
            if not found:
                problems.append(Problem(h.id, f"test {ref} did not run in this run"))
                continue
            bad = sorted(
                f"{case} {outcome.value}"
                for case, outcome in found.items()
                if outcome is not Outcome.PASSED
            )
            if bad:
                problems.append(Problem(h.id, f"test {ref} did not pass: {', '.join(bad)}"))
    return problems


# --------------------------------------------------------------------------- the matrix


def _cell(items: Iterable[str]) -> str:
    return "<br>".join(items) or "-"


def render_matrix(log: HazardLog) -> str:
    """docs/traceability.md: hazard -> control -> code -> tests, and the coverage indexes."""
    out: list[str] = [
        "# Traceability: hazards, requirements, code and tests",
        "",
        "Generated from `docs/hazards.toml` by `python -m treadguard.controller.hazard_log`",
        "(`scripts/test` runs it after the whole suite); do not edit it by hand. `docs/safety.md`",
        '("The hazard log") says how to add a hazard and what the gate checks.',
        "",
        "## Hazards",
        "",
        "| hazard | what the patient meets | risk before | risk after | controls |",
        "|---|---|---|---|---|",
    ]
    for h in log.hazard:
        out.append(
            f"| {h.id} {h.title} | {h.patient_meets} | {h.before.label()} | {h.after.label()} "
            f"| {', '.join(h.controls)} |"
        )
    out += ["", "## Each hazard: its causes, controls, code and tests", ""]
    for h in log.hazard:
        out += [f"### {h.id} {h.title}", "", f"The patient meets: {h.patient_meets}", ""]
        out += [f"- cause ({c.kind.value}): {c.what}" for c in h.causes]
        sources = [f"review finding {n}" for n in h.review]
        sources += [f"fault `{k}`" for k in h.faults]
        sources += [f"incident `{k}`" for k in h.incidents]
        if sources:
            out.append(f"- from: {', '.join(sources)}")
        out += [
            f"- risk: {h.before.label()} before control; {h.after.label()} after",
            "",
            "| control | what | code |",
            "|---|---|---|",
        ]
        for c in h.controls:
            if c in log.requirement:
                req = log.requirement[c]
                out.append(f"| {c} | {req.title} | {_cell(f'`{r}`' for r in req.code)} |")
            elif c in log.hardware:
                hw = log.hardware[c]
                out.append(f"| {c} | {hw.title} | kept by the clinic: {hw.clinic_keeps} |")
            else:
                out.append(f"| {c} | (not defined) | - |")
        out += ["", "Verified by:", ""]
        out += [f"- `{t}`" for t in h.verification]
        out.append("")
    out += [
        "## Requirements and the hazards they control",
        "",
        "| requirement | what | code | hazards |",
        "|---|---|---|---|",
    ]
    for sr, req in sorted(log.requirement.items(), key=lambda kv: int(kv[0][3:])):
        hazards = [h.id for h in log.hazard if sr in h.controls]
        code = _cell(f"`{r}`" for r in req.code)
        out.append(f"| {sr} | {req.title} | {code} | {', '.join(hazards) or '-'} |")
    out += [
        "",
        "## What the clinic keeps",
        "",
        "| control | what | the clinic keeps | hazards |",
        "|---|---|---|---|",
    ]
    for hw_id, hw in log.hardware.items():
        hazards = [h.id for h in log.hazard if hw_id in h.controls]
        out.append(f"| {hw_id} | {hw.title} | {hw.clinic_keeps} | {', '.join(hazards) or '-'} |")
    out += ["", "## Coverage", "", "| source | covered by |", "|---|---|"]
    for n in sorted({n for h in log.hazard for n in h.review}):
        out.append(
            f"| review finding {n} | {', '.join(h.id for h in log.hazard if n in h.review)} |"
        )
    for key, fault in log.fault.items():
        by = ", ".join(h.id for h in log.hazard if key in h.faults) or "-"
        out.append(f"| fault `{key}`: {fault.device}, {fault.inject} | {by} |")
    for key, incident in log.incident.items():
        by = ", ".join(h.id for h in log.hazard if key in h.incidents) or "-"
        out.append(f"| incident `{key}`: {incident.what} | {by} |")
    out += ["", "## The scales", "", "| severity | means |", "|---|---|"]
    out += [f"| {s.value} | {SEVERITY_MEANS[s]} |" for s in Severity]
    out += ["", "| likelihood | means |", "|---|---|"]
    out += [f"| {lk.value} | {LIKELIHOOD_MEANS[lk]} |" for lk in Likelihood]
    out += [
        "",
        "A risk left after control is acceptable when its likelihood is at most: "
        + "; ".join(f"{s.value}: {lk.value}" for s, lk in ACCEPTABLE_AFTER.items())
        + ".",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- the command


def gate(root: Path, junit: Path | None, *, write: bool = True) -> tuple[list[Problem], int]:
    """Runs every check; returns the problems and the number of hazards. ``junit`` None checks
    the log alone (no test run to judge)."""
    log = load_log(root / LOG_PATH)
    safety_doc = (root / SAFETY_DOC_PATH).read_text(encoding="utf-8")
    problems = check_log(log, safety_doc, root)
    if junit is not None:
        problems += check_selection(junit)
        problems += check_run(log, read_junit(junit))
    matrix = render_matrix(log)
    target = root / MATRIX_PATH
    current = target.read_text(encoding="utf-8") if target.is_file() else None
    if current != matrix:
        problems.append(
            Problem(
                None,
                f"{MATRIX_PATH} is not the matrix the log generates"
                + ("; rewritten, commit it" if write else ""),
            )
        )
        if write:
            target.write_text(matrix, encoding="utf-8")
    return problems, len(log.hazard)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m treadguard.controller.hazard_log",
        description="check the hazard log against the tests of this run and write the matrix",
    )
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository")
    parser.add_argument(
        "--junit", type=Path, default=None, help=f"pytest's JUnit XML (default: {JUNIT_PATH})"
    )
    parser.add_argument(
        "--log-only", action="store_true", help="check the log without a test run's results"
    )
    parser.add_argument(
        "--no-write", action="store_true", help=f"report a stale {MATRIX_PATH}, do not rewrite it"
    )
    args = parser.parse_args(argv)
    root: Path = args.root
    junit = None if args.log_only else (args.junit or root / JUNIT_PATH)
    try:
        problems, count = gate(root, junit, write=not args.no_write)
    except HazardLogError as e:
        print(f"hazard log: {e}", file=sys.stderr)
        return 1
    if problems:
        print(f"hazard log: {len(problems)} problem(s):", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    checked = "the log" if junit is None else "the log and this run's tests"
    print(f"hazard log: {count} hazards; {checked}: no problem; {MATRIX_PATH} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
