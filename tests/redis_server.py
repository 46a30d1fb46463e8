"""
A real ``redis-server`` for tests, on 127.0.0.1 and a free port, without
persistence, in a temporary directory; skipped when it is not installed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Optional

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SkipTest, TestCase

REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server; its output is collected so tests wait on its log lines."""

    def __init__(self, testcase: TestCase, *args: str, port: Optional[int] = None,
                 start: bool = True, sentinel_of: Optional[tuple[str, int]] = None,
                 failover_timeout_ms: int = 5000, down_after_ms: int = 500) -> None:
        if REDIS_SERVER is None:
            raise SkipTest("redis-server is not installed (.ci/run installs it with apt-get)")
        self.testcase = testcase
        self.port = port or free_port()
        self.dir = os.path.abspath(testcase.mktemp())
        os.makedirs(self.dir, exist_ok=True)
        self.args = list(args)
        #: (master name, master port): run as a sentinel monitoring it
        self.sentinel_of = sentinel_of
        #: a sentinel fails over the same master again only after twice this
        self.failover_timeout_ms = failover_timeout_ms
        self.down_after_ms = down_after_ms
        self.process: Optional[subprocess.Popen[str]] = None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20.0) -> "RedisServer":
        assert REDIS_SERVER is not None
        self.lines = []
        if self.sentinel_of is None:
            command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1",
                       "--save", "", "--appendonly", "no", "--dir", self.dir, *self.args]
        else:
            # A sentinel rewrites its configuration file: one of its own.
            name, master_port = self.sentinel_of
            config = os.path.join(self.dir, "sentinel.conf")
            with open(config, "w") as f:
                f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
                        f"sentinel monitor {name} 127.0.0.1 {master_port} 2\n"
                        f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
                        f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n")
            command = [REDIS_SERVER, config, "--sentinel"]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        self.testcase.addCleanup(self.stop)
        self.wait_for_log(r"Ready to accept connections" if self.sentinel_of is None
                          else r"\+monitor master", timeout)
        return self

    def _read(self, process: "subprocess.Popen[str]") -> None:
        assert process.stdout is not None
        for line in process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = 20.0, count: int = 1) -> str:
        """Wait until ``count`` log lines match ``pattern``; the last of them."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [line for line in self.lines if regex.search(line)]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"redis-server: no log line matching {pattern!r}:\n"
                                         + "\n".join(self.lines[-20:]))
                self._changed.wait(min(left, 0.5))

    def kill(self) -> None:
        """SIGKILL: the machine is gone, nothing is flushed or handed over."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class RedisClientTestCase(TestCase):
    """A test with its own redis-server and a connected RedisClient (``self.client``)
    that knows the store's scripts."""

    timeout = 60

    def setUp(self) -> "Deferred[None]":
        from twisted.internet import reactor

        from lttx.engines.redis.resp import RedisAddress, RedisClient
        from lttx.engines.redis.store import SCRIPTS

        self.server = RedisServer(self)
        self.client = RedisClient(reactor, RedisAddress.from_url(self.server.url),
                                  scripts=SCRIPTS)
        self.client.start()
        self.addCleanup(self.client.stop)
        connected: Deferred[None] = self.client.service.whenConnected()
        return connected
