"""The installer's reading of the service's environment file (scripts/install's
plain_environment, unquoted and environment_value), run by bash as the installer runs them,
without a board: the forms systemd and the installer read alike are taken, a value in one
pair of quotes without them (as systemd hands it to the daemon, and as the broker's password
file must hold it); every other form is refused, naming the line and never the value."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "scripts" / "install"
FUNCTIONS = ("plain_environment", "unquoted", "environment_value")


def _functions() -> str:
    """The three functions' text, as scripts/install defines them."""
    lines = INSTALL.read_text(encoding="utf-8").splitlines()
    found = []
    for name in FUNCTIONS:
        start = lines.index(f"{name}() {{")
        end = lines.index("}", start)
        found.append("\n".join(lines[start : end + 1]))
    return "\n".join(found)


def _read(tmp_path: Path, content: bytes, name: str = "P") -> subprocess.CompletedProcess[str]:
    (tmp_path / "environment").write_bytes(content)
    script = (
        'fail() { printf "%s\\n" "$*" >&2; exit 1; }\n'
        f"ETC={tmp_path}\n{_functions()}\n"
        f"plain_environment && printf '[%s]' \"$(environment_value {name})\"\n"
    )
    return subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.parametrize(
    ("line", "value"),
    [
        (b"P=abc=", "abc="),
        (b'P="quoted pass 1"', "quoted pass 1"),
        (b"P='it\"s'", 'it"s'),
        (b'P=""', ""),
        (b'P=ab"c', 'ab"c'),  # a quote inside a bare value: systemd keeps it too
        (b"P=first\nP=second", "second"),  # the last one, as systemd takes it
        (b"# a comment\n  ; another\nP=x", "x"),
    ],
)
def test_a_line_systemd_reads_as_written_is_read_the_same(
    tmp_path: Path, line: bytes, value: str
) -> None:
    done = _read(tmp_path, line + b"\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"[{value}]", done.stdout


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"  P=secret1", "line 1 (P) is not NAME=VALUE from the line's start"),
        (b"P = secret1", "line 1 (P) is not NAME=VALUE from the line's start"),
        (b"P=secret1 ", "line 1 (P) has blanks at an end of its value"),
        (b'P="secret1"x', "line 1 (P) has quotes that do not enclose its whole value once"),
        (b'P="', "line 1 (P) has quotes that do not enclose its whole value once"),
        (b"P=secret1\r", "line 1 (P) has a carriage return"),
        (b"P=secret1\rX_Y=1", "line 1 (P) has a carriage return"),
        (b"# old: C:\\\nP=secret1", "line 1 has a backslash"),
        (b"P=sec\\ret1", "line 1 (P) has a backslash"),
        (b"P=sec\tret1", "line 1 (P) has a control character"),
        ("P=sec\u2028ret1".encode(), "line 1 (P) has a control character or a line separator"),
        (b"P=sec\x00ret1", "holds a NUL byte"),
        (b"P=secr\xe9t1", "is not UTF-8 text"),
        (b"secret1", "line 1 is not NAME=VALUE"),
    ],
)
def test_a_line_systemd_reads_otherwise_is_refused_naming_it_never_its_value(
    tmp_path: Path, content: bytes, said: str
) -> None:
    done = _read(tmp_path, content + b"\n")
    assert done.returncode == 1, done.stdout
    assert said in done.stderr, done.stderr
    assert "Nothing was changed" in done.stderr
    assert "ret1" not in done.stderr, done.stderr
