"""What the commands print, whatever the names in it: a file name that is no UTF-8 (its
bytes kept by Python as lone surrogates) is written as ``\\xNN``, never raised as a
``UnicodeEncodeError`` half-way through a message. A board's usual UTF-8 locale makes
standard output strict; a name such as ``$'\\xff.toml'`` then ended a command in a traceback."""

from __future__ import annotations

import codecs
import io
import sys

ERRORS = "treadguard.shown"


def _shown(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    bad = exc.object[exc.start : exc.end]
    return "".join(_escaped(c) for c in bad), exc.end


def _escaped(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is no UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return c.encode("ascii", "backslashreplace").decode("ascii")


def make_output_safe() -> None:
    """Standard output and error write any text: what their encoding cannot hold is escaped."""
    codecs.register_error(ERRORS, _shown)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors=ERRORS)
