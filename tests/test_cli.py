"""
The ``lttx`` command against a real daemon, run as a user runs it: a
subprocess, its stdout, stderr and exit status.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from typing import IO, Any, Optional

from twisted.trial.unittest import SynchronousTestCase, TestCase

from lttx import __version__, cli
from lttx.cli import output

from .certs import CA, ssl_endpoint
from .common import PACKAGE_ROOT, TOKEN, Daemon


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTTX_")}
    env.update(PYTHONPATH=PACKAGE_ROOT, PYTHONUNBUFFERED="1", **extra)
    return env


def run_cli(*args: str, env: Optional[dict[str, str]] = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``lttx ARGS`` in a subprocess; its result."""
    return subprocess.run([sys.executable, "-m", "lttx.cli", *args], capture_output=True,
                          text=True, env=env if env is not None else cli_env(),
                          timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CLITestMixin:
    """Helpers for tests that run ``lttx`` on a daemon."""

    daemon: Daemon

    def lttx(self, *args: str) -> str:
        """
        Run ``lttx ARGS`` on the test's daemon in this process (a subprocess
        costs seconds on a busy machine; errors are run as subprocesses, by
        :meth:`lttx_error`), check it succeeded silently, give its stdout.
        """
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(["--port", str(self.daemon.port), "--token", TOKEN, *args],
                          out=out, err=err)
        self.assertEqual((status, err.getvalue()), (0, ""),  # type: ignore[attr-defined]
                         f"lttx {' '.join(args)}")
        return out.getvalue()

    def lttx_error(self, *args: str, status: int, **env: str) -> str:
        """Run a failing ``lttx``; its one stderr line."""
        environ = cli_env(**{"LTTX_PORT": str(self.daemon.port), "LTTX_TOKEN": TOKEN, **env})
        result = run_cli(*args, env=environ)
        self.assertEqual(result.returncode, status,  # type: ignore[attr-defined]
                         f"lttx {' '.join(args)}: {result.stdout} {result.stderr}")
        self.assertEqual(result.stdout, "")  # type: ignore[attr-defined]
        return self.assert_one_error_line(result.stderr)

    def assert_one_error_line(self, stderr: str) -> str:
        self.assertNotIn("Traceback", stderr)  # type: ignore[attr-defined]
        lines = stderr.splitlines()
        self.assertEqual(len(lines), 1, stderr)  # type: ignore[attr-defined]
        self.assertTrue(lines[0].startswith("lttx"), stderr)  # type: ignore[attr-defined]
        return lines[0]


class VariableCommandsTests(CLITestMixin, TestCase):
    """get, put, keys, del on a real daemon."""

    def setUp(self) -> None:
        self.daemon = Daemon(self)

    def test_put_get_keys_del(self) -> None:
        """A value put from the shell comes back as the same JSON; keys and del work."""
        value = {"600000.SH": {"name": "浦发银行", "price": 10.23, "bid": [10.22, None]},
                 "halted": False}
        self.assertEqual(self.lttx("put", "pos", json.dumps(value)), "")
        out = self.lttx("get", "pos")
        self.assertEqual(json.loads(out), value)
        self.assertIn("浦发银行", out)  # readable, not \\u escapes
        self.lttx("put", "orders", "[]")
        self.lttx("put", "note", '"text"')
        self.assertEqual(self.lttx("keys"), "note\norders\npos\n")
        self.assertEqual(self.lttx("keys", "p*"), "pos\n")
        self.assertEqual(json.loads(self.lttx("keys", "--json", "*o*")),
                         ["note", "orders", "pos"])
        self.lttx("del", "pos")
        self.assertEqual(self.lttx("keys"), "note\norders\n")

    def test_revisions_counters_and_expiry(self) -> None:
        """get --revision, put --if-revision/--ttl, incr and ttl from the shell."""
        self.lttx("put", "limits", "{\"max\": 5}", "--if-revision", "0")
        self.assertEqual(json.loads(self.lttx("get", "limits", "--revision")),
                         {"value": {"max": 5}, "revision": 1})
        line = self.lttx_error("put", "limits", "{}", "--if-revision", "0", status=1)
        self.assertEqual(line, "lttx: 'limits' exists (revision 1); if_revision=0 needs it absent")
        self.lttx("put", "limits", "{}", "--if-revision", "1", "--ttl", "60")
        self.assertLessEqual(float(self.lttx("ttl", "limits")), 60)
        self.assertEqual(self.lttx("incr", "fills"), "1\n")
        self.assertEqual(self.lttx("incr", "fills", "2.5"), "3.5\n")
        self.assertEqual(self.lttx("ttl", "fills"), "null\n")
        self.lttx_error("ttl", "nothing", status=5)
        self.lttx_error("incr", "fills", "x", status=2)

    def test_bytes_and_odd_keys_round_trip(self) -> None:
        """Bytes and non-string dict keys, put by a client, print losslessly and put back."""
        client = self.daemon.connect()
        value = {"raw": b"\x00\xff", "by_id": {1: "a", 2: b"b"}, "$bytes": "not bytes"}
        client.put("odd", value)
        out = self.lttx("get", "odd")
        self.assertEqual(json.loads(out), {
            "raw": {"$bytes": "AP8="},
            "by_id": {"$map": [[1, "a"], [2, {"$bytes": "Yg=="}]]},
            "$bytes": "not bytes"})
        self.lttx("put", "copy", out.strip())
        self.assertEqual(client.get("copy"), value)
        client.put("tricky", {"$bytes": "AP8="})  # a dict that looks like bytes
        self.lttx("put", "tricky2", self.lttx("get", "tricky").strip())
        self.assertEqual(client.get("tricky2"), {"$bytes": "AP8="})

    def test_options_override_environment(self) -> None:
        """--host/--port/--token work before or after the command, over the environment."""
        args = ["--port", str(self.daemon.port), "--token", TOKEN]
        env = cli_env(LTTX_PORT="1", LTTX_TOKEN="wrong")
        self.assertEqual(run_cli("put", "a", "1", *args, env=env).returncode, 0)
        result = run_cli(*args, "--host", "127.0.0.1", "get", "a", env=env)
        self.assertEqual((result.returncode, result.stdout), (0, "1\n"), result.stderr)

    def test_not_found(self) -> None:
        """get and del of a missing variable: one line, status 5; a stored null is found."""
        line = self.lttx_error("get", "nothing", status=cli.EXIT_NOT_FOUND)
        self.assertEqual(line, "lttx: no variable named 'nothing'")
        self.lttx_error("del", "nothing", status=cli.EXIT_NOT_FOUND)
        self.lttx("put", "none", "null")
        self.assertEqual(self.lttx("get", "none"), "null\n")

    def test_refused_request(self) -> None:
        """A request LTtx refuses (a value over --max-frame): its message, status 1."""
        self.daemon = Daemon(self, "--max-frame", "64KiB")
        line = self.lttx_error("put", "big", json.dumps("x" * 100_000), status=cli.EXIT_ERROR)
        self.assertRegex(line, r"^lttx: put needs a frame of \d+ bytes, over the daemon's limit")

    def test_bad_json_is_a_usage_error(self) -> None:
        """Invalid JSON for put: one line naming the problem, status 2, nothing sent."""
        line = self.lttx_error("put", "x", "{oops", status=cli.EXIT_USAGE)
        self.assertIn("not valid JSON", line)
        line = self.lttx_error("put", "x", '{"$bytes": "***"}', status=cli.EXIT_USAGE)
        self.assertIn("base64", line)
        self.assertEqual(self.lttx("keys"), "")

    def test_bad_token(self) -> None:
        """A wrong token: one clear line, status 4, no traceback."""
        line = self.lttx_error("get", "x", status=cli.EXIT_AUTH, LTTX_TOKEN="wrong")
        self.assertEqual(line, "lttx: wrong token")
        self.daemon.wait_for_log("failed to authenticate: wrong token")

    def test_status(self) -> None:
        """status --json reports the figures; the human form shows them."""
        client = self.daemon.connect()
        client.put("a", 1)
        client.put("b", 2)
        report = json.loads(self.lttx("status", "--json"))
        self.assertEqual(report["version"], __version__)
        self.assertEqual(report["variables"], 2)
        self.assertGreaterEqual(report["connections"], 2)  # this client and lttx's own
        self.assertGreater(report["uptime"], 0)
        self.assertGreater(report["journal"]["journal_bytes"], 0)
        self.assertEqual(report["journal"]["fsync"], "everysec")
        text = self.lttx("status")
        self.assertIn(f"LTtx {__version__} at 127.0.0.1:{self.daemon.port}, up ", text)
        self.assertRegex(text, r"(?m)^journal:\n(  .*\n)*  journal bytes\s+\d+ B$")
        self.assertRegex(text, r"(?m)^variables\s+2$")
        self.assertRegex(text, r"(?m)^connections\s+\d+$")


class LineReader:
    """The lines a subprocess writes on one stream, read by a thread, so a
    test waits for one with a bounded timeout."""

    def __init__(self, stream: IO[str]) -> None:
        self.lines: "queue.Queue[str]" = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")  # end of stream

    def next(self, timeout: float = 30) -> str:
        return self.lines.get(timeout=timeout)


class ChannelCommandsTests(CLITestMixin, TestCase):
    """sub and push on a real daemon."""

    def setUp(self) -> None:
        self.daemon = Daemon(self)

    def start_sub(self, *args: str) -> tuple["subprocess.Popen[str]", LineReader, LineReader]:
        env = cli_env(LTTX_PORT=str(self.daemon.port), LTTX_TOKEN=TOKEN)
        process = subprocess.Popen([sys.executable, "-m", "lttx.cli", "sub", *args],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, env=env)
        self.addCleanup(lambda: process.poll() is None and (process.kill(), process.wait()))
        out, err = LineReader(process.stdout), LineReader(process.stderr)  # type: ignore
        self.assertIn("subscribed to", err.next())
        return process, out, err

    def test_sub_prints_json_lines(self) -> None:
        """sub prints one JSON line per message as it arrives, and --count ends it."""
        process, out, _ = self.start_sub("hq_center@orders", "--count", "3")
        publisher = self.daemon.connect()
        publisher.push("600000.SH", "10.23|10.24", "hq_center")
        self.assertEqual(json.loads(out.next()), {
            "channel": "hq_center", "seq": 1, "key": "600000.SH", "data": "10.23|10.24"})
        publisher.push("o1", {"side": "买", "raw": b"\x01"}, "orders")
        publisher.push(7, None, "hq_center")
        self.assertEqual(json.loads(out.next()), {
            "channel": "orders", "seq": 1, "key": "o1",
            "data": {"side": "买", "raw": {"$bytes": "AQ=="}}})
        self.assertEqual(json.loads(out.next()), {
            "channel": "hq_center", "seq": 2, "key": 7, "data": None})
        self.assertEqual(process.wait(30), 0)
        self.assertEqual(out.next(), "")

    def test_publish_prints_the_seq_and_sub_reads_the_history(self) -> None:
        """publish prints each message's seq; sub --history 2 prints the last two
        retained, then live ones; --since and --last-values likewise."""
        self.assertEqual(self.lttx("publish", "orders", "o1", '{"side": "buy"}').strip(), "1")
        self.assertEqual(self.lttx("publish", "orders", "o2", '"sell"').strip(), "2")
        self.assertEqual(self.lttx("publish", "orders", "o1", "3").strip(), "3")
        for args, wanted in ((["--history", "2"], [2, 3, 4]), (["--since", "0"], [1, 2, 3, 4]),
                             (["--last-values"], [2, 3, 4])):
            process, out, _ = self.start_sub("orders", "--count", str(len(wanted)), *args)
            if args[0] == "--history":
                self.assertEqual(self.lttx("publish", "orders", "o3", "4").strip(), "4")
            self.assertEqual([json.loads(out.next())["seq"] for _ in wanted], wanted)
            self.assertEqual(process.wait(30), 0)

    def test_sub_ends_cleanly_on_ctrl_c(self) -> None:
        """SIGINT ends sub with status 0 and no traceback, after what it printed."""
        process, out, err = self.start_sub("chat")
        self.daemon.connect().push("me", "hello", "chat")
        self.assertEqual(json.loads(out.next())["data"], "hello")
        process.send_signal(signal.SIGINT)
        self.assertEqual(process.wait(30), 0)
        self.assertEqual(err.next(), "")  # nothing more on stderr
        self.daemon.wait_for_log("disconnected")

    def test_sub_wrong_password(self) -> None:
        """sub with a wrong channel password: one line, status 4."""
        self.daemon.connect().subscribe("private", password="pw")
        line = self.lttx_error("sub", "private", "--password", "wrong", status=cli.EXIT_AUTH)
        self.assertIn("password", line)

    def test_watch_prints_json_lines(self) -> None:
        """watch prints one JSON line per change of a matching variable, in order."""
        env = cli_env(LTTX_PORT=str(self.daemon.port), LTTX_TOKEN=TOKEN)
        process = subprocess.Popen([sys.executable, "-m", "lttx.cli", "watch", "pos_*",
                                    "--count", "3"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        self.addCleanup(lambda: process.poll() is None and (process.kill(), process.wait()))
        out, err = LineReader(process.stdout), LineReader(process.stderr)  # type: ignore
        self.assertIn("watching pos_*", err.next())
        writer = self.daemon.connect()
        writer.put("pos_A", {"qty": 1})
        writer.put("other", 1)
        writer.dict_change("pos_A", "qty", 2)
        writer.delete("pos_A")
        self.assertEqual([json.loads(out.next()) for _ in range(3)], [
            {"name": "pos_A", "op": "put", "args": [{"qty": 1}], "revision": 1},
            {"name": "pos_A", "op": "dict_change", "args": ["qty", 2], "revision": 2},
            {"name": "pos_A", "op": "delete", "args": [], "revision": 3}])
        self.assertEqual(process.wait(30), 0)

    def test_push(self) -> None:
        """push sends a string message, or a JSON value with --json, and returns."""
        client = self.daemon.connect()
        client.subscribe("hq_center")
        self.assertEqual(self.lttx("push", "hq_center", "600000.SH", "10.23"), "")
        message = client.Q.get(timeout=15)
        self.assertEqual(tuple(message), ("hq_center", "600000.SH", "10.23", 1))
        self.lttx("push", "--json", "hq_center", "600000", '{"p": [10.23, 10.24]}')
        message = client.Q.get(timeout=15)
        self.assertEqual((message.key, message.data), ("600000", {"p": [10.23, 10.24]}))
        self.lttx_error("push", "--json", "hq_center", "k", "{", status=cli.EXIT_USAGE)

    def test_status_shows_channels(self) -> None:
        """status reports each channel's subscribers and messages, in JSON and for people."""
        client = self.daemon.connect()
        other = self.daemon.connect()
        client.subscribe("hq_center")
        other.subscribe("hq_center@orders", conflate=True)
        for i in range(10):
            client.push("600000.SH", str(i), "hq_center")
        for _ in range(10):
            client.Q.get(timeout=15)
        report = json.loads(self.lttx("status", "--json"))
        channels = report["channels"]["channels"]
        self.assertEqual((channels["hq_center"]["subscribers"], channels["hq_center"]["messages"]),
                         (2, 10))
        self.assertEqual(channels["orders"]["subscribers"], 1)
        self.assertEqual(report["channels"]["gaps"], 0)
        self.assertEqual(channels["hq_center"]["newest_seq"], 10)
        text = self.lttx("status")
        self.assertRegex(text, r"(?m)^  channel\s+subscribers\s+conflating\s+messages\s+rate")
        self.assertRegex(text, r"(?m)^  hq_center\s+2\s+1\s+10\s+[\d.]+/s")
        self.assertRegex(text, r"(?m)^  gaps\s+0$")
        self.assertRegex(text, r"(?m)^  conflated drops\s+\d+$")


class FileCommandsTests(CLITestMixin, TestCase):
    """upload, download and files on a real daemon."""

    def setUp(self) -> None:
        self.daemon = Daemon(self)

    def test_upload_files_download(self) -> None:
        """A file uploaded from the shell is listed and comes back byte for byte."""
        source = self.mktemp()
        content = os.urandom(300_000)
        with open(source, "wb") as f:
            f.write(content)
        info = json.loads(self.lttx("upload", source, "--name", "report.csv"))
        self.assertEqual(info, {"name": "report.csv", "size": 300_000,
                                "md5": hashlib.md5(content).hexdigest()})
        listing = self.lttx("files")
        self.assertRegex(listing, r"^\s+300000  \d{4}-\d\d-\d\d \d\d:\d\d:\d\d  report.csv\n$")
        [entry] = json.loads(self.lttx("files", "--json"))
        self.assertEqual((entry["name"], entry["size"]), ("report.csv", 300_000))
        dest = self.mktemp()
        os.mkdir(dest)
        info = json.loads(self.lttx("download", "report.csv", dest))
        self.assertEqual(info["path"], os.path.join(dest, "report.csv"))
        with open(info["path"], "rb") as f:
            self.assertEqual(f.read(), content)
        report = json.loads(self.lttx("status", "--json"))
        self.assertEqual((report["files"]["files"], report["files"]["bytes"]), (1, 300_000))

    def test_progress_bars(self) -> None:
        """--progress draws a tqdm bar on stderr; stdout still holds only the JSON."""
        source = self.mktemp()
        with open(source, "wb") as f:
            f.write(b"x" * 100_000)
        environ = cli_env(LTTX_PORT=str(self.daemon.port), LTTX_TOKEN=TOKEN)
        download = ["download", "--progress", os.path.basename(source), self.mktemp()]
        for args in (["upload", "--progress", source], download):
            result = run_cli(*args, env=environ)
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(json.loads(result.stdout)["size"], 100_000)
            self.assertIn("100%", result.stderr)
            self.assertNotIn("Traceback", result.stderr)

    def test_file_errors(self) -> None:
        """A missing local or remote file: status 5; a refused name: status 1; one line each."""
        line = self.lttx_error("upload", "/no/such/file.csv", status=cli.EXIT_NOT_FOUND)
        self.assertEqual(line, "lttx: no such file: /no/such/file.csv")
        self.lttx_error("download", "nothing.csv", self.mktemp(), status=cli.EXIT_NOT_FOUND)
        source = self.mktemp()
        with open(source, "wb") as f:
            f.write(b"x")
        self.lttx_error("upload", source, "--name", "../escape", status=cli.EXIT_ERROR)
        self.assertEqual(self.lttx("files"), "")


class RolesCommandsTests(CLITestMixin, TestCase):
    """lttx with a token that may do less than everything."""

    def test_permission_denied(self) -> None:
        """What the token may not do is one line naming it, status 4; the rest works."""
        roles = self.mktemp()
        with open(roles, "w") as f:
            json.dump({"tokens": [
                {"name": "admin", "token": TOKEN, "rights": ["all"]},
                {"name": "reader", "token": "reader-token", "rights": ["read"]}]}, f)
        self.daemon = Daemon(self, "--token-file", roles, token=None)
        self.lttx("put", "pos", "1")
        result = run_cli("--token", "reader-token", "--port", str(self.daemon.port),
                         "get", "pos", env=cli_env())
        self.assertEqual((result.returncode, result.stdout), (0, "1\n"), result.stderr)
        line = self.lttx_error("put", "pos", "2", status=cli.EXIT_AUTH,
                               LTTX_TOKEN="reader-token")
        self.assertEqual(line, "lttx: the token 'reader' may not write 'pos'")
        line = self.lttx_error("status", status=cli.EXIT_AUTH, LTTX_TOKEN="reader-token")
        self.assertIn("may not use status", line)


class TLSCommandsTests(CLITestMixin, TestCase):
    """lttx against a daemon on an ssl: endpoint."""

    def test_tls(self) -> None:
        """--ca (implying --tls) reaches the daemon; a wrong CA is one line, status 3."""
        folder = self.mktemp()
        os.makedirs(folder)
        ca = CA.create("test-ca")
        ca_path = ca.write(folder)
        key, cert = ca.issue(folder, "server", ["localhost"], ["127.0.0.1"])
        self.daemon = Daemon(self, listen=[ssl_endpoint(key, cert)])
        self.lttx("--ca", ca_path, "put", "pos", "100")
        self.assertEqual(self.lttx("--tls", "--ca", ca_path, "get", "pos"), "100\n")
        other_folder = self.mktemp()
        os.makedirs(other_folder)
        other_ca = CA.create("other-ca").write(other_folder)
        self.lttx_error("get", "pos", status=cli.EXIT_CONNECTION, LTTX_CA=other_ca)


class ConnectionErrorTests(CLITestMixin, TestCase):
    """When no daemon answers."""

    def test_daemon_down(self) -> None:
        """Nothing listening: one line saying where, status 3, for every command."""
        env = cli_env(LTTX_PORT=str(free_port()))
        for args in (["get", "x"], ["status"], ["keys"]):
            result = run_cli(*args, env=env)
            self.assertEqual(result.returncode, cli.EXIT_CONNECTION, result.stderr)
            line = self.assert_one_error_line(result.stderr)
            self.assertIn("cannot connect to LTtx at 127.0.0.1:", line)

    def test_daemon_stopped_after_use(self) -> None:
        """A daemon that was there and is stopped: the same clear error."""
        self.daemon = Daemon(self)
        self.lttx("put", "a", "1")
        self.daemon.stop()
        self.lttx_error("get", "a", status=cli.EXIT_CONNECTION)

    def test_usage_errors(self) -> None:
        """Missing arguments, unknown commands, a bad port: one line, status 2."""
        for args, env in ((["get"], {}), (["frobnicate"], {}), ([], {}),
                          (["keys"], {"LTTX_PORT": "http"}),
                          (["keys", "--port", "70000"], {})):
            result = run_cli(*args, env=cli_env(**env))
            self.assertEqual(result.returncode, cli.EXIT_USAGE, (args, result.stderr))
            self.assert_one_error_line(result.stderr)

    def test_help_and_version(self) -> None:
        """--help lists every command; --version prints the version."""
        result = run_cli("--help")
        self.assertEqual(result.returncode, 0)
        for command in ("get", "put", "keys", "del", "sub", "push", "upload", "download",
                        "files", "status"):
            self.assertRegex(result.stdout, rf"(?m)^\s+{command}\s")
        self.assertEqual(run_cli("--version").stdout, f"lttx {__version__}\n")


class ValuesAsJSONTests(SynchronousTestCase):
    """The JSON form of stored values."""

    def test_round_trip(self) -> None:
        """Every value the protocol carries survives to_json, JSON and from_json."""
        values: list[Any] = [
            None, True, 0, -2**63, 2**64 - 1, 1.5, "", "浦发", b"", b"\x00\xff" * 10,
            [], {}, [b"x", {"a": [1, {"b": b"y"}]}], {1: 2, "a": None},
            {None: 1, True: 2, 1.5: 3, b"k": 4}, {"$bytes": "x"}, {"$map": []},
            {"$bytes": "x", "other": 1},
        ]
        for value in values:
            text = output.dumps(value)
            self.assertNotIn("\n", text)
            self.assertEqual(output.from_json(json.loads(text)), value, text)


class RenderStatusTests(SynchronousTestCase):
    """The human form of ``lttx status``."""

    def test_render(self) -> None:
        """Own figures, a table per channel, sizes and rates made readable."""
        report = {
            "version": "1.2.3", "uptime": 3725.2, "connections": 12, "variables": 340,
            "channels": {
                "channels": {"hq_center": {"subscribers": 3, "messages": 120000,
                                           "rate": 10250.04},
                             "orders": {"subscribers": 1, "messages": 7, "rate": 0.0}},
                "slow_subscribers_cut_off": 1, "conflated_dropped": 5,
            },
            "journal": {"bytes": 3 * 1024 * 1024},
            "files": {"count": 2, "bytes": 2048},
        }
        text = output.render_status(report, "127.0.0.1:2025")
        lines = text.splitlines()
        self.assertEqual(lines[0], "LTtx 1.2.3 at 127.0.0.1:2025, up 1h 2m 5s")
        self.assertRegex(text, r"(?m)^connections\s+12$")
        self.assertRegex(text, r"(?m)^variables\s+340$")
        self.assertRegex(text, r"(?m)^\s+slow subscribers cut off\s+1$")
        self.assertRegex(text, r"(?m)^\s+conflated dropped\s+5$")
        self.assertRegex(text, r"(?m)^\s+channel\s+subscribers\s+messages\s+rate$")
        self.assertRegex(text, r"(?m)^\s+hq_center\s+3\s+120000\s+10250.0/s$")
        self.assertRegex(text, r"(?m)^\s+orders\s+1\s+7\s+0.0/s$")
        self.assertRegex(text, r"(?m)^journal:\n\s+bytes\s+3.0 MiB$")
        self.assertRegex(text, r"(?m)^files:\n\s+count\s+2\n\s+bytes\s+2.0 KiB$")

    def test_render_without_uptime_or_components(self) -> None:
        """A report without uptime or components still renders."""
        text = output.render_status({"version": "1", "uptime": None, "connections": 0,
                                     "variables": 0, "files": {}}, "h:1")
        self.assertEqual(text.splitlines()[0], "LTtx 1 at h:1")
        self.assertIn("files:\n  (none)", text)

    def test_main_in_process(self) -> None:
        """main() writes to the streams it is given and returns the status."""
        out, err = io.StringIO(), io.StringIO()
        status = cli.main(["put", "x", "{bad", "--port", "1"], out=out, err=err)
        self.assertEqual(status, cli.EXIT_USAGE)
        self.assertEqual(out.getvalue(), "")
        self.assertIn("not valid JSON", err.getvalue())
