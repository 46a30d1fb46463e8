#!/usr/bin/env python3
"""
LTtx against Redis and NATS, every scenario of issue 14's table in one run.

    pip install '.[bench]'                       # redis, hiredis, nats-py
    apt-get install redis-server nats-server     # the servers compared
    python3 benchmarks/compare.py [--runs 3] [--quick] [--only fanout,latency,...]

It starts ``twistd -n lttx``, ``redis-server`` and ``nats-server`` on
127.0.0.1 (free ports, no persistence), then runs each scenario on each
system in turn, ``--runs`` times, and prints the median with min..max and
LTtx's ratio against the goal.  Subscribers are separate processes
(``benchmarks/fanout.py sub ...``); the publisher and the request/reply
client run in this process.  Every scenario is bounded in time.

Scenarios (110-byte ticks, as in benchmarks/fanout.py):

- ``roundtrip``: put+get pairs/s through one blocking client (Redis: redis-py
  with hiredis, SET+GET; NATS has no store and is not measured);
- ``latency``: push -> receive at a steady 10,000 msg/s to 1 subscriber, p50 and p99;
  each publisher sends the ten messages of each 1 ms step together (Redis: a
  pipeline; NATS: publishes then a flush; LTtx: ``push_many``), each message
  stamped when it is given to its client;
- ``fanout``: 1 -> 1 and 1 -> 10, messages/s per subscriber, and whether
  every run delivered every message;
- ``files``: LTtx download/upload of one file (``--file-mib``, 256 by default)
  against a ``socket.sendfile`` copy, and the daemon's RSS growth.

Run on a quiet machine: other load moves every figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import fanout  # noqa: E402
from common import DaemonProcess  # noqa: E402

VALUE = {"600000.SH": [10.23, 10.24, 1500, "浦发银行"]}
SYSTEMS = ("lttx", "redis", "nats")
COLUMNS = ("redis", "nats", "lttx")  # as the issue's table has them


class AllServers(fanout.Servers):
    """fanout's servers (LTtx, the raw relay, Redis) and nats-server."""

    def __init__(self) -> None:
        super().__init__([])
        if shutil.which("nats-server"):
            self.ports["nats"] = port = fanout.free_port()
            self._start(["nats-server", "-a", "127.0.0.1", "-p", str(port)],
                        dict(os.environ))
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("nats-server did not start") from None
                    time.sleep(0.05)


# -- request/reply ----------------------------------------------------------------------


def pairs_per_second(op: Callable[[], None], seconds: float) -> float:
    op()  # warm up (connection, first allocation)
    count = 0
    start = time.perf_counter()
    end = start + seconds
    while True:
        op()
        count += 1
        if count % 64 == 0 and time.perf_counter() > end:
            break
    return count / (time.perf_counter() - start)


def roundtrip(servers: AllServers, system: str, seconds: float) -> Optional[dict[str, Any]]:
    if system == "lttx":
        import lttx

        client = lttx.connect("127.0.0.1", servers.ports["lttx"], token=fanout.TOKEN)

        def op() -> None:
            client.put("pos", VALUE)
            client.get("pos")

        try:
            return {"pairs_per_s": pairs_per_second(op, seconds)}
        finally:
            client.close()
    if system == "redis":
        import json

        import redis

        r = redis.Redis(port=servers.ports["redis"])
        encoded = json.dumps(VALUE)

        def op() -> None:
            r.set("pos", encoded)
            r.get("pos")

        try:
            return {"pairs_per_s": pairs_per_second(op, seconds)}
        finally:
            r.close()
    return None


# -- files ------------------------------------------------------------------------------


def files(size_mib: int) -> dict[str, Any]:
    import files as bench_files

    import lttx

    size = size_mib * bench_files.MiB
    timeout = max(60.0, size / (5 * bench_files.MiB))
    with tempfile.TemporaryDirectory(prefix="lttx-compare-files-") as work:
        source = os.path.join(work, "source.bin")
        expected = bench_files.make_file(source, size)
        copy = os.path.join(work, "copy.bin")
        baseline = size_mib / bench_files.sendfile_copy(source, copy, timeout)
        os.unlink(copy)
        with DaemonProcess(data_dir=os.path.join(work, "data")) as daemon:
            client = lttx.connect("127.0.0.1", daemon.port, token=daemon.token,
                                  timeout=timeout)
            rss = bench_files.PeakRss(daemon)
            started = time.perf_counter()
            assert client.send_file(source, resume=False)["md5"] == expected
            upload = size_mib / (time.perf_counter() - started)
            started = time.perf_counter()
            got = client.recv_file("source.bin", os.path.join(work, "down") + "/", resume=False)
            download = size_mib / (time.perf_counter() - started)
            assert got["md5"] == expected
            growth = rss.growth_mib()
            client.close()
    return {"download_x": download / baseline, "upload_x": upload / baseline,
            "rss_growth_mib": growth, "baseline_mib_s": baseline}


# -- the table --------------------------------------------------------------------------


def spread(values: list[float], fmt: str) -> str:
    """Median (min..max) of the runs."""
    if not values:
        return "—"
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{format(med, fmt)} ({format(min(values), fmt)}..{format(max(values), fmt)})"


def median(values: list[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer messages, shorter runs")
    parser.add_argument("--only", default="roundtrip,latency,fanout,files",
                        help="comma-separated scenarios")
    parser.add_argument("--file-mib", type=int, default=256)
    args = parser.parse_args()
    only = set(args.only.split(","))
    n1, n10, seconds = (50_000, 10_000, 2.0) if args.quick else (200_000, 40_000, 5.0)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    servers = AllServers()
    systems = [s for s in SYSTEMS if s in servers.ports]
    missing = [s for s in SYSTEMS if s not in systems]
    if missing:
        print(f"not installed, not measured: {', '.join(missing)}", file=sys.stderr)
    got: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def record(scenario: str, system: str, result: Optional[dict[str, Any]]) -> None:
        if result is not None:
            got.setdefault((scenario, system), []).append(result)
            shown = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in result.items()
                     if k in ("pairs_per_s", "p50_us", "p99_us", "delivered_per_s", "complete",
                              "download_x", "upload_x", "rss_growth_mib")}
            print(f"  {scenario:10s} {system:6s} {shown}", flush=True)

    try:
        for run in range(args.runs):
            print(f"== run {run + 1} of {args.runs}", flush=True)
            for system in systems:
                if "roundtrip" in only:
                    record("roundtrip", system, roundtrip(servers, system, seconds))
                if "latency" in only:
                    record("latency", system, fanout.scenario(
                        servers, system, subscribers=1, n=int(10_000 * seconds), rate=10_000.0))
                if "fanout" in only:
                    record("1->1", system, fanout.scenario(servers, system, 1, n1))
                    one = fanout.scenario(servers, system, 10, n10)
                    one["delivered_per_s"] /= 10  # per subscriber
                    record("1->10", system, one)
            if "files" in only:
                record("files", "lttx", files(args.file_mib))
    finally:
        servers.stop()
    print_table(got, args)


def print_table(got: dict[tuple[str, str], list[dict[str, Any]]], args: Any) -> None:
    def values(scenario: str, system: str, key: str) -> list[float]:
        return [r[key] for r in got.get((scenario, system), []) if r.get(key) is not None]

    def ratio(scenario: str, key: str, other: str, goal: float, higher: bool) -> str:
        mine, theirs = median(values(scenario, "lttx", key)), median(values(scenario, other, key))
        if mine is None or not theirs:
            return "—"
        x = mine / theirs
        met = x >= goal if higher else x <= goal
        return f"{x:.2f}x {other} (goal {'>=' if higher else '<='} {goal}x: " \
               f"{'met' if met else 'NOT met'})"

    rows = []
    for label, scenario, key, fmt, other, goal, higher in (
            ("put+get pairs/s, one blocking client", "roundtrip", "pairs_per_s", ",.0f",
             "redis", 1.0, True),
            ("push -> receive at 10,000 msg/s, p50 µs", "latency", "p50_us", ",.1f",
             "redis", 1.0, False),
            ("same, p99 µs", "latency", "p99_us", ",.0f", "redis", 1.5, False),
            ("fan-out 1 -> 1, msgs/s per subscriber", "1->1", "delivered_per_s", ",.0f",
             "nats", 1.5, True),
            ("fan-out 1 -> 10, msgs/s per subscriber", "1->10", "delivered_per_s", ",.0f",
             "nats", 2.0, True)):
        cells = [label] + [spread(values(scenario, s, key), fmt) for s in COLUMNS]
        cells.append(ratio(scenario, key, other, goal, higher))
        rows.append(cells)
    runs = got.get(("1->10", "lttx"), [])
    if runs:
        rows.append(["fan-out 1 -> 10, runs complete"] + [
            f"{sum(r['complete'] for r in got.get(('1->10', s), []))}/"
            f"{len(got.get(('1->10', s), []))}" for s in COLUMNS] + [""])
    if got.get(("files", "lttx")):
        down = values("files", "lttx", "download_x")
        up = values("files", "lttx", "upload_x")
        rss = values("files", "lttx", "rss_growth_mib")
        rows.append([f"file download / upload ({args.file_mib} MiB) vs socket.sendfile copy",
                     "—", "—", f"{spread(down, '.2f')} / {spread(up, '.2f')}",
                     f"goal >= 0.8 / >= 0.6: {'met' if median(down) >= 0.8 else 'NOT met'} / "
                     f"{'met' if median(up) >= 0.6 else 'NOT met'}; "
                     f"daemon RSS +{spread(rss, '.1f')} MiB"])
    header = ["scenario", "Redis", "NATS", "LTtx", "LTtx vs goal"]
    ordered = rows
    print(f"\n{args.runs} runs, median (min..max); {os.cpu_count()} CPUs; "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    widths = [max(len(str(r[i])) for r in ordered + [header]) for i in range(5)]
    for r in [header, ["-" * w for w in widths]] + ordered:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
