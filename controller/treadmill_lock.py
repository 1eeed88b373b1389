"""One treadguard process speaking for a treadmill on a broker, and one driving a drive,
whatever journal it writes.

The journal's lock (controller/journal.py) keeps a second process off the same journal file.
A configuration copied and pointed at another journal got past it: that process then spoke on
the running daemon's topics, under its client id, and the daemon took it for a rival and
stopped the patient's belt. So a process also holds its treadmill's topics on its broker: the
name ``treadguard <broker port> <topic prefix>`` in Linux's abstract socket namespace, bound
before anything is connected or opened; and the drive, by what names it (its kind and where
it is reached: a copied configuration under another treadmill id, pointed at this treadmill's
drive, would command the same belt). Such a name needs no file and no permission, is one
for every user of the machine (the service's account and a technician's root alike), and is
let go by the kernel when the process ends, however it ends.

The broker is named by its port alone: the same broker can be reached as ``localhost``,
``127.0.0.1`` or the board's address, and a board runs one broker per port. Two treadmills
of the same id on different brokers at the same port are taken for one (the second refused,
saying so): a board never runs those.
"""

from __future__ import annotations

import errno
import hashlib
import socket


class TreadmillHeld(RuntimeError):
    """Another treadguard process speaks for this treadmill on this broker, or drives its
    drive."""


def topic_lock_name(port: int, prefix: str) -> bytes:
    """The abstract socket name for ``prefix``'s topics on the broker at ``port``: a digest,
    as a prefix may be longer than a socket name (107 bytes) and hold any character."""
    return _name(f"topics {port} {prefix}")


def drive_lock_name(drive: str) -> bytes:
    """The abstract socket name for the drive ``drive`` names (journal.drive_identity: its
    kind and where it is reached): a second process on it, under another treadmill id or
    broker, would command the same belt."""
    return _name(f"drive {drive}")


def _name(key: str) -> bytes:
    return b"\0treadguard-" + hashlib.sha256(key.encode()).hexdigest()[:40].encode()


def hold_treadmill(port: int, prefix: str) -> socket.socket | None:
    """The lock on ``prefix``'s topics on the broker at ``port``: see :func:`hold`."""
    return hold(
        topic_lock_name(port, prefix),
        f"another treadguard process speaks for {prefix} on the broker at port {port} "
        "(the service, or a commissioning run, perhaps with a configuration naming another "
        "journal): stop that first",
    )


def hold_drive(drive: str) -> socket.socket | None:
    """The lock on the drive ``drive`` names: see :func:`hold`."""
    return hold(
        drive_lock_name(drive),
        f"another treadguard process drives the {drive} (the service, or a commissioning "
        "run, perhaps with a configuration for another treadmill id): stop that first",
    )


def hold(name: bytes, held: str) -> socket.socket | None:
    """The lock ``name``, held while the returned socket is open (keep it for the process's
    life). TreadmillHeld, saying ``held``, if another process holds it. None where the
    system refuses abstract sockets for another reason (a sandbox): the process then runs
    without it, as before it (a rival is still told apart on the broker and the belt
    stopped)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(name)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise TreadmillHeld(held) from exc
        return None
    return sock


def is_held(name: bytes) -> bool:
    """Whether a process holds the lock ``name`` now (the doctor's look: taken and let go)."""
    try:
        sock = hold(name, "")
    except TreadmillHeld:
        return True
    if sock is not None:
        sock.close()
    return False
