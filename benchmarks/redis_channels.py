"""
Channels across daemons: the channel log in Redis Streams, by hand.

Run from the checkout (a few minutes; every part is bounded)::

    python3 benchmarks/redis_channels.py
    python3 benchmarks/redis_channels.py --quick

1. Fan-out 1 -> 10, ~100-byte messages, medians over ``--runs`` runs:

   - ``memory``: one daemon (``--engine memory --fsync no``), the publisher and
     the 10 subscriber processes on it;
   - ``redis x2``: two daemons on one Redis, the publisher on A, 5 subscribers
     on A and 5 on B (every message goes through its stream and both
     daemons' XREAD loops);
   - ``redis-py``: redis-py PUBLISH pipelined in batches of 500 to the same
     Redis, 10 subscribers on ``pubsub().get_message``.

   Figure: messages delivered per second (all received / time from the first
   push to the last receive).

2. Failover interruption: a subscriber connected to ``[A, B]`` receives
   a publisher's steady stream (one message a millisecond, from daemon C); A
   is killed (SIGKILL); the interruption is the longest time between two
   messages received around the kill.  Each run checks that the seqs received
   are consecutive (nothing missed or repeated).  p50 and max over runs.

The machine is shared: the figures are indicative.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

from common import ROOT, DaemonProcess, percentile, start_redis, table  # type: ignore
from redis_fanout import connected, fanout, lttx_push, redis_py_push  # type: ignore

sys.path.insert(0, ROOT)

import lttx  # noqa: E402

SUBSCRIBERS = 10


def fanout_runs(runs: int, messages: int, redis_port: int, r: Any) -> dict[str, list[float]]:
    url = f"redis://127.0.0.1:{redis_port}/0"
    figures: dict[str, list[float]] = {"memory": [], "redis x2": [], "redis-py": []}

    with DaemonProcess("--fsync", "no") as mem, \
            DaemonProcess("--engine", "redis", "--redis", url) as a, \
            DaemonProcess("--engine", "redis", "--redis", url) as b:
        cm, ca = connected(mem.port), connected(a.port)
        connected(b.port).close()
        for _ in range(runs):
            figures["memory"].append(
                fanout("lttx", [mem.port], SUBSCRIBERS, messages, lttx_push(cm)))
            figures["redis x2"].append(
                fanout("lttx", [a.port, b.port], SUBSCRIBERS, messages, lttx_push(ca)))
            figures["redis-py"].append(
                fanout("redis", [redis_port], SUBSCRIBERS, messages, redis_py_push(r)))
        cm.close()
        ca.close()
    return figures


def failover_once(redis_port: int) -> tuple[float, bool]:
    """One kill: (the longest silence around it in s, whether the seqs were consecutive)."""
    url = f"redis://127.0.0.1:{redis_port}/0"
    channel = f"fo{time.monotonic_ns()}"
    with DaemonProcess("--engine", "redis", "--redis", url) as a, \
            DaemonProcess("--engine", "redis", "--redis", url) as b, \
            DaemonProcess("--engine", "redis", "--redis", url) as c:
        connected(a.port).close()
        connected(b.port).close()
        publisher = connected(c.port)
        client = lttx.connect([f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], token="bench",
                              timeout=30)
        client.subscribe(channel)
        received: list[tuple[float, int]] = []
        stop = threading.Event()

        def publish() -> None:
            i = 0
            while not stop.is_set():
                publisher.push("k", i, channel)
                publisher.flush()
                i += 1
                time.sleep(0.001)

        thread = threading.Thread(target=publish, daemon=True)
        thread.start()
        while len(received) < 300:
            m = client.Q.get(timeout=30)
            received.append((time.monotonic(), m.seq))
        killed_at = time.monotonic()
        a.process.kill()
        a.process.wait()
        while True:
            m = client.Q.get(timeout=30)
            received.append((time.monotonic(), m.seq))
            if received[-1][0] - killed_at > 1.0 and len(received) > 600:
                break
        stop.set()
        thread.join(5)
        client.close()
        publisher.close()
    seqs = [s for _, s in received]
    times = [t for t, _ in received]
    window = [i for i, t in enumerate(times) if t >= killed_at - 0.05]
    silence = max(times[i] - times[i - 1] for i in window if i > 0)
    return silence, seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--failovers", type=int, default=5)
    args = parser.parse_args()
    messages = 5000 if args.quick else 20000
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed")
    tmp = tempfile.TemporaryDirectory()
    redis_proc, port, r = start_redis(server, tmp.name)
    try:
        figures = fanout_runs(args.runs, messages, port, r)
        failovers = [failover_once(port) for _ in range(args.failovers)]
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)
        tmp.cleanup()
    medians = {name: statistics.median(values) for name, values in figures.items()}
    rows = [[name, f"{medians[name]:,.0f}", f"{medians[name] / medians['redis-py']:.2f}",
             " ".join(f"{v:,.0f}" for v in figures[name])] for name in figures]
    print(f"fan-out 1 -> {SUBSCRIBERS}: {messages} messages, median of {args.runs} runs "
          f"(indicative: shared machine)")
    print(table(rows, ["set-up", "msgs delivered/s", "vs redis-py", "runs"]))
    silences = sorted(s for s, _ in failovers)
    print(f"\nfailover interruption over {len(silences)} SIGKILLs: "
          f"p50 {percentile(silences, 50) * 1000:.0f} ms, max {silences[-1] * 1000:.0f} ms; "
          f"seqs consecutive in {sum(ok for _, ok in failovers)} of {len(failovers)} runs")


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
