"""
Acknowledged writes on the Redis engine: put+get pairs per second with and
without ``--redis-wait 1``, a replica running, and with a watcher on the
daemon (its change feed running: each write's reply waits until the feed has
read the change).

Run by hand from the checkout (about a minute)::

    python3 benchmarks/redis_wait.py
    python3 benchmarks/redis_wait.py --quick

One ``redis-server`` master and one replica started here (no persistence),
one daemon per set-up on the master; one blocking client, each call waiting
for its reply; the median of ``--runs`` runs of ``--pairs`` pairs each,
the set-ups interleaved run by run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from common import ROOT, DaemonProcess, start_redis, table  # type: ignore[import-not-found]

sys.path.insert(0, ROOT)

import lttx  # noqa: E402
from redis_engine import round_trips  # type: ignore[import-not-found]  # noqa: E402
from redis_fanout import wait_for_redis  # type: ignore[import-not-found]  # noqa: E402


def start_replica(server: str, directory: str, master_port: int) -> tuple[Any, int]:
    """A replica of the master, once its first sync is done (at most 20 s)."""
    import socket

    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", directory,
                             "--replicaof", "127.0.0.1", str(master_port)],
                            stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 20
    while True:
        try:
            if client.info("replication").get("master_link_status") == "up":
                return proc, port
        except redis.ConnectionError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the replica did not sync")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=2000)
    args = parser.parse_args()
    runs, pairs = (3, 500) if args.quick else (args.runs, args.pairs)
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed")
    tmp = tempfile.TemporaryDirectory()
    os.makedirs(os.path.join(tmp.name, "replica"))
    master, port, _ = start_redis(server, tmp.name)
    replica, _ = start_replica(server, os.path.join(tmp.name, "replica"), port)
    url = f"redis://127.0.0.1:{port}/0"
    figures: dict[str, list[float]] = {}
    # One daemon per set-up: a daemon's change feed, once a watch started it,
    # runs as long as the daemon.
    options = {"plain": (), "--redis-wait 1": ("--redis-wait", "1"),
               "plain, a watcher": (), "--redis-wait 1, a watcher": ("--redis-wait", "1")}
    daemons = [DaemonProcess("--engine", "redis", "--redis", url, *extra)
               for extra in options.values()]
    try:
        setups = {}
        for name, daemon in zip(options, daemons):
            client = lttx.connect("127.0.0.1", daemon.port, token="bench", timeout=60)
            wait_for_redis(client)
            if "watcher" in name:
                watcher = lttx.connect("127.0.0.1", daemon.port, token="bench", timeout=60)
                watcher.watch("k*", callback=lambda change: None)
            setups[name] = client
        for run in range(runs + 1):  # the first run warms up
            for name, client in setups.items():
                rate = round_trips(client.put, client.get, pairs)
                if run:
                    figures.setdefault(name, []).append(rate)
    finally:
        for daemon in daemons:
            daemon.__exit__(None, None, None)
        for proc in (replica, master):
            proc.terminate()
            proc.wait(10)
        tmp.cleanup()
    base = statistics.median(figures["plain"])
    rows = [[name, f"{statistics.median(rates):,.0f}",
             f"{statistics.median(rates) / base:.2f}", f"{min(rates):,.0f}-{max(rates):,.0f}"]
            for name, rates in figures.items()]
    print(f"put+get pairs/s, one blocking client, {pairs} pairs per run, median of "
          f"{runs} runs (indicative: one machine, shared)")
    print(table(rows, ["set-up", "pairs/s", "vs plain", "range"]))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
