"""
``lttx.compat``: every name of the original client, with the original's return
values; the helpers compared with the ORIGINAL ``tx.py``'s own (loaded from the
seed-client folder, unmodified).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys
import time
from typing import Any
from unittest import mock

from twisted.trial.unittest import TestCase

import lttx
from lttx.compat import txl
from lttx.compat.dates import CalendarMissing

from .common import TOKEN, Daemon
from .oldclient import seed_client_dir


def original_module() -> Any:
    """The original tx.py as a module (its import has no side effect but prints none)."""
    path = os.path.join(seed_client_dir(), "tx.py")
    spec = importlib.util.spec_from_file_location("original_tx", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.dont_write_bytecode, was = True, sys.dont_write_bytecode
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = was
    return module


def original_txl() -> Any:
    """An original ``txl`` (it connects only when started); its banner swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return original_module().txl("127.0.0.1", 1, "x", show=False)


class NamespaceTests(TestCase):
    def test_star_import_brings_what_tx_brought(self) -> None:
        """Every name ``from tx import *`` gave a script, ``from lttx.compat import *`` gives."""
        old: dict[str, Any] = {}
        module = original_module()
        old.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
        new: dict[str, Any] = {}
        exec("from lttx.compat import *", new)
        self.assertEqual(sorted(set(old) - set(new)), [])
        for name in ("threading", "json", "time", "os", "queue", "datetime", "socket",
                     "struct", "hashlib", "random", "signal"):
            self.assertIs(new[name], sys.modules[name])
        self.assertIs(new["txl"], txl)

    def test_every_original_method_exists(self) -> None:
        """Each public method of the original txl is a method of lttx.compat.txl, except
        the ones documented as not kept."""
        not_kept = {"proxy", "get_public_ip", "recv_data_from_tx", "recv_msg_broadcast",
                    "recv_msg_put", "recv_msg_start_tx", "recv_msg_start_txg", "send_data",
                    "send_data_plus", "main_tx_que", "main_tx_que_plus",
                    "main_recv_msg_from_zmq", "start_tx_hearbeat", "start_tx_hearbeat_plus",
                    "close_connection"}
        old = {n for n in vars(original_module().txl) if not n.startswith("_")}
        self.assertEqual(sorted(n for n in old - not_kept if not hasattr(txl, n)), [])


class HelpersTests(TestCase):
    """The date and file helpers give what the original's gave."""

    def setUp(self) -> None:
        self.old = original_txl()
        self.new = txl("127.0.0.1", 1, tocken="x")

    def test_same_results_as_the_original(self) -> None:
        cases: list[tuple[str, tuple[Any, ...]]] = [
            ("DatestrtingToInt", ("2023-10-15 20:02:01",)),
            ("IntTimeToString", (1697371321,)),
            ("calc_datetime_day", ("2023-10-15 20:24:55", "2023-10-14 08:00:00")),
            ("calc_datetime_day", ("2023-10-14 08:00:00", "2023-10-15 20:24:55")),
            ("calc_datetime_seconds", ("2023-10-15 20:24:55", "2023-10-14 20:20:00")),
            ("calc_datetime_minutes", ("2023-10-15 20:24:55", "2023-10-15 19:00:00")),
            ("get_day_before", ("2024-03-01", 1)),
            ("get_day_next", ("2024-02-28", 2)),
            ("get_day_cha", ("2024-04-16 15:00:00", 3)),
            ("get_day_cha", ("2024-04-16 15:00:00", -20)),
            ("get_day_cha", ("15:00:00", 1)),
            ("get_min_cha", ("2024-04-16 23:59:00", 2)),
            ("get_min_cha", ("09:30:00", -45)),
            ("get_second_cha", ("2024-04-16 15:00:00", -61)),
            ("get_second_cha", ("23:59:59", 2)),
        ]
        for name, args in cases:
            self.assertEqual(getattr(self.new, name)(*args), getattr(self.old, name)(*args),
                             f"{name}{args}")
        self.assertEqual(self.new.calc_zdf(12, 10), (12 - 10) / 10 * 100)

    def test_now(self) -> None:
        before = time.time()
        self.assertIsInstance(self.new.get_timestamp(), float)
        self.assertGreaterEqual(self.new.get_timestamp(), before)
        self.assertRegex(self.new.get_nowtime(), r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
        self.assertRegex(self.new.get_nowdate(), r"^\d{4}-\d\d-\d\d$")
        self.assertRegex(self.new.get_nowmin(), r"^\d\d:\d\d:\d\d$")
        self.assertEqual(self.new.get_nowdate(), self.old.get_nowdate())
        self.assertTrue(self.new.judge_Time_between("00:00:00", "23:59:60"))

    def test_trading_days(self) -> None:
        """A-share trading days: holidays and weekends (make-up working days too) are not."""
        try:
            import chinese_calendar  # noqa: F401
        except ImportError:
            self.skipTest("chinese-calendar (lttx[calendar]) is not installed")
        self.assertIs(self.new.judge_is_TradeDay("2024-10-01"), False)  # National Day
        self.assertIs(self.new.judge_is_TradeDay("2024-10-08"), True)
        self.assertIs(self.new.judge_is_TradeDay("2024-10-12"), False)  # a make-up Saturday
        self.assertEqual(self.new.dict_TradeDay["2024-10-08"], True)  # cached as the original
        last = self.new.get_last_TradeDay()
        self.assertRegex(last, r"^\d{4}-\d\d-\d\d$")
        self.assertLessEqual(last, self.new.get_nowdate())
        self.assertTrue(self.new.judge_is_TradeDay(last))

    def test_no_calendar_is_a_clear_error(self) -> None:
        with mock.patch.dict(sys.modules, {"chinese_calendar": None,
                                           "pandas_market_calendars": None}):
            with self.assertRaises(CalendarMissing) as caught:
                self.new.judge_is_TradeDay("2024-10-08")
            self.assertRaises(CalendarMissing, self.new.get_last_TradeDay)
        self.assertIn("pip install 'lttx[calendar]'", str(caught.exception))
        self.assertIsInstance(caught.exception, ImportError)

    def test_files_and_names(self) -> None:
        folder = self.mktemp()
        self.new.mkdir(folder)
        self.new.mkdir(folder)  # exists: nothing
        path = os.path.join(folder, "cfg.json")
        self.new.save_json(path, {"名": [1, 2.5, None]})
        self.assertEqual(self.new.load_json(path), {"名": [1, 2.5, None]})
        self.assertEqual(self.old.load_json(path), {"名": [1, 2.5, None]})
        import numpy
        self.new.save_json_fix(path, {"a": numpy.float64(1.5), "b": numpy.arange(3)})
        self.assertEqual(self.new.load_json(path), {"a": 1.5, "b": [0, 1, 2]})
        channel = self.new.create_channel()
        self.assertEqual(len(channel), 30)
        self.assertTrue(set(channel) <= set("abcdefghijklmnopqrstuvwxz12345678901"))
        self.assertEqual(len(self.new.create_channel(8)), 8)
        ip = self.new.get_local_ip()
        self.assertEqual(len(ip.split(".")), 4)

    def test_attributes(self) -> None:
        """version, txg, tx_running, tocken= as the original had them."""
        self.assertEqual(self.new.version, self.old.version)
        self.assertEqual(self.new.tocken, "x")
        self.assertIs(self.new.txg, False)
        self.assertIs(self.new.tx_running, False)
        self.assertEqual(txl("h", 1, token="t").tocken, "t")


class CompatDaemonTests(TestCase):
    """The names that talk to the daemon, with the old value conventions."""

    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.tx1 = txl("127.0.0.1", self.daemon.port, tocken=TOKEN, timeout=15)
        self.addCleanup(self.tx1.close)
        self.native = self.daemon.connect()

    def test_value_conventions(self) -> None:
        """A str holding JSON is stored decoded; values come back as JSON gave them."""
        import json
        tx1 = self.tx1
        tx1.start_tx()
        self.assertIs(tx1.tx_running, True)
        tx1.put("cfg", json.dumps({"a": 1, "b": [1, 2]}))
        self.assertEqual(tx1.get("cfg")["a"], 1)
        self.assertEqual(self.native.get("cfg"), {"a": 1, "b": [1, 2]})
        tx1.put("n", "123")
        self.assertEqual(tx1.get("n"), 123)
        tx1.put("s", "plain")
        self.assertEqual(tx1.get("s"), "plain")
        self.native.put("native", {1: (1, 2), "b": b"raw"})
        self.assertEqual(tx1.get("native"), {"1": [1, 2], "b": "raw"})
        tx1.dict_change("pos", 5, 100)
        self.assertEqual(self.native.get("pos"), {"5": 100})
        self.assertEqual(tx1.get_dict_value("pos", 5), 100)
        self.native.dict_change("npos", 7, {8: 9})
        self.assertEqual(tx1.get_dict_value("npos", 7), {"8": 9})
        self.assertIsNone(tx1.get_dict_value("npos", 70))
        tx1.close_tx()
        self.assertIs(tx1.tx_running, False)

    def test_dataframes(self) -> None:
        try:
            import pandas as pd
        except ImportError:
            self.skipTest("pandas is not installed")
        df = pd.DataFrame({"code": ["600000.SH", "000001.SZ"], "price": [10.5, 11.25]})
        self.tx1.put_df("bars", df)
        self.assertTrue(self.tx1.get_df("bars").equals(df))
        self.assertEqual(len(self.tx1.get_df("none")), 0)
        self.assertEqual(self.native.get("bars")[1], {"code": "000001.SZ", "price": 11.25})

    def test_add_and_cancel_txg(self) -> None:
        """add_txg subscribes for real, cancel_txg unsubscribes for real."""
        tx1 = self.tx1
        tx1.start_txg("a")
        self.assertIs(tx1.txg, True)
        tx1.add_txg("b@c")
        self.assertEqual(sorted(tx1.dict_txg), ["a", "b", "c"])
        for channel in "abc":
            self.native.push("k", channel, channel)
        self.assertEqual(sorted(tx1.Q.get(timeout=10) for _ in range(3)), ["k|a", "k|b", "k|c"])
        self.assertEqual(tx1.cancel_txg("a@b"), ["a", "b"])
        self.native.push("k", "a2", "a")
        self.native.push("k", "c2", "c")
        self.assertEqual(tx1.Q.get(timeout=10), "k|c2")
        self.assertTrue(tx1.Q.empty())
        self.assertEqual(tx1.channel_list, "c")

    def test_mq_calls_are_channels(self) -> None:
        """start_MQ/MQ_push/start_MQ_broadcast work as push/add_txg over the daemon."""
        receiver = txl("127.0.0.1", self.daemon.port, TOKEN, timeout=15)
        self.addCleanup(receiver.close)
        receiver.start_MQ_broadcast("mq1@mq2", 5556)
        sub = self.daemon.connect()
        sub.subscribe("mq1")
        self.tx1.start_MQ(5555)
        self.tx1.MQ_push("600000.SH", "10.5", "mq1")
        self.tx1.MQ_push("000001.SZ", "9.5", "mq2")
        self.assertEqual([receiver.Q.get(timeout=10) for _ in range(2)],
                         ["600000.SH|10.5", "000001.SZ|9.5"])
        self.assertEqual(sub.Q.get(timeout=10), lttx.Message("mq1", "600000.SH", "10.5", 1))
