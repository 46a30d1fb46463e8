"""
``lttx.compat.txl``: the original LTtx client's names, against a real daemon.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import TestCase

import lttx
from lttx.compat import txl

from .common import TOKEN, Daemon


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
