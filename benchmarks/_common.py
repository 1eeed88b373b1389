"""Shared by the benchmarks: percentiles, the machine's description, saving results."""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank on the sorted values."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100.0 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": statistics.median(values),
        "p99": percentile(values, 99),
        "max": max(values),
        "min": min(values),
        "mean": statistics.fmean(values),
    }


def python_speed_s() -> float:
    """Seconds for a plain 10-million-step Python loop: this machine's speed, measured in the
    same run as the figures so they can be compared with another machine's as ratios."""
    t0 = time.perf_counter()
    total = 0
    for i in range(10_000_000):
        total += i
    return time.perf_counter() - t0


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_1min": os.getloadavg()[0],
    }


def save(name: str, figures: dict[str, Any]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    record = {
        "benchmark": name,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **figures,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def row(label: str, s: dict[str, float], unit: str) -> str:
    return (
        f"{label:<42} p50 {s['p50']:9.3f} {unit}  p99 {s['p99']:9.3f} {unit}  "
        f"max {s['max']:9.3f} {unit}  (n={int(s['n'])})"
    )


# A private Mosquitto on a free port of 127.0.0.1, for the MQTT benchmarks.
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
BROKER_START_S = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "log_dest stdout\n"
        "set_tcp_nodelay true\n"
        "persistence false\n"
        # The shipped configuration's queue limits (config/mosquitto/treadguard.conf).
        "max_queued_messages 1000\n"
        "max_queued_bytes 67108864\n"
    )
    log = workdir / "mosquitto.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + BROKER_START_S
    while True:  # bounded: until the port accepts connections or the deadline
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited: {log.read_text(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.02)
