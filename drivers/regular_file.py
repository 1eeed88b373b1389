"""How every part reads a file a person named (a configuration, a program, the rules, a
register map, a scenario, a broker's file): only if it is a regular file, opened without
waiting. A pipe (``mkfifo rules.toml``) or a device would hold the reader until a writer
came, for ever and deaf to signals: a daemon's worker, ``check-config`` or the doctor hung,
and a check that never answers is no refusal. Here the lowest layer that reads files."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path


class NotARegularFile(OSError):
    """A path that leads to a pipe, a device or a folder where a file was to be read."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.EINVAL, "not a regular file", str(path))

    def __str__(self) -> str:
        return f"{self.filename} is not a regular file"


def read_regular(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file (links followed); NotARegularFile
    otherwise, OSError if it cannot be read."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(path)
        with os.fdopen(fd, "rb", closefd=False) as file:
            return file.read()
    finally:
        os.close(fd)


def read_regular_text(path: Path) -> str:
    """``read_regular`` as UTF-8 text (UnicodeDecodeError if it is not)."""
    return read_regular(path).decode("utf-8")
