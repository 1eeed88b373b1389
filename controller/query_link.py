"""The daemon's query connection: read-only queries (contract/queries.py) on an MQTT connection
of their own, under an account of their own, beside the tablet link (controller/mqtt_link.py).

::

    link = QueryLink.configured(loaded, submit=queries.submit, journal_marks=system.journal_marks)
    tg.create_task(link.run(), name="queries-mqtt")    # never raises; cancel it to stop
    queries = QueryService(..., reply=link.answer)

Why a connection of its own: the broker delivers one connection's messages in order, so on the
tablet link's connection every query queued ahead of an ``estop`` had to be read before it. A
dashboard flooding 200,000 small queries held a tablet's E-STOP back by 11 to 25 s. Here a
flood of queries waits in its own stream; the commands' stream is never behind it.

What it reads is budgeted (:class:`QueryBudget`), so a flood costs the daemon neither its
processor nor Python's lock either: the connection's socket is read only while the budget has a
query to spare (``per_s`` a second, ``burst`` at once). Past that the link stops reading its
socket until the next one is due, and the broker holds what comes, within its queue limits
(QoS 1 deliveries behind the connection's small Receive Maximum; QoS 0 ones as packets waiting
to be written, at most ``max_queued_messages`` of them, none over MAX_QUERY_PACKET_BYTES). A
budget still spent after ``shed_after_s`` means a backlog the budget cannot read: the
connection is closed and opened afresh (a clean start), and the broker discards what it held
for it. The askers' own timeouts tell them; the patient view asks again.

Nothing here touches the safety core, the control loop or the commands: a query is handed to
``submit`` (the query service, which only parses and queues it), an answer is queued by
:meth:`QueryLink.answer` and published by this link's own task. A connection that fails, is
refused (no such account, a wrong password) or is dropped by the broker is logged and tried
again with backoff, for as long as the daemon runs; the daemon runs sessions all the same.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import aiomqtt
import structlog
from paho.mqtt.client import MQTT_ERR_SUCCESS, MQTTMessage
from paho.mqtt.subscribeoptions import SubscribeOptions

from treadguard.config.loading import LoadedConfig
from treadguard.contract.queries import account_of, query_filter, query_reply_topic
from treadguard.controller.aio import in_own_task
from treadguard.controller.mqtt_link import (
    DEFAULT_TUNING,
    LinkTuning,
    daemon_client,
)
from treadguard.controller.mqtt_settings import (
    QUERIES_SUFFIX,
    BrokerSettings,
    query_broker_settings,
)

Submit = Callable[[str, bytes, bool], None]  # the account, the payload, its retain flag

# QoS 1 deliveries the broker may have on the wire to this connection, unacknowledged: while
# the link does not read, the rest wait in the broker's queue (MQTT 5's Receive Maximum).
RECEIVE_MAXIMUM = 8
# The largest packet the broker may hand this connection (MQTT 5's Maximum Packet Size): a query
# is at most 4 KiB (refused past that), with its topic and header well under 8 KiB. The broker
# drops a bigger message for it instead of holding it, so what it holds for this connection
# while the budget leaves it unread is at most max_queued_messages packets of 8 KiB at QoS 0
# (config/mosquitto/treadguard.conf), whatever size a flood's messages are.
MAX_QUERY_PACKET_BYTES = 8 * 1024
FAILURE_LOG_EVERY_S = 60.0  # the same connection failure, again, is logged this often


@dataclass(frozen=True)
class QueryBudget:
    """What the query connection reads. The tablet page asks two or three queries when its
    patient view opens; the query service answers one at a time, four waiting per account."""

    per_s: float = 10.0  # queries read a second, sustained
    burst: int = 20  # queries read at once after a quiet spell
    shed_after_s: float = 5.0  # over budget this long: the connection is dropped and reopened

    def __post_init__(self) -> None:
        if not (self.per_s > 0 and self.burst >= 1 and self.shed_after_s > 0):
            raise ValueError("a query budget needs a positive rate, burst and shedding time")


DEFAULT_BUDGET = QueryBudget()


_ROUNDING = 1e-9  # tokens lost to floating point when the clock moves by the wait computed


class ReadBudget:
    """A token bucket of queries read, on the clock ``now``. Pure: no I/O."""

    def __init__(self, budget: QueryBudget, now: Callable[[], float]) -> None:
        self._budget = budget
        self._now = now
        self._tokens = float(budget.burst)
        self._t = now()
        self._over_since: float | None = None  # the budget last ran dry then, and has not refilled

    def _refill(self) -> float:
        now = self._now()
        b = self._budget
        self._tokens = min(float(b.burst), self._tokens + (now - self._t) * b.per_s)
        self._t = now
        if self._tokens >= b.burst:
            self._over_since = None  # a quiet spell: whatever came was read
        return now

    def charge(self) -> None:
        """One query read (a read can take a few: the count may go below zero)."""
        self._refill()
        self._tokens -= 1.0

    def wait_s(self) -> float:
        """0 when the socket may be read now; else how long until a query is to spare."""
        now = self._refill()
        if self._tokens >= 1.0 - _ROUNDING:  # the wait computed below, slept, is enough
            return 0.0
        if self._over_since is None:
            self._over_since = now
        return (1.0 - self._tokens) / self._budget.per_s

    def over_for(self) -> float:
        """How long the budget has been spent without refilling (0: it is not)."""
        now = self._refill()
        return 0.0 if self._over_since is None else now - self._over_since

    def forgive(self) -> None:
        """A new connection gets ``shed_after_s`` of its own before it is shed in turn."""
        self._over_since = None


@dataclass(slots=True)
class _Answer:
    topic: str
    payload: bytes
    records: int  # the journal's records written when it was queued: out once on disk (SR-14)


class _Shed(Exception):
    """Raised inside the connection's task group: the budget could not read the backlog."""


class QueryLink:
    """The query connection. ``submit`` gets each query read (on the event loop's thread, as
    the link reads it); :meth:`answer` queues an answer for an account's reply topic."""

    def __init__(
        self,
        identifier: str,
        broker: BrokerSettings,
        submit: Submit,
        *,
        journal_marks: Callable[[], tuple[int, float]] | None = None,
        tuning: LinkTuning = DEFAULT_TUNING,
        budget: QueryBudget = DEFAULT_BUDGET,
        logger: Any = None,
    ) -> None:
        self._identifier = identifier
        self._broker = broker
        self._submit = submit
        self._marks = journal_marks
        self._tuning = tuning
        self._budget = budget
        self._filter = query_filter(broker.prefix)
        self._log = logger if logger is not None else structlog.get_logger("treadguard.queries")
        # Built once, here: loading certificates blocks.
        self._tls_context = broker.tls.context() if broker.tls is not None else None
        self._answers: deque[_Answer] = deque()
        self._wake = asyncio.Event()
        self._shed = asyncio.Event()
        self._reads: ReadBudget | None = None  # on the running loop's clock, made in run()
        self._resume: asyncio.TimerHandle | None = None
        self._failure: tuple[str, float, int] | None = None  # last failure, logged when, count
        self._drops_logged_t = -math.inf
        self.connected = False
        self.connections = 0
        self.read = 0  # queries read and handed over
        self.paused = 0  # times the socket went unread for the budget
        self.shed = 0  # connections dropped for a backlog the budget could not read
        self.answered = 0  # answers handed to the connection
        self.dropped_answers = 0  # answers the queue had no room for

    @classmethod
    def configured(
        cls,
        loaded: LoadedConfig,
        submit: Submit,
        *,
        journal_marks: Callable[[], tuple[int, float]] | None = None,
        budget: QueryBudget = DEFAULT_BUDGET,
        logger: Any = None,
    ) -> QueryLink:
        mqtt = loaded.config.mqtt
        # The tablet link's client id plus a suffix: on a broker that does not take the user
        # name as client id, the two connections must not replace each other.
        base = mqtt.client_id or f"treadguard-{loaded.config.treadmill.id}"
        tuning = replace(
            DEFAULT_TUNING, keepalive_s=mqtt.keepalive_s, backoff_max_s=mqtt.backoff_max_s
        )
        return cls(
            base + QUERIES_SUFFIX,
            query_broker_settings(loaded),
            submit,
            journal_marks=journal_marks,
            tuning=tuning,
            budget=budget,
            logger=logger,
        )

    # ------------------------------------------------------------------ public surface

    def answer(self, account: str, payload: bytes) -> None:
        """Queue the answer to ``account``'s query. Never blocks. It goes out once the journal's
        records written before it are on disk (as an event). At most ``buffer`` wait: past that
        it is dropped, counted and logged; the asker's own timeout tells it."""
        if len(self._answers) >= self._tuning.buffer:
            self.dropped_answers += 1
            now = asyncio.get_running_loop().time()
            if now - self._drops_logged_t >= 1.0:
                self._drops_logged_t = now
                self._log.warning("query_answers_dropped", count=self.dropped_answers)
            return
        written = 0 if self._marks is None else self._marks()[0]
        topic = query_reply_topic(self._broker.prefix, account)
        self._answers.append(_Answer(topic, payload, written))
        self._wake.set()

    def durable(self) -> None:
        """The journal synced: answers waiting for it may go. Never blocks."""
        self._wake.set()

    async def run(self) -> None:
        """Connect, serve and reconnect until cancelled. Never raises anything else: a failure
        here must not reach the daemon's task group, where it would end the control loop."""
        self._reads = ReadBudget(self._budget, asyncio.get_running_loop().time)
        delay = self._tuning.backoff_min_s
        while True:
            try:
                async with self._client() as client:
                    self._failure = None
                    delay = self._tuning.backoff_min_s
                    await self._serve(client)
            except* _Shed:
                self.shed += 1
                self._log.warning(
                    "query_connection_shed",
                    message="more queries than the daemon reads: the connection is opened "
                    "afresh, and the broker drops what it held for it",
                    per_s=self._budget.per_s,
                    read=self.read,
                )
                delay = self._tuning.backoff_min_s
            except* (aiomqtt.MqttError, OSError) as group:
                self._failed("; ".join(str(e) for e in group.exceptions), delay)
            except* Exception as group:  # SR-15: logged, and the link tries again
                self._failed("; ".join(repr(e) for e in group.exceptions), delay)
            finally:
                self.connected = False
                if self._resume is not None:
                    self._resume.cancel()
                    self._resume = None
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._tuning.backoff_max_s)

    # ------------------------------------------------------------------ connection

    def _client(self) -> aiomqtt.Client:
        # Queries are routed inline (message_callback_add): nothing enters the client's queue.
        return daemon_client(
            self._broker,
            self._identifier,
            self._tuning,
            self._tls_context,
            receive_maximum=RECEIVE_MAXIMUM,
            maximum_packet_size=MAX_QUERY_PACKET_BYTES,
        )

    def _failed(self, error: str, retry_in_s: float) -> None:
        """A connection that failed: logged at once, and the same failure again (an account
        the broker refuses, every few seconds) once a minute, with the count."""
        now = asyncio.get_running_loop().time()
        last = self._failure
        if last is not None and last[0] == error and now - last[1] < FAILURE_LOG_EVERY_S:
            self._failure = (error, last[1], last[2] + 1)
            return
        count = 1 if last is None or last[0] != error else last[2] + 1
        self._failure = (error, now, count)
        self._log.warning(
            "query_connection_failed",
            error=error,
            account=self._broker.username or "anonymous",
            retry_in_s=retry_in_s,
            count=count,
            message="the patient view and the dashboard get no answers meanwhile; sessions "
            "run as ever",
        )

    async def _serve(self, client: aiomqtt.Client) -> None:
        assert self._reads is not None
        self._shed.clear()
        self._reads.forgive()
        self._pace_reads(client)
        # Inline, as the link reads them (never aiomqtt's queue), before subscribing: a
        # retained query follows the SUBACK.
        client._client.message_callback_add(self._filter, self._on_query_message)
        # Retain as published: a retained query is refused. Never the replies: the filter
        # matches one level below query/ only.
        await client.subscribe(
            self._filter, options=SubscribeOptions(qos=1, retainAsPublished=True)
        )
        self.connected = True
        self.connections += 1
        self._log.info(
            "query_connection_up",
            account=self._broker.username or "anonymous",
            topic=self._filter,
        )
        # In a task of its own: the group fails at every lost connection, and on Python 3.11
        # that would leave this task's cancellation count raised for good (controller/aio.py).
        await in_own_task(self._connection_tasks(client), name="queries-connection-tasks")

    async def _connection_tasks(self, client: aiomqtt.Client) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._until_disconnected(client), name="queries-connection")
            tg.create_task(self._send_answers(client), name="queries-outbox")
            tg.create_task(self._until_shed(), name="queries-shed")

    async def _until_disconnected(self, client: aiomqtt.Client) -> None:
        async for _ in client.messages:  # ends (MqttError) when the connection is lost
            pass

    async def _until_shed(self) -> None:
        await self._shed.wait()
        raise _Shed

    async def _send_answers(self, client: aiomqtt.Client) -> None:
        """Publish the answers, oldest first, each once the journal's records written before it
        are on disk. Handed to paho without waiting for the broker's acknowledgement: while the
        budget holds the socket unread, a PUBACK waits behind the queries before it, and an
        answer must not wait for it. They are few (at most one per query read), and an answer
        the connection loses is asked for again."""
        paho: Any = client._client
        while True:
            self._wake.clear()
            durable = math.inf if self._marks is None else self._marks()[1]
            if not self._answers or self._answers[0].records > durable:
                await self._wake.wait()
                continue
            item = self._answers.popleft()
            info = paho.publish(item.topic, item.payload, qos=1)
            if info.rc != MQTT_ERR_SUCCESS:
                raise aiomqtt.MqttCodeError(info.rc, "could not publish an answer")
            self.answered += 1

    def _pace_reads(self, client: aiomqtt.Client) -> None:
        """Read this connection's socket only while the budget allows: replace aiomqtt's reader
        of it (registered as it connected) with one that first asks the budget and, when it is
        spent, stops watching the socket until a query is to spare.

        aiomqtt 2.x keeps its paho client and its "disconnected" future private (pinned below
        3); the reader does what aiomqtt's own does (``loop_read``, then whatever TLS holds
        decoded, and a failure ends the connection)."""
        assert self._reads is not None
        reads = self._reads
        loop = asyncio.get_running_loop()
        paho: Any = client._client
        sock = paho.socket()
        if sock is None:
            return  # closed already: the connection's task sees it
        fd = sock.fileno()

        def ours() -> bool:
            # paho forgets its socket when it closes it, and the number may then be reused by
            # another connection (the tablet link's): never touch it after that.
            return paho.socket() is sock and sock.fileno() == fd

        def read() -> None:
            if not ours():
                return
            wait = reads.wait_s()
            if wait > 0.0:
                loop.remove_reader(fd)
                self.paused += 1
                if reads.over_for() >= self._budget.shed_after_s:
                    self._shed.set()  # the connection goes: nothing to resume
                    return
                self._resume = loop.call_later(wait, resume)
                return
            try:
                paho.loop_read()
            except Exception as exc:  # a broken socket: the connection is over
                disconnected = client._disconnected
                if not disconnected.done():
                    disconnected.set_exception(exc)
                return
            again_for_tls()

        def again_for_tls() -> None:
            # TLS may hold records decoded already, with the socket itself quiet: read on.
            pending = getattr(sock, "pending", None)
            if pending is not None and ours() and pending() > 0:
                loop.call_soon(read)

        def resume() -> None:
            self._resume = None
            if ours():
                loop.add_reader(fd, read)
                again_for_tls()

        loop.remove_reader(fd)
        loop.add_reader(fd, read)

    def _on_query_message(self, _client: Any, _userdata: Any, message: MQTTMessage) -> None:
        """A query, as paho reads it: counted against the budget and handed to ``submit``,
        which only parses and queues it."""
        try:
            assert self._reads is not None
            self._reads.charge()
            account = account_of(self._broker.prefix, message.topic)
            payload = bytes(message.payload)
            if account is None or (message.retain and not payload):
                return  # not a query topic, or someone clearing a retained message
            self.read += 1
            self._submit(account, payload, bool(message.retain))
        except Exception as exc:  # SR-15: an exception here would end the connection
            self._log.error("query_handler_failed", error=repr(exc), topic=message.topic)
