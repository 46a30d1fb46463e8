#!/usr/bin/env python3
"""
Put+get round trips through the blocking client, against a raw-socket
request/reply baseline measured in the same run.

    python3 benchmarks/roundtrip.py [--seconds 5]

The baseline is the least a Python client and server can do for one
request/reply: a blocking socket client sending one pre-encoded length-prefixed
frame and reading the reply from a server process that answers each frame with
a fixed frame, no decoding, no dispatch.  Both servers run as separate
processes on 127.0.0.1; the ratio is what LTtx costs over that.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lttx  # noqa: E402
from common import DaemonProcess, percentile, table  # noqa: E402

VALUE = {"600000.SH": [10.23, 10.24, 1500, "浦发银行"]}


def raw_server(listener: socket.socket) -> None:
    reply = struct.pack("!I", 4) + b"\x93\x01\x01\xc0"
    conn, _ = listener.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = b""
    while True:
        data = conn.recv(65536)
        if not data:
            return
        buf += data
        while len(buf) >= 4:
            (n,) = struct.unpack("!I", buf[:4])
            if len(buf) < 4 + n:
                break
            buf = buf[4 + n:]
            conn.sendall(reply)


def recv_frame(sock: socket.socket) -> bytes:
    header = b""
    while len(header) < 4:
        header += sock.recv(4 - len(header))
    (n,) = struct.unpack("!I", header)
    body = b""
    while len(body) < n:
        body += sock.recv(n - len(body))
    return body


def measure(op, seconds: float) -> tuple[float, list[float]]:
    """Round trips per second and each round trip's latency in µs."""
    latencies = []
    end = time.perf_counter() + seconds
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        op()
        t1 = time.perf_counter()
        latencies.append((t1 - t0) * 1e6)
        if t1 > end:
            break
    return len(latencies) / (time.perf_counter() - start), sorted(latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    from lttx.wire import codec

    request = codec.encode([0, 1, "put", ["pos", VALUE]])
    frame = struct.pack("!I", len(request)) + request
    listener = socket.create_server(("127.0.0.1", 0))
    server = multiprocessing.Process(target=raw_server, args=(listener,), daemon=True)
    server.start()
    sock = socket.create_connection(listener.getsockname())
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def raw_round_trip() -> None:
        sock.sendall(frame)
        recv_frame(sock)

    rows = []
    raw_rate, raw_lat = measure(raw_round_trip, args.seconds)
    rows.append(["raw socket request/reply", f"{raw_rate:,.0f}", f"{percentile(raw_lat, 50):.0f}",
                 f"{percentile(raw_lat, 99):.0f}", "1.00"])
    sock.close()

    with DaemonProcess() as daemon:
        client = lttx.connect("127.0.0.1", daemon.port, token=daemon.token)
        counter = iter(range(10**12))

        def put_get() -> None:
            client.put("pos", VALUE)
            client.get("pos")

        def put_only() -> None:
            client.put("n", next(counter))

        for label, op, per_call in (("lttx put+get (2 round trips)", put_get, 2),
                                    ("lttx put", put_only, 1)):
            rate, lat = measure(op, args.seconds)
            rate *= per_call
            lat = sorted(x / per_call for x in lat)
            rows.append([label, f"{rate:,.0f}", f"{percentile(lat, 50):.0f}",
                         f"{percentile(lat, 99):.0f}", f"{rate / raw_rate:.2f}"])
        client.close()

    print(table(rows, ["scenario", "round trips/s", "p50 µs", "p99 µs", "vs raw"]))
    server.terminate()


if __name__ == "__main__":
    main()
