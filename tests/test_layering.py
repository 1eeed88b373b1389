"""The layering holds, and the checks of it can fail.

The import contracts live in pyproject.toml ([tool.importlinter]). Each is run here by the real
``lint-imports`` in a subprocess, first on the tree as it is, then on a copy of the tree with
one forbidden import added: a contract that could not report that import would check nothing.
``open()`` is a builtin, not an import, so the safety core's "no file I/O" also has an AST
check of its own, shown to fail on a snippet that opens a file.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("safety", "drivers", "contract", "config", "simulator", "controller")
# The venv's own script, next to the interpreter running the tests (not resolved: the venv's
# python is a link to the system's).
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def contract_names() -> dict[str, str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    return {str(c["id"]): str(c["name"]) for c in contracts}


def lint_imports(tree: Path, *contracts: str) -> subprocess.CompletedProcess[str]:
    # lint-imports puts its working directory first on sys.path, so it analyses the packages
    # under ``tree`` and not the ones the editable install points at.
    args = [str(LINT_IMPORTS), "--no-cache", "--no-logo"]
    for contract in contracts:
        args += ["--contract", contract]
    return subprocess.run(args, cwd=tree, capture_output=True, text=True, timeout=120, check=False)


def test_the_tree_keeps_every_contract() -> None:
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in contract_names().values():
        assert f"{name} KEPT" in result.stdout


@pytest.fixture(scope="module")
def names() -> dict[str, str]:
    return contract_names()


# (file to add the import to, the import, the module that imports, the module it imports,
# the contracts it must break). Every contract appears at least once.
BREAKS = [
    (
        "safety/__init__.py",
        "import treadguard.controller",
        "treadguard.safety",
        "treadguard.controller",
        ["safety-alone", "layers"],
    ),
    ("safety/limits.py", "import pathlib", "treadguard.safety.limits", "pathlib", ["safety-pure"]),
    ("safety/core.py", "import time", "treadguard.safety.core", "time", ["safety-pure"]),
    (
        "drivers/base.py",
        "from treadguard.config.schema import TreadguardConfig",
        "treadguard.drivers.base",
        "treadguard.config.schema",
        ["drivers-on-safety", "layers"],
    ),
    (
        "config/schema.py",
        "import treadguard.drivers.base",
        "treadguard.config.schema",
        "treadguard.drivers.base",
        ["config-on-safety"],
    ),
    (
        "simulator/belt.py",
        "from treadguard.controller.loop import ScaledClock",
        "treadguard.simulator.belt",
        "treadguard.controller.loop",
        ["simulator-apart", "layers"],
    ),
    (
        "simulator/belt.py",
        "import treadguard.drivers.link_policy",
        "treadguard.simulator.belt",
        "treadguard.drivers.link_policy",
        ["simulator-codecs"],
    ),
    (
        "contract/mqtt.py",
        "import asyncio",
        "treadguard.contract.mqtt",
        "asyncio",
        ["contract-pure"],
    ),
    (
        "contract/mqtt.py",
        "from treadguard.controller.loop import ScaledClock",
        "treadguard.contract.mqtt",
        "treadguard.controller.loop",
        ["contract-pure", "layers"],
    ),
]


def test_every_contract_is_shown_to_fail(names: dict[str, str]) -> None:
    shown = {contract for *_, contracts in BREAKS for contract in contracts}
    assert shown == set(names)


@pytest.mark.parametrize(("file", "line", "importer", "imported", "contracts"), BREAKS)
def test_a_forbidden_import_breaks_its_contract(
    tmp_path: Path,
    names: dict[str, str],
    file: str,
    line: str,
    importer: str,
    imported: str,
    contracts: list[str],
) -> None:
    for package in (*PACKAGES, "treadguard"):
        # treadguard/ is links to the folders beside it: copied as links, they point at the copies.
        shutil.copytree(
            ROOT / package,
            tmp_path / package,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / file).open("a", encoding="utf-8") as f:
        f.write(f"\n{line}\n")

    result = lint_imports(tmp_path, *contracts)

    assert result.returncode == 1, result.stdout + result.stderr
    for contract in contracts:
        assert f"{names[contract]} BROKEN" in result.stdout
    assert f"{importer} -> {imported}" in result.stdout


# Calls that read or write files (or the terminal) whatever the module imports: builtins, and
# the methods of a path or file handed in from outside.
IO_BUILTINS = {"open", "print", "input", "__import__"}
IO_METHODS = {"open", "read_text", "read_bytes", "write_text", "write_bytes"}


def io_calls(source: str, filename: str) -> list[str]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in IO_BUILTINS:
            found.append((node.lineno, f"{func.id}()"))
        elif isinstance(func, ast.Attribute) and func.attr in IO_METHODS:
            found.append((node.lineno, f".{func.attr}()"))
    # ast.walk goes breadth first; report in the file's order.
    return [f"{filename}:{line}: {call}" for line, call in sorted(found)]


def test_the_safety_core_opens_no_file() -> None:
    files = sorted((ROOT / "safety").rglob("*.py"))
    assert files
    found = [
        call
        for path in files
        for call in io_calls(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert found == [], "program files and configs are read in config/, not in safety/"


def test_the_io_check_finds_a_file_being_opened() -> None:
    source = (
        "def load(path):\n"
        "    with open(path) as f:\n"
        "        return f.read()\n"
        "def load_text(path):\n"
        "    return path.read_text()\n"
    )
    assert io_calls(source, "x.py") == ["x.py:2: open()", "x.py:5: .read_text()"]
