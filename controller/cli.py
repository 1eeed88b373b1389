"""The ``treadguard`` command."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import config as config_package
import simulator as simulator_package
from config.loading import ConfigError, LoadedConfig, load_config
from config.schema import SimulatedDriveSection
from controller.logs import configure_logging
from controller.simulation import (
    ScenarioResult,
    SimulationError,
    clock_text,
    run_realtime,
    run_virtual,
)
from simulator.scenario import ScenarioError, load_scenario

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

BUILTIN_CONFIG = Path(config_package.__file__).parent / "sim.toml"
DEMO_SCENARIO = Path(simulator_package.__file__).parent / "scenarios" / "demo.toml"


def _config_for(path: Path, explicit: Path | None, scenario_config: Path | None) -> LoadedConfig:
    if explicit is not None:
        return load_config(explicit)
    if scenario_config is not None:
        resolved = (
            scenario_config if scenario_config.is_absolute() else path.parent / scenario_config
        )
        return load_config(resolved)
    return load_config(BUILTIN_CONFIG)


def _summary(result: ScenarioResult) -> str:
    verdict = "PASS" if result.passed else "FAIL"
    stops = ", ".join(f"{s.cause} at {clock_text(s.t_s)}" for s in result.estops) or "none"
    cap = "" if result.cap_s is None else f" of cap {result.cap_s:g} s"
    lines = [
        f"{verdict} {result.scenario}: {result.name}",
        f"  final state {result.final_state}; belt max {result.max_speed_mph:.2f} mph "
        f"(commanded max {result.max_commanded_mph:.2f}, rate max "
        f"{result.max_accel_mph_s:.2f} mph/s); belt moving {result.belt_moving_s:.1f} s{cap}; "
        f"stops: {stops}",
    ]
    lines += [f"  failed: {f}" for f in result.failures]
    return "\n".join(lines)


def cmd_simulate(args: argparse.Namespace) -> int:
    configure_logging(args.log_level, "json" if args.json else "auto")
    all_passed = True
    for path in args.scenarios:
        try:
            scenario = load_scenario(path)
            loaded = _config_for(path, args.config, scenario.config)
        except (ScenarioError, ConfigError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        echo = None if args.json else print
        if echo is not None:
            print(f"== {path}: {scenario.name}")
        wire = not isinstance(loaded.config.drive, SimulatedDriveSection)
        if wire and not args.realtime and echo is not None:
            print(
                f"        drive.kind is {loaded.config.drive.kind!r}: playing in real time "
                "through the real driver against a simulated device"
            )
        try:
            if args.realtime or wire:
                result = asyncio.run(
                    run_realtime(scenario, str(path), loaded, echo=echo, speed=args.speed)
                )
            else:
                result = run_virtual(scenario, str(path), loaded, echo=echo)
        except SimulationError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        all_passed &= result.passed
        if args.json:
            print(json.dumps(result.as_json(), sort_keys=False), flush=True)
        else:
            print(_summary(result), flush=True)
    return 0 if all_passed else EXIT_FAILED


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        load_config(args.file)
    except ConfigError as exc:
        print(f"{exc.path}: {len(exc.problems)} error(s)")
        for problem in exc.problems:
            print(f"  {problem}")
        return EXIT_BAD_INPUT
    print("ok")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """For now: the demo scenario in real time on the configured simulator."""
    args.scenarios = [args.scenario]
    args.realtime = True
    args.json = False
    print(
        f"treadguard: playing {args.scenario} on {args.config} at {args.speed:g}x real time "
        "(Ctrl-C to quit)",
        flush=True,
    )
    try:
        return cmd_simulate(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="treadguard",
        description="Safety controller for reverse-walking sessions on a motorized treadmill.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="play scenarios against the simulated treadmill")
    sim.add_argument("scenarios", nargs="+", type=Path, metavar="SCENARIO")
    sim.add_argument("--json", action="store_true", help="one JSON object per scenario")
    sim.add_argument("--realtime", action="store_true", help="real time instead of virtual")
    sim.add_argument(
        "--speed",
        type=float,
        default=1.0,
        help="with --realtime: play this many times faster than real time",
    )
    sim.add_argument(
        "--config",
        type=Path,
        default=None,
        help="configuration (default: the scenario's, else config/sim.toml)",
    )
    sim.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    sim.set_defaults(func=cmd_simulate)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check_config)

    run = sub.add_parser("run", help="run the controller (for now: the simulator demo)")
    run.add_argument("--config", type=Path, default=BUILTIN_CONFIG)
    run.add_argument("--scenario", type=Path, default=DEMO_SCENARIO)
    run.add_argument(
        "--speed", type=float, default=1.0, help="play this many times faster than real time"
    )
    run.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"]
    )
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "speed", 1.0) <= 0:
        print("error: --speed must be positive", file=sys.stderr)
        return EXIT_BAD_INPUT
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
