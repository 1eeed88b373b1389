"""The tablet contract over MQTT in real time: the daemon's command round trip next to a bare
aiomqtt echo, and the emergency stop under a flood of commands.

Everything runs in one run, against the benchmark's own Mosquitto (``set_tcp_nodelay true``) on
a free port of 127.0.0.1, so the ratios compare figures that shared the machine's noise:

1. **floor**: a bare aiomqtt echo at QoS 1. The measuring client publishes to X; an echo
   client (its own process, as the daemon is) subscribed to X republishes the payload to Y; the
   measuring client, subscribed to Y, receives it. TCP_NODELAY on both clients.
2. **daemon**: the real daemon (``treadguard run``, a subprocess, on the built-in simulated
   drive and simulated user), ``{"id", "type": "heartbeat"}`` on ``<p>/cmd`` to its reply on
   ``<p>/reply``, QoS 1, TCP_NODELAY. Floor and daemon samples alternate, back to back; then
   a few of each after 100 ms of idleness, as a tablet's commands come (a second apart): an
   idle machine adds the time to wake its CPUs, which back-to-back samples never pay.
3. **naive client**: the same daemon round trip from a client with default sockets (no
   TCP_NODELAY; the broker still sets it), to show what Nagle's algorithm meeting delayed ACKs
   costs at QoS 1 (docs/benchmarks.md).
4. **emergency stop**: trials of start_session -> running -> a random 0-200 ms -> estop, first
   without load, then while a flooder process publishes 1,000 commands a second to ``<p>/cmd``
   (heartbeats with unique ids and invalid payloads). Per trial: the ``stop_latency_ms`` of the
   ``estop`` event (the daemon's own trigger-to-stop-written figure, SR-13), the round trip from
   publishing estop to receiving that event, and to receiving the estop's reply. Then reset
   (retried until ok: it needs standstill) and wait for idle. A heartbeat goes out every second.

The daemon logs at level warning to a file; its ``mqtt_outbox_full`` reports count what the
flood cost (commands refused ``rate_limited``, refusals and events dropped), and the replies
the benchmark saw to the flooder's commands count what was answered, ``rate_limited`` apart.

    .venv/bin/python benchmarks/bench_mqtt.py [--samples 2000] [--idle-samples 100]
        [--naive-samples 200] [--trials 30] [--calm-trials 5] [--flood-rate 1000]

Above the daemon's capacity, commands are refused ``rate_limited`` (never a stop or an estop);
the benchmark reports what it saw and ends by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from _common import free_port, machine, python_speed_s, row, save, start_broker, summary
from paho.mqtt.subscribeoptions import SubscribeOptions

ROOT = Path(__file__).resolve().parent.parent
TREADMILL = "tm-bench"
PREFIX = f"treadmill/{TREADMILL}"
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
WARMUP = 200  # round trips of each kind before the samples
WAIT_S = 5.0  # the bound on a wait for one message
START_S = 15.0  # the bound on a process becoming ready
STOP_S = 15.0  # the bound on a process ending after SIGTERM (the daemon's SR-11 is 10 s)
RESET_S = 10.0  # the bound on retrying reset until the belt is at standstill
# The tablet's commands come a second or more apart, with the machine idle in between: a
# round trip then also pays for waking idle CPUs, which back-to-back samples never do.
IDLE_GAP_S = 0.1

ECHO_SCRIPT = """
import asyncio, socket, sys
import aiomqtt

async def main(port, src, dst):
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier="bench-echo",
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    ) as client:
        await client.subscribe(src, qos=1)
        async for message in client.messages:
            await client.publish(dst, message.payload, qos=1)

asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
"""

# Paho's own network thread, so that pacing 1,000 publications a second costs the flooder's
# loop nothing; QoS 1 as the contract asks. Bounded by a count and a time; SIGTERM ends it
# early. It prints one JSON line of what it sent.
FLOOD_SCRIPT = """
import json, signal, socket, sys, threading, time
import paho.mqtt.client as mqtt

port, topic = int(sys.argv[1]), sys.argv[2]
rate, seconds, limit = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
connected = threading.Event()
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-flood",
                     protocol=mqtt.MQTTv5)
client.on_socket_open = lambda c, u, sock: sock.setsockopt(
    socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
client.on_connect = lambda *args: connected.set()
client.max_inflight_messages_set(100)
client.connect("127.0.0.1", port)
client.loop_start()
if not connected.wait(5.0):
    sys.exit("flooder: no connection")
sent = heartbeats = invalid = 0
t0 = time.monotonic()
while not stop.is_set() and sent < limit and time.monotonic() - t0 < seconds:
    due = min(limit, int((time.monotonic() - t0) * rate))
    while sent < due:
        if sent % 4 == 3:
            payload = b"{not json"
            invalid += 1
        else:
            payload = json.dumps({"id": f"f-{sent}", "type": "heartbeat"}).encode()
            heartbeats += 1
        client.publish(topic, payload, qos=1)
        sent += 1
    stop.wait(0.002)
elapsed = time.monotonic() - t0
client.disconnect()
client.loop_stop()
print(json.dumps({"sent": sent, "heartbeats": heartbeats, "invalid": invalid,
                  "elapsed_s": elapsed}), flush=True)
"""

DROPS_EVENT = "mqtt_outbox_full"  # logged at most once a second, with counts


# ---------------------------------------------------------------------------- processes


def daemon_env() -> dict[str, str]:
    # The configuration file, not whatever TREADGUARD_* the caller's shell sets.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TREADGUARD_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def start_daemon(workdir: Path, port: int) -> tuple[subprocess.Popen[bytes], Path]:
    cfg = workdir / "daemon.toml"
    cfg.write_text(
        f'[treadmill]\nid = "{TREADMILL}"\n\n'
        f"[programs]\ndir = '{(ROOT / 'config' / 'programs').as_posix()}'\n\n"
        '[drive]\nkind = "simulator"\n\n'
        '[sensors]\nsource = "simulator"\n\n'
        f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\n\n'
        f"[journal]\npath = '{(workdir / 'journal.sqlite').as_posix()}'\n\n"
        '[logging]\nlevel = "warning"\nformat = "json"\n'
    )
    log = workdir / "daemon.log"
    # Its sessions need a commissioned treadmill (docs/commissioning.md): the simulated one is
    # commissioned unattended first.
    subprocess.run(
        [
            sys.executable,
            "-m",
            "treadguard.controller.cli",
            "commission",
            "--simulated",
            "--config",
            str(cfg),
        ],
        cwd=ROOT,
        env=daemon_env(),
        stdout=subprocess.DEVNULL,
        check=True,
    )
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "treadguard.controller.cli", "run", "--config", str(cfg)],
            cwd=ROOT,
            env=daemon_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, log


def start_script(
    script: str, *args: object, stdout: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", script, *(str(a) for a in args)],
        cwd=ROOT,
        stdout=stdout,
        stderr=subprocess.DEVNULL,
    )


def terminate(proc: subprocess.Popen[Any] | None) -> int | None:
    """SIGTERM and wait; SIGKILL if it does not end in time. The exit code, if it ended."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_S)
            return None
    return proc.returncode


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc; 0.0 if unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_shares(pids: dict[str, int], before: dict[str, float], wall_s: float) -> dict[str, float]:
    """Each process's CPU use over ``wall_s`` since ``before``, in % of one core."""
    return {name: 100.0 * (cpu_s(pid) - before[name]) / wall_s for name, pid in pids.items()}


def count_drops(log: Path) -> dict[str, int]:
    """The daemon's own counts of dropped replies and events, from its last report."""
    drops = {"reply_dropped": 0, "event_dropped": 0, "rate_limited": 0}
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            record = json.loads(line)
            if record.get("event") == DROPS_EVENT:
                drops = {
                    "reply_dropped": int(record["dropped_replies"]),
                    "event_dropped": int(record["dropped_events"]),
                    "rate_limited": int(record["rate_limited"]),
                }
    return drops


def log_events(log: Path) -> dict[str, int]:
    """Every line of the daemon's log by its event name (level warning and above)."""
    counts: Counter[str] = Counter()
    text = log.read_text(errors="replace") if log.exists() else ""
    for line in text.splitlines():
        try:
            counts[str(json.loads(line).get("event"))] += 1
        except (ValueError, AttributeError):
            counts["(not json) " + line[:60]] += 1
    return dict(counts)


# ---------------------------------------------------------------------------- clients


def client(port: int, identifier: str, *, nodelay: bool = True) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY if nodelay else (),
    )


@dataclass
class Waiters:
    """Round trips in flight: a key -> the future that gets the perf_counter of its arrival."""

    pending: dict[str, asyncio.Future[float]] = field(default_factory=dict)

    def expect(self, key: str) -> asyncio.Future[float]:
        future = asyncio.get_running_loop().create_future()
        self.pending[key] = future
        return future

    def arrived(self, key: str, t: float) -> None:
        future = self.pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(t)


async def round_trip(
    mqtt: aiomqtt.Client,
    waiters: Waiters,
    topic: str,
    key: str,
    payload: bytes,
    wait: float = WAIT_S,
) -> float:
    """Milliseconds from the publish call to the arrival of the message answering ``key``."""
    arrival = waiters.expect(key)
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(wait):
            await mqtt.publish(topic, payload, qos=1)
            t1 = await arrival
    finally:
        waiters.pending.pop(key, None)
    return (t1 - t0) * 1e3


def heartbeat(command_id: str) -> bytes:
    return json.dumps({"id": command_id, "type": "heartbeat"}).encode()


class Tablet:
    """The benchmark's tablet: replies by id, the latest state, the estop events."""

    def __init__(self, mqtt: aiomqtt.Client) -> None:
        self.mqtt = mqtt
        self.replies = Waiters()
        self.reply_bodies: dict[str, Any] = {}
        self.state: dict[str, Any] = {}
        self.state_seen = asyncio.Event()
        self.online = asyncio.Event()
        self.estops: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self.flood_replies = 0  # replies to the flooder's commands (id f-*, or null)
        self.flood_rate_limited = 0  # of which: refused rate_limited
        self._n = 0

    async def subscribe(self) -> None:
        for name in ("reply", "state", "events", "availability"):
            await self.mqtt.subscribe(
                f"{PREFIX}/{name}", options=SubscribeOptions(qos=1, retainAsPublished=True)
            )

    async def read(self) -> None:
        reply_topic, state_topic = f"{PREFIX}/reply", f"{PREFIX}/state"
        events_topic, availability = f"{PREFIX}/events", f"{PREFIX}/availability"
        async for message in self.mqtt.messages:
            t = time.perf_counter()
            topic = message.topic.value
            payload = message.payload
            assert isinstance(payload, bytes)
            if topic == reply_topic:
                # The flood's replies are only counted: not parsed, to keep this loop light.
                if b'"ids"' in payload:  # coalesced rate_limited refusals
                    body = json.loads(payload)
                    for key in body["ids"]:
                        if key is None or key.startswith("f-"):
                            self.flood_replies += 1
                            self.flood_rate_limited += 1
                        elif key in self.replies.pending:
                            self.reply_bodies[key] = {**body, "id": key}
                            self.replies.arrived(key, t)
                    continue
                if payload.startswith((b'{"id":"f-', b'{"id":null')):
                    self.flood_replies += 1
                    self.flood_rate_limited += b'"rate_limited"' in payload
                    continue
                body = json.loads(payload)
                key = body.get("id")
                if key in self.replies.pending:
                    self.reply_bodies[key] = body
                    self.replies.arrived(key, t)
            elif topic == events_topic:
                body = json.loads(payload)
                if body.get("type") == "estop":
                    self.estops.put_nowait((t, body))
            elif topic == state_topic:
                self.state = json.loads(payload)
                self.state_seen.set()
            elif topic == availability and payload == b"online":
                self.online.set()

    def next_id(self, kind: str) -> str:
        self._n += 1
        return f"b-{kind}-{self._n}"

    async def command(
        self, kind: str, wait: float = WAIT_S, **fields: Any
    ) -> tuple[float, dict[str, Any]]:
        """Publish one command, wait for its reply: (round trip in ms, reply)."""
        command_id = self.next_id(kind)
        payload = json.dumps({"id": command_id, "type": kind, **fields}).encode()
        ms = await round_trip(self.mqtt, self.replies, f"{PREFIX}/cmd", command_id, payload, wait)
        return ms, self.reply_bodies.pop(command_id)

    async def wait_state(self, want: Callable[[dict[str, Any]], bool], bound: float) -> None:
        async with asyncio.timeout(bound):
            while not want(self.state):
                self.state_seen.clear()
                await self.state_seen.wait()


# ---------------------------------------------------------------------------- phases


async def interleaved(
    floor_client: aiomqtt.Client,
    floor: Waiters,
    tab: Tablet,
    samples: int,
    gap_s: float = 0.0,
    warmup: int = WARMUP,
) -> dict[str, list[float]]:
    """Floor and daemon round trips, alternating (warm-up first, not kept), each after
    ``gap_s`` of idleness."""
    out: dict[str, list[float]] = {"floor": [], "daemon": []}
    for i in range(-warmup, samples):
        key = f"e-{gap_s}-{i}"
        await asyncio.sleep(gap_s)
        floor_ms = await round_trip(floor_client, floor, "bench/x", key, key.encode())
        await asyncio.sleep(gap_s)
        daemon_ms, reply = await tab.command("heartbeat")
        assert reply.get("ok") is True, reply
        if i >= 0:
            out["floor"].append(floor_ms)
            out["daemon"].append(daemon_ms)
    return out


async def naive_round_trips(port: int, samples: int) -> list[float]:
    """The daemon round trip from a client with default sockets (Nagle on)."""
    async with client(port, "bench-naive", nodelay=False) as mqtt:
        await mqtt.subscribe(
            f"{PREFIX}/reply", options=SubscribeOptions(qos=1, retainAsPublished=True)
        )
        waiters = Waiters()

        async def read() -> None:
            async for message in mqtt.messages:
                payload = message.payload
                if isinstance(payload, bytes) and payload.startswith(b'{"id":"n-'):
                    waiters.arrived(json.loads(payload)["id"], time.perf_counter())

        reader = asyncio.create_task(read())
        try:
            out = []
            for i in range(-5, samples):
                key = f"n-{i}"
                ms = await round_trip(mqtt, waiters, f"{PREFIX}/cmd", key, heartbeat(key))
                if i >= 0:
                    out.append(ms)
            return out
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader


@dataclass
class Trials:
    stop_latency_ms: list[float] = field(default_factory=list)
    event_rtt_ms: list[float] = field(default_factory=list)
    reply_rtt_ms: list[float] = field(default_factory=list)
    lost_events: int = 0  # estop events not received within WAIT_S of the estop
    lost_replies: int = 0  # estop replies not received within WAIT_S
    failed: int = 0  # trials abandoned: a wait ran out (then estop, reset, and on)
    start_retries: int = 0
    reset_retries: int = 0  # resets refused (the belt not yet at standstill)
    unanswered: int = 0  # commands (start, reset) with no reply within a second
    aborted: bool = False


async def until_ok(tab: Tablet, out: Trials, kind: str, bound: float, **fields: Any) -> int:
    """Send a command until it is answered ok, within ``bound`` s; the number refused.
    A command not answered within a second is counted in ``out.unanswered`` and sent again."""
    refusals = 0
    async with asyncio.timeout(bound):
        while True:
            try:
                _, reply = await tab.command(kind, wait=1.0, **fields)
            except TimeoutError:
                out.unanswered += 1
                continue
            if reply.get("ok"):
                return refusals
            refusals += 1
            await asyncio.sleep(0.1)


async def estop_trials(tab: Tablet, n: int, rng: random.Random) -> Trials:
    out = Trials()
    for _ in range(n):
        try:
            await estop_trial(tab, out, rng)
        except TimeoutError:
            out.failed += 1
            # Whatever the state, end the session and clear the latch before the next trial.
            try:
                await until_ok(tab, out, "estop", RESET_S)
                await until_ok(tab, out, "reset", RESET_S)
            except TimeoutError:
                out.aborted = True  # the daemon no longer answers: no point going on
                break
    return out


async def estop_trial(tab: Tablet, out: Trials, rng: random.Random) -> None:
    await tab.wait_state(lambda s: s.get("state") == "idle", WAIT_S)
    out.start_retries += await until_ok(
        tab, out, "start_session", WAIT_S, user="bench", program="first_session"
    )
    # The countdown (3 s) arms the stop inputs, then the belt runs.
    await tab.wait_state(lambda s: s.get("state") == "running", 10.0)
    await asyncio.sleep(rng.uniform(0.0, 0.2))
    while not tab.estops.empty():
        tab.estops.get_nowait()
    command_id = tab.next_id("estop")
    reply_arrival = tab.replies.expect(command_id)
    t0 = time.perf_counter()
    await tab.mqtt.publish(
        f"{PREFIX}/cmd", json.dumps({"id": command_id, "type": "estop"}).encode(), qos=1
    )
    # The event and the reply are waited for separately: under overload either can be lost.
    try:
        async with asyncio.timeout(WAIT_S):
            t_event, event = await tab.estops.get()
    except TimeoutError:
        out.lost_events += 1
    else:
        out.stop_latency_ms.append(float(event["stop_latency_ms"]))
        out.event_rtt_ms.append((t_event - t0) * 1e3)
    try:
        async with asyncio.timeout(max(0.0, t0 + WAIT_S - time.perf_counter())):
            t_reply = await reply_arrival
    except TimeoutError:
        out.lost_replies += 1
    else:
        out.reply_rtt_ms.append((t_reply - t0) * 1e3)
    finally:
        tab.replies.pending.pop(command_id, None)
        tab.reply_bodies.pop(command_id, None)
    # Bounded: if the tablet never sees the latch, the trial counts as failed and
    # estop_trials sends the stop again before the next one.
    await tab.wait_state(lambda s: s.get("state") == "estop", WAIT_S)
    out.reset_retries += await until_ok(tab, out, "reset", RESET_S)
    await tab.wait_state(lambda s: s.get("state") == "idle", WAIT_S)


async def heartbeats(tab: Tablet) -> None:
    """The tablet's presence (SR-12): one heartbeat a second, replies not awaited."""
    while True:
        command_id = tab.next_id("hb")
        await tab.mqtt.publish(f"{PREFIX}/cmd", heartbeat(command_id), qos=1)
        await asyncio.sleep(1.0)


def trial_figures(t: Trials) -> dict[str, Any]:
    figures: dict[str, Any] = {"trials": len(t.stop_latency_ms)}
    figures["lost_estop_events"] = t.lost_events
    figures["lost_estop_replies"] = t.lost_replies
    figures["failed"] = t.failed
    figures["start_retries"] = t.start_retries
    figures["reset_retries"] = t.reset_retries
    figures["unanswered_commands"] = t.unanswered
    figures["aborted"] = t.aborted
    for name, values in (
        ("stop_latency_ms", t.stop_latency_ms),
        ("estop_to_event_ms", t.event_rtt_ms),
        ("estop_to_reply_ms", t.reply_rtt_ms),
    ):
        if values:
            figures[name] = summary(values)
    # A few dozen trials: every value, in trial order, for a look at the outliers.
    figures["values_ms"] = {
        "stop_latency": [round(v, 3) for v in t.stop_latency_ms],
        "estop_to_event": [round(v, 3) for v in t.event_rtt_ms],
        "estop_to_reply": [round(v, 3) for v in t.reply_rtt_ms],
    }
    return figures


async def measure(
    args: argparse.Namespace, port: int, workdir: Path, log: Path, pids: dict[str, int]
) -> dict[str, Any]:
    rng = random.Random(11)
    figures: dict[str, Any] = {}
    async with (
        client(port, "bench-tablet") as tablet_client,
        client(port, "bench-floor") as floor_client,
    ):
        tab = Tablet(tablet_client)
        floor = Waiters()

        async def read_floor() -> None:
            async for message in floor_client.messages:
                payload = message.payload
                if isinstance(payload, bytes):
                    floor.arrived(payload.decode(), time.perf_counter())

        echo = start_script(ECHO_SCRIPT, port, "bench/x", "bench/y")
        flooder: subprocess.Popen[bytes] | None = None
        try:
            async with asyncio.TaskGroup() as tg:
                readers = [tg.create_task(tab.read()), tg.create_task(read_floor())]
                await floor_client.subscribe("bench/y", qos=1)
                await tab.subscribe()
                async with asyncio.timeout(START_S):
                    await tab.online.wait()
                    while True:  # the echo is ready when it answers
                        try:
                            await round_trip(floor_client, floor, "bench/x", "ping", b"ping", 0.5)
                            break
                        except TimeoutError:
                            continue
                print(f"daemon online, echo ready; {args.samples} samples of each kind ...")
                rtt = await interleaved(floor_client, floor, tab, args.samples)
                figures["floor"] = summary(rtt["floor"])
                figures["daemon"] = summary(rtt["daemon"])

                if args.idle_samples > 0:
                    print(f"{args.idle_samples} samples of each after {IDLE_GAP_S} s idle ...")
                    idle = await interleaved(
                        floor_client, floor, tab, args.idle_samples, IDLE_GAP_S, warmup=5
                    )
                    figures["floor_after_idle"] = summary(idle["floor"])
                    figures["daemon_after_idle"] = summary(idle["daemon"])

                if args.naive_samples > 0:
                    print(f"{args.naive_samples} round trips with default sockets ...")
                    figures["daemon_naive_client"] = summary(
                        await naive_round_trips(port, args.naive_samples)
                    )

                beat = tg.create_task(heartbeats(tab))
                print(f"{args.calm_trials} emergency-stop trials without load ...")
                before = count_drops(log)
                cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
                t_calm = time.perf_counter()
                calm = trial_figures(await estop_trials(tab, args.calm_trials, rng))
                calm["cpu_percent"] = cpu_shares(pids, cpu_before, time.perf_counter() - t_calm)
                after = count_drops(log)
                figures["estop_calm"] = {
                    **calm,
                    "daemon_log": {k: after[k] - before[k] for k in after},
                }

                flood_s = args.trials * 8.0 + 10.0
                replies_before = tab.flood_replies
                limited_before = tab.flood_rate_limited
                flood_out = workdir / "flood.json"
                with flood_out.open("wb") as out:
                    flooder = start_script(
                        FLOOD_SCRIPT,
                        port,
                        f"{PREFIX}/cmd",
                        args.flood_rate,
                        flood_s,
                        int(args.flood_rate * flood_s),
                        stdout=out,
                    )
                await asyncio.sleep(1.0)  # the flood reaches its rate
                before = count_drops(log)
                pids["flooder"] = flooder.pid
                cpu_before = {name: cpu_s(pid) for name, pid in pids.items()}
                print(f"{args.trials} emergency-stop trials under a flood ...")
                t_flood = time.perf_counter()
                flood_trials = await estop_trials(tab, args.trials, rng)
                in_trials_s = time.perf_counter() - t_flood
                flood_cpu = cpu_shares(pids, cpu_before, in_trials_s)
                terminate(flooder)
                flooder = None
                await asyncio.sleep(1.0)  # replies still in flight arrive
                after = count_drops(log)
                sent = json.loads(flood_out.read_text() or "{}")
                figures["estop_flood"] = trial_figures(flood_trials)
                figures["flood"] = {
                    **sent,
                    "rate_asked": args.flood_rate,
                    "rate_sent": sent.get("sent", 0) / max(sent.get("elapsed_s", 0.0), 1e-9),
                    "trials_s": in_trials_s,
                    "cpu_percent": flood_cpu,
                    "flood_replies_seen": tab.flood_replies - replies_before,
                    "flood_rate_limited_seen": tab.flood_rate_limited - limited_before,
                    "daemon_log": {k: after[k] - before[k] for k in after},
                }
                beat.cancel()
                for reader in readers:
                    reader.cancel()
        finally:
            terminate(flooder)
            terminate(echo)
    return figures


# ---------------------------------------------------------------------------- report


def report(figures: dict[str, Any]) -> None:
    floor, daemon = figures["floor"], figures["daemon"]
    print(row("floor: aiomqtt echo, QoS 1, TCP_NODELAY", floor, "ms"))
    print(row("daemon: heartbeat -> reply, QoS 1", daemon, "ms"))
    ratio = figures["ratio_daemon_floor"]
    print(f"daemon / floor: p50 {ratio['p50']:.2f}x, p99 {ratio['p99']:.2f}x (target p99 <= 2x)")
    if "floor_after_idle" in figures:
        print(row(f"floor, each after {IDLE_GAP_S} s idle", figures["floor_after_idle"], "ms"))
        print(row(f"daemon, each after {IDLE_GAP_S} s idle", figures["daemon_after_idle"], "ms"))
        idle = figures["ratio_daemon_floor_after_idle"]
        print(f"  after idle, daemon / floor: p50 {idle['p50']:.2f}x, p99 {idle['p99']:.2f}x")
    if "daemon_naive_client" in figures:
        print(row("daemon, naive client (no TCP_NODELAY)", figures["daemon_naive_client"], "ms"))
    for phase in ("estop_calm", "estop_flood"):
        t = figures[phase]
        print(
            f"{phase}: {t['trials']} trials measured, {t['failed']} failed, "
            f"{t['lost_estop_events']} estop events and {t['lost_estop_replies']} estop replies "
            f"lost, {t['unanswered_commands']} commands unanswered in 1 s, "
            f"{t['start_retries']} starts and {t['reset_retries']} resets refused"
            + (" - ABORTED: the daemon stopped answering" if t["aborted"] else "")
        )
        for name, label in (
            ("stop_latency_ms", "  stop_latency_ms (daemon's own)"),
            ("estop_to_event_ms", "  estop published -> estop event"),
            ("estop_to_reply_ms", "  estop published -> its reply"),
        ):
            if name in t:
                print(row(label, t[name], "ms"))
    f = figures["flood"]
    print(
        f"flood: {f.get('sent', 0)} sent at {f['rate_sent']:.0f}/s "
        f"({f.get('heartbeats', 0)} heartbeats, {f.get('invalid', 0)} invalid), "
        f"{f['flood_replies_seen']} replies seen "
        f"({f['flood_rate_limited_seen']} rate_limited); daemon log: {f['daemon_log']}"
    )
    print(f"daemon log, all lines by event: {figures['daemon_log_events']}")
    for phase, cpu in (("calm", figures["estop_calm"]["cpu_percent"]), ("flood", f["cpu_percent"])):
        shares = ", ".join(f"{name} {share:.0f}" for name, share in cpu.items())
        print(f"CPU during the {phase} trials, % of one core: {shares}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--idle-samples", type=int, default=100)
    parser.add_argument("--naive-samples", type=int, default=200)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--calm-trials", type=int, default=5)
    parser.add_argument("--flood-rate", type=float, default=1000.0)
    args = parser.parse_args()
    load_start = os.getloadavg()[0]  # save() records the load at the end
    speed_s = python_speed_s()
    print(f"machine: {machine()}; 10-million-step loop {speed_s * 1e3:.0f} ms")
    port = free_port()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-mqtt-") as tmp:
        workdir = Path(tmp)
        broker = start_broker(workdir, port)
        daemon: subprocess.Popen[bytes] | None = None
        try:
            daemon, log = start_daemon(workdir, port)
            try:
                pids = {"daemon": daemon.pid, "broker": broker.pid, "benchmark": os.getpid()}
                figures = asyncio.run(measure(args, port, workdir, log, pids))
            except BaseException:
                tail = log.read_text(errors="replace").splitlines()[-20:]
                print("the daemon's log, last lines:", *tail, sep="\n  ", file=sys.stderr)
                print(f"by event: {log_events(log)}", file=sys.stderr)
                raise
            figures["daemon_log_total"] = count_drops(log)
            figures["daemon_log_events"] = log_events(log)
        finally:
            daemon_rc = terminate(daemon)
            terminate(broker)
    figures["ratio_daemon_floor"] = {
        k: figures["daemon"][k] / figures["floor"][k] for k in ("p50", "p99")
    }
    if "floor_after_idle" in figures:
        figures["ratio_daemon_floor_after_idle"] = {
            k: figures["daemon_after_idle"][k] / figures["floor_after_idle"][k]
            for k in ("p50", "p99")
        }
    figures["daemon_exit_code"] = daemon_rc
    figures["wall_s"] = time.perf_counter() - t_start
    report(figures)
    path = save(
        "mqtt",
        {
            "unit": "ms",
            "python_speed_s": speed_s,
            "load_1min_start": load_start,
            "samples": args.samples,
            "target_p99_ratio": 2.0,
            **figures,
        },
    )
    print(f"saved {path} ({figures['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
