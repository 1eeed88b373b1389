"""SR-15 against the real daemon: random payloads on ``<p>/cmd`` (raw bytes, random JSON, and
commands that are almost right, every field drawn from all of Unicode, lone surrogates and
control characters included) are each answered, never with ``internal_error``, the daemon
stays alive and connected (it never says "online" again), and the belt's state never changes.

``TREADGUARD_FUZZ_EXAMPLES`` sets the number of examples (2,000 by default, as in CI);
``benchmarks/bench_mqtt_fuzz.py`` runs 10,000 and reports the time.

The daemon's sensors are MQTT sources that never report, so no start can be accepted (SR-3,
SR-8): the only commands that could change the state would be an ``estop`` (carried out
however the rest of it is formed, SR-12), which the strategies leave out, and a
``start_session``, which must be refused.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from tests.daemon_process import DaemonProcess, daemon_config
from tests.mosquitto import WAIT_S, Broker, have_mosquitto, untimed
from treadguard.safety.inputs import CommandType

EXAMPLES = int(os.environ.get("TREADGUARD_FUZZ_EXAMPLES", "2000"))
TM = "tm-fuzz"
P = f"treadmill/{TM}"
# Every command the contract names (a command it gains is fuzzed without a change here).
COMMAND_TYPES = [kind.value for kind in CommandType]


@dataclass
class Rig:
    daemon: DaemonProcess
    client: mqtt.Client
    replies: queue.Queue[dict[str, Any]]
    states: queue.Queue[dict[str, Any]]
    first_state: dict[str, Any]
    availability: queue.Queue[bytes]


def _connect(port: int) -> tuple[mqtt.Client, queue.Queue[Any], queue.Queue[Any], queue.Queue[Any]]:
    replies: queue.Queue[dict[str, Any]] = queue.Queue()
    states: queue.Queue[dict[str, Any]] = queue.Queue()
    online: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        if message.topic == f"{P}/reply":
            replies.put(json.loads(message.payload))
        elif message.topic == f"{P}/state":
            states.put(json.loads(message.payload))
        elif message.topic == f"{P}/availability":
            online.put(bytes(message.payload))

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    sock = client.socket()
    assert isinstance(sock, socket.socket)  # connected, over TCP
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.loop_start()
    for topic in ("reply", "state", "availability"):
        client.subscribe(f"{P}/{topic}", qos=1)
    return client, replies, states, online


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed (scripts/test installs it)")
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    broker = Broker(workdir)
    broker.start()
    # Each stopped whatever fails after it started, the broker last: one left running would
    # outlive the test run.
    try:
        daemon = DaemonProcess(
            daemon_config(workdir, broker.port, treadmill_id=TM, sensors="mqtt"),
            workdir / "d.log",
        )
        daemon.start()
        try:
            client, replies, states, online = _connect(broker.port)
            try:
                while online.get(timeout=WAIT_S) != b"online":
                    pass
                first = states.get(timeout=WAIT_S)
                yield Rig(daemon, client, replies, states, first, online)
            finally:
                client.loop_stop()
                client.disconnect()
        finally:
            daemon.stop()
    finally:
        broker.kill()


def _any_text(min_size: int = 0, max_size: int = 20) -> st.SearchStrategy[str]:
    """All of Unicode: lone surrogates (valid in JSON as escapes), control characters,
    unassigned and private-use code points included."""
    # Surrogates and control characters are a sliver of Unicode: drawn on their own too, so
    # that they are common rather than rare. (Joined from a list: st.text merges a union of
    # character strategies into one that leaves surrogates out.)
    char = st.characters(exclude_categories=()) | st.characters(categories=["Cs", "Cc"])
    return st.lists(char, min_size=min_size, max_size=max_size).map("".join)


def _json_values() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | st.integers() | st.floats() | _any_text()
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_any_text(max_size=8), inner),
        max_leaves=12,
    )


def _numbers() -> st.SearchStrategy[Any]:
    return st.floats() | st.integers() | st.sampled_from([0.8, 1.0, 1.2, 180.0, 1e308, -0.0])


def _almost_commands() -> st.SearchStrategy[dict[str, Any]]:
    """Commands of the right shape with a field or two wrong, missing or extra."""
    return st.fixed_dictionaries(
        {
            "id": st.one_of(
                _any_text(min_size=1, max_size=64),
                _any_text(min_size=65, max_size=80),
                st.integers(),
            ),
            "type": st.sampled_from(COMMAND_TYPES) | _any_text(max_size=12),
        },
        optional={
            "user": _any_text(max_size=70) | _json_values(),
            "program": st.sampled_from(["first_session", "reverse_walking", "nope"])
            | _any_text()
            | _json_values(),
            "mph": _numbers() | _json_values(),
            "cap_s": _numbers() | _json_values(),
            "target_mph": _numbers() | _json_values(),
            "step": st.sampled_from(["estop", "grip_left", "cap"]) | _any_text() | _json_values(),
            "ask": st.sampled_from(["give_estop", "stand_on"]) | _any_text() | _json_values(),
            "ts": _numbers() | _json_values(),
            "extra": _json_values(),
        },
    )


def _well_formed_commands() -> st.SearchStrategy[dict[str, Any]]:
    """Commands the contract's shape accepts, each field drawn from its whole space: they reach
    the daemon's handlers (the journal, the core), not only the parser."""
    command_id = _any_text(min_size=1, max_size=64)
    stamp = st.none() | st.floats(min_value=0.0, max_value=1e11)
    start = st.fixed_dictionaries(
        {"id": command_id, "type": st.just("start_session"), "user": _any_text(max_size=70)},
        optional={
            "program": _any_text() | st.sampled_from(["first_session", "reverse_walking"]),
            "cap_s": _numbers(),
            "target_mph": _numbers(),
            "ts": stamp,
        },
    )
    speed = st.fixed_dictionaries(
        {"id": command_id, "type": st.just("set_speed"), "mph": _numbers()},
        optional={"ts": stamp},
    )
    other = st.fixed_dictionaries(
        {
            "id": command_id,
            # commission_abort outside a commissioning run is refused, the belt untouched.
            "type": st.sampled_from(["stop", "reset", "heartbeat", "commission_abort"]),
        },
        optional={"ts": stamp},
    )
    # No commissioning run is on: every confirmation is refused, whatever it names.
    confirm = st.fixed_dictionaries(
        {
            "id": command_id,
            "type": st.just("commission_confirm"),
            "step": _any_text(min_size=1, max_size=64),
            "ask": _any_text(min_size=1, max_size=64),
        },
        optional={"ts": stamp},
    )
    return (start | speed | other | confirm).map(
        lambda o: {k: v for k, v in o.items() if v is not None or k != "ts"}
    )


def _is_valid_estop(obj: Any) -> bool:
    """An estop the daemon carries out: any JSON object whose ``type`` is "estop", however the
    rest of it is formed (SR-12; an estop while idle latches, which would change the state)."""
    return isinstance(obj, dict) and obj.get("type") == "estop"


def _payloads() -> st.SearchStrategy[bytes]:
    as_json = (_json_values() | _almost_commands() | _well_formed_commands()).filter(
        lambda o: not _is_valid_estop(o)
    )
    return st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=4090, max_size=4200),  # around the 4 KiB limit
        as_json.map(lambda o: json.dumps(o).encode()),
        _almost_commands()
        .filter(lambda o: not _is_valid_estop(o))
        .map(lambda o: json.dumps(o).replace('"', "'", 1).encode()),  # broken JSON
    )


def _unchanged(first: dict[str, Any], state: dict[str, Any]) -> None:
    for key in ("state", "target_mph", "session", "latched"):
        assert state[key] == first[key], (key, state)
    assert state["speed_mph"] == 0.0


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(payload=_payloads())
def test_sr15_random_payloads_are_answered_and_never_move_the_belt(
    rig: Rig, payload: bytes
) -> None:
    assert rig.first_state["state"] == "idle"
    rig.client.publish(f"{P}/cmd", payload, qos=1).wait_for_publish(WAIT_S)
    reply = rig.replies.get(timeout=WAIT_S)  # every payload gets exactly one reply
    assert set(untimed(reply)) <= {"id", "ok", "error"}
    if reply["ok"] is False:
        assert isinstance(reply["error"]["code"], str)
        assert isinstance(reply["error"]["message"], str)
        # internal_error is the daemon's own net: a payload that reaches it is a defect.
        assert reply["error"]["code"] != "internal_error", (payload, reply)
    # A probe after it: the daemon publishes the state it is in before each reply, on one
    # connection, in order; so once the probe's reply is here, any state the payload caused
    # is here too, and every state seen so far is checked.
    probe = uuid.uuid4().hex
    rig.client.publish(f"{P}/cmd", json.dumps({"id": probe, "type": "heartbeat"}), qos=1)
    assert untimed(rig.replies.get(timeout=WAIT_S)) == {"id": probe, "ok": True}
    while not rig.states.empty():
        _unchanged(rig.first_state, rig.states.get_nowait())
    assert rig.availability.empty(), "the daemon reconnected"  # "online" again, or "offline"
    assert rig.daemon.alive()
