"""
The ORIGINAL ``tx.py`` client, unmodified, in a subprocess the tests drive.

``tx.py`` is imported from ``<repo>/../shared/seed-client`` (CI puts
``../shared`` beside the checkout), else ``/work/shared/seed-client``; it is
never copied or edited.  :class:`OldClient` starts a Python process that does
``from tx import *`` (as the original example scripts do) and then runs the
statements the test sends, one JSON line each, answering with the value of
the last expression as one ``@@RESULT`` line (tx.py prints much of its own).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from twisted.trial.unittest import SkipTest, TestCase

from .common import PACKAGE_ROOT, Daemon


def seed_client_dir() -> str:
    """Where the original client lives; SkipTest if it is nowhere."""
    candidates = [Path(PACKAGE_ROOT).parent / "shared" / "seed-client",
                  Path("/work/shared/seed-client")]
    for candidate in candidates:
        if (candidate / "tx.py").is_file():
            return str(candidate)
    raise SkipTest("the original LTtx client (seed-client/tx.py) is not in "
                   + " or ".join(map(str, candidates)))


DRIVER = r"""
import ast, json, os, sys
sys.path.insert(0, sys.argv[1])
from tx import *
ns = dict(globals())
out = os.fdopen(int(sys.argv[2]), "w")
for line in sys.stdin:
    code = json.loads(line)
    try:
        tree = ast.parse(code)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<test>", "exec"), ns)
        value = eval(compile(ast.Expression(last.value), "<test>", "eval"), ns) if last else None
        reply = {"value": value}
    except BaseException as e:
        reply = {"error": "%s: %s" % (type(e).__name__, e)}
    sys.stdout.flush()
    out.write(json.dumps(reply, default=repr) + "\n")
    out.flush()
out.close()
sys.stdout.flush()
os._exit(0)
"""


class OldClient:
    """
    One process running the original ``tx.py``.

    :param cwd: its working directory (``send_file``/``recv_file`` paths).
    """

    def __init__(self, testcase: TestCase, cwd: Optional[str] = None) -> None:
        seed = seed_client_dir()
        self.cwd = cwd or testcase.mktemp()
        os.makedirs(self.cwd, exist_ok=True)
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
        results, theirs = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", DRIVER, seed, str(theirs)], stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.cwd,
                env=env, pass_fds=(theirs,))
        finally:
            os.close(theirs)
        self.results: "queue.Queue[dict[str, Any]]" = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read_output, daemon=True).start()
        threading.Thread(target=self._read_results, args=(results,), daemon=True).start()
        testcase.addCleanup(self.stop)

    def _read_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip("\n"))

    def _read_results(self, fd: int) -> None:
        with os.fdopen(fd) as results:
            for line in results:
                self.results.put(json.loads(line))

    def run(self, code: str, timeout: float = 30.0) -> Any:
        """Run ``code`` in the client process; the value of its last expression."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(code) + "\n")
        self.process.stdin.flush()
        try:
            reply = self.results.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the old client did not answer {code!r} within {timeout} s; "
                                 "its output:\n" + "\n".join(self.output[-30:])) from None
        if "error" in reply:
            raise AssertionError(f"the old client failed on {code!r}: {reply['error']}; "
                                 "its output:\n" + "\n".join(self.output[-30:]))
        return reply["value"]

    def stop(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            try:
                self.process.stdin.close()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def legacy_daemon(testcase: TestCase, *args: str, **kwargs: Any) -> tuple[Daemon, int]:
    """A real daemon with a legacy port; (the daemon, the legacy port)."""
    daemon = Daemon(testcase, "--legacy-listen", "tcp:0:interface=127.0.0.1", *args, **kwargs)
    line = daemon.wait_for_log(r"LTtx legacy protocol listening on .* at [\d.]+:(\d+)")
    return daemon, int(line.rsplit(":", 1)[1])
