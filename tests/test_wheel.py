"""The wheel installs one import package, ``treadguard``, beside PyPI's ``safety`` and ``config``.

The product's folders sit at the top of the repository and are named like two popular PyPI
packages: ``safety`` (a vulnerability scanner) and ``config``. A wheel that installed them as
top-level packages would overwrite those, or be overwritten. So the wheel is built here from the
checkout, installed into a fresh venv together with both from PyPI, and then each of the three
is used: the treadguard command runs a shipped scenario from its installed copy, and ``safety``
and ``config`` still import as PyPI's; ``pip check`` finds every requirement met. Everything
runs outside the checkout, so nothing can be imported from the repository by accident.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The releases the wheel was shown to sit beside; pinned so the test checks the same neighbours
# every run (a new release of either could change what its import looks like).
PYPI_NEIGHBOURS = ("safety==3.8.1", "config==0.5.1")
SCENARIO = "later_program_refused_for_new_user.toml"


def run(*args: str | Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH from the test's own environment must not lead back into the checkout.
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def source_copy(dest: Path) -> Path:
    """The checkout's files (tracked, and new ones not ignored), links kept as links: setuptools
    builds in the source folder (build/, *.egg-info), which must not be the checkout."""
    listed = ok(
        run("git", "ls-files", "-z", "--cached", "--others", "--exclude-standard", cwd=ROOT)
    )
    for name in filter(None, listed.split("\0")):
        src, dst = ROOT / name, dest / name
        if not src.is_symlink() and not src.is_file():
            continue  # deleted in the work tree, not yet in the index
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = source_copy(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("dist")
    ok(
        run(
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
            "--wheel-dir",
            out,
            source,
            cwd=out,
        )
    )
    (built,) = out.glob("treadguard-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("venv")
    ok(run(sys.executable, "-m", "venv", where / "v", cwd=where))
    python = where / "v" / "bin" / "python"
    ok(
        run(
            python,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            wheel,
            *PYPI_NEIGHBOURS,
            cwd=where,
        )
    )
    # Every installed distribution's requirements met, the wheel's and its neighbours', across
    # the whole venv (pip's resolver judges only what one install brings in).
    ok(run(python, "-m", "pip", "check", "--disable-pip-version-check", cwd=where))
    return where / "v"


def test_the_wheel_holds_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as whl:
        tops = {name.split("/", 1)[0] for name in whl.namelist()}
        names = set(whl.namelist())
    assert {top for top in tops if not top.endswith(".dist-info")} == {"treadguard"}
    # The data the installed package reads: the built-in configuration, programs, scenarios.
    for data in (
        "treadguard/config/sim.toml",
        "treadguard/config/progression.toml",
        "treadguard/config/programs/first_session.toml",
        "treadguard/config/drives/delta-vfd-e.toml",
        f"treadguard/simulator/scenarios/{SCENARIO}",
        # the reports' templates (treadguard report, treadguard patient)
        "treadguard/controller/templates/session.html.j2",
        "treadguard/controller/templates/patient.html.j2",
        "treadguard/controller/templates/base.html.j2",
        "treadguard/controller/templates/table_head.html.j2",
        "treadguard/controller/templates/paper_cut.html.j2",
        "treadguard/controller/templates/report.css",
    ):
        assert data in names


def test_treadguard_runs_beside_pypis_safety_and_config(venv: Path, tmp_path: Path) -> None:
    bin_dir = venv / "bin"
    assert ok(run(bin_dir / "treadguard", "--version", cwd=tmp_path)).startswith("treadguard ")

    site = Path(
        ok(
            run(
                bin_dir / "python",
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
                cwd=tmp_path,
            )
        ).strip()
    )
    scenario = site / "treadguard" / "simulator" / "scenarios" / SCENARIO
    out = ok(run(bin_dir / "treadguard", "simulate", "--json", scenario, cwd=tmp_path))
    assert '"passed": true' in out
    assert "preconditions_unmet" in out  # the later program, refused for a user with no history

    # PyPI's packages are still the ones that import under their own names, and still work.
    where = ok(
        run(
            bin_dir / "python",
            "-c",
            "import safety, config, treadguard.safety.core as core;"
            "print(safety.__file__); print(config.__file__); print(core.__file__)",
            cwd=tmp_path,
        )
    ).split()
    assert [Path(p).relative_to(site).parts[0] for p in where] == ["safety", "config", "treadguard"]
    assert "3.8.1" in ok(run(bin_dir / "safety", "--version", cwd=tmp_path))
