#!/usr/bin/env python3
"""Soak test for wshub, black-box: starts the real hub binary and attacks it for a bounded time.

Honest clients (anonymous and JWT users) connect, subscribe, resume with since/epoch and
disconnect at random while publishers POST /notify (single events, batches at the documented
limit, multi-target events to users, roles and channels). Hostile clients run alongside:
slowloris (idle TCP, half-sent headers), resume spam, frame floods, garbage / binary / oversized /
non-UTF-8 frames, presence join storms and sockets that never read.

At the end every honest client must have received exactly what the protocol promises it:
- no loss: every event published to one of its streams while it was covered (from its first
  hub:connected / hub:subscribed, through every resume answered `recovered: true`, up to the
  final fence event) was delivered;
- no duplicate, except where docs/PROTOCOL.md allows one (a replay may repeat, under another
  stream, an event the client already got through a different stream: clients dedupe by id);
- no leak: an event only arrives through a stream it was published to and the client is in;
- no honest client closed by the hub, no hub:error to an honest request.
It also checks that the hub stayed alive, its RSS stayed under a bound it prints, its file
descriptors returned to the baseline after every client left, idle pre-upgrade sockets were
closed, and close codes to hostile clients were the documented ones (delivered as close frames).

Hostile clients may be refused in any documented way (HTTP 429/503, hub:error, the close codes
of docs/PROTOCOL.md); that is counted, never a failure.

Usage: scripts/soak.sh [--quick | --ci] [--duration S] [--honest N] [--hub-bin PATH]
                       [--jwt-secret S] [--rss-limit-mb M] [-- extra hub flags...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import collections
import hashlib
import hmac
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

# Close codes docs/PROTOCOL.md documents; a hostile client refused with one of these is fine.
DOCUMENTED_CLOSES = {1000, 1001, 1007, 1008, 1009, 4001, 4002, 4003, 4004, 4005}
# docs/PROTOCOL.md: /notify batches hold at most this many notifications.
MAX_BATCH = 1000
# Namespaces the hub is started with: a presence room for join storms.
NAMESPACES = '[[namespace]]\nprefix = "room:"\npresence = true\n'
ROLES = ["staff", "viewer", "ops"]


def log(*parts: object) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}]", *parts, flush=True)


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class Plan:
    """How big and how long: derived from the mode and the command line."""

    duration: float
    honest: int
    users: int
    channels: int
    slowloris: int
    spam: int
    floods: int
    garbage: int
    storm_users: int
    never_read: int
    bursty: int
    publish_rate: float  # single /notify requests per second, all kinds together
    batch_every: float  # seconds between batches of MAX_BATCH notifications


def make_plan(args: argparse.Namespace) -> Plan:
    if args.ci:
        plan = Plan(60, 150, 40, 12, 30, 4, 3, 6, 40, 4, 2, 12, 15)
    elif args.quick:
        plan = Plan(60, 600, 150, 30, 100, 10, 5, 10, 150, 10, 4, 25, 10)
    else:
        plan = Plan(600, 2000, 500, 40, 200, 20, 8, 20, 300, 20, 6, 40, 15)
    if args.duration:
        plan.duration = args.duration
    if args.honest:
        plan.honest = args.honest
        plan.users = max(2, args.honest // 4)
    return plan


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 minute, 600 honest clients")
    p.add_argument("--ci", action="store_true", help="60 s of load, 150 honest clients (scripts/test.sh)")
    p.add_argument("--duration", type=float, help="seconds of load (default 600; --quick 60)")
    p.add_argument("--honest", type=int, help="honest clients (default 2000; --quick 600)")
    p.add_argument("--hub-bin", help="hub binary (default target/release/wshub, else target/debug/wshub)")
    p.add_argument("--jwt-secret", help="HS256 secret for the hub and the clients' tokens (default: random)")
    p.add_argument("--history-size", type=int, default=5000, help="--history-size given to the hub (default 5000)")
    p.add_argument("--rss-limit-mb", type=float, default=0, help="hub RSS bound in MiB (default: 256 + 64 KiB per client)")
    p.add_argument("--source-ips", type=int, default=40, help="honest clients use 127.0.0.2 .. 127.0.0.(N+1)")
    p.add_argument("--slowloris-deadline", type=float, default=30.0,
                   help="seconds after which idle pre-upgrade sockets must have been closed (0: do not check)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--inject", choices=["loss", "duplicate", "leak"],
                   help="self-test: the clients pretend one event in 1,000 was lost, repeated or leaked; "
                        "the run must then fail with that violation")
    p.add_argument("--keep-log", action="store_true", help="keep the hub's stderr log")
    p.add_argument("hub_args", nargs=argparse.REMAINDER, help="after --: extra flags for the hub")
    args = p.parse_args()
    if args.hub_args and args.hub_args[0] == "--":
        args.hub_args = args.hub_args[1:]
    return args


# ---------------------------------------------------------------------------------------------
# The hub process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HubProcess:
    """The real binary on a free loopback port; RSS and fd count from /proc."""

    def __init__(self, binary: str, secret: str, history_size: int, extra: list[str], workdir: str):
        self.port = free_port()
        ns_path = os.path.join(workdir, "namespaces.toml")
        with open(ns_path, "w") as f:
            f.write(NAMESPACES)
        self.log_path = os.path.join(workdir, "hub.log")
        self.argv = [binary, "--addr", f"127.0.0.1:{self.port}", "--jwt-secret", secret, "--config", ns_path,
                     "--history-size", str(history_size), *extra]
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, stdout=self.log_file, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        self.peak_rss = 0

    async def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hub exited with {self.proc.returncode}; log: {self.tail()}")
            try:
                status, _, _ = await http_request(self.port, "GET", "/health")
                if status == 200:
                    return
            except OSError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("hub did not answer /health in time")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return -1

    def tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log_file.close()


# ---------------------------------------------------------------------------------------------
# HTTP/1.1 and JWT, small enough to need no client library


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def http_request(port: int, method: str, path: str, body: bytes | None = None,
                       headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(encode_request(method, path, body, headers, close=True))
        await writer.drain()
        return await asyncio.wait_for(read_response(reader), 30)
    finally:
        writer.close()


def encode_request(method: str, path: str, body: bytes | None, headers: dict[str, str] | None,
                   close: bool = False) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class KeepAlive:
    """A keep-alive HTTP connection for one publisher; reconnects after an error."""

    def __init__(self, port: int, local_ip: str):
        self.port, self.local_ip = port, local_ip
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes, headers: dict[str, str]):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port,
                                                                     local_addr=(self.local_ip, 0))
        try:
            self.writer.write(encode_request(method, path, body, headers))
            await self.writer.drain()
            status, h, b = await asyncio.wait_for(read_response(self.reader), 60)
            if h.get("connection", "").lower() == "close":
                self.close()
            return status, h, b
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(secret: str, claims: dict) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


# ---------------------------------------------------------------------------------------------
# Shared state: the ledger of accepted events, counters, violations


@dataclass
class Published:
    seq: int
    targets: tuple[str, ...]  # streams; ("broadcast",) for an untargeted event


class Soak:
    def __init__(self, args: argparse.Namespace, plan: Plan, hub: HubProcess, secret: str, rng: random.Random):
        self.args, self.plan, self.hub, self.secret, self.rng = args, plan, hub, secret, rng
        self.port = hub.port
        self.ledger: dict[str, Published] = {}
        self.unknown_outcome = 0  # publishes whose answer never came (not counted as accepted)
        self.notify_latency: list[float] = []  # seconds per /notify request, as the publisher saw it
        self.violations: list[tuple[str, str]] = []  # (kind, first-hand detail)
        self.counts: collections.Counter = collections.Counter()
        self.hostile: collections.Counter = collections.Counter()
        self.ending = asyncio.Event()  # load phase over: publishers and hostile clients stop
        self.finish = asyncio.Event()  # fences delivered: honest clients close
        self.epoch: str | None = None
        self.channels = [f"news:{i}" for i in range(plan.channels)]
        self.burst_channels = [f"burst:{i}" for i in range(4)]
        self.archive_channels = [f"archive:{i}" for i in range(4)]
        self.fence_seq = 0
        self.api_headers: dict[str, str] = {}
        for i, a in enumerate(args.hub_args):
            if a == "--api-key" and i + 1 < len(args.hub_args):
                self.api_headers["X-API-Key"] = args.hub_args[i + 1]
            elif a.startswith("--api-key="):
                self.api_headers["X-API-Key"] = a.split("=", 1)[1]

    def violation(self, text: str, kind: str | None = None) -> None:
        """Records a broken promise; `kind` groups many of one sort in the summary."""
        self.violations.append((kind or text, text))

    def honest_ip(self, i: int) -> str:
        return f"127.0.0.{2 + i % max(1, self.args.source_ips)}"

    def hostile_ip(self, i: int) -> str:
        # Hostile clients have addresses of their own, so per-IP limits fall on them.
        return f"127.0.1.{1 + i % 50}"

    def ws_uri(self, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.port}/ws" + (f"?{query}" if query else "")

    def token(self, user: str, roles: list[str], ttl: int = 7200) -> str:
        return jwt(self.secret, {"sub": user, "roles": roles, "exp": int(time.time()) + ttl})


# ---------------------------------------------------------------------------------------------
# Publishers


def targets_of(item: dict) -> tuple[str, ...]:
    streams: list[str] = []
    for fld, prefix in (("channel", ""), ("user", "user:"), ("role", "role:")):
        v = item.get(fld)
        if v is None:
            continue
        for name in v if isinstance(v, list) else [v]:
            s = f"{prefix}{name}"
            if s not in streams:
                streams.append(s)
    return tuple(streams) or ("broadcast",)


def random_notification(soak: Soak, n: int) -> dict:
    rng = soak.rng
    item: dict = {"type": "soak", "message": f"m{n}", "data": {"n": n, "pad": "x" * rng.randint(0, 64)}}
    kind = rng.random()
    users = [f"u{rng.randrange(soak.plan.users)}" for _ in range(rng.randint(1, 4))]
    if kind < 0.04:
        pass  # broadcast
    elif kind < 0.40:
        item["user"] = users[0] if len(users) == 1 else users
    elif kind < 0.50:
        item["role"] = rng.choice(ROLES)
    elif kind < 0.85:
        item["channel"] = rng.sample(soak.channels, rng.randint(1, 3))
    else:  # multi-target across kinds
        item["channel"] = rng.choice(soak.channels)
        item["user"] = users
        item["role"] = rng.sample(ROLES, rng.randint(1, 2))
    return item


async def post_notify(soak: Soak, conn: KeepAlive, items: list[dict], batch: bool) -> None:
    body = json.dumps(items if batch else items[0]).encode()
    headers = {"Content-Type": "application/json", **soak.api_headers}
    for attempt in range(20):
        try:
            t0 = time.monotonic()
            status, h, b = await conn.request("POST", "/notify", body, headers)
            soak.notify_latency.append(time.monotonic() - t0)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as e:
            # The event may or may not have been accepted: its id is unknown, so it is left out
            # of the checks (a client receiving it counts as "unknown", not as a leak).
            soak.unknown_outcome += len(items)
            soak.counts["publish_errors"] += 1
            log(f"publish error: {e!r}")
            return
        if status == 200:
            answers = json.loads(b)
            answers = answers if isinstance(answers, list) else [answers]
            for item, ans in zip(items, answers):
                soak.ledger[ans["id"]] = Published(ans["seq"], targets_of(item))
            soak.counts["publish_requests"] += 1
            return
        if status in (429, 503):
            soak.counts[f"publish_{status}"] += 1
            await asyncio.sleep(min(5.0, float(h.get("retry-after", "0.5") or 0.5)))
            continue
        soak.violation(f"publisher: /notify answered {status} {b[:200]!r} to a valid body")
        return
    soak.violation("publisher: /notify refused the same valid body 20 times")


async def publisher(soak: Soak, index: int, rate: float) -> None:
    conn = KeepAlive(soak.port, soak.honest_ip(index))
    n = 0
    try:
        while not soak.ending.is_set():
            n += 1
            k = soak.rng.randint(1, 5) if soak.rng.random() < 0.2 else 1
            items = [random_notification(soak, n * 10 + j) for j in range(k)]
            await post_notify(soak, conn, items, batch=k > 1)
            await asyncio.sleep(soak.rng.expovariate(rate))
    finally:
        conn.close()


async def batch_publisher(soak: Soak) -> None:
    """Batches at the documented limit, to the burst channels and users: a burst must not
    disconnect clients that read."""
    conn = KeepAlive(soak.port, soak.honest_ip(7))
    n = 0
    try:
        # First the archive: large events in quiet channels that nobody honest reads, the
        # history the resume hoarders ask for again and again (3,000 events of about 1 KiB).
        for b in range(6):
            items = [{"type": "archive", "channel": soak.archive_channels[j % len(soak.archive_channels)],
                      "data": {"b": b, "j": j, "pad": "a" * 1000}} for j in range(500)]
            await post_notify(soak, conn, items, batch=True)
        await asyncio.sleep(3)
        while not soak.ending.is_set():
            n += 1
            items = []
            # Most of the batch goes to one burst channel: its subscribers get hundreds of
            # frames at once, which a client that reads must survive.
            burst = soak.rng.choice(soak.burst_channels)
            for j in range(MAX_BATCH):
                item = {"type": "batch", "message": "", "data": {"b": n, "j": j}}
                if j % 5 < 3:
                    item["channel"] = burst
                elif j % 5 == 3:
                    item["user"] = f"u{soak.rng.randrange(soak.plan.users)}"
                else:
                    item["channel"] = soak.rng.choice(soak.channels)
                items.append(item)
            await post_notify(soak, conn, items, batch=True)
            soak.counts["batches"] += 1
            try:
                await asyncio.wait_for(soak.ending.wait(), soak.plan.batch_every)
            except asyncio.TimeoutError:
                pass
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------
# Honest clients


@dataclass
class Delivery:
    id: str
    label: str
    replay: bool
    session: int
    entitled: bool


@dataclass
class Honest:
    index: int
    user: str | None
    roles: list[str]
    ip: str
    epoch: str | None = None
    auto_since: int | None = None
    chan_since: dict[str, int] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    # (group, start, end): the client is owed every event of the group's streams with
    # start < seq <= end. group is "auto" or a channel name.
    coverage: list[tuple[str, int, int]] = field(default_factory=list)
    sessions: int = 0
    unrecovered: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    fenced: asyncio.Event = field(default_factory=asyncio.Event)

    def auto_streams(self) -> set[str]:
        s = {"broadcast"}
        if self.user:
            s.add(f"user:{self.user}")
            s.update(f"role:{r}" for r in self.roles)
        return s


class Session:
    """One connection of an honest client."""

    def __init__(self, soak: Soak, client: Honest, ws, resume: bool):
        self.soak, self.c, self.ws, self.resume = soak, client, ws, resume
        self.no = client.sessions
        self.max_seq = 0
        self.open: dict[str, int] = {}  # group -> coverage start
        self.subscribed: set[str] = set()
        self.pending: dict[str, int | None] = {}  # channel -> since asked, answer not yet here
        self.replay_left = 0
        self.idle = asyncio.Event()  # no answer or replay outstanding
        self.idle.set()
        self.fences_needed: set[str] = set()

    def close_groups(self, end: int) -> None:
        for group, start in self.open.items():
            if end > start:
                self.c.coverage.append((group, start, end))
        self.open.clear()

    def update_idle(self) -> None:
        if not self.pending and self.replay_left == 0:
            self.idle.set()
        else:
            self.idle.clear()

    async def subscribe(self, channel: str) -> None:
        msg: dict = {"type": "subscribe", "channel": channel}
        since = self.c.chan_since.get(channel)
        if self.resume and since is not None and self.c.epoch:
            msg.update(since=since, epoch=self.c.epoch)
        self.pending[channel] = msg.get("since")
        self.subscribed.add(channel)
        self.update_idle()
        await self.ws.send(json.dumps(msg))

    async def unsubscribe(self, channel: str) -> None:
        await asyncio.wait_for(self.idle.wait(), 30)
        self.pending[f"-{channel}"] = None
        self.update_idle()
        await self.ws.send(json.dumps({"type": "unsubscribe", "channel": channel}))

    def handle(self, text: str) -> None:
        msg = json.loads(text)
        kind = msg.get("type", "")
        if kind == "hub:subscribed":
            ch = msg["channel"]
            since = self.pending.pop(ch, None)
            recovered = msg.get("recovered")
            if since is not None and recovered:
                start = since
            else:
                if since is not None:
                    self.c.unrecovered += 1
                    self.soak.counts["unrecovered_resumes"] += 1
                start = msg["seq"]
            self.open[ch] = start
            self.c.chan_since[ch] = max(self.c.chan_since.get(ch, 0), msg["seq"])
            self.replay_left += msg.get("replayed", 0) or 0
            self.update_idle()
        elif kind == "hub:unsubscribed":
            ch = msg["channel"]
            self.pending.pop(f"-{ch}", None)
            self.subscribed.discard(ch)
            start = self.open.pop(ch, None)
            if start is not None and self.max_seq > start:
                self.c.coverage.append((ch, start, self.max_seq))
            self.update_idle()
        elif kind == "hub:error":
            self.soak.violation(f"honest client {self.c.index}: hub:error {msg}", f"honest client got hub:error {msg.get('code')}")
            self.pending.pop(msg.get("channel", ""), None)
            self.update_idle()
        elif kind.startswith("hub:"):
            pass  # presence, pong
        elif "seq" in msg and "id" in msg:
            self.event(msg)
        else:
            self.soak.violation(f"honest client {self.c.index}: unexpected frame {text[:200]}")

    def event(self, msg: dict) -> None:
        seq, label = msg["seq"], msg.get("channel", "")
        replay = self.replay_left > 0
        if replay:
            self.replay_left -= 1
            self.update_idle()
        entitled = label in self.c.auto_streams() or label in self.subscribed
        inject = self.soak.args.inject
        if inject and msg.get("type") != "fence" and self.soak.rng.random() < 0.001:
            # Self-test of the checks: pretend the hub lost, repeated or leaked this event.
            self.soak.counts[f"injected_{inject}"] += 1
            if inject == "loss":
                return
            if inject == "duplicate":
                self.c.deliveries.append(Delivery(msg["id"], label, False, self.no, entitled))
            if inject == "leak":
                label, entitled = "user:somebody-else", False
        self.c.deliveries.append(Delivery(msg["id"], label, replay, self.no, entitled))
        self.soak.counts["deliveries"] += 1
        self.max_seq = max(self.max_seq, seq)
        if label in self.c.auto_streams():
            self.c.auto_since = max(self.c.auto_since or 0, seq)
        else:
            self.c.chan_since[label] = max(self.c.chan_since.get(label, 0), seq)
        if msg.get("type") == "fence":
            self.fences_needed.discard(msg.get("message", ""))
            if not self.fences_needed:
                self.c.fenced.set()


async def honest_client(soak: Soak, c: Honest) -> None:
    rng = soak.rng
    await asyncio.sleep(rng.uniform(0, 5))
    stays = rng.random() < 0.3  # some stay for the whole run
    while True:
        ending = soak.ending.is_set()
        resume = c.epoch is not None and (ending or rng.random() < 0.85)
        query = []
        if c.user:
            query.append(f"token={soak.token(c.user, c.roles)}")
        if resume and c.auto_since is not None:
            query.append(f"since={c.auto_since}&epoch={c.epoch}")
        c.sessions += 1
        try:
            async with connect(soak.ws_uri("&".join(query)), ping_interval=None, open_timeout=30,
                               close_timeout=5, max_size=2**20, max_queue=None,
                               local_addr=(c.ip, 0)) as ws:
                await run_session(soak, c, ws, resume, stays)
        except InvalidStatus as e:
            soak.counts[f"honest_refused_{e.response.status_code}"] += 1
            await asyncio.sleep(rng.uniform(0.5, 2))
        except ConnectionClosed:
            pass  # closed while sending: the reader has recorded it
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as e:
            soak.counts["honest_connect_errors"] += 1
            if soak.counts["honest_connect_errors"] <= 5:
                log(f"honest connect error: {e!r}")
            await asyncio.sleep(rng.uniform(0.5, 2))
        if soak.finish.is_set():
            return
        if not soak.ending.is_set():
            await asyncio.sleep(rng.uniform(0.05, 3))


async def run_session(soak: Soak, c: Honest, ws, resume: bool, stays: bool) -> None:
    rng = soak.rng
    first = json.loads(await asyncio.wait_for(ws.recv(), 30))
    if first.get("type") != "hub:connected":
        soak.violation(f"honest client {c.index}: first frame {first}")
        return
    s = Session(soak, c, ws, resume)
    if c.epoch is not None and first["epoch"] != c.epoch:
        soak.violation(f"honest client {c.index}: epoch changed from {c.epoch} to {first['epoch']}")
    c.epoch = first["epoch"]
    asked_since = resume and c.auto_since is not None
    if asked_since and first.get("recovered"):
        s.open["auto"] = c.auto_since or 0
    else:
        if asked_since:
            c.unrecovered += 1
            soak.counts["unrecovered_resumes"] += 1
        s.open["auto"] = first["seq"]
    s.replay_left = first.get("replayed", 0) or 0
    s.update_idle()
    if not (asked_since and first.get("recovered")):
        c.auto_since = first["seq"]  # a new start: nothing before it is owed
    # A client's channels: a few news channels, sometimes a burst channel and the presence room.
    chans = rng.sample(soak.channels, rng.randint(1, 4))
    if rng.random() < 0.3:
        chans.append(rng.choice(soak.burst_channels))
    if c.user and rng.random() < 0.3:
        chans.append("room:lobby")
    for ch in chans:
        await s.subscribe(ch)
    reader = asyncio.create_task(read_frames(soak, c, s))
    try:
        if soak.ending.is_set() or stays:
            await final_phase(soak, c, s, reader)
            return
        life = min(rng.expovariate(1 / 20), soak.plan.duration)
        deadline = time.monotonic() + life
        while time.monotonic() < deadline and not reader.done() and not soak.ending.is_set():
            await asyncio.wait([reader], timeout=min(2.0, max(0.0, deadline - time.monotonic())))
            if rng.random() < 0.05 and not reader.done():  # change channels now and then
                if s.subscribed and rng.random() < 0.5:
                    ch = rng.choice(sorted(s.subscribed))
                    if not ch.startswith("-") and ch in s.open:
                        await s.unsubscribe(ch)
                else:
                    ch = rng.choice(soak.channels)
                    if ch not in s.subscribed:
                        await s.subscribe(ch)
        if reader.done():
            return  # closed by the hub: recorded by the reader
        if soak.ending.is_set():
            await final_phase(soak, c, s, reader)
            return
        # Leave at random, but not in the middle of a replay (its end would be unknown).
        try:
            await asyncio.wait_for(s.idle.wait(), 30)
        except asyncio.TimeoutError:
            soak.violation(f"honest client {c.index}: answers or replays still missing after 30 s")
        s.close_groups(s.max_seq)
        if rng.random() < 0.3:
            ws.transport.abort()  # vanish without a close frame
        else:
            await ws.close()
    finally:
        reader.cancel()


async def read_frames(soak: Soak, c: Honest, s: Session) -> None:
    try:
        async for text in s.ws:
            if isinstance(text, bytes):
                soak.violation(f"honest client {c.index}: binary frame from the hub")
                continue
            s.handle(text)
    except ConnectionClosed:
        pass
    if s.open and not soak.finish.is_set():
        # The hub closed an honest client: never right outside shutdown.
        code = s.ws.close_code
        soak.violation(f"honest client {c.index} (user {c.user}) closed by the hub: code {code} {s.ws.close_reason!r}",
                       f"honest client closed by the hub with {code} {s.ws.close_reason!r}")
        soak.counts[f"honest_closed_{code}"] += 1
        s.close_groups(s.max_seq)


async def final_phase(soak: Soak, c: Honest, s: Session, reader: asyncio.Task) -> None:
    """Stay connected until the fences came, then leave."""
    try:
        await asyncio.wait_for(s.idle.wait(), 60)
    except asyncio.TimeoutError:
        soak.violation(f"honest client {c.index}: answers or replays still missing after 60 s")
    s.fences_needed = {"broadcast"} | ({"channels"} if any(ch in soak.channels for ch in s.subscribed) else set())
    c.ready.set()
    finish = asyncio.create_task(soak.finish.wait())
    await asyncio.wait([reader, finish], return_when=asyncio.FIRST_COMPLETED)
    finish.cancel()
    if reader.done():
        return  # closed by the hub (recorded): reconnect and resume
    s.close_groups(max(s.max_seq, soak.fence_seq))
    await s.ws.close()


# ---------------------------------------------------------------------------------------------
# Hostile clients


async def hostile_ws(soak: Soak, i: int, query: str = "", **kw):
    return await connect(soak.ws_uri(query), ping_interval=None, open_timeout=30, close_timeout=5,
                         max_size=2**22, local_addr=(soak.hostile_ip(i), 0), **kw)


def record_close(soak: Soak, what: str, code: int | None, expected: set[int] | None = None) -> None:
    soak.hostile[f"{what}_close_{code}"] += 1
    if expected is not None and code not in expected:
        soak.hostile[f"{what}_undocumented_close"] += 1
        soak.violation(f"{what}: closed with {code}, documented: {sorted(expected)}",
                       f"{what}: closed with {code} (1006 = no close frame arrived), documented: {sorted(expected)}")


async def hostile_loop(soak: Soak, what: str, i: int, body) -> None:
    while not soak.ending.is_set():
        try:
            await body(i)
        except InvalidStatus as e:
            soak.hostile[f"{what}_refused_{e.response.status_code}"] += 1
            await asyncio.sleep(1)
        except (OSError, InvalidHandshake, asyncio.TimeoutError, ConnectionClosed, asyncio.IncompleteReadError) as e:
            soak.hostile[f"{what}_error_{type(e).__name__}"] += 1
            await asyncio.sleep(0.5)


async def slowloris(soak: Soak, i: int, opened: list) -> None:
    """Idle TCP sockets and half-sent headers that trickle a byte every few seconds."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", soak.port, local_addr=(soak.hostile_ip(i), 0))
    except OSError:
        soak.hostile["slowloris_connect_failed"] += 1
        return
    entry = {"t": time.monotonic(), "closed_at": None}
    opened.append(entry)
    half = i % 2 == 1
    try:
        if half:
            writer.write(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        while not soak.ending.is_set():
            if half:
                writer.write(b"X")
                await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(1024), 5)
                if not data:
                    entry["closed_at"] = time.monotonic()
                    soak.hostile["slowloris_closed_by_hub"] += 1
                    return
                soak.hostile["slowloris_answered"] += 1  # e.g. a 408
            except asyncio.TimeoutError:
                pass
    except OSError:
        entry["closed_at"] = time.monotonic()
        soak.hostile["slowloris_closed_by_hub"] += 1
    finally:
        writer.close()


async def resume_spam(soak: Soak, i: int) -> None:
    """since=0 on connect, then a stream of subscribes with since=0 (each a full replay)."""
    epoch = soak.epoch or "x"
    ws = await hostile_ws(soak, i, f"since=0&epoch={epoch}")
    got = 0
    try:
        for n in range(250):
            ch = soak.channels[n % len(soak.channels)]
            await ws.send(json.dumps({"type": "subscribe", "channel": ch, "since": 0, "epoch": epoch}))
            if n % 50 == 49:
                await ws.send(json.dumps({"type": "unsubscribe", "channel": ch}))
        end = time.monotonic() + 5
        while time.monotonic() < end:
            try:
                await asyncio.wait_for(ws.recv(), 1)
                got += 1
                await asyncio.sleep(0.001)  # a slow reader
            except asyncio.TimeoutError:
                pass
        soak.hostile["resume_spam_rounds"] += 1
    except ConnectionClosed:
        record_close(soak, "resume_spam", ws.close_code, DOCUMENTED_CLOSES)
    finally:
        soak.hostile["resume_spam_frames_read"] += got
        await ws.close()


async def flood(soak: Soak, i: int) -> None:
    """Far more frames than the rate limit: pings and JSON pings in tight loops."""
    ws = await hostile_ws(soak, i)
    drain = asyncio.create_task(drain_ws(ws))
    try:
        for _ in range(20):
            for _ in range(500):
                await ws.send('{"type":"ping"}')
            await ws.ping()
            await asyncio.sleep(0.1)
        soak.hostile["flood_rounds"] += 1
    except ConnectionClosed:
        record_close(soak, "flood", ws.close_code, DOCUMENTED_CLOSES)
    finally:
        drain.cancel()
        await ws.close()


async def drain_ws(ws) -> None:
    try:
        async for _ in ws:
            pass
    except ConnectionClosed:
        pass


async def burst_within_limits(soak: Soak, i: int) -> None:
    """290 frames in one go, inside the documented burst of 300, then quiet for 8 s: the
    connection must stay and every ping be answered (a promise, so checked like an honest one)."""
    ws = await connect(soak.ws_uri(), ping_interval=None, open_timeout=30, local_addr=(soak.honest_ip(i), 0))
    try:
        await ws.recv()  # hub:connected
        while not soak.ending.is_set():
            ws.transport.write(b"".join(client_frame(b'{"type":"ping"}') for _ in range(290)))
            pongs = 0
            while pongs < 290:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 30))
                if msg.get("type") == "hub:pong":
                    pongs += 1
                elif msg.get("type") == "hub:error":
                    soak.violation(f"burst of 290 frames (documented burst 300): {msg}", "burst of 290 frames answered hub:error")
                    break
            soak.counts["bursts_answered"] += 1
            try:
                await asyncio.wait_for(soak.ending.wait(), 8)
            except asyncio.TimeoutError:
                pass
    except ConnectionClosed:
        soak.violation(f"burst of 290 frames (documented burst 300) closed the connection: {ws.close_code}")
    except asyncio.TimeoutError:
        soak.violation("burst of 290 frames: pongs missing after 30 s")
    finally:
        await ws.close()


def client_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A masked client frame, written raw (for bursts and invalid UTF-8)."""
    mask = os.urandom(4)
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[j % 4] for j, b in enumerate(payload))


async def garbage(soak: Soak, i: int) -> None:
    """Bad JSON (answered hub:error), then one frame the hub must close with its documented code."""
    ws = await hostile_ws(soak, i)
    await ws.recv()
    kind = soak.rng.choice(["binary", "oversized", "utf8", "json"])
    expected = {"binary": {1008}, "oversized": {1009}, "utf8": {1007}, "json": None}[kind]
    try:
        for text in ['{"type":', "[]", '{"type":"nope"}', '{"type":"subscribe"}', "\u0000", '{"type":"ack","ids":[1]}']:
            await ws.send(text)
        if kind == "binary":
            await ws.send(b"\x00\x01binary")
        elif kind == "oversized":
            await ws.send('{"type":"ping","pad":"' + "x" * 4096 + '"}')
        elif kind == "utf8":
            ws.transport.write(client_frame(b'{"type":"ping","x":"\xff\xfe"}'))
        # Generous: the driver itself may be busy; a close that has not come in 20 s is not coming.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            await asyncio.wait_for(ws.recv(), 20)
        soak.hostile[f"garbage_{kind}_kept_open"] += 1
        if expected:
            soak.violation(f"garbage ({kind}): connection not closed with {expected}")
    except ConnectionClosed:
        code = ws.close_code
        # 1006: the socket ended without a close frame (a reset before the close was delivered).
        record_close(soak, f"garbage_{kind}", code, expected if expected else DOCUMENTED_CLOSES)
    except asyncio.TimeoutError:
        soak.hostile[f"garbage_{kind}_kept_open"] += 1
        if expected:
            soak.violation(f"garbage ({kind}): connection not closed with {expected}")
    finally:
        await ws.close()


async def join_storm(soak: Soak, users: int) -> None:
    """Authenticated users joining and leaving the presence room all at once, every few seconds."""
    conns = []
    t0 = time.monotonic()

    async def join(n: int) -> None:
        try:
            ws = await hostile_ws(soak, n, f"token={soak.token(f'storm{n}', [])}")
            conns.append(ws)
            asyncio.get_running_loop().create_task(drain_ws(ws))
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as e:
            soak.hostile[f"storm_connect_{type(e).__name__}"] += 1

    for first in range(0, users, 50):
        await asyncio.gather(*(join(n) for n in range(first, min(users, first + 50))))
    soak.hostile["storm_users_connected"] = len(conns)
    log(f"join storm: {len(conns)} users connected in {time.monotonic() - t0:.1f} s")
    try:
        while not soak.ending.is_set():
            for frame in ("subscribe", "unsubscribe"):
                for ws in conns:
                    try:
                        await ws.send(json.dumps({"type": frame, "channel": "room:lobby"}))
                    except ConnectionClosed:
                        pass
                soak.hostile["storm_waves"] += 1
                await asyncio.sleep(0.5)
            try:
                await asyncio.wait_for(soak.ending.wait(), 5)
            except asyncio.TimeoutError:
                pass
    finally:
        for ws in conns:
            if ws.close_code is not None and ws.close_code not in (1000,):
                record_close(soak, "storm", ws.close_code, DOCUMENTED_CLOSES)
            await ws.close()


async def never_reads(soak: Soak, i: int, held: list) -> None:
    """Upgrades by hand, subscribes to the burst channels, and never reads a byte again. Every
    other one is a hoarder: once history has grown it asks for full replays (since=0 on connect,
    then 250 subscribes with since=0), which the hub must bound in bytes."""
    hoarder = i % 2 == 0
    path = "/ws"
    if hoarder:
        try:
            await asyncio.wait_for(soak.ending.wait(), soak.plan.duration / 3)
            return
        except asyncio.TimeoutError:
            path = f"/ws?since=0&epoch={soak.epoch}"
    reader, writer = await asyncio.open_connection("127.0.0.1", soak.port, local_addr=(soak.hostile_ip(i), 0))
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(encode_request("GET", path, None, {"Upgrade": "websocket", "Connection": "Upgrade",
                                                     "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"}))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    if b" 101 " not in head.split(b"\r\n")[0]:
        soak.hostile["never_read_refused"] += 1
        writer.close()
        return
    held.append(writer)  # closed at the end
    if hoarder:
        # 200 frames (room left in a 256-frame queue for live broadcasts): subscribe to a quiet
        # archive channel with a full replay (about 750 KiB), leave, again.
        for n in range(100):
            ch = soak.archive_channels[n % len(soak.archive_channels)]
            frame = {"type": "subscribe", "channel": ch, "since": 0, "epoch": soak.epoch}
            writer.write(client_frame(json.dumps(frame).encode()))
            writer.write(client_frame(json.dumps({"type": "unsubscribe", "channel": ch}).encode()))
    else:
        for ch in soak.burst_channels + soak.channels[:10]:
            writer.write(client_frame(json.dumps({"type": "subscribe", "channel": ch}).encode()))
    await writer.drain()
    soak.hostile["never_read_hoarders" if hoarder else "never_read_connected"] += 1


# ---------------------------------------------------------------------------------------------
# Orchestration


async def sample_rss(soak: Soak, samples: list) -> None:
    while True:
        rss = soak.hub.rss()
        soak.hub.peak_rss = max(soak.hub.peak_rss, rss)
        samples.append(rss)
        if not soak.hub.alive():
            soak.violation(f"hub exited during the soak with {soak.hub.proc.returncode}")
            return
        await asyncio.sleep(0.5)


async def publish_fences(soak: Soak) -> None:
    conn = KeepAlive(soak.port, soak.honest_ip(0))
    try:
        before = set(soak.ledger)
        await post_notify(soak, conn, [{"type": "fence", "message": "broadcast"}], batch=False)
        await post_notify(soak, conn, [{"type": "fence", "message": "channels", "channel": soak.channels}], batch=False)
        new = set(soak.ledger) - before
        soak.fence_seq = max((soak.ledger[i].seq for i in new), default=0)
    finally:
        conn.close()


async def run(args: argparse.Namespace, plan: Plan, hub: HubProcess, secret: str) -> Soak:
    rng = random.Random(args.seed)
    soak = Soak(args, plan, hub, secret, rng)
    await hub.wait_ready()
    _, _, body = await http_request(hub.port, "GET", "/health")
    soak.epoch = json.loads(body).get("epoch")
    await asyncio.sleep(0.5)
    baseline_fds = hub.fds()
    log(f"hub pid {hub.proc.pid} on port {hub.port}; baseline fds {baseline_fds}, rss {hub.rss() >> 20} MiB")
    samples: list[int] = []
    sampler = asyncio.create_task(sample_rss(soak, samples))

    clients = []
    for i in range(plan.honest):
        if i % 3 == 0:
            clients.append(Honest(i, None, [], soak.honest_ip(i)))  # anonymous
        else:
            user = f"u{i % plan.users}"
            roles = rng.sample(ROLES, rng.randint(0, 2))
            clients.append(Honest(i, user, roles, soak.honest_ip(i)))
    tasks = [asyncio.create_task(honest_client(soak, c)) for c in clients]
    pubs = [asyncio.create_task(publisher(soak, i, plan.publish_rate / 4)) for i in range(4)]
    pubs.append(asyncio.create_task(batch_publisher(soak)))

    slow_opened: list = []
    held: list = []
    hostile = [asyncio.create_task(slowloris(soak, i, slow_opened)) for i in range(plan.slowloris)]
    hostile += [asyncio.create_task(hostile_loop(soak, "resume_spam", i, lambda i: resume_spam(soak, i)))
                for i in range(plan.spam)]
    hostile += [asyncio.create_task(hostile_loop(soak, "flood", i, lambda i: flood(soak, i))) for i in range(plan.floods)]
    hostile += [asyncio.create_task(hostile_loop(soak, "garbage", i, lambda i: garbage(soak, i)))
                for i in range(plan.garbage)]
    hostile.append(asyncio.create_task(join_storm(soak, plan.storm_users)))
    hostile += [asyncio.create_task(never_reads(soak, i, held)) for i in range(plan.never_read)]
    hostile += [asyncio.create_task(burst_within_limits(soak, 1000 + i)) for i in range(plan.bursty)]

    started = time.monotonic()
    while time.monotonic() - started < plan.duration and hub.alive():
        await asyncio.sleep(5)
        log(f"t={time.monotonic() - started:.0f}s events={len(soak.ledger)} deliveries={soak.counts['deliveries']} "
            f"rss={hub.rss() >> 20} MiB fds={hub.fds()} violations={len(soak.violations)}")
    soak.ending.set()
    log("load over: publishers and hostile clients stop; honest clients reconnect and resume")
    await asyncio.gather(*pubs, return_exceptions=True)
    slow_deadline = args.slowloris_deadline
    if slow_deadline:
        late = [e for e in slow_opened
                if e["closed_at"] is None and time.monotonic() - e["t"] > slow_deadline]
        if late:
            soak.violation(f"slowloris: {len(late)} of {len(slow_opened)} idle pre-upgrade sockets still open "
                           f"after more than {slow_deadline:.0f} s (no header or idle timeout)")
    await asyncio.wait(hostile, timeout=30)
    for t in hostile:
        if t.done() and not t.cancelled() and t.exception() is not None:
            soak.hostile[f"driver_error_{type(t.exception()).__name__}"] += 1
            log(f"hostile task failed: {t.exception()!r}")
        t.cancel()
    for w in held:
        w.close()

    if hub.alive():
        pending = [c for c in clients if not c.ready.is_set()]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.ready.wait() for c in pending)), 120)
        except asyncio.TimeoutError:
            late = [c for c in clients if not c.ready.is_set()]
            soak.violation(f"{len(late)} honest clients could not reconnect and finish their replays within 120 s; "
                           f"e.g. client {late[0].index} after {late[0].sessions} sessions")
        await publish_fences(soak)
        log(f"fences published (seq {soak.fence_seq}); waiting for every honest client to get them")
        try:
            await asyncio.wait_for(asyncio.gather(*(c.fenced.wait() for c in clients if c.ready.is_set())), 60)
        except asyncio.TimeoutError:
            n = sum(1 for c in clients if c.ready.is_set() and not c.fenced.is_set())
            log(f"{n} honest clients did not get the fence events in 60 s")
    soak.finish.set()
    await asyncio.wait(tasks, timeout=30)
    for t in tasks:
        t.cancel()

    # File descriptors: every client is gone, so the hub must be back at its baseline.
    fds = hub.fds()
    deadline = time.monotonic() + 20
    while hub.alive() and fds > baseline_fds and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        fds = hub.fds()
    soak.counts["baseline_fds"] = baseline_fds
    soak.counts["final_fds"] = fds
    if hub.alive() and fds > baseline_fds:
        soak.violation(f"hub file descriptors: {fds} after every client left, baseline {baseline_fds}")
    sampler.cancel()
    soak.clients = clients  # type: ignore[attr-defined]
    soak.counts["final_rss"] = hub.rss()
    return soak


# ---------------------------------------------------------------------------------------------
# The verdict


def check(soak: Soak) -> dict:
    by_stream: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)
    for eid, p in soak.ledger.items():
        for s in p.targets:
            by_stream[s].append((p.seq, eid))
    for lst in by_stream.values():
        lst.sort()
    lost = dup = leaked = unknown = 0
    examples: list[str] = []
    for c in soak.clients:  # type: ignore[attr-defined]
        owed: set[str] = set()
        for group, start, end in c.coverage:
            streams = c.auto_streams() if group == "auto" else {group}
            for s in streams:
                lst = by_stream.get(s, [])
                lo = bisect.bisect_right(lst, (start, "\U0010ffff"))
                hi = bisect.bisect_right(lst, (end, "\U0010ffff"))
                owed.update(eid for _, eid in lst[lo:hi])
        first_label: dict[str, str] = {}
        for d in c.deliveries:
            p = soak.ledger.get(d.id)
            if p is None:
                unknown += 1
                continue
            if not d.entitled or d.label not in p.targets:
                leaked += 1
                if len(examples) < 20:
                    examples.append(f"leak: client {c.index} (user {c.user}) got {d.id} through {d.label!r}; "
                                    f"targets {p.targets}")
            if d.id in first_label:
                allowed = d.replay and first_label[d.id] != d.label
                if not allowed:
                    dup += 1
                    if len(examples) < 20:
                        examples.append(f"duplicate: client {c.index} got {d.id} again through {d.label!r} "
                                        f"(replay={d.replay}, first through {first_label[d.id]!r})")
            else:
                first_label[d.id] = d.label
        missing = owed - set(first_label)
        lost += len(missing)
        for eid in sorted(missing, key=lambda e: soak.ledger[e].seq)[:2]:
            if len(examples) < 20:
                examples.append(f"lost: client {c.index} (user {c.user}, roles {c.roles}) never got {eid} "
                                f"seq {soak.ledger[eid].seq} targets {soak.ledger[eid].targets}; "
                                f"coverage {[cv for cv in c.coverage if cv[1] < soak.ledger[eid].seq <= cv[2]][:3]}")
    if lost:
        soak.violation(f"{lost} events lost by honest clients")
    if dup:
        soak.violation(f"{dup} undocumented duplicate deliveries to honest clients")
    if leaked:
        soak.violation(f"{leaked} events leaked to a stream the client is not in")
    return {"lost": lost, "duplicated": dup, "leaked": leaked, "unknown": unknown, "examples": examples}


def percentile_ms(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def main() -> int:
    args = parse_args()
    # SIGTERM unwinds like Ctrl-C, so the hub is stopped in the `finally` below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = make_plan(args)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = args.hub_bin or next((p for p in (os.path.join(root, "target/release/wshub"),
                                              os.path.join(root, "target/debug/wshub")) if os.path.exists(p)), None)
    if not binary or not os.path.exists(binary):
        print("soak: no hub binary: build it (cargo build --release) or pass --hub-bin", file=sys.stderr)
        return 2
    secret = args.jwt_secret or secrets.token_hex(16)
    rss_limit = int((args.rss_limit_mb or (256 + plan.honest * 64 / 1024)) * 1024 * 1024)
    workdir = tempfile.mkdtemp(prefix="wshub-soak-")
    log(f"{binary}: {plan.duration:.0f} s, {plan.honest} honest clients ({plan.users} users), "
        f"hostile: {plan.slowloris} slowloris, {plan.spam} resume spam, {plan.floods} floods, "
        f"{plan.garbage} garbage, {plan.storm_users} join-storm users, {plan.never_read} never-reading; "
        f"RSS bound {rss_limit >> 20} MiB; extra hub flags: {args.hub_args or 'none'}")
    hub = HubProcess(binary, secret, args.history_size, args.hub_args, workdir)
    started = time.monotonic()
    try:
        # The whole run is bounded: load, the end phase (at most about 4 minutes), the checks.
        soak = asyncio.run(asyncio.wait_for(run(args, plan, hub, secret), plan.duration + 400))
    except asyncio.TimeoutError:
        print("soak: the run did not end in time", file=sys.stderr)
        hub.stop()
        return 1
    finally:
        alive = hub.alive()
        hub.stop()
    verdict = check(soak)
    if soak.hub.peak_rss > rss_limit:
        soak.violation(f"hub peak RSS {soak.hub.peak_rss >> 20} MiB over the bound {rss_limit >> 20} MiB")
    if not alive:
        soak.violation("hub was not alive at the end")
    clients = soak.clients  # type: ignore[attr-defined]
    summary = {
        "duration_s": round(time.monotonic() - started),
        "honest_clients": len(clients),
        "honest_sessions": sum(c.sessions for c in clients),
        "events": len(soak.ledger),
        "publish_requests": soak.counts["publish_requests"],
        "batches_of_1000": soak.counts["batches"],
        "deliveries": soak.counts["deliveries"],
        "lost": verdict["lost"],
        "duplicated": verdict["duplicated"],
        "leaked": verdict["leaked"],
        "unknown_ids_received": verdict["unknown"],
        "publishes_with_unknown_outcome": soak.unknown_outcome,
        "unrecovered_resumes": soak.counts["unrecovered_resumes"],
        "honest_closed_by_hub": sum(v for k, v in soak.counts.items() if k.startswith("honest_closed_")),
        "honest_refused": sum(v for k, v in soak.counts.items() if k.startswith("honest_refused_")),
        "notify_p50_ms": percentile_ms(soak.notify_latency, 0.5),
        "notify_p99_ms": percentile_ms(soak.notify_latency, 0.99),
        "notify_max_ms": percentile_ms(soak.notify_latency, 1.0),
        "peak_rss_mib": round(soak.hub.peak_rss / 2**20, 1),
        "rss_bound_mib": rss_limit >> 20,
        "final_rss_mib": round(soak.counts["final_rss"] / 2**20, 1),
        "baseline_fds": soak.counts["baseline_fds"],
        "final_fds": soak.counts["final_fds"],
        # How busy the driver was: near 100 % of a core, its own timeouts are less exact.
        "driver_cpu_percent": round(100 * (time.process_time() / max(1.0, time.monotonic() - started))),
    }
    print("\n==== soak summary ====")
    for k, v in summary.items():
        print(f"{k:32} {v}")
    print("honest detail:", dict(sorted((k, v) for k, v in soak.counts.items() if k.startswith("honest_"))))
    print("hostile outcomes:", dict(sorted(soak.hostile.items())))
    if args.inject:
        print("injected:", soak.counts[f"injected_{args.inject}"], args.inject)
    for e in verdict["examples"]:
        print("  ", e)
    if soak.violations:
        print(f"\n{len(soak.violations)} VIOLATIONS, by kind (with one example):")
        grouped = collections.Counter(kind for kind, _ in soak.violations)
        example = {}
        for kind, text in soak.violations:
            example.setdefault(kind, text)
        for kind, n in grouped.most_common(40):
            print(f"  {n:5} x {kind[:200]}")
            if example[kind] != kind:
                print(f"          e.g. {example[kind][:300]}")
        print(f"hub log tail ({hub.log_path}):\n{hub.tail(15)}")
        return 1
    print("\nsoak: every promise held")
    if not args.keep_log:
        try:
            os.remove(hub.log_path)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
