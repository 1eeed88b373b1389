"""A simulated user on the belt, seen through MQTT sensors: the grip and fall sensors of
docs/tablet-contract.md (``<prefix>/sensors/grip_left``, ``grip_right``, ``fall``), reporting
``{"value": bool, "ts": unix s}`` every ``report_interval_s``, the way a wireless grip sensor or
a camera-based fall detector would.

What the user does is told over MQTT too, on ``<prefix>/simulator/user``, one instruction a
message (``release both``, ``grip left``, ``fall``, ``get-up``, ``silent fall``, ``report fall``),
so that a technician in another terminal, a demo script or a test can act for the user:
``treadguard sim-user --tell "release both"``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiomqtt

SENSORS = ("grip_left", "grip_right", "fall")
HANDS = {"left": ("grip_left",), "right": ("grip_right",), "both": ("grip_left", "grip_right")}
INSTRUCTIONS = (
    "release left|right|both",
    "grip left|right|both",
    "fall",
    "get-up",
    "silent grip_left|grip_right|fall",
    "report grip_left|grip_right|fall",
)


class InstructionError(ValueError):
    pass


@dataclass
class SimulatedUser:
    """What the sensors sense: both hands on the handrails, on their feet, every sensor live."""

    values: dict[str, bool] = field(
        default_factory=lambda: {"grip_left": True, "grip_right": True, "fall": False}
    )
    silent: set[str] = field(default_factory=set)

    def apply(self, instruction: str) -> str:
        """Carry out one instruction; return what happened, in words. Raises InstructionError."""
        words = instruction.split()
        match words:
            case ["release" | "grip" as verb, hand] if hand in HANDS:
                for sensor in HANDS[hand]:
                    self.values[sensor] = verb == "grip"
                return f"user {'takes hold with' if verb == 'grip' else 'lets go with'} {hand}"
            case ["fall"]:
                self.values["fall"] = True
                return "user falls"
            case ["get-up"]:
                self.values["fall"] = False
                return "user is back on their feet"
            case ["silent", sensor] if sensor in SENSORS:
                self.silent.add(sensor)
                return f"sensor {sensor} goes silent"
            case ["report", sensor] if sensor in SENSORS:
                self.silent.discard(sensor)
                return f"sensor {sensor} reports again"
        raise InstructionError(
            f"unknown instruction {instruction!r}; known: {'; '.join(INSTRUCTIONS)}"
        )

    def readings(self, now: float) -> list[tuple[str, bytes]]:
        return [
            (name, json.dumps({"value": value, "ts": now}).encode())
            for name, value in self.values.items()
            if name not in self.silent
        ]


def instruction_topic(prefix: str) -> str:
    return f"{prefix}/simulator/user"


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def client(self, **kwargs: object) -> aiomqtt.Client:
        return aiomqtt.Client(
            self.host,
            self.port,
            username=self.username,
            password=self.password,
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
            **kwargs,  # type: ignore[arg-type]
        )


async def serve_user(
    broker: Broker,
    prefix: str,
    *,
    report_interval_s: float,
    stop: asyncio.Event,
    echo: Callable[[str], None] = print,
    user: SimulatedUser | None = None,
) -> None:
    """Publish the user's sensor readings until ``stop`` is set (then cancel the task too);
    reconnect when the broker goes. The flag is what ends the loops: on Python 3.11 a
    cancellation that lands as an aiomqtt call completes can be swallowed by its wait_for."""
    user = user if user is not None else SimulatedUser()
    lost = False
    while not stop.is_set():
        try:
            async with broker.client() as client:
                if lost:
                    echo("simulated user: broker back")
                lost = False
                await client.subscribe(instruction_topic(prefix), qos=1)
                # In a task of its own, and the reconnect period below without asyncio.timeout:
                # on Python 3.11 a failed group leaves its task's cancellation count raised, and
                # on 3.11.0-3.11.2 a later asyncio.timeout in that task then ends it cancelled.
                await asyncio.create_task(
                    _connection(client, prefix, user, report_interval_s, stop, echo)
                )
        except* _Stopped:
            pass  # the loop's condition ends it
        except* aiomqtt.MqttError:
            if not lost:
                echo("simulated user: broker lost, reconnecting")
            lost = True
        waiter = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({waiter}, timeout=0.5)  # the reconnect period
        finally:
            waiter.cancel()


async def _connection(
    client: aiomqtt.Client,
    prefix: str,
    user: SimulatedUser,
    report_interval_s: float,
    stop: asyncio.Event,
    echo: Callable[[str], None],
) -> None:
    async with asyncio.TaskGroup() as tg:
        tg.create_task(_report(client, prefix, user, report_interval_s, stop))
        tg.create_task(_listen(client, user, echo))
        tg.create_task(_until_set(stop))


class _Stopped(Exception):
    """Ends the connection's task group once ``stop`` is set, whatever was cancelled."""


async def _until_set(stop: asyncio.Event) -> None:
    await stop.wait()
    raise _Stopped


async def _report(
    client: aiomqtt.Client,
    prefix: str,
    user: SimulatedUser,
    interval_s: float,
    stop: asyncio.Event,
) -> None:
    loop = asyncio.get_running_loop()
    next_t = loop.time()
    while not stop.is_set():
        for name, payload in user.readings(time.time()):
            await client.publish(f"{prefix}/sensors/{name}", payload, qos=0)
        next_t += interval_s
        await asyncio.sleep(max(0.0, next_t - loop.time()))


async def _listen(client: aiomqtt.Client, user: SimulatedUser, echo: Callable[[str], None]) -> None:
    async for message in client.messages:
        raw = message.payload
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            echo(f"simulated user: {user.apply(text.strip())}")
        except InstructionError as exc:
            echo(f"simulated user: {exc}")


async def tell_user(broker: Broker, prefix: str, instruction: str) -> None:
    """Send one instruction to a running simulated user (checked here first)."""
    SimulatedUser().apply(instruction)  # raises InstructionError for a bad one
    async with broker.client() as client:
        await client.publish(instruction_topic(prefix), instruction.encode(), qos=1)
