"""One treadguard process speaking for a treadmill on a broker, and one driving a drive,
whatever journal it writes.

The journal's lock (controller/journal.py) keeps a second process off the same journal file.
A configuration copied and pointed at another journal got past it: that process then spoke on
the running daemon's topics, under its client id, and the daemon took it for a rival and
stopped the patient's belt. So a process also holds its treadmill's topics on its broker (a
name made from the broker's port and the topic prefix, in Linux's abstract socket namespace),
bound before anything is connected or opened; and the drive, by what names it (its kind and where
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
import ipaddress
import os
import socket

from treadguard.config.schema import DriveSection, ModbusDriveSection, TrackmasterDriveSection
from treadguard.controller.journal import drive_identity


class TreadmillHeld(RuntimeError):
    """Another treadguard process speaks for this treadmill on this broker, or drives its
    drive."""


def topic_lock_name(port: int, prefix: str) -> bytes:
    """The abstract socket name for ``prefix``'s topics on the broker at ``port``: a digest,
    as a prefix may be longer than a socket name (107 bytes) and hold any character."""
    return _name(f"topics {port} {prefix}")


def drive_lock_names(drive: DriveSection) -> list[bytes]:
    """The abstract socket names for the drive ``drive`` configures, however it is spelled:
    a serial port by the device its name leads to (/dev/serial/by-id/... and /dev/ttyUSB0
    are one), a Modbus TCP host by each address it resolves to (localhost, 127.0.0.1 and
    ::ffff:127.0.0.1, a name and its address, are one); a second process on it, under
    another treadmill id or broker, would command the same belt. No name for the in-process
    simulator (each process has its own)."""
    if isinstance(drive, TrackmasterDriveSection):
        return [_name(f"serial {_device(drive.port)}")]
    if not isinstance(drive, ModbusDriveSection):
        return []
    if drive.transport == "rtu":
        return [_name(f"serial {_device(str(drive.serial_port))}")]
    return [
        _name(f"modbus tcp {address}:{drive.tcp_port} unit {drive.device_id}")
        for address in _addresses(str(drive.host), drive.tcp_port)
    ]


def _device(port: str) -> str:
    return os.path.realpath(port)


def _addresses(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (sorted), or the host as written if it resolves to
    none: the lock is then only as good as its spelling."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return [host]
    return sorted({_plain(str(info[4][0])) for info in found}) or [host]


def _plain(address: str) -> str:
    """An address as one socket is reached by it: an IPv4 address written as IPv6
    (::ffff:127.0.0.1, IPv4-mapped) is that IPv4 address; the unspecified address (0.0.0.0,
    ::), which a connection takes for this machine, is its loopback address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    if mapped is not None:
        ip = mapped
    if ip.is_unspecified:
        return "127.0.0.1" if ip.version == 4 else "::1"
    return str(ip)


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


def hold_drive(drive: DriveSection) -> list[socket.socket | None]:
    """The locks on the drive ``drive`` configures (see drive_lock_names), each as
    :func:`hold`; none held if one is another's."""
    said = drive_identity(drive)
    held: list[socket.socket | None] = []
    try:
        for name in drive_lock_names(drive):
            held.append(
                hold(
                    name,
                    f"another treadguard process drives the {said} (the service, or a "
                    "commissioning run, perhaps with a configuration for another treadmill "
                    "id, or naming the drive another way): stop that first",
                )
            )
    except TreadmillHeld:
        for lock in held:
            if lock is not None:
                lock.close()
        raise
    return held


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
