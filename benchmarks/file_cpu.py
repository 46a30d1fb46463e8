#!/usr/bin/env python3
"""
CPU seconds of each receiving side of a file transfer, a steadier figure
than MiB/s on a shared machine: the daemon's CPU (all its threads, from
/proc) while it receives an upload, and this client process's CPU
(``getrusage``) while it receives a download.

    python3 benchmarks/file_cpu.py [--size-mib 256] [--runs 3]

Prints the median of the runs, user and system seconds apart.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    size = args.size_mib * MiB
    timeout = max(60.0, size / (5 * MiB))
    up: list[tuple[float, float]] = []
    down: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="lttx-bench-filecpu-") as work:
        source = os.path.join(work, "source.bin")
        expected = make_file(source, size)
        with DaemonProcess(data_dir=os.path.join(work, "data")) as daemon:
            client = lttx.connect("127.0.0.1", daemon.port, token=daemon.token,
                                  timeout=timeout)
            pid = daemon.process.pid
            for _ in range(args.runs):
                before = daemon_cpu(pid)
                assert client.send_file(source, resume=False)["md5"] == expected
                after = daemon_cpu(pid)
                up.append((after[0] - before[0], after[1] - before[1]))
                before = own_cpu()
                got = client.recv_file("source.bin", os.path.join(work, "down") + "/",
                                       resume=False)
                after = own_cpu()
                assert got["md5"] == expected
                down.append((after[0] - before[0], after[1] - before[1]))
            client.close()
    for what, runs in (("upload: daemon", up), ("download: client", down)):
        user = statistics.median(u for u, _ in runs)
        system = statistics.median(s for _, s in runs)
        print(f"{what:18s} CPU per {args.size_mib} MiB: user {user:.2f} s, "
              f"system {system:.2f} s, total {user + system:.2f} s")


if __name__ == "__main__":
    main()
