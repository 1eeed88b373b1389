"""Debian's nginx for the tests, on the shipped site file, config/nginx/treadguard.conf.

The site file is written for a board (the page in /opt/treadguard/tablet, the certificate in
/etc/treadguard/tls/, Mosquitto's WebSockets on 127.0.0.1:9001, ports 80 and 443): a test
renders it with its own paths and free ports in their place, each substitution checked, so
what is tested is the shipped file. The test's nginx is a process of its own, in the
foreground (``daemon off``), with its pid file, logs and temporary files in the test's folder;
the machine's nginx service is never involved.

Started as root, nginx's workers would drop to ``nobody``, who cannot read a checkout in a
private folder or pytest's temporary one: the test's workers stay root then. Started as
anyone else, they run as that user and read what it reads.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

from tests.browser import PAGE_DIR
from tests.mosquitto import FILES_SETTLE_S, START_TIMEOUT_S, free_ports, wait_listening

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_SITE = ROOT / "config" / "nginx" / "treadguard.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
MIME_TYPES = Path("/etc/nginx/mime.types")  # Debian's nginx-common


def have_nginx() -> bool:
    return Path(NGINX).exists() and MIME_TYPES.exists()


def ipv6_loopback() -> bool:
    """Whether ::1 can be listened on here (a container may have no IPv6 at all)."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def site_config(
    *,
    https_port: int,
    http_port: int,
    cert: Path,
    key: Path,
    mqtt_port: int,
    page_dir: Path = PAGE_DIR,
    client_ca: Path | None = None,
) -> str:
    """The shipped site with this test's ports and files, on loopback. ``client_ca``: its
    commented client-certificate lines switched on, with that CA."""
    v6 = ipv6_loopback()
    edits = [
        (r"^    listen 80;$", f"    listen 127.0.0.1:{http_port};"),
        # Without IPv6 on this machine the IPv6 listeners are left out (nginx would not start).
        (r"^    listen \[::\]:80;$", f"    listen [::1]:{http_port};" if v6 else ""),
        (r"^    listen 443 ssl http2;$", f"    listen 127.0.0.1:{https_port} ssl http2;"),
        (
            r"^    listen \[::\]:443 ssl http2;$",
            f"    listen [::1]:{https_port} ssl http2;" if v6 else "",
        ),
        (r"^    ssl_certificate /etc/treadguard/tls/server\.crt;$", f"    ssl_certificate {cert};"),
        (
            r"^    ssl_certificate_key /etc/treadguard/tls/server\.key;$",
            f"    ssl_certificate_key {key};",
        ),
        (r"^    root /opt/treadguard/tablet;$", f"    root {page_dir};"),
        (
            r"^        proxy_pass http://127\.0\.0\.1:9001;$",
            f"        proxy_pass http://127.0.0.1:{mqtt_port};",
        ),
    ]
    if client_ca is not None:
        edits += [
            (
                r"^    #ssl_client_certificate /etc/treadguard/tls/ca\.crt;$",
                f"    ssl_client_certificate {client_ca};",
            ),
            (r"^    #ssl_verify_client on;$", "    ssl_verify_client on;"),
        ]
    text = SHIPPED_SITE.read_text()
    for pattern, replacement in edits:
        literal = replacement.replace("\\", "\\\\")  # a path's backslash, were there one
        text, n = re.subn(pattern, literal, text, flags=re.MULTILINE)
        assert n == 1, f"config/nginx/treadguard.conf has {n} lines like {pattern!r}, not one"
    return text


class Nginx:
    """The shipped site in an nginx of the test's own, on free loopback ports: ``https_port``
    (the site's 443) and ``http_port`` (its 80), passing /mqtt to ``mqtt_port``."""

    def __init__(
        self,
        workdir: Path,
        *,
        cert: Path,
        key: Path,
        mqtt_port: int,
        client_ca: Path | None = None,
    ) -> None:
        self.dir = workdir / "nginx"
        self.dir.mkdir()
        self.https_port, self.http_port = free_ports(2)
        site = self.dir / "treadguard.conf"
        site.write_text(
            site_config(
                https_port=self.https_port,
                http_port=self.http_port,
                cert=cert,
                key=key,
                mqtt_port=mqtt_port,
                client_ca=client_ca,
            )
        )
        self.error_log = self.dir / "error.log"
        temp = self.dir / "temp"
        temp.mkdir()
        # The http block of Debian's /etc/nginx/nginx.conf as far as the site relies on it
        # (the MIME types: Mosquitto's http_dir sent none), and every path nginx writes to
        # in the test's folder.
        self.conf = self.dir / "nginx.conf"
        self.conf.write_text(
            "daemon off;\n"
            "worker_processes 1;\n"
            + ("user root;\n" if os.geteuid() == 0 else "")
            + f"pid {self.dir}/nginx.pid;\n"
            f"error_log {self.error_log} info;\n"
            "events {\n    worker_connections 256;\n}\n"
            "http {\n"
            f"    include {MIME_TYPES};\n"
            "    default_type application/octet-stream;\n"
            "    sendfile on;\n"
            f"    access_log {self.dir}/access.log;\n"
            + "".join(
                f"    {kind}_temp_path {temp}/{kind};\n"
                for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
            )
            + f"    include {site};\n"
            "}\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}/"

    def start(self) -> None:
        # -e: the error log before the configuration is read (Debian's default is under
        # /var/log/nginx/, which an unprivileged user cannot write).
        command = [NGINX, "-p", f"{self.dir}/", "-c", str(self.conf), "-e", str(self.error_log)]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
        with (self.dir / "stderr.log").open("ab") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        wait_listening(
            self.proc,
            [self.https_port, self.http_port],
            lambda: f"nginx exited: {self.error_log.read_text()}",
        )

    def stop(self) -> None:
        """SIGTERM: nginx's fast shutdown, workers included."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=START_TIMEOUT_S)
        self.proc = None


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
    time.sleep(FILES_SETTLE_S)  # its files older than its start, past the doctor's tick
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def nginx_on(
    folder: Path, site: str, *, extra_main: str = "", args: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """Debian's nginx in the foreground on ``folder``/nginx.conf, serving ``site``, with
    ``args`` on its command line besides."""
    return started([*nginx_written(folder, site, extra_main=extra_main), *args])
