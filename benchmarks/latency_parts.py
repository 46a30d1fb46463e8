#!/usr/bin/env python3
"""
Where a tick's push-to-receive time goes, in compare.py's latency scenario
(a steady 10,000 messages/s, ten pushes together every 1 ms, one subscriber).

    python3 benchmarks/latency_parts.py [--runs 9] [--n 10000] [--systems lttx,redis]

Runs the scenario on each system in turn, ``--runs`` times (``lttx`` sends
each 1 ms step with ``push_many``, as compare.py does; ``lttx-each`` pushes
one by one), and prints per system the medians over the runs of:

- ``p50``: the scenario's push-to-receive p50 (as compare.py measures it; LTtx's
  subscriber here also times each put into ``Client.Q``, in its reactor
  thread, which adds a little to LTtx's figure);
- ``by place``: the p50 of the 1st, 2nd, ... 10th message of each 1 ms step.
  A row that falls by the time between two pushes from each place to the next
  means the step's messages reached the reader together;
- LTtx only, ``to Q``: push to the moment the subscriber's reactor thread put
  the message into ``Client.Q``; ``p50 - to Q`` is the hand-off from that
  thread to the one reading ``Q.get()`` (a futex wake, then the GIL);
- ``CPU µs per step``: of the server (the LTtx daemon, redis-server,
  nats-server or the raw relay; from ``/proc/<pid>/schedstat``) and of the
  subscriber process, per 1 ms step of ten.

Run by hand on a quiet machine; alternate the systems (as here) rather than
comparing runs made at different times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import os  # noqa: E402

import compare  # noqa: E402
import fanout  # noqa: E402

RATE = 10_000.0


def cpu_s(pid: int) -> float:
    """CPU seconds a process's threads have run, to the nanosecond."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:  # a thread that just ended
            continue
    return total / 1e9


def server_pid(servers: Any, system: str) -> int:
    """The pid of the process that relays ``system``'s messages."""
    if system == "lttx":
        return int(servers.daemon.pid)
    for proc in servers.procs:
        if (system == "redis" and proc.args[0] == "redis-server"
                or system == "nats" and proc.args[0] == "nats-server"
                or system == "raw" and "relay" in proc.args):
            return int(proc.pid)
    raise RuntimeError(f"no {system} server running")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--n", type=int, default=10_000, help="messages per run")
    parser.add_argument("--systems", default="lttx,lttx-each,redis",
                        help="lttx-each: LTtx pushing one by one (not push_many)")
    args = parser.parse_args()
    systems = args.systems.split(",")
    os.environ["LTTX_BENCH_SPLIT"] = "1"
    steps = args.n / fanout._step(RATE)
    servers = compare.AllServers()
    rows: dict[str, list[dict[str, Any]]] = {system: [] for system in systems}
    try:
        for system in systems:  # warm up
            fanout.scenario(servers, system.split("-")[0], subscribers=1, n=2000, rate=RATE)
        for _ in range(args.runs):
            for system in systems:
                name = system.split("-")[0]
                server = server_pid(servers, name)
                os.environ["LTTX_BENCH_PUSH"] = "each" if system == "lttx-each" else "step"
                before = cpu_s(server)
                out = fanout.scenario(servers, name, subscribers=1, n=args.n, rate=RATE)
                out["server_cpu_us"] = (cpu_s(server) - before) / steps * 1e6
                out["subscriber_cpu_us"] = out["subscriber_cpu_s"][0] / steps * 1e6
                rows[system].append(out)
    finally:
        servers.stop()
    for system, runs in rows.items():
        def med(key: str) -> float:
            return statistics.median(r[key] for r in runs if r.get(key) is not None)

        places = [statistics.median(r["p50_by_place_us"][k] for r in runs)
                  for k in range(len(runs[0]["p50_by_place_us"]))]
        each = ", ".join(f"{r['p50_us']:.0f}" for r in runs)
        print(f"{system:9s} p50 {med('p50_us'):6.1f} µs  (runs: {each})")
        print(f"{'':6s} by place {', '.join(f'{p:.0f}' for p in places)} µs")
        if system.startswith("lttx"):
            print(f"{'':6s} to Q {med('queued_p50_us'):6.1f} µs, hand-off to Q.get "
                  f"{med('p50_us') - med('queued_p50_us'):5.1f} µs")
        print(f"{'':6s} CPU µs per step: server {med('server_cpu_us'):6.1f}, "
              f"subscriber {med('subscriber_cpu_us'):6.1f}")


if __name__ == "__main__":
    main()
