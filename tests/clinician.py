"""A tablet and a user's sensors for tests of the real daemon: what a clinician's tablet and
a wireless grip sensor do, over a test's private Mosquitto (docs/tablet-contract.md)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt

from tests.mosquitto import (
    WAIT_S,
    Listening,
    Login,
    Tablet,
    body,
    login,
    tablet,
    text_is,
    untimed,
)
from tests.periodic import pause, periodic, periodic_elsewhere

# The entries of the record: the daemon refuses them without a stamp (docs/tablet-contract.md).
RECORD_ENTRIES = ("outcome_before", "outcome_after", "confirm_first_session", "record_measure")
SESSION_WAIT_S = 15.0  # a countdown (3 s) plus a ramp to 0.8 mph at 0.2 mph/s (4 s), and some
STANDSTILL_MPH = 0.05  # what counts as standing still (safety/limits.py)


# A start from history refused while the user's proposal is being worked out (docs/plan.md).
WORKED_OUT = "is being worked out from their record"


def ready_to_start(state: dict[str, Any]) -> bool:
    """What the tablet shows before a start can be accepted: every sensor heard, and the drive
    answering (its belt speed known)."""
    return state["stale"] == [] and state["speed_mph"] is not None


class Clinician:
    """A tablet: commands by id, heartbeats while a session runs, and what it has seen."""

    def __init__(self, tab: Tablet, prefix: str) -> None:
        self.tab = tab
        self.p = prefix
        self.latest: dict[str, Any] | None = None
        # Replies read while waiting for another command's: the daemon's outbox sends a stop's
        # or an E-STOP's reply ahead of replies still waiting (docs/daemon.md), so replies
        # come in any order.
        self._unclaimed: list[tuple[dict[str, Any], set[str | None]]] = []

    async def command(self, type_: str, **fields: Any) -> dict[str, Any]:
        """``type_`` with ``fields``, and its reply. An entry of the record is stamped (the
        daemon requires it), in the daemon's clock: on this machine, the wall clock."""
        command_id = uuid.uuid4().hex
        if type_ in RECORD_ENTRIES:
            fields.setdefault("ts", time.time())
        await self.raw(json.dumps({"id": command_id, "type": type_, **fields}).encode())
        return await self.reply_to(command_id)

    async def raw(self, payload: bytes, *, retain: bool = False) -> None:
        await self.tab.publish(f"{self.p}/cmd", payload, retain=retain)

    async def timed_estop(self, within: float = 60.0) -> float:
        """An E-STOP sent as it is, and the seconds until the daemon's ``ok`` answer to it."""
        sent = time.monotonic()
        command_id = uuid.uuid4().hex
        await self.raw(json.dumps({"id": command_id, "type": "estop"}).encode())
        message = await self.tab.next(
            f"{self.p}/reply", lambda m: answers(body(m), command_id), within=within
        )
        took = time.monotonic() - sent
        assert body(message)["ok"] is True, body(message)
        return took

    async def reply_to(self, command_id: str | None) -> dict[str, Any]:
        """The reply to this command, whenever it came: replies read while waiting for another
        command's are kept for theirs (a coalesced refusal answers each of its ``ids``)."""
        async with asyncio.timeout(WAIT_S):
            while True:
                for kept in self._unclaimed:
                    reply, unanswered = kept
                    if command_id in unanswered:
                        unanswered.discard(command_id)
                        if not unanswered:
                            self._unclaimed.remove(kept)
                        return reply
                reply = body(await self.tab.next(f"{self.p}/reply"))
                assert isinstance(reply, dict), reply
                ids = reply.get("ids")
                self._unclaimed.append(
                    (reply, {reply.get("id"), *(ids if isinstance(ids, list) else ())})
                )

    async def state(self, where: Callable[[dict[str, Any]], bool], within: float) -> dict[str, Any]:
        """The next state that satisfies ``where``, within ``within`` seconds."""
        async with asyncio.timeout(within):
            while True:
                state = body(await self.tab.next(f"{self.p}/state"))
                assert isinstance(state, dict)
                self.latest = state
                if where(state):
                    return state

    async def until(self, where: Callable[[dict[str, Any]], bool], within: float) -> dict[str, Any]:
        """The newest state seen, if it satisfies ``where`` (a state is only published when
        it changes); else the next one that does."""
        if self.latest is not None and where(self.latest):
            return self.latest
        return await self.state(where, within)

    async def event(self, type_: str) -> dict[str, Any]:
        event = body(await self.tab.next(f"{self.p}/events", lambda m: body(m)["type"] == type_))
        assert isinstance(event, dict)
        return event

    async def start_running(self, user: str, program: str | None = None) -> dict[str, Any]:
        """Start a session (accepted) and wait until the belt runs at its first speed. A start
        from history (no program) is pressed again, as a clinician does, while the daemon says
        the user's proposal is being worked out (a moment after their record changed).

        Pressed once the tablet shows the sensors heard and the belt's speed (the drive
        answering): a daemon just started says "idle" before its drive's first answer, and a
        start then is refused, rightly ("drive is not answering")."""
        await self.until(ready_to_start, within=SESSION_WAIT_S)
        fields = {} if program is None else {"program": program}
        for _ in range(100):
            reply = await self.command("start_session", user=user, **fields)
            if reply["ok"] or program is not None or WORKED_OUT not in str(reply.get("error")):
                break
            await asyncio.sleep(0.1)  # the retry period of a clinician's button
        ok(reply)
        return await self.state(running, within=SESSION_WAIT_S)

    async def reset_when_allowed(self) -> None:
        """Press Reset until it is accepted: it is refused until standstill is confirmed."""
        async with asyncio.timeout(5.0):
            for _ in range(50):
                if (await self.command("reset"))["ok"]:
                    return
                await asyncio.sleep(0.1)  # the retry period of a clinician's button
        raise AssertionError("reset never accepted")

    async def heartbeats(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.raw(json.dumps({"id": uuid.uuid4().hex, "type": "heartbeat"}).encode())
            await pause(stop, 1.0)  # the tablet's heartbeat period, not a synchronisation


@asynccontextmanager
async def clinician(
    broker: Listening,
    tm: str,
    *,
    heartbeat: bool = True,
    account: str | None = None,
    credentials: Login | None = None,
) -> AsyncIterator[Clinician]:
    """``account``: one of the test accounts (tests/mosquitto.py); ``credentials``: any other
    (a broker whose passwords the test did not choose)."""
    p = f"treadmill/{tm}"
    topics = (f"{p}/reply", f"{p}/state", f"{p}/events", f"{p}/availability")
    who = credentials if credentials is not None else login(account) if account else Login()
    async with tablet(broker, *topics, **who) as tab:
        await tab.next(f"{p}/availability", text_is("online"))
        doc = Clinician(tab, p)
        if not heartbeat:
            yield doc
            return
        async with periodic(doc.heartbeats):
            yield doc


class SensorUser:
    """The grip and fall sensors of docs/tablet-contract.md, reporting every 100 ms what the user
    does (``values``), on a thread of their own (tests/periodic.py)."""

    def __init__(
        self,
        broker: Listening,
        tm: str,
        account: str | None = None,
        credentials: Login | None = None,
    ) -> None:
        self.broker = broker
        self.login = (
            credentials if credentials is not None else login(account) if account else Login()
        )
        self.p = f"treadmill/{tm}"
        self.values = {"grip_left": True, "grip_right": True, "fall": False}

    async def run(self, stop: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", self.broker.port, **self.login) as client:
            while not stop.is_set():
                for name, value in self.values.items():
                    await self.publish(client, name, value)
                await pause(stop, 0.1)  # the sensors' report period, not a synchronisation

    async def publish(self, client: aiomqtt.Client, name: str, value: bool) -> None:
        payload = json.dumps({"value": value, "ts": time.time()}).encode()
        await client.publish(f"{self.p}/sensors/{name}", payload, qos=0)


@asynccontextmanager
async def sensor_user(
    broker: Listening, tm: str, account: str | None = None, credentials: Login | None = None
) -> AsyncIterator[SensorUser]:
    user = SensorUser(broker, tm, account, credentials)
    async with periodic_elsewhere(user.run, f"sensors-{tm}"):
        yield user


def running(state: dict[str, Any]) -> bool:
    return bool(state["state"] == "running" and state["speed_mph"] >= 0.75)


def ok(reply: dict[str, Any]) -> None:
    assert reply["ok"] is True, reply
    assert untimed(reply) == {"id": reply["id"], "ok": True}


def refused(reply: dict[str, Any], code: str) -> str:
    assert reply["ok"] is False, reply
    assert reply["error"]["code"] == code, reply
    message = reply["error"]["message"]
    assert isinstance(message, str)
    assert message
    return message


def answers(reply: object, command_id: str | None) -> bool:
    """Whether a reply answers this command: by its id, or among the ``ids`` of coalesced
    ``rate_limited`` refusals (docs/daemon.md, publishing limits)."""
    if not isinstance(reply, dict):
        return False
    ids = reply.get("ids")
    return reply.get("id") == command_id or (isinstance(ids, list) and command_id in ids)
