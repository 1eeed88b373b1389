"""Safety-core cost per input, in microseconds.

A core is put into a running session and fed a realistic stream: grip and fall readings at
10 Hz, drive feedback and a tick at 20 Hz, a heartbeat every second. Inputs are timed in
batches of 1,000; the figures are the per-input cost of each batch.

    .venv/bin/python benchmarks/bench_safety_core.py [--batches 300]
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from _common import row, save, summary

from treadguard.config.loading import load_config
from treadguard.safety.core import SafetyCore
from treadguard.safety.decisions import State
from treadguard.safety.inputs import (
    DriveFeedback,
    FallReading,
    GripReading,
    Hand,
    Heartbeat,
    Input,
    StartSession,
    Tick,
)

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1000


def stream(core: SafetyCore, t: float, n: int) -> tuple[list[Input], float]:
    """n inputs of a 20 Hz world starting at t, the drive following the command."""
    out: list[Input] = []
    k = 0
    while len(out) < n:
        t += 0.05
        k += 1
        if k % 2 == 0:
            out += [
                GripReading(t, Hand.LEFT, True),
                GripReading(t, Hand.RIGHT, True),
                FallReading(t, False),
            ]
        if k % 20 == 0:
            out.append(Heartbeat(t))
        out += [DriveFeedback(t, 0.8), Tick(t)]
    return out[:n], t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=300)
    args = parser.parse_args()
    loaded = load_config(ROOT / "config" / "sim.toml")
    cfg = loaded.config
    core = SafetyCore(
        cfg.safety, loaded.programs, default_program="reverse_walking", commissioned_until=math.inf
    )
    warm, t = stream(core, 0.0, 200)
    for inp in warm:
        core.handle(inp)
    core.handle(StartSession(t, "bench", "reverse_walking", 480))
    per_input_us = []
    for _ in range(args.batches):
        inputs, t = stream(core, t, BATCH)
        t0 = time.perf_counter_ns()
        for inp in inputs:
            core.handle(inp)
        per_input_us.append((time.perf_counter_ns() - t0) / BATCH / 1000)
        if core.state is State.IDLE:
            # Cap reached: a fresh session (the cost of the transitions is part of the figure).
            core.handle(StartSession(t, "bench", "reverse_walking", 480))
    s = summary(per_input_us)
    print(row("safety core, per input", s, "us"))
    path = save("safety_core", {"unit": "us per input", "per_input": s, "batch": BATCH})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
