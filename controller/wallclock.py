"""The daemon's wall clock, in one place (SR-16).

Wall time is for display and records only: the state's and events' ``ts`` (through
:func:`controller.mqtt_link.unix_mapper`, which reads it once, at start-up) and the journal's
rows. No safety decision and no command's acceptance reads it.

``TREADGUARD_TEST_WALL_STEP_FILE`` (tests only) names a file holding a number of seconds that
is added to the wall clock, re-read whenever the file changes: the way a test steps the wall
clock of a real daemon, as NTP does on a Raspberry Pi without a real-time clock, without
stepping the machine's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from treadguard.config.loading import WALL_STEP_FILE_ENV

WallClock = Callable[[], float]
STEP_FILE_ENV = WALL_STEP_FILE_ENV


class _SteppedWall:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: int | None = None
        self._offset = 0.0

    def __call__(self) -> float:
        try:
            stamp = self._path.stat().st_mtime_ns
            if stamp != self._stamp:
                self._offset = float(self._path.read_text(encoding="utf-8").strip() or "0")
                self._stamp = stamp
        except (OSError, ValueError):
            pass  # a file being rewritten: the step read last stays
        return time.time() + self._offset


def wall_clock(environ: Mapping[str, str] = os.environ) -> WallClock:
    """``time.time``, or (tests) the same stepped by the number in the step file."""
    path = environ.get(STEP_FILE_ENV)
    return time.time if not path else _SteppedWall(Path(path))
