"""The daemon's footprint and its control loop's punctuality, on the built-in simulated drive.

1. **footprint**: the real daemon (``treadguard run``, a subprocess, with its broker and
   journal) idle, then during a session (started over MQTT, the simulated user holding on):
   CPU in % of one core from /proc/PID/stat over each window, and RSS from /proc/PID/status.
   Targets: at most 2 % and 60 MB.
2. **lateness**: the daemon's own 20 Hz control tick in this process (``Daemon`` with its real
   controller, simulated belt, journal and MQTT link), each tick's lag behind its period as
   the daemon's loop-health check sees it, during a session; first alone, then while another
   process burns one core.

    .venv/bin/python benchmarks/bench_daemon.py [--window 20] [--lateness 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from _common import free_port, machine, python_speed_s, row, save, start_broker, summary
from paho.mqtt.enums import CallbackAPIVersion

from treadguard.config.loading import load_config
from treadguard.controller.daemon import Daemon
from treadguard.controller.logs import configure_logging

ROOT = Path(__file__).resolve().parent.parent
TM = "tm-bench"
P = f"treadmill/{TM}"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def write_config(workdir: Path, port: int) -> Path:
    path = workdir / "daemon.toml"
    path.write_text(
        f'[treadmill]\nid = "{TM}"\n\n'
        f"[programs]\ndir = '{(ROOT / 'config' / 'programs').as_posix()}'\n\n"
        '[drive]\nkind = "simulator"\n\n[sensors]\nsource = "simulator"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f"[journal]\npath = '{(workdir / 'journal.sqlite').as_posix()}'\n\n"
        '[logging]\nlevel = "warning"\nformat = "json"\n'
    )
    return path


class Tablet:
    """A synchronous MQTT client that starts sessions and keeps them alive with heartbeats."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.state: dict[str, object] = {}
        self.since = time.time()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"{P}/state", qos=1)

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        self.state = json.loads(message.payload)

    def command(self, type_: str, **fields: object) -> None:
        payload = json.dumps({"id": uuid.uuid4().hex, "type": type_, **fields})
        self.client.publish(f"{P}/cmd", payload, qos=1).wait_for_publish(5.0)

    def wait_state(self, wanted: str, timeout: float = 20.0) -> None:
        """Until this daemon's state is ``wanted`` (a retained one from an earlier daemon on
        the same broker is older than this client)."""
        deadline = time.monotonic() + timeout
        while self.state.get("state") != wanted or float(self.state["ts"]) < self.since:  # type: ignore[arg-type]
            if time.monotonic() > deadline:
                raise RuntimeError(f"state never became {wanted}: {self.state}")
            time.sleep(0.05)

    def hold_session(self, seconds: float) -> None:
        """Heartbeats (SR-12) for ``seconds``, once a second."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.command("heartbeat")
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def footprint(pid: int, seconds: float, during: object = None) -> dict[str, float]:
    c0, t0 = cpu_s(pid), time.monotonic()
    if callable(during):
        during(seconds)
    else:
        time.sleep(seconds)
    c1, t1 = cpu_s(pid), time.monotonic()
    return {"cpu_pct": 100.0 * (c1 - c0) / (t1 - t0), "rss_mb": rss_mb(pid)}


def measure_footprint(workdir: Path, port: int, window: float) -> dict[str, dict[str, float]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    config = write_config(workdir, port)
    # Its sessions need a commissioned treadmill (docs/commissioning.md): the simulated one is
    # commissioned unattended first.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "controller.cli",
            "commission",
            "--simulated",
            "--config",
            str(config),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        check=True,
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "treadguard.controller.cli", "run", "--config", str(config)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    tablet = Tablet(port)
    try:
        tablet.wait_state("idle")
        time.sleep(2.0)  # past start-up, before the idle window
        idle = footprint(daemon.pid, window)
        tablet.command("start_session", user="bench", program="first_session")
        tablet.wait_state("running")
        session = footprint(daemon.pid, window, during=tablet.hold_session)
        tablet.command("stop")
        return {"idle": idle, "session": session}
    finally:
        tablet.close()
        daemon.terminate()
        daemon.wait(timeout=20)


class TimedDaemon(Daemon):
    """The daemon, recording each tick's lag as its loop-health check sees it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.lags_ms: list[float] | None = None

    def tick(self) -> None:
        super().tick()
        if self.lags_ms is not None:
            self.lags_ms.append(self.system.health.last_lag_s * 1000.0)


async def lateness_run(config: Path, port: int, seconds: float) -> dict[str, list[float]]:
    daemon = TimedDaemon(load_config(config))
    runner = asyncio.create_task(daemon.run())
    tablet = Tablet(port)
    results: dict[str, list[float]] = {}
    try:
        await asyncio.to_thread(tablet.wait_state, "idle")
        tablet.command("start_session", user="bench", program="first_session")
        await asyncio.to_thread(tablet.wait_state, "running")
        for label, burner in (("alone", False), ("one core burnt", True)):
            # A separate interpreter burning one core (a fork of this process would inherit
            # the daemon's signal handlers and ignore the terminate).
            proc = None
            if burner:
                proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "while 1: pass")
            try:
                daemon.lags_ms = []
                await asyncio.to_thread(tablet.hold_session, seconds)
                results[label] = daemon.lags_ms
                daemon.lags_ms = None
            finally:
                if proc is not None:
                    proc.kill()
                    await proc.wait()
        tablet.command("stop")
    finally:
        tablet.close()
        daemon._on_signal(15)
        await asyncio.wait_for(runner, 30.0)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--window", type=float, default=20.0, help="seconds per footprint window")
    parser.add_argument("--lateness", type=float, default=30.0, help="seconds per lateness run")
    args = parser.parse_args()
    configure_logging("error", "json")
    loop_s = python_speed_s()
    print(f"machine: {machine()}; 10-million-step loop {loop_s * 1000:.0f} ms", flush=True)
    with tempfile.TemporaryDirectory(prefix="tg-bench-daemon-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        broker = start_broker(workdir, port)
        try:
            (workdir / "fp").mkdir()
            fp = measure_footprint(workdir / "fp", port, args.window)
            (workdir / "lat").mkdir()
            config = write_config(workdir / "lat", port)
            lags = asyncio.run(lateness_run(config, port, args.lateness))
        finally:
            broker.kill()
            broker.wait()
    for name, figures in fp.items():
        print(f"daemon {name:<8} CPU {figures['cpu_pct']:6.2f} % of one core, RSS "
              f"{figures['rss_mb']:5.1f} MB (targets: 2 %, 60 MB)")  # fmt: skip
    lateness = {label: summary(values) for label, values in lags.items()}
    for label, s in lateness.items():
        print(row(f"tick lag behind its 50 ms period, {label}", s, "ms"))
    path = save(
        "daemon",
        {"python_loop_s": loop_s, "footprint": fp, "tick_lag_ms": lateness},
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
