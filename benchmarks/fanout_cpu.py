#!/usr/bin/env python3
"""
Which process saturates in LTtx's fan-out: the CPU time per message of the
publisher, the daemon and each subscriber, for 1 -> 1 and 1 -> 10.

    python3 benchmarks/fanout_cpu.py [--runs 3]

The scenarios are benchmarks/fanout.py's (200,000 messages 1 -> 1, 40,000
1 -> 10, subscribers in their own processes).  The publisher is this process
(its reactor thread included: ``os.times``), the daemon is read from /proc,
each subscriber reports its own CPU from its first message to its last
(``Recorder.report``: start-up and close left out).  CPU time moves far less
with the machine's load than wall time does, but /proc counts in clock ticks
(10 ms): a figure per message is good to about 0.05 µs here.  A warm-up
scenario first takes the publisher's imports out of the first run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fanout  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    servers = fanout.Servers([])
    pid = servers.daemon.pid
    try:
        fanout.scenario(servers, "lttx", 1, 1000)  # the publisher's imports
        for subscribers, n in ((1, 200_000), (10, 40_000)):
            for _ in range(args.runs):
                mine, daemon = os.times(), cpu_seconds(pid)
                result = fanout.scenario(servers, "lttx", subscribers, n)
                after = os.times()
                publisher = (after.user + after.system) - (mine.user + mine.system)
                daemon = cpu_seconds(pid) - daemon
                subscriber = statistics.median(result["subscriber_cpu_s"])
                seconds = result["seconds"]
                complete = "complete" if result["complete"] else "INCOMPLETE"
                print(f"1 -> {subscribers:2d}: {result['delivered_per_s'] / subscribers:9,.0f} "
                      f"msgs/s per subscriber ({complete});"
                      f" CPU µs/msg (share of one core): publisher {publisher / n * 1e6:.2f} "
                      f"({publisher / seconds:.0%}), daemon {daemon / n * 1e6:.2f} "
                      f"({daemon / seconds:.0%}), each subscriber (median) "
                      f"{subscriber / n * 1e6:.2f} ({subscriber / seconds:.0%})", flush=True)
    finally:
        servers.stop()


if __name__ == "__main__":
    main()
