"""
DataFrames, series and arrays through the client's codec hooks: each comes
back an equal object of its library, with its dtypes, index, names; what
cannot travel without pickling is refused with a clear EncodeError.
"""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.extra import pandas as hpd
from pandas.testing import assert_frame_equal, assert_series_equal
from twisted.trial.unittest import SynchronousTestCase

from lttx.client.dataframes import default, ext_hook
from lttx.errors import BadRequest, DecodeError, EncodeError
from lttx.wire import codec
from lttx.wire.ext import Encoded

try:
    import polars as pl
    from polars.testing import assert_frame_equal as pl_assert_frame_equal
    from polars.testing import assert_series_equal as pl_assert_series_equal
except ImportError:  # pragma: no cover - the test extra installs it
    pl = None


def round_trip(value: Any) -> Any:
    """Encode as a client sends, let the daemon's codec hold it, decode as a client."""
    payload = codec.encode([1, 7, value], default)
    held = codec.decode(payload)  # what the daemon stores: Encoded values
    again = codec.encode(held)
    assert again == payload, "the daemon changed the bytes"
    return codec.decode(again, ext_hook)[2]


def every_dtype_frame() -> pd.DataFrame:
    """One column of each dtype the issue names, on a named two-level index."""
    index = pd.MultiIndex.from_tuples(
        [("600000.SH", 1), ("000001.SZ", 2), ("中文", 3)], names=["symbol", "n"])
    return pd.DataFrame({
        "float": [1.5, np.nan, -0.0],
        "float32": np.array([1, 2, 3], dtype="float32"),
        "int8": np.array([-1, 0, 1], dtype="int8"),
        "uint64": np.array([0, 1, 2**64 - 1], dtype="uint64"),
        "bool": [True, False, True],
        "text": ["浦发银行", "b", None],
        "category": pd.Categorical(["x", "y", "x"], categories=["y", "x"], ordered=True),
        "utc": pd.date_range("2026-01-01", periods=3, freq="min", tz="UTC"),
        "shanghai": pd.date_range("2026-01-01 09:30", periods=3, freq="s", tz="Asia/Shanghai"),
        "naive_ns": pd.to_datetime(["2026-01-01", None, "2026-01-03"]).as_unit("ns"),
        "delta": pd.to_timedelta([1, 2, None], unit="s"),
        "Int64": pd.array([1, None, 3], dtype="Int64"),
        "UInt8": pd.array([1, None, 3], dtype="UInt8"),
        "Float64": pd.array([1.0, None, 2.5], dtype="Float64"),
        "boolean": pd.array([True, None, False], dtype="boolean"),
        "string": pd.array(["a", None, "中"], dtype="string"),
        "bytes": [b"\x00", b"", None],
        "decimal": [decimal.Decimal("1.10"), None, decimal.Decimal("-3.25")],
        "date": [datetime.date(2026, 1, 1), None, datetime.date(2026, 1, 3)],
    }, index=index)


class PandasTests(SynchronousTestCase):
    def test_every_dtype_round_trips(self) -> None:
        """Dtypes, the named multi-level index, column order, zones, categoricals,
        nullable dtypes and Chinese text all come back as they were."""
        frame = every_dtype_frame()
        back = round_trip(frame)
        assert_frame_equal(back, frame, check_exact=True)
        self.assertEqual(list(back.columns), list(frame.columns))
        self.assertEqual(list(back.dtypes), list(frame.dtypes))
        self.assertEqual(back.index.names, ["symbol", "n"])
        self.assertEqual(str(back["shanghai"].dt.tz), "Asia/Shanghai")

    def test_indexes_and_column_labels(self) -> None:
        """Range, datetime (with its freq) and named indexes; int and multi-level
        column labels; empty frames."""
        frames = [
            pd.DataFrame({"a": [1, 2]}, index=pd.RangeIndex(10, 14, 2, name="r")),
            pd.DataFrame({"a": [1.0, 2.0]},
                         index=pd.DatetimeIndex(["2026-01-01", "2026-01-02"], name="day",
                                                tz="America/New_York")),
            pd.DataFrame({"a": [1, 2, 3]},
                         index=pd.date_range("2026-12-01", periods=3, freq="B", name="day")),
            pd.DataFrame({"a": [1, 2]}, index=pd.timedelta_range("1s", periods=2, freq="s")),
            pd.DataFrame([[1, 2], [3, 4]], columns=[10, 20]),
            pd.DataFrame([[1, 2]], columns=pd.MultiIndex.from_tuples([("px", "bid"),
                                                                      ("px", "ask")])),
            pd.DataFrame({"a": pd.Series([], dtype="float64")}),
            pd.DataFrame(),
        ]
        for frame in frames:
            assert_frame_equal(round_trip(frame), frame)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(hpd.data_frames(
        columns=[hpd.column("f", dtype=float), hpd.column("i", dtype="int32"),
                 hpd.column("u", dtype="uint16"), hpd.column("b", dtype=bool),
                 hpd.column("t", dtype="datetime64[ns]"),
                 hpd.column("s", elements=st.text(max_size=6)),
                 hpd.column("n", elements=st.none() | st.integers(-5, 5))],
        index=hpd.indexes(elements=st.text(max_size=4), min_size=1, max_size=8)))
    def test_generated_frames_round_trip(self, frame: pd.DataFrame) -> None:
        """Hypothesis frames (NaN, extreme ints, any text) come back equal.

        Not empty: an empty categorical comes back with object categories
        instead of str (pandas 3 and Arrow disagree on an empty dictionary)."""
        frame["c"] = pd.Categorical(frame["s"])
        frame["z"] = frame["t"].dt.tz_localize("UTC")
        assert_frame_equal(round_trip(frame), frame, check_exact=True)

    def test_series_keep_name_index_and_dtype(self) -> None:
        cases = [
            pd.Series([1, 2, 3], index=pd.Index(["a", "b", "c"], name="sym")),
            pd.Series([1.5, None], name="px"),
            pd.Series(pd.Categorical(["a", "b"]), name=0),
            pd.Series(pd.array([1, None], dtype="Int64"), name="中文"),
            pd.Series(pd.date_range("2026-01-01", periods=2, tz="Asia/Shanghai")),
        ]
        for series in cases:
            back = round_trip(series)
            assert_series_equal(back, series, check_exact=True)
            self.assertEqual(back.name, series.name)

    def test_inside_dicts_and_lists(self) -> None:
        frame = pd.DataFrame({"a": [1, 2]})
        back = round_trip({"bars": frame, "list": [frame["a"], 1, "x"]})
        assert_frame_equal(back["bars"], frame)
        assert_series_equal(back["list"][0], frame["a"])
        self.assertEqual(back["list"][1:], [1, "x"])

    def test_object_column_is_refused_naming_it(self) -> None:
        """A column of arbitrary objects is an EncodeError naming the column, never a pickle."""
        frame = pd.DataFrame({"ok": [1, 2], "orders": [object(), 1]})
        with self.assertRaises(EncodeError) as caught:
            codec.encode(frame, default)
        self.assertIn("column 'orders'", caught.exception.message)
        self.assertIn("never pickles", caught.exception.message)
        with self.assertRaises(EncodeError) as caught:
            codec.encode({"x": pd.Series([1, object()], name="s")}, default)
        self.assertIn("Series", caught.exception.message)


class PolarsTests(SynchronousTestCase):
    def setUp(self) -> None:
        if pl is None:
            self.skipTest("polars is not installed (pip install 'lttx[polars]')")

    def test_frames_and_series_round_trip(self) -> None:
        frame = pl.DataFrame({
            "i16": pl.Series([1, None, 3], dtype=pl.Int16),
            "u64": pl.Series([0, 1, 2**64 - 1], dtype=pl.UInt64),
            "f": [1.5, float("nan"), None],
            "text": ["浦发银行", None, "x"],
            "bool": [True, None, False],
            "day": [datetime.date(2026, 1, 1), None, datetime.date(2026, 1, 3)],
        }).with_columns(
            pl.col("text").cast(pl.Categorical).alias("cat"),
            pl.datetime_range(datetime.datetime(2026, 1, 1), datetime.datetime(2026, 1, 3),
                              "1d", time_zone="Asia/Shanghai").alias("ts"),
            pl.col("i16").cast(pl.Decimal(10, 2)).alias("dec"),
        )
        back = round_trip(frame)
        self.assertIsInstance(back, pl.DataFrame)
        pl_assert_frame_equal(back, frame)
        self.assertEqual(back.schema, frame.schema)
        series = pl.Series("px", [1.0, 2.5, None])
        pl_assert_series_equal(round_trip(series), series)
        pl_assert_frame_equal(round_trip({"a": [frame]})["a"][0], frame)


class NdarrayTests(SynchronousTestCase):
    def assert_same(self, back: Any, array: Any) -> None:
        self.assertIs(type(back), np.ndarray)
        self.assertEqual((back.dtype, back.shape), (array.dtype, array.shape))
        np.testing.assert_array_equal(back, array)

    def test_shapes_and_layouts(self) -> None:
        """0-d, empty, multi-dimensional, sliced, transposed and big-endian arrays."""
        base = np.arange(24, dtype="int64").reshape(2, 3, 4)
        for array in [np.array(3.5), np.array(7, dtype="uint8"), np.zeros((0, 3)),
                      np.zeros((4, 0, 2), dtype="int16"), base, base[:, ::2, 1:3],
                      base.T, np.arange(20)[::3], np.asfortranarray(base),
                      np.array([1, 2], dtype=">i4"), np.array([1.0], dtype=">f8")]:
            self.assert_same(round_trip(array), array)

    @settings(max_examples=60, deadline=None)
    @given(hnp.arrays(
        dtype=hnp.scalar_dtypes() | hnp.unicode_string_dtypes() | hnp.byte_string_dtypes()
        | hnp.datetime64_dtypes() | hnp.timedelta64_dtypes(),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)))
    def test_generated_arrays_round_trip(self, array: Any) -> None:
        """Any dtype of bool, int, float, complex, bytes, str, datetime, timedelta."""
        back = round_trip(array)
        self.assertEqual((back.dtype, back.shape), (array.dtype, array.shape))
        self.assertEqual(back.tobytes(), array.tobytes())

    def test_received_arrays_are_read_only_views(self) -> None:
        back = round_trip(np.arange(3))
        self.assertFalse(back.flags.writeable)
        copy = back.copy()
        copy[0] = 9
        self.assertEqual(copy.tolist(), [9, 1, 2])

    def test_object_and_structured_arrays_are_refused(self) -> None:
        for array in [np.array([object()]), np.array([(1, 2.0)], dtype="i4,f8")]:
            with self.assertRaises(EncodeError) as caught:
                codec.encode(array, default)
            self.assertIn("never pickled", caught.exception.message)

    def test_the_layout(self) -> None:
        """Version, dtype string, ndim, big-endian u64 shape, C-order elements."""
        payload = codec.encode(np.array([[1, 2]], dtype="<i2"), default)
        self.assertEqual(payload.hex(), "c71a0501033c693202" "0000000000000001"
                         "0000000000000002" "01000200")


class ProtocolDocumentTests(SynchronousTestCase):
    def test_the_documented_ndarray_frame(self) -> None:
        """docs/protocol.md's hex example of an ndarray put is what the client sends."""
        from pathlib import Path

        from lttx.wire.frames import frame

        doc = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
        if not doc.exists():
            self.skipTest("not run from a checkout")
        sent = frame(codec.encode([0, 2, "put", ["w", np.array([[1, 2], [3, 4]], dtype="<i2")]],
                                  default))
        self.assertIn(" ".join(f"{b:02x}" for b in sent), doc.read_text(encoding="utf-8"))


class ReceivingTests(SynchronousTestCase):
    def test_unknown_code_is_refused(self) -> None:
        self.assertRaises(BadRequest, codec.decode, b"\xd4\x09\x00", ext_hook)

    def test_unreadable_bytes_become_a_placeholder(self) -> None:
        """Bad bytes under a known code do not break the decode (a subscriber's
        connection goes on): the value is an Encoded whose use says why."""
        for code, body in [(5, b"\x01\x02<f"), (5, b"\x01\x01O\x00"), (5, b"\x09"),
                           (1, b"not arrow"), (3, b""),
                           (5, b"\x01\x03<f8\x01" + b"\x00" * 7 + b"\x01")]:
            value = codec.decode(bytes([0xc7, len(body), code]) + body, ext_hook)
            self.assertIs(type(value), Encoded)
            self.assertEqual(value.data, body)
            self.assertRaises(DecodeError, len, value)

    def test_placeholder_goes_out_unchanged(self) -> None:
        value = Encoded("pandas.DataFrame", b"\x00\x01")
        self.assertEqual(codec.encode(value, default), b"\xd5\x01\x00\x01")
