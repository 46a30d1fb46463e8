#!/usr/bin/env python3
"""
Watch and mirror: a mirror read next to a ``get`` round trip, and how long a
change takes to reach a watcher at a steady rate of changes.

    python3 benchmarks/watch.py [--seconds 3] [--rates 1000,10000]

- mirror read ns/op: ``m["pos_7"]`` of a mirror of 100 variables, against a
  plain ``dict`` lookup in the same loop, and ``c.get`` round trips/s of the
  blocking client;
- change-to-watcher latency: a writer process sends ``put`` requests on a raw
  socket (pre-encoded frames, paced every millisecond, replies drained by a
  thread), each value the sender's ``time.monotonic_ns()``; a blocking client
  in this process watches the name and takes each change with ``w.get()``.
  Latency is receipt time minus the value (CLOCK_MONOTONIC is the same clock
  in both processes).  The first half second is not counted;
- what the change log costs ``put``: pipelined puts/s on a raw socket to a
  fresh daemon nobody watches (no change is recorded), then to one whose
  every change is recorded and read by a watcher of ``*``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lttx  # noqa: E402
from common import DaemonProcess, percentile, table  # noqa: E402
from lttx.wire import codec  # noqa: E402

WARMUP = 0.5


def frame(payload: object) -> bytes:
    data = codec.encode(payload)
    return struct.pack("!I", len(data)) + data


def writer(port: int, token: str, rate: int, seconds: float, total: "Any") -> None:
    """Put ``lat`` = now (ns) ``rate`` times a second for ``seconds``, on a raw socket."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(frame([0, 0, "hello", [token, {}]]))
    threading.Thread(target=lambda: [None for _ in iter(lambda: sock.recv(1 << 20), b"")],
                     daemon=True).start()
    start = time.monotonic()
    sent = 0
    request_id = 1
    while True:
        now = time.monotonic()
        if now - start >= seconds:
            break
        due = int((now - start) * rate) - sent
        if due > 0:
            stamp = time.monotonic_ns()
            out = []
            for _ in range(due):
                out.append(frame([0, request_id, "put", ["lat", stamp]]))
                request_id += 1
            sock.sendall(b"".join(out))
            sent += due
        time.sleep(0.001)
    total.value = sent
    time.sleep(0.5)
    sock.close()


def latency(daemon: DaemonProcess, rate: int,
            seconds: float) -> tuple[int, int, float, float]:
    with lttx.connect("127.0.0.1", daemon.port, token=daemon.token) as c:
        w = c.watch("lat")
        total = multiprocessing.Value("q", 0)
        process = multiprocessing.Process(target=writer,
                                          args=(daemon.port, daemon.token, rate, seconds, total))
        process.start()
        start = time.monotonic()
        samples: list[float] = []
        received = 0
        while True:
            try:
                change = w.get(timeout=2)
            except TimeoutError:
                break
            received += 1
            if time.monotonic() - start > WARMUP:
                samples.append((time.monotonic_ns() - change.args[0]) / 1000)
        process.join(10)
        samples.sort()
        return received, total.value, percentile(samples, 50), percentile(samples, 99)


def put_rate(port: int, token: str, count: int) -> float:
    """Pipelined puts/s on one raw socket: all sent, every reply counted."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(frame([0, 0, "hello", [token, {}]]))
    frames = [frame([0, i + 1, "put", [f"p{i % 100}", {"qty": i, "px": 10.5}]])
              for i in range(count)]
    replies, buf = -1, b""  # the hello reply counts first
    start = time.perf_counter()
    threading.Thread(target=lambda: [sock.sendall(b"".join(frames[i:i + 1000]))
                                     for i in range(0, count, 1000)], daemon=True).start()
    while replies < count:
        buf += sock.recv(1 << 20)
        while len(buf) >= 4:
            (n,) = struct.unpack("!I", buf[:4])
            if len(buf) < 4 + n:
                break
            buf = buf[4 + n:]
            replies += 1
    rate = count / (time.perf_counter() - start)
    sock.close()
    return rate


def reads(daemon: DaemonProcess, seconds: float) -> tuple[float, float, float]:
    with lttx.connect("127.0.0.1", daemon.port, token=daemon.token) as c:
        for i in range(100):
            c.put(f"pos_{i}", {"qty": i, "px": 10.5})
        m = c.mirror("pos_*")
        plain = dict(m)
        n = 1_000_000
        t = time.perf_counter()
        for _ in range(n):
            m["pos_7"]
        mirror_ns = (time.perf_counter() - t) / n * 1e9
        t = time.perf_counter()
        for _ in range(n):
            plain["pos_7"]
        dict_ns = (time.perf_counter() - t) / n * 1e9
        count, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            c.get("pos_7")
            count += 1
        gets = count / (time.perf_counter() - t)
        m.close()
        return mirror_ns, dict_ns, gets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rates", default="1000,10000")
    args = parser.parse_args()
    rows = []
    with DaemonProcess() as daemon:
        mirror_ns, dict_ns, gets = reads(daemon, args.seconds)
        rows.append(["mirror read m[name]", f"{mirror_ns:.0f} ns/op",
                     f"dict lookup {dict_ns:.0f} ns/op; get {gets:,.0f} round trips/s "
                     f"({1e9 / gets:,.0f} ns/op)"])
        for rate in (int(r) for r in args.rates.split(",")):
            received, sent, p50, p99 = latency(daemon, rate, args.seconds)
            rows.append([f"change to watcher at {rate:,} changes/s",
                         f"p50 {p50:,.0f} µs, p99 {p99:,.0f} µs",
                         f"{received:,} of {sent:,} changes sent received"])
    with DaemonProcess() as daemon:
        unwatched = put_rate(daemon.port, daemon.token, 50_000)
        with lttx.connect("127.0.0.1", daemon.port, token=daemon.token) as c:
            c.watch("nothing_*")  # every change recorded and filtered, none sent
            recorded = put_rate(daemon.port, daemon.token, 50_000)
            c.watch("*", callback=lambda change: None)
            watched = put_rate(daemon.port, daemon.token, 50_000)
        rows.append(["pipelined puts/s: nobody watching (nothing recorded)",
                     f"{unwatched:,.0f}", ""])
        rows.append(["  every change recorded, a watcher of another pattern",
                     f"{recorded:,.0f}", f"{recorded / unwatched:.2f} of unwatched"])
        rows.append(["  a watcher of * (in this process) reading every change",
                     f"{watched:,.0f}", f"{watched / unwatched:.2f} of unwatched "
                     f"(the watcher shares the 2 cores)"])
    print(table(rows, ["what", "LTtx", "alongside"]))


if __name__ == "__main__":
    main()
