"""A configuration as ``run`` needs it: loaded and checked (config.loading), then the parts the
daemon builds from it (the driver, the sensor readers, the broker's TLS context) built once
without starting any I/O, so that a problem only building finds is reported like any
other, with its field. ``check-config`` and ``run`` both come through here: a file that
check-config finds ``ok`` is one run gets past configuration with (SR-15)."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

from treadguard.config.loading import ConfigError, LoadedConfig, load_config
from treadguard.config.schema import ModbusDriveSection, SimulatedDriveSection
from treadguard.contract.codes import code_problem, shown_code
from treadguard.controller.drives import build_driver, field_problem, in_process_rig
from treadguard.controller.mqtt_settings import broker_settings
from treadguard.controller.sensors import SensorHub
from treadguard.drivers.vfd_codec import CodecError, mph_to_register


def load_runnable(path: Path) -> LoadedConfig:
    """Load ``path`` and build what run builds from it; raise ConfigError with every problem."""
    loaded = load_config(path)
    problems = build_problems(loaded)
    if problems:
        raise ConfigError(path, problems)
    return loaded


def build_problems(loaded: LoadedConfig) -> list[str]:
    cfg = loaded.config
    problems: list[str] = []
    clock = time.monotonic
    try:
        if isinstance(cfg.drive, SimulatedDriveSection):
            in_process_rig(loaded, clock)
        else:
            build_driver(loaded, clock)
    except ConfigError as exc:
        problems.extend(exc.problems)
    except (ValueError, ArithmeticError) as exc:
        problems.append(field_problem("drive", set(type(cfg.drive).model_fields), exc))
    if isinstance(cfg.drive, ModbusDriveSection):
        # Every speed the band allows must fit the VFD's frequency register, or the driver
        # refuses each run command at run time (and stops the belt): a drive that never runs.
        try:
            mph_to_register(cfg.safety.max_mph, cfg.drive.mph_per_hz)
        except CodecError as exc:
            problems.append(
                f"drive.mph_per_hz: the band's top speed, safety.max_mph "
                f"{cfg.safety.max_mph} mph, cannot be commanded: {exc}"
            )
    try:
        hub = SensorHub(cfg.sensors.effective_inputs(), lambda *_: None)
        for run in hub.build_sources(clock):
            run.close()  # built, never started
    except ValueError as exc:
        problems.append(f"sensors.inputs: {exc}")
    # A user's own plan in the progression rules, under a code no user can have: one with a
    # character that does not show as itself (contract/codes.py), which the contract refuses
    # in every command. The plan would apply to nobody, silently; the clinic is told instead.
    for code in loaded.rules.user:
        problem = code_problem(code, f"user.{shown_code(code)}")
        if problem is not None:
            problems.append(
                f"programs.rules: {loaded.rules_path}: {problem}; user codes with it are refused "
                "everywhere, so this plan would be nobody's"
            )
    broker = broker_settings(loaded)
    if broker.tls is not None:
        try:
            broker.tls.context()
        except (ValueError, OSError, ssl.SSLError) as exc:
            problems.append(f"mqtt.tls: {exc}")
    return problems
