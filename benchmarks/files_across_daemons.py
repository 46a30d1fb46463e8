#!/usr/bin/env python3
"""
Downloads across daemons: one file (256 MiB by default) uploaded through
daemon A of two ``--engine redis`` daemons on one ``redis-server``, then
downloaded by the blocking client from A itself and through B (which relays
it from A), in the same run; with each daemon's RSS growth during the
downloads (it should not follow the file size).

    python3 benchmarks/files_across_daemons.py [--size-mib 256] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lttx  # noqa: E402
from common import DaemonProcess, start_redis, table  # noqa: E402
from files import make_file  # noqa: E402

MiB = 1024 * 1024


class Peak:
    """The highest RSS of a daemon while a block runs."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.base = self.peak = daemon.rss_kib()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stop.wait(0.02):
            self.peak = max(self.peak, self.daemon.rss_kib())

    def __enter__(self) -> "Peak":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed")
    with tempfile.TemporaryDirectory() as work:
        proc, port, _ = start_redis(server, work)
        try:
            engine = ["--engine", "redis", "--redis", f"redis://127.0.0.1:{port}/0"]
            with DaemonProcess(*engine) as a, DaemonProcess(*engine) as b:
                ca = lttx.connect("127.0.0.1", a.port, token="bench", timeout=60)
                cb = lttx.connect("127.0.0.1", b.port, token="bench", timeout=60)
                while len(cb.status()["engine"]["daemons"]) < 2:
                    time.sleep(0.1)  # B has read A's entry in the daemon directory
                source = os.path.join(work, "data.bin")
                expected = make_file(source, args.size_mib * MiB)
                ca.send_file(source)
                rows = []
                for how, client, daemon in (("from A (holds it)", ca, a),
                                            ("through B (relayed from A)", cb, b)):
                    best, growth = float("inf"), 0.0
                    for run in range(args.runs):
                        target = os.path.join(work, f"copy-{run}.bin")
                        with Peak(daemon) as peak:
                            started = time.perf_counter()
                            got = client.recv_file("data.bin", target)
                            seconds = time.perf_counter() - started
                        assert got["md5"] == expected, got
                        os.unlink(target)
                        best = min(best, seconds)
                        growth = max(growth, peak.growth_mib)
                    rows.append([how, f"{args.size_mib / best:.0f}", f"{growth:.1f}"])
                ca.close()
                cb.close()
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"download of {args.size_mib} MiB, best of {args.runs}, MD5 checked each time")
    print(table(rows, ["download", "MiB/s", "RSS growth of the serving daemon (MiB)"]))


if __name__ == "__main__":
    main()
