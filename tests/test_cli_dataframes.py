"""
``lttx get`` and ``lttx put`` with DataFrames, against a real daemon: a
table on a terminal, CSV with ``--csv``, a CSV file stored as a DataFrame,
frames nested in a value as ``{"$ext": [kind, base64]}``.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
from pandas.testing import assert_frame_equal
from twisted.trial.unittest import TestCase

from lttx import cli
from lttx.client.dataframes import default

from .common import TOKEN, Daemon
from .test_cli import CLITestMixin


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


CSV = "symbol,px,qty\n600000.SH,10.23,100\n浦发银行,9.5,\n"


class DataFrameCommandsTests(CLITestMixin, TestCase):
    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.client = self.daemon.connect()

    def test_put_csv_then_get_csv(self) -> None:
        """A CSV file is stored as a DataFrame (dtypes inferred) and printed back as CSV."""
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write(CSV)
        self.assertEqual(self.lttx("put", "bars", "--csv", path), "")
        frame = self.client.get("bars")
        assert_frame_equal(frame, pd.read_csv(io.StringIO(CSV)))
        self.assertEqual(str(frame["qty"].dtype), "float64")
        self.assertEqual(self.lttx("get", "bars", "--csv"),
                         ",symbol,px,qty\n0,600000.SH,10.23,100.0\n1,浦发银行,9.5,\n")

    def test_table_on_a_terminal_whole_in_a_pipe(self) -> None:
        """On a terminal a long frame is cut to pandas' display rows; piped, whole."""
        self.client.put("long", pd.DataFrame({"px": np.arange(1000.0), "n": np.arange(1000)}))
        out = Terminal()
        status = cli.main(["--port", str(self.daemon.port), "--token", TOKEN, "get", "long"],
                          out=out, err=io.StringIO())
        self.assertEqual(status, 0)
        self.assertIn("...", out.getvalue())
        self.assertIn("[1000 rows x 2 columns]", out.getvalue())
        self.assertLess(len(out.getvalue().splitlines()), 80)
        piped = self.lttx("get", "long")
        self.assertEqual(len(piped.splitlines()), 1001)
        self.assertIn("999  999.0  999", piped)

    def test_arrays_and_series(self) -> None:
        self.client.put("grid", np.arange(6).reshape(2, 3))
        self.assertEqual(self.lttx("get", "grid", "--csv"), "0,1,2\n3,4,5\n")
        self.assertEqual(self.lttx("get", "grid"), "[[0 1 2]\n [3 4 5]]\n")
        self.client.put("px", pd.Series([1.5, 2.5], name="px"))
        self.assertEqual(self.lttx("get", "px", "--csv"), ",px\n0,1.5\n1,2.5\n")

    def test_nested_frames_as_ext_json(self) -> None:
        """A frame inside a dict prints as its encoded bytes, which put stores unchanged."""
        frame = pd.DataFrame({"a": [1, 2]})
        self.client.put("book", {"bars": frame, "n": 1})
        line = json.loads(self.lttx("get", "book"))
        self.assertEqual(line["n"], 1)
        self.assertEqual(line["bars"]["$ext"][0], "pandas.DataFrame")
        self.lttx("put", "copy", json.dumps(line))
        assert_frame_equal(self.client.get("copy")["bars"], frame)
        self.assertEqual(default(self.client.get("copy")["bars"]).data,
                         default(frame).data)

    def test_errors_are_one_line(self) -> None:
        self.client.put("pos", {"a": 1})
        error = self.lttx_error("get", "pos", "--csv", status=cli.EXIT_USAGE)
        self.assertIn("--csv has nothing to write", error)
        error = self.lttx_error("put", "x", status=cli.EXIT_USAGE)
        self.assertIn("a JSON value or --csv FILE", error)
        error = self.lttx_error("put", "x", "--csv", "/nonexistent.csv",
                                status=cli.EXIT_NOT_FOUND)
        self.assertIn("/nonexistent.csv", error)
        error = self.lttx_error("put", "x", '{"$ext": ["pandas.Panel", ""]}',
                                status=cli.EXIT_USAGE)
        self.assertIn('"$ext" must hold [kind, base64]', error)
