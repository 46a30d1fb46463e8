"""
``lttx.compat.txl``: the original LTtx client's names, against a real daemon.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from twisted.trial.unittest import TestCase

import lttx
from lttx.compat import txl

from .common import PACKAGE_ROOT, TOKEN, Daemon


class CompatVariablesTests(TestCase):
    """Cloud variables through the original names."""

    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.tx1 = txl("127.0.0.1", self.daemon.port, TOKEN, timeout=15)
        self.addCleanup(self.tx1.close)

    def test_original_variable_calls(self) -> None:
        """put/get, dict_change, list_* and get_*_value with the original argument orders."""
        tx1 = self.tx1
        tx1.start_tx()
        tem_list = [1, "2", 4, {"a": "cc", "b": 80}]
        tx1.put("test_list", tem_list)
        self.assertEqual(tx1.get("test_list"), tem_list)
        self.assertIsNone(tx1.get("nothing"))
        tx1.dict_change("pos", "600000.SH", 100)
        tx1.dict_change("pos", "000001.SZ", 200)
        self.assertEqual(tx1.get_dict_value("pos", "000001.SZ"), 200)
        self.assertIsNone(tx1.get_dict_value("pos", "none"))
        self.assertEqual(tx1.get_list_value("test_list", -1), {"a": "cc", "b": 80})
        self.assertIsNone(tx1.get_list_value("test_list", 99))
        self.assertIsNone(tx1.get_list_value("no_list", 0))
        self.assertEqual(tx1.list_pop("test_list", "0"), 1)  # the original sent int(data)
        self.assertTrue(tx1.list_remove("test_list", "2"))
        self.assertFalse(tx1.list_remove("test_list", "2"))
        self.assertEqual(tx1.list_append("test_list", 5), 3)
        self.assertEqual(tx1.get("test_list"), [4, {"a": "cc", "b": 80}, 5])

    def test_calls_before_start_tx_connect(self) -> None:
        """A call before start_tx() connects first (the original returned an error dict)."""
        self.tx1.put("a", 1)
        self.assertEqual(self.tx1.get("a"), 1)

    def test_errors_are_raised(self) -> None:
        """dict_change on a list raises WrongTypeError instead of being lost on the server."""
        self.tx1.put("l", [])
        self.assertRaises(lttx.WrongTypeError, self.tx1.dict_change, "l", "k", 1)
        self.assertRaises(lttx.IndexOutOfRange, self.tx1.list_pop, "l", 0)

    def test_close_tx_answers_as_the_original(self) -> None:
        """close_tx/close_txg return the original's {'code', 'msg'} dicts."""
        self.assertEqual(self.tx1.close_tx()["code"], -1)
        self.assertEqual(self.tx1.close_txg()["code"], -1)
        self.tx1.start_tx()
        self.assertEqual(self.tx1.close_tx()["code"], 0)
        self.assertEqual(self.tx1.close_tx()["code"], -1)
        self.tx1.start_tx()  # and it can start again
        self.tx1.put("again", True)
        self.assertTrue(self.tx1.get("again"))

    def test_original_constructor_arguments(self) -> None:
        """The last original versions' show= and check_version= are accepted."""
        tx2 = txl("127.0.0.1", self.daemon.port, TOKEN, False, check_version=False)
        self.addCleanup(tx2.close)
        tx2.start_tx()
        tx2.put("x", "y")
        self.assertEqual(self.tx1.get("x"), "y")


class CompatConnectionTests(TestCase):
    """Where the original retried forever, a mistake is now an error."""

    def test_wrong_token_raises(self) -> None:
        """A wrong token raises AuthError at once."""
        daemon = Daemon(self)
        tx1 = txl("127.0.0.1", daemon.port, "wrong", timeout=10)
        self.assertRaises(lttx.AuthError, tx1.start_tx)

    def test_daemon_down_retries_then_raises(self) -> None:
        """With retry_for, start_tx retries while the daemon is down, then raises."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        tx1 = txl("127.0.0.1", port, TOKEN, timeout=5, retry_for=0)
        self.assertRaises(lttx.ConnectError, tx1.start_tx)


#: The original LTtx README's usage example (使用示例/基础使用示例.py), as a
#: user would run it: only the import line changed (and the address, which
#: the test's daemon picks), the demo's waits and endless printing thread
#: replaced by reading the 10,000 messages back.
ORIGINAL_EXAMPLE = """\
import time
from lttx.compat import *

tx1 = txl('127.0.0.1', {port}, {token!r})
tx1.start_tx()

tem_list = [1, '2', 4, {{'a': 'cc', 'b': 80}}]
tx1.put('test_list', tem_list)
cc = tx1.get('test_list')
print(cc, type(cc))

tx1.start_txg('test')
tx1.push('消息头', 'this is a test,这是一条测试消息', 'test')
print(tx1.Q.get())

num = 10000
for i in range(num):
    tx1.push('test', str(i), 'test')
for i in range(num):
    print(tx1.Q.get())
"""


class CompatChannelsTests(TestCase):
    """start_txg, push and Q as the original had them."""

    def test_original_readme_example(self) -> None:
        """The original example runs unchanged but for its import; 10,000 pushes
        arrive in Q as "key|data" strings, in order; the script exits by itself."""
        daemon = Daemon(self)
        script = ORIGINAL_EXAMPLE.format(port=daemon.port, token=TOKEN)
        env = dict(os.environ, PYTHONPATH=PACKAGE_ROOT)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                text=True, env=env, timeout=120)
        self.assertEqual(result.returncode, 0, result.stderr)
        lines = result.stdout.splitlines()
        self.assertEqual(lines[0], "[1, '2', 4, {'a': 'cc', 'b': 80}] <class 'list'>")
        self.assertEqual(lines[1], "消息头|this is a test,这是一条测试消息")
        self.assertEqual(lines[2:], [f"test|{i}" for i in range(10000)])
        self.assertNotIn("Traceback", result.stderr)

    def test_q_formats_any_value_as_the_original(self) -> None:
        """Non-string data reaches Q as the original's "%s|%s" made it; a
        subscriber using the new client gets the value itself."""
        daemon = Daemon(self)
        tx1 = txl("127.0.0.1", daemon.port, TOKEN, timeout=15)
        self.addCleanup(tx1.close)
        tx1.start_txg("a@b")
        other = daemon.connect()
        other.subscribe("b")
        tx1.push("k", {"x": 1}, "a")
        tx1.push_plus(600000, 10.5, "b")
        self.assertEqual(tx1.Q.get(timeout=15), "k|{'x': 1}")
        self.assertEqual(tx1.Q.get(timeout=15), "600000|10.5")
        message = other.Q.get(timeout=15)
        self.assertEqual((message.key, message.data), (600000, 10.5))

    def test_close_txg_stops_messages(self) -> None:
        """After close_txg nothing more reaches Q; variables still work."""
        daemon = Daemon(self)
        tx1 = txl("127.0.0.1", daemon.port, TOKEN, timeout=15)
        self.addCleanup(tx1.close)
        tx1.start_tx()
        tx1.start_txg("c", pwd="secret")
        tx1.push("first", "1", "c")
        self.assertEqual(tx1.Q.get(timeout=15), "first|1")
        self.assertEqual(tx1.close_txg()["code"], 0)
        tx1.push("second", "2", "c")
        tx1.put("after", 1)  # answered after the push: the push was handled first
        self.assertEqual(tx1.get("after"), 1)
        self.assertTrue(tx1.Q.empty())

    def test_wrong_channel_password(self) -> None:
        """start_txg with another password than the channel's raises AuthError."""
        daemon = Daemon(self)
        owner = daemon.connect()
        owner.subscribe("private", password="pw")
        tx1 = txl("127.0.0.1", daemon.port, TOKEN, timeout=15)
        self.addCleanup(tx1.close)
        self.assertRaises(lttx.AuthError, tx1.start_txg, "private", pwd="wrong")

    def test_daemon_restart_resubscribes(self) -> None:
        """A daemon restarted under a subscribed client: it resubscribes by
        itself and receives what is pushed after the restart."""
        daemon = Daemon(self)
        tx1 = txl("127.0.0.1", daemon.port, TOKEN, timeout=15)
        self.addCleanup(tx1.close)
        tx1.start_txg("hq_center")
        tx1.push("before", "1", "hq_center")
        self.assertEqual(tx1.Q.get(timeout=15), "before|1")
        daemon.stop()
        daemon.listen = [f"tcp:{daemon.port}:interface=127.0.0.1"]  # the same port again
        daemon.start()
        daemon.wait_for_log(r"subscribed to .*hq_center")
        publisher = daemon.connect()
        publisher.push("after", "2", "hq_center")
        self.assertEqual(tx1.Q.get(timeout=15), "after|2")


class CompatFilesTests(TestCase):
    """send_file and recv_file with the original's arguments and answers."""

    def test_send_and_receive(self) -> None:
        """send_file uploads under the base name; recv_file makes the folder and
        answers (0, msg), or (-1, msg) for a file the daemon does not have."""
        daemon = Daemon(self)
        tx1 = txl("127.0.0.1", daemon.port, TOKEN, timeout=15)
        self.addCleanup(tx1.close)
        folder = self.mktemp()
        os.mkdir(folder)
        path = os.path.join(folder, "show.py")
        with open(path, "wb") as f:
            f.write(b"print('hello')\n" * 1000)
        info = tx1.send_file(path, show_on=False)
        self.assertEqual((info["name"], info["size"]), ("show.py", 15000))
        dest = os.path.join(self.mktemp(), "new_data")  # does not exist yet
        code, msg = tx1.recv_file("show.py", dest)
        self.assertEqual(code, 0, msg)
        with open(os.path.join(dest, "show.py"), "rb") as f:
            self.assertEqual(f.read(), b"print('hello')\n" * 1000)
        code, msg = tx1.recv_file("nothing.py", dest)
        self.assertEqual(code, -1)
        self.assertIn("nothing.py", msg)
