"""
What the Redis-engine benchmarks share (``redis_engine.py``, ``redis_channels.py``,
``redis_wait.py``): a tick, a client that waits for its daemon's Redis
connection, and a fan-out run with subscribers in processes of their own,
LTtx or redis-py pub/sub, spread over the daemons given.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any, Callable

from common import ROOT  # type: ignore[import-not-found]

sys.path.insert(0, ROOT)

import lttx  # noqa: E402

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


def tick(i: int) -> str:
    """A ~100-byte tick, as a feed sends them."""
    return f"{i:08d}|10.23|10.24|10.22|10.25|1200|3400|5600|7800|9000|1234567.89|2026112609300|"


def wait_for_redis(client: Any) -> Any:
    """The daemon logs before it has its Redis connection: wait for it (bounded)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            client.get("warm-up")
            return client
        except lttx.Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def connected(port: int) -> Any:
    """A blocking client of the daemon on ``port``, once its Redis answers."""
    return wait_for_redis(lttx.connect("127.0.0.1", port, token="bench", timeout=60))


def fanout(kind: str, ports: list[int], subscribers: int, n: int,
           push: Callable[[int], None]) -> float:
    """Messages delivered per second: ``subscribers`` processes (``kind`` lttx
    or redis) spread over ``ports``, each until it has ``n``; ``push(n)`` sends."""
    procs = [subprocess.Popen([sys.executable, "-c", SUBSCRIBER, str(n), kind,
                               str(ports[i % len(ports)]), ROOT],
                              stdout=subprocess.PIPE, text=True) for i in range(subscribers)]
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
    return n * subscribers / ((max(ends) - start) / 1e9)


def redis_py_push(r: Any) -> Callable[[int], None]:
    """``push(n)``: n ticks published on Redis channel ``hq`` through redis-py
    ``r``, pipelined 500 at a time."""
    def push(n: int) -> None:
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.publish("hq", tick(i))
            if i % 500 == 499:
                pipe.execute()
        pipe.execute()
    return push


def lttx_push(client: Any) -> Callable[[int], None]:
    """``push(n)``: n ticks on channel ``hq`` through ``client``."""
    def push(n: int) -> None:
        for i in range(n):
            client.push(f"{i % 5000:06d}.SH", tick(i), "hq")
        client.flush()
    return push
