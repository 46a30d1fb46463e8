"""
Helpers shared by the tests: a real daemon in a subprocess, in-memory
protocol plumbing, frame builders.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Optional

from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import TestCase

import lttx
from lttx.wire import codec
from lttx.state.auth import TokenAuthenticator
from lttx.server.factory import LTtxFactory
from lttx.server.state import ServerState
from lttx.server.protocol import LTtxServerProtocol
from lttx.state.store import MemoryStore

#: The folder holding the ``lttx`` package under test (the checkout, or
#: site-packages): the daemon subprocess imports the very same code, and
#: finds the plugin in the ``twisted/plugins`` folder beside it.
PACKAGE_ROOT = str(Path(lttx.__file__).resolve().parent.parent)

TOKEN = "test-token"

# twistd as a module, so the subprocess uses this interpreter.
TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; run()"]


def listeners(service: Any) -> list[StreamServerEndpointService]:
    """The listening services among the children of makeService's service."""
    return [s for s in service if isinstance(s, StreamServerEndpointService)]


def frame(payload: Any) -> bytes:
    """One wire frame: 4-byte big-endian length, then the MessagePack payload."""
    data = codec.encode(payload)
    return struct.pack("!I", len(data)) + data


def frames_of(data: bytes) -> list[Any]:
    """Split bytes written by a protocol into decoded payloads."""
    out = []
    while data:
        (length,) = struct.unpack("!I", data[:4])
        out.append(codec.decode(data[4:4 + length]))
        data = data[4 + length:]
    return out


def server_protocol(
    token: Optional[str] = TOKEN,
    store: Any = None,
    peer: tuple[str, int] = ("127.0.0.1", 40000),
    authenticate: bool = True,
    factory: Optional[LTtxFactory] = None,
    **factory_args: Any,
) -> tuple[LTtxServerProtocol, StringTransport]:
    """A server protocol on a StringTransport, authenticated unless told not."""
    if factory is None:
        factory = LTtxFactory(ServerState(store if store is not None else MemoryStore(),
                              TokenAuthenticator(token), **factory_args))
    proto = factory.buildProtocol(IPv4Address("TCP", *peer))
    transport = StringTransport(peerAddress=IPv4Address("TCP", *peer))
    proto.makeConnection(transport)
    if authenticate:
        proto.dataReceived(frame([codec.REQUEST, 0, "hello", [token, {}]]))
        assert frames_of(transport.value())[0][0] == codec.REPLY, transport.value()
        transport.clear()
    return proto, transport


class Daemon:
    """
    A real ``twistd -n lttx`` on 127.0.0.1, on a free port the daemon picks.

    It is stopped with SIGTERM at the end of the test.  Its log lines are
    collected as they come, so tests can wait for one (no sleeps).
    """

    #: File descriptors the daemon inherits (a socket, for socket activation).
    pass_fds: tuple[int, ...] = ()

    def __init__(self, testcase: TestCase, *args: str, token: Optional[str] = TOKEN,
                 data_dir: Optional[str] = None, listen: Optional[list[str]] = None,
                 start: bool = True) -> None:
        self.testcase = testcase
        self.token = token
        self.data_dir = data_dir or testcase.mktemp()
        self.listen = listen or ["tcp:0:interface=127.0.0.1"]
        self.extra_args = list(args)
        self.lines: list[str] = []
        self._lines_changed = threading.Condition()
        self.process: Optional[subprocess.Popen[str]] = None
        self.port = 0
        if start:
            self.start()

    def command(self) -> list[str]:
        cmd = TWISTD + ["-n", "--pidfile=", "lttx", "--data-dir", self.data_dir]
        for endpoint in self.listen:
            cmd += ["--listen", endpoint]
        if self.token is not None:
            cmd += ["--token", self.token]
        return cmd + self.extra_args

    def start(self, timeout: float = 30.0) -> "Daemon":
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT, PYTHONUNBUFFERED="1")
        env.pop("LTTX_TOKEN", None)
        with self._lines_changed:  # (the last process's reader may still be reading)
            self.lines = []
            self._eof = False
            self.process = subprocess.Popen(
                self.command(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                env=env, pass_fds=self.pass_fds)
        threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
        self.testcase.addCleanup(self.stop)
        line = self.wait_for_log(r"LTtx listening on .* at [\d.]+:(\d+)", timeout)
        self.port = int(re.search(r"at [\d.]+:(\d+)", line).group(1))  # type: ignore[union-attr]
        return self

    def _read(self, process: "subprocess.Popen[str]") -> None:
        assert process.stdout is not None
        # A restarted daemon's reader must not add the old process's last lines
        # (or its end of output) to the new one's: only the current process counts.
        for line in process.stdout:
            with self._lines_changed:
                if process is self.process:
                    self.lines.append(line.rstrip("\n"))
                    self._lines_changed.notify_all()
        with self._lines_changed:
            if process is self.process:
                self._eof = True
                self._lines_changed.notify_all()

    def wait_for_log(self, pattern: str, timeout: float = 30.0, start: int = 0) -> str:
        """Wait until a log line (from index ``start`` on) matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lines_changed:
            while True:
                for line in self.lines[start:]:
                    if regex.search(line):
                        return line
                exited = self._eof  # the daemon closed its output: it has exited
                left = deadline - time.monotonic()
                if left <= 0 or exited:
                    raise AssertionError(
                        f"no log line matching {pattern!r} "
                        f"({'daemon exited' if exited else 'timed out'}); log:\n"
                        + "\n".join(self.lines[-40:]))
                self._lines_changed.wait(min(left, 0.5))

    def log_text(self) -> str:
        return "\n".join(self.lines)

    def connect(self, **kwargs: Any) -> lttx.client.Client:
        """A blocking client on this daemon, closed at the end of the test."""
        kwargs.setdefault("token", self.token)
        kwargs.setdefault("timeout", 15)
        client = lttx.connect("127.0.0.1", self.port, **kwargs)
        self.testcase.addCleanup(client.close)
        return client

    def rss_kib(self) -> int:
        """The daemon's resident memory, from /proc."""
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> Optional[int]:
        """SIGTERM and wait; the exit code (None if it was not running)."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the daemon did not stop within "
                                 f"{timeout}s of SIGTERM; log:\n" + self.log_text())

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up at all."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
