"""The broker as installed, read for ``treadguard doctor`` (docs/doctor.md): Mosquitto's
configuration (its main file, the ``include_dir`` it names, the ``acl_file``), who the ACL lets
write each topic that must be refused to the others, and the TCP sockets the broker process
actually listens on (``/proc``).

The files are read as Mosquitto 2.0.11 reads them (src/conf.c, src/security_default.c): lines
end at a newline only, a comment is a line whose first character is ``#``, words are separated
by spaces only. A line holding a character Mosquitto and another reader could take differently
(a control character other than a line's closing carriage return, a Unicode separator) is a
problem of its own, named with its file and line.

Only reading: nothing here connects to the broker or changes a file.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from treadguard.drivers.regular_file import read_regular

# Debian's: the package's own file, which reads /etc/mosquitto/conf.d/*.conf.
DEBIAN_MOSQUITTO_CONF = Path("/etc/mosquitto/mosquitto.conf")


# ------------------------------------------------------------------ lines as Mosquitto reads them


def file_lines(data: bytes) -> list[tuple[int, str]]:
    """Each line of a file (counted from 1) as Mosquitto's fgets reads it: split at ``\\n``
    only, the newline dropped. Undecodable bytes are kept apart (surrogateescape), so that two
    different lines never read as one text."""
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()  # the last line's newline, not a line of its own
    return [(n, raw.decode(errors="surrogateescape")) for n, raw in enumerate(parts, start=1)]


# Characters that are not control characters but that some readers take as a line break, a
# space or nothing at all (Python's str.splitlines and str.split, editors), and Mosquitto as a
# character of a word.
_SEPARATORS = frozenset(
    "\u0085\u00a0\u1680\u180e\u2028\u2029\u202f\u205f\u3000\ufeff"
    + "".join(chr(c) for c in range(0x2000, 0x2010))
    + "".join(chr(c) for c in range(0x2060, 0x2065))
)


def _named(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"the byte 0x{code - 0xDC00:02X}, not UTF-8"
    names = {
        "\t": "a tab",
        "\x0b": "a vertical tab",
        "\x0c": "a form feed",
        "\r": "a carriage return",
        "\x00": "a NUL byte",
        "\x85": "a next-line character",
        "\u2028": "a line separator",
        "\u2029": "a paragraph separator",
        "\u00a0": "a no-break space",
        "\ufeff": "a byte-order mark",
    }
    return f"U+{code:04X}" + (f" ({names[char]})" if char in names else "")


def unusual_characters(path: Path, lines: list[tuple[int, str]]) -> list[str]:
    """A problem for each line holding a character Mosquitto and the doctor (or the technician's
    editor) might read differently: a control character (but a carriage return closing the
    line, and a tab in a comment), a Unicode separator or invisible format character. Invalid
    UTF-8 is left alone: it never reads as a space or a line break."""
    found = []
    for number, text in lines:
        body = text[:-1] if text.endswith("\r") else text
        comment = body.startswith("#")
        odd = [
            c
            for c in body
            if (ord(c) < 0x20 and not (c == "\t" and comment))
            or ord(c) == 0x7F
            or 0x80 <= ord(c) < 0xA0
            or c in _SEPARATORS
        ]
        if odd:
            found.append(
                f"{path}, line {number} holds {_named(odd[0])}, which Mosquitto and the doctor "
                "may read differently: remove it"
            )
    return found


def _c_strip(text: str) -> str:
    """C's isspace() in the C locale, as Mosquitto trims (misc__trimblanks)."""
    return text.strip(" \t\n\v\f\r")


def _c_rstrip(text: str) -> str:
    return text.rstrip(" \t\n\v\f\r")


def _strtok(text: str) -> tuple[str | None, str]:
    """strtok_r(text, " "): the first word (None if there is none) and what follows the one
    space after it (strtok_r(NULL, "") of the rest, "" for none)."""
    stripped = text.lstrip(" ")
    if not stripped:
        return None, ""
    word, _, rest = stripped.partition(" ")
    return word, rest


def _atoi(text: str) -> int:
    """C's atoi(): leading blanks, a sign, the digits that follow; 0 if none."""
    s = text.lstrip(" \t\n\v\f\r")
    sign = -1 if s[:1] == "-" else 1
    if s[:1] in "+-":
        s = s[1:]
    digits = ""
    for c in s:
        if not "0" <= c <= "9":
            break
        digits += c
    return sign * int(digits) if digits else 0


# ------------------------------------------------------------------ the configuration files


@dataclass(frozen=True)
class ConfLine:
    """One setting: ``key value`` at ``number`` (counted from 1) of ``file``. ``part``: which
    reading of a file it comes from (a listener's settings never cross into another file's
    reading, as in Mosquitto, where each included file starts with the default listener)."""

    file: Path
    number: int
    key: str
    value: str
    part: int = 0
    # The rest of the line as Mosquitto's strtok_r(NULL, "") hands it to the settings that
    # take it whole (include_dir): from the character after the one space past the key, to
    # the end, blanks included.
    raw: str = ""

    @property
    def where(self) -> str:
        return f"{self.file}, line {self.number}"

    @property
    def first_word(self) -> str:
        word, _ = _strtok(self.value)
        return word or ""


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

    @property
    def websockets_everywhere(self) -> bool:
        """A WebSockets listener without socket_domain: Mosquitto 2.0.11 (with libwebsockets
        4.1, Debian 12) binds it to every address, whatever address its line names."""
        s = self.settings
        return s.get("protocol") == "websockets" and "socket_domain" not in s

    def binds(self, address: str) -> bool:
        """Whether a socket listening on ``address`` (as ipaddress prints it) is this
        listener's: its own address (a name resolved), or any address for a listener without
        one. A name that does not resolve binds nothing the doctor can tell."""
        wildcard = address in ("0.0.0.0", "::")
        if self.address is None:
            return wildcard
        if wildcard and self.websockets_everywhere:
            return True
        try:
            # A link-local address names its interface (fe80::1%eth0); the kernel's socket
            # table gives the address alone.
            own = self.address.split("%", 1)[0] if ":" in self.address else self.address
            return ipaddress.ip_address(own) == ipaddress.ip_address(address)
        except ValueError:
            pass
        try:
            infos = socket.getaddrinfo(self.address, self.port, proto=socket.IPPROTO_TCP)
        except OSError:
            return False
        return any(str(ipaddress.ip_address(info[4][0])) == address for info in infos)


# The settings that open Mosquitto 2.0.11's default listener when read outside any listener
# (src/conf.c, config__read: what it tests of default_listener). max_qos and
# allow_zero_length_clientid open it only when not their default; counted by their presence.
DEFAULT_LISTENER_KEYS = frozenset(
    {
        "bind_address",
        "bind_interface",
        "cafile",
        "capath",
        "certfile",
        "keyfile",
        "tls_engine",
        "tls_keyform",
        "tls_engine_kpass_sha1",
        "ciphers",
        "ciphers_tls1.3",
        "dhparamfile",
        "psk_hint",
        "require_certificate",
        "crlfile",
        "use_identity_as_username",
        "use_subject_as_username",
        "use_username_as_clientid",
        "port",
        "max_connections",
        "max_qos",
        "mount_point",
        "protocol",
        "socket_domain",
    }
)


@dataclass(frozen=True)
class MosquittoConf:
    files: list[tuple[Path, int]]  # each file read, in order, and its size in bytes
    lines: list[ConfLine]
    # Lines holding a character Mosquitto and the doctor might read differently.
    unusual: list[str] = field(default_factory=list)

    def last(self, key: str) -> ConfLine | None:
        """The line that decides a setting of the whole broker (the last one read)."""
        found = [line for line in self.lines if line.key == key]
        return found[-1] if found else None

    def listeners(self) -> list[Listener]:
        found: list[Listener] = []
        current: dict[int, Listener] = {}  # the listener of each reading of a file
        for line in self.lines:
            if line.key == "listener":
                port, rest = _strtok(line.value)
                address, _ = _strtok(rest)
                if address is not None and address.startswith("#"):
                    address = None
                listener = Listener(_atoi(port or ""), address, line)
                found.append(listener)
                current[line.part] = listener
            elif line.part in current:
                current[line.part].settings[line.key] = line.value
        return found

    def default_listener(self) -> Listener | None:
        """Mosquitto's default listener, when the configuration opens one: the lines read
        before any ``listener`` line of their file set its settings (each file starts with it,
        src/conf.c), and a listener setting among them (``port``, ``bind_address``,
        ``use_username_as_clientid``, a certificate, ...) opens it, on ``port`` or 1883, at
        ``bind_address`` or every address (config__read). Its line: the first such setting."""
        settings: dict[str, str] = {}
        opened: ConfLine | None = None
        in_listener: set[int] = set()  # the readings of a file past their first listener line
        for line in self.lines:
            if line.key == "listener":
                in_listener.add(line.part)
            elif line.part not in in_listener:
                settings[line.key] = line.value
                if opened is None and line.key in DEFAULT_LISTENER_KEYS:
                    opened = line
        if opened is None:
            return None
        port, _ = _strtok(settings.get("port", ""))
        address, _ = _strtok(settings.get("bind_address", ""))
        return Listener(_atoi(port or "") or 1883, address, opened, settings)

    def empty_files(self) -> list[Path]:
        return [path for path, size in self.files if size == 0]


class ConfRefused(ValueError):
    """A configuration Mosquitto 2.0.11 refuses to start with, in words."""


def read_mosquitto_conf(
    path: Path, seen_from: Callable[[Path], Path] | None = None
) -> MosquittoConf:
    """``path`` and the files of its ``include_dir`` lines (each folder's ``*.conf``, in
    Mosquitto's order, read where the line is, as Mosquitto reads them). OSError (as
    PermissionError or FileNotFoundError, with the file's name) if a file cannot be read;
    ConfRefused if Mosquitto would not start with it (an include_dir naming no folder).
    ``seen_from``: where a folder an include_dir names is read from here (another process's
    root: path_in_root), ``path`` being given so already."""
    files: list[tuple[Path, int]] = []
    lines: list[ConfLine] = []
    unusual: list[str] = []
    parts = iter(range(1_000_000))
    for line in _conf_lines(path, files, unusual, next(parts)):
        lines.append(line)  # an include_dir too: its folder is part of what was read
        if line.key == "include_dir":
            # The folder as Mosquitto names it: the rest of the line, a blank at its end too
            # ('include_dir /etc/mosquitto/conf.d ' is the folder 'conf.d ').
            if not line.raw:
                raise ConfRefused(f"{line.where}: include_dir names no folder")
            try:
                folder = Path(line.raw)
                folder_files = included_files(seen_from(folder) if seen_from else folder)
            except (FileNotFoundError, NotADirectoryError) as exc:
                blank = (
                    " (a blank at its end is part of the name)" if line.raw != line.value else ""
                )
                raise ConfRefused(
                    f"{line.where}: include_dir '{line.raw}' names no folder{blank}: "
                    f"{exc.strerror}, and Mosquitto does not start"
                ) from exc
            for included in folder_files:
                lines.extend(_conf_lines(included, files, unusual, next(parts)))
    return MosquittoConf(files, lines, unusual)


def included_files(folder: Path) -> list[Path]:
    """The files of an ``include_dir`` that Mosquitto 2.0.11 reads, in its order
    (config__get_dir_files): names longer than ".conf" that end in it (a file named ".conf"
    alone is not read), sorted as strcasecmp sorts (ASCII letters without their case: its log
    loads treadguard.conf before Zlocal.conf)."""
    # (in bytes, as on the disk: a name need not be UTF-8, and Mosquitto reads it all the same)
    names = [
        p for p in folder.iterdir() if len(os.fsencode(p.name)) > 5 and p.name.endswith(".conf")
    ]
    return sorted(names, key=lambda p: os.fsencode(p.name).lower())


def _conf_lines(
    path: Path, files: list[tuple[Path, int]], unusual: list[str], part: int
) -> Iterator[ConfLine]:
    data = read_regular(path)
    files.append((path, len(data)))
    numbered = file_lines(data)
    unusual.extend(unusual_characters(path, numbered))
    for number, raw in numbered:
        # config__read_file_core: a comment starts at the line's first character; only the
        # line's closing carriage returns go; words are split at spaces.
        if raw[:1] in ("#", "\r", ""):
            continue
        text = raw.split("\x00", 1)[0].rstrip("\r")
        key, rest = _strtok(text)
        if key is None:
            continue
        yield ConfLine(path, number, key, _c_strip(rest), part, rest)


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
    def pattern(self) -> bool:
        return self.owner == EVERY_ACCOUNT

    @property
    def where(self) -> str:
        return f"{self.file}, line {self.number} ({self.text!r})"


class AclSyntaxError(ValueError):
    pass


ACCESS = ("read", "write", "readwrite", "deny")


def read_acl(path: Path) -> list[AclLine]:
    """Every ``topic`` and ``pattern`` line of an ACL file, each with the account it applies
    to, read as Mosquitto 2.0.11 reads it (aclfile__parse). OSError if the file cannot be
    read; AclSyntaxError naming a line Mosquitto refuses (it then does not start)."""
    return parse_acl(path, read_regular(path))


def parse_acl(path: Path, data: bytes) -> list[AclLine]:
    found: list[AclLine] = []
    owner: str | None = ANONYMOUS
    for number, raw in file_lines(data):
        line = _c_rstrip(raw.split("\x00", 1)[0])
        if line.startswith("#"):
            continue
        word, rest = _strtok(line)
        if word is None:
            continue

        def refused(why: str, line: str = line, number: int = number) -> AclSyntaxError:
            return AclSyntaxError(f"{path}, line {number} ({line!r}): {why}")

        if word == "user":
            if not rest:
                raise refused("a user line without a name")
            owner = _c_strip(rest)
            continue
        if word not in ("topic", "pattern"):
            raise refused("not an ACL line (topic, pattern or user)")
        access, rest = _strtok(rest)
        if access is None:
            raise refused("no topic")
        if rest:
            topic = _c_strip(rest)
            if access not in ACCESS:
                raise refused(f"{access!r} is not an access (read, write, readwrite or deny)")
        else:
            topic, access = access, "readwrite"  # no access word: read and write
        if not valid_filter(topic):
            raise refused(f"{topic!r} is not a valid topic filter")
        found.append(
            AclLine(
                path, number, line, EVERY_ACCOUNT if word == "pattern" else owner, access, topic
            )
        )
    return found


def valid_filter(topic: str) -> bool:
    """mosquitto_sub_topic_check: ``+`` and ``#`` a whole level each, ``#`` the last."""
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if ("+" in level or "#" in level) and level not in ("+", "#"):
            return False
        if level == "#" and i != len(levels) - 1:
            return False
    return len(topic.encode(errors="surrogateescape")) <= 65535


def matches(sub: str, topic: str) -> bool:
    """mosquitto_topic_matches_sub: whether the filter ``sub`` matches the topic ``topic``
    (``#`` matches its parent level too; ``$`` topics only by filters starting with ``$``)."""
    if (sub[:1] == "$") != (topic[:1] == "$"):
        return False
    s, t = sub.split("/"), topic.split("/")
    for i, level in enumerate(s):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(s) == len(t)


def overlap(a: list[str], b: list[str]) -> bool:
    """Whether some topic matches both filters (MQTT's ``+`` and ``#``)."""
    return _intersection(a, b) is not None


def _intersection(a: list[str], b: list[str]) -> list[str] | None:
    """A filter matched by exactly the topics both ``a`` and ``b`` match, or None."""
    out: list[str] = []
    i = 0
    while True:
        if i < len(a) and a[i] == "#":
            return out + b[i:] if i < len(b) else out
        if i < len(b) and b[i] == "#":
            return out + a[i:] if i < len(a) else out
        if i == len(a) or i == len(b):
            return out if len(a) == len(b) else None
        if a[i] == "+":
            out.append(b[i])
        elif b[i] == "+" or a[i] == b[i]:
            out.append(a[i])
        else:
            return None
        i += 1


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
    # For each topic, why a pattern's %u or %c reaches it ("" when an account the ACL names
    # writes it as the line stands).
    why: list[str] = field(default_factory=list)


# A level no line names: what a "+" of a topic that must be refused is filled with when looking
# for a topic some account may write, and the name of an account the ACL does not name.
_FRESH = "\x00"
_ANY_ACCOUNT = "\x00account"


def breaches(lines: list[AclLine], guarded: list[Guarded]) -> list[Breach]:
    """Each line that lets an account write a guarded topic it may not, with those topics,
    as Mosquitto 2.0.11 decides (mosquitto_acl_check_default): the client's own lines first,
    its deny lines before the others wherever they stand, and the first line that matches
    decides (a read line matching a publish decides nothing); only when none of its own lines
    decided, the pattern lines, denials first again. Checked for every account the ACL names,
    for clients without an account when lines stand before any user line, and for an account
    it does not name (patterns only)."""
    owners: list[str | None] = []
    for line in lines:
        if not line.pattern and line.owner not in owners:
            owners.append(line.owner)
    owners.append(_ANY_ACCOUNT)
    found: dict[tuple[Path, int], Breach] = {}
    rules_of = {owner: _rules(lines, owner) for owner in owners}
    for guard in guarded:
        for owner in owners:
            rules = rules_of[owner]
            depth = max((len(topic.split("/")) for _, topic in rules), default=0) + 1
            if owner not in (ANONYMOUS, _ANY_ACCOUNT) and guard.may(str(owner)):
                continue
            target = guard.topic.split("/")
            for line, topic in rules:
                if not line.writes:
                    continue
                common = _intersection(topic.split("/"), target)
                if common is None:
                    continue
                for candidate in _witnesses(common, depth):
                    decided = _decide(rules, candidate)
                    if decided is not None and decided.writes:
                        _add(found, decided, guard)
                        break
    for line in lines:
        if not line.pattern or not line.writes:
            continue
        for guard in guarded:
            why = any_name_writes(line.topic, guard.topic)
            if why is not None:
                _add(found, line, guard, why)
    return sorted(found.values(), key=lambda b: (str(b.line.file), b.line.number))


def _add(
    found: dict[tuple[Path, int], Breach], line: AclLine, guard: Guarded, why: str = ""
) -> None:
    key = (line.file, line.number)
    breach = found.setdefault(key, Breach(line, [], []))
    if guard.topic not in breach.topics:
        breach.topics.append(guard.topic)
        breach.who.append(guard.who)
        breach.why.append(why)


# ------------------------------------------------------------------ %u and %c: any name

# A pattern's %u is the account's name and %c the client's id: Mosquitto allows any character
# in either, "/" included, so each may stand for any string, any number of levels. Whether a
# pattern line could then write a topic is asked of two patterns over characters: a literal
# character, one character of a class, or any number of them (a "star").
_ANY = "any"  # any character
_LEVEL = "level"  # any character but "/"


@dataclass(frozen=True)
class _Token:
    char: str = ""  # a literal character, or "" for a class
    cls: str = _ANY
    star: bool = False  # any number of characters of the class (else exactly one)
    tag: str = ""  # "%u" or "%c": the placeholder whose characters these are


def _glob(filter_: str, placeholders: bool, nonempty: bool) -> list[list[_Token]]:
    """The topics an ACL filter (with %u, %c standing for any string when ``placeholders``)
    matches, as character patterns: one for a filter without "#", two for one ending in "#"
    (its parent level, and the parent followed by "/" and anything). With ``nonempty``, each
    "+" and each placeholder stands for at least one character (a readable example)."""
    levels = filter_.split("/")
    hashed = levels[-1] == "#"
    if hashed:
        levels = levels[:-1]
    head: list[_Token] = []
    for i, level in enumerate(levels):
        if i:
            head.append(_Token("/"))
        if level == "+":
            if nonempty:
                head.append(_Token(cls=_LEVEL))
            head.append(_Token(cls=_LEVEL, star=True))
            continue
        text = level
        while text:
            tag = text[:2]
            if placeholders and tag in ("%u", "%c"):
                if nonempty:
                    head.append(_Token(tag=tag))
                head.append(_Token(star=True, tag=tag))
                text = text[2:]
            else:
                head.append(_Token(text[0]))
                text = text[1:]
    if not hashed:
        return [head]
    tail = [_Token("/"), _Token(star=True)] if levels else [_Token(star=True)]
    return ([head] if levels else []) + [head + tail]


def _common_char(a: _Token, b: _Token) -> str | None:
    if a.char and b.char:
        return a.char if a.char == b.char else None
    if a.char or b.char:
        char = a.char or b.char
        other = b if a.char else a
        return None if other.cls == _LEVEL and char == "/" else char
    return "x"  # both a class: a letter is in each


def _meet(a: list[_Token], b: list[_Token]) -> list[tuple[str, _Token]] | None:
    """The shortest string both character patterns match, each character with ``a``'s token
    that took it; None if there is none."""
    start = (0, 0)
    came: dict[tuple[int, int], tuple[tuple[int, int], str, _Token | None] | None] = {start: None}
    todo = [start]
    while todo:
        nxt: list[tuple[int, int]] = []
        for state in todo:
            i, j = state
            if i == len(a) and j == len(b):
                path: list[tuple[str, _Token]] = []
                at: tuple[int, int] | None = state
                while at is not None and came[at] is not None:
                    prev, char, token = came[at]  # type: ignore[misc]
                    if token is not None:
                        path.append((char, token))
                    at = prev
                return path[::-1]
            moves: list[tuple[tuple[int, int], str, _Token | None]] = []
            if i < len(a) and a[i].star:
                moves.append(((i + 1, j), "", None))
            if j < len(b) and b[j].star:
                moves.append(((i, j + 1), "", None))
            if i < len(a) and j < len(b):
                char = _common_char(a[i], b[j])
                if char is not None:
                    after = (i if a[i].star else i + 1, j if b[j].star else j + 1)
                    moves.append((after, char, a[i]))
            for after, char, token in moves:
                if after in came:
                    continue
                came[after] = (state, char, token)
                # A move that takes no character is as short as where it starts from.
                (todo if token is None else nxt).append(after)
        todo = nxt
    return None


def any_name_writes(pattern_topic: str, guarded: str) -> str | None:
    """Why a pattern line's topic, its %u and %c standing for any account's name and any
    client's id, could match a topic of the filter ``guarded``; None if it cannot, or if it
    has neither placeholder (the accounts the ACL names answer for those)."""
    tags = [tag for tag in ("%u", "%c") if tag in pattern_topic]
    if not tags:
        return None
    path = None
    for nonempty in (True, False):
        for a in _glob(pattern_topic, True, nonempty):
            for b in _glob(guarded, False, nonempty):
                path = _meet(a, b)
                if path is not None:
                    break
            if path is not None:
                break
        if path is not None:
            break
    if path is None:
        return None
    topic = "".join(char for char, _ in path)
    names = {tag: "".join(c for c, t in path if t.tag == tag) for tag in tags}
    said = {"%u": "any account's name", "%c": "any client's id"}
    head = " and ".join(f"{tag} is {said[tag]}" for tag in tags)
    # Each placeholder was filled on its own: the example holds when one name fills them all.
    filled = pattern_topic
    for tag in tags:
        filled = filled.replace(tag, names[tag])
    if not (valid_filter(filled) and matches(filled, topic)):
        return f"{head}: an account or client whose name fills them could write {topic}"
    who = []
    if "%u" in tags:
        who.append(f"an account named {_shown_name(names['%u'])}")
    if "%c" in tags:
        client = "a client with the id" if not who else "and the client id"
        who.append(f"{client} {_shown_name(names['%c'])}")
    return f"{head}: {' '.join(who)} would write {topic}"


def _shown_name(name: str) -> str:
    return name if name else "'' (empty)"


def _rules(lines: list[AclLine], owner: str | None) -> list[tuple[AclLine, str]]:
    """The lines Mosquitto checks for a client of ``owner``, in its order, each with its topic
    as it applies to that client (a pattern's %u filled in, a %c widened: a client chooses its
    own id). The owner's own lines: denials first, then the rest as written; then the
    patterns, likewise. A deny pattern with %c is left out (a client can choose an id it does
    not match); a pattern with %u for clients without an account, and every pattern for an
    account with + or # in its name, are left out as Mosquitto does."""
    own = [line for line in lines if not line.pattern and line.owner == owner]
    patterns = [line for line in lines if line.pattern]
    out: list[tuple[AclLine, str]] = [(line, line.topic) for line in own if line.access == "deny"]
    out += [(line, line.topic) for line in own if line.access != "deny"]
    if owner is not None and ("+" in owner or "#" in owner):
        return out
    for deny in (True, False):
        for line in patterns:
            if (line.access == "deny") != deny:
                continue
            topic = line.topic
            if "%u" in topic:
                if owner is ANONYMOUS:
                    continue
                topic = topic.replace("%u", str(owner))
            if "%c" in topic:
                if deny:
                    continue
                levels = topic.split("/")
                at = next(i for i, level in enumerate(levels) if "%c" in level)
                topic = "/".join([*levels[:at], "#"])
            out.append((line, topic))
    return out


def _witnesses(common: list[str], depth: int) -> Iterator[str]:
    """Topics matching the filter ``common`` that no line's literal can tell apart from any
    other of its topics: each "+" a level no line names, a "#" none to ``depth`` such levels."""
    head = [_FRESH if level == "+" else level for level in common if level != "#"]
    if common and common[-1] == "#":
        for extra in range(depth + 1):
            topic = "/".join(head + [_FRESH] * extra)
            if topic:
                yield topic
    elif head:
        yield "/".join(head)


def _decide(rules: list[tuple[AclLine, str]], topic: str) -> AclLine | None:
    """The line that decides a publish on ``topic`` (a deny or a write line), or None: denied
    for want of a grant. Own lines skip a $ topic unless they start with $ themselves."""
    for line, sub in rules:
        if not line.pattern and topic[:1] == "$" and sub[:1] != "$":
            continue
        if not matches(sub, topic):
            continue
        if line.access == "deny" or line.writes:
            return line
    return None


def owner_words(owner: str | None) -> str:
    if owner is ANONYMOUS:
        return "a client without an account (a line before any user line)"
    if owner == EVERY_ACCOUNT:
        return "every account (a pattern line applies to all)"
    return f"the account {owner}"


# ------------------------------------------------------------------ what listens


def host_port(address: str, port: int) -> str:
    """``address:port`` as a URL writes it: an IPv6 address in brackets."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


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
        return host_port(self.address, self.port)


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


def path_in_root(
    pid: int, path: str | Path, budget: int = 40, links: list[Path] | None = None
) -> Path:
    """Where ``path`` (absolute, as process ``pid`` names it) is, seen from here through
    /proc/PID/root: its links followed in the process's own root and mount namespace (the
    kernel would follow an absolute link met under /proc/PID/root from this process's root
    instead). RuntimeError past ``budget`` links (a loop); OSError if that root cannot be
    read. Each link met is added to ``links``, as seen from here."""
    base = Path(f"/proc/{pid}/root")
    pending = [p for p in PurePosixPath(os.path.normpath(path)).parts if p != "/"]
    here = PurePosixPath("/")
    while pending:
        part = pending.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            here = here.parent
            continue
        step = here / part
        seen = base / step.relative_to("/")
        if seen.is_symlink():
            if links is not None:
                links.append(seen)
            budget -= 1
            if budget < 0:
                raise RuntimeError(f"too many links on the way to {path}")
            target = PurePosixPath(os.readlink(seen))
            if target.is_absolute():
                here = PurePosixPath("/")
            pending[:0] = [p for p in target.parts if p != "/"]
            continue
        here = step
    return base / here.relative_to("/")


def process_name(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"
