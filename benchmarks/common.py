"""Shared by the benchmarks: start a real daemon, percentiles, table output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

ROOT = str(Path(__file__).resolve().parent.parent)
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class DaemonProcess:
    """``twistd -n lttx`` on 127.0.0.1 with a port it picks; a context manager."""

    def __init__(self, *args: str, token: Optional[str] = "bench",
                 data_dir: Optional[str] = None) -> None:
        self.token = token
        self._tmp = None if data_dir else tempfile.TemporaryDirectory()
        self.data_dir = data_dir or self._tmp.name  # type: ignore[union-attr]
        cmd = TWISTD + ["-n", "--pidfile=", "lttx", "--listen", "tcp:0:interface=127.0.0.1",
                        "--data-dir", self.data_dir, *args]
        if token:
            cmd += ["--token", token]
        # In ROOT: ``python -c`` puts the working directory first on sys.path.
        self.process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=dict(os.environ, PYTHONPATH=ROOT),
                                        cwd=ROOT)
        deadline = time.monotonic() + 30
        assert self.process.stdout is not None
        for line in self.process.stdout:
            match = re.search(r"LTtx listening on .* at [\d.]+:(\d+)", line)
            if match:
                self.port = int(match.group(1))
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not start")
        else:
            raise RuntimeError("the daemon exited")
        # Keep draining its log so it never blocks on a full pipe.
        import threading

        threading.Thread(target=lambda: [None for _ in self.process.stdout],  # type: ignore
                         daemon=True).start()

    def rss_kib(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.process.terminate()
        self.process.wait(30)
        if self._tmp is not None:
            self._tmp.cleanup()


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[index]


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def start_redis(server: str, directory: str) -> tuple["subprocess.Popen[bytes]", int, Any]:
    """A throwaway ``redis-server`` on 127.0.0.1 without persistence, and a
    redis-py client once it answers PING (at most 10 s): (process, port, client)."""
    import socket

    import redis

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    proc = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", directory],
                            stdout=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            return proc, port, client
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
