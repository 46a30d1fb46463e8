#!/usr/bin/env python3
"""
CPU seconds of both ends of a file transfer, a steadier figure than MiB/s on
a shared machine: the daemon's CPU (all its threads, from /proc) and this
client process's CPU (``getrusage``) while an upload runs, then while a
download runs, and the wall time of each.

    python3 benchmarks/file_cpu.py [--size-mib 256] [--runs 3]

Prints the median of the runs, user and system seconds apart.  The sum of
both ends over the wall time says how busy the machine's cores were (the
two ends share them here).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lttx  # noqa: E402
from common import DaemonProcess  # noqa: E402
from files import MiB, make_file  # noqa: E402


def daemon_cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of process ``pid`` so far (every thread)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def own_cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


class Sample:
    """The CPU of both ends and the wall time of one transfer."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> "Sample":
        self.daemon0, self.client0 = daemon_cpu(self.pid), own_cpu()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.started
        d, c = daemon_cpu(self.pid), own_cpu()
        self.daemon = (d[0] - self.daemon0[0], d[1] - self.daemon0[1])
        self.client = (c[0] - self.client0[0], c[1] - self.client0[1])


def report(what: str, samples: list[Sample], size_mib: int) -> None:
    def median(values: object) -> float:
        return statistics.median(values)  # type: ignore[arg-type]

    wall = median(s.wall for s in samples)
    print(f"{what} of {size_mib} MiB: wall {wall:.2f} s ({size_mib / wall:.0f} MiB/s)")
    for end in ("daemon", "client"):
        user = median(getattr(s, end)[0] for s in samples)
        system = median(getattr(s, end)[1] for s in samples)
        print(f"  {end:6s} CPU: user {user:.2f} s, system {system:.2f} s, "
              f"total {user + system:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MiB
    timeout = max(60.0, size / (5 * MiB))
    up: list[Sample] = []
    down: list[Sample] = []
    with tempfile.TemporaryDirectory(prefix="lttx-bench-filecpu-") as work:
        source = os.path.join(work, "source.bin")
        expected = make_file(source, size)
        with DaemonProcess(data_dir=os.path.join(work, "data")) as daemon:
            client = lttx.connect("127.0.0.1", daemon.port, token=daemon.token,
                                  timeout=timeout)
            pid = daemon.process.pid
            for _ in range(args.runs):
                with Sample(pid) as sample:
                    assert client.send_file(source, resume=False)["md5"] == expected
                up.append(sample)
                with Sample(pid) as sample:
                    got = client.recv_file("source.bin", os.path.join(work, "down") + "/",
                                           resume=False)
                assert got["md5"] == expected
                down.append(sample)
                os.unlink(got["path"])
            client.close()
    report("upload", up, args.size_mib)
    report("download", down, args.size_mib)
    print(f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
