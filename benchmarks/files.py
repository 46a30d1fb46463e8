#!/usr/bin/env python3
"""
File transfer throughput: upload and download of one file (1 GiB by default)
through a real ``twistd -n lttx`` on 127.0.0.1 with the blocking client, next
to a plain ``socket.sendfile`` copy over loopback measured in the same run.

    python3 benchmarks/files.py [--size-mib 1024]

The baseline is the least a copy over TCP can cost: the kernel's sendfile on
one side, ``recv_into`` and ``write`` on the other, the copy fsynced as LTtx
fsyncs an upload.  LTtx adds framing, MD5 on both ends, the hidden partial
file and its rename; the ratios say what those cost.  Also reported: how much
the daemon's RSS grew during the transfers (it should not follow file size).
Bounded: a step slower than 5 MiB/s gives up.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import lttx  # noqa: E402
from common import DaemonProcess, table  # noqa: E402

MiB = 1024 * 1024
CHUNK = 256 * 1024


def make_file(path: str, size: int) -> str:
    """``size`` pseudo-random bytes in 1 MiB blocks (each block numbered); their MD5."""
    md5 = hashlib.md5()
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(0, size, MiB):
            chunk = (i.to_bytes(8, "big") + block)[:min(MiB, size - i)]
            f.write(chunk)
            md5.update(chunk)
    return md5.hexdigest()


def sendfile_copy(source: str, dest: str, timeout: float) -> float:
    """Seconds to copy ``source`` to ``dest`` over loopback with socket.sendfile."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def receive() -> None:
        conn, _ = listener.accept()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        with conn, open(dest, "wb") as f:
            while True:
                n = conn.recv_into(buffer)
                if not n:
                    break
                f.write(view[:n])
            f.flush()
            os.fsync(f.fileno())
        done.set()

    threading.Thread(target=receive, daemon=True).start()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", listener.getsockname()[1])) as sock, \
            open(source, "rb") as f:
        sock.sendfile(f)
    if not done.wait(timeout):
        raise SystemExit("the sendfile copy did not finish in time")
    listener.close()
    return time.perf_counter() - started


class PeakRss:
    """Samples a daemon's RSS every 20 ms while active."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.baseline = self.peak = daemon.rss_kib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.daemon.rss_kib())

    def growth_mib(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.baseline) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    args = parser.parse_args()
    size = args.size_mib * MiB
    timeout = max(60.0, size / (5 * MiB))
    with tempfile.TemporaryDirectory(prefix="lttx-bench-files-") as work:
        source = os.path.join(work, "source.bin")
        print(f"writing a {args.size_mib} MiB file ...", flush=True)
        expected = make_file(source, size)

        copy = os.path.join(work, "sendfile-copy.bin")
        baseline = size / MiB / sendfile_copy(source, copy, timeout)
        os.unlink(copy)

        with DaemonProcess(data_dir=os.path.join(work, "data")) as daemon:
            client = lttx.connect("127.0.0.1", daemon.port, token=daemon.token,
                                  timeout=timeout)
            rss = PeakRss(daemon)
            started = time.perf_counter()
            sent = client.send_file(source, resume=False)
            upload = size / MiB / (time.perf_counter() - started)
            assert sent["md5"] == expected, sent
            started = time.perf_counter()
            received = client.recv_file("source.bin", os.path.join(work, "down") + "/",
                                        resume=False)
            download = size / MiB / (time.perf_counter() - started)
            assert received["md5"] == expected, received
            growth = rss.growth_mib()
            client.close()

    print(f"\n{args.size_mib} MiB over 127.0.0.1, {os.cpu_count()} CPUs, "
          "both ends on one disk\n")
    print(table([
        ["socket.sendfile copy (baseline)", f"{baseline:.1f}", "1.00"],
        ["lttx upload (send_file)", f"{upload:.1f}", f"{upload / baseline:.2f}"],
        ["lttx download (recv_file)", f"{download:.1f}", f"{download / baseline:.2f}"],
    ], ["transfer", "MiB/s", "x baseline"]))
    print(f"\ndaemon RSS growth during both transfers: {growth:.1f} MiB")


if __name__ == "__main__":
    main()
