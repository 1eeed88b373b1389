"""The broker as installed, read for ``treadguard doctor`` (docs/doctor.md): Mosquitto's
configuration (its main file, the ``include_dir`` it names, the ``acl_file``), who the ACL lets
write each topic that must be refused to the others, and the TCP sockets the broker process
actually listens on (``/proc``).

Only reading: nothing here connects to the broker or changes a file.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Debian's: the package's own file, which reads /etc/mosquitto/conf.d/*.conf.
DEBIAN_MOSQUITTO_CONF = Path("/etc/mosquitto/mosquitto.conf")


# ------------------------------------------------------------------ the configuration files


@dataclass(frozen=True)
class ConfLine:
    """One setting: ``key value`` at ``number`` (counted from 1) of ``file``."""

    file: Path
    number: int
    key: str
    value: str

    @property
    def where(self) -> str:
        return f"{self.file}, line {self.number}"


@dataclass(frozen=True)
class Listener:
    """A ``listener PORT [ADDRESS]`` line and the settings of that listener after it."""

    port: int
    address: str | None
    line: ConfLine
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def tls(self) -> bool:
        """Clients speak TLS to it: a certificate and key (or a pre-shared key) of its own."""
        s = self.settings
        return ("certfile" in s and "keyfile" in s) or "psk_hint" in s


@dataclass(frozen=True)
class MosquittoConf:
    files: list[tuple[Path, int]]  # each file read, in order, and its size in bytes
    lines: list[ConfLine]

    def last(self, key: str) -> ConfLine | None:
        """The line that decides a setting of the whole broker (the last one read)."""
        found = [line for line in self.lines if line.key == key]
        return found[-1] if found else None

    def listeners(self) -> list[Listener]:
        found: list[Listener] = []
        for line in self.lines:
            if line.key == "listener":
                port, _, address = line.value.partition(" ")
                try:
                    number = int(port)
                except ValueError:
                    continue  # Mosquitto refuses to start: the broker check says so
                found.append(Listener(number, address.strip() or None, line))
            elif found:
                found[-1].settings[line.key] = line.value
        return found

    def empty_files(self) -> list[Path]:
        return [path for path, size in self.files if size == 0]


def read_mosquitto_conf(path: Path) -> MosquittoConf:
    """``path`` and the files of its ``include_dir`` lines (each folder's ``*.conf``, in
    alphabetical order, read where the line is, as Mosquitto reads them). OSError (as
    PermissionError or FileNotFoundError, with the file's name) if a file cannot be read."""
    files: list[tuple[Path, int]] = []
    lines: list[ConfLine] = []
    for line in _conf_lines(path, files):
        if line.key == "include_dir":
            folder = Path(line.value)
            for included in sorted(p for p in folder.iterdir() if p.name.endswith(".conf")):
                lines.extend(_conf_lines(included, files))
        else:
            lines.append(line)
    return MosquittoConf(files, lines)


def _conf_lines(path: Path, files: list[tuple[Path, int]]) -> Iterator[ConfLine]:
    data = path.read_bytes()
    files.append((path, len(data)))
    for number, raw in enumerate(data.decode(errors="replace").splitlines(), start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        key, _, value = text.partition(" ")
        yield ConfLine(path, number, key, value.strip())


# ------------------------------------------------------------------ the ACL


ANONYMOUS = None  # the owner of the lines before any user line: clients without an account
EVERY_ACCOUNT = "*"  # the owner of a pattern line: it applies to every client


@dataclass(frozen=True)
class AclLine:
    file: Path
    number: int
    text: str
    owner: str | None  # an account, ANONYMOUS or EVERY_ACCOUNT
    access: str  # read, write, readwrite or deny
    topic: str

    @property
    def writes(self) -> bool:
        return self.access in ("write", "readwrite")

    @property
    def where(self) -> str:
        return f"{self.file}, line {self.number} ({self.text!r})"


class AclSyntaxError(ValueError):
    pass


ACCESS = ("read", "write", "readwrite", "deny")


def read_acl(path: Path) -> list[AclLine]:
    """Every ``topic`` and ``pattern`` line of an ACL file, each with the account it applies
    to. OSError if the file cannot be read; AclSyntaxError naming a line Mosquitto would not
    take either."""
    found: list[AclLine] = []
    owner: str | None = ANONYMOUS
    text = path.read_bytes().decode(errors="replace")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word == "user":
            owner = rest
            continue
        if word not in ("topic", "pattern") or not rest:
            raise AclSyntaxError(f"{path}, line {number} ({line!r}) is not an ACL line")
        access, _, topic = rest.partition(" ")
        if access not in ACCESS or not topic.strip():
            access, topic = "readwrite", rest  # no access word: read and write
        found.append(
            AclLine(
                path,
                number,
                line,
                EVERY_ACCOUNT if word == "pattern" else owner,
                access,
                topic.strip(),
            )
        )
    return found


def _levels(topic: str, pattern: bool) -> list[str]:
    # In a pattern, %u and %c stand for the client's user name and client id: any one level.
    return ["+" if pattern and "%" in level else level for level in topic.split("/")]


def overlap(a: list[str], b: list[str]) -> bool:
    """Whether some topic matches both filters (MQTT's ``+`` and ``#``)."""
    for i in range(max(len(a), len(b)) + 1):
        if (i < len(a) and a[i] == "#") or (i < len(b) and b[i] == "#"):
            return True
        if i == len(a) or i == len(b):
            return len(a) == len(b)
        if "+" not in (a[i], b[i]) and a[i] != b[i]:
            return False
    return False


def covers(outer: list[str], inner: list[str]) -> bool:
    """Whether every topic that matches ``inner`` matches ``outer``."""
    for i, level in enumerate(outer):
        if level == "#":
            return True
        if i >= len(inner) or inner[i] == "#":
            return False
        if level != "+" and (inner[i] == "+" or inner[i] != level):
            return False
    return len(outer) == len(inner)


@dataclass(frozen=True)
class Guarded:
    """Topics only some accounts may write: ``topic`` (a filter), who may (``may``), and those
    accounts in words."""

    topic: str
    may: Callable[[str], bool]
    who: str


@dataclass(frozen=True)
class Breach:
    line: AclLine
    topics: list[str]
    who: list[str]  # the "only ... may" words of each topic's guard


def breaches(lines: list[AclLine], guarded: list[Guarded]) -> list[Breach]:
    """Each line that lets an account write a guarded topic it may not, with those topics.
    A ``deny`` of the account's own (or a pattern's) that covers the whole topic takes the
    grant back, as Mosquitto checks the denials first."""
    found: list[Breach] = []
    for line in lines:
        if not line.writes:
            continue
        grant = _levels(line.topic, line.owner == EVERY_ACCOUNT)
        topics, who = [], []
        for guard in guarded:
            target = guard.topic.split("/")
            if not overlap(grant, target):
                continue
            named = line.owner not in (ANONYMOUS, EVERY_ACCOUNT)
            if named and guard.may(str(line.owner)):
                continue
            if _denied(lines, line.owner, target):
                continue
            topics.append(guard.topic)
            who.append(guard.who)
        if topics:
            found.append(Breach(line, topics, who))
    return found


def _denied(lines: list[AclLine], owner: str | None, target: list[str]) -> bool:
    for line in lines:
        if line.access != "deny" or line.owner not in (owner, EVERY_ACCOUNT):
            continue
        if "%" in line.topic:
            continue  # a pattern's denial holds for some accounts only: not counted
        if covers(line.topic.split("/"), target):
            return True
    return False


def owner_words(owner: str | None) -> str:
    if owner is ANONYMOUS:
        return "a client without an account (a line before any user line)"
    if owner == EVERY_ACCOUNT:
        return "every account (a pattern line applies to all)"
    return f"the account {owner}"


# ------------------------------------------------------------------ what listens


@dataclass(frozen=True)
class Socket:
    address: str  # as ipaddress prints it
    port: int
    inode: int

    @property
    def loopback(self) -> bool:
        ip = ipaddress.ip_address(self.address)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    @property
    def shown(self) -> str:
        return (
            f"[{self.address}]:{self.port}"
            if ":" in self.address
            else f"{self.address}:{self.port}"
        )


LISTEN = "0A"  # the kernel's TCP_LISTEN in /proc/net/tcp's st column


def listening(net: Path = Path("/proc/net")) -> list[Socket]:
    """The TCP sockets listening in a network namespace (``/proc/net`` this process's, or
    ``/proc/PID/net`` another's), IPv4 and IPv6."""
    found = []
    for name in ("tcp", "tcp6"):
        try:
            rows = (net / name).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue  # no IPv6 in this kernel
        for row in rows:
            cols = row.split()
            if len(cols) < 10 or cols[3] != LISTEN:
                continue
            address, port = cols[1].split(":")
            found.append(Socket(_address(address), int(port, 16), int(cols[9])))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    # The kernel prints each 32-bit word of the address in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def socket_owners(inodes: set[int], proc: Path = Path("/proc")) -> dict[int, int]:
    """Which process holds each socket inode (pid by inode), as far as this process may read
    the others' file descriptors (all of them as root)."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    owners: dict[int, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue  # another user's process (not root), or one that just ended
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target in wanted:
                owners[wanted[target]] = int(entry.name)
    return owners


def process_sockets(pid: int, proc: Path = Path("/proc")) -> set[int]:
    """The socket inodes process ``pid`` holds. OSError if its descriptors cannot be read."""
    found = set()
    for fd in (proc / str(pid) / "fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[len("socket:[") : -1]))
    return found


def process_name(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"
