"""The safety inputs: every configured grip and fall input, filtered, combined per role and
handed to the controller.

Wired inputs (GPIO lines, Modbus discrete inputs and coils) report electrical levels; each goes
through its own :class:`drivers.input_filter.LevelFilter` (polarity, debounce: the unsafe
reading counts at once). MQTT inputs report readings already. Several inputs of one role
(a floor mat and a camera both watching for a fall) are combined failing closed: a grip is
held only while every input of that hand says so, a fall is signalled when any fall input
says so, and the combined reading carries the time of its oldest part, so one input that stops
answering makes the whole role stale in the safety core (SR-8) however busy the others are.
Until every input of a role has answered once, the role has no reading at all: unsafe.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from config.schema import (
    GpioInputSection,
    ModbusInputSection,
    MqttInputSection,
    SensorInput,
    input_name,
)
from config.sensor_checks import same_device
from drivers.gpio_inputs import GpioChipInputs, GpioLine
from drivers.input_filter import LevelFilter, Sample
from drivers.modbus_inputs import ModbusInputPoller, ModbusLink, ModbusPoint
from safety.inputs import FallReading, GripReading, Hand, Sensor

Submit = Callable[[GripReading | FallReading], object]
# Samples further apart than this many poll intervals (an outage, a reconnect) restart a wired
# input's debounce: the level was not watched in between.
GAP_POLLS = 3


class SensorHub:
    def __init__(self, inputs: Sequence[SensorInput], submit: Submit) -> None:
        self._submit = submit
        self._inputs = {input_name(entry): entry for entry in inputs}
        self._by_role: dict[Sensor, list[str]] = defaultdict(list)
        self._filters: dict[str, LevelFilter] = {}
        for name, entry in self._inputs.items():
            self._by_role[entry.role].append(name)
            if not isinstance(entry, MqttInputSection):
                self._filters[name] = LevelFilter(
                    active_high=entry.active == "high",
                    asserted_is_safe=entry.role is not Sensor.FALL,
                    debounce_s=entry.debounce_ms / 1000.0,
                    max_gap_s=GAP_POLLS * entry.poll_interval_s,
                )
        self._latest: dict[str, tuple[float, bool]] = {}
        # Each reader with the names of the inputs it reads (filled by build_sources).
        self._source_names: list[tuple[GpioChipInputs | ModbusInputPoller, list[str]]] = []

    @property
    def mqtt_names(self) -> list[str]:
        """The sensor topics to subscribe to (``<prefix>/sensors/<name>``)."""
        return [n for n, e in self._inputs.items() if isinstance(e, MqttInputSection)]

    def is_mqtt(self, name: str) -> bool:
        """Whether ``name`` is an MQTT input: a topic never stands in for a wired input."""
        return isinstance(self._inputs.get(name), MqttInputSection)

    def describe(self) -> str:
        return ", ".join(f"{name} ({entry.kind})" for name, entry in self._inputs.items())

    def level(self, name: str, t: float, high: bool) -> None:
        """A wired input's electrical level, read at ``t``."""
        self.reading(name, t, self._filters[name].update(Sample(t, high)))

    def reading(self, name: str, t: float, asserted: bool) -> None:
        """An input's reading at ``t``: True for a grip held, or a fall signalled."""
        role = self._inputs[name].role
        previous = self._latest.get(name)
        if previous is not None and t < previous[0]:
            # Older than what this input already said (a message overtaken on the network, a
            # sensor's clock stepped back): it would drag the role's time back, and the core
            # ignores a reading older than its last, so a fresh "fallen" from another input of
            # the role would be lost with it. Dropped; the input's newer reading stands.
            return
        self._latest[name] = (t, asserted)
        names = self._by_role[role]
        parts = [self._latest.get(n) for n in names]
        if any(p is None for p in parts):
            return  # an input of this role has never answered: no reading, unsafe
        present = [p for p in parts if p is not None]
        oldest = min(p[0] for p in present)
        if role is Sensor.FALL:
            self._submit(FallReading(t=oldest, fallen=any(p[1] for p in present)))
        else:
            hand = Hand.LEFT if role is Sensor.GRIP_LEFT else Hand.RIGHT
            self._submit(GripReading(t=oldest, hand=hand, held=all(p[1] for p in present)))

    def problems(self) -> dict[str, str]:
        """Per wired input that cannot be read now, why (for the state and the logs)."""
        out: dict[str, str] = {}
        for source, names in self._source_names:
            if source.problem is not None:
                for name in names:
                    out[name] = source.problem
        return out

    def build_sources(self, clock: Callable[[], float]) -> list[Coroutine[Any, Any, None]]:
        """One reader per GPIO chip and per Modbus link (a bus, or a TCP host and port); their
        ``run()`` coroutines."""
        self._source_names.clear()
        chips: dict[str, list[tuple[str, GpioInputSection]]] = defaultdict(list)
        links: dict[ModbusLink, list[tuple[str, ModbusInputSection]]] = defaultdict(list)
        for name, entry in self._inputs.items():
            if isinstance(entry, GpioInputSection):
                chips[entry.chip].append((name, entry))
            elif isinstance(entry, ModbusInputSection):
                links[modbus_link(entry)].append((name, entry))
        for chip, members in chips.items():
            names = [n for n, _ in members]
            gpio = GpioChipInputs(
                chip,
                [GpioLine(line=e.line, bias=e.bias) for _, e in members],
                self._level_callback(names),
                poll_interval_s=min(e.poll_interval_s for _, e in members),
                clock=clock,
            )
            self._source_names.append((gpio, names))
        for link, modbus_members in links.items():
            names = [n for n, _ in modbus_members]
            poller = ModbusInputPoller(
                link,
                [
                    ModbusPoint(device_id=e.device_id, table=e.table, address=e.address)
                    for _, e in modbus_members
                ],
                self._level_callback(names),
                poll_interval_s=min(e.poll_interval_s for _, e in modbus_members),
                timeout_s=min(e.timeout_s for _, e in modbus_members),
                clock=clock,
            )
            self._source_names.append((poller, names))
        return [source.run() for source, _ in self._source_names]

    def _level_callback(self, names: list[str]) -> Callable[[int, float, bool], None]:
        def on_level(index: int, t: float, high: bool) -> None:
            self.level(names[index], t, high)

        return on_level


def modbus_link(entry: ModbusInputSection) -> ModbusLink:
    """The link an input is read over; inputs on the same link (the devices of one RS-485 bus,
    or of one TCP host and port) share one client."""
    if entry.transport == "tcp":
        return ModbusLink("tcp", host=entry.host, tcp_port=entry.tcp_port)
    assert entry.serial_port is not None  # check-config requires it
    return ModbusLink(
        "rtu",
        serial_port=same_device(entry.serial_port),
        baud=entry.baud,
        parity=entry.parity,
    )
