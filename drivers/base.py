"""The one interface every treadmill driver offers to the controller.

Commands are non-blocking: the control tick and the emergency-stop path never wait for a wire.
A driver sends an ordinary command when its link allows and hands an emergency stop to the
wire at once, ahead of anything queued (SR-13).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from treadguard.safety.inputs import DriveFailure


@dataclass(frozen=True, slots=True)
class DriveStatus:
    """The latest answer from the drive. ``t`` is when it arrived, on the controller's clock."""

    t: float
    speed_mph: float
    # A fault the drive reported or the driver detected (refused command, bad answer), in words
    # that start with its kind: "drive_link: ..." or "drive_fault: ...".
    fault: str | None = None


def failure_of(fault: str) -> DriveFailure:
    """The kind of a fault from its text; anything not marked as the link is the drive's."""
    return DriveFailure.LINK if fault.startswith(DriveFailure.LINK.value) else DriveFailure.FAULT


class TreadmillDriver(Protocol):
    def command_speed(self, mph: float, *, slowing: bool = False) -> None:
        """Ask for this belt speed (0 stops the belt at the drive's normal deceleration).

        ``slowing``: the ask belongs to a decision that slows the belt (a stop's ramp, a lower
        speed, the held first decision of a stop). Such an ask never raises the speed the drive
        was last told and never starts a belt that is not running on the wire: a start not yet
        fully written becomes a stop, a higher speed still queued is dropped, and the speed
        written is at most the one last written (H-11, H-14). A plain ask is carried out as
        asked."""

    def emergency_stop(self) -> None:
        """The drive's fastest stop, handed to the wire before this returns where it can be."""

    def status(self) -> DriveStatus | None:
        """The newest status, or None before the drive has ever answered."""

    async def run(self) -> None:
        """The driver's own I/O (polling, writing); runs until cancelled."""
