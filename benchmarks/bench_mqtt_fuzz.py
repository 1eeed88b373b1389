"""SR-15 at scale: the MQTT fuzz test (tests/test_daemon_fuzz.py) against the real daemon and a
real Mosquitto with 10,000 examples (CI runs 2,000), timed.

    python benchmarks/bench_mqtt_fuzz.py [--examples 10000]

Prints and saves (benchmarks/results/mqtt_fuzz.json) the examples run, the wall time, the time
per example and whether any example failed (pytest's exit code; its tail on failure).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import python_speed_s, save

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000)
    args = parser.parse_args()
    env = {**os.environ, "TREADGUARD_FUZZ_EXAMPLES": str(args.examples)}
    speed = python_speed_s()
    t0 = time.perf_counter()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_daemon_fuzz.py",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    elapsed = time.perf_counter() - t0
    figures = {
        "examples": args.examples,
        "seconds": round(elapsed, 1),
        "ms_per_example": round(elapsed / args.examples * 1e3, 2),
        "failed": run.returncode != 0,
        "pytest_exit_code": run.returncode,
        "python_speed_s": round(speed, 3),
    }
    path = save("mqtt_fuzz", figures)
    print(
        f"MQTT fuzz, real daemon + Mosquitto: {args.examples} examples in {elapsed:.1f} s "
        f"({figures['ms_per_example']} ms each), "
        f"{'FAILED' if figures['failed'] else 'no failure'}; saved {path}"
    )
    if run.returncode != 0:
        print(run.stdout[-20000:], run.stderr[-2000:], sep="\n")
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main())
