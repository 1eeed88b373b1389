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

MQTT inputs carry the sensor's own stamp: :class:`safety.stamps.SensorClock` turns it and the
arrival on the monotonic clock into the reading's time, or no reading (SR-8, SR-16), and
:class:`safety.flips.FlipGuard` makes an input whose readings change faster than a hand can
(two sources on one topic) unsafe until it is steady again. Wired inputs are stamped with the
monotonic clock when they are read, so their stamp is their arrival.

An input's reading older than its last is dropped only when it is safe: an unsafe one (a fall,
a release) is never thrown away for arriving out of order (SR-8).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from treadguard.config.schema import (
    GpioInputSection,
    ModbusInputSection,
    MqttInputSection,
    SensorInput,
    input_name,
)
from treadguard.config.sensor_checks import same_device
from treadguard.drivers.gpio_inputs import GpioChipInputs, GpioLine
from treadguard.drivers.input_filter import LevelFilter, Sample
from treadguard.drivers.modbus_inputs import ModbusInputPoller, ModbusLink, ModbusPoint
from treadguard.safety.flips import FlipGuard
from treadguard.safety.inputs import FallReading, GripReading, Hand, Sensor
from treadguard.safety.stamps import SensorClock

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
        self._clocks = {n: SensorClock() for n in self.mqtt_names}
        self._guards = {n: FlipGuard() for n in self.mqtt_names}
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

    def stamped(self, name: str, stamp: float, arrival: float, asserted: bool) -> str | None:
        """An MQTT input's reading, stamped ``stamp`` by the sensor's clock, arrived at
        ``arrival`` (the monotonic clock). Returns why it is no reading, or None."""
        t = self._clocks[name].reading_time(stamp, arrival)
        if t is None:
            return f"stamp {stamp!r} is not finite or runs ahead of the sensor's previous one"
        self.reading(name, t, asserted, arrival=arrival)
        return None

    def reading(self, name: str, t: float, asserted: bool, *, arrival: float | None = None) -> None:
        """An input's reading at ``t``: True for a grip held, or a fall signalled."""
        role = self._inputs[name].role
        unsafe_value = role is Sensor.FALL  # "fallen", or a grip not held
        guard = self._guards.get(name)
        if guard is not None and guard.update(t if arrival is None else arrival, asserted):
            asserted = unsafe_value  # two sources disagree: the sensor is unsafe
        unsafe = asserted == unsafe_value
        previous = self._latest.get(name)
        counts_from = t
        if previous is not None and t < previous[0]:
            # Older than what this input already said (a message overtaken on the network, a
            # sensor's clock stepped back). A safe reading is superseded by the newer one and
            # dropped. An unsafe one is never thrown away (SR-8): it keeps the input's newer
            # time for freshness, and goes to the core with its own time.
            if not unsafe:
                return
            t = previous[0]
        self._latest[name] = (t, asserted)
        names = self._by_role[role]
        parts = [self._latest.get(n) for n in names]
        if any(p is None for p in parts):
            return  # an input of this role has never answered: no reading, unsafe
        present = [p for p in parts if p is not None]
        oldest = min(counts_from, min(p[0] for p in present))
        if role is Sensor.FALL:
            self._submit(FallReading(t=oldest, fallen=any(p[1] for p in present)))
        else:
            hand = Hand.LEFT if role is Sensor.GRIP_LEFT else Hand.RIGHT
            self._submit(GripReading(t=oldest, hand=hand, held=all(p[1] for p in present)))

    def problems(self) -> dict[str, str]:
        """Per input that cannot be read now (a wired one), or whose readings disagree (an
        MQTT one), why: for the state and the logs."""
        out: dict[str, str] = {}
        for source, names in self._source_names:
            if source.problem is not None:
                for name in names:
                    out[name] = source.problem
        for name, guard in self._guards.items():
            if guard.disagreeing:
                out[name] = guard.describe()
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
