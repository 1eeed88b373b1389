"""Whether MQTT answers in the clear from the network, whatever serves it: for ``treadguard
doctor`` (docs/doctor.md, "network MQTT").

The broker's own listeners are judged from its configuration; this looks at the board from the
outside instead. Every TCP socket listening on an address other than loopback (or on every
address), whichever process holds it, is asked through one of the board's own addresses on
the network: (a) a plain MQTT CONNECT, (b) an HTTP WebSocket upgrade asking for the ``mqtt``
subprotocol, on ``/mqtt`` and on ``/``, then the same CONNECT in a WebSocket frame. Any CONNACK,
a refusal included, proves a client on the network speaks MQTT there without TLS: a relay
(socat), a proxy (nginx passing /mqtt over plain http) or a broker's own listener.

What is sent is only ever that CONNECT (a made-up user name, no password, no will, nothing
published) and one HTTP GET, each on a connection of its own, closed at once, every step
bounded by a short timeout. Neither holds a byte a Trackmaster takes as a command (0xA0 to
0xAC), were a serial bridge (ser2net) listening, and neither starts with the protocol number 0
of a Modbus TCP request, were a Modbus gateway listening. A TLS port (nginx's 443, a TLS
listener) answers neither in the clear.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from treadguard.controller.broker_config import host_port
from treadguard.drivers.regular_file import read_regular

PROBE_USERNAME = "treadguard-doctor-probe"
WEBSOCKET_PATHS = ("/mqtt", "/")
NGINX_DIR = Path("/etc/nginx")
NGINX_PATHS_MAX = 16  # location paths from nginx's configuration asked at most, besides those
TARGETS_MAX = 8  # of the board's addresses of each family, asked for a socket on all of them
_HEAD_LIMIT = 16384  # bytes of an HTTP answer's head read at most


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def mqtt_connect(username: str = PROBE_USERNAME) -> bytes:
    """An MQTT 3.1.1 CONNECT: clean session, a keepalive of 10 s, the user name as the client
    id and as the user name, no password."""
    variable = _utf8("MQTT") + bytes([4, 0x80 | 0x02]) + (10).to_bytes(2, "big")
    payload = _utf8(username) + _utf8(username)
    body = variable + payload
    assert len(body) < 128  # one byte of remaining length
    return bytes([0x10, len(body)]) + body


def is_connack(data: bytes) -> bool:
    """An MQTT 3.1.1 CONNACK (accepted or refused): 0x20, length 2, session flag, a return code
    of 0 to 5."""
    return (
        len(data) >= 4 and data[0] == 0x20 and data[1] == 2 and data[2] in (0, 1) and data[3] <= 5
    )


def websocket_upgrade(host: str, path: str, key: bytes) -> bytes:
    """The HTTP/1.1 request of a WebSocket client asking for the MQTT subprotocol."""
    return (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(key).decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Protocol: mqtt\r\n"
        "\r\n"
    ).encode()


def upgraded(head: bytes) -> bool:
    """Whether an HTTP answer's head switches to WebSockets (status 101)."""
    status = head.split(b"\r\n", 1)[0].split()
    return len(status) >= 2 and status[0].startswith(b"HTTP/") and status[1] == b"101"


def websocket_frame(payload: bytes, mask: bytes) -> bytes:
    """A client's binary frame, final, masked with ``mask`` (4 bytes)."""
    assert len(payload) < 126
    assert len(mask) == 4
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x82, 0x80 | len(payload)]) + mask + masked


def frame_payload(data: bytes) -> bytes | None:
    """The payload of a server's first frame in ``data`` (unmasked, short), None while
    incomplete or not such a frame."""
    if len(data) < 2 or data[1] & 0x80:
        return None
    length = data[1] & 0x7F
    if length >= 126 or len(data) < 2 + length:
        return None
    return data[2 : 2 + length]


# ------------------------------------------------------------------ nginx's configuration

# nginx's configuration is read here as nginx reads it (src/core/ngx_conf_file.c,
# ngx_conf_read_token): words are split at a space, a tab, CR or LF only; a "#" starts a
# comment only where a word would start (inside a word it is a character of it, as "}", "{"
# after "$" and ";" inside quotes are); a backslash takes the next character into the word,
# whatever it is, a line break too; a quoted string runs over lines; a closing quote must be
# followed by a blank, ";", "{" or ")". What nginx refuses to read (an unexpected character,
# an unclosed quote or block, a word longer than its buffer) is not guessed at: the file is
# named as unreadable, and the check is not all green.

_BLANKS = " \t\r\n"
_WORD_MAX = 4096  # NGX_CONF_BUFFER: nginx refuses a longer word


NGINX_UNREADABLE = "cannot be read surely as nginx reads it"


class NginxUnreadable(ValueError):
    """A configuration nginx would not read as it stands (or not read as the doctor does)."""

    def __init__(self, line: int, said: str) -> None:
        super().__init__(f"line {line}: {said}")
        self.line = line


@dataclass(frozen=True)
class Directive:
    """One directive of an nginx configuration: its name and words as nginx takes them
    (quotes gone, escapes resolved), as written (``raw``: quotes kept, for showing), its line,
    and its block's directives (None for a directive ended by ";")."""

    name: str
    args: tuple[str, ...]
    raw: tuple[str, ...]
    line: int
    block: tuple[Directive, ...] | None = None

    @property
    def shown(self) -> str:
        return " ".join(self.raw)


def _unescaped(word: str) -> str:
    """A word's value as nginx stores it: \\" \\' \\\\ stand for the character, \\t \\r \\n
    for a tab, CR and LF; any other backslash is kept."""
    out, i = [], 0
    while i < len(word):
        char = word[i]
        if char == "\\" and i + 1 < len(word):
            nxt = word[i + 1]
            if nxt in "\"'\\":
                out.append(nxt)
                i += 2
                continue
            if nxt in "trn":
                out.append({"t": "\t", "r": "\r", "n": "\n"}[nxt])
                i += 2
                continue
        out.append(char)
        i += 1
    return "".join(out)


def nginx_tokens(text: str) -> Iterator[tuple[str, list[tuple[str, str]], int]]:
    """nginx's tokens of ``text``, as ngx_conf_read_token returns them: ";" (a directive),
    "{" (a block's directive), "}" (a block's end), each with its words (value, as written)
    and the line its first word starts on. NginxUnreadable where nginx stops with an error."""
    words: list[tuple[str, str]] = []
    need_space = sharp = variable = quoted = s_quoted = d_quoted = False
    last_space = True
    line = first_line = start_line = 1
    start = 0
    i = 0
    while True:
        if i >= len(text):
            if words or not last_space:
                raise NginxUnreadable(line, 'unexpected end of file, expecting ";" or "}"')
            return
        char = text[i]
        i += 1
        if char == "\n":
            line += 1
            sharp = False
        if sharp:
            continue
        if quoted:
            quoted = False
            continue
        ended = ""
        if need_space:
            if char in _BLANKS:
                last_space, need_space = True, False
                continue
            if char in ";{":
                ended = char
            elif char == ")":
                last_space, need_space = True, False
            else:
                raise NginxUnreadable(line, f"unexpected {char!r}")
        if not ended and last_space:
            start, start_line = i - 1, line
            if char in _BLANKS:
                continue
            if char in ";{":
                if not words:
                    raise NginxUnreadable(line, f"unexpected {char!r}")
                ended = char
            elif char == "}":
                if words:
                    raise NginxUnreadable(line, "unexpected '}'")
                ended = char
            elif char == "#":
                sharp = True
                continue
            elif char == "\\":
                quoted, last_space = True, False
                continue
            elif char in "\"'":
                start += 1
                d_quoted, s_quoted = char == '"', char == "'"
                last_space = False
                continue
            elif char == "$":
                variable, last_space = True, False
                continue
            else:
                last_space = False
                continue
        elif not ended:
            if char == "{" and variable:
                continue
            variable = False
            if char == "\\":
                quoted = True
                continue
            if char == "$":
                variable = True
                continue
            found = False
            if d_quoted or s_quoted:
                if char == ('"' if d_quoted else "'"):
                    d_quoted = s_quoted = False
                    need_space = found = True
            elif char in _BLANKS or char in ";{":
                last_space = found = True
            if not found:
                continue
            body = text[start : i - 1]
            if len(body) >= _WORD_MAX:
                raise NginxUnreadable(start_line, f"a word of {len(body)} characters")
            raw = text[start - 1 : i] if need_space else body
            if not words:
                first_line = start_line
            words.append((_unescaped(body), raw))
            if char in ";{":
                ended = char
            else:
                continue
        yield ended, words, first_line if words else line
        words = []
        need_space = sharp = variable = quoted = s_quoted = d_quoted = False
        last_space = True


def parse_nginx(text: str) -> tuple[Directive, ...]:
    """An nginx configuration file's directives, blocks nested, as nginx reads them (its
    blocks must close in the same file). NginxUnreadable where nginx would not read it."""
    levels: list[list[Directive]] = [[]]
    heads: list[tuple[list[tuple[str, str]], int]] = []
    line = 1
    for kind, words, line in nginx_tokens(text):
        if kind == "{":
            heads.append((words, line))
            levels.append([])
            continue
        if kind == ";":
            block, head, at = None, words, line
        else:
            if not heads:
                raise NginxUnreadable(line, "unexpected '}'")
            block = tuple(levels.pop())
            head, at = heads.pop()
        levels[-1].append(
            Directive(
                head[0][0],
                tuple(value for value, _ in head[1:]),
                tuple(raw for _, raw in head),
                at,
                block,
            )
        )
    if heads:
        raise NginxUnreadable(line, "unexpected end of file, expecting '}'")
    return tuple(levels[0])


# Blocks whose contents are not directives (a MIME type and its extensions, a map's values):
# not read directive by directive.
_OPAQUE_BLOCKS = frozenset({"types", "geo", "map", "split_clients"})


def _walk(
    tree: tuple[Directive, ...], above: tuple[Directive, ...] = ()
) -> Iterator[tuple[Directive, tuple[Directive, ...]]]:
    """Every directive, each with the blocks it stands in, in order (a block before its
    own directives); those inside _OPAQUE_BLOCKS left out."""
    for directive in tree:
        yield directive, above
        if directive.block is not None and directive.name not in _OPAQUE_BLOCKS:
            yield from _walk(directive.block, (*above, directive))


def _location(directive: Directive) -> tuple[str, str] | None:
    """A location's modifier ("", "=", "^~", "~", "~*", "@") and path, as nginx takes them
    (ngx_http_core_location: a modifier of its own word, or written against the path)."""
    args = directive.args
    if not args or not args[-1]:
        return None
    if len(args) >= 2:
        return args[0], args[1]
    name = args[0]
    for modifier in ("=", "^~", "~*", "~"):
        if name.startswith(modifier):
            return modifier, name[len(modifier) :]
    return ("@", name) if name.startswith("@") else ("", name)


def _locations(tree: tuple[Directive, ...]) -> Iterator[tuple[Directive, str, str]]:
    for directive, _ in _walk(tree):
        if directive.name == "location" and directive.block is not None:
            found = _location(directive)
            if found is not None:
                yield directive, *found


def _askable(path: str) -> bool:
    return path.startswith("/") and path.isprintable() and " " not in path


def location_paths(text: str) -> list[str]:
    """The paths of the literal locations of an nginx configuration (a prefix, ``=`` exact,
    ``^~`` prefix), in order; regex locations (``~``, ``~*``) and named ones (``@``) left
    out: no one path stands for them. NginxUnreadable where nginx would not read it."""
    return [
        path
        for _, modifier, path in _locations(parse_nginx(text))
        if modifier in ("", "=", "^~") and _askable(path)
    ]


def nginx_files(root: Path = NGINX_DIR) -> list[Path]:
    """nginx's enabled configuration as read here: ``nginx.conf`` itself and what Debian's
    includes (``mime.types``, ``sites-enabled/*``, ``conf.d/*.conf``,
    ``modules-enabled/*.conf``) under ``root``; those of the folders that exist too. Each is
    read whole: a server block may stand in any of them."""
    files: list[Path] = [root / "nginx.conf", root / "mime.types"]
    for folder, suffix in (
        ("sites-enabled", ""),
        ("conf.d", ".conf"),
        ("modules-enabled", ".conf"),
    ):
        with contextlib.suppress(OSError):
            # As nginx's include globs them: a name that starts with a dot is not matched.
            files += sorted(
                p
                for p in (root / folder).iterdir()
                if p.name.endswith(suffix) and not p.name.startswith(".")
            )
            files.append(root / folder)
    return files


def _enabled(root: Path) -> list[tuple[Path, tuple[Directive, ...] | NginxUnreadable]]:
    """nginx's enabled configuration (nginx_files), each file read as nginx reads it, or why
    it cannot be. A file that cannot be opened is passed over (nginx absent: none). Bytes that
    are not UTF-8 are kept apart (none of them is a character nginx's reading turns on)."""
    read: list[tuple[Path, tuple[Directive, ...] | NginxUnreadable]] = []
    for path in nginx_files(root):
        if path.is_dir():
            continue
        if path.exists() and not path.is_file():  # a pipe nginx would wait on: not read
            read.append((path, NginxUnreadable(0, "the file is not a regular file")))
            continue
        try:
            text = read_regular(path).decode("utf-8", "surrogateescape")
        except OSError:
            continue
        try:
            read.append((path, parse_nginx(text)))
        except NginxUnreadable as exc:
            read.append((path, exc))
    return read


def _read_trees(root: Path) -> list[tuple[Path, tuple[Directive, ...]]]:
    return [(path, tree) for path, tree in _enabled(root) if isinstance(tree, tuple)]


def _all_paths(root: Path) -> list[str]:
    found: list[str] = []
    for _, tree in _read_trees(root):
        for _, modifier, location in _locations(tree):
            if modifier not in ("", "=", "^~") or not _askable(location):
                continue
            if location not in WEBSOCKET_PATHS and location not in found:
                found.append(location)
    return found


def nginx_paths(root: Path = NGINX_DIR, limit: int = NGINX_PATHS_MAX) -> list[str]:
    """The location paths of nginx's enabled configuration, those of WEBSOCKET_PATHS left
    out, ``limit`` at most."""
    return _all_paths(root)[:limit]


# What Debian's nginx.conf includes: the folders read here, and files with no location in them
# (the MIME types, the modules' load_module lines). Named from nginx's folder, or whole.
_READ_INCLUDES = frozenset(
    {"sites-enabled/*", "conf.d/*.conf", "mime.types", "modules-enabled/*.conf"}
)
# A directive that answers a client by its address or its credentials, or passes it on to a
# place chosen by them (geo, map, split_clients, a *_pass naming a variable): the board, asking
# from its own address and with no credentials, is not answered as a client elsewhere may be.
_BY_CLIENT_NAMES = re.compile(
    r"allow|deny|if|auth_[a-z_]+|satisfy|limit_except|valid_referers|geo|map|split_clients"
)


def _by_client(directive: Directive) -> bool:
    return bool(_BY_CLIENT_NAMES.fullmatch(directive.name)) or (
        directive.name.endswith("_pass") and any("$" in word for word in directive.args)
    )


def _listen_port(args: tuple[str, ...]) -> str:
    """The port of a listen line's first word (its address and port): ``80``,
    ``127.0.0.1:80``, ``[::]:80``, ``*:80``, an address alone (port 80), ``unix:PATH``."""
    first = (args or ("80",))[0]
    if first.startswith("unix:"):
        return first
    port = first.rsplit("]", 1)[-1].rsplit(":", 1)[-1] if ":" in first else first
    return port if port.isdigit() else "80"


def _own(block: tuple[Directive, ...], name: str) -> list[Directive]:
    """The directives ``name`` of a block, those in its locations (and nested blocks) left
    out."""
    return [d for d in block if d.name == name]


def _shared_ports(root: Path) -> list[str]:
    """Ports on which more than one server block of nginx's configuration listens, in words:
    nginx then picks the server by the address dialled and the name asked (the Host header,
    or none), and the probe asks by the board's addresses only, as itself: a server another
    client reaches by a name ("localhost"), by sending no Host at all, or by an address the
    board does not list may pass MQTT on unasked."""
    servers: dict[str, int] = {}
    for _, tree in _read_trees(root):
        for directive, _ in _walk(tree):
            if directive.name != "server" or directive.block is None:
                continue
            listens = _own(directive.block, "listen")
            for port in {_listen_port(d.args) for d in listens} or {"80"}:
                servers[port] = servers.get(port, 0) + 1
    return [
        f"{count} servers listen on port {port}, chosen by address and name: asked only by "
        "the board's addresses"
        for port, count in sorted(servers.items())
        if count > 1
    ]


def _included_here(target: str) -> bool:
    return target.removeprefix("/etc/nginx/") in _READ_INCLUDES


# The directives the probe's reading of nginx's configuration accounts for: those of Debian's
# nginx.conf and default site, of the shipped site (config/nginx/treadguard.conf), and others
# that only shape how a file or a passed-on connection is served. Any other (an upstream, a
# rewrite, error_page, a stream block, ...) may pass a request on somewhere the probe does not
# ask: the check is then not all green. Those judged by _BY_CLIENT_NAMES are left out here.
_JUDGED = frozenset(
    {
        # the main level and events
        "user", "worker_processes", "worker_rlimit_nofile", "worker_connections", "pid",
        "error_log", "include", "events", "http", "load_module", "pcre_jit", "daemon",
        "master_process", "multi_accept", "use", "accept_mutex",
        # http
        "sendfile", "tcp_nopush", "tcp_nodelay", "types_hash_max_size",
        "types_hash_bucket_size", "server_names_hash_bucket_size",
        "server_names_hash_max_size", "server_tokens", "default_type", "types", "charset",
        "access_log", "log_format", "keepalive_timeout", "client_max_body_size",
        "client_body_temp_path", "proxy_temp_path", "fastcgi_temp_path", "uwsgi_temp_path",
        "scgi_temp_path", "gzip", "gzip_vary", "gzip_proxied", "gzip_comp_level",
        "gzip_buffers", "gzip_http_version", "gzip_types", "gzip_disable",
        "ssl_protocols", "ssl_prefer_server_ciphers", "ssl_ciphers", "ssl_session_cache",
        "ssl_session_timeout", "ssl_session_tickets", "ssl_certificate", "ssl_certificate_key",
        "ssl_dhparam", "ssl_ecdh_curve", "ssl_stapling", "ssl_stapling_verify",
        "ssl_trusted_certificate", "ssl_client_certificate", "ssl_verify_client",
        "ssl_verify_depth", "http2",
        # servers and locations
        "server", "listen", "server_name", "location", "root", "index", "try_files",
        "add_header", "return", "expires", "etag", "proxy_pass", "proxy_http_version",
        "proxy_set_header", "proxy_buffering", "proxy_read_timeout", "proxy_send_timeout",
        "proxy_connect_timeout",
    }
)  # fmt: skip
# What a listen line may say besides its address and port; proxy_protocol, for one, makes
# nginx answer only a client that sends a PROXY header first, which the probe does not.
_LISTEN_JUDGED = re.compile(
    r"(ssl|http2|default_server|default|reuseport|deferred|bind|ipv6only=(on|off)"
    r"|backlog=\d+|fastopen=\d+|so_keepalive=\S+|rcvbuf=\S+|sndbuf=\S+)"
)


def _unjudged(tree: tuple[Directive, ...]) -> list[str]:
    said: list[str] = []
    for directive, _ in _walk(tree):
        name, words = directive.name, directive.args
        if name == "listen":
            odd = [w for w in directive.raw[2:] if not _LISTEN_JUDGED.fullmatch(w)]
            if odd:
                said.append(f"listens with {' '.join(odd)} ({directive.shown})")
        elif name == "location" and any(w.startswith("@") for w in words):
            said.append(
                f"has a named location ({directive.shown}), which any path may be passed on to"
            )
        elif name not in _JUDGED and not _BY_CLIENT_NAMES.fullmatch(name):
            said.append(f"has {directive.shown}, which the doctor does not judge")
    return said


def unjudged_directives(text: str) -> list[str]:
    """What of an nginx configuration the probe's reading does not account for, in words: a
    directive outside _JUDGED, a listen parameter outside _LISTEN_JUDGED, a named location
    (any path may be passed on to it: try_files, error_page). Each may pass MQTT on in the
    clear where the probe does not ask. NginxUnreadable where nginx would not read it."""
    return _unjudged(parse_nginx(text))


def _unasked_in(path: Path, tree: tuple[Directive, ...]) -> list[str]:
    unasked: list[str] = []
    for directive, _ in _walk(tree):
        if directive.name == "include" and directive.args and not _included_here(directive.args[0]):
            unasked.append(f"{path} includes {directive.raw[1]}, whose locations are not read")
        if directive.name == "server_name":
            names = [n for n in directive.raw[1:] if n not in _ANY_NAME]
            if names:
                unasked.append(
                    f"{path} has a server named {' '.join(names)}: asked only by the board's "
                    "address"
                )
    for directive, modifier, where in _locations(tree):
        shown = " ".join(directive.raw[1:])
        if modifier in ("~", "~*"):
            unasked.append(f"{path} has a regex location ({shown}): no one path stands for it")
            continue
        if modifier != "@" and where.startswith("/") and not _askable(where):
            unasked.append(
                f"{path} has the location {shown}, whose path holds a blank or a "
                "character the probe does not ask"
            )
        assert directive.block is not None
        said = sorted({d.name for d, _ in _walk(directive.block) if _by_client(d)})
        if said:
            unasked.append(
                f"{path} has the location {shown}, which answers a client by its address "
                f"or credentials ({', '.join(said)}): the board cannot ask it as a client "
                "elsewhere would"
            )
    unasked += (f"{path} {words}" for words in _unjudged(tree))
    # At a server's (or http's) level, it answers so at every location under it.
    outside = sorted(
        {
            d.name
            for d, above in _walk(tree)
            if _by_client(d) and not any(a.name == "location" for a in above)
        }
    )
    if outside:
        unasked.append(
            f"{path} answers a client by its address or credentials outside its locations "
            f"({', '.join(outside)}): the board cannot ask them as a client elsewhere would"
        )
    return unasked


def nginx_proxy_targets(root: Path = NGINX_DIR) -> list[tuple[str, str, int | None]]:
    """Where nginx's enabled configuration passes requests on with proxy_pass: for each, what
    it is in words (its file and location) and the address and port it names (port None for
    what names no address and port here: a name of an upstream, a unix socket). A proxy_pass
    naming a variable is left out (nginx_unasked names it: passed on by the client)."""
    found: list[tuple[str, str, int | None]] = []
    for path, tree in _read_trees(root):
        for directive, above in _walk(tree):
            if directive.name != "proxy_pass" or not directive.args:
                continue
            target = directive.args[0]
            if "$" in target:
                continue
            where = next(
                (
                    f"location {' '.join(a.raw[1:])}"
                    for a in reversed(above)
                    if a.name == "location"
                ),
                "a server",
            )
            shown = f"{path} ({where}: proxy_pass {directive.raw[1]})"
            scheme, sep, rest = target.partition("://")
            if not sep or scheme not in ("http", "https") or rest.startswith("unix:"):
                found.append((shown, target, None))
                continue
            authority = rest.split("/", 1)[0]
            if authority.startswith("["):
                host, _, after = authority[1:].partition("]")
                port_text = after.removeprefix(":")
            else:
                host, _, port_text = authority.partition(":")
            if not port_text:
                port_text = "443" if scheme == "https" else "80"
            try:
                ipaddress.ip_address(host)
            except ValueError:
                found.append((shown, host, None))  # a name: an upstream's, or the DNS's
                continue
            found.append((shown, host, int(port_text) if port_text.isdigit() else None))
    return found


_ANY_NAME = ("_",)  # the name of a server answering any name, as Debian's and the shipped site


def nginx_unasked(root: Path = NGINX_DIR, limit: int = NGINX_PATHS_MAX) -> list[str]:
    """What of nginx's enabled configuration the probe does not ask, in words: a file it
    cannot read as nginx does, a file it includes (its locations are not read), a regex
    location (no one path stands for it), the locations past ``limit``, a server by name
    (asked only by the board's address). Each may pass MQTT on in the clear without the probe
    finding it."""
    unasked: list[str] = []
    for path, tree in _enabled(root):
        if isinstance(tree, NginxUnreadable):
            unasked.append(f"{path} {NGINX_UNREADABLE} ({tree}): its locations are not known")
            continue
        unasked += _unasked_in(path, tree)
    unasked += _shared_ports(root)
    paths = _all_paths(root)
    if len(paths) > limit:
        past = paths[limit:]
        unasked.append(
            f"{len(past)} location(s) past the first {limit} are not asked ({', '.join(past[:3])}"
            + (", ..." if len(past) > 3 else "")
            + ")"
        )
    return unasked


# ------------------------------------------------------------------ the board's addresses


@dataclass(frozen=True)
class Address:
    """An address to connect to: ``ip`` as ipaddress prints it, and for an IPv6 link-local
    one the interface it is on (its name, and its index: the scope id a connection needs)."""

    ip: str
    interface: str = ""
    scope_id: int = 0

    @property
    def link_local(self) -> bool:
        return ipaddress.ip_address(self.ip).is_link_local

    def shown(self, port: int) -> str:
        return host_port(f"{self.ip}%{self.interface}" if self.interface else self.ip, port)

    def sockaddr(self, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
        if ":" in self.ip:
            return (self.ip, port, 0, self.scope_id)
        return (self.ip, port)


def board_addresses(net: Path = Path("/proc/net")) -> list[Address]:
    """The board's own addresses on a network (not loopback): IPv4 from the kernel's routing
    table of local addresses, IPv6 from if_inet6 (global ones, then link-local ones with their
    interface). IPv4 first."""
    found: list[Address] = []
    with contextlib.suppress(OSError):
        last = ""
        for line in (net / "fib_trie").read_text().splitlines():
            words = line.split()
            if len(words) == 2 and words[0] == "|--":
                last = words[1]
            elif "/32 host LOCAL" in line and last:
                ip = ipaddress.ip_address(last)
                if not ip.is_loopback and Address(str(ip)) not in found:
                    found.append(Address(str(ip)))
    link: list[Address] = []
    with contextlib.suppress(OSError, ValueError):
        for line in (net / "if_inet6").read_text().splitlines():
            words = line.split()
            if len(words) < 6:
                continue
            ip6 = ipaddress.IPv6Address(bytes.fromhex(words[0]))
            if ip6.is_loopback:
                continue
            if words[3] == "00":  # scope global
                if Address(str(ip6)) not in found:
                    found.append(Address(str(ip6)))
            elif words[3] == "20":  # scope link: reached only through its interface
                link.append(Address(str(ip6), words[5], int(words[1], 16)))
    return found + link


def targets(address: str, board: list[Address]) -> list[Address]:
    """The addresses to reach a socket listening on ``address`` at from the network: its own
    (with its interface, for a link-local one), or for every address (0.0.0.0, ::) the board's:
    IPv4 for 0.0.0.0, IPv6 and IPv4 (a socket on :: takes IPv4 too, unless it is IPv6 only)
    for ::."""
    ip = ipaddress.ip_address(address)
    if not ip.is_unspecified:
        own = [a for a in board if a.ip == address]
        return own or [Address(address)]
    # Every one of the board's addresses (a few at most): a server may answer by the address
    # dialled (nginx's listen ADDRESS:PORT beside a default server on the same socket).
    v4 = [a for a in board if ipaddress.ip_address(a.ip).version == 4][:TARGETS_MAX]
    v6 = [a for a in board if ipaddress.ip_address(a.ip).version == 6][:TARGETS_MAX]
    return v4 if ip.version == 4 else v6 + v4


# ------------------------------------------------------------------ the probes


@dataclass(frozen=True)
class Probe:
    """What asking at an address and port showed: ``how`` MQTT answered in the clear (None if
    it did not), and whether any connection could be made at all (``reached``): a probe that
    could not connect has not shown that nothing answers there."""

    how: str | None
    reached: bool


async def _exchange(
    address: Address, port: int, request: bytes, timeout_s: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection to ``address`` (with its scope id), ``request`` written; None if none
    could be made within the timeout."""
    family = socket.AF_INET6 if ":" in address.ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().sock_connect(sock, address.sockaddr(port)), timeout_s
        )
        reader, writer = await asyncio.open_connection(sock=sock)
    except (OSError, TimeoutError):
        sock.close()
        return None
    writer.write(request)
    return reader, writer


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        await asyncio.wait_for(writer.wait_closed(), 1.0)


async def _read_until(
    reader: asyncio.StreamReader, done: bytes | None, limit: int, timeout_s: float, data: bytes
) -> bytes:
    """Read onto ``data`` until it holds ``done`` (or ``limit`` bytes), the end, or the
    timeout."""
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(timeout_s):
            while len(data) < limit and (done is None or done not in data):
                chunk = await reader.read(limit - len(data))
                if not chunk:
                    break
                data += chunk
    return data


async def plain_mqtt(address: Address, port: int, timeout_s: float) -> bool | None:
    """Whether a plain CONNECT is answered with a CONNACK; None if no connection was made."""
    opened = await _exchange(address, port, mqtt_connect(), timeout_s)
    if opened is None:
        return None
    reader, writer = opened
    try:
        return is_connack(await _read_until(reader, None, 4, timeout_s, b""))
    finally:
        await _close(writer)


async def websocket_mqtt(address: Address, port: int, path: str, timeout_s: float) -> bool | None:
    """Whether a CONNECT over a WebSocket at ``path`` is answered with a CONNACK; None if no
    connection was made."""
    host = host_port(address.ip, port)
    opened = await _exchange(
        address, port, websocket_upgrade(host, path, os.urandom(16)), timeout_s
    )
    if opened is None:
        return None
    reader, writer = opened
    try:
        data = await _read_until(reader, b"\r\n\r\n", _HEAD_LIMIT, timeout_s, b"")
        head, found, rest = data.partition(b"\r\n\r\n")
        if not found or not upgraded(head):
            return False
        writer.write(websocket_frame(mqtt_connect(), os.urandom(4)))
        with contextlib.suppress(OSError):
            await asyncio.wait_for(writer.drain(), timeout_s)
        got = rest
        deadline = asyncio.get_running_loop().time() + timeout_s
        while frame_payload(got) is None and len(got) < 256:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            more = await _read_until(reader, None, len(got) + 1, left, got)
            if more == got:
                break
            got = more
        payload = frame_payload(got)
        return payload is not None and is_connack(payload)
    finally:
        await _close(writer)


async def mqtt_answers(
    address: Address, port: int, timeout_s: float, paths: tuple[str, ...] = WEBSOCKET_PATHS
) -> Probe:
    """How MQTT answers in the clear at ``address``:``port``: a plain CONNECT, and a CONNECT
    over WebSockets at each of ``paths``."""
    plain, *websockets = await asyncio.gather(
        plain_mqtt(address, port, timeout_s),
        *(websocket_mqtt(address, port, path, timeout_s) for path in paths),
    )
    reached = plain is not None or any(w is not None for w in websockets)
    if plain:
        return Probe("a plain MQTT CONNECT was answered with a CONNACK", reached)
    for path, answered in zip(paths, websockets, strict=True):
        if answered:
            return Probe(
                f"an MQTT CONNECT over plain WebSockets (GET {path}) was answered with a CONNACK",
                reached,
            )
    return Probe(None, reached)
