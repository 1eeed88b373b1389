"""benchmarks/bench_mutation.py's reading of the list of equivalent mutants against a run: the
run fails where the list is not true of it (an entry no survivor matches, one that stands for
another number of survivors than it says), and a mutant within the time tolerance counts as
not killed. Pure: mutants and entries made here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))  # its own helpers, as when it runs
    spec = importlib.util.spec_from_file_location(
        "bench_mutation", ROOT / "benchmarks" / "bench_mutation.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_mutation"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


bench = _bench()
SCOPE = {"mutate": ["safety/*"], "tests": []}
F = "safety.core.SafetyCore.handle"


def mutant(n: int, status: str, original: str = "a >= b", mutated: str = "a > b") -> Any:
    return bench.Mutant(f"{F}__mutmut_{n}", status, F, original, mutated)


def entry(original: str = "a >= b", mutated: str = "a > b", **more: Any) -> dict[str, Any]:
    return {
        "function": F,
        "original": original,
        "mutant": mutated,
        "why": "a reason",
        "kind": "equivalent",
        "count": 1,
        **more,
    }


def test_a_listed_survivor_is_equivalent_and_leaves_the_score() -> None:
    v = bench.sort_out(
        [mutant(1, "killed"), mutant(2, "survived")], [entry()], SCOPE, whole_run=True
    )
    assert [m.name for m in v.equivalent] == [f"{F}__mutmut_2"]
    assert v.unlisted == []
    assert v.problems == []
    assert v.score == 100.0


def test_a_survivor_within_the_tolerance_counts_as_not_killed() -> None:
    v = bench.sort_out(
        [mutant(1, "killed"), mutant(2, "survived")],
        [entry(kind="tolerance")],
        SCOPE,
        whole_run=True,
    )
    assert len(v.tolerance) == 1
    assert v.equivalent == []
    assert v.score == 50.0


def test_an_entry_no_survivor_matches_is_a_problem_of_a_whole_run_only() -> None:
    mutants = [mutant(1, "killed")]
    assert bench.sort_out(mutants, [entry()], SCOPE, whole_run=False).problems == []
    (problem,) = bench.sort_out(mutants, [entry()], SCOPE, whole_run=True).problems
    assert "no mutant matching it survived" in problem


def test_an_entry_standing_for_another_number_of_survivors_is_a_problem() -> None:
    two = [mutant(1, "survived"), mutant(2, "survived")]
    (problem,) = bench.sort_out(two, [entry()], SCOPE, whole_run=True).problems
    assert "listed for 1 mutant(s), and 2 matching it survived" in problem
    assert bench.sort_out(two, [entry(count=2)], SCOPE, whole_run=True).problems == []


def test_an_unlisted_survivor_and_a_time_out_are_told() -> None:
    v = bench.sort_out(
        [mutant(1, "timeout"), mutant(2, "survived", "x = 1", "x = 2")],
        [],
        SCOPE,
        whole_run=True,
    )
    assert [m.name for m in v.timeouts] == [f"{F}__mutmut_1"]
    assert [m.name for m in v.unlisted] == [f"{F}__mutmut_2"]
    assert v.score == 50.0


def _report(
    monkeypatch: pytest.MonkeyPatch, mutants: list[Any], entries: list[dict[str, Any]]
) -> str | None:
    """``--report``'s verdict on a finished run made here: None if it exits 0, else the
    reason it exits 1 with."""
    monkeypatch.setattr(bench, "results", lambda _work, _only: mutants)
    monkeypatch.setattr(bench, "load_equivalents", lambda: entries)
    try:
        bench.report(Path("unused"), SCOPE)
    except SystemExit as exit_:
        code = exit_.code
    else:
        return None
    assert code not in (0, None)  # a message: sys.exit prints it and exits 1
    return str(code)


@pytest.mark.parametrize(
    ("mutants", "entries", "why"),
    [
        pytest.param(
            [*(mutant(n, "killed") for n in range(1, 20)), mutant(20, "survived", "x", "y")],
            [],
            "1 mutant(s) not killed and not listed",
            id="unlisted-survivor",
        ),
        pytest.param(
            [mutant(1, "killed"), mutant(2, "survived")],
            [entry(kind="tolerance")],
            "score 50.0 %",
            id="score-below-target",
        ),
        pytest.param(
            [mutant(n, "killed") for n in range(1, 20)],
            [entry()],
            "1 entr(y/ies) not true of this run",
            id="list-not-true",
        ),
        pytest.param(
            [mutant(1, "killed"), mutant(2, "not checked")],
            [],
            "the run is not finished",
            id="run-not-finished",
        ),
    ],
)
def test_the_report_fails_as_the_run_does(
    monkeypatch: pytest.MonkeyPatch, mutants: list[Any], entries: list[dict[str, Any]], why: str
) -> None:
    """``--report`` (what a published figure is counted with) exits 1 where the run itself
    would: a mutant neither killed nor listed, a score below the target, a list not true of
    the run; and while the run is not finished."""
    failed = _report(monkeypatch, mutants, entries)
    assert failed is not None
    assert why in failed


def test_the_report_of_a_run_that_passes_exits_0(monkeypatch: pytest.MonkeyPatch) -> None:
    mutants = [*(mutant(n, "killed") for n in range(1, 20)), mutant(20, "survived")]
    assert _report(monkeypatch, mutants, [entry()]) is None
