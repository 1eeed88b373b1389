"""``treadguard commission`` (the guided run) in a process of its own, its standard input a
pipe the test writes as the technician's terminal, its output read line by line."""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from tests.daemon_process import ROOT

PROMPT = ">> "  # a request of the technician's, on the terminal
ENDED = "commissioning (passed|failed|aborted)"  # the last line: the outcome


class CommissionProcess:
    def __init__(self, proc: asyncio.subprocess.Process, stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read(), name="commission-stdout")

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._changed.set()
        self._changed.set()

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def until(self, pattern: str, within: float, *, after: int = 0) -> int:
        """The index of the first output line from ``after`` on matching ``pattern``."""
        async with asyncio.timeout(within):
            while True:
                for i in range(after, len(self.lines)):
                    if re.search(pattern, self.lines[i]):
                        return i
                if self._reader.done():
                    raise AssertionError(f"no {pattern!r} in the output:\n{self.text}")
                self._changed.clear()
                await self._changed.wait()

    async def type(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()

    async def exit_code(self, within: float) -> int:
        async with asyncio.timeout(within):
            code = await self.proc.wait()
            await self._reader
        return code


@asynccontextmanager
async def commission(config: Path, workdir: Path) -> AsyncIterator[CommissionProcess]:
    """``treadguard commission --config config`` running; killed on the way out if it runs."""
    stderr = workdir / "commission.stderr"
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "treadguard.controller.cli",
            "commission",
            "--config",
            str(config),
            "--technician",
            "T. Terminal",
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "PYTHONUNBUFFERED": "1"},
        )
    process = CommissionProcess(proc, stderr)
    try:
        yield process
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        with suppress(Exception):
            await process._reader
