"""nginx in front of the broker as the doctor's network check must read it: its configuration
taken word by word as nginx itself takes it (a "#" inside a word, a quoted string over lines,
a backslash), against a real nginx passing the broker's plain WebSockets on to the network.
Each test first shows MQTT answering in the clear from the board's address through the real
nginx, then runs the check."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.board_network import board_network  # noqa: F401 (a fixture)
from tests.mosquitto import (
    auth_lines,
    free_ports,
    have_mosquitto,
    network_addresses,
    wait_listening,
)
from tests.nginx import NGINX, have_nginx
from tests.test_doctor import (
    Rig,
    _broker_anew,
    need,
    rig,  # noqa: F401 (the fixture)
)
from treadguard.controller.doctor import NGINX_NOT_ITS, Verdict, _nginx_options, check_network
from treadguard.controller.network_probe import (
    Address,
    NginxUnreadable,
    location_paths,
    mqtt_answers,
    nginx_unasked,
    parse_nginx,
)

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")


def nginx_written(folder: Path, site: str, *, extra_main: str = "") -> list[str]:
    """Debian's nginx on ``folder``/nginx.conf (shaped as Debian's: the sites-enabled folder
    included), serving ``site``: the files written, the command that runs it in the
    foreground."""
    (folder / "sites-enabled").mkdir(parents=True, exist_ok=True)
    (folder / "sites-enabled" / "treadguard").write_text(site)
    (folder / "temp").mkdir(exist_ok=True)
    (folder / "nginx.conf").write_text(
        "daemon off;\nworker_processes 1;\n"
        + extra_main
        + ("user root;\n" if os.geteuid() == 0 else "")
        + f"pid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
        "events {\n  worker_connections 64;\n}\nhttp {\n"
        f"  access_log {folder}/access.log;\n"
        + "".join(
            f"  {kind}_temp_path {folder}/temp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        + "  include sites-enabled/*;\n}\n"
    )
    return [
        NGINX,
        "-p",
        f"{folder}/",
        "-c",
        str(folder / "nginx.conf"),
        "-e",
        f"{folder}/error.log",
    ]


def started(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def nginx_on(folder: Path, site: str, *, extra_main: str = "") -> subprocess.Popen[bytes]:
    """Debian's nginx in the foreground on ``folder``/nginx.conf, serving ``site``."""
    return started(nginx_written(folder, site, extra_main=extra_main))


def passed_on(path: str, ws_port: int) -> str:
    """A location passing ``path`` on to the broker's plain WebSockets listener, one line."""
    return (
        f"location {path} {{ proxy_pass http://127.0.0.1:{ws_port}; proxy_http_version 1.1; "
        'proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection "upgrade"; }'
    )


# Sites nginx reads with a location passing MQTT on in the clear, which a reader cutting lines
# at "#" (or at a line's end inside quotes) does not see; and the path MQTT answers at.
HIDDEN = {
    # A redirect to the page's hash route: "#" inside a word is no comment for nginx.
    "hash_in_a_word": (
        "/clinic-anything",
        "server {{\n  listen {port};\n  server_name _;\n  root {page};\n"
        "  location = /setup {{ return 302 /#/setup; }}\n"
        "  location @broker {{ proxy_pass http://127.0.0.1:{ws}; proxy_http_version 1.1;\n"
        "    proxy_set_header Upgrade $http_upgrade;\n"
        '    proxy_set_header Connection "upgrade"; }}\n'
        "  location = /mqtt {{ return 301 https://$host$request_uri; }}\n"
        "  location / {{ try_files $uri $uri/ @broker; }}\n}}\n",
    ),
    # A "#" ending a word, the location after it on the same line.
    "same_line": (
        "/ws",
        "server {{\n  listen {port};\n  server_name _;\n  root /var/www/html#;  {ws_location}\n"
        "  location / {{ return 301 https://$host$request_uri; }}\n}}\n",
    ),
    # A quoted string over two lines, its second line starting with "#".
    "quote_over_lines": (
        "/ws",
        "server {{\n  listen {port};\n  server_name _;\n"
        '  add_header X-Note "clinic\n# the board"; {ws_location}\n'
        "  location / {{ return 301 https://$host$request_uri; }}\n}}\n",
    ),
    # A blank taken into a word by a backslash, a "#" after it.
    "backslash": (
        "/ws",
        "server {{\n  listen {port};\n  server_name _;\n"
        "  root /var/www/a\\ #b;  {ws_location}\n"
        "  location / {{ return 301 https://$host$request_uri; }}\n}}\n",
    ),
}


@pytest.mark.asyncio
@pytest.mark.usefixtures("board_network")  # nginx listening beyond loopback
@pytest.mark.parametrize("case", sorted(HIDDEN))
async def test_nginx_s_configuration_is_read_as_nginx_reads_it(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
    case: str,
) -> None:
    """nginx passes the broker's plain WebSockets on at a path the configuration names past a
    "#" inside a word, or inside quotes over lines, or after a backslash: MQTT answers there in
    the clear from the board's address. The network check must not pass the board."""
    need("Debian's nginx", have_nginx())
    board = [a for a in network_addresses() if ":" not in a]
    need("an IPv4 address other than loopback", bool(board))
    _broker_anew(rig, auth_lines(rig.tmp), websockets=True)
    assert rig.broker.ws_port is not None
    (port,) = free_ports(1)
    path, site = HIDDEN[case]
    folder = tmp_path / "nginx"
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<title>treadguard</title>")
    text = site.format(
        port=port,
        ws=rig.broker.ws_port,
        ws_location=passed_on("/ws", rig.broker.ws_port),
        page=page,
    )
    proc = nginx_on(folder, text)
    try:
        wait_listening(proc, [port], lambda: (folder / "error.log").read_text())
        harm = await mqtt_answers(Address(board[0]), port, 3.0, (path,))
        assert harm.how is not None, (case, harm)  # MQTT in the clear through nginx
        found = await check_network(3.0, nginx=folder)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert found, case
    assert not [c for c in found if c.verdict == Verdict.OK], (case, found)
    if path == "/ws":  # asked now, and found
        assert [c.verdict for c in found if f":{port}" in c.detail] == [Verdict.FAIL], found
    else:
        assert "named location (location @broker)" in found[0].detail, found


def test_nginx_s_words_are_split_as_nginx_splits_them(tmp_path: Path) -> None:
    """nginx's tokeniser (ngx_conf_read_token): "#" a comment only where a word starts; "}"
    and "{" after "$" inside a word; escapes; quotes over lines; and what nginx refuses to read
    is refused, never guessed at, and makes the check not all green."""
    assert location_paths(
        "root /srv#x;location /a{}\n# location /commented {}\n"
        "location /b#c {} location '/d' {}\n"
        'add_header X "a\n#b"; location /e { }\n'
        "location /f\\ g {} set $x ${y}z; location /h{}\n"
    ) == ["/a", "/b#c", "/d", "/e", "/h"]
    top = parse_nginx('a b\\"c "d\\"e" \'f\\\\g\' h\\n;')
    assert top[0].args == ('b"c', 'd"e', "f\\g", "h\n")
    assert parse_nginx('if ($a = "x") { return 403; }')[0].args == ("($a", "=", "x", ")")
    for unreadable in (
        "location /a { }}",  # a "}" closing nothing
        "location /a {",  # a block never closed
        'add_header X "a;',  # a quote never closed
        'add_header X "a"b;',  # a word glued to a closing quote
        "{ }",  # a block without a name
        "root /a",  # no ";"
        "root " + "a" * 5000 + ";",  # longer than nginx's buffer
    ):
        with pytest.raises(NginxUnreadable):
            parse_nginx(unreadable)
    root = tmp_path / "nginx"
    (root / "sites-enabled").mkdir(parents=True)
    (root / "sites-enabled" / "site").write_text(
        "server { listen 80; location /a { } } }\nserver { location /ws {} }\n"
    )
    said = nginx_unasked(root)
    assert any(
        "cannot be read surely as nginx reads it (line 1: unexpected '}')" in s for s in said
    )


REDIRECT_ONLY = (
    "server {\n  listen 80;\n  server_name _;\n  return 301 https://$host$request_uri;\n}\n"
)


def _board_nginx_files(folder: Path) -> Path:
    """The board's /etc/nginx as the doctor reads it: the shipped redirect only."""
    (folder / "sites-enabled").mkdir(parents=True)
    (folder / "sites-enabled" / "treadguard").write_text(REDIRECT_ONLY)
    (folder / "nginx.conf").write_text("events {}\nhttp {\n  include sites-enabled/*;\n}\n")
    return folder


@pytest.mark.asyncio
@pytest.mark.usefixtures("board_network")  # nginx listening beyond loopback
@pytest.mark.parametrize("how", ["master_process_off", "own_mount_namespace"])
async def test_an_nginx_not_running_the_board_s_files_is_not_passed(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
    how: str,
) -> None:
    """An nginx serving another configuration passes /ws on to the broker's plain WebSockets,
    from the network: one running alone (master_process off: no "nginx: master process"
    title), or one in a mount namespace of its own (a container on the host's network) that
    finds its own files at the board's configuration's path. The probe asks the paths of the
    board's files, which name no /ws: not passed, naming that nginx."""
    need("Debian's nginx", have_nginx())
    board = [a for a in network_addresses() if ":" not in a]
    need("an IPv4 address other than loopback", bool(board))
    _broker_anew(rig, auth_lines(rig.tmp), websockets=True)
    assert rig.broker.ws_port is not None
    (port,) = free_ports(1)
    installed = _board_nginx_files(tmp_path / "installed")
    foreign = tmp_path / "foreign"
    site = (
        f"server {{\n  listen {port};\n  server_name _;\n"
        "  location / { return 404; }\n"
        "  location = /mqtt { return 301 https://$host$request_uri; }\n"
        f"  {passed_on('/ws', rig.broker.ws_port)}\n}}\n"
    )
    if how == "master_process_off":
        proc = nginx_on(foreign, site, extra_main="master_process off;\n")
    else:
        nginx_written(foreign, site)
        # In a mount namespace of its own, its own files where the board's are.
        proc = started(
            [
                "unshare", "-m", "--propagation", "private", "sh", "-c",
                f"mount --bind {foreign} {installed} && exec {NGINX} -p {foreign}/ "
                f"-c {installed}/nginx.conf -e {foreign}/error.log",
            ]
        )  # fmt: skip
    try:
        wait_listening(proc, [port], lambda: (foreign / "error.log").read_text())
        harm = await mqtt_answers(Address(board[0]), port, 3.0, ("/ws",))
        assert harm.how is not None, harm  # MQTT in the clear through that nginx
        found = await check_network(3.0, nginx=installed)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert [c.verdict for c in found] == [Verdict.TODO], found
    assert f"nginx (pid {proc.pid}) " in found[0].detail, found
    assert NGINX_NOT_ITS in found[0].detail, found
    assert "stop the nginx that does not run the board's /etc/nginx" in found[0].fix, found
    if how == "own_mount_namespace":
        assert f"finds another file than the doctor at {installed}/nginx.conf" in found[0].detail


def test_nginx_s_command_line_is_read_as_nginx_reads_it() -> None:
    """-c and -p, glued or not, joined flags, a -g from a master's title (its words joined by
    blanks), and Debian's defaults."""
    debian = ["/usr/sbin/nginx", "-g", "daemon", "on;", "master_process", "on;"]
    assert _nginx_options(debian, True) == (
        "/usr/share/nginx/",
        "/etc/nginx/nginx.conf",
        "daemon on; master_process on;",
    )
    assert _nginx_options(["-qc", "/x/n.conf", "-p/x/"], False) == ("/x/", "/x/n.conf", "")
    assert _nginx_options(["-cn.conf", "-e", "/x/e.log"], False)[1] == "n.conf"
