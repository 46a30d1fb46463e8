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
import sys
import tempfile
import time
from typing import Any

from common import ROOT, DaemonProcess, start_redis, table  # type: ignore[import-not-found]
from redis_fanout import fanout, lttx_push, redis_py_push, wait_for_redis  # type: ignore[import-not-found]  # noqa: E501

sys.path.insert(0, ROOT)

import lttx  # noqa: E402

SUBSCRIBERS = 4


def round_trips(put: Any, get: Any, n: int) -> float:
    value = {"bid": 10.23, "ask": 10.24, "size": 1200}
    start = time.perf_counter()
    for i in range(n):
        put(f"k{i % 100}", value)
        get(f"k{i % 100}")
    return n / (time.perf_counter() - start)


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

            fo = {
                "memory": fanout("lttx", [mem.port], SUBSCRIBERS, messages, lttx_push(cm)),
                "redis x1": fanout("lttx", [a.port], SUBSCRIBERS, messages, lttx_push(ca)),
                "redis x2": fanout("lttx", [b.port], SUBSCRIBERS, messages, lttx_push(ca)),
                "redis-py": fanout("redis", [port], SUBSCRIBERS, messages, redis_py_push(r)),
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
