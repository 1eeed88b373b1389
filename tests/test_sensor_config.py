"""The [sensors] table with per-sensor inputs: what is accepted, and a clear error naming the
field for everything else (SR-15)."""

from __future__ import annotations

from pathlib import Path
from typing import Unpack

import pytest

from tests.test_config import REGISTER_MAP, SectionText, valid_config, write
from treadguard.config.loading import ConfigError, load_config
from treadguard.config.schema import GpioInputSection, ModbusInputSection, MqttInputSection

GRIPS_ON_GPIO = """
[[sensors.inputs]]
role = "grip_left"
kind = "gpio"
line = 17
active = "low"
bias = "pull_up"

[[sensors.inputs]]
role = "grip_right"
kind = "gpio"
line = "GPIO27"
active = "low"
bias = "pull_up"
"""

FALL_ON_MODBUS = """
[[sensors.inputs]]
role = "fall"
kind = "modbus"
transport = "tcp"
host = "10.0.0.9"
device_id = 2
address = 4
active = "low"
"""


def problems_of(tmp_path: Path, sensors: str, **kwargs: Unpack[SectionText]) -> list[str]:
    path = write(tmp_path, valid_config(extra=sensors, **kwargs))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_gpio_grips_and_a_modbus_fall_sensor_are_accepted(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, valid_config(extra=GRIPS_ON_GPIO + FALL_ON_MODBUS)))
    inputs = loaded.config.sensors.effective_inputs()
    assert [type(i) for i in inputs] == [GpioInputSection, GpioInputSection, ModbusInputSection]
    left = inputs[0]
    assert isinstance(left, GpioInputSection)
    assert (left.chip, left.line, left.active, left.debounce_ms) == (
        "/dev/gpiochip0",
        17,
        "low",
        20,
    )


def test_source_mqtt_stands_for_one_topic_per_sensor(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, valid_config(extra='[sensors]\nsource = "mqtt"')))
    inputs = loaded.config.sensors.effective_inputs()
    assert all(isinstance(i, MqttInputSection) for i in inputs)
    assert [i.role.value for i in inputs] == ["grip_left", "grip_right", "fall"]


def test_sr8_every_sensor_needs_an_input(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GRIPS_ON_GPIO)
    assert found == [
        "sensors.inputs: no input gives the fall reading (grip_left, grip_right and fall each "
        "need at least one)"
    ]


def test_source_and_inputs_together_are_refused(tmp_path: Path) -> None:
    found = problems_of(tmp_path, '[sensors]\nsource = "mqtt"\n' + GRIPS_ON_GPIO + FALL_ON_MODBUS)
    assert len(found) == 1
    assert found[0].startswith("sensors.source: give either sensors.source or")


def test_the_wiring_polarity_and_the_pull_must_be_stated(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GRIPS_ON_GPIO.replace('active = "low"\nbias', "bias", 1))
    assert any(p.startswith("sensors.inputs.0.gpio.active") for p in found), found
    found = problems_of(tmp_path, GRIPS_ON_GPIO.replace('bias = "pull_up"\n', "", 1))
    assert any(p.startswith("sensors.inputs.0.gpio.bias") for p in found), found


def test_sr4_a_grip_whose_cut_wire_would_read_held_is_refused(tmp_path: Path) -> None:
    """Pulled down and active low: a released handrail (or a cut wire) reads held."""
    wrong = GRIPS_ON_GPIO.replace('bias = "pull_up"', 'bias = "pull_down"', 1)
    found = problems_of(tmp_path, wrong + FALL_ON_MODBUS)
    assert found == [
        "sensors.inputs[0].active: with active = 'low', a cut wire (which reads low) would "
        "read 'held': wire the grip so that a cut wire reads released (active = 'high')"
    ]


def test_sr5_a_fall_contact_whose_cut_wire_would_read_no_fall_is_refused(tmp_path: Path) -> None:
    """An open Modbus input reads off (low): active = "high" means a cut wire is no fall."""
    found = problems_of(tmp_path, GRIPS_ON_GPIO + FALL_ON_MODBUS.replace('"low"', '"high"'))
    assert found == [
        "sensors.inputs[2].active: with active = 'high', a cut wire (which reads low) would "
        "read 'no fall': wire the fall contact so that a cut wire reads as a fall (a normally "
        "closed contact, active = 'low')"
    ]
    # A module that reports a broken wire as on says so, and the check follows it.
    stated = FALL_ON_MODBUS.replace('"low"', '"high"') + 'open_circuit = "high"\n'
    load_config(write(tmp_path, valid_config(extra=GRIPS_ON_GPIO + stated)))


def test_an_external_pull_must_say_what_a_cut_wire_reads(tmp_path: Path) -> None:
    external = GRIPS_ON_GPIO.replace('bias = "pull_up"', 'bias = "disabled"', 1)
    found = problems_of(tmp_path, external + FALL_ON_MODBUS)
    assert len(found) == 1
    assert found[0].startswith("sensors.inputs[0].open_circuit: bias 'disabled' leaves")
    stated = external.replace('bias = "disabled"', 'bias = "disabled"\nopen_circuit = "high"', 1)
    load_config(write(tmp_path, valid_config(extra=stated + FALL_ON_MODBUS)))
    contradicting = GRIPS_ON_GPIO.replace(
        'bias = "pull_up"', 'bias = "pull_up"\nopen_circuit = "low"', 1
    )
    found = problems_of(tmp_path, contradicting + FALL_ON_MODBUS)
    assert found[0].startswith("sensors.inputs[0].open_circuit: 'low' contradicts bias")


def test_an_input_too_slow_for_the_sensor_time_out_is_refused(tmp_path: Path) -> None:
    slow = FALL_ON_MODBUS + "poll_interval_s = 0.1\ntimeout_s = 0.2\n"
    found = problems_of(tmp_path, GRIPS_ON_GPIO + slow)
    assert found == [
        "sensors.inputs[2].poll_interval_s: one lost answer at poll_interval_s 0.1 s and "
        "timeout_s 0.2 s leaves the sensor without a reading for up to 0.60 s, longer than "
        "safety.sensor_timeout_s (0.5 s)"
    ]
    slow_gpio = GRIPS_ON_GPIO.replace("line = 17", "line = 17\npoll_interval_s = 0.1", 1)
    found = problems_of(tmp_path, slow_gpio + FALL_ON_MODBUS, safety="sensor_timeout_s = 0.2")
    assert found[0] == (
        "sensors.inputs[0].poll_interval_s: 0.1 s reads it fewer than 3 times per "
        "safety.sensor_timeout_s (0.2 s)"
    )


def test_two_inputs_of_one_role_need_names_of_their_own(tmp_path: Path) -> None:
    second_fall = FALL_ON_MODBUS.replace("address = 4", "address = 5")
    found = problems_of(tmp_path, GRIPS_ON_GPIO + FALL_ON_MODBUS + second_fall)
    assert found == [
        "sensors.inputs[3].name: 'fall' is already the name of sensors.inputs[2] "
        "(give one of them a name of its own)"
    ]
    named = second_fall.replace('role = "fall"', 'role = "fall"\nname = "fall_mat"')
    load_config(write(tmp_path, valid_config(extra=GRIPS_ON_GPIO + FALL_ON_MODBUS + named)))


def test_sr3_one_contact_cannot_be_two_sensors(tmp_path: Path) -> None:
    twice = GRIPS_ON_GPIO.replace('line = "GPIO27"', "line = 17")
    found = problems_of(tmp_path, twice + FALL_ON_MODBUS)
    assert found == [
        "sensors.inputs[1]: the same line 17 of /dev/gpiochip0 as sensors.inputs[0]: one "
        "contact cannot be two sensors"
    ]
    both_on_one_input = FALL_ON_MODBUS.replace('role = "fall"', 'role = "grip_left"').replace(
        'active = "low"', 'active = "high"'
    )
    right = GRIPS_ON_GPIO[GRIPS_ON_GPIO.index("[[sensors.inputs]]", 5) :]
    found = problems_of(
        tmp_path,
        both_on_one_input
        + right
        + FALL_ON_MODBUS.replace("address = 4", "address = 9")
        + both_on_one_input.replace('"grip_left"', '"grip_right"'),
    )
    assert any("the same discrete_input 4 of device 2 on tcp 10.0.0.9:502" in p for p in found)


def test_modbus_addresses_one_read_cannot_hold_are_refused(tmp_path: Path) -> None:
    far = FALL_ON_MODBUS.replace("address = 4", "address = 4000").replace(
        'role = "fall"', 'role = "fall"\nname = "fall_far"'
    )
    found = problems_of(tmp_path, GRIPS_ON_GPIO + FALL_ON_MODBUS + far)
    assert found == [
        "sensors.inputs: the discrete_inputs of tcp 10.0.0.9:502 device 2 span addresses "
        "4-4000, more than one read of 2000 can hold"
    ]


def test_sensors_cannot_share_the_drives_rs485_bus(tmp_path: Path) -> None:
    drive = (
        'kind = "modbus"\ntransport = "rtu"\nserial_port = "/dev/treadguard-rs485"\n'
        f"mph_per_hz = 0.05\nregister_map = '{REGISTER_MAP.as_posix()}'"
    )
    fall = FALL_ON_MODBUS.replace(
        'transport = "tcp"\nhost = "10.0.0.9"',
        'transport = "rtu"\nserial_port = "/dev/treadguard-rs485"',
    )
    found = problems_of(tmp_path, GRIPS_ON_GPIO + fall, drive=drive)
    assert len(found) == 1
    assert found[0].startswith(
        "sensors.inputs[2].serial_port: /dev/treadguard-rs485 is the drive's RS-485 bus"
    )


def test_modbus_input_without_its_address_names_the_field(tmp_path: Path) -> None:
    found = problems_of(tmp_path, GRIPS_ON_GPIO + FALL_ON_MODBUS.replace("address = 4\n", ""))
    assert any(p.startswith("sensors.inputs.2.modbus.address") for p in found), found


def test_a_sensor_name_that_is_no_topic_segment_is_refused(tmp_path: Path) -> None:
    mqtt = '\n[[sensors.inputs]]\nrole = "fall"\nkind = "mqtt"\nname = "fall/#"\n'
    found = problems_of(tmp_path, GRIPS_ON_GPIO + mqtt)
    assert any(p.startswith("sensors.inputs.2.mqtt.name") for p in found), found
