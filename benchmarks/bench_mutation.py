"""Mutation testing of the safety code: how many planted faults its fast tests catch.

mutmut (pinned in pyproject's test extras) plants one small fault at a time (a mutant: ``>=``
made ``>``, ``True`` made ``False``, a value made ``None``, ...) in the safety core
(``safety/``), the drivers' stop policy (``drivers/link_policy.py``) and the sensor input filter
(``drivers/input_filter.py``), and runs against each the fast, sans-I/O tests that reach the
mutated function. A mutant is killed when a test fails. A mutant that survives is either a gap
in the tests (write a test of the behaviour a requirement asks for) or equivalent, a change
that no input can tell apart from the original; those are listed, each with its reason, in
docs/mutation-equivalents.toml, and matched by function and by the changed code (not by line
number or mutmut's running number, which move when the code does).

The score is killed / (mutants - equivalent). A mutant listed with ``kind = "tolerance"`` (it
moves a bound that is already widened by the core's 1 ns time tolerance, and differs from the
original only at one float value there) counts as not killed. The run fails (exit 1) if the
score is below 90 %, if any mutant that was not killed is not listed, or if the list is not
true of this run: an entry no surviving mutant matches (killed now, or the code changed), or
one that matches another number of survivors than its ``count`` (1 unless given: the same
change at several places of one function needs one reason for each). ``--report`` judges the
last run's verdicts the same way, and exits 1 too while that run is not finished.
Time-outs count as killed, and are shown apart: a mutant that only makes the code slow is
killed by one, so each is worth a look.

    .venv/bin/python benchmarks/bench_mutation.py [--scope all|safety|drivers] [--workers 2]
        [--examples 25] [--only GLOB ...]

``--scope safety`` mutates ``safety/`` alone, against its own tests; ``--scope drivers`` the
two driver modules alone (a few minutes). The work happens in ``.run/mutation/SCOPE/`` (git
ignores it), laid anew on each run: a copy of the code and the tests, and mutmut's own
``mutants/`` folder and cache in it.
To see one mutant afterwards: ``cd .run/mutation/all && ../../../.venv/bin/mutmut show NAME``.
``--only`` re-runs the mutants whose names match (e.g. ``'drivers.link_policy.*'``) in the
workspace the last run left, against the tests as they are now, for working on a test; it
prints the figures of those mutants and saves nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from _common import python_speed_s, save

ROOT = Path(__file__).resolve().parent.parent
EQUIVALENTS = ROOT / "docs" / "mutation-equivalents.toml"
TARGET_SCORE = 90.0

# What is mutated, and the tests it is judged by: the fast, sans-I/O tests of that code (no
# sockets, no processes, no real time; the whole set runs in about ten seconds).
SAFETY_TESTS = [
    "tests/test_safety_examples.py",
    "tests/test_safety_amended.py",
    # Refusals' and events' words, the boundaries of ranges, the rarer paths.
    "tests/test_safety_mutation_gaps.py",
    "tests/test_safety_properties.py",
    # FlipGuard (safety/flips.py) and SensorClock (safety/stamps.py) are tested here.
    "tests/test_sensor_stamps.py",
    # The core's snapshot as the tablet contract reads it.
    "tests/test_mqtt_contract.py",
    # The stop-quality watch (safety/stop_watch.py and its measuring in safety/core.py),
    # against the simulator's belt physics (simulator/belt.py, pure).
    "tests/test_stop_watch.py",
]
PACKAGE = "treadguard"  # the one installed package the folders below are imported under
SCOPES: dict[str, dict[str, list[str]]] = {
    "all": {
        "mutate": ["safety/*", "drivers/link_policy.py", "drivers/input_filter.py"],
        "tests": [*SAFETY_TESTS, "tests/test_link_policy.py", "tests/test_sensor_filter.py"],
    },
    "safety": {"mutate": ["safety/*"], "tests": SAFETY_TESTS},
    # The two driver modules alone: a run of a few minutes, for work on their tests.
    "drivers": {
        "mutate": ["drivers/link_policy.py", "drivers/input_filter.py"],
        "tests": ["tests/test_link_policy.py", "tests/test_sensor_filter.py"],
    },
}

# Hypothesis in the mutation run: a fixed number of examples per property (each surviving
# mutant runs every test that reaches it, so 25 rather than the suite's 300 keeps a run within
# reach of two cores), drawn the same way on every run and with no example database, so that a
# mutant's fate does not depend on the mutants run before it or on chance.
CONFTEST = '''"""Written by benchmarks/bench_mutation.py: Hypothesis without chance or memory."""

from hypothesis import settings

settings.register_profile("mutation", derandomize=True, database=None)
'''

# mutmut's verdicts (``mutmut results --all true``) that count as killed.
KILLED = {"killed", "timeout", "caught by type check"}


@dataclass(frozen=True)
class Mutant:
    name: str
    status: str
    # Stable identity: the function (module.Class.method) and the changed code, whitespace
    # collapsed; line numbers and mutmut's running number are not part of it.
    function: str
    original: str
    mutated: str


def function_of(mutant_name: str) -> str:
    """``drivers.link_policy.xǁLinkPolicyǁstatus__mutmut_7`` names
    ``drivers.link_policy.LinkPolicy.status``; ``safety.stamps.x_clamp__mutmut_2`` names
    ``safety.stamps.clamp``."""
    # The code runs as treadguard.<folder> (the workspace's layout); named by its folder here.
    stem = mutant_name.rsplit("__mutmut_", 1)[0].removeprefix(PACKAGE + ".")
    parts = stem.split(".")
    for i, part in enumerate(parts):
        if part.startswith("xǁ"):
            return ".".join([*parts[:i], *part[2:].split("ǁ")])
        if part.startswith("x_"):
            return ".".join([*parts[:i], part[2:], *parts[i + 1 :]])
    return stem


def squash(lines: list[str]) -> str:
    return " / ".join(" ".join(line.split()) for line in lines)


def changed_code(diff: str) -> tuple[str, str]:
    """The removed and the added lines of ``mutmut show``'s unified diff."""
    removed: list[str] = []
    added: list[str] = []
    for line in diff.splitlines():
        if line.startswith(("---", "+++")):
            continue
        if line.startswith("-"):
            removed.append(line[1:])
        elif line.startswith("+"):
            added.append(line[1:])
    return squash(removed), squash(added)


def build_workspace(work: Path, scope: dict[str, list[str]]) -> None:
    """A copy of the code and the tests, with mutmut's settings, for mutmut to work in."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    # The code under the package name it imports itself by (treadguard.safety, ...), so that
    # mutmut's names for it (from the file's path) are the names the tests run it under.
    # config/ as well, there and at the top: the tests read the programs and config/sim.toml
    # from the top; simulator/ for the belt physics the stop-quality watch is tested against.
    package = work / PACKAGE
    package.mkdir()
    shutil.copy(ROOT / PACKAGE / "__init__.py", package / "__init__.py")
    for folder in ("safety", "drivers", "config", "simulator"):
        shutil.copytree(
            ROOT / folder, package / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    for folder in ("config", "tests"):
        shutil.copytree(ROOT / folder, work / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (work / "conftest.py").write_text(CONFTEST)
    mutmut = {
        "source_paths": [f"{PACKAGE}/safety", f"{PACKAGE}/drivers"],
        "only_mutate": [f"{PACKAGE}/{pattern}" for pattern in scope["mutate"]],
        "also_copy": [
            "config",
            f"{PACKAGE}/config",
            f"{PACKAGE}/simulator",
            f"{PACKAGE}/__init__.py",
            "conftest.py",
        ],
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "--hypothesis-profile=mutation"],
        "pytest_add_cli_args_test_selection": scope["tests"],
        # The workspace is not a git checkout of its own.
        "use_git_change_detection": False,
        # A mutant gets twice the CPU time its tests took on the unmutated code (mutmut's own
        # margin on top of that doubles it again) before it counts as a time-out (killed: a
        # hang is caught). mutmut's default of 15 let a mutant that makes a test loop until
        # its bound hold a worker for ten minutes.
        "timeout_multiplier": 2.0,
    }
    lines = ["", "[tool.mutmut]"]
    for key, value in mutmut.items():
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, float):
            text = repr(value)
        else:
            text = toml_list(value)
        lines.append(f"{key} = {text}")
    # The project's own pytest settings (markers, asyncio mode) come along with its file.
    (work / "pyproject.toml").write_text(
        (ROOT / "pyproject.toml").read_text() + "\n".join(lines) + "\n"
    )


def toml_list(value: object) -> str:
    assert isinstance(value, list)
    return "[" + ", ".join('"' + str(v).replace('"', '\\"') + '"' for v in value) + "]"


def mutmut_bin() -> str:
    exe = Path(sys.executable).parent / "mutmut"
    if not exe.exists():
        sys.exit("mutmut is not installed: .venv/bin/pip install -e '.[test]'")
    return str(exe)


# What `mutmut show NAME` prints, for many mutants in one process (a `mutmut show` each costs
# most of a second). These are the functions that command calls; the minor version is pinned.
SHOW_MANY = """
import json, sys
from mutmut.__main__ import find_mutant, get_diff_for_mutant
names = json.load(sys.stdin)
json.dump({n: get_diff_for_mutant(n, path=find_mutant(n).path) for n in names}, sys.stdout)
"""


def results(work: Path, only: list[str] | None) -> list[Mutant]:
    out = subprocess.run(
        [mutmut_bin(), "results", "--all", "true"],
        cwd=work,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    verdicts: list[tuple[str, str]] = []
    for line in out.splitlines():
        match = re.fullmatch(r"\s*(\S+__mutmut_\d+): (.+)", line)
        if not match:
            continue
        name, status = match.groups()
        if only and not any(re.fullmatch(glob_regex(g), name) for g in only):
            continue
        verdicts.append((name, status))
    # The diffs of the survivors (to match against the list) and of the time-outs (to show).
    wanted = [
        n
        for n, status in verdicts
        if (status not in KILLED or status == "timeout") and status != "not checked"
    ]
    diffs: dict[str, str] = {}
    if wanted:
        shown = subprocess.run(
            [sys.executable, "-c", SHOW_MANY],
            cwd=work,
            input=json.dumps(wanted),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        diffs = json.loads(shown)
    mutants: list[Mutant] = []
    for name, status in verdicts:
        original, mutated = changed_code(diffs[name]) if name in diffs else ("", "")
        mutants.append(Mutant(name, status, function_of(name), original, mutated))
    return mutants


KINDS = ("equivalent", "tolerance")


def load_equivalents() -> list[dict[str, Any]]:
    data = tomllib.loads(EQUIVALENTS.read_text())
    entries: list[dict[str, Any]] = data.get("equivalent", [])
    for entry in entries:
        missing = {"function", "original", "mutant", "why"} - entry.keys()
        if missing:
            sys.exit(f"{EQUIVALENTS}: an entry lacks {sorted(missing)}: {entry}")
        unknown = entry.keys() - {"function", "original", "mutant", "why", "kind", "count"}
        if unknown:
            sys.exit(f"{EQUIVALENTS}: an entry has {sorted(unknown)}, which none has: {entry}")
        if entry.setdefault("kind", "equivalent") not in KINDS:
            sys.exit(f"{EQUIVALENTS}: kind is one of {KINDS}: {entry}")
        count = entry.setdefault("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            sys.exit(f"{EQUIVALENTS}: count is a whole number of at least 1: {entry}")
    return entries


@dataclass
class Verdicts:
    """A run's mutants sorted by the list, and where the list is not true of the run."""

    killed: list[Mutant]
    timeouts: list[Mutant]
    equivalent: list[Mutant]
    tolerance: list[Mutant]
    unlisted: list[Mutant]
    problems: list[str]

    @property
    def score(self) -> float:
        counted = len(self.killed) + len(self.tolerance) + len(self.unlisted)
        return 100.0 * len(self.killed) / counted if counted else 0.0


def sort_out(
    mutants: list[Mutant],
    entries: list[dict[str, Any]],
    scope: dict[str, list[str]],
    *,
    whole_run: bool,
) -> Verdicts:
    """Each mutant killed, listed (equivalent or within the tolerance) or neither; and, for a
    whole run (every mutant of the scope judged), each entry that no survivor matches or that
    matches another number of them than its count."""
    listed = {key(e["function"], e["original"], e["mutant"]): e for e in entries}
    done = [m for m in mutants if m.status != "not checked"]
    killed = [m for m in done if m.status in KILLED]
    survivors = [m for m in done if m.status not in KILLED]
    matches: dict[tuple[str, str, str], list[Mutant]] = {}
    unlisted: list[Mutant] = []
    for m in survivors:
        k = key(m.function, m.original, m.mutated)
        if k in listed:
            matches.setdefault(k, []).append(m)
        else:
            unlisted.append(m)
    problems = []
    if whole_run:
        for k, e in listed.items():
            found = len(matches.get(k, []))
            if not in_scope(e["function"], scope) or found == e["count"]:
                continue
            if found == 0:
                problems.append(f"listed, but no mutant matching it survived: {e}")
            else:
                problems.append(
                    f"listed for {e['count']} mutant(s), and {found} matching it survived "
                    f"({', '.join(m.name for m in matches[k])}): {e}"
                )
    return Verdicts(
        killed=killed,
        timeouts=[m for m in killed if m.status == "timeout"],
        equivalent=[
            m for k, ms in matches.items() if listed[k]["kind"] == "equivalent" for m in ms
        ],
        tolerance=[m for k, ms in matches.items() if listed[k]["kind"] == "tolerance" for m in ms],
        unlisted=unlisted,
        problems=problems,
    )


def key(function: str, original: str, mutated: str) -> tuple[str, str, str]:
    return (function, " ".join(original.split()), " ".join(mutated.split()))


def in_scope(function: str, scope: dict[str, list[str]]) -> bool:
    path = function.split(".")
    for pattern in scope["mutate"]:
        parts = pattern.removesuffix(".py").split("/")
        if parts[-1] == "*":
            parts = parts[:-1]
        if path[: len(parts)] == parts:
            return True
    return False


def toml_entry(m: Mutant) -> str:
    def q(s: str) -> str:
        return "'" + s + "'" if "'" not in s else '"' + s.replace('"', '\\"') + '"'

    return (
        f"[[equivalent]]\nfunction = {q(m.function)}\noriginal = {q(m.original)}\n"
        f"mutant = {q(m.mutated)}\nwhy = '...'\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scope", choices=sorted(SCOPES), default="all")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--examples", type=int, default=25, help="Hypothesis examples a test")
    parser.add_argument(
        "--only", nargs="+", metavar="GLOB", help="re-run these mutants in the last workspace"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        help="run nothing: the figures of the last run in the workspace (one still going, too)",
    )
    args = parser.parse_args()
    scope = SCOPES[args.scope]
    work = ROOT / ".run" / "mutation" / args.scope
    env = {**os.environ, "TREADGUARD_HYPOTHESIS_EXAMPLES": str(args.examples)}

    if (args.only or args.report) and not (work / "mutants").is_dir():
        sys.exit(f"no earlier run in {work}: run without --only or --report first")
    if args.report:
        report(work, scope)  # exits 1 if the run's verdicts fail
        return
    if args.only:
        # The tests as they are now (a new test is what one re-runs a mutant for): into the
        # workspace, from which mutmut copies them into mutants/ as it starts.
        shutil.copytree(
            ROOT / "tests",
            work / "tests",
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    else:
        build_workspace(work, scope)
    command = [mutmut_bin(), "run", "--max-children", str(args.workers)]
    if args.only:
        command += args.only
    log = work / "mutmut.log"
    shown = " ".join(command[1:4]) + (f" and {len(args.only)} name(s)" if args.only else "")
    print(f"mutmut: {shown} in {work.relative_to(ROOT)} (log: mutmut.log)")
    speed = python_speed_s()
    t0 = time.monotonic()
    with log.open("w") as out:
        status = subprocess.run(command, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall_s = time.monotonic() - t0
    if status.returncode != 0:
        print(log.read_text()[-3000:])
        sys.exit(f"mutmut run failed (exit {status.returncode}); its log: {log}")

    mutants = results(work, args.only)
    unchecked = [m.name for m in mutants if m.status == "not checked"]
    if unchecked:
        sys.exit(f"mutmut stopped before {len(unchecked)} mutant(s) were run; its log: {log}")
    v = sort_out(mutants, load_equivalents(), scope, whole_run=not args.only)
    score = v.score

    print(f"mutants              {len(mutants)}")
    print(f"killed               {len(v.killed)}  ({len(v.timeouts)} by a time-out)")
    print(f"not killed           {len(mutants) - len(v.killed)}")
    print(f"  listed equivalent  {len(v.equivalent)}")
    print(f"  listed tolerance   {len(v.tolerance)}  (counted as not killed)")
    print(f"  not listed         {len(v.unlisted)}")
    print(f"score                {score:.1f} %  (killed / (mutants - equivalent))")
    print(f"killed / mutants     {100.0 * len(v.killed) / max(1, len(mutants)):.1f} %")
    print(f"wall time            {wall_s:.0f} s  ({args.workers} workers)")
    print(f"10M-step loop        {speed:.2f} s  (this machine's speed in this run)")
    for m in v.timeouts:
        print(f"killed by a time-out: {m.name}: {m.original!r} -> {m.mutated!r}")
    for m in v.unlisted:
        print(f"\nNOT KILLED ({m.status}): {m.name}\n{toml_entry(m)}", end="")
    for problem in v.problems:
        print(f"\nthe list is not true of this run: {problem}")

    if not args.only:
        statuses = sorted({m.status for m in mutants})
        figures: dict[str, Any] = {
            "scope": args.scope,
            "mutated": scope["mutate"],
            "tests": scope["tests"],
            "mutmut": version("mutmut"),
            "workers": args.workers,
            "hypothesis_examples": args.examples,
            "mutants": len(mutants),
            "killed": len(v.killed),
            "killed_by_timeout": [m.name for m in v.timeouts],
            "survived": len(mutants) - len(v.killed),
            "equivalent": len(v.equivalent),
            "tolerance": len(v.tolerance),
            "unlisted": [m.name for m in v.unlisted],
            "list_problems": v.problems,
            "score_percent": round(score, 2),
            "wall_s": round(wall_s, 1),
            "python_10m_loop_s": round(speed, 3),
            "by_status": {s: [m.status for m in mutants].count(s) for s in statuses},
        }
        path = save(f"mutation_{args.scope}", figures)
        print(f"saved {path}")
    failed = failure(v)
    if failed is not None:
        sys.exit(failed)


def failure(v: Verdicts) -> str | None:
    """Why a run's verdicts fail (exit 1), None if they pass: a score below the target, a
    mutant not killed and not listed, or the list not true of the run."""
    if v.score >= TARGET_SCORE and not v.unlisted and not v.problems:
        return None
    return (
        f"mutation testing: score {v.score:.1f} % (target {TARGET_SCORE:.0f} %), "
        f"{len(v.unlisted)} mutant(s) not killed and not listed in {EQUIVALENTS.name}, "
        f"{len(v.problems)} entr(y/ies) not true of this run"
    )


def report(work: Path, scope: dict[str, list[str]]) -> None:
    """The verdicts so far, without running anything; a run still going shows its progress.
    It exits as the run itself does: 1 on a score below the target, a mutant not killed and
    not listed, or a list not true of the run; and 1 while the run is not finished (its
    figures are not a result yet)."""
    mutants = results(work, None)
    done = [m for m in mutants if m.status != "not checked"]
    whole_run = len(done) == len(mutants)
    v = sort_out(mutants, load_equivalents(), scope, whole_run=whole_run)
    print(f"mutants {len(mutants)} ({', '.join(scope['mutate'])}), run so far {len(done)}")
    print(
        f"killed {len(v.killed)} ({len(v.timeouts)} by a time-out), listed equivalent "
        f"{len(v.equivalent)}, listed tolerance {len(v.tolerance)}, not killed and not "
        f"listed {len(v.unlisted)}"
    )
    if done:
        print(f"score so far {v.score:.1f} %")
    by_function: dict[str, int] = {}
    for m in v.unlisted:
        by_function[m.function] = by_function.get(m.function, 0) + 1
    for function, n in sorted(by_function.items(), key=lambda kv: -kv[1]):
        print(f"  {n:4d} not killed, not listed: {function}")
    for m in v.timeouts:
        print(f"killed by a time-out: {m.name}: {m.original!r} -> {m.mutated!r}")
    # Each with its ready entry, as a finished run prints them: to kill with a test, or to
    # list with the reason it is equivalent.
    for m in v.unlisted:
        print(f"\nNOT KILLED ({m.status}): {m.name}\n{toml_entry(m)}", end="")
    for problem in v.problems:
        print(f"\nthe list is not true of this run: {problem}")
    failed = failure(v)
    if failed is not None:
        sys.exit(failed)
    if not whole_run:
        sys.exit(f"the run is not finished: {len(mutants) - len(done)} mutant(s) still to run")


def glob_regex(pattern: str) -> str:
    return ".*".join(re.escape(part) for part in pattern.split("*"))


if __name__ == "__main__":
    main()
