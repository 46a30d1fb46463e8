"""
Fan-out benchmark: LTtx channels next to a raw-socket relay and Redis pub/sub.

Run by hand from the checkout (about two minutes; every scenario is bounded)::

    python3 benchmarks/fanout.py            # all scenarios
    python3 benchmarks/fanout.py --quick    # fewer messages
    python3 benchmarks/fanout.py --quick --status-page   # lttx also with the page watched

Scenarios, each run on the three systems in the same run:

1. one publisher -> 1 subscriber, as fast as the publisher can push;
2. one publisher -> 10 subscribers;
3. one publisher -> 10 subscribers, one of them frozen with SIGSTOP;
4. push-to-receive latency (p50, p99) at a steady 10,000 messages/s to 1 subscriber;
5. LTtx only: the daemon's RSS growth with one live subscriber and 0, 1 and 10
   frozen ones (a frozen subscriber costs its position in the channel's log).

``--runs N`` repeats everything N times and reports, per scenario and system,
how many runs delivered every message ("runs complete / runs").

Systems:

- ``lttx``: the real ``twistd -n lttx``; the blocking client's ``push`` in a
  plain loop (at a steady rate, each 1 ms step in one ``push_many``, as Redis
  and NATS send each step together; ``LTTX_BENCH_PUSH=each`` pushes one by
  one there too), subscribers read ``client.Q``.
- ``raw``: the simplest possible Python relay: it forwards the bytes of
  pre-framed messages (4-byte length + ``key|data``) from the publisher to
  every subscriber with ``sendall``, no parsing, no flow control.  The upper
  bound of what Python sockets do here; a frozen subscriber stalls it.
- ``redis``: ``redis-server`` (started here on a free port) with redis-py:
  PUBLISH pipelined in batches of 500 (at a steady rate: the messages of
  each 1 ms step together), subscribers on ``pubsub().get_message``.

With ``--status-page`` the daemon also serves ``--http``, and every
scenario runs on LTtx twice in the same run: as above, and as ``lttx+page``
with the status page open in a headless Chromium (it polls every 2 s) and
``/metrics`` scraped every second, as Prometheus would.

Messages are ~100-byte ticks.  Subscribers are separate processes; times are
``time.monotonic_ns()`` (one clock for all processes on Linux).  The figure
compared is messages delivered per second: all messages received by the live
subscribers, divided by the time from the first push to the last receive (for
a run that did not complete, to the end of the window it was given).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

ROOT = str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, ROOT)

TOKEN = "bench"
CHANNEL = "hq"
_PREFIX = struct.Struct("!I")


def tick(i: int, stamp: int = 0) -> str:
    """A ~100-byte tick; the first 19 characters carry a send time in ns."""
    return (f"{stamp:019d}|{i:09d}|10.23|10.24|10.22|10.25|1200|3400|5600|7800|"
            f"9000|1234567.89|093000000")


def key_of(i: int) -> str:
    return f"{600000 + i % 5000}.SH"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- subscribers (each in its own process) ----------------------------------------------


class Recorder:
    """Counts messages and, with ``latency``, records push-to-receive times."""

    def __init__(self, n: int, latency: bool, step: int = 1) -> None:
        self.n = n
        self.latency = latency
        self.step = step  # messages per 1 ms step of the publisher
        self.count = 0
        self.first = 0
        self.last = 0
        self.lat: list[int] = []
        # Each message's place in its 1 ms step (latency mode), and, for
        # LTtx with LTTX_BENCH_SPLIT=1, push-to-Client.Q times (see sub_lttx).
        self.places: list[int] = []
        self.queued: list[int] = []
        self.cpu_first = 0.0

    def got(self, data: str) -> None:
        now = time.monotonic_ns()
        if not self.count:
            self.first = now
            self.cpu_first = time.process_time()
        self.count += 1
        self.last = now
        if self.latency:
            self.lat.append(now - int(data[:19]))
            self.places.append(int(data[20:29]) % self.step)

    def report(self) -> None:
        out: dict[str, Any] = {"count": self.count, "first": self.first, "last": self.last}
        if self.count:
            # CPU seconds of the whole process (its reactor thread too) from
            # the first message to the last, start-up and close left out.
            out["cpu_s"] = time.process_time() - self.cpu_first
        if self.lat:
            lat = sorted(self.lat)
            out["p50_us"] = lat[len(lat) // 2] / 1000
            out["p99_us"] = lat[int(len(lat) * 0.99)] / 1000
            out["max_us"] = lat[-1] / 1000
            by_place: dict[int, list[int]] = {}
            for place, ns in zip(self.places, self.lat):
                by_place.setdefault(place, []).append(ns)
            out["p50_by_place_us"] = [_median(v) / 1000 for _, v in sorted(by_place.items())]
        if self.queued:
            out["queued_p50_us"] = _median(self.queued) / 1000
        print(json.dumps(out), flush=True)


def _median(values: list[int]) -> int:
    return sorted(values)[len(values) // 2]


def sub_lttx(port: int, rec: Recorder, deadline: float) -> None:
    import queue

    import lttx

    if os.environ.get("LTTX_BENCH_SPLIT") and rec.latency:
        # When each message reached Client.Q (the reactor thread's put): the
        # rest of its latency is the hand-off to the reading thread.
        from lttx.client.messages import MessageQueue

        put_many = MessageQueue.put_many
        queued = rec.queued

        def timed(self: MessageQueue, items: list[Any]) -> None:
            now = time.monotonic_ns()
            queued.extend(now - int(m.data[:19]) for m in items)
            put_many(self, items)

        MessageQueue.put_many = timed  # type: ignore[method-assign]
    c = lttx.connect("127.0.0.1", port, token=TOKEN, timeout=30)
    c.subscribe(CHANNEL)
    print("ready", flush=True)
    get = c.Q.get
    try:
        while rec.count < rec.n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            rec.got(get(timeout=left).data)
    except queue.Empty:
        pass
    rec.report()
    c.close()


def sub_raw(port: int, rec: Recorder, deadline: float) -> None:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"S")
    print("ready", flush=True)
    buf = b""
    while rec.count < rec.n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            chunk = s.recv(262144)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
        pos = 0
        while len(buf) - pos >= 4:
            (length,) = _PREFIX.unpack_from(buf, pos)
            if len(buf) - pos - 4 < length:
                break
            payload = buf[pos + 4:pos + 4 + length].decode()
            rec.got(payload.split("|", 1)[1])
            pos += 4 + length
        buf = buf[pos:]
    rec.report()


def sub_redis(port: int, rec: Recorder, deadline: float) -> None:
    import redis

    r = redis.Redis(port=port)
    p = r.pubsub(ignore_subscribe_messages=True)
    p.subscribe(CHANNEL)
    p.get_message(timeout=5)  # the subscribe confirmation
    print("ready", flush=True)
    while rec.count < rec.n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        m = p.get_message(timeout=min(left, 1.0))
        if m is not None:
            rec.got(m["data"].decode().split("|", 1)[1])
    rec.report()


def sub_nats(port: int, rec: Recorder, deadline: float) -> None:
    """A nats-py subscriber (asyncio), counting until ``rec.n`` or the deadline."""
    import asyncio

    import nats

    async def run() -> None:
        nc = await nats.connect(f"nats://127.0.0.1:{port}",
                                pending_size=64 * 1024 * 1024)
        done = asyncio.get_running_loop().create_future()

        async def handler(msg: Any) -> None:
            rec.got(msg.data.decode().split("|", 1)[1])
            if rec.count >= rec.n and not done.done():
                done.set_result(None)

        # No pending limit: a slow consumer must show as slow, not as dropped.
        await nc.subscribe(CHANNEL, cb=handler, pending_msgs_limit=-1, pending_bytes_limit=-1)
        await nc.flush()
        print("ready", flush=True)
        try:
            await asyncio.wait_for(done, max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            pass
        await nc.close()

    asyncio.run(run())
    rec.report()


# -- the raw relay (its own process) ---------------------------------------------------


def relay(port: int) -> None:
    """Forward the publisher's bytes to every subscriber, as is."""
    server = socket.create_server(("127.0.0.1", port))
    print("ready", flush=True)
    subscribers: list[socket.socket] = []
    while True:
        conn, _ = server.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        role = conn.recv(1)
        if role == b"S":
            subscribers.append(conn)
            continue
        # The publisher: relay until it closes.
        while True:
            data = conn.recv(262144)
            if not data:
                break
            for s in list(subscribers):
                try:
                    s.sendall(data)  # blocks while this subscriber does not read
                except OSError:  # it went away
                    subscribers.remove(s)
                    s.close()
        conn.close()
        for s in subscribers:
            s.close()
        subscribers = []


# -- publishers (this process) ---------------------------------------------------------


def _step(rate: float) -> int:
    """Messages per 1 ms step at ``rate``: a paced publisher sends them together."""
    return max(1, int(rate / 1000))


def paced(n: int, rate: Optional[float]):  # type: ignore[no-untyped-def]
    """Yield message indexes, at ``rate`` per second if given (in 1 ms steps)."""
    if rate is None:
        yield from range(n)
        return
    start = time.monotonic()
    per_ms = _step(rate)
    for i in range(n):
        if i % per_ms == 0:
            wait = start + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        yield i


class Publisher:
    def __init__(self, system: str, port: int) -> None:
        self.system = system
        self.port = port

    def run(self, n: int, rate: Optional[float], stamp: bool, budget: float) -> dict[str, Any]:
        """Publish n messages; stop early after ``budget`` seconds (a stalled relay)."""
        return getattr(self, f"_run_{self.system}")(n, rate, stamp, budget)

    def _run_lttx(self, n: int, rate: Optional[float], stamp: bool,
                  budget: float) -> dict[str, Any]:
        import lttx

        c = lttx.connect("127.0.0.1", self.port, token=TOKEN, timeout=budget)
        push = c.push
        # At a steady rate each 1 ms step goes with push_many, as Redis's
        # publisher sends a pipeline and NATS's flushes per step; with
        # LTTX_BENCH_PUSH=each, push by push.
        step = _step(rate) if rate and os.environ.get("LTTX_BENCH_PUSH") != "each" else 0
        batch: list[tuple[str, str]] = []
        t0 = time.monotonic_ns()
        sent = 0
        try:
            for i in paced(n, rate):
                if step:
                    batch.append((key_of(i), tick(i, time.monotonic_ns() if stamp else 0)))
                    if len(batch) >= step:
                        c.push_many(batch, CHANNEL)
                        sent += len(batch)
                        batch = []
                    continue
                push(key_of(i), tick(i, time.monotonic_ns() if stamp else 0), CHANNEL)
                sent += 1
            if batch:
                c.push_many(batch, CHANNEL)
                sent += len(batch)
            c.flush()
        except lttx.LTtxError as e:
            print(f"  lttx publisher stopped: {e}", file=sys.stderr)
        t1 = time.monotonic_ns()
        c.close()
        return {"t0": t0, "t1": t1, "sent": sent}

    def _run_raw(self, n: int, rate: Optional[float], stamp: bool,
                 budget: float) -> dict[str, Any]:
        s = socket.create_connection(("127.0.0.1", self.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"P")
        s.settimeout(budget)
        t0 = time.monotonic_ns()
        batch: list[bytes] = []
        sent = 0
        try:
            for i in paced(n, rate):
                payload = f"{key_of(i)}|{tick(i, time.monotonic_ns() if stamp else 0)}".encode()
                batch.append(_PREFIX.pack(len(payload)) + payload)
                if len(batch) >= (_step(rate) if rate else 500):
                    s.sendall(b"".join(batch))
                    sent += len(batch)
                    batch = []
            s.sendall(b"".join(batch))
            sent += len(batch)
        except socket.timeout:
            print("  raw publisher blocked: the relay stalled", file=sys.stderr)
        t1 = time.monotonic_ns()
        s.close()
        return {"t0": t0, "t1": t1, "sent": sent}

    def _run_redis(self, n: int, rate: Optional[float], stamp: bool,
                   budget: float) -> dict[str, Any]:
        import redis

        r = redis.Redis(port=self.port, socket_timeout=budget)
        pipe = r.pipeline(transaction=False)
        t0 = time.monotonic_ns()
        sent = 0
        try:
            for i in paced(n, rate):
                pipe.publish(CHANNEL, f"{key_of(i)}|{tick(i, time.monotonic_ns() if stamp else 0)}")
                if len(pipe) >= (_step(rate) if rate else 500):
                    sent += len(pipe)
                    pipe.execute()
            sent += len(pipe)
            pipe.execute()
        except redis.RedisError as e:
            print(f"  redis publisher stopped: {e}", file=sys.stderr)
        t1 = time.monotonic_ns()
        return {"t0": t0, "t1": t1, "sent": sent}

    def _run_nats(self, n: int, rate: Optional[float], stamp: bool,
                  budget: float) -> dict[str, Any]:
        """nats-py publishing; at a steady rate each 1 ms step is flushed together."""
        import asyncio

        import nats

        async def run() -> dict[str, Any]:
            nc = await nats.connect(f"nats://127.0.0.1:{self.port}",
                                    flusher_queue_size=4096)
            t0 = time.monotonic_ns()
            start = time.monotonic()
            sent = 0
            step = _step(rate) if rate else 500
            for i in range(n):
                if rate and i % step == 0:
                    wait = start + i / rate - time.monotonic()
                    if wait > 0:
                        await asyncio.sleep(wait)
                await nc.publish(CHANNEL, f"{key_of(i)}|"
                                 f"{tick(i, time.monotonic_ns() if stamp else 0)}".encode())
                sent += 1
                if sent % step == 0:
                    await asyncio.sleep(0)  # let the flusher write the batch
            await nc.flush(timeout=budget)
            t1 = time.monotonic_ns()
            await nc.close()
            return {"t0": t0, "t1": t1, "sent": sent}

        return asyncio.run(run())


# -- servers ---------------------------------------------------------------------------


class Servers:
    """The LTtx daemon, the raw relay and redis-server, each on a free port."""

    def __init__(self, lttx_args: list[str]) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.tmp = tempfile.mkdtemp(prefix="lttx-bench-")
        self.ports: dict[str, int] = {}
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        daemon = self._start(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n",
             "--pidfile=", "lttx", "--listen", "tcp:0:interface=127.0.0.1", "--token", TOKEN,
             "--data-dir", self.tmp, *lttx_args], env)
        self.lttx_log: list[str] = []
        for line in daemon.stdout:  # type: ignore[union-attr]
            self.lttx_log.append(line)
            found = re.search(r"LTtx HTTP status page on .* at [\d.]+:(\d+)", line)
            if found:
                self.ports["http"] = int(found.group(1))
            found = re.search(r"LTtx listening on .* at [\d.]+:(\d+)", line)
            if found:
                self.ports["lttx"] = int(found.group(1))
            if "lttx" in self.ports and ("--http" not in lttx_args or "http" in self.ports):
                break
        threading.Thread(target=self._collect, args=(daemon,), daemon=True).start()
        self.daemon = daemon
        self.ports["raw"] = free_port()
        relay_proc = self._start([sys.executable, __file__, "relay", str(self.ports["raw"])], env)
        assert relay_proc.stdout is not None and relay_proc.stdout.readline().strip() == "ready"
        if shutil.which("redis-server"):
            self.ports["redis"] = port = free_port()
            self._start(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                         "--save", "", "--appendonly", "no", "--dir", self.tmp], env)
            import redis

            client = redis.Redis(port=port)
            for _ in range(100):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)

    def _start(self, cmd: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
        # In ROOT: ``python -c`` puts the working directory first on sys.path,
        # so from another checkout the daemon would run that one's lttx.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, cwd=ROOT)
        self.procs.append(proc)
        return proc

    def _collect(self, proc: subprocess.Popen[str]) -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            self.lttx_log.append(line)

    def daemon_rss_kib(self) -> int:
        with open(f"/proc/{self.daemon.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- scenarios -------------------------------------------------------------------------


class PageWatcher:
    """The status page open in a headless Chromium, and /metrics scraped every second."""

    def __init__(self, http_port: int, log: list[str]) -> None:
        import urllib.request

        self.url = f"http://127.0.0.1:{http_port}"
        self.stopped = threading.Event()
        self.scrapes = 0
        self.tmp = tempfile.mkdtemp(prefix="lttx-bench-chromium-")
        self.browser = subprocess.Popen(
            [shutil.which("chromium") or "chromium", "--headless=new", "--no-sandbox",
             "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={self.tmp}",
             "--remote-debugging-port=0", f"{self.url}/?token={TOKEN}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        request = urllib.request.Request(f"{self.url}/metrics",
                                         headers={"Authorization": f"Bearer {TOKEN}"})

        def scrape() -> None:
            while not self.stopped.wait(1.0):
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
                self.scrapes += 1

        self.thread = threading.Thread(target=scrape, daemon=True)
        self.thread.start()
        # Measure the page open, not the browser starting: wait for its login
        # and a few of its polls.
        start = len(log)
        deadline = time.monotonic() + 30
        while not any("logged in as" in line for line in log[start:]):
            if time.monotonic() > deadline:
                raise RuntimeError("the headless browser did not open the status page")
            time.sleep(0.1)
        time.sleep(5)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)
        self.browser.terminate()
        self.browser.wait(10)
        shutil.rmtree(self.tmp, ignore_errors=True)


def scenario(servers: Servers, system: str, subscribers: int, n: int, frozen: int = 0,
             rate: Optional[float] = None, budget: float = 20.0) -> dict[str, Any]:
    if system == "lttx+page":
        watcher = PageWatcher(servers.ports["http"], servers.lttx_log)
        try:
            result = scenario(servers, "lttx", subscribers, n, frozen, rate, budget)
        finally:
            watcher.stop()
        result["system"] = system
        result["scrapes"] = watcher.scrapes
        return result
    port = servers.ports[system]
    deadline = time.monotonic() + budget + 10
    env = dict(os.environ, PYTHONPATH=ROOT)
    children = []
    for k in range(subscribers):
        child = subprocess.Popen(
            [sys.executable, __file__, "sub", system, str(port), str(n),
             str(deadline - time.monotonic()), f"latency:{_step(rate)}" if rate else "count"],
            stdout=subprocess.PIPE, text=True, env=env)
        children.append(child)
    for child in children:
        line = child.stdout.readline().strip()  # type: ignore[union-attr]
        if line != "ready":
            raise RuntimeError(f"{system} subscriber did not start: {line!r}")
    for child in children[:frozen]:
        child.send_signal(signal.SIGSTOP)
    rss_before = servers.daemon_rss_kib() if system == "lttx" else 0
    pub = Publisher(system, port).run(n, rate, stamp=bool(rate), budget=budget)
    results = []
    for child in children[frozen:]:
        try:
            out, _ = child.communicate(timeout=max(1.0, deadline - time.monotonic() + 5))
            results.append(json.loads(out.strip().splitlines()[-1]))
        except (subprocess.TimeoutExpired, IndexError, ValueError):
            child.kill()
            child.communicate()
            results.append({"count": 0, "first": 0, "last": 0})
    collected = time.monotonic_ns()
    rss_after = servers.daemon_rss_kib() if system == "lttx" else 0
    for child in children[:frozen]:
        child.send_signal(signal.SIGCONT)
        child.kill()
        child.communicate()
    received = sum(r["count"] for r in results)
    complete = received == n * (subscribers - frozen)
    last = max((r["last"] for r in results if r["count"]), default=pub["t1"])
    # A run that did not complete (a stalled relay) is charged the whole
    # window it was given, not just the time until it stalled.
    elapsed = (max(last, pub["t1"]) if complete else collected) - pub["t0"]
    out = {
        "system": system, "subscribers": subscribers, "frozen": frozen, "sent": pub["sent"],
        "received": received, "complete": complete,
        "seconds": elapsed / 1e9, "delivered_per_s": received / (elapsed / 1e9),
        "publish_per_s": pub["sent"] / ((pub["t1"] - pub["t0"]) / 1e9),
        # Each live subscriber's CPU seconds while receiving (see Recorder.report).
        "subscriber_cpu_s": [r.get("cpu_s", 0.0) for r in results],
    }
    if rate:
        out["p50_us"] = results[0].get("p50_us")
        out["p99_us"] = results[0].get("p99_us")
        out["max_us"] = results[0].get("max_us")
        out["p50_by_place_us"] = results[0].get("p50_by_place_us")
        out["queued_p50_us"] = results[0].get("queued_p50_us")
    if system == "lttx":
        out["daemon_rss_growth_kib"] = rss_after - rss_before
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages")
    parser.add_argument("--status-page", action="store_true",
                        help="also run lttx with its status page open and /metrics scraped")
    parser.add_argument("--runs", type=int, default=1, help="repeat every scenario N times")
    args = parser.parse_args()
    n1, n10 = (50_000, 10_000) if args.quick else (200_000, 40_000)
    # SIGTERM (e.g. from timeout(1)) still stops the servers started here.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    http = ["--http", "tcp:0:interface=127.0.0.1"] if args.status_page else []
    servers = Servers(http)
    table: list[dict[str, Any]] = []
    systems = [s for s in ("lttx", "raw", "redis") if s in servers.ports]
    if args.status_page:
        systems.insert(1, "lttx+page")
    try:
        plan = [
            ("1 -> 1", dict(subscribers=1, n=n1)),
            ("1 -> 10", dict(subscribers=10, n=n10)),
            ("1 -> 10, one frozen", dict(subscribers=10, n=n10 * 2, frozen=1)),
            ("latency @10k/s", dict(subscribers=1, n=30_000, rate=10_000.0)),
            ("RSS, 0 frozen", dict(subscribers=1, n=n10 * 2)),
            ("RSS, 1 frozen", dict(subscribers=2, n=n10 * 2, frozen=1)),
            ("RSS, 10 frozen", dict(subscribers=11, n=n10 * 2, frozen=10)),
        ]
        for run, (title, kwargs) in [(r, p) for r in range(args.runs) for p in plan]:
            print(f"\n== {title}" + (f" (run {run + 1})" if args.runs > 1 else ""))
            for system in (["lttx"] if title.startswith("RSS") else systems):
                result = scenario(servers, system, **kwargs)  # type: ignore[arg-type]
                result["scenario"] = title
                table.append(result)
                live = kwargs["subscribers"] - kwargs.get("frozen", 0)  # type: ignore[operator]
                line = (f"  {system:9s} delivered {result['delivered_per_s']:>10,.0f} msg/s  "
                        f"published {result['publish_per_s']:>10,.0f} msg/s  "
                        f"received {result['received']:>8,}/{result['sent'] * live:<8,}")
                if "p50_us" in result and result["p50_us"] is not None:
                    line += f"  p50 {result['p50_us']:,.0f} us  p99 {result['p99_us']:,.0f} us"
                if not result["complete"]:
                    line += "  INCOMPLETE (stalled)"
                if "scrapes" in result:
                    line += f"  ({result['scrapes']} scrapes)"
                if "daemon_rss_growth_kib" in result:
                    line += f"  daemon RSS +{result['daemon_rss_growth_kib'] / 1024:.1f} MiB"
                print(line, flush=True)
            by = {r["system"]: r for r in table if r["scenario"] == title}  # the last run
            if "lttx+page" in by and by["lttx"]["delivered_per_s"]:
                ratio = by["lttx+page"]["delivered_per_s"] / by["lttx"]["delivered_per_s"]
                print(f"  lttx+page / lttx = {ratio:.2f}")
            for other in ("raw", "redis"):
                if "lttx" in by and other in by and by[other]["delivered_per_s"]:
                    ratio = by["lttx"]["delivered_per_s"] / by[other]["delivered_per_s"]
                    print(f"  lttx / {other:5s} = {ratio:.2f}")
        print("\nruns complete / runs:")
        for title, _ in plan:
            for system in systems:
                runs = [r for r in table if r["scenario"] == title and r["system"] == system]
                if runs:
                    done = sum(r["complete"] for r in runs)
                    print(f"  {title:22s} {system:6s} {done} / {len(runs)}")
        cut = sum("cut off" in line for line in servers.lttx_log)
        print(f"LTtx subscribers cut off during the run: {cut}")
    finally:
        servers.stop()
    print(json.dumps(table))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sub":
        _, _, system, port, n, left, mode = sys.argv
        latency, _, step = mode.partition(":")
        recorder = Recorder(int(n), latency == "latency", int(step or 1))
        globals()[f"sub_{system}"](int(port), recorder, time.monotonic() + float(left))
    elif len(sys.argv) > 1 and sys.argv[1] == "relay":
        relay(int(sys.argv[2]))
    else:
        main()
