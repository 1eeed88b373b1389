"""Relays into the board's broker, found from the broker's side (docs/doctor.md, broker config).

A program on the board that holds a connection to the board's broker and serves others (a
copy of Mosquitto under another name bridging in, socat, a flow editor, an ``ssh -R`` tunnel)
lets whoever reaches it act on the broker with the account it logged in with, the tablet's
say, by its own rules, not the board's. Found by what it does, never by its name: the kernel's
socket tables (``/proc/PID/net/tcp``, ``tcp6``, ``udp``, ``udp6``, ``unix``, one reading per
network namespace the doctor can see) give the broker's established connections on its
listening ports; a peer on this machine is the other end of the same connection (its
addresses mirrored) in some namespace, and its socket's inode, found among the descriptors of
``/proc/*/fd``, names the processes holding it. Such a process is a relay when it also listens
(TCP, UDP, a unix stream socket), holds a connection it accepted, or holds a connection to a
peer that is not on this machine.

The parsing and the judgement are pure functions of the tables' text; ``relays`` gathers them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from treadguard.controller.broker_config import process_sockets

Endpoint = tuple[str, int]

ESTABLISHED = "01"  # the kernel's TCP_ESTABLISHED in /proc/net/tcp's st column
LISTEN = "0A"  # TCP_LISTEN
UNIX_ACCEPTING = 0x10000  # __SO_ACCEPTCON in /proc/net/unix's Flags: a listening socket
UNIX_STREAM_TYPES = (1, 5)  # SOCK_STREAM, SOCK_SEQPACKET
SERVICE_UNIT = "treadguard.service"  # the unit scripts/install installs (config/systemd)


@dataclass(frozen=True)
class Row:
    """One socket of /proc/net/tcp, tcp6, udp or udp6 (an IPv4-mapped IPv6 address as IPv4)."""

    local: Endpoint
    remote: Endpoint
    state: str
    inode: int


def _endpoint(word: str) -> Endpoint:
    address, port = word.split(":")
    raw = bytes.fromhex(address)
    if len(raw) not in (4, 16):
        raise ValueError(word)
    # The kernel prints each 32-bit word of the address in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), int(port, 16)


def parse_inet(text: str) -> list[Row]:
    """The rows of /proc/net/tcp, tcp6, udp or udp6 (all share these columns: sl,
    local_address, rem_address, st, ..., inode as the tenth)."""
    rows = []
    for line in text.splitlines()[1:]:
        cols = line.split()
        if len(cols) < 10:
            continue
        try:
            rows.append(Row(_endpoint(cols[1]), _endpoint(cols[2]), cols[3].upper(), int(cols[9])))
        except ValueError:
            continue
    return rows


def parse_unix_listening(text: str) -> dict[int, str]:
    """The listening stream and seqpacket sockets of /proc/net/unix: inode -> path ("" for
    one without a name, "@NAME" for an abstract one)."""
    found = {}
    for line in text.splitlines()[1:]:
        cols = line.split(maxsplit=7)
        if len(cols) < 7:
            continue
        try:
            flags, kind, inode = int(cols[3], 16), int(cols[4], 16), int(cols[6])
        except ValueError:
            continue
        if flags & UNIX_ACCEPTING and kind in UNIX_STREAM_TYPES:
            found[inode] = cols[7] if len(cols) > 7 else ""
    return found


@dataclass
class Net:
    """One network namespace's sockets."""

    tcp: list[Row] = field(default_factory=list)
    udp: list[Row] = field(default_factory=list)
    unix_listening: dict[int, str] = field(default_factory=dict)


def shown(end: Endpoint) -> str:
    return f"[{end[0]}]:{end[1]}" if ":" in end[0] else f"{end[0]}:{end[1]}"


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address).is_loopback


def _unspecified(address: str) -> bool:
    return ipaddress.ip_address(address).is_unspecified


def _mirrors(row: Row, nets: Iterable[Net]) -> set[int]:
    """The sockets at the other end of ``row``'s connection in ``nets`` (its addresses
    mirrored), by inode; 0 (no process holds it any more) left out."""
    return {
        other.inode
        for net in nets
        for other in net.tcp
        if other.local == row.remote and other.remote == row.local and other.inode
    }


@dataclass(frozen=True)
class Client:
    """A connection to the broker from this machine: the broker's end, the client's end and
    the client's socket(s) found (none: on this machine, but not found)."""

    at: Endpoint
    peer: Endpoint
    inodes: frozenset[int]


def local_clients(
    broker_net: Net, broker_inodes: set[int], ports: set[int], nets: list[Net], here: set[str]
) -> list[Client]:
    """The broker's established connections on its listening ``ports`` whose peer is on this
    machine: its other end found in a namespace the doctor sees (a peer on loopback only in
    the broker's own), or a peer address that is loopback or one of the broker's namespace's
    own (``here``), then not found."""
    found = []
    for row in broker_net.tcp:
        if row.inode not in broker_inodes or row.state != ESTABLISHED or row.local[1] not in ports:
            continue
        loop = _loopback(row.remote[0])
        inodes = _mirrors(row, [broker_net] if loop else nets)
        if inodes or loop or row.remote[0] in here:
            found.append(Client(row.local, row.remote, frozenset(inodes)))
    return found


def serves(inodes: set[int], nets: list[Net]) -> list[str]:
    """What makes the holder of socket ``inodes`` a relay, in words: a TCP socket listening
    (any address), a UDP socket bound with no peer, a unix stream socket listening, a TCP
    connection it accepted (its local address one where its namespace listens), or a TCP
    connection to a peer not on this machine (its other end in no namespace seen, not on
    loopback). Empty for a client only of this machine's own services."""
    said: list[str] = []
    for net in nets:
        listening = [r.local for r in net.tcp if r.state == LISTEN]
        for row in net.tcp:
            if row.inode not in inodes:
                continue
            if row.state != LISTEN and not row.remote[1]:
                continue  # bound, neither listening nor connected: no one reaches it yet
            if row.state == LISTEN:
                said.append(f"listens on {shown(row.local)}")
            elif any(
                port == row.local[1] and (address == row.local[0] or _unspecified(address))
                for address, port in listening
            ):
                said.append(
                    f"holds a connection it accepted at {shown(row.local)} from {shown(row.remote)}"
                )
            elif not _loopback(row.remote[0]) and not _mirrors(row, nets):
                said.append(f"holds a connection to {shown(row.remote)}, not this machine")
        for row in net.udp:
            if row.inode not in inodes:
                continue
            if row.local[1] and not row.remote[1]:
                said.append(f"receives UDP on {shown(row.local)}")
            elif (
                row.remote[1]
                and row.remote[1] not in UDP_ASKED
                and not _loopback(row.remote[0])
                and not _udp_here(row, nets)
            ):
                said.append(f"sends UDP to {shown(row.remote)}, not this machine")
        for inode, path in net.unix_listening.items():
            if inode in inodes:
                said.append(f"listens on the unix socket {path or '(without a name)'}")
    return list(dict.fromkeys(said))


# A UDP socket connected to another machine at these ports asks it something (a name, the
# time), as any program may: DNS and NTP. At any other port it is taken to send on.
UDP_ASKED = frozenset({53, 123})


def _udp_here(row: Row, nets: list[Net]) -> bool:
    """Whether a UDP socket's peer is a socket of this machine (one the doctor sees)."""
    return any(other.local == row.remote for net in nets for other in net.udp)


def hops(inodes: set[int], nets: list[Net], skip: set[int]) -> set[int]:
    """The sockets at the far end of the TCP connections ``inodes`` hold to this machine's own
    services (their peers' sockets, found in a namespace the doctor sees), but ``skip``'s."""
    far: set[int] = set()
    for net in nets:
        for row in net.tcp:
            if row.inode in inodes and row.state == ESTABLISHED:
                far |= _mirrors(row, nets) - skip
    return far


def is_the_service(cgroup: str) -> bool:
    """Whether /proc/PID/cgroup's text puts the process in treadguard's own unit (systemd's
    cgroup for it, in either hierarchy): only root, or systemd, puts a process there."""
    for line in cgroup.splitlines():
        path = line.split(":", 2)[-1]
        if path == f"/system.slice/{SERVICE_UNIT}":
            return True
    return False


# ------------------------------------------------------------------ gathered from /proc


def _read_net(folder: Path) -> Net:
    net = Net()
    for name, rows in (("tcp", net.tcp), ("tcp6", net.tcp), ("udp", net.udp), ("udp6", net.udp)):
        with contextlib.suppress(FileNotFoundError):  # no IPv6 in this kernel
            rows.extend(parse_inet((folder / name).read_text()))
    with contextlib.suppress(FileNotFoundError):
        net.unix_listening = parse_unix_listening((folder / "unix").read_text())
    return net


def namespaces(proc: Path = Path("/proc")) -> tuple[dict[str, Net], dict[int, str]]:
    """Every network namespace the doctor can see (one reading of each, through the first of
    its processes), and each process's namespace."""
    nets: dict[str, Net] = {}
    of: dict[int, str] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            key = os.readlink(entry / "ns" / "net")
            if key not in nets:
                nets[key] = _read_net(entry / "net")
        except OSError:
            continue  # another user's process (not root), or one that just ended
        of[int(entry.name)] = key
    return nets, of


def holders(proc: Path = Path("/proc")) -> tuple[dict[int, set[int]], dict[int, set[int]], bool]:
    """Which processes hold each socket (inode -> pids), each process's sockets, and whether
    some process's descriptors could not be read (another user's, the doctor not root)."""
    by_inode: dict[int, set[int]] = {}
    by_pid: dict[int, set[int]] = {}
    hidden = False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            fds = list((entry / "fd").iterdir())
        except FileNotFoundError:
            continue  # ended
        except OSError:
            hidden = True
            continue
        # A thread may hold a table of its own (unshare(CLONE_FILES)): its sockets are the
        # process's too, and /proc/PID/fd does not show them.
        with contextlib.suppress(OSError):
            for task in (entry / "task").iterdir():
                if task.name != entry.name:
                    with contextlib.suppress(OSError):
                        fds.extend((task / "fd").iterdir())
        mine = by_pid.setdefault(pid, set())
        for fd in fds:
            try:
                target = os.readlink(fd)
            except PermissionError:  # listed, but not read: another user's, root's powers gone
                hidden = True
                continue
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[len("socket:[") : -1])
                mine.add(inode)
                by_inode.setdefault(inode, set()).add(pid)
    return by_inode, by_pid, hidden


def printable(text: str) -> str:
    """A command line as words a person can read: each character that is not printable (a
    line break, an escape) as its code."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def described(pid: int, proc: Path = Path("/proc")) -> str:
    """A process as the doctor names it: its name, pid, executable and command line."""
    try:
        name = (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        name = "?"
    try:
        exe = os.readlink(proc / str(pid) / "exe")
    except OSError:
        exe = "(its executable cannot be read)"
    try:
        words = (proc / str(pid) / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        command = " ".join(os.fsdecode(w) for w in words)
    except OSError:
        command = "?"
    return f"{printable(name)} (pid {pid}, {printable(exe)}, command line: {printable(command)})"


def in_the_service(pid: int, proc: Path = Path("/proc")) -> bool:
    try:
        return is_the_service((proc / str(pid) / "cgroup").read_text())
    except OSError:
        return False


HOPS_MAX = 4  # processes followed along connections on this machine, one to the next


def _served_through(
    pid: int,
    by_inode: dict[int, set[int]],
    by_pid: dict[int, set[int]],
    nets: list[Net],
    exempt: set[int],
    skip: set[int],
) -> list[str]:
    """A relay split in parts joined by a connection on this machine (a broker client that
    hands what it gets to a process of its own over 127.0.0.1, which serves the network): the
    processes reached from ``pid`` along its TCP connections to this machine's own services,
    up to HOPS_MAX away, each judged as the broker's clients are. Words naming the first one
    that serves, or none."""
    seen = {pid} | exempt
    frontier = [pid]
    for _ in range(HOPS_MAX):
        reached: list[int] = []
        for here in frontier:
            far = hops(by_pid.get(here, set()), nets, skip)
            for other in sorted(set().union(*(by_inode.get(i, set()) for i in far)) - seen):
                seen.add(other)
                if in_the_service(other):
                    continue
                why = serves(by_pid.get(other, set()), nets)
                if why:
                    return [
                        f"is joined on this machine to {described(other)}, which " + ", ".join(why)
                    ]
                reached.append(other)
        frontier = reached
        if not frontier:
            break
    return []


RELAY_FIX = (
    "a board's broker takes no relay: stop that program and keep it from starting again "
    "(sudo systemctl disable --now UNIT, systemctl status PID names its unit; a container: "
    "stop it); treadguard's own daemon run by hand: run it as the service (sudo systemctl "
    "start treadguard); then run the doctor again"
)
UNSEEN_FIX = (
    "run the doctor as root (sudo), which reads every process's sockets; sudo ss -tnp shows "
    "which program holds the connection: a relay, stop it"
)


@dataclass(frozen=True)
class Finding:
    """What the doctor cannot pass, in words, and its fix."""

    said: str
    fix: str


def relays(broker: int, ports: set[int], exempt: set[int], here: set[str]) -> list[Finding]:
    """What the doctor cannot pass among the local clients of the broker process ``broker``
    (listening on ``ports``): each relay named, and each connection from this machine whose
    process cannot be inspected. Not judged: the processes in ``exempt`` (the doctor, the
    broker itself, processes judged by other checks) and treadguard's own unit. ``here``: the
    addresses of the broker's network namespace."""
    try:
        broker_inodes = process_sockets(broker)
        broker_key = os.readlink(f"/proc/{broker}/ns/net")
    except OSError as exc:
        return [
            Finding(f"the broker's connections cannot be read by the doctor ({exc})", UNSEEN_FIX)
        ]
    nets, _ = namespaces()
    all_nets = list(nets.values())
    broker_net = nets.get(broker_key) or _read_net(Path(f"/proc/{broker}/net"))
    clients = local_clients(broker_net, broker_inodes, ports, all_nets, here)
    if not clients:
        return []
    by_inode, by_pid, hidden = holders()
    found: list[Finding] = []
    judged: set[int] = set()
    unseen: list[Client] = []
    for client in clients:
        pids = set().union(*(by_inode.get(i, set()) for i in client.inodes))
        if not pids:
            unseen.append(client)
            continue
        for pid in sorted(pids - exempt - judged):
            judged.add(pid)
            if in_the_service(pid):
                continue
            why = serves(by_pid.get(pid, set()), all_nets) or _served_through(
                pid, by_inode, by_pid, all_nets, exempt | {broker}, broker_inodes
            )
            if why:
                found.append(
                    Finding(
                        f"{described(pid)} holds a connection to the board's broker at "
                        f"{shown(client.at)} from {shown(client.peer)}, and {', '.join(why)}: "
                        "whoever reaches it may act on the broker with the account it logged "
                        "in with (the tablet's, say), by its own rules, not the board's",
                        RELAY_FIX,
                    )
                )
    if unseen:
        # A connection that ended meanwhile is nobody's: only those still there are said.
        now = _read_net(Path(f"/proc/{broker}/net"))
        still = {(r.local, r.remote) for r in now.tcp if r.state == ESTABLISHED}
        for client in unseen:
            if (client.at, client.peer) not in still:
                continue
            who = (
                "a process whose sockets the doctor cannot read (another user's: the doctor "
                "is not root, or runs without root's powers)"
                if hidden
                else "no process the doctor can see (a namespace it cannot see, or a socket "
                "passed on)"
            )
            found.append(
                Finding(
                    f"a connection to the board's broker at {shown(client.at)} from "
                    f"{shown(client.peer)}, on this board, is held by {who}: whether it "
                    "relays for others is not known",
                    UNSEEN_FIX,
                )
            )
    return found
