"""How well a treadmill stopped when it was commissioned: the yardstick for every later stop.

Commissioning (``treadguard commission``) measures each stop source on the real machine and
keeps, per kind of stop, the time from the stop's trigger to standstill and the belt's mean
deceleration over it. The stop-quality watch compares every later stop of the same kind with
it. An emergency stop (E-STOP, a grip released, a fall, the drive's deadman) and a controlled
stop (the cap, the clinician's stop) brake differently, so each kind has its own baseline.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class StopKind(StrEnum):
    EMERGENCY = "emergency"
    CONTROLLED = "controlled"


@dataclass(frozen=True, slots=True)
class StopBaseline:
    kind: StopKind
    # From the stop's trigger to the first status showing standstill.
    standstill_s: float
    # The belt's speed when the stop was triggered over the time it took to stand still.
    deceleration_mph_per_s: float
