"""
The Redis engine next to the memory engine and next to redis-py on the same Redis.

Run by hand from the checkout (about a minute; every part is bounded)::

    python3 benchmarks/redis_engine.py
    python3 benchmarks/redis_engine.py --quick

Set-ups, in one run, on one ``redis-server`` started here (no persistence):

- ``memory``: one daemon, ``--engine memory`` (its journal at ``--fsync no``);
- ``redis x1``: one daemon, ``--engine redis``;
- ``redis x2``: two daemons on the same Redis (the writer on one, the reader or
  the subscribers on the other);
- ``redis-py``: redis-py talking to the same Redis directly (SET+GET; PUBLISH
  pipelined in batches of 500, subscribers on ``pubsub().get_message``).

Figures: put+get round trips per second (one blocking client, each call
waiting for its reply; ``x2``: put through A, get through B), and fan-out
messages delivered per second (one publisher, 4 subscriber processes, ~100-byte
messages; all received / time from the first push to the last receive).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import ROOT, DaemonProcess, start_redis, table  # type: ignore[import-not-found]

sys.path.insert(0, ROOT)

import lttx  # noqa: E402

SUBSCRIBERS = 4

SUBSCRIBER = r"""
import json, sys, time
n, kind, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if kind == "lttx":
    sys.path.insert(0, sys.argv[4])
    import lttx
    c = lttx.connect("127.0.0.1", port, token="bench", timeout=60)
    c.subscribe("hq")
    print("ready", flush=True)
    for _ in range(n):
        c.Q.get(timeout=60)
else:
    import redis
    r = redis.Redis(port=port)
    p = r.pubsub()
    p.subscribe("hq")
    p.get_message(timeout=5)
    print("ready", flush=True)
    got = 0
    while got < n:
        if p.get_message(timeout=60) is not None:
            got += 1
print(json.dumps({"end": time.monotonic_ns()}), flush=True)
"""


def wait_for_redis(client: Any) -> None:
    """The daemon logs before it has its Redis connection: wait for it (bounded)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            client.get("warm-up")
            return
        except lttx.Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def round_trips(put: Any, get: Any, n: int) -> float:
    value = {"bid": 10.23, "ask": 10.24, "size": 1200}
    start = time.perf_counter()
    for i in range(n):
        put(f"k{i % 100}", value)
        get(f"k{i % 100}")
    return n / (time.perf_counter() - start)


def fanout(kind: str, publish_port: int, subscribe_port: int, n: int, push: Any) -> float:
    procs = [subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(n), kind,
                               str(subscribe_port), ROOT],
                              stdout=subprocess.PIPE, text=True) for _ in range(SUBSCRIBERS)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    start = time.monotonic_ns()
    push(n)
    ends = []
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        p.wait(120)
        ends.append(json.loads(line)["end"])
    return n * SUBSCRIBERS / ((max(ends) - start) / 1e9)


def tick(i: int) -> str:
    return f"{i:08d}|10.23|10.24|10.22|10.25|1200|3400|5600|7800|9000|1234567.89|2026112609300|"


def lttx_push(client: Any) -> Any:
    def push(n: int) -> None:
        for i in range(n):
            client.push(f"{i % 5000:06d}.SH", tick(i), "hq")
        client.flush()
    return push


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    trips = 1000 if args.quick else 4000
    messages = 20000 if args.quick else 100000
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed")

    tmp = tempfile.TemporaryDirectory()
    redis_proc, port, r = start_redis(server, tmp.name)
    url = f"redis://127.0.0.1:{port}/0"
    rows = []
    try:
        with DaemonProcess("--fsync", "no") as mem, \
                DaemonProcess("--engine", "redis", "--redis", url) as a, \
                DaemonProcess("--engine", "redis", "--redis", url) as b:
            cm = lttx.connect("127.0.0.1", mem.port, token="bench", timeout=60)
            ca = lttx.connect("127.0.0.1", a.port, token="bench", timeout=60)
            cb = lttx.connect("127.0.0.1", b.port, token="bench", timeout=60)
            wait_for_redis(ca)
            wait_for_redis(cb)
            rt = {
                "memory": round_trips(cm.put, cm.get, trips),
                "redis x1": round_trips(ca.put, ca.get, trips),
                "redis x2": round_trips(ca.put, cb.get, trips),
                "redis-py": round_trips(lambda k, v: r.set(k, json.dumps(v)), r.get, trips),
            }

            def redis_py_push(n: int) -> None:
                pipe = r.pipeline(transaction=False)
                for i in range(n):
                    pipe.publish("hq", tick(i))
                    if i % 500 == 499:
                        pipe.execute()
                pipe.execute()

            fo = {
                "memory": fanout("lttx", mem.port, mem.port, messages, lttx_push(cm)),
                "redis x1": fanout("lttx", a.port, a.port, messages, lttx_push(ca)),
                "redis x2": fanout("lttx", a.port, b.port, messages, lttx_push(ca)),
                "redis-py": fanout("redis", port, port, messages, redis_py_push),
            }
            for c in (cm, ca, cb):
                c.close()
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        tmp.cleanup()
    for name in rt:
        rows.append([name, f"{rt[name]:,.0f}", f"{rt[name] / rt['redis-py']:.2f}",
                     f"{fo[name]:,.0f}", f"{fo[name] / fo['redis-py']:.2f}"])
    print(f"put+get: {trips} pairs, one client; fan-out: {messages} messages x "
          f"{SUBSCRIBERS} subscribers")
    print(table(rows, ["set-up", "put+get/s", "vs redis-py", "fan-out msgs/s",
                       "vs redis-py"]))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
