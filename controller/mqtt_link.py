"""The tablet link: the MQTT contract v1 (``contract.mqtt``) on aiomqtt 2.x.

::

    hooks = LinkHooks(execute=system.execute, snapshot=core.snapshot, now=clock.time,
                      to_unix=unix_mapper(clock.time, wall))
    async with TabletLink.configured(loaded, hooks) as link:   # or TabletLink(id, broker, hooks)
        system.subscribe(link.on_event, name="mqtt")
        ...

A component with its own settings: the broker (``BrokerSettings``: where, who, TLS), the hooks
(``LinkHooks``: what it calls on the daemon's side) and the tuning (``LinkTuning``), each a
value; ``configured`` builds all three from a configuration.

What it does, per connection (a fresh ``aiomqtt.Client`` every try, so a lost connection never
leaves a dead client behind - Moonraker bug #1104):

- connects with MQTT 5, ``TCP_NODELAY``, a Will ``<p>/availability`` = ``offline`` (QoS 1,
  retained) and a clean start (a command queued while the daemon was away is never run later);
- subscribes to ``<p>/cmd`` at QoS 1 with "retain as published", so that a retained command is
  recognised and refused, then publishes ``online`` (retained) - after every (re)connect;
- runs each command through ``execute`` at once, inside the MQTT client's read callback (an
  ``estop`` reaches the controller behind no queue and no publication), and queues the reply;
- one outbox publishes events, then replies, in order (QoS 1, not retained), each batch preceded
  by the state (QoS 1, retained) when it changed or, while the belt moves, every
  ``state_period_s``: a reply never overtakes the state its command caused. Up to
  ``max_inflight`` publications are on the wire at once (no wait for each PUBACK in turn);
- hands each reading of a configured ``<p>/sensors/<name>`` topic to ``on_sensor`` at once
  (a retained reading is an old one replayed by the broker, and is dropped).

Nothing the controller calls ever waits on the broker: :meth:`TabletLink.on_event` only appends
to a bounded outbox, and the state is read from ``snapshot`` by the outbox when it is due (only
the newest state exists, so there is no state queue at all).

The outbox (SR-14, SR-15). An event or a reply leaves it only when the broker has acknowledged
it (its PUBACK, matched by message id in paho's callback, as it is read). What a lost connection
interrupted goes out again after the reconnect, oldest first; what was acknowledged never does.
Events raised while the broker is away wait in the outbox, at most ``buffer`` of them: past
that a new event is dropped, except an ``estop`` or ``fault``, which takes the place of the
oldest other event; each drop is counted (``events_dropped`` in the state) and logged. Replies:
a reply to ``stop`` or ``estop`` is never dropped. Any other command that arrives while
``buffer`` replies wait in the outbox is not run but refused ``rate_limited``; refusals waiting
together go out coalesced, up to 100 in one reply (its ``"ids"`` lists the commands it answers),
so they cost the outbox almost nothing. At most ``64 * buffer`` refusals wait (only a broker
that stops acknowledging gets there); past that they are dropped, counted and logged.

The link reconnects until it is stopped, with exponential backoff capped at ``backoff_max_s``.
Leaving the ``async with`` block (or cancelling the task that holds it) publishes ``offline``
explicitly before disconnecting, because a clean DISCONNECT discards the Will.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
import socket
import ssl
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Self

import aiomqtt
import structlog
from paho.mqtt.client import MQTT_ERR_SUCCESS, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from treadguard.config.loading import LoadedConfig
from treadguard.contract.mqtt import (
    ID_MAX_CHARS,
    MAX_PAYLOAD_BYTES,
    CommandReply,
    DuplicateFilter,
    ErrorCode,
    Execute,
    JsonObject,
    Topics,
    ToUnix,
    answer_command,
    belt_moving,
    encode_event,
    encode_state,
    internal_error,
    readable_id,
    state_key,
    to_payload,
)
from treadguard.controller.aio import in_own_task, wait_until_set
from treadguard.controller.log_budget import LogBudget
from treadguard.controller.mqtt_settings import BrokerSettings, broker_settings
from treadguard.safety.core import Snapshot
from treadguard.safety.decisions import Event, EventType

ONLINE = b"online"
REFUSALS_LOGGED_PER_S = 20
RIVAL_LOG_EVERY_S = 10.0  # a second daemon is logged this often while it lasts
# A connection lost this soon after it was made, this many times within the window, is the
# daemon knocked off the broker again and again (see _connection_lost).
SHORT_CONNECTION_S = 2.0
SHORT_CONNECTIONS_MAX = 3
SHORT_CONNECTIONS_WINDOW_S = 10.0
OFFLINE = b"offline"

# Commands whose reply is never dropped nor refused for rate (docs/tablet-contract.md:
# rate_limited is never used for them), and events that are never dropped for a newer one.
NEVER_LIMITED = frozenset({"stop", "estop"})
NEVER_DROPPED = frozenset({EventType.ESTOP, EventType.FAULT})
REFUSALS_PER_BUFFER = 64  # rate_limited refusals kept, per entry of the reply buffer
REFUSALS_PER_REPLY = 100  # refusals coalesced into one <p>/reply message, at most
_RATE_LIMITED = "too many replies are waiting to go out: not run; send fewer commands"


@dataclass(slots=True)
class _Out:
    """One event or reply in the outbox: it leaves only when its PUBACK has been read.

    ``mid`` is its message id while it is on the wire on the current connection (None: not
    sent on this connection yet); ``acked``: the broker has it, it can go."""

    payload: bytes
    keep: bool = False  # an estop or fault event: never dropped for a newer one
    mid: int | None = None
    acked: bool = False
    # Coalesced rate_limited refusals: the ids they answer (the payload is built when sent).
    ids: list[str | None] | None = None
    # The journal's safety records written when it was queued: it goes out once a sync has
    # covered them (SR-14), its own event's record among them.
    records: int = 0


# The largest packet the broker may hand the daemon (MQTT 5's Maximum Packet Size, sent on
# CONNECT): a command is at most 4 KiB and the daemon's own state, which comes back to it, a
# few; a bigger message is dropped by the broker instead of being read. Without it one
# message of 50 MB from any account that may publish to the daemon (a tablet's command, a
# sensor's reading) held the control loop for half a second while it was read and parsed.
MAX_PACKET_BYTES = 256 * 1024
# The QoS 1 deliveries the broker may have on the wire to the command connection,
# unacknowledged (MQTT 5's Receive Maximum, sent on CONNECT; the most MQTT allows): up to it, a
# command is in flight, never in the broker's queue, where max_queued_messages would drop it
# (config/mosquitto/treadguard.conf). The daemon reads them as they come.
COMMAND_RECEIVE_MAXIMUM = 65535


def daemon_client(
    broker: BrokerSettings,
    identifier: str,
    tuning: LinkTuning,
    tls_context: ssl.SSLContext | None,
    *,
    will: aiomqtt.Will | None = None,
    receive_maximum: int | None = None,
    maximum_packet_size: int = MAX_PACKET_BYTES,
) -> aiomqtt.Client:
    """A fresh client for one of the daemon's connections (a new one every try): MQTT 5, the
    largest packet the broker may send it (MAX_PACKET_BYTES), a bounded incoming queue (the
    links route what they read inline, so nothing should enter it) and no Nagle delay."""
    properties = Properties(PacketTypes.CONNECT)
    properties.MaximumPacketSize = maximum_packet_size
    if receive_maximum is not None:
        properties.ReceiveMaximum = receive_maximum
    return aiomqtt.Client(
        broker.host,
        broker.port,
        username=broker.username,
        password=broker.password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        will=will,
        keepalive=tuning.keepalive_s,
        timeout=tuning.timeout_s,
        tls_context=tls_context,
        max_queued_incoming_messages=tuning.buffer,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        properties=properties,
    )


def _peek(payload: bytes) -> tuple[str | None, str | None]:
    """The id and type of a command, when readable; never raises (any bytes at all)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None, None
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested too deep
        return None, None
    if not isinstance(obj, dict):
        return None, None
    command_id, kind = obj.get("id"), obj.get("type")
    if not isinstance(command_id, str) or not 1 <= len(command_id) <= ID_MAX_CHARS:
        command_id = None
    return command_id, kind if isinstance(kind, str) else None


def unix_mapper(now: Callable[[], float], wall: Callable[[], float] = time.time) -> ToUnix:
    """Map times of the monotonic clock ``now`` to unix seconds, with the offset to the wall
    clock taken once, here (SR-16). The state's and events' ``ts`` and the check of a stamped
    command's age all use this one mapping, so a later step of the wall clock (NTP after
    boot), either way and of any size, changes neither what a tablet sees as the daemon's time
    nor which commands are accepted."""
    offset = wall() - now()
    return lambda t: t + offset


def _trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


class _Stopping(Exception):
    """Raised inside the connection's task group to end it when the link is stopped."""


@dataclass(frozen=True, slots=True)
class LinkHooks:
    """What the link calls on the daemon's side, all on the event loop's thread: see
    :class:`TabletLink` for each."""

    execute: Execute
    snapshot: Callable[[], Snapshot]
    now: Callable[[], float]
    to_unix: ToUnix
    on_sensor: Callable[[str, bytes], None] | None = None
    # Called before the state, a reply or an event goes out: the journal commits (SR-14).
    before_publish: Callable[[], None] | None = None
    # The journal's safety records written so far and how many are on disk: the state and
    # what is queued go out only once every record before them is (SR-14). None: no journal.
    journal_marks: Callable[[], tuple[int, float]] | None = None
    on_refused: Callable[[CommandReply, str | None], None] | None = None
    # Another controller for this treadmill on the broker, in words (SR-12): its state on
    # ours, or a client that took the daemon's MQTT session over.
    on_rival: Callable[[str], None] | None = None
    # The connection that carries the tablet's commands lost, in words: what the tablet sent
    # meanwhile reached nobody (SR-12).
    on_link_lost: Callable[[str], None] | None = None
    # Fields the contract allows beyond its own (an extension): merged into each state.
    extra_state: Callable[[], JsonObject] | None = None


@dataclass(frozen=True)
class LinkTuning:
    """How the link behaves on the wire. The ``[mqtt]`` section sets the first four (within
    the schema's bounds); the rest are the contract's and the outbox's own figures."""

    identifier: str | None = None  # the MQTT client id; None: treadguard-<treadmill id>
    keepalive_s: int = 5
    timeout_s: float = 5.0
    state_period_s: float = 0.25  # the state while the belt moves (the contract: <= 500 ms)
    backoff_max_s: float = 5.0
    backoff_min_s: float = 0.2
    poll_s: float = 0.05
    buffer: int = 256  # events, and replies other than to stop and estop, that may wait
    max_inflight: int = 64  # publications on the wire at once
    duplicate_memory: int = 1024  # command ids remembered, for the duplicate rule


DEFAULT_TUNING = LinkTuning()


class TabletLink:
    """The daemon's side of the tablet contract. Use as an async context manager.

    ``execute`` runs one command synchronously and returns the safety core's reply
    (``lambda cmd: controller.submit(cmd).reply``). ``snapshot`` returns the current state
    (``core.snapshot``). ``now`` is the core's monotonic clock, ``to_unix`` maps its times to
    unix seconds. All of them are called on the event loop's thread, as is :meth:`on_event`.
    """

    def __init__(
        self,
        treadmill_id: str,
        broker: BrokerSettings,
        hooks: LinkHooks,
        tuning: LinkTuning = DEFAULT_TUNING,
        *,
        sensors: Iterable[str] = (),
        logger: Any = None,
    ) -> None:
        t = tuning
        if not 0 < t.state_period_s <= 0.5:
            raise ValueError("state_period_s must be in (0, 0.5]: the contract asks for 500 ms")
        if not 0 < t.backoff_min_s <= t.backoff_max_s:
            raise ValueError("backoff_min_s must be positive and at most backoff_max_s")
        if t.buffer < 1 or t.max_inflight < 1:
            raise ValueError("buffer and max_inflight must be at least 1")
        self.treadmill_id = treadmill_id
        self.topics = Topics(broker.prefix)
        # The three settings, kept as they came (read where they are used).
        self._broker = broker
        self._hooks = hooks
        self._tuning = t
        # Built once, here: loading certificates blocks.
        self._tls_context = broker.tls.context() if broker.tls is not None else None
        # A fixed client id lets the broker drop a half-open older connection of ours at once
        # (session takeover) instead of firing its Will later, over our "online".
        self._identifier = (
            t.identifier if t.identifier is not None else f"treadguard-{treadmill_id}"
        )
        self._log = logger if logger is not None else structlog.get_logger("treadguard.mqtt")
        self._seen = DuplicateFilter(t.duplicate_memory)
        # <p>/sensors/<name> topic -> name, for the sensors configured as MQTT sources.
        self._sensor_topics = {self.topics.sensor(name): name for name in sensors}
        if self._sensor_topics and hooks.on_sensor is None:
            raise ValueError("sensor topics need an on_sensor callback")
        # This process's mark on its state (an extension of contract v1): a state on our topic
        # with another mark comes from another daemon for this treadmill.
        self.instance = uuid.uuid4().hex[:12]
        self._state_published = False
        self._rival_told = -1  # the connection a rival was last reported on
        self._connected_at: float | None = None  # when the connection now up was made
        self._short_connections: deque[float] = deque()  # when short ones were lost
        self._rival_logged_t = -math.inf
        # The outbox: what waits to be published or acknowledged, oldest first. The first
        # ``_sent[...]`` items of each are on the wire on the current connection.
        self._urgent: deque[_Out] = deque()  # replies to stop and estop: never dropped
        self._replies: deque[_Out] = deque()  # other replies, at most ``buffer`` (SR-15)
        self._refusals: deque[_Out] = deque()  # coalesced rate_limited refusals
        self._events: deque[_Out] = deque()
        # Published in this order: an estop event, then an estop's reply, go ahead of the rest.
        self._queues = (self._events, self._urgent, self._replies, self._refusals)
        self._sent = {id(queue): 0 for queue in self._queues}
        self._inflight: dict[int, tuple[deque[_Out], _Out]] = {}  # mid -> its item
        self._paho: Any = None  # the current connection's paho client
        self._wake = asyncio.Event()
        self._look = True  # the outbox must look at the state (and commit the journal) first
        self._boot = secrets.token_hex(4)  # this link's run: event ids never repeat
        self._event_seq = 0
        self._next_look = -math.inf
        self._moving = False
        # A state waiting for a sync to cover the records it shows, and their count; and the
        # record count of the last state looked at and sent (or found unchanged).
        self._held_state: tuple[tuple[JsonObject, str, bool], int] | None = None
        self._state_records: float = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected = False
        self.last_error = ""  # why the last connection ended, or the last try failed
        self._last_state_sent = -math.inf
        self.connections = 0  # successful connections so far
        self.worker_restarts = 0  # connection workers that ended without a stop (logged)
        self.dropped_events = 0  # events the outbox had no room for (state: events_dropped)
        self.dropped_replies = 0  # rate_limited refusals it had no room for
        self.rate_limited = 0  # commands refused rate_limited, not run
        self._refused_waiting = 0  # of which: in the outbox
        self.published = 0  # events and replies acknowledged by the broker
        self._failures: dict[str, int] = {}  # unexpected exceptions in handlers, per kind
        # What a flood may put in the log: a few lines a second, then their number, told when
        # the second is over (:meth:`_tell_held_logs`, on every turn of the outbox).
        self._refusal_log = LogBudget(REFUSALS_LOGGED_PER_S)
        self._failure_logs: dict[str, LogBudget] = {}  # per kind: one traceback a second
        self._drops_log = LogBudget(1)

    @classmethod
    def configured(
        cls,
        loaded: LoadedConfig,
        hooks: LinkHooks,
        *,
        sensors: Iterable[str] = (),
        logger: Any = None,
    ) -> TabletLink:
        """The link as a configuration's ``[mqtt]`` section (with its environment overrides
        and TLS files) sets it up; the bounds of each setting are the schema's."""
        mqtt = loaded.config.mqtt
        tuning = replace(
            DEFAULT_TUNING,
            identifier=mqtt.client_id,
            keepalive_s=mqtt.keepalive_s,
            state_period_s=mqtt.state_period_s,
            backoff_max_s=mqtt.backoff_max_s,
        )
        return cls(
            loaded.config.treadmill.id,
            broker_settings(loaded),
            hooks,
            tuning,
            sensors=sensors,
            logger=logger,
        )

    # ------------------------------------------------------------------ public surface

    @property
    def connected(self) -> bool:
        return self._connected

    def on_event(self, event: Event) -> None:
        """A controller listener: queue one event for publication. Never blocks.

        Encoded now, with the wall time of now: a delivery delayed by an outage does not change
        what the event says."""
        encoded = encode_event(event, to_unix=self._hooks.to_unix)
        # QoS 1 is "at least once": a publication whose PUBACK was lost with the connection goes
        # out again, so a tablet can get an event twice. Its id (unique across restarts of the
        # daemon too) lets the tablet drop the second copy.
        self._event_seq += 1
        encoded.setdefault("event_id", f"{self._boot}-{self._event_seq}")
        item = _Out(to_payload(encoded), keep=event.type in NEVER_DROPPED)
        self._look = True
        if not self._push(self._events, item, self._tuning.buffer):
            self.dropped_events += 1
            self._report_drops()

    def state_changed(self) -> None:
        """Ask for the state to be looked at now rather than at the next poll. Never blocks."""
        self._look = True
        self._wake.set()

    async def __aenter__(self) -> Self:
        if self._task is not None:
            raise RuntimeError("a TabletLink runs once")
        self._task = asyncio.create_task(self.run(), name="mqtt-link")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = self._task
        assert task is not None
        self._stop.set()
        await self._join(task)

    async def _join(self, task: asyncio.Task[None]) -> None:
        """Wait for a task told to stop, for a bounded time; then cancel it and go on."""
        try:
            async with asyncio.timeout(self._tuning.timeout_s + 1.0):
                await asyncio.shield(task)
        except TimeoutError:
            self._log.warning("mqtt_stop_timeout", task=task.get_name())
            task.cancel()

    # ------------------------------------------------------------------ connection loop

    def _client(self) -> aiomqtt.Client:
        client = daemon_client(
            self._broker,
            self._identifier,
            self._tuning,
            self._tls_context,
            will=aiomqtt.Will(self.topics.availability, OFFLINE, qos=1, retain=True),
            receive_maximum=COMMAND_RECEIVE_MAXIMUM,
        )
        # paho's own limit (20 by default) would hold the rest back behind the PUBACKs; it can
        # only be set before the connection.
        client._client.max_inflight_messages_set(self._tuning.max_inflight)
        return client

    async def run(self) -> None:
        """Connect, serve and reconnect until stopped (leaving ``async with``) or cancelled.

        For a daemon's own TaskGroup: ``tg.create_task(link.run(), name="mqtt")``; cancelling
        that task publishes ``offline`` before it disconnects.

        The work runs in a task of its own that is stopped by a flag, never by cancellation:
        on Python 3.11, ``asyncio.wait_for`` (which aiomqtt awaits every publication with)
        swallows a cancellation that arrives as the publication completes, and a loop relying
        on that cancellation would then never end.
        """
        try:
            await self._run_workers()
        finally:
            self._tell_held_logs(self._hooks.now(), stopping=True)

    async def _run_workers(self) -> None:
        while True:
            worker = asyncio.create_task(self._connect_forever(), name="mqtt-link-worker")
            try:
                # Not ``await worker``: that would cancel the worker with us (see above).
                await asyncio.wait({worker})
            except asyncio.CancelledError:
                self._stop.set()
                await self._join(worker)
                raise
            if not worker.cancelled() and worker.exception() is not None:
                worker.result()  # a failure of ours: it ends the daemon, loudly
            if self._stop.is_set():
                return
            # The worker ended although nobody stopped the link (it was cancelled, or returned):
            # without a new one the daemon would run on deaf, its state unpublished and its
            # commands unread. Said loudly, and a new worker connects afresh.
            self.worker_restarts += 1
            self._log.error(
                "mqtt_worker_ended",
                how="cancelled" if worker.cancelled() else "returned",
                restarts=self.worker_restarts,
                retry_in_s=self._tuning.backoff_max_s,
            )
            if await wait_until_set(self._stop, self._tuning.backoff_max_s):
                return

    async def _connect_forever(self) -> None:
        delay = self._tuning.backoff_min_s
        while not self._stop.is_set():
            try:
                async with self._client() as client:  # a fresh client every try
                    delay = self._tuning.backoff_min_s
                    await self._serve(client)
            except* (aiomqtt.MqttError, OSError) as group:
                self.last_error = "; ".join(str(e) for e in group.exceptions)
                self._log.warning("mqtt_disconnected", error=self.last_error, retry_in_s=delay)
                if self._connected_at is not None:
                    self._command_link_lost()
                    self._connection_lost()
            # Never asyncio.timeout here: it depends on this task's cancellation count
            # (controller/aio.py), and the back-off must end in a retry whatever that is.
            if await wait_until_set(self._stop, delay):
                return
            delay = min(delay * 2, self._tuning.backoff_max_s)

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._route_inline(client)  # before subscribing: retained messages follow the SUBACK
        await client.subscribe(
            self.topics.cmd, options=SubscribeOptions(qos=1, retainAsPublished=True)
        )
        for topic in self._sensor_topics:
            await client.subscribe(topic, options=SubscribeOptions(qos=1, retainAsPublished=True))
        # Another daemon's states (see _on_state_message). Not noLocal: that compares client
        # ids, and a rival under our account has ours. Our own come back too; their mark says so.
        await client.subscribe(self.topics.state, options=SubscribeOptions(qos=0))
        # Never the read-only queries: they have a connection of their own
        # (controller/query_link.py), so that a flood of them never stands in this stream.
        await client.publish(self.topics.availability, ONLINE, qos=1, retain=True)
        self._connected = True
        self._connected_at = self._hooks.now()
        self.connections += 1
        self._log.info(
            "mqtt_connected",
            host=self._broker.host,
            port=self._broker.port,
            prefix=self.topics.prefix,
        )
        try:
            # In a task of its own: the group fails at every lost connection, and on Python 3.11
            # that leaves its task's cancellation count raised (controller/aio.py); this task,
            # which goes on to flush and reconnect, must keep its own.
            await in_own_task(self._connection_tasks(client), name="mqtt-connection-tasks")
        except* _Stopping:
            pass
        finally:
            self._connected = False
            if not self._stop.is_set():  # stopping: the final flush still hears its PUBACKs
                self._reset_outbox()
        # Stopping: no command is read after this; the reply to each one read, the session's
        # end and the final state still go out (and are acknowledged) in the flush.
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(self._tuning.timeout_s):
                await client.unsubscribe(self.topics.cmd)
        await self._flush(client)
        await self._say_offline(client)

    async def _connection_tasks(self, client: aiomqtt.Client) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._until_disconnected(client), name="mqtt-connection")
            tg.create_task(self._outbox(client), name="mqtt-outbox")
            tg.create_task(self._until_stopped(), name="mqtt-stop")

    async def _until_stopped(self) -> None:
        await self._stop.wait()
        raise _Stopping

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        """A clean DISCONNECT discards the Will: say "offline" ourselves first."""
        with contextlib.suppress(aiomqtt.MqttError):
            await client.publish(self.topics.availability, OFFLINE, qos=1, retain=True, timeout=1.0)

    # ------------------------------------------------------------------ tasks

    def _route_inline(self, client: aiomqtt.Client) -> None:
        """Commands and sensor readings are handled inside the MQTT client's own callback, as
        their bytes are read, on the event loop's thread: never queued. aiomqtt's incoming
        queue is bounded and, when a flood fills it, drops what arrives next - an ``estop``
        among it, after the broker already had its acknowledgement. Handled here, an estop
        reaches the driver behind no backlog at all (SR-13), and a flood costs replies, which
        are bounded (and the oldest dropped), never commands."""
        paho = client._client  # aiomqtt 2.x keeps its paho client private (pinned below 3)
        paho.message_callback_add(self.topics.cmd, self._on_command_message)
        for topic in self._sensor_topics:
            paho.message_callback_add(topic, self._on_sensor_message)
        paho.message_callback_add(self.topics.state, self._on_state_message)

    # paho calls these from its read loop: an exception out of them would end the connection
    # (aiomqtt takes it for a dead link), drop what arrives until the reconnect and, redelivered,
    # fail the same way again. Each is guarded here, at its dispatcher (SR-15).

    def _on_sensor_message(self, _client: Any, _userdata: Any, message: MQTTMessage) -> None:
        try:
            name = self._sensor_topics.get(message.topic)
            # A retained reading is an old one replayed by the broker, never a live one.
            if name is not None and not message.retain and self._hooks.on_sensor is not None:
                self._hooks.on_sensor(name, bytes(message.payload))
        except Exception as exc:  # the reading is lost: its sensor goes stale, unsafe (SR-8)
            self._failed("sensor_handler_failed", exc, topic=message.topic)

    def _on_command_message(self, _client: Any, _userdata: Any, message: MQTTMessage) -> None:
        # A command that arrives while the link is stopping is still answered: a start is
        # refused by the daemon, a stop or estop carried out (the loop still runs).
        payload = bytes(message.payload)
        if message.retain and not payload:
            return  # someone clearing a retained command: not a command
        command_id, kind = _peek(payload)  # never raises
        keep = kind in NEVER_LIMITED
        try:
            if not keep and len(self._replies) >= self._tuning.buffer:
                self._refuse_rate_limited(command_id, kind)
                return
            reply = self._answer(payload, retained=bool(message.retain))
        except Exception as exc:
            reply = internal_error(readable_id(payload), None, exc)
            self._failed("command_handler_failed", exc, id=reply.id)
        self._queue_reply(reply, keep=keep)

    def _answer(self, payload: bytes, *, retained: bool) -> CommandReply:
        t = self._hooks.now()
        reply = answer_command(
            payload,
            retained=retained,
            t=t,
            seen=self._seen,
            execute=self._hooks.execute,
            # The stamp is judged on the clock the state's ts shows, never the live wall clock.
            now_unix=self._hooks.to_unix(t),
            on_refused=self._hooks.on_refused,
            on_failure=self._command_failed,
        )
        if not reply.ok:
            self._log_refusal(reply)
        return reply

    def _refuse_rate_limited(self, command_id: str | None, kind: str | None) -> None:
        """More commands than the outbox answers one by one: this one is not run (SR-15).

        Its refusal is coalesced with the others not yet sent, up to REFUSALS_PER_REPLY in one
        message (``"ids"`` lists them): a refusal then costs the outbox almost nothing, so a
        flood is answered as fast as it can be read."""
        self.rate_limited += 1
        if self._hooks.on_refused is not None:
            # Journaled like every refusal, through the daemon's coalescer: a count a second.
            self._hooks.on_refused(
                CommandReply(command_id, ErrorCode.RATE_LIMITED, _RATE_LIMITED), kind
            )
        self._report_drops()
        if self._refused_waiting >= REFUSALS_PER_BUFFER * self._tuning.buffer:
            self.dropped_replies += 1  # only a broker that stops acknowledging gets here
            return
        self._refused_waiting += 1
        queue = self._refusals
        last = queue[-1] if len(queue) > self._sent[id(queue)] else None
        if last is not None and last.ids is not None and len(last.ids) < REFUSALS_PER_REPLY:
            last.ids.append(command_id)
        else:
            self._push(queue, _Out(b"", ids=[command_id]), None)
        self._wake.set()

    def _refusal_payload(self, ids: list[str | None]) -> bytes:
        reply = CommandReply(
            ids[0],
            ErrorCode.RATE_LIMITED,
            _RATE_LIMITED,
        ).to_json()
        reply["ids"] = [*ids]
        reply["ts"] = self._reply_ts()
        return to_payload(reply)

    def _log_refusal(self, reply: CommandReply) -> None:
        """Each refusal is logged, up to REFUSALS_LOGGED_PER_S a second; past that only their
        number, once the second is over: a flood must not flood the log (SR-15)."""
        assert reply.error is not None
        now = self._hooks.now()
        self._tell_held_logs(now)
        if not self._refusal_log.admit(now):
            return
        self._log.info(
            "mqtt_command_refused", id=reply.id, code=reply.error.value, message=reply.message
        )

    def _command_failed(self, exc: Exception, reply: CommandReply) -> None:
        self._failed("command_failed", exc, id=reply.id)

    def _failed(self, what: str, exc: BaseException, **fields: Any) -> None:
        """An unexpected exception in a handler: logged with its traceback at most once a
        second per kind, with the count of those not logged, so a flood of bad payloads cannot
        flood the log or burn the CPU (SR-15)."""
        count = self._failures.get(what, 0) + 1
        self._failures[what] = count
        now = self._hooks.now()
        self._tell_held_logs(now)
        budget = self._failure_logs.setdefault(what, LogBudget(1))
        if budget.admit(now):
            self._log.error(what, count=count, error=repr(exc), traceback=_trace(exc), **fields)

    def _tell_held_logs(self, now: float, *, stopping: bool = False) -> None:
        """The number of what a flood kept out of the log, once its second is over (or the
        link stops): told even when nothing comes after the flood to carry it."""
        held = self._refusal_log.flush() if stopping else self._refusal_log.due(now)
        if held:
            self._log.warning("mqtt_commands_refused_not_logged", count=held)
        for what, budget in self._failure_logs.items():
            held = budget.flush() if stopping else budget.due(now)
            if held:
                self._log.error(
                    "handler_failures_not_logged",
                    failed=what,
                    count=held,
                    total=self._failures[what],
                )
        if self._drops_log.flush() if stopping else self._drops_log.due(now):
            self._log_drops()

    def _queue_reply(self, reply: CommandReply, *, keep: bool) -> None:
        self._look = True  # the command may have changed the state: it goes out first
        payload = to_payload({**reply.to_json(), "ts": self._reply_ts()})
        self._push(self._urgent if keep else self._replies, _Out(payload), None)

    def _reply_ts(self) -> float:
        """A reply's ``ts`` (an extension): when it was answered, in the daemon's clock, as the
        state's. A tablet that has no live state to go by (the treadmill idle) learns the
        daemon's clock from it, to stamp its next command (``treadguard tablet``)."""
        return round(self._hooks.to_unix(self._hooks.now()), 3)

    def _on_state_message(self, _client: Any, _userdata: Any, message: MQTTMessage) -> None:
        """A state on our own state topic that another daemon published: a second daemon for
        this treadmill. Live, it is running now; retained, it was published after our own
        first state (one left by a predecessor is found before we publish any). On a broker
        that binds client ids to accounts the two never see each other live: each takes over
        the other's session and finds the other's retained state when it reconnects."""
        try:
            if message.retain and not self._state_published:
                return  # a predecessor's state, left retained
            try:
                obj = json.loads(message.payload)
            except (ValueError, RecursionError):
                return
            instance = obj.get("instance") if isinstance(obj, dict) else None
            if not isinstance(instance, str) or instance == self.instance:
                return
            if self._rival_told == self.connections:
                return  # once per connection (the two take turns on the broker)
            self._rival_told = self.connections
            now = self._hooks.now()
            if now - self._rival_logged_t >= RIVAL_LOG_EVERY_S:
                self._rival_logged_t = now
                self._log.error(
                    "mqtt_rival_daemon",
                    instance=instance,
                    message="another daemon publishes this treadmill's state: the belt is stopped",
                )
            if self._hooks.on_rival is not None:
                self._hooks.on_rival(
                    f"another daemon ({instance}) publishes this treadmill's state"
                )
        except Exception as exc:  # SR-15: no handler raises into its caller
            self._failed("state_handler_failed", exc)

    def _command_link_lost(self) -> None:
        """A connection that was up, on which the tablet's commands come, has been lost: on
        the board's own broker that is a broker restarting or another client taking the
        daemon's client id, and either way the tablet's commands reached nobody meanwhile, an
        E-STOP among them. The safety core is told at once: a session stops under control
        (SR-12), however soon the link is back and however seldom it happens."""
        try:
            if self._hooks.snapshot().session is not None:
                self._log.error(
                    "mqtt_link_lost_in_session",
                    error=self.last_error,
                    message="the tablet's commands could not reach the daemon: the session "
                    "is stopped",
                )
            if self._hooks.on_link_lost is not None:
                self._hooks.on_link_lost(
                    f"the daemon's connection to the broker was lost ({self.last_error})"
                )
        except Exception as exc:  # SR-15: no handler raises into its caller
            self._failed("link_lost_handler_failed", exc)

    def _connection_lost(self) -> None:
        """A connection that was up has been lost. Lost within SHORT_CONNECTION_S of being
        made, SHORT_CONNECTIONS_MAX times within SHORT_CONNECTIONS_WINDOW_S, it is the daemon
        knocked off the broker again and again during a session: another client connecting
        with the daemon's client id (Mosquitto closes the older connection without a word, and
        the two take turns), or a broker that keeps dropping it. Either way the tablet's
        commands, an E-STOP among them, are lost at random while the belt runs: a rival
        controller (SR-12), the belt stopped and the fault latched. A broker that binds client
        ids to accounts lets no other account do this; one that does not, or the daemon's own
        account used elsewhere, does."""
        try:
            now = self._hooks.now()
            made, self._connected_at = self._connected_at, None
            if made is None or now - made > SHORT_CONNECTION_S:
                return
            short = self._short_connections
            short.append(now)
            while short and short[0] < now - SHORT_CONNECTIONS_WINDOW_S:
                short.popleft()
            if len(short) < SHORT_CONNECTIONS_MAX:
                return
            short.clear()
            if self._hooks.snapshot().session is None:
                # No session: no belt to stop for a command lost, and the board's own broker
                # restarts (an install, an update) come in quick turns between sessions. Said
                # (at most every RIVAL_LOG_EVERY_S), for whoever looks at the log of a
                # treadmill whose tablet gets no replies.
                if now - self._rival_logged_t < RIVAL_LOG_EVERY_S:
                    return
                self._rival_logged_t = now
                self._log.warning(
                    "mqtt_knocked_off_idle",
                    client_id=self._identifier,
                    message=f"the connection to the broker was lost {SHORT_CONNECTIONS_MAX} "
                    f"times within {SHORT_CONNECTIONS_WINDOW_S:g} s: another client with this "
                    "daemon's client id, or a broker that keeps restarting or dropping it",
                )
                return
            said = (
                f"the daemon's connection to the broker was lost {SHORT_CONNECTIONS_MAX} times "
                f"within {SHORT_CONNECTIONS_WINDOW_S:g} s, each within "
                f"{SHORT_CONNECTION_S:g} s of being made: another client with its client id "
                f"({self._identifier}) takes its place, or the broker drops it"
            )
            self._log.error("mqtt_knocked_off", client_id=self._identifier, message=said)
            if self._hooks.on_rival is not None:
                self._hooks.on_rival(said)
        except Exception as exc:  # SR-15: no handler raises into its caller
            self._failed("rival_handler_failed", exc)

    def _report_drops(self) -> None:
        """A flood drops thousands a second: say so at most once a second, with the counts,
        and once more when the second is over if more came in it."""
        now = self._hooks.now()
        self._tell_held_logs(now)
        if self._drops_log.admit(now):
            self._log_drops()

    def _log_drops(self) -> None:
        self._log.warning(
            "mqtt_outbox_full",
            dropped_events=self.dropped_events,
            rate_limited=self.rate_limited,
            dropped_replies=self.dropped_replies,
        )

    async def _until_disconnected(self, client: aiomqtt.Client) -> None:
        """Everything subscribed to is routed inline; this only notices a lost connection
        (the iterator raises MqttError)."""
        async for _ in client.messages:
            pass

    async def _outbox(self, client: aiomqtt.Client) -> None:
        paho = self._attach(client)
        last_key: str | None = None  # per connection: the first state always goes out
        self._last_state_sent = -math.inf
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            self._wake.clear()
            last_key, _ = self._pump(paho, last_key)
            self._tell_held_logs(self._hooks.now())
            wait = max(0.0, self._next_look - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def _flush(self, client: aiomqtt.Client) -> None:
        """Stopping: what happened last (the session's end, the final state) still goes out,
        and is acknowledged, within ``timeout_s``."""
        paho = self._attach(client) if self._paho is not client._client else client._client
        last_key: str | None = None
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(self._tuning.timeout_s):
                while True:
                    self._wake.clear()
                    last_key, _ = self._pump(paho, last_key)
                    if not any(self._queues):
                        return
                    await self._wake.wait()

    def _attach(self, client: aiomqtt.Client) -> Any:
        """A new connection: hear its PUBACKs, and send again what the last one did not get
        acknowledged (oldest first); what was acknowledged is gone already."""
        paho: Any = client._client  # aiomqtt 2.x keeps its paho client private (pinned below 3)
        self._reset_outbox()
        self._paho = paho
        theirs = paho.on_publish  # aiomqtt's: it completes its own awaited publications

        def on_publish(c: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
            theirs(c, userdata, mid, reason, properties)
            if c is self._paho:
                self._acked(mid, reason)

        paho.on_publish = on_publish
        return paho

    def _reset_outbox(self) -> None:
        self._paho = None
        self._inflight.clear()
        for queue in self._queues:
            unacked = [item for item in queue if not item.acked]
            queue.clear()
            queue.extend(unacked)
            for item in queue:
                item.mid = None
            self._sent[id(queue)] = 0

    def _acked(self, mid: int, reason: Any) -> None:
        """The broker has this publication (paho's callback, on the loop's thread)."""
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return  # a state or the availability: nothing waits on those
        queue, item = entry
        if getattr(reason, "is_failure", False):
            # Refused by the broker (its ACL, say): sending it again would be refused again.
            self._log.error("mqtt_publish_refused", reason=str(reason))
        item.acked = True
        self.published += 1
        if item.ids is not None:
            self._refused_waiting -= len(item.ids)
        while queue and queue[0].acked:
            queue.popleft()
            self._sent[id(queue)] -= 1
        self._wake.set()

    def _pump(self, paho: Any, last_key: str | None) -> tuple[str | None, bool]:
        """Hand paho the state, if it changed or is due, then events, then replies, in order,
        up to ``max_inflight`` unacknowledged. Returns the state's key and whether the belt
        moves. Synchronous: paho only queues the bytes on the socket.

        The state goes first, so a command's reply never overtakes the state the command
        caused; events before replies, so under a flood of commands an estop event does not
        wait behind a backlog of replies."""
        now = asyncio.get_running_loop().time()
        if self._look or last_key is None or now >= self._next_look:
            # Something new was queued, the state may have changed, or a look is due: not a
            # wake-up for PUBACKs alone, which come thousands a second under a flood.
            self._look = False
            # The journal commits what it holds before anything goes out, the state included
            # (a new session, a latched stop) (SR-14); a no-op when it holds nothing.
            if self._hooks.before_publish is not None:
                self._hooks.before_publish()
            written, durable = self._marks()
            if written <= durable:
                self._held_state = None
                last_key, self._moving = self._publish_state(paho, last_key, self._state_now())
                # No journal (or one given up on): no count to hold replies to.
                self._state_records = math.inf if math.isinf(durable) else written
            else:
                # The state now shows records not yet on disk: it is held, with their count,
                # and goes out once a sync has covered them, even if newer records keep
                # coming (then the newest state covered goes out, never none at all).
                held = self._held_state
                if held is not None and held[1] <= durable:
                    last_key, self._moving = self._publish_state(paho, last_key, held[0])
                    self._state_records = held[1]
                    held = None
                if held is None:
                    self._held_state = (self._state_now(), written)
            self._next_look = now + self._tuning.poll_s
            if self._moving:
                due = self._last_state_sent + self._tuning.state_period_s
                self._next_look = min(self._next_look, due)
        _, durable = self._marks()
        for queue in self._queues:
            topic = self.topics.events if queue is self._events else self.topics.reply
            # A reply also waits for the state its command caused (the state goes out first).
            limit = durable if queue is self._events else min(durable, self._state_records)
            sent = self._sent[id(queue)]
            while sent < len(queue) and len(self._inflight) < self._tuning.max_inflight:
                item = queue[sent]
                if item.records > limit:
                    break  # not on disk yet (or its state not out yet); nor those after it
                if item.ids is not None:  # no more refusals join it once it is sent
                    item.payload = self._refusal_payload(item.ids)
                mid = self._publish(paho, topic, item.payload, retain=False)
                item.mid = mid
                self._inflight[mid] = (queue, item)
                sent += 1
            self._sent[id(queue)] = sent
        return last_key, self._moving

    @staticmethod
    def _publish(paho: Any, topic: str, payload: bytes, *, retain: bool) -> int:
        info = paho.publish(topic, payload, qos=1, retain=retain)
        if info.rc != MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "could not publish")
        return int(info.mid)

    def _state_now(self) -> tuple[JsonObject, str, bool]:
        """The state as published now: its object, its key (what a change is judged by) and
        whether the belt moves."""
        snap = self._hooks.snapshot()
        state = encode_state(
            snap,
            treadmill_id=self.treadmill_id,
            ts=self._hooks.to_unix(self._hooks.now()),
            to_unix=self._hooks.to_unix,
        )
        # Events the outbox had no room for while the broker was away (SR-14): a tablet
        # learns that its history has a gap.
        state["events_dropped"] = self.dropped_events
        state["instance"] = self.instance
        if self._hooks.extra_state is not None:
            state.update({k: v for k, v in self._hooks.extra_state().items() if k not in state})
        return state, state_key(state), belt_moving(snap)

    def _publish_state(
        self, paho: Any, last_key: str | None, built: tuple[JsonObject, str, bool]
    ) -> tuple[str | None, bool]:
        state, key, moving = built
        now = asyncio.get_running_loop().time()
        if key != last_key or (
            moving and now - self._last_state_sent >= self._tuning.state_period_s
        ):
            self._publish(paho, self.topics.state, to_payload(state), retain=True)
            self._last_state_sent = now
            self._state_published = True
        return key, moving

    def _marks(self) -> tuple[int, float]:
        marks = self._hooks.journal_marks
        return (0, math.inf) if marks is None else marks()

    def _push(self, queue: deque[_Out], item: _Out, bound: int | None) -> bool:
        """Append to the outbox; False when it was full and an item was dropped (this one, or
        for a kept one, the oldest unsent item that is not kept)."""
        self._wake.set()
        item.records = self._marks()[0]
        if bound is None or len(queue) < bound:
            queue.append(item)
            return True
        if not item.keep:
            return False
        for i in range(self._sent[id(queue)], len(queue)):
            if not queue[i].keep:
                del queue[i]
                queue.append(item)
                return False
        queue.append(item)  # only kept ones: past the bound rather than lose an estop
        return True
