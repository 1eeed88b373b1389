"""A checkout in a private folder works: the tests' page broker serves the page from it, and
``scripts/run`` runs from it, as a person runs it.

The checkout is a copy of this one's files in a folder made as ``mktemp -d`` makes one (mode
0700). Started as root, Mosquitto drops to its own user, who cannot read such a folder: the
tests' broker (tests/mosquitto.py) then stays root, and ``scripts/run`` serves a copy of the
page from where any user may read it. The copy reuses this checkout's ``.venv`` (a link) and
the files the page loads from its ``tablet/node_modules``, when both are current, as
``scripts/test`` leaves them: ``scripts/run`` then installs nothing, and its run takes seconds.

``scripts/run`` is started with its guided demo off, on free ports; the test waits for the
page's address, fetches the page and every file the page loads over HTTP, then stops it as
Ctrl-C in its terminal does, and checks that it ended cleanly, leaving no process and no copy
of the page.
"""

from __future__ import annotations

import hashlib
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.mosquitto import Broker, free_ports, have_mosquitto
from tests.test_wheel import source_copy
from treadguard.controller.page_words import render as render_page_words

ROOT = Path(__file__).resolve().parents[1]
START_S = 120.0  # bound: the broker, the simulated commissioning and the daemon's start
STOP_S = 30.0  # bound: the daemon's controlled stop, then the rest
PAGE_LINE = re.compile(r"The tablet page: (http://127\.0\.0\.1:\d+/)")


def need(what: str, present: bool) -> None:
    if not present:
        why = f"{what}: scripts/test makes it"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def stamp_current(stamp: Path, source: Path) -> bool:
    """Whether ``scripts/bootstrap.sh``'s stamp says the install was made from ``source``."""
    want = hashlib.sha256(source.read_bytes()).hexdigest()
    return stamp.is_file() and stamp.read_text().strip() == want


class _Loads(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value and not re.match(r"^[a-z]+:|^/|^#", value):
                self.paths.append(value)


def page_loads(html: str) -> list[str]:
    """Every file the page loads from its own server: the relative src and href of its tags
    (not a data: URI, nor another server's address)."""
    parser = _Loads()
    parser.feed(html)
    return parser.paths


def fetch(url: str) -> tuple[int, bytes]:
    """The HTTP status and the body (empty for an error's)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


@pytest.fixture(scope="module")
def private_checkout() -> Iterator[Path]:
    """A copy of this checkout in a new private folder, with this one's installs."""
    need(
        ".venv not current",
        stamp_current(ROOT / ".venv/.treadguard-installed", ROOT / "pyproject.toml"),
    )
    modules = ROOT / "tablet" / "node_modules"
    need(
        "tablet/node_modules not current",
        stamp_current(modules / ".treadguard-installed", ROOT / "tablet" / "package-lock.json"),
    )
    folder = Path(tempfile.mkdtemp(prefix="treadguard-checkout-"))
    try:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        checkout = source_copy(folder / "treadguard")
        # With the stamps current, scripts/run's bootstrap finds both installed and changes
        # neither. Of node_modules, the stamp and what the page loads: a link to this one's
        # would not do, since Mosquitto serves no file that resolves outside its http_dir.
        (checkout / ".venv").symlink_to(ROOT / ".venv")
        page = checkout / "tablet"
        for name in [".treadguard-installed"] + [
            path.removeprefix("node_modules/")
            for path in page_loads((page / "index.html").read_text(encoding="utf-8"))
            if path.startswith("node_modules/")
        ]:
            (page / "node_modules" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(modules / name, page / "node_modules" / name)
        # The page's words, generated and never committed, as scripts/test writes them.
        (page / "words.js").write_text(render_page_words(), encoding="utf-8")
        yield checkout
    finally:
        shutil.rmtree(folder)


def processes_in(folder: Path) -> dict[int, str]:
    """The processes working in ``folder`` or named with it: each pid, with its command line."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = os.readlink(proc / "cwd")
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if cwd == str(folder) or cwd.startswith(f"{folder}/") or str(folder) in command:
            found[int(proc.name)] = command
    return found


def lines_of(stream: Iterator[str], into: queue.Queue[str | None]) -> None:
    """Each line of ``stream`` into ``into``, then None at its end."""
    for line in stream:
        into.put(line)
    into.put(None)


def test_the_tests_page_broker_serves_the_page_from_a_private_folder(
    private_checkout: Path, tmp_path: Path
) -> None:
    need("mosquitto is not installed", have_mosquitto())
    broker = Broker(tmp_path, http_dir=private_checkout / "tablet")
    broker.start()  # as the page's tests start theirs
    try:
        url = f"http://127.0.0.1:{broker.ws_port}/"
        status, html = fetch(url)
        assert status == 200
        loads = page_loads(html.decode())
        assert "node_modules/mqtt/dist/mqtt.min.js" in loads, loads
        for path in loads:
            status, content = fetch(url + path)
            assert (status, len(content) > 0) == (200, True), f"{path}: HTTP {status}"
    finally:
        broker.kill()


def test_scripts_run_from_a_private_folder_serves_the_page_and_all_it_loads(
    private_checkout: Path,
) -> None:
    need("mosquitto is not installed", have_mosquitto())
    need("npm is not installed", shutil.which("npm") is not None)
    mqtt_port, page_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADGUARD_")}
    env.update(DEMO="0", TREADGUARD_MQTT__PORT=str(mqtt_port), PAGE_PORT=str(page_port))
    copy = Path(
        f"/tmp/treadguard-page-{os.getuid()}-"
        + hashlib.sha256(str(private_checkout).encode()).hexdigest()[:12]
    )
    # Its own session, as a job in a terminal: Ctrl-C there reaches its whole process group.
    run = subprocess.Popen(
        [private_checkout / "scripts" / "run"],
        cwd=private_checkout,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    said: list[str] = []
    lines: queue.Queue[str | None] = queue.Queue()
    assert run.stdout is not None
    threading.Thread(target=lines_of, args=(run.stdout, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + START_S
        url = None
        while url is None:  # bounded: until the address is printed, or START_S
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, "scripts/run ended:\n" + "".join(said)
            said.append(line)
            found = PAGE_LINE.search(line)
            url = found.group(1) if found else None
        assert url == f"http://127.0.0.1:{page_port}/"

        status, html = fetch(url)
        assert status == 200
        loads = page_loads(html.decode())
        # The page's own files and the libraries it loads from node_modules.
        assert {"tablet.js", "node_modules/mqtt/dist/mqtt.min.js"} <= set(loads), loads
        assert "node_modules/chart.js/dist/chart.umd.min.js" in loads, loads
        for path in loads:
            status, content = fetch(url + path)
            assert (status, len(content) > 0) == (200, True), f"{path}: HTTP {status}"
        assert copy.is_dir()
    except BaseException:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGINT)
        raise
    else:
        os.killpg(run.pid, signal.SIGINT)  # Ctrl-C
    finally:
        try:
            run.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            # What kept it: the processes still there and the end of each log of the run.
            logs = sorted((private_checkout / ".run").glob("*.log"))
            tails = "".join(f"\n--- {f.name}\n{f.read_text()[-1500:]}" for f in logs)
            raise AssertionError(
                f"scripts/run still running {STOP_S} s after Ctrl-C; left: "
                f"{processes_in(private_checkout)}\nsaid:\n{''.join(said)}{tails}"
            ) from None
        finally:
            left = processes_in(private_checkout)
            for pid in left:  # what this test started and its stop left behind
                os.kill(pid, signal.SIGKILL)
    while (line := lines.get(timeout=STOP_S)) is not None:  # bounded: it has ended
        said.append(line)
    output = "".join(said)
    assert run.returncode == 0, output
    assert "treadguard: stopped" in output
    assert left == {}, output
    assert not copy.exists()
