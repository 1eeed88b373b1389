"""The unattended commissioning on the simulated treadmill: how long a whole run takes on the
virtual clock (wall seconds, and the virtual seconds it covers), and what it measures.

Each run is the real procedure (controller/commission.py) through the daemon's assembly, its
journal in memory; the figures are the wall time of each run and every step's time from the
trigger to standstill.

    .venv/bin/python benchmarks/bench_commission.py [--runs 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import structlog
from _common import row, save, summary

from treadguard.config.loading import load_config
from treadguard.controller.commission import run_simulated

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    # The runs' event log lines would cost more than the runs themselves.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    loaded = load_config(ROOT / "config" / "sim.toml")
    wall_s: list[float] = []
    standstill: dict[str, list[float]] = {}
    for _ in range(args.runs):
        t0 = time.perf_counter()
        result = run_simulated(loaded, None)
        wall_s.append(time.perf_counter() - t0)
        if not result.passed:
            raise SystemExit(f"the simulated commissioning failed: {result.detail}")
        for proof in result.proofs:
            if proof.standstill_s is not None:
                standstill.setdefault(proof.step, []).append(proof.standstill_s)
    s = summary(wall_s)
    print(row("simulated commissioning, one run", s, "s"))
    for step, values in standstill.items():
        print(row(f"  {step}: trigger to standstill", summary(values), "s"))
    path = save(
        "commission",
        {
            "unit": "s",
            "run_wall_s": s,
            "standstill_s": {step: summary(v) for step, v in standstill.items()},
        },
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
