"""nginx in front of the broker as the doctor's network check must read it: its configuration
taken word by word as nginx itself takes it (a "#" inside a word, a quoted string over lines,
a backslash), against a real nginx passing the broker's plain WebSockets on to the network.
Each test first shows MQTT answering in the clear from the board's address through the real
nginx, then runs the check."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import ssl
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.board_network import board_network  # noqa: F401 (a fixture)
from tests.mosquitto import (
    MOSQUITTO,
    PASSWORDS,
    SENSOR_TM,
    auth_lines,
    free_ports,
    have_mosquitto,
    network_addresses,
    wait_listening,
)
from tests.nginx import NGINX, have_nginx, nginx_on, nginx_written, started
from tests.pki import make_pki
from tests.test_doctor import (
    Rig,
    Sensors,
    _broker_anew,
    doctor,
    need,
    publishing,
    rig,  # noqa: F401 (the fixture)
)
from treadguard.controller import doctor as doctor_module
from treadguard.controller.doctor import (
    NGINX_NOT_ITS,
    Verdict,
    _nginx_options,
    check_network,
    nginx_build,
)
from treadguard.controller.network_probe import (
    Address,
    NginxUnreadable,
    location_paths,
    mqtt_answers,
    nginx_unasked,
    parse_nginx,
)

pytestmark = pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")


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


def _nginx_and_a_plain_broker(rig: Rig) -> tuple[list[str], int, int]:  # noqa: F811
    """The rig's broker anew with a plain WebSockets listener on loopback: the board's IPv4
    addresses, a free port for nginx and the listener's port (the test skipped without nginx
    or such an address)."""
    need("Debian's nginx", have_nginx())
    board = [a for a in network_addresses() if ":" not in a]
    need("an IPv4 address other than loopback", bool(board))
    _broker_anew(rig, auth_lines(rig.tmp), websockets=True)
    assert rig.broker.ws_port is not None
    (port,) = free_ports(1)
    return board, port, rig.broker.ws_port


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
    board, port, ws_port = _nginx_and_a_plain_broker(rig)
    path, site = HIDDEN[case]
    folder = tmp_path / "nginx"
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<title>treadguard</title>")
    text = site.format(
        port=port,
        ws=ws_port,
        ws_location=passed_on("/ws", ws_port),
        page=page,
    )
    # A -g as Debian's unit gives one (-g 'daemon on; master_process on;'): still the board's.
    proc = nginx_on(folder, text, args=("-g", "pcre_jit on; master_process on;"))
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
        assert NGINX_NOT_ITS not in found[0].detail, found  # the board's own nginx


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
    board, port, ws_port = _nginx_and_a_plain_broker(rig)
    installed = _board_nginx_files(tmp_path / "installed")
    foreign = tmp_path / "foreign"
    site = (
        f"server {{\n  listen {port};\n  server_name _;\n"
        "  location / { return 404; }\n"
        "  location = /mqtt { return 301 https://$host$request_uri; }\n"
        f"  {passed_on('/ws', ws_port)}\n}}\n"
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
    blanks); without -p or -c, none (the build's own)."""
    debian = ["-g", "daemon", "on;", "master_process", "on;"]  # its title past the executable
    assert _nginx_options(debian, True) == (None, None, "daemon on; master_process on;")
    assert _nginx_options(["-qc", "/x/n.conf", "-p/x/"], False) == ("/x/", "/x/n.conf", "")
    assert _nginx_options(["-cn.conf", "-e", "/x/e.log"], False)[:2] == (None, "n.conf")
    # A title that reads back more than one way: a path holding a blank, which the title's
    # joined words cannot tell from two words ("-c '/tmp/x -c /etc/nginx/nginx.conf'",
    # "-c '/etc/nginx/nginx.conf x'"). Started with them, the words are exact.
    for ambiguous in (
        ["-c", "/tmp/x", "-c", "/etc/nginx/nginx.conf"],
        ["-c", "/etc/nginx/nginx.conf", "x"],
        ["-p", "/a", "-p", "/b"],
    ):
        with pytest.raises(ValueError, match="title"):
            _nginx_options(ambiguous, True)
    assert _nginx_options(["-c", "/etc/nginx/nginx.conf x"], False)[1] == (
        "/etc/nginx/nginx.conf x"
    )


def test_a_process_titled_as_nginx_that_is_no_nginx_is_not_the_board_s(tmp_path: Path) -> None:
    """Any user may give a program nginx's title (exec -a "nginx: master process ...") or
    name (a copy called nginx, as large as it likes): an nginx's executable holds its
    configure line, and one that does not, or is too large to read, runs a configuration the
    doctor cannot tell, whatever its title says; never exempt as the board's."""
    title = "nginx: master process /usr/sbin/nginx -c /etc/nginx/nginx.conf"
    named = tmp_path / "nginx"
    shutil.copy("/bin/sleep", named)
    with named.open("r+b") as grown:  # a valid program, padded past what is read
        grown.truncate(doctor_module.NGINX_EXECUTABLE_MAX + 4096)
    posers = [
        subprocess.Popen([title, "30"], executable="/bin/sleep"),
        subprocess.Popen([str(named), "30"]),
    ]
    try:
        for proc, comm in zip(posers, ("sleep", "nginx"), strict=True):
            deadline = time.monotonic() + 10.0
            while Path(f"/proc/{proc.pid}/comm").read_text().strip() != comm:  # its exec done
                assert time.monotonic() < deadline, "the program never started"
                time.sleep(0.01)
        found = {m.pid: m for m in doctor_module._nginx_masters()}
    finally:
        for proc in posers:
            proc.kill()
            proc.wait()
    assert "holds no nginx configure line" in found[posers[0].pid].unknown, found
    assert "larger than" in found[posers[1].pid].unknown, found


def _configure(line: bytes) -> bytes:
    """An executable's bytes around nginx's configure line (nginx -V's string)."""
    return b"\x7fELF\0\0" + b"configure arguments:" + line + b"\n\0-h text\0"


def test_nginx_s_build_is_read_from_its_executable() -> None:
    """The prefix and configuration file an nginx was built with, from the configure line its
    executable holds (nginx -V prints it), never by running it: Debian's (and nginx.org's) an
    absolute --conf-path; OpenResty's a --prefix alone (conf/nginx.conf under it); a source
    build's nothing (/usr/local/nginx/conf/nginx.conf); an empty --prefix (the working
    folder); quoted arguments; the last of a flag deciding. Debian's own executable here
    names /etc/nginx/nginx.conf. No configure line, two, or one that cannot be read: said."""
    assert nginx_build(
        _configure(
            b" --with-cc-opt='-g -O2 -fPIC' --prefix=/usr/share/nginx "
            b"--conf-path=/etc/nginx/nginx.conf --http-log-path=/var/log/nginx/access.log"
        )
    ) == ("/usr/share/nginx", "/etc/nginx/nginx.conf")
    assert nginx_build(_configure(b" --prefix=/usr/local/openresty/nginx --with-pcre-jit")) == (
        "/usr/local/openresty/nginx",
        "conf/nginx.conf",
    )
    assert nginx_build(_configure(b"")) == ("/usr/local/nginx", "conf/nginx.conf")
    assert nginx_build(_configure(b" --prefix= --conf-path=a/n.conf")) == ("", "a/n.conf")
    assert nginx_build(_configure(b" --conf-path='/srv/my conf/n.conf' --conf-path=/x.conf")) == (
        "/usr/local/nginx",
        "/x.conf",
    )
    for bad, said in (
        (b"\x7fELF no nginx here", "holds no nginx configure line"),
        (_configure(b" --prefix=/a") + _configure(b" --prefix=/b"), "more than one"),
        (_configure(b" --with-cc-opt='-g"), "its configure line cannot be read"),
    ):
        with pytest.raises(ValueError, match=said):
            nginx_build(bad)
    if have_nginx():
        prefix, conf = nginx_build(Path(NGINX).read_bytes())
        assert os.path.join(prefix, conf) == "/etc/nginx/nginx.conf"


def _built_elsewhere(folder: Path, to: Path) -> Path:
    """Debian's nginx copied to ``to`` with its configuration file, /etc/nginx/nginx.conf,
    changed everywhere in its bytes to ``folder``/nginx.conf, a path of the same length."""
    debian = b"/etc/nginx/nginx.conf"
    need("Debian's /etc/nginx/nginx.conf", Path("/etc/nginx/nginx.conf").is_file())
    data = Path(NGINX).read_bytes()
    assert data.count(b"--conf-path=" + debian) == 1, "Debian's configure line"
    conf = os.fsencode(folder / "nginx.conf")
    assert len(conf) == len(debian)
    to.write_bytes(data.replace(debian, conf))
    to.chmod(0o755)
    return to


def _short_folder(length: int) -> Path:
    """A new folder under /tmp whose nginx.conf has a path of ``length`` characters."""
    name_length = length - len("/tmp/") - len("/nginx.conf")
    assert name_length >= 4
    while True:  # bounded in practice: a random name taken is tried again
        folder = Path("/tmp") / ("n" + secrets.token_hex(4))[:name_length]
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder


@pytest.mark.asyncio
@pytest.mark.usefixtures("board_network")  # nginx listening beyond loopback
async def test_an_nginx_built_with_another_configuration_file_is_not_the_board_s(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A copy of Debian's nginx with its compiled-in configuration file changed to another
    path of the same length (every place its executable holds it: the configure line, the -h
    text, the path it opens), as an nginx built elsewhere (nginx.org's, OpenResty, a source
    build) has another: started without -c, it runs that file, which passes /ws on to the
    broker's plain WebSockets from the network. The board's configuration is Debian's
    /etc/nginx (read only). Its executable's bytes name the file it runs: not the board's."""
    board, port, ws_port = _nginx_and_a_plain_broker(rig)
    folder = _short_folder(len("/etc/nginx/nginx.conf"))
    conf = folder / "nginx.conf"
    try:
        built = _built_elsewhere(folder, tmp_path / "nginx")
        site = (
            f"server {{\n  listen {port};\n  server_name _;\n"
            "  location / { return 404; }\n"
            "  location = /mqtt { return 301 https://$host$request_uri; }\n"
            f"  {passed_on('/ws', ws_port)}\n}}\n"
        )
        nginx_written(folder, site)
        proc = started([str(built), "-p", f"{folder}/", "-e", f"{folder}/error.log"])
        try:
            wait_listening(proc, [port], lambda: (folder / "error.log").read_text())
            harm = await mqtt_answers(Address(board[0]), port, 3.0, ("/ws",))
            assert harm.how is not None, harm  # MQTT in the clear through that nginx
            found = await check_network(3.0, nginx=Path("/etc/nginx"))
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    finally:
        shutil.rmtree(folder)
    named = [c for c in found if f"nginx (pid {proc.pid}) " in c.detail]
    assert [c.verdict for c in named] == [Verdict.TODO], found
    assert f"nginx (pid {proc.pid}) runs {conf}, not /etc/nginx/nginx.conf" in named[0].detail
    assert NGINX_NOT_ITS in named[0].detail, named
    assert "stop the nginx that does not run the board's /etc/nginx" in named[0].fix, named


def _anonymous_wss_command(host: str, port: int, broker_port: int) -> bool:
    """Whether a client with no account at wss://host:port/mqtt commands the treadmill: its
    command reaches the daemon's account at the board's broker within 8 s (published again
    every 0.3 s: a bridge subscribes on the far side in its own time)."""
    topic = f"treadmill/{SENSOR_TM}/cmd"
    got = threading.Event()
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="treadguard")
    sub.username_pw_set("treadguard", PASSWORDS["treadguard"])
    sub.on_message = lambda *_: got.set()
    sub.connect("127.0.0.1", broker_port)
    sub.subscribe(topic, qos=1)
    sub.loop_start()
    pub = paho.Client(CallbackAPIVersion.VERSION2, client_id="nobody", transport="websockets")
    pub.ws_set_options(path="/mqtt")
    pub.tls_set(cert_reqs=ssl.CERT_NONE)
    pub.tls_insecure_set(True)
    try:
        pub.connect(host, port)
        pub.loop_start()
        deadline = time.monotonic() + 8.0
        while not got.is_set() and time.monotonic() < deadline:
            pub.publish(topic, b'{"id":"x","type":"heartbeat"}', qos=1)
            got.wait(0.3)  # a retry period: the event is the answer
        return got.is_set()
    finally:
        for client in (pub, sub):
            client.disconnect()
            client.loop_stop()


@pytest.mark.asyncio
@pytest.mark.usefixtures("board_network")  # nginx listening beyond loopback, a doctor run
async def test_a_second_broker_behind_the_page_s_route_is_not_passed(
    rig: Rig,  # noqa: F811
    tmp_path: Path,
) -> None:
    """nginx, shaped as the shipped site (TLS on every address, /mqtt passed on), passes /mqtt
    to a second Mosquitto's WebSockets listener on loopback (a "kiosk" broker: anonymous
    clients welcome) that bridges into the board's broker with the tablet's account. Anyone
    reaching https://BOARD/mqtt commands the treadmill with no account; the board's broker,
    its files, its listeners and the probe (TLS answers nothing in the clear) are all as they
    should be. The network check names where nginx passes /mqtt; the doctor names the second
    broker; the board is not passed."""
    need("Debian's nginx", have_nginx())
    board = [a for a in network_addresses() if ":" not in a]
    need("an IPv4 address other than loopback", bool(board))
    pki = make_pki(tmp_path / "pki")
    page = tmp_path / "page"
    page.mkdir()
    (page / "index.html").write_text("<title>treadguard</title>")
    port, ws, kiosk_plain = free_ports(3)
    kiosk_conf = tmp_path / "kiosk.conf"
    kiosk_conf.write_text(
        f"listener {kiosk_plain} 127.0.0.1\n"
        f"listener {ws} 127.0.0.1\nprotocol websockets\nsocket_domain ipv4\n"
        "allow_anonymous true\npersistence false\nlog_dest stdout\n"
        f"connection board\naddress 127.0.0.1:{rig.broker.port}\n"
        f"remote_username tablet\nremote_password {PASSWORDS['tablet']}\n"
        "topic treadmill/# both 1\n"
    )
    kiosk = started([MOSQUITTO, "-c", str(kiosk_conf)])
    site = (
        f"server {{\n  listen {port} ssl http2;\n  server_name _;\n"
        f"  ssl_certificate {pki.server_cert};\n  ssl_certificate_key {pki.server_key};\n"
        f"  root {page};\n  index index.html;\n"
        "  location / { try_files $uri $uri/ =404; }\n"
        f"  location = /mqtt {{\n    proxy_pass http://127.0.0.1:{ws};\n"
        "    proxy_http_version 1.1;\n    proxy_set_header Upgrade $http_upgrade;\n"
        '    proxy_set_header Connection "upgrade";\n  }\n}\n'
    )
    folder = tmp_path / "nginx"
    proc = nginx_on(folder, site)
    rig.drive = 'kind = "simulator"'
    try:
        wait_listening(kiosk, [kiosk_plain, ws], lambda: "the second mosquitto exited")
        wait_listening(proc, [port], lambda: (folder / "error.log").read_text())
        commands = await asyncio.to_thread(_anonymous_wss_command, board[0], port, rig.broker.port)
        assert commands  # anyone at https://BOARD/mqtt commands the treadmill
        found = await check_network(3.0, nginx=folder, broker_port=rig.broker.port)
        async with publishing(Sensors(rig.broker.port)):
            done = await doctor(rig, rig.config(), "--service-user", "root", "--json")
    finally:
        for one in (proc, kiosk):
            one.terminate()
            one.wait(timeout=10)
    assert [c.verdict for c in found] == [Verdict.TODO], found
    assert (
        f"proxy_pass http://127.0.0.1:{ws}) passes requests on to 127.0.0.1:{ws}, where "
        f"mosquitto (pid {kiosk.pid}) listens, not the board's broker"
    ) in found[0].detail, found
    assert "pass the page's /mqtt on only to the board's broker" in found[0].fix, found
    result = json.loads(done.out.splitlines()[-1])
    assert done.code == 4, done.out[-3000:]
    named = [
        c
        for c in result["checks"]
        if c["check"] == "broker config"
        and f"(pid {kiosk.pid}) is another Mosquitto" in c["detail"]
    ]
    assert [c["verdict"] for c in named] == ["TODO"], result
    assert "its bridge board" in named[0]["detail"], named
    assert "a board runs one broker" in named[0]["fix"], named
