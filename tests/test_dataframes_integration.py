"""
DataFrames and arrays end to end, as a user meets them: a real daemon, the
blocking client, pushes to subscribers, a restart on the journal and on the
Redis engine, a client without pandas, the frame limit.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
from pandas.testing import assert_frame_equal, assert_series_equal
from twisted.trial.unittest import TestCase

import lttx
from lttx.client.dataframes import default

from .client.test_dataframes import every_dtype_frame
from .common import PACKAGE_ROOT, Daemon
from .redis_server import RedisServer


def bars(n: int = 500) -> pd.DataFrame:
    return pd.DataFrame({
        "px": np.linspace(10.0, 11.0, n),
        "qty": np.arange(n, dtype="int64"),
        "side": pd.Categorical(np.where(np.arange(n) % 2, "buy", "sell")),
    }, index=pd.date_range("2026-12-01 09:30", periods=n, freq="s", tz="Asia/Shanghai",
                           name="time"))


class DaemonTests(TestCase):
    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.client = self.daemon.connect()

    def test_put_get_every_kind(self) -> None:
        """Frames, series, arrays come back equal from the daemon, alone and nested."""
        c, frame = self.client, every_dtype_frame()
        c.put("bars", frame)
        assert_frame_equal(c.get("bars"), frame, check_exact=True)
        c.put("px", frame["float"])
        assert_series_equal(c.get("px"), frame["float"])
        grid = np.arange(12.0).reshape(3, 4)[:, ::2]
        c.put("grid", grid)
        np.testing.assert_array_equal(c.get("grid"), grid)
        c.dict_change("book", "bars", bars())
        assert_frame_equal(c.get_dict_value("book", "bars"), bars())
        self.assertEqual(list(c.get("book")), ["bars"])

    def test_list_items_and_strict_remove(self) -> None:
        """Frames as list items: appended, read, removed by an equal frame, popped."""
        c = self.client
        c.list_append("orders", bars(3))
        c.list_append("orders", np.array([1, 2]))
        c.list_append("orders", bars(4))
        assert_frame_equal(c.get_list_value("orders", 0), bars(3))
        self.assertFalse(c.list_remove("orders", bars(5)))
        self.assertTrue(c.list_remove("orders", bars(3)))
        np.testing.assert_array_equal(c.list_pop("orders", 0), np.array([1, 2]))
        assert_frame_equal(c.list_pop("orders", 0), bars(4))

    def test_frames_as_message_data(self) -> None:
        """push and publish carry frames to a subscriber on another connection."""
        sub, pub = self.client, self.daemon.connect()
        sub.subscribe("hq")
        pub.push("600000.SH", bars(50), "hq")
        pub.push("grid", {"a": np.eye(3), "b": [bars(2)["px"]]}, "hq")
        first, second = sub.Q.get(timeout=10), sub.Q.get(timeout=10)
        self.assertEqual((first.channel, first.key, first.seq), ("hq", "600000.SH", 1))
        assert_frame_equal(first.data, bars(50))
        np.testing.assert_array_equal(second.data["a"], np.eye(3))
        assert_series_equal(second.data["b"][0], bars(2)["px"])

    def test_unencodable_column_is_refused_and_the_client_goes_on(self) -> None:
        """An object column is an EncodeError naming it, before anything is sent."""
        c = self.client
        with self.assertRaises(lttx.EncodeError) as caught:
            c.put("bad", pd.DataFrame({"orders": [object()]}))
        self.assertIn("column 'orders'", caught.exception.message)
        with self.assertRaises(lttx.EncodeError):
            c.push("k", pd.DataFrame({"orders": [object()]}), "hq")
        self.assertIsNone(c.get("bad"))
        c.put("good", bars(2))
        assert_frame_equal(c.get("good"), bars(2))

    def test_journal_keeps_frames_across_a_restart(self) -> None:
        """After SIGTERM and a new daemon on the same data directory, every
        frame, series and array reads back equal."""
        c = self.client
        c.put("bars", every_dtype_frame())
        c.list_append("hist", bars(10))
        c.dict_change("book", "arr", np.arange(6, dtype="<u2").reshape(2, 3))
        c.close()
        self.daemon.stop()
        again = Daemon(self, data_dir=self.daemon.data_dir)
        c2 = again.connect()
        assert_frame_equal(c2.get("bars"), every_dtype_frame(), check_exact=True)
        assert_frame_equal(c2.get("hist")[0], bars(10))
        np.testing.assert_array_equal(c2.get_dict_value("book", "arr"),
                                      np.arange(6, dtype="<u2").reshape(2, 3))


class FrameLimitTests(TestCase):
    def test_over_max_frame_is_frame_too_large(self) -> None:
        """A put or push over --max-frame is FrameTooLarge in the client, nothing
        is sent, and the client goes on on the same connection."""
        daemon = Daemon(self, "--max-frame", "200000")
        c = daemon.connect()
        with self.assertRaises(lttx.FrameTooLarge):
            c.put("big", np.zeros(30_000))  # 240,000 bytes of elements
        with self.assertRaises(lttx.FrameTooLarge):
            c.push("k", np.zeros(30_000), "hq")
        c.put("small", np.zeros(1000))
        self.assertEqual(c.get("small").shape, (1000,))
        self.assertNotIn("over the limit", daemon.log_text())


#: A client in a Python without pandas and pyarrow (the imports blocked).
NO_PANDAS = textwrap.dedent("""
    import hashlib, sys
    sys.modules["pandas"] = sys.modules["pyarrow"] = None
    import lttx
    c = lttx.connect("127.0.0.1", int(sys.argv[1]), token=sys.argv[2], timeout=15)
    value = c.get("bars")
    assert type(value) is lttx.Encoded and value.kind == "pandas.DataFrame", value
    try:
        value.head()
    except lttx.MissingDependency as e:
        print("error:", e)
    c.put("copy", value)
    c.list_append("list", value)
    c.push("k", {"bars": value}, "hq")
    assert c.get("copy") == value and c.get("list") == [value]
    import numpy
    print("ndarray:", type(c.get("arr")).__name__)
    print("sha256:", hashlib.sha256(value.data).hexdigest())
    c.close()
""")


class WithoutPandasTests(TestCase):
    def test_placeholder_error_and_unchanged_bytes(self) -> None:
        """Without pandas a frame is an lttx.Encoded whose use names the extra;
        put back (variable, list item, message data) it keeps its bytes."""
        daemon = Daemon(self)
        c = daemon.connect()
        c.put("bars", bars())
        c.put("arr", np.arange(3))
        c.subscribe("hq")
        result = subprocess.run(
            [sys.executable, "-c", NO_PANDAS, str(daemon.port), daemon.token or ""],
            capture_output=True, text=True, timeout=60,
            env=dict(os.environ, PYTHONPATH=PACKAGE_ROOT))
        self.assertEqual(result.returncode, 0, result.stderr[-3000:])
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertIn("error: this value is a pandas.DataFrame", result.stdout)
        self.assertIn("install it with: pip install 'lttx[pandas]'", result.stdout)
        self.assertIn("ndarray: ndarray", result.stdout)
        sent = hashlib.sha256(default(bars()).data).hexdigest()
        self.assertIn(f"sha256: {sent}", result.stdout)
        assert_frame_equal(c.get("copy"), bars())
        assert_frame_equal(c.get("list")[0], bars())
        message = c.Q.get(timeout=10)
        assert_frame_equal(message.data["bars"], bars())


class RedisEngineTests(TestCase):
    def test_frames_survive_a_daemon_restart_and_cross_daemons(self) -> None:
        """On the Redis engine a frame written through one daemon reads back from
        another started after the first stopped; list_remove finds it; a frame
        pushed on one daemon reaches a subscriber of the other."""
        redis = RedisServer(self)
        args = ("--engine", "redis", "--redis", redis.url)
        first = Daemon(self, *args)
        first.wait_for_log(r"redis: connected to Redis at")
        c = first.connect()
        c.put("bars", every_dtype_frame())
        c.list_append("hist", bars(5))
        c.list_append("hist", np.arange(4))
        c.close()
        first.stop()
        second = Daemon(self, *args)
        second.wait_for_log(r"redis: connected to Redis at")
        c2 = second.connect()
        assert_frame_equal(c2.get("bars"), every_dtype_frame(), check_exact=True)
        self.assertTrue(c2.list_remove("hist", bars(5)))
        np.testing.assert_array_equal(c2.get_list_value("hist", 0), np.arange(4))

        third = Daemon(self, *args)
        third.wait_for_log(r"redis: connected to Redis at")
        c2.subscribe("hq")  # answered once the daemon follows the channel's stream
        publisher = third.connect()
        publisher.push("bars", bars(20), "hq")
        assert_frame_equal(c2.Q.get(timeout=15).data, bars(20))
